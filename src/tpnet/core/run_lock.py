"""One writer per folder: a lock file holding the owner's PID. A second tool run into the same folder is refused
while the owner lives; a lock left by a killed run (its process gone) is taken over.

Used by ``tpnet-train`` for its run folder and ``tpnet-infer`` for its output folder (standard library only:
the inference path stays light)."""

from __future__ import annotations

import os
from pathlib import Path


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock; the message names the folder and that process."""


def lock_folder(folder: Path, lock_name: str, tool: str, hint: str) -> Path:
    """Take ``folder/lock_name`` for this process (the folder is created); returns the lock file.

    ``tool`` and ``hint`` word the refusal: "<folder>: another <tool> (process <pid>) is writing to this
    folder; <hint>"."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / lock_name
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = lock_owner(lock)
            if owner is not None and owner != os.getpid() and process_alive(owner):
                raise FolderLockedError(
                    f"{folder}: another {tool} (process {owner}) is writing to this folder; {hint}"
                ) from None
            lock.unlink(missing_ok=True)  # stale: left by a run that was killed
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return lock
    raise FolderLockedError(f"{folder}: cannot lock the folder ({lock})")


def unlock_folder(lock: Path) -> None:
    """Remove the lock if this process still owns it (never another run's lock that took over a stale one)."""
    if lock_owner(lock) == os.getpid():
        lock.unlink(missing_ok=True)


def lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):  # vanished meanwhile, or half-written: treat as stale
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
