"""Keep ``tpnet-infer``'s memory flat however many frames it analyses (glibc + PyTorch CPU allocator).

Why: PyTorch's CPU tensors come from glibc ``malloc``. glibc raises its mmap threshold each time a large
mapped block is freed, so after the first batch the network's activation buffers (tens of MiB) move into the
heap, where fragmentation makes the peak creep upwards batch after batch (measured: +50 to +80 MiB over
1,000 frames). A fixed threshold keeps every buffer of 4 MiB or more in its own mapping, returned to the
system on free; PyTorch's ``THP_MEM_ALLOC_ENABLE`` backs those buffers with transparent huge pages, so mapping
them again for each batch costs about what the heap reuse did. ``docs/benchmarks.md`` has the figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os

MMAP_THRESHOLD_BYTES = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


@functools.cache  # called once per batch: load the library once
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (macOS, Windows, musl): the system allocator is left as it is
        return None


def bound_cpu_memory() -> bool:
    """Fix glibc's mmap threshold and ask PyTorch for huge pages; True where glibc took the setting.

    Call before the first large tensor exists (PyTorch reads ``THP_MEM_ALLOC_ENABLE`` on first use); a user's
    own ``MALLOC_MMAP_THRESHOLD_`` or ``THP_MEM_ALLOC_ENABLE`` in the environment wins.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_freed_memory() -> None:
    """Return freed heap pages to the OS. Reader threads allocate frames that the main thread frees; glibc
    keeps such memory in per-thread arenas, so without this small buffers pile up over thousands of frames."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
