from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from model_files import CLASSES, make_meta, make_model_file
from tpnet.core.model_file import (
    FORMAT_VERSION,
    META_FILENAME,
    REQUIRED_KEYS,
    LoadedModel,
    ModelFileError,
    build_meta,
    load_model_file,
    validate_meta,
)
from tpnet.core.needle_path import GuidanceParams


@pytest.mark.parametrize(("fmt", "kind"), [("torchscript", "torchscript"), ("pt2", "torch.export")])
def test_metadata_round_trip_and_module_runs(tmp_path, fmt, kind):
    path = make_model_file(tmp_path, fmt=fmt, spacing_mm=0.25)
    loaded = load_model_file(path, "cpu")

    expected = make_meta(0.25, ("bmode", "elasto", "elasto_valid"), loaded.meta["export"]["method"], 1.0)
    assert loaded.meta == json.loads(json.dumps(expected))
    assert loaded.kind == kind
    assert loaded.classes == CLASSES
    assert loaded.spacing_mm == 0.25 and loaded.size_multiple == 4
    assert loaded.encoding.channels == ("bmode", "elasto", "elasto_valid")
    # Dynamic batch and spatial size: any (B, C, 4n, 4m) works.
    logits = loaded.module(torch.zeros(3, 3, 12, 20))
    assert tuple(logits.shape) == (3, len(CLASSES), 12, 20)


def test_build_meta_describes_tensors():
    meta = make_meta(0.2, ("bmode",), "trace", 2.0)
    assert meta["format"] == "tpnet-model" and meta["format_version"] == FORMAT_VERSION
    assert set(REQUIRED_KEYS) <= set(meta)
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and image["channel_def"] == {"0": "bmode"}
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["3"] == "vessel"
    assert meta["postprocess"] == {"threshold": 0.5, "min_area_mm2": 2.0, "match_mm": 5.0}
    with pytest.raises(ValueError, match="export_method"):
        build_meta(
            model_name="m", classes=CLASSES, encoding={}, spacing_mm=0.2, size_multiple=4,
            postprocess={"threshold": 0.5, "min_area_mm2": 2.0, "match_mm": 5.0}, export_method="onnx",
        )  # fmt: skip


def _set(key, value):
    def edit(meta):
        meta[key] = value

    return edit


def _drop(key):
    def edit(meta):
        del meta[key]

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("format", "monai-bundle"), "not a tpnet model file"),
        (_set("format_version", FORMAT_VERSION + 1), "newer than this tool understands"),
        (_set("format_version", f"{FORMAT_VERSION + 1}.0"), "newer than this tool understands"),
        (_drop("spacing_mm"), r"lacks required key\(s\) \['spacing_mm'\]"),
        (_drop("classes"), r"lacks required key\(s\) \['classes'\]"),
        (_set("spacing_mm", -1), "spacing_mm"),
        (_set("classes", ["background", "active_trp"]), "output channels"),
    ],
)
def test_bad_metadata_refused_naming_the_file(tmp_path, edit, message):
    path = make_model_file(tmp_path, edit_meta=edit)
    with pytest.raises(ModelFileError, match=message) as err:
        load_model_file(path)
    assert str(path) in str(err.value)


def test_pt2_with_newer_format_version_refused(tmp_path):
    path = make_model_file(tmp_path, fmt="pt2", edit_meta=_set("format_version", FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="newer than this tool understands") as err:
        load_model_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_missing_metadata_refused(tmp_path, fmt):
    path = make_model_file(tmp_path, fmt=fmt, with_meta=False)
    with pytest.raises(ModelFileError, match=f"no {META_FILENAME} inside") as err:
        load_model_file(path)
    assert str(path) in str(err.value)


def test_minor_version_of_current_major_is_accepted(tmp_path):
    path = make_model_file(tmp_path, edit_meta=_set("format_version", f"{FORMAT_VERSION}.3"))
    assert load_model_file(path).meta["format_version"] == f"{FORMAT_VERSION}.3"


def test_garbage_missing_and_foreign_zip_files_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a model\n" * 10)
    with pytest.raises(ModelFileError, match="garbage.pt: not a model file"):
        load_model_file(garbage)

    with pytest.raises(ModelFileError, match="absent.pt2: model file not found"):
        load_model_file(tmp_path / "absent.pt2")

    foreign = tmp_path / "foreign.pt"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("x/extra/tpnet_meta.json", "{}")
    with pytest.raises(ModelFileError, match="foreign.pt: a zip file, but neither"):
        load_model_file(foreign)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notices
def test_metadata_that_is_not_json_refused(tmp_path):
    path = tmp_path / "broken_meta.pt"
    torch.jit.save(
        torch.jit.script(torch.nn.Identity()), str(path), _extra_files={META_FILENAME: "{not json"}
    )
    with pytest.raises(ModelFileError, match="broken_meta.pt: tpnet_meta.json is not valid JSON"):
        load_model_file(path)


def test_build_meta_keeps_the_calibrated_min_mean_prob():
    """An exported model must carry every calibrated post-processing value, or tpnet-infer applies another."""
    post = {"threshold": 0.4, "min_area_mm2": 2.0, "match_mm": 5.0, "min_mean_prob": 0.6}
    meta = build_meta(
        model_name="m", classes=CLASSES, encoding={}, spacing_mm=0.2, size_multiple=4,
        postprocess=post, export_method="trace",
    )  # fmt: skip
    assert meta["postprocess"] == post


def test_guidance_settings_travel_in_the_metadata():
    """Issue #16: the needle-guidance settings a model was validated with; files without them get the defaults."""
    meta = make_meta(0.2, ("bmode",), "trace", 2.0)
    assert LoadedModel(None, meta, "onnx", Path("m.onnx")).guidance == GuidanceParams()
    chosen = GuidanceParams(min_clearance_mm=4.0, max_angle_deg=60.0)
    meta["guidance"] = chosen.to_dict()
    validate_meta(meta, "m.onnx")
    assert LoadedModel(None, meta, "onnx", Path("m.onnx")).guidance == chosen
    for bad, message in (
        ({"min_clearance_mm": -1.0}, "min_clearance_mm"),
        ({"min_clearence_mm": 3.0}, "unknown"),
        ({"min_clearance_mm": "3"}, "numbers"),
        ([3.0], "numbers"),
    ):
        meta["guidance"] = bad
        with pytest.raises(ModelFileError, match=message):
            validate_meta(meta, "m.onnx")
