"""Output file names for frames: bounded in length and still one per frame.

A file name may hold 255 bytes; ``atomic_open`` adds ~20 to it for its temporary name, and a sample_id or
file stem can be longer than that on its own. Names over ``MAX_STEM_BYTES`` keep a readable head and end in
a short hash of the whole name, so two long names that share their head still get different files.
"""

from __future__ import annotations

import hashlib

MAX_STEM_BYTES = 120
_HASH_CHARS = 10


def bounded_stem(stem: str, max_bytes: int = MAX_STEM_BYTES) -> str:
    """``stem`` itself when it fits in ``max_bytes`` (UTF-8), else its head + "_" + a hash of all of it."""
    encoded = stem.encode("utf-8", "surrogateescape")  # undecodable bytes of an odd file name survive
    if len(encoded) <= max_bytes:
        return stem
    digest = hashlib.sha256(encoded).hexdigest()[:_HASH_CHARS]
    head = encoded[: max_bytes - _HASH_CHARS - 1].decode("utf-8", "ignore")  # never half a character
    return f"{head}_{digest}"
