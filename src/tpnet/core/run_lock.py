"""One writer per folder: an OS lock (``filelock``: flock on POSIX, also on shared file systems that support it)
on a lock file that also names the owner's PID. A second tool run into the same folder is refused while the owner
holds the lock; the OS drops the lock of a killed run with its process, so the next run takes it over.

Used by ``tpnet-train`` for its run folder and ``tpnet-infer`` for its output folder (filelock is pure Python and
light: the inference path stays torch-free)."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

# The FileLock objects this process holds, by lock file: dropping one would close its descriptor and release it.
_HELD: dict[Path, FileLock] = {}


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock; the message names the folder and that process."""


def lock_folder(folder: Path, lock_name: str, tool: str, hint: str) -> Path:
    """Take ``folder/lock_name`` for this process (the folder is created); returns the lock file.

    ``tool`` and ``hint`` word the refusal: "<folder>: another <tool> (process <pid>) is writing to this
    folder; <hint>"."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lock_name
    if path in _HELD:  # this process holds it already (a tool calling twice): as before, not a conflict
        return path
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = lock_owner(path)
        who = f" (process {owner})" if owner is not None else ""
        raise FolderLockedError(f"{folder}: another {tool}{who} is writing to this folder; {hint}") from None
    # The PID is for the refusal message only: the OS lock, not this number, decides who owns the folder.
    with path.open("w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    _HELD[path] = lock
    return path


def unlock_folder(lock: Path) -> None:
    """Release the lock if this process holds it, and remove the lock file (a finished run leaves no trace)."""
    held = _HELD.pop(lock, None)
    if held is None:
        return
    # Unlinked while still held: a run waiting on the old file finds it gone and retries on a fresh one.
    lock.unlink(missing_ok=True)
    held.release(force=True)


def lock_owner(lock: Path) -> int | None:
    """The PID written by the lock's holder; None if unreadable (being written, or an older tool's file)."""
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None
