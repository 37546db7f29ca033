"""``tpnet-infer`` against hostile inputs: the plausibility rules of check and training (pixel size, field of view,
stiffness), ``--strict``, and unreadable dataset files. A bad frame is rejected by name; the run goes on."""

from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pytest

from model_files import MODEL_SPACING_MM, blob_frame, make_model_file
from tpnet.core.io import FrameReadError, write_png, write_tiff
from tpnet.inference.cli import main
from tpnet.inference.inputs import ImplausibleSpacingWarning, InputError, discover_inputs, load_frame


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"))


def _frame(folder, stem, spacing_mm=None, kpa=None, shape_mm=(6.4, 6.4)):
    """A small scene with one nodule, drawn at the model's spacing; optional sidecar and elastography."""
    bmode = blob_frame(shape_mm, MODEL_SPACING_MM, nodules=[(3.0, 3.0, 1.2)])[0]
    write_png(folder / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
    if kpa is not None:
        write_tiff(folder / f"{stem}_elasto.tif", np.full(bmode.shape, kpa, np.float32))
    if spacing_mm is not None:
        (folder / f"{stem}.json").write_text(json.dumps({"spacing_mm": spacing_mm}))


def _infer(model_path, in_dir, out_dir, *extra):
    return main(["--model", str(model_path), "--input", str(in_dir), "--output", str(out_dir), *extra])


def _csv_rows(out_dir):
    with (out_dir / "detections.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# --- pixel size -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "fine", None, [0.2], 1e9])
def test_sidecar_spacing_that_is_not_a_pixel_size_rejects_that_frame(tmp_path, value):
    _frame(tmp_path, "a")
    (tmp_path / "a.json").write_text(json.dumps({"spacing_mm": value}))  # true would read as 1.0 mm
    _frame(tmp_path, "b", spacing_mm=0.2)
    frames, rejected = discover_inputs(tmp_path, spacing_mm_cli=None, model_spacing_mm=0.2)
    assert [f.stem for f in frames] == ["b"]
    assert [r.name for r in rejected] == ["a_bmode.png"]
    assert "a.json: spacing_mm" in rejected[0].reason


def test_a_tenfold_spacing_warns_naming_the_frame_or_with_strict_rejects_it(tmp_path):
    _frame(tmp_path, "slip", spacing_mm=2.0)  # 10x the model's 0.2 mm: a unit slip
    _frame(tmp_path, "tiny", spacing_mm=0.002)  # 100x too fine: 32 px span 64 um
    _frame(tmp_path, "good", spacing_mm=0.2)

    with pytest.warns(ImplausibleSpacingWarning) as record:
        frames, rejected = discover_inputs(tmp_path, None, 0.2)
    assert sorted(f.stem for f in frames) == ["good", "slip", "tiny"] and not rejected
    messages = [str(w.message) for w in record if issubclass(w.category, ImplausibleSpacingWarning)]
    assert any(
        m.startswith("slip_bmode.png: pixel size 2 mm is 10x the model's training spacing") for m in messages
    )
    assert any(m.startswith("tiny_bmode.png: field of view") for m in messages)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ImplausibleSpacingWarning)  # strict rejects instead of warning
        frames, rejected = discover_inputs(tmp_path, None, 0.2, strict=True)
    assert [f.stem for f in frames] == ["good"]
    reasons = {r.name: r.reason for r in rejected}
    assert set(reasons) == {"slip_bmode.png", "tiny_bmode.png"}
    assert (
        "10x the model's training spacing" in reasons["slip_bmode.png"]
        and "--strict" in reasons["slip_bmode.png"]
    )


def test_an_absurd_cli_spacing_is_a_usage_error(tmp_path):
    _frame(tmp_path, "a")
    with pytest.raises(InputError, match="--spacing-mm: 1e\\+09 mm/pixel is not an ultrasound pixel size"):
        discover_inputs(tmp_path, spacing_mm_cli=1e9, model_spacing_mm=0.2)


def test_strict_end_to_end(tmp_path, model_path, capsys):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    _frame(in_dir, "good", spacing_mm=0.2, kpa=30.0)  # with SWE: the model reads it (no missing_modality)
    _frame(in_dir, "slip", spacing_mm=2.0, kpa=30.0)

    assert _infer(model_path, in_dir, tmp_path / "lenient") == 0  # analysed, with a warning in the summary
    summary = json.loads((tmp_path / "lenient" / "summary.json").read_text())
    assert any("slip_bmode.png" in w and "10x" in w for w in summary["warnings"])
    assert "slip_bmode.png" in (tmp_path / "lenient" / "report.html").read_text()

    assert _infer(model_path, in_dir, tmp_path / "strict", "--strict") == 3  # rejected by name, others go on
    summary = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert summary["settings"]["strict"] is True
    assert [r["name"] for r in summary["rejected"]] == ["slip_bmode.png"]
    assert summary["counts"]["frames_processed"] == 1
    assert "REJECTED slip_bmode.png" in capsys.readouterr().out


# --- stiffness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kpa, words", [(-50.0, "negative values"), (1e7, "up to 1e+07 kPa")])
def test_load_frame_refuses_absurd_stiffness(tmp_path, kpa, words):
    _frame(tmp_path, "a", spacing_mm=0.2, kpa=kpa)
    (frame,), _ = discover_inputs(tmp_path, None, 0.2)
    with pytest.raises(FrameReadError, match=f"a_elasto.tif: absurd stiffness: {words[:8]}"):
        load_frame(frame)


def test_absurd_stiffness_never_reaches_the_csv(tmp_path, model_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _frame(in_dir, "negative", spacing_mm=0.2, kpa=-50.0)
    _frame(in_dir, "huge", spacing_mm=0.2, kpa=1e7)
    _frame(in_dir, "good", spacing_mm=0.2, kpa=30.0)

    assert _infer(model_path, in_dir, out_dir) == 3
    rows = _csv_rows(out_dir)
    assert {r["stem"] for r in rows} <= {"good"}
    assert all(0 <= float(r["stiffness_kpa_mean"]) <= 1000 for r in rows if r["stiffness_kpa_mean"])
    summary = json.loads((out_dir / "summary.json").read_text())
    reasons = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert set(reasons) == {"negative_bmode.png", "huge_bmode.png"}
    assert (
        "absurd stiffness" in reasons["negative_bmode.png"]
        and "absurd stiffness" in reasons["huge_bmode.png"]
    )
    assert "Traceback" not in capsys.readouterr().err


# --- unreadable dataset files -----------------------------------------------------------------------


def _dataset_root(root, manifest: bytes | None = None):
    (root / "frames").mkdir(parents=True)
    _frame(root / "frames", "s1")
    (root / "dataset.yaml").write_text("name: demo\nspacing_mm: 0.2\n")
    rows = "sample_id,subject_id,bmode\ns1,p1,frames/s1_bmode.png\n"
    (root / "manifest.csv").write_bytes(manifest if manifest is not None else rows.encode())
    return root


@pytest.mark.parametrize(
    "break_it, words",
    [
        (lambda r: (r / "manifest.csv").write_bytes("sample_id,subject_id,bmode\nMüller,p1,x.png\n".encode("latin-1")),
         "manifest.csv: manifest.csv is not UTF-8 text"),
        (lambda r: (r / "dataset.yaml").write_bytes("name: Zürich\n".encode("latin-1")),
         "dataset.yaml: dataset.yaml is not UTF-8 text"),
        (lambda r: ((r / "dataset.yaml").unlink(), os.symlink("dataset.yaml", r / "dataset.yaml")),
         "dataset.yaml: dataset.yaml is a broken or looping symbolic link"),
        (lambda r: (r / "manifest.csv").write_text("sample_id,subject_id,bmode,bmode\ns1,p1,a.png,b.png\n"),
         "header repeats column(s) ['bmode']"),
        (lambda r: (r / "dataset.yaml").write_text("classes: [active_trp, background]\n"),
         "class index 0 must be the background"),
    ],
)  # fmt: skip
def test_unreadable_dataset_files_exit_2_naming_the_file(tmp_path, model_path, capsys, break_it, words):
    root = _dataset_root(tmp_path / "ds")
    break_it(root)
    assert _infer(model_path, root, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert words in err and str(root) in err
    assert "Traceback" not in err


def test_looping_or_too_long_frame_paths_reject_that_frame_only(tmp_path, model_path, capsys):
    root = _dataset_root(tmp_path / "ds")
    os.symlink("loop.png", root / "frames" / "loop.png")
    (root / "manifest.csv").write_text(
        "sample_id,subject_id,bmode\n"
        "s1,p1,frames/s1_bmode.png\n"
        "loop,p1,frames/loop.png\n"
        f"long,p1,frames/{'x' * 300}.png\n"
    )
    assert _infer(model_path, root, tmp_path / "out") == 3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reasons = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert "symbolic link loop" in reasons["loop"]
    assert "File name too long" in reasons["long"]
    assert summary["counts"]["frames_processed"] == 1
    assert "Traceback" not in capsys.readouterr().err


def test_a_looping_link_in_a_plain_folder_is_rejected_not_skipped(tmp_path):
    _frame(tmp_path, "good", spacing_mm=0.2)
    os.symlink("lost_bmode.png", tmp_path / "lost_bmode.png")
    frames, rejected = discover_inputs(tmp_path, None, 0.2)
    assert [f.stem for f in frames] == ["good"]
    assert [(r.name, r.reason) for r in rejected] == [("lost_bmode.png", "broken or looping symbolic link")]


@pytest.mark.parametrize("make_input", [lambda d: os.symlink(d / "loop", d / "loop") or d / "loop",
                                        lambda d: d / ("x" * 300)])  # fmt: skip
def test_a_looping_or_too_long_input_folder_exits_2(tmp_path, model_path, capsys, make_input):
    in_dir = make_input(tmp_path)
    assert _infer(model_path, in_dir, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "unusable --input or --output" in err and str(in_dir)[:40] in err
    assert "Traceback" not in err
