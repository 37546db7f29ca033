"""Subject-level splits: no leakage, deterministic, k-fold coverage, explicit split column honoured."""

from __future__ import annotations

import pytest

from tpnet.core.contract import ManifestRow
from tpnet.data.splits import SplitError, kfold_subjects, split_rows


def make_rows(n_subjects: int, frames: int = 3, splits: dict[str, str] | None = None) -> list[ManifestRow]:
    rows = []
    for s in range(n_subjects):
        subject = f"S{s:02d}"
        for f in range(frames):
            split = splits.get(subject) if splits else None
            rows.append(
                ManifestRow(
                    len(rows) + 2, f"{subject}_f{f}", subject, f"{subject}_{f}.png", None, None, None, split
                )
            )
    return rows


def subjects(rows: list[ManifestRow]) -> set[str]:
    return {row.subject_id for row in rows}


def assert_partition(split: dict[str, list[ManifestRow]], rows: list[ManifestRow]) -> None:
    assert set(split) == {"train", "val", "test"}
    assert sorted(r.sample_id for part in split.values() for r in part) == sorted(r.sample_id for r in rows)
    train, val, test = (subjects(split[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test), "a subject leaked across splits"


@pytest.mark.parametrize("n_subjects", [3, 4, 7, 20])
def test_no_leakage_and_every_split_filled(n_subjects: int) -> None:
    rows = make_rows(n_subjects)
    for seed in range(5):
        split = split_rows(rows, seed=seed)
        assert_partition(split, rows)
        assert all(split[k] for k in ("train", "val", "test")), f"empty split at seed {seed}"


def test_fractions_are_roughly_honoured() -> None:
    split = split_rows(make_rows(20), seed=0, val_fraction=0.2, test_fraction=0.1)
    assert [len(subjects(split[k])) for k in ("train", "val", "test")] == [14, 4, 2]


def test_small_datasets_keep_train() -> None:
    one = split_rows(make_rows(1), seed=0)
    assert len(one["train"]) == 3 and not one["val"] and not one["test"]
    two = split_rows(make_rows(2), seed=0)
    assert len(subjects(two["train"])) == 1 and len(subjects(two["val"])) == 1 and not two["test"]


def test_deterministic_and_independent_of_row_order() -> None:
    rows = make_rows(12)
    first = split_rows(rows, seed=3)
    again = split_rows(list(reversed(rows)), seed=3)
    assert {k: subjects(v) for k, v in first.items()} == {k: subjects(v) for k, v in again.items()}
    assert [r.sample_id for r in first["train"]] == sorted(
        (r.sample_id for r in first["train"]), key=[r.sample_id for r in rows].index
    )  # manifest order kept inside a split
    others = [split_rows(rows, seed=s)["test"] for s in range(4, 10)]
    assert any(subjects(o) != subjects(first["test"]) for o in others), "the seed changes nothing"


def test_kfold_covers_every_non_test_subject_once_and_keeps_test() -> None:
    rows = make_rows(11)
    folds = 4
    parts = [split_rows(rows, seed=1, folds=folds, fold=k) for k in range(folds)]
    tests = [subjects(p["test"]) for p in parts]
    assert all(t == tests[0] for t in tests) and tests[0]
    assert tests[0] == subjects(split_rows(rows, seed=1)["test"]), "test must not depend on folds"
    vals = [subjects(p["val"]) for p in parts]
    non_test = subjects(rows) - tests[0]
    assert sorted(s for v in vals for s in v) == sorted(non_test)  # each exactly once
    for p in parts:
        assert_partition(p, rows)


def test_kfold_subjects() -> None:
    names = [f"S{i}" for i in range(10)] + ["S3"]  # duplicates collapse
    groups = kfold_subjects(names, folds=3, seed=0)
    assert sorted(s for g in groups for s in g) == sorted(set(names))
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert groups == kfold_subjects(list(reversed(names)), folds=3, seed=0)
    with pytest.raises(SplitError, match="at least 5 subjects"):
        kfold_subjects(["a", "b"], folds=5, seed=0)
    with pytest.raises(SplitError, match="at least 2"):
        kfold_subjects(names, folds=1, seed=0)


def test_explicit_split_column_is_honoured() -> None:
    plan = {"S00": "test", "S01": "val", "S02": "train", "S03": "train", "S04": "val", "S05": "train"}
    rows = make_rows(6, splits=plan)
    split = split_rows(rows, seed=123)
    for name in ("train", "val", "test"):
        assert subjects(split[name]) == {s for s, p in plan.items() if p == name}


def test_explicit_split_with_kfold_keeps_its_test() -> None:
    plan = {"S00": "test", "S01": "val", "S02": "train", "S03": "train", "S04": "val", "S05": "test"}
    rows = make_rows(6, splits=plan)
    parts = [split_rows(rows, seed=0, folds=2, fold=k) for k in range(2)]
    for p in parts:
        assert subjects(p["test"]) == {"S00", "S05"}
        assert_partition(p, rows)
    assert sorted(s for p in parts for s in subjects(p["val"])) == ["S01", "S02", "S03", "S04"]


def test_mixed_split_column_is_rejected() -> None:
    rows = make_rows(4)
    rows[0] = ManifestRow(2, "S00_f0", "S00", "x.png", None, None, None, "train")
    with pytest.raises(SplitError, match=r"split is set on 1 of 12 rows.*S00_f1"):
        split_rows(rows, seed=0)


def test_subject_in_two_explicit_splits_is_rejected() -> None:
    rows = make_rows(3, splits={"S00": "train", "S01": "val", "S02": "test"})
    rows[1] = ManifestRow(3, "S00_f1", "S00", "x.png", None, None, None, "test")
    with pytest.raises(SplitError, match="S00_f1: subject 'S00'"):
        split_rows(rows, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"folds": 3}, "folds and fold go together"),
        ({"folds": 3, "fold": 3}, "fold must be in 0..2"),
        ({"folds": 10, "fold": 0}, "at least 10 subjects"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments(kwargs: dict, words: str) -> None:
    with pytest.raises(SplitError, match=words):
        split_rows(make_rows(6), seed=0, **kwargs)
