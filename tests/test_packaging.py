"""tpnet installs like a library: the wheel carries the Hydra configs, a non-editable install outside the
repository composes tpnet-train's config with no environment variable, the base requirements are what
tpnet-infer needs for ONNX models (no torch), and without an extra a command needs (training; torch for
TorchScript / .pt2 models) the command says in one line what to install.

The wheel is built once per module from a copy of the sources (pyproject.toml, README.md, src/) and installed
with ``pip install --no-deps --target``: the installed commands are run from a fresh folder, with
``PYTHONPATH`` pointing at that target only, so ``import tpnet`` cannot fall back to the repository. A real
base install (a fresh venv, its dependencies from the index) takes ~17 s here, too long for the suite: the
dependencies come from this environment, and "not installed" is a meta-path finder refusing the module
(torch included), as in tests/inference/test_onnx_torch_free.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from model_files import blob_frame, make_model_file
from tpnet.core.io import write_png

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "src" / "tpnet" / "configs"
# The training stack's top-level modules (hydra-core, omegaconf, mlflow, albumentations, torchvision, scipy).
TRAINING_ONLY = ("hydra", "omegaconf", "mlflow", "albumentations", "kornia", "torchvision", "scipy")
NOT_IN_BASE = ("torch", *TRAINING_ONLY)  # what a plain ``pip install tpnet`` does not bring
# What tpnet-infer needs for ONNX models, and so the base install (distribution names as in the wheel's metadata).
BASE_REQUIREMENTS = {
    "numpy", "opencv-python-headless", "tifffile", "pyyaml", "tqdm", "pydicom", "pillow", "onnxruntime",
    "jinja2", "filelock",  # the report's templates; the output folder's OS lock (issue #14)
    "nibabel", "pynrrd",  # NIfTI and NRRD sweeps (issue #17, core/volume_io.py)
    "matplotlib",  # tpnet-infer --longitudinal's trend plots (issue #18)
}  # fmt: skip

# Runs an installed console script (argv[1]) in this process, after printing where tpnet was imported from;
# with BLOCKED set, a meta-path finder makes those modules look not installed.
RUNNER = textwrap.dedent(
    """
    import importlib.abc, runpy, sys

    BLOCKED = set({blocked!r})

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked by test)")
            return None

    sys.meta_path.insert(0, NotInstalled())
    import tpnet

    print("TPNET_FILE " + tpnet.__file__, flush=True)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the repository, and a stale build/
    # would put files into the wheel that src/ no longer has.
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = work / "dist"
    # --no-build-isolation: the build backend (setuptools) is in this environment; no index needed.
    proc = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(source)]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("tpnet-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    proc = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def _installed_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"TPNET_CONFIG_DIR", "PYTHONPATH"}}
    return {**env, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}


def _run_installed(
    site: Path, command: str, args: list[str], cwd: Path, blocked=()
) -> subprocess.CompletedProcess:
    script = site / "bin" / command
    assert script.is_file(), f"the wheel declares no {command} console script"
    runner = RUNNER.format(blocked=tuple(blocked))
    return _run([sys.executable, "-c", runner, str(script), *args], cwd=cwd, env=_installed_env(site))


def _imported_from(proc: subprocess.CompletedProcess) -> Path:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("TPNET_FILE "))
    return Path(line.removeprefix("TPNET_FILE ")).resolve()


def test_wheel_contains_every_config(wheel):
    configs = {p.relative_to(CONFIGS.parents[1]).as_posix() for p in CONFIGS.rglob("*.yaml")}
    assert "tpnet/configs/train.yaml" in configs and "tpnet/configs/hydra/launcher/slurm.yaml" in configs
    names = set(zipfile.ZipFile(wheel).namelist())
    assert sorted(configs - names) == []
    templates = REPO / "src" / "tpnet" / "inference" / "templates"
    shipped = {f"tpnet/inference/templates/{p.name}" for p in templates.iterdir() if p.is_file()}
    assert shipped and sorted(shipped - names) == []  # the report cannot be written without them


def test_base_requirements_are_what_inference_needs(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode())
    requirements = [Requirement(line) for line in meta.get_all("Requires-Dist")]
    base = {r.name.lower() for r in requirements if r.marker is None}
    assert base == BASE_REQUIREMENTS  # no torch: ONNX models run with onnxruntime
    torch_extra = [r for r in requirements if r.marker and r.marker.evaluate({"extra": "torch"})]
    assert [r.name.lower() for r in torch_extra] == ["torch"]
    train = {r.name.lower(): r for r in requirements if r.marker and r.marker.evaluate({"extra": "train"})}
    assert {"torchvision", "albumentations", "hydra-core", "mlflow", "scipy", "onnx", "onnxscript"} <= set(
        train
    )
    assert train["tpnet"].extras == {"torch"}  # the training stack brings torch through the torch extra
    # hydra-core 1.3.4 is the first release that refuses dangerous _target_ values in instantiate.
    assert not train["hydra-core"].specifier.contains("1.3.3")
    assert train["hydra-core"].specifier.contains("1.3.4")


