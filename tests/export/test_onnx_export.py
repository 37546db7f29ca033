"""``export_model(fmt="onnx")``: a real (tiny) U-Net through torch.onnx's dynamo exporter, parity-checked with
onnxruntime in a process without tpnet and torch, metadata in the ONNX model's metadata_props; and the ONNX files
``load_model_file`` refuses. One export per module (seconds); the tests share it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tpnet.core.model_file import ModelFileError, build_meta, load_model_file, read_meta
from tpnet.core.predict import predict_probs, predict_probs_numpy
from tpnet.export.export import ExportError
from tpnet.export.parity import ParityError, check_parity, export_model
from tpnet.models.unet import UNet

CLASSES = ["background", "active_trp", "latent_trp", "vessel"]


def tiny_unet(seed: int = 0) -> UNet:
    """tpnet's U-Net at depth 1 (stride 2: one pool, one upsample to the skip's size, a concat) with
    non-trivial BatchNorm statistics, so an export in train mode would not pass parity."""
    torch.manual_seed(seed)
    model = UNet(in_channels=3, num_classes=len(CLASSES), base_width=4, depth=1)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 16, 16) * 2.0)
    return model.eval()


def make_meta(model: UNet) -> dict:
    return build_meta(
        model_name="unet",
        classes=CLASSES,
        encoding={"channels": ["bmode", "elasto", "elasto_valid"], "kpa_scale": 100.0, "kpa_clip": 300.0},
        spacing_mm=0.1,
        size_multiple=model.size_multiple,
        postprocess={"threshold": 0.5, "min_area_mm2": 1.0, "match_mm": 2.0},
        export_method="script",  # placeholder: the exporter records what it actually did
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_unet()
    meta = make_meta(model)
    path = tmp_path_factory.mktemp("onnx") / "unet.onnx"
    real_frame = torch.rand(3, 13, 19)  # a validation frame of an odd size: padded to the stride for parity
    report = export_model(model, meta, path, fmt="onnx", real_inputs=[real_frame])
    return {"model": model, "meta": meta, "path": path, "report": report}


def test_export_is_parity_checked_at_other_sizes_and_one_file(exported):
    report, path = exported["report"], exported["path"]

    assert report["format"] == "onnx" and report["method"] == "torch.onnx"
    assert report["max_abs_diff"] <= report["atol"] == 1e-4
    example = report["example_size"]
    assert example[0] == 2 and all(size[2:] != example[2:] for size in report["sizes"])
    assert [1, 3, 14, 20] in report["sizes"]  # the real frame, zero-padded to multiples of 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["unet.onnx"]  # no external data, no staging left


def test_metadata_props_and_dynamic_shapes(exported):
    proto = onnx.load(str(exported["path"]))
    props = {p.key: p.value for p in proto.metadata_props}

    meta = json.loads(props["tpnet_meta.json"])
    assert meta == read_meta(exported["path"])[0]
    assert {k: v for k, v in meta.items() if k != "export"} == {
        k: v for k, v in exported["meta"].items() if k != "export"
    }
    assert meta["export"]["method"] == "torch.onnx" and meta["export"]["onnx_opset"] >= 18
    assert props["tpnet.classes"] == ",".join(CLASSES) and props["tpnet.size_multiple"] == "2"
    assert props["tpnet.spacing_mm"] == "0.1" and props["tpnet.model_name"] == "unet"
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert (graph_input.name, graph_output.name) == ("image", "pred")
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    assert all(dims[i].dim_param for i in (0, 2, 3))  # batch, height, width are symbolic
    assert read_meta(exported["path"])[1] == "onnx"


def test_onnxruntime_probabilities_match_torch(exported):
    """The numpy predict_probs on onnxruntime gives the torch predict_probs of the eager model: padding to the
    stride, cropping, softmax and the lateral-flip TTA included."""
    loaded = load_model_file(exported["path"])
    assert loaded.kind == "onnx" and loaded.device == "cpu"
    assert loaded.module.providers == ["CPUExecutionProvider"]
    images = np.random.default_rng(0).random((3, 3, 17, 23), dtype=np.float32)

    probs = {}
    for tta in (False, True):
        probs[tta] = predict_probs_numpy(loaded.module, images, loaded.size_multiple, tta=tta)
        reference = predict_probs(exported["model"], torch.from_numpy(images), 2, tta=tta).numpy()
        assert probs[tta].dtype == np.float32 and probs[tta].shape == (3, len(CLASSES), 17, 23)
        np.testing.assert_allclose(probs[tta], reference, atol=1e-5)
    assert not np.allclose(probs[True], probs[False], atol=1e-4)  # the flipped pass really ran


def test_parity_check_catches_a_different_network(exported):
    with pytest.raises(ParityError, match="exceeds atol"):
        check_parity(exported["path"], tiny_unet(seed=1), [torch.rand(1, 3, 8, 10)])


def test_onnx_without_tpnet_metadata_refused_naming_the_file(exported, tmp_path):
    proto = onnx.load(str(exported["path"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(proto.SerializeToString())

    with pytest.raises(ModelFileError, match="bare.onnx: an ONNX model without tpnet_meta.json") as err:
        load_model_file(bare)
    assert "tpnet-export format=onnx" in str(err.value)


def test_onnx_with_external_data_refused(exported, tmp_path):
    """onnxruntime would read an external tensor from a file named inside the model (from bytes: relative to
    the working directory); tpnet's ONNX models are one file, so such a model is refused before loading."""
    proto = onnx.load(str(exported["path"]))
    onnx.save(proto, str(tmp_path / "split.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # fmt: skip

    with pytest.raises(ModelFileError, match="split.onnx: refused.*stored in an external file"):
        load_model_file(tmp_path / "split.onnx")


def test_damaged_and_edited_onnx_refused(exported, tmp_path):
    data = exported["path"].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.onnx: not a model file"):
        read_meta(truncated)

    proto = onnx.load(str(exported["path"]))
    entry = next(p for p in proto.metadata_props if p.key == "tpnet_meta.json")
    entry.value = json.dumps({**json.loads(entry.value), "format": "something-else"})
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelFileError, match="foreign.onnx: not a tpnet model file"):
        load_model_file(foreign)


def test_export_refuses_to_replace_a_file_that_is_not_a_model(tmp_path):
    model = tiny_unet()
    target = tmp_path / "notes.onnx"
    target.write_text("not a model\n")

    with pytest.raises(ExportError, match="notes.onnx: exists and is not a tpnet model file"):
        export_model(model, make_meta(model), target, fmt="onnx")
    with pytest.raises(ExportError, match=r"'\.onnx' file"):
        export_model(model, make_meta(model), tmp_path / "model.pt", fmt="onnx")
    assert target.read_text() == "not a model\n"
