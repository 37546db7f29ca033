"""The clinicians' tool must run without the training stack: here a .pt2 model with torch (the ``torch`` extra)
and none of Hydra, OmegaConf, MLflow, albumentations, torchvision, SciPy. The base install (numpy, OpenCV,
tifffile, tqdm, PyYAML, pydicom, Pillow, onnxruntime; no torch) running an ONNX model is
tests/inference/test_onnx_torch_free.py.

PyYAML is a real inference dependency: tpnet-infer reads contract datasets, whose ``dataset.yaml`` the contract
reader parses. SciPy is not: it serves the evaluation's detection matching only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from model_files import blob_frame, make_model_file
from tpnet.core.io import write_png

TRAINING_ONLY = ("hydra", "omegaconf", "mlflow", "albumentations", "torchvision", "scipy")

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


def test_cli_runs_without_training_dependencies(tmp_path):
    model = make_model_file(tmp_path / "model", fmt="pt2")  # torch.export loading must not need them either
    in_dir = tmp_path / "in"
    bmode = blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0]
    write_png(in_dir / "one_bmode.png", np.round(bmode * 255).astype(np.uint8))
    script = SCRIPT.format(blocked=TRAINING_ONLY)
    args = [
        "--model",
        str(model),
        "--input",
        str(in_dir),
        "--output",
        str(tmp_path / "out"),
        "--spacing-mm",
        "0.2",
    ]

    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result == {"code": 0, "loaded": []}
    assert (tmp_path / "out" / "masks" / "one.png").is_file()
