"""Ctrl-C and SIGTERM in ``tpnet-infer``: stop between frames, never with a traceback.

While frames are analysed, the first SIGINT or SIGTERM only asks to stop: the frame in hand is finished and
recorded, so the output stays consistent and ``--resume`` can continue it. A second one stops at once
(``Interrupted``); so does any signal outside the frame loop (model loading, discovery).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by a stop signal; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + signum


class StopRequests:
    """Installed for a whole run; ``between_frames()`` marks the part where a first signal only asks to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal received between frames
        self._deferring = False

    @contextmanager
    def installed(self) -> Iterator[StopRequests]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only; a caller in a thread keeps Python's default
            return
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def between_frames(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring and self.signum is None:
            self.signum = signum
            return
        raise Interrupted(signum)