def test_installed_wheel_composes_train_config_without_env(site, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    proc = _run_installed(site, "tpnet-train", ["--cfg", "job"], cwd)

    assert proc.returncode == 0, proc.stderr
    assert _imported_from(proc).is_relative_to(site.resolve())
    assert "\nmodel:\n" in proc.stdout
    assert "_target_: tpnet.models" in proc.stdout
    assert list(cwd.iterdir()) == []  # --cfg job prints and writes nothing


def test_config_dir_env_overrides_the_shipped_configs(site, tmp_path):
    own = tmp_path / "own_configs"
    shutil.copytree(site / "tpnet" / "configs", own)
    train_yaml = own / "train.yaml"
    text = train_yaml.read_text()
    assert "\nseed: 0\n" in text
    train_yaml.write_text(text.replace("\nseed: 0\n", "\nseed: 4711\n"))
    env = {**_installed_env(site), "TPNET_CONFIG_DIR": str(own)}
    runner = RUNNER.format(blocked=())

    proc = _run(
        [sys.executable, "-c", runner, str(site / "bin" / "tpnet-train"), "--cfg", "job"],
        cwd=tmp_path,
        env=env,
    )

    assert proc.returncode == 0, proc.stderr
    assert "\nseed: 4711\n" in proc.stdout


@pytest.mark.parametrize("command", ["tpnet-train", "tpnet-eval", "tpnet-export"])
def test_without_training_extra_one_line_and_exit_2(site, tmp_path, command):
    proc = _run_installed(site, command, [], tmp_path, blocked=NOT_IN_BASE)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert _imported_from(proc).is_relative_to(site.resolve())
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{command}: ")
    assert "tpnet[train]" in lines[0]
    assert "torch" in lines[0] and "hydra" in lines[0]  # names what is missing


def test_data_plan_without_training_extra_one_line_and_exit_2(site, tmp_path):
    proc = _run_installed(site, "tpnet-data", ["plan", str(tmp_path)], tmp_path, blocked=NOT_IN_BASE)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("tpnet-data plan: ") and "tpnet[train]" in line and "torch" in line


def _one_frame(tmp_path: Path) -> Path:
    in_dir = tmp_path / "in"
    bmode = blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0]
    write_png(in_dir / "one_bmode.png", np.round(bmode * 255).astype(np.uint8))
    return in_dir


def test_installed_infer_runs_an_onnx_model_on_the_base_install(site, tmp_path):
    model = make_model_file(tmp_path / "model", fmt="onnx")
    out = tmp_path / "out"
    args = [
        "--model",
        str(model),
        "--input",
        str(_one_frame(tmp_path)),
        "--output",
        str(out),
        "--spacing-mm",
        "0.2",
    ]

    proc = _run_installed(site, "tpnet-infer", args, tmp_path, blocked=NOT_IN_BASE)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _imported_from(proc).is_relative_to(site.resolve())
    assert (out / "masks" / "one.png").is_file()
    assert "What this model can and cannot tell" in (out / "report.html").read_text()  # templates installed


def test_installed_infer_names_the_torch_extra_for_a_torchscript_model(site, tmp_path):
    model = make_model_file(tmp_path / "model")
    out = tmp_path / "out"
    args = ["--model", str(model), "--input", str(_one_frame(tmp_path)), "--output", str(out)]

    proc = _run_installed(site, "tpnet-infer", args, tmp_path, blocked=NOT_IN_BASE)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("tpnet-infer: ") and 'pip install "tpnet[torch]"' in line and "format=onnx" in line


def test_installed_infer_runs_a_torchscript_model_with_the_torch_extra(site, tmp_path):
    model = make_model_file(tmp_path / "model")
    out = tmp_path / "out"
    args = [
        "--model",
        str(model),
        "--input",
        str(_one_frame(tmp_path)),
        "--output",
        str(out),
        "--spacing-mm",
        "0.2",
    ]

    proc = _run_installed(site, "tpnet-infer", args, tmp_path, blocked=TRAINING_ONLY)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _imported_from(proc).is_relative_to(site.resolve())
    assert (out / "masks" / "one.png").is_file()
