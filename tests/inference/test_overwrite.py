"""``--overwrite`` replaces only a folder tpnet-infer wrote (it holds the marker), and only its own files there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_files import blob_frame, make_model_file
from tpnet.core.io import write_png
from tpnet.data.synth import write_synthetic_dataset
from tpnet.inference.cli import OUTPUT_MARKER, main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    bmode = blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0]
    write_png(folder / "one_bmode.png", np.round(bmode * 255).astype(np.uint8))
    (folder / "one.json").write_text(json.dumps({"spacing_mm": 0.2}))
    return folder


def _snapshot(folder):
    """Every file below ``folder`` with its bytes, and every folder."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def test_a_dataset_root_as_output_is_refused_and_nothing_deleted(tmp_path, model_path, scans, capsys):
    dataset = write_synthetic_dataset(
        tmp_path / "dataset", subjects=1, frames_per_subject=3, seed=0, height=32, width=32
    )
    before = _snapshot(dataset)
    assert any(name.startswith("masks/") for name in before)  # the ground truth the old code deleted

    code = main(["--model", str(model_path), "--input", str(scans), "--output", str(dataset), "--overwrite"])

    assert code == 2
    err = capsys.readouterr().err
    assert f"{dataset}: not a tpnet-infer output folder" in err and "Traceback" not in err
    assert _snapshot(dataset) == before  # not one file deleted, changed or added
    assert (
        main(["--model", str(model_path), "--input", str(scans), "--output", str(dataset), "--resume"]) == 2
    )
    assert _snapshot(dataset) == before


def test_a_folder_of_masks_without_the_marker_is_refused(tmp_path, model_path, scans, capsys):
    out = tmp_path / "ground_truth"
    write_png(out / "masks" / "patient1.png", np.ones((8, 8), np.uint8))
    write_png(out / "overlays" / "patient1.png", np.ones((8, 8), np.uint8))
    (out / "summary.json").write_text("{}")  # tpnet's names, but not tpnet's folder
    before = _snapshot(out)

    assert main(["--model", str(model_path), "--input", str(scans), "--output", str(out), "--overwrite"]) == 2
    assert "not a tpnet-infer output folder" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_overwrite_in_tpnet_own_folder_replaces_only_its_files(tmp_path, model_path, scans):
    out = tmp_path / "results"
    args = ["--model", str(model_path), "--input", str(scans), "--output", str(out)]
    assert main(args) == 0
    assert (out / OUTPUT_MARKER).is_file()  # written by the first run
    assert json.loads((out / OUTPUT_MARKER).read_text())["tool"] == "tpnet-infer"
    # A colleague's notes, a sub-folder and a stale mask of an earlier run.
    (out / "notes.txt").write_text("reviewed by Dr X")
    (out / "masks" / "annotated").mkdir()
    (out / "masks" / "annotated" / "gt.png").write_bytes(b"ground truth")
    (out / "masks" / "readme.txt").write_text("keep me")
    write_png(out / "masks" / "stale.png", np.zeros((4, 4), np.uint8))
    # An earlier run's sweep and longitudinal outputs: this run writes none, so none may stay to be misread.
    (out / "masks" / "sweep.nii.gz").write_bytes(b"old sweep mask")
    for name in ("detections_3d.csv", "tracks.csv", "changes.csv", "visits.csv"):
        (out / name).write_text("old\n")
    (out / "patients").mkdir()
    (out / "patients" / "p1.html").write_text("old page")
    (out / "patients" / "letter.txt").write_text("keep me")

    assert main([*args, "--overwrite"]) == 0
    assert not any((out / n).exists() for n in ("detections_3d.csv", "tracks.csv", "changes.csv", "visits.csv"))
    assert sorted(p.name for p in (out / "patients").iterdir()) == ["letter.txt"]

    assert sorted(p.name for p in (out / "masks").iterdir()) == ["annotated", "one.png", "readme.txt"]
    assert (out / "masks" / "annotated" / "gt.png").read_bytes() == b"ground truth"
    assert (out / "notes.txt").read_text() == "reviewed by Dr X"
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_a_linked_masks_folder_is_refused(tmp_path, model_path, scans, capsys):
    out = tmp_path / "results"
    args = ["--model", str(model_path), "--input", str(scans), "--output", str(out)]
    assert main(args) == 0
    elsewhere = tmp_path / "dataset_masks"
    write_png(elsewhere / "gt.png", np.ones((8, 8), np.uint8))
    for path in (out / "masks").iterdir():
        path.unlink()
    (out / "masks").rmdir()
    (out / "masks").symlink_to(elsewhere)

    assert main([*args, "--overwrite"]) == 2
    assert "found a link" in capsys.readouterr().err
    assert (elsewhere / "gt.png").is_file()
