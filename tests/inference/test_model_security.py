"""A crafted model file must never run code: real archives with real payloads, checked by their side effect.

Each payload, if it ever runs, creates a marker file; the tests assert the marker does not exist after loading
(in-process and through ``tpnet-infer``), whatever the error message says.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model_files import blob_frame, make_model_file
from tpnet.core.archive_safety import UnsafeModelError, check_pt2_archive, check_torchscript_archive
from tpnet.core.io import write_png
from tpnet.core.model_file import ModelFileError, load_model_file

PREFIX = "model/"  # top-level folder of make_model_file's .pt2 archives


class OpensMarker:
    """Unpickling this calls ``open(marker, "w")``: the file's existence proves the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_saved_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(OpensMarker(marker), buffer)
    return buffer.getvalue()


def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy the zip ``src`` to ``dst`` after ``edit`` changed its {member: bytes} map in place."""
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    edit(members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return dst


def _edit_json(members: dict[str, bytes], name: str, change: Callable[[dict], None]) -> None:
    tree = json.loads(members[name])
    change(tree)
    members[name] = json.dumps(tree).encode()


def _pickled_weight(marker: Path) -> Callable[[dict[str, bytes]], None]:
    """torch.export.load unpickles weights marked use_pickle with weights_only=False (the issue's case)."""

    def edit(members):
        config = f"{PREFIX}data/weights/model_weights_config.json"
        first = next(iter(json.loads(members[config])["config"]))

        def mark(tree):
            tree["config"][first]["use_pickle"] = True
            path_name = tree["config"][first]["path_name"]
            members[f"{PREFIX}data/weights/{path_name}"] = _torch_saved_payload(marker)

        _edit_json(members, config, mark)

    return edit


def _pickled_sample_inputs(marker: Path) -> Callable[[dict[str, bytes]], None]:
    """Sample inputs that fail weights_only=True are loaded again with weights_only=False."""

    def edit(members):
        members[f"{PREFIX}data/sample_inputs/model.pt"] = _torch_saved_payload(marker)

    return edit


def _guard_code(marker: Path) -> Callable[[dict[str, bytes]], None]:
    """``guards_code`` is Python that ``ExportedProgram.module()`` compiles and runs on each call."""

    def edit(members):
        def add(tree):
            tree["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]

        _edit_json(members, f"{PREFIX}models/model.json", add)

    return edit


def _symbolic_size(marker: Path) -> Callable[[dict[str, bytes]], None]:
    """Symbolic sizes are parsed by sympy.sympify, i.e. eval."""

    def edit(members):
        def inject(tree):
            expr = _first_with_key(tree, "expr_str")
            expr["expr_str"] = f"(open({str(marker)!r}, 'w') and {expr['expr_str']})"

        _edit_json(members, f"{PREFIX}models/model.json", inject)

    return edit


def _first_with_key(tree: object, key: str) -> dict:
    stack = [tree]
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            if key in item:
                return item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise AssertionError(f"the test model's program has no {key!r}")


PT2_PAYLOADS = {
    "pickled_weight": _pickled_weight,
    "pickled_sample_inputs": _pickled_sample_inputs,
    "guard_code": _guard_code,
    "symbolic_size": _symbolic_size,
}


class SavesToMarker(nn.Module):
    """A TorchScript model whose forward writes a file with ``torch.save`` (aten::save)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.head = nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return self.head(x)


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("clean"), "pt2")


@pytest.fixture(scope="module")
def clean_pt(tmp_path_factory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("clean"), "torchscript")


def _crafted_pt2(clean_pt2: Path, tmp_path: Path, payload: str) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    crafted = _rewrite(clean_pt2, tmp_path / f"{payload}.pt2", PT2_PAYLOADS[payload](marker))
    return crafted, marker


def _file_writing_torchscript(clean_pt: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real tpnet-looking .pt: the clean file's metadata, but a network that calls torch.save."""
    marker = tmp_path / "payload_ran"
    with zipfile.ZipFile(clean_pt) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith("/extra/tpnet_meta.json"))
        meta = archive.read(meta_name).decode()
    crafted = tmp_path / "saves.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices
        scripted = torch.jit.script(SavesToMarker(str(marker)))
        torch.jit.save(scripted, str(crafted), _extra_files={"tpnet_meta.json": meta})
    return crafted, marker


def _load_and_run(path: Path) -> str | None:
    """What tpnet-infer does with a model: load it, then run a frame through it; the load error, if any."""
    try:
        model = load_model_file(path)
    except ModelFileError as exc:
        return str(exc)
    with torch.no_grad():
        model.module(torch.zeros(2, 3, 16, 16))
    return None


@pytest.mark.parametrize("payload", sorted(PT2_PAYLOADS))
def test_crafted_pt2_is_refused_in_process_without_running(clean_pt2, tmp_path, payload):
    crafted, marker = _crafted_pt2(clean_pt2, tmp_path, payload)
    error = _load_and_run(crafted)
    assert not marker.exists(), f"the {payload} payload ran while loading {crafted}"
    assert error is not None and str(crafted) in error and "refused" in error


TORCH_2_11_GUARD = "(max(1, L['x'].size()[3] // 32)*max(1, L['x'].size()[2] // 32)) != 1"


def test_pt2_with_torch_2_11_size_guards_loads_and_runs(clean_pt2, tmp_path):
    """torch 2.11's exporter writes Python's max into a U-Net's shape guards (a .pt2 exported on a GPU machine
    with torch 2.11 was refused by tpnet-infer, 2026-12-04): size arithmetic with max / min is allowed."""

    def edit(members):
        _edit_json(
            members, f"{PREFIX}models/model.json", lambda tree: tree.update(guards_code=[TORCH_2_11_GUARD])
        )

    archive = _rewrite(clean_pt2, tmp_path / "torch211.pt2", edit)
    check_pt2_archive(archive.read_bytes())
    model = load_model_file(archive)
    with torch.no_grad():
        assert model.module(torch.zeros(1, 3, 64, 64)).shape[-2:] == (64, 64)
        with pytest.raises(AssertionError, match="Guard failed"):  # the guard is torch's, and it ran
            model.module(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize(
    "guard", ["max(open('x', 'w'), 1) != 1", "min(__import__('os').system('true'), 1) == 0"]
)
def test_pt2_guard_with_max_still_refuses_other_calls(clean_pt2, tmp_path, guard):
    def edit(members):
        _edit_json(members, f"{PREFIX}models/model.json", lambda tree: tree.update(guards_code=[guard]))

    with pytest.raises(UnsafeModelError, match="guard"):
        check_pt2_archive(_rewrite(clean_pt2, tmp_path / "crafted.pt2", edit).read_bytes())


def _infer_cli(model: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    frames = tmp_path / "frames"
    frames.mkdir()
    bmode, _ = blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])
    write_png(frames / "scan_bmode.png", np.round(bmode * 255).astype(np.uint8))
    code = "import sys; from tpnet.inference.cli import main; sys.exit(main())"
    argv = [
        "--model",
        str(model),
        "--input",
        str(frames),
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


@pytest.mark.parametrize("payload", sorted(PT2_PAYLOADS))
def test_crafted_pt2_is_refused_by_tpnet_infer_without_running(clean_pt2, tmp_path, payload):
    crafted, marker = _crafted_pt2(clean_pt2, tmp_path, payload)
    result = _infer_cli(crafted, tmp_path)
    assert not marker.exists(), f"tpnet-infer ran the {payload} payload of {crafted}"
    assert result.returncode == 2, result.stderr
    assert "unusable model" in result.stderr and str(crafted) in result.stderr
    assert "Traceback" not in result.stderr


def test_torchscript_that_writes_files_is_refused(clean_pt, tmp_path):
    crafted, marker = _file_writing_torchscript(clean_pt, tmp_path)
    error = _load_and_run(crafted)
    assert not marker.exists(), f"{crafted} wrote a file when run"
    assert error is not None and "refused" in error and str(crafted) in error
    result = _infer_cli(crafted, tmp_path)
    assert not marker.exists(), f"tpnet-infer let {crafted} write a file"
    assert result.returncode == 2 and str(crafted) in result.stderr


def test_torchscript_pickle_cannot_name_python_functions(clean_pt, tmp_path):
    """TorchScript's own unpickler resolves only TorchScript types: a GLOBAL such as builtins.open in
    ``data.pkl`` fails to load and never runs (this held before the archive checks, too)."""
    marker = tmp_path / "payload_ran"

    def poison(members):
        name = next(n for n in members if n.endswith("/data.pkl"))
        members[name] = __import__("pickle").dumps(OpensMarker(marker), protocol=2)

    crafted = _rewrite(clean_pt, tmp_path / "pickled.pt", poison)
    error = _load_and_run(crafted)
    assert not marker.exists()
    assert error is not None and str(crafted) in error


def _members_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _as_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("target", "why"),
    [("torch.load", "torch callable"), ("torch.ops.aten.from_file.default", "reads files"),
     ("torch.ops.image.write_file.default", "custom op"), ("torch.ops.aten.__class__", "dunder")],
)  # fmt: skip
def test_graph_nodes_may_call_only_aten_tensor_operators(clean_pt2, target, why):
    members = _members_of(clean_pt2)
    _edit_json(
        members,
        f"{PREFIX}models/model.json",
        lambda t: t["graph_module"]["graph"]["nodes"][0].update(target=target),
    )
    with pytest.raises(UnsafeModelError, match="only ATen"):
        check_pt2_archive(_as_zip(members))


@pytest.mark.parametrize(
    "extra_member",
    ["data/aotinductor/model/model.so", "data/weights/model.pt", "data/constants/custom_obj_0", "../version"],
)
def test_members_torch_would_execute_or_unpickle_are_refused(clean_pt2, extra_member):
    members = _members_of(clean_pt2)
    members[PREFIX + extra_member] = b"\x80\x02N."
    with pytest.raises(UnsafeModelError, match="unexpected|AOTInductor"):
        check_pt2_archive(_as_zip(members))


def test_members_outside_the_archive_folder_are_refused(clean_pt2):
    members = _members_of(clean_pt2)
    members["version"] = b"1"  # torch.export.load's legacy path would read such a root-level archive
    with pytest.raises(UnsafeModelError, match="outside"):
        check_pt2_archive(_as_zip(members))


def test_clean_model_files_pass_the_checks(clean_pt2, clean_pt):
    check_pt2_archive(clean_pt2.read_bytes())
    check_torchscript_archive(clean_pt.read_bytes())
    for path in (clean_pt2, clean_pt):
        out = load_model_file(path).module(torch.zeros(2, 3, 16, 16))
        assert out.shape == (2, 4, 16, 16)
