"""Subject-level train/val/test split and k-fold cross-validation.

Frames of one subject are strongly correlated (same muscle, same scanner settings), so every split is
made over subjects, never frames. Everything is deterministic from the seed and independent of the
manifest's row order: subjects are sorted before they are shuffled.
"""

from __future__ import annotations

import random

from tpnet.core.contract import SPLITS, ContractError, ManifestRow


class SplitError(ContractError):
    """The rows cannot be split as asked; the message says why."""


def kfold_subjects(subjects: list[str], folds: int, seed: int) -> list[list[str]]:
    """Partition the unique subjects into ``folds`` groups of near-equal size (each sorted)."""
    unique = sorted(set(subjects))
    if folds < 2:
        raise SplitError(f"folds must be at least 2, got {folds}")
    if len(unique) < folds:
        raise SplitError(f"{folds}-fold cross-validation needs at least {folds} subjects, got {len(unique)}")
    random.Random(seed).shuffle(unique)
    return [sorted(unique[i::folds]) for i in range(folds)]


def split_rows(
    rows: list[ManifestRow],
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    folds: int | None = None,
    fold: int | None = None,
) -> dict[str, list[ManifestRow]]:
    """Rows by split (``train``/``val``/``test``, manifest order kept inside each).

    A ``split`` column on every row is honoured (with ``folds``, k-fold runs over its train+val
    subjects and its test stays). With no ``split`` anywhere, test subjects are held out first from
    the seed alone (the same test set for every fold), then val is either ``val_fraction`` of all
    subjects or fold ``fold`` of ``folds``. A fraction above zero always gets at least one subject
    once there are three subjects; train always keeps at least one.
    """
    if not rows:
        raise SplitError("no rows to split")
    if (folds is None) != (fold is None):
        raise SplitError(f"folds and fold go together; got folds={folds}, fold={fold}")
    if folds is not None and fold is not None and not 0 <= fold < folds:
        raise SplitError(f"fold must be in 0..{folds - 1}, got {fold}")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise SplitError(f"{name} must be in [0, 1), got {fraction}")

    with_split = [row for row in rows if row.split is not None]
    if with_split and len(with_split) < len(rows):
        missing = [row.sample_id for row in rows if row.split is None]
        raise SplitError(
            f"split is set on {len(with_split)} of {len(rows)} rows; set it on every row or on none "
            f"(missing on: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        )
    subject_of = _subject_splits(rows) if with_split else None

    if subject_of is not None:
        if folds is not None and fold is not None:
            pool = sorted(s for s, split in subject_of.items() if split != "test")
            val = set(kfold_subjects(pool, folds, seed)[fold])
            subject_of = {
                s: ("test" if split == "test" else "val" if s in val else "train")
                for s, split in subject_of.items()
            }
    else:
        subject_of = _assign_subjects(
            sorted({row.subject_id for row in rows}), seed, val_fraction, test_fraction, folds, fold
        )

    out: dict[str, list[ManifestRow]] = {split: [] for split in SPLITS}
    for row in rows:
        out[subject_of[row.subject_id]].append(row)
    if not out["train"]:
        raise SplitError("the train split has no subject")
    return out


def _subject_splits(rows: list[ManifestRow]) -> dict[str, str]:
    """subject -> split from an explicit split column; a subject in two splits is an error."""
    subject_of: dict[str, str] = {}
    for row in rows:
        first = subject_of.setdefault(row.subject_id, row.split)  # type: ignore[arg-type]
        if row.split != first:
            raise SplitError(
                f"{row.sample_id}: subject {row.subject_id!r} is in split {row.split!r} here and in "
                f"{first!r} elsewhere; all frames of a subject must share one split"
            )
    return subject_of


def _assign_subjects(
    subjects: list[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    folds: int | None,
    fold: int | None,
) -> dict[str, str]:
    shuffled = list(subjects)
    random.Random(seed).shuffle(shuffled)
    # Test first, from the seed alone, so every fold and every val_fraction sees the same test set.
    # Below three subjects there is no test split: train and val come first.
    n_test = min(_count(len(shuffled), test_fraction), len(shuffled) - 2) if len(shuffled) >= 3 else 0
    test, rest = shuffled[:n_test], shuffled[n_test:]
    if folds is not None and fold is not None:
        val = kfold_subjects(rest, folds, seed)[fold]
    else:
        n_val = min(_count(len(shuffled), val_fraction), len(rest) - 1)
        val = rest[:n_val]
    subject_of = dict.fromkeys(rest, "train")
    subject_of.update(dict.fromkeys(val, "val"))
    subject_of.update(dict.fromkeys(test, "test"))
    return subject_of


def _count(n_subjects: int, fraction: float) -> int:
    """Rounded subject count for a held-out split; at least one when the fraction is above zero."""
    if fraction == 0.0 or n_subjects < 2:
        return 0
    return max(1, round(n_subjects * fraction))
