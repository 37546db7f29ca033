"""tpnet-infer runs ONNX models with onnxruntime where PyTorch is not installed, with the TorchScript results.

The base install (``pip install tpnet``) has no torch: here a subprocess's meta-path finder makes ``torch`` (and
the training stack) look not installed, as tests/inference/test_import_light.py does for Hydra, and the run
must succeed without torch ever being imported. The same network exported as TorchScript, run in this process
(with torch), must give the same masks and, within float tolerance, the same trigger-point table.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from model_files import blob_frame, make_model_file, separable
from tpnet.core.io import read_array, write_png, write_tiff
from tpnet.inference.cli import main as infer_main

NOT_INSTALLED = ("torch", "torchvision", "hydra", "omegaconf", "mlflow", "albumentations", "scipy")

# tpnet-infer in this process after the finder; prints the exit code and which blocked modules got imported.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = {blocked!r}

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked by test)")
            return None

    sys.meta_path.insert(0, NotInstalled())
    from tpnet.inference.cli import main

    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("RESULT " + json.dumps({{"code": code, "loaded": loaded}}))
    """
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The same BlobDetector (the same weights) as ONNX and as TorchScript."""
    folder = tmp_path_factory.mktemp("models")
    return {  # both report classes (tests/model_files.py, SEPARABLE_CALIBRATION)
        "onnx": make_model_file(folder, fmt="onnx", edit_meta=separable),
        "torchscript": make_model_file(folder, edit_meta=separable),
    }


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """A B-mode + SWE frame at the model's spacing (33 x 35 px: padded to the stride) and a finer B-mode-only
    frame (resampled), with an active, a latent and a vessel among them."""
    folder = tmp_path_factory.mktemp("frames")
    bmode, kpa = blob_frame(
        (6.6, 7.0),
        0.2,
        nodules=[(2.0, 2.0, 1.2)],
        stiff_nodules=[(5.0, 4.6, 1.1)],
        swe_box_mm=(3.6, 3.0, 7.0, 6.6),
    )
    write_png(folder / "scene_bmode.png", np.round(bmode * 255).astype(np.uint8))
    write_tiff(folder / "scene_elasto.tif", kpa)
    (folder / "scene.json").write_text(json.dumps({"spacing_mm": 0.2}))
    fine = blob_frame((5.1, 6.3), 0.15, nodules=[(4.0, 2.5, 1.3)], vessels=[(1.5, 3.5, 1.0)])[0]
    write_png(folder / "fine_bmode.png", np.round(fine * 255).astype(np.uint8))
    (folder / "fine.json").write_text(json.dumps({"spacing_mm": 0.15}))
    return folder


def _run_without_torch(args: list[str]) -> tuple[subprocess.CompletedProcess, dict | None]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=NOT_INSTALLED), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    marker = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return proc, json.loads(marker[0].removeprefix("RESULT ")) if marker else None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_onnx_model_runs_without_torch_and_matches_torchscript(models, frames, tmp_path):
    onnx_out, script_out = tmp_path / "onnx", tmp_path / "torchscript"
    common = ["--input", str(frames), "--tta", "--batch-size", "2"]

    proc, result = _run_without_torch(["--model", str(models["onnx"]), "--output", str(onnx_out), *common])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result == {"code": 0, "loaded": []}  # torch (and the training stack) never imported
    assert infer_main(["--model", str(models["torchscript"]), "--output", str(script_out), *common]) == 0

    summary = json.loads((onnx_out / "summary.json").read_text())
    assert summary["model"]["kind"] == "onnx" and summary["settings"]["device"] == "cpu"
    assert summary["counts"]["frames_processed"] == 2
    for stem in ("scene", "fine"):
        onnx_mask = read_array(onnx_out / "masks" / f"{stem}.png")
        assert np.array_equal(onnx_mask, read_array(script_out / "masks" / f"{stem}.png")), stem
    onnx_rows, script_rows = _rows(onnx_out / "detections.csv"), _rows(script_out / "detections.csv")
    assert {r["class"] for r in onnx_rows} == {"active_trp", "latent_trp"}
    assert len(onnx_rows) == len(script_rows) == 3
    for ours, theirs in zip(onnx_rows, script_rows, strict=True):
        for column, value in ours.items():
            if column in ("stem", "trp_id", "class", "stiffness_note", "finding", "needle_side", "path_safe"):
                assert value == theirs[column]
            elif value or theirs[column]:
                assert float(value) == pytest.approx(float(theirs[column]), abs=1e-4), column
    assert summary["trp_by_class"] == json.loads((script_out / "summary.json").read_text())["trp_by_class"]


def test_torchscript_model_without_torch_names_the_extra(models, frames, tmp_path):
    proc, result = _run_without_torch(
        ["--model", str(models["torchscript"]), "--input", str(frames), "--output", str(tmp_path / "out")]
    )

    assert result == {"code": 2, "loaded": []}, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"tpnet-infer: {models['torchscript']} is a TorchScript model")
    assert 'pip install "tpnet[torch]"' in lines[0] and "tpnet-export format=onnx" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="this onnxruntime has CUDA"
)
def test_cuda_without_the_cuda_provider_is_refused(models, frames, tmp_path, capsys):
    args = ["--model", str(models["onnx"]), "--input", str(frames), "--output", str(tmp_path / "out")]

    assert infer_main([*args, "--device", "cuda"]) == 2

    message = capsys.readouterr().err
    assert "--device cuda" in message and "no CUDA provider" in message and "onnxruntime-gpu" in message
