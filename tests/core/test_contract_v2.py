"""Contract version 2 (issue #17): volume rows parse, version-1 datasets are unchanged, bad cells name the row."""

from __future__ import annotations

import pytest

from tpnet.core.contract import (
    ContractError,
    check_row_kind,
    load_spec,
    parse_row,
)

FRAME_ROW = {"sample_id": "f1", "subject_id": "s1", "bmode": "a.png"}
VOLUME_ROW = {
    "sample_id": "v1", "subject_id": "s1", "bmode": "v.npy", "kind": "volume",
    "spacing_mm": "0.2", "slice_spacing_mm": "1.0",
}  # fmt: skip


def _spec(tmp_path, text: str):
    (tmp_path / "dataset.yaml").write_text(text)
    return load_spec(tmp_path)


def test_a_dataset_without_contract_version_is_version_1(tmp_path):
    spec = _spec(tmp_path, "name: x\n")
    assert spec.contract_version == 1 and spec.slice_spacing_mm is None


def test_version_2_and_a_dataset_slice_spacing_are_read(tmp_path):
    spec = _spec(tmp_path, "contract_version: 2\nslice_spacing_mm: 0.5\n")
    assert spec.contract_version == 2 and spec.slice_spacing_mm == 0.5


@pytest.mark.parametrize("value", ["3", "true", "'2'"])
def test_an_unknown_contract_version_is_refused_naming_the_file(tmp_path, value):
    with pytest.raises(ContractError, match=r"dataset.yaml: contract_version"):
        _spec(tmp_path, f"contract_version: {value}\n")


def test_a_frame_row_parses_as_before():
    row = parse_row(FRAME_ROW, 2)
    assert (
        row.kind == "frame" and not row.is_volume and row.slice_spacing_mm is None and row.slice_index is None
    )


def test_a_volume_row_carries_kind_and_slice_spacing():
    row = parse_row(VOLUME_ROW, 2)
    assert row.is_volume and row.slice_spacing_mm == 1.0 and row.spacing_mm == 0.2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "stack"}, r"v1: kind 'stack' is not one of"),
        ({"slice_spacing_mm": "-1"}, r"v1: slice_spacing_mm"),
        ({"slice_spacing_mm": "abc"}, r"v1: slice_spacing_mm"),
        ({"bmode": "v.dcm", "frame": "2"}, r"v1: a volume row has no frame"),
    ],
)
def test_bad_volume_cells_name_the_sample(change, message):
    with pytest.raises(ContractError, match=message):
        parse_row({**VOLUME_ROW, **change}, 2)


def test_a_slice_spacing_on_a_frame_row_is_refused():
    with pytest.raises(ContractError, match=r"f1: slice_spacing_mm is given on a frame row"):
        parse_row({**FRAME_ROW, "slice_spacing_mm": "1"}, 2)


def test_a_volume_row_needs_a_version_2_dataset(tmp_path):
    row = parse_row(VOLUME_ROW, 2)
    with pytest.raises(ContractError, match=r"v1: a volume row .* needs contract_version: 2"):
        check_row_kind(row, _spec(tmp_path, "name: x\n"))
    check_row_kind(row, _spec(tmp_path, "contract_version: 2\n"))  # no error
