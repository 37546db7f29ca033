"""Export a real (tiny) U-Net to TorchScript and torch.export, and prove the files stand alone."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from tpnet.core.model_file import build_meta, load_model_file
from tpnet.export.export import ExportError, export_torchscript
from tpnet.export.parity import ParityError, check_parity, export_model
from tpnet.models.unet import UNet

CLASSES = ["background", "active_trp", "latent_trp", "vessel"]
SUFFIX = {"torchscript": ".pt", "pt2": ".pt2"}

# Loads a model file with plain torch in a fresh interpreter where importing tpnet fails, runs it once,
# and prints the metadata: what a deployment host without our source tree would do.
STANDALONE_LOAD = r"""
import json, sys
sys.modules["tpnet"] = None  # any "import tpnet..." now raises ImportError
import torch
path, kind = sys.argv[1:3]
extra = {"tpnet_meta.json": ""}
if kind == "pt2":
    net = torch.export.load(path, extra_files=extra).module()
else:
    net = torch.jit.load(path, _extra_files=extra)
meta = extra["tpnet_meta.json"]
meta = json.loads(meta.decode() if isinstance(meta, bytes) else meta)
logits = net(torch.rand(1, 3, 24, 36))
print(json.dumps({"meta": meta, "shape": list(logits.shape)}))
"""


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(in_channels=3, num_classes=len(CLASSES), base_width=4, depth=2)
    # Non-trivial BatchNorm statistics, so eval-mode export differs from train mode if it went wrong.
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32) * 2.0)
    return model.eval()


def make_meta(model: nn.Module) -> dict:
    return build_meta(
        model_name="unet",
        classes=CLASSES,
        encoding={"channels": ["bmode", "elasto", "elasto_valid"], "kpa_scale": 100.0, "kpa_clip": 300.0},
        spacing_mm=0.1,
        size_multiple=model.size_multiple,
        postprocess={"threshold": 0.5, "min_area_mm2": 1.0, "match_mm": 2.0},
        export_method="script",  # placeholder: the exporter records what it actually did
        mlflow_run_id="abc123",
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Both formats exported once for the module: {fmt: (path, report)}."""
    model = tiny_unet()
    out_dir = tmp_path_factory.mktemp("export")
    real_frame = torch.rand(3, 30, 37)  # an encoded frame that is not a multiple of size_multiple
    return {
        fmt: (
            out_dir / f"unet{suffix}",
            export_model(model, make_meta(model), out_dir / f"unet{suffix}", fmt, [real_frame]),
        )
        for fmt, suffix in SUFFIX.items()
    }


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_export_passes_parity_at_sizes_other_than_the_example(exported, fmt):
    path, report = exported[fmt]
    assert path.is_file()
    assert report["method"] == ("script" if fmt == "torchscript" else "torch.export")
    assert report["max_abs_diff"] <= 1e-4
    example_hw = report["example_size"][-2:]
    tested_hw = [size[-2:] for size in report["sizes"]]
    other_sizes = {tuple(hw) for hw in tested_hw if hw != example_hw}
    assert len(other_sizes) >= 2
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in tested_hw)
    assert [32, 40] in tested_hw  # the 30 x 37 real frame, padded to the multiple of 4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp/staging leftovers


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_file_loads_in_fresh_process_without_tpnet(exported, fmt, tmp_path):
    path, _ = exported[fmt]
    proc = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE_LOAD, str(path), fmt],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, len(CLASSES), 24, 36]
    meta = result["meta"]
    assert meta["format"] == "tpnet-model" and meta["format_version"] == 1
    assert meta["classes"] == CLASSES
    assert meta["size_multiple"] == 4
    assert meta["mlflow_run_id"] == "abc123"
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "US"
    assert meta["export"]["method"] == ("script" if fmt == "torchscript" else "torch.export")
    assert meta["export"]["torch_version"] == torch.__version__
    # And our own loader accepts it.
    assert load_model_file(path).meta == meta


def test_parity_error_when_weights_differ(exported):
    path, _ = exported["torchscript"]
    perturbed = tiny_unet()
    with torch.no_grad():
        perturbed.head.bias.add_(0.5)
    with pytest.raises(ParityError, match=r"unet\.pt: max \|logit difference\| 0\.5"):
        check_parity(path, perturbed, [torch.rand(1, 3, 16, 24)])
    # (The fixture's export_model already proved the unperturbed model matches this file.)


class DivergesWhenScripted(nn.Module):
    """Eager and scripted outputs differ: a stand-in for an export that silently changes behaviour."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = net.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if torch.jit.is_scripting():
            logits = logits + 1.0
        return logits


def test_failed_parity_leaves_no_file(tmp_path):
    model = DivergesWhenScripted(tiny_unet())
    output = tmp_path / "bad.pt"
    with pytest.raises(ParityError, match="bad.pt"):
        export_model(model, make_meta(model), output, "torchscript")
    assert list(tmp_path.iterdir()) == []  # neither the file nor any temp/staging folder


class NotScriptable(nn.Module):
    """Variadic forward: torch.jit.script rejects it, torch.jit.trace does not care."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = net.size_multiple

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        return self.net(images[0])


def test_trace_fallback_is_loud_and_recorded(tmp_path):
    model = NotScriptable(tiny_unet())
    with pytest.warns(RuntimeWarning, match="falling back to torch.jit.trace"):
        report = export_model(model, make_meta(model), tmp_path / "traced.pt", "torchscript")
    assert report["method"] == "trace"
    assert report["max_abs_diff"] <= 1e-4
    assert load_model_file(tmp_path / "traced.pt").meta["export"]["method"] == "trace"


def test_scripting_emits_no_deprecation_noise(tmp_path):
    model = tiny_unet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_torchscript(model, make_meta(model), tmp_path / "m.pt", torch.rand(2, 3, 16, 16))
    assert [str(w.message) for w in caught] == []


def test_refuses_to_overwrite_checkpoint_or_foreign_file(tmp_path):
    model = tiny_unet()
    checkpoint = tmp_path / "last.pt"
    torch.save({"format": "tpnet-checkpoint", "model": model.state_dict()}, checkpoint)
    before = checkpoint.read_bytes()
    example = torch.rand(2, 3, 16, 16)
    with pytest.raises(ExportError, match="input checkpoint"):
        export_torchscript(model, make_meta(model), checkpoint, example, checkpoint=checkpoint)
    with pytest.raises(ExportError, match="not a tpnet model file"):
        export_model(model, make_meta(model), checkpoint, "torchscript")
    assert checkpoint.read_bytes() == before
    with pytest.raises(ExportError, match=r"'\.pt2' file"):
        export_model(model, make_meta(model), tmp_path / "m.pt", "pt2")


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_metadata_says_what_the_module_returns_logits(exported, fmt):
    """The file's tensor description is true: the module returns logits; softmax over channels gives the
    probabilities tpnet's prediction (predict_probs) works with."""
    from tpnet.core.predict import predict_probs

    path, _ = exported[fmt]
    loaded = load_model_file(path)
    pred = loaded.meta["network_data_format"]["outputs"]["pred"]
    assert pred["type"] == "logits"
    assert "softmax" in pred["activation"]
    images = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        out = loaded.module(images)
    sums = out.sum(dim=1)
    assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-3), "the module returns probabilities"
    assert (out < 0).any(), "probabilities are never negative; logits are"
    torch.testing.assert_close(predict_probs(loaded.module, images, loaded.size_multiple), out.softmax(dim=1))
