"""Progress bars that only draw on a terminal.

A tqdm bar redraws itself with carriage returns; in a file (CI logs, SLURM's ``slurm-*.out``, ``> train.log``)
every redraw stays, and ``less`` shows one unreadable line per epoch. Off a terminal the bar is silent and the
tools' own plain lines (one per epoch for tpnet-train, the summary for tpnet-infer) tell the story.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def stderr_is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", None)) and sys.stderr.isatty()


def progress_bar(iterable: Iterable[T], *, enabled: bool = True, **tqdm_kwargs: Any) -> tqdm:
    """``tqdm(iterable, ...)``, disabled unless ``enabled`` and stderr is a terminal (tqdm draws on stderr)."""
    return tqdm(iterable, disable=not (enabled and stderr_is_terminal()), **tqdm_kwargs)
