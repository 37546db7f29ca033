"""The house rules of tpnet's package, enforced: every import, at module level or inside a function, points down.

    layer 0  tpnet (the package's __init__), tpnet.core,      what every tool shares
             tpnet.extras
    layer 1  tpnet.data, tpnet.models                         datasets and networks
    layer 2  tpnet.configuration, tpnet.tracking,             Hydra schema, MLflow,
             tpnet.planning                                   the experiment plan (reads datasets)
    layer 3  tpnet.evaluation, tpnet.export, tpnet.inference  the tools
    layer 4  tpnet.training                                   may use everything below

A part may import itself and any lower layer; never a higher one, and never a neighbour on its own layer (the
tools do not import each other); only layer 0's parts may use one another. The clinicians' tool imports tpnet.core only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tpnet

LAYERS: dict[str, int] = {
    "tpnet": 0,
    "tpnet.core": 0,
    "tpnet.extras": 0,
    "tpnet.data": 1,
    "tpnet.models": 1,
    "tpnet.configuration": 2,
    "tpnet.tracking": 2,
    "tpnet.planning": 2,
    "tpnet.evaluation": 3,
    "tpnet.export": 3,
    "tpnet.inference": 3,
    "tpnet.training": 4,
}
LAYERS_SHORT = {name.split(".", 1)[1] for name in LAYERS if "." in name}  # core, data, ...
# Narrower promises than the layers give.
ONLY_FROM: dict[str, set[str]] = {"tpnet.inference": {"tpnet", "tpnet.core", "tpnet.inference"}}
# The one import that points up, by name: the ``tpnet-data`` command dispatches ``tpnet-data plan`` to the
# planner's CLI (lazily, in main). No library module of tpnet.data imports the planner.
COMMAND_DISPATCH: dict[str, set[str]] = {"tpnet.data.cli": {"tpnet.planning.cli"}}


def part_of(module: str) -> str:
    """``tpnet.core.io`` -> ``tpnet.core``; ``tpnet.configuration`` -> itself; ``tpnet`` -> ``tpnet``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def module_name(root: Path, path: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, wherever it sits (lazy imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name == "tpnet":  # ``from tpnet import core`` imports tpnet.core
                found += [
                    (node.lineno, f"tpnet.{alias.name}") for alias in node.names if alias.name in LAYERS_SHORT
                ]
    return [(line, name) for line, name in found if name == "tpnet" or name.startswith("tpnet.")]


def violations(package_root: Path) -> list[str]:
    problems = []
    for path in sorted(package_root.rglob("*.py")):
        module = module_name(package_root, path)
        importer = part_of(module)
        if importer not in LAYERS:
            problems.append(f"{path}: part {importer!r} has no layer in tests/test_import_layers.py")
            continue
        for line, target in imported_modules(path, module):
            imported = part_of(target)
            if imported == importer:
                continue
            if imported not in LAYERS:
                problems.append(f"{path}:{line}: imports {target}, which has no layer")
                continue
            allowed = LAYERS[imported] < LAYERS[importer] or LAYERS[imported] == LAYERS[importer] == 0
            allowed = allowed or target in COMMAND_DISPATCH.get(module, set())
            if importer in ONLY_FROM and imported not in ONLY_FROM[importer]:
                allowed = False
            if not allowed:
                problems.append(
                    f"{path}:{line}: {importer} (layer {LAYERS[importer]}) imports {target} "
                    f"(layer {LAYERS[imported]})"
                )
    return problems


def test_every_import_points_down():
    package_root = Path(tpnet.__file__).resolve().parent
    assert violations(package_root) == []


def test_evaluation_and_export_import_no_training_module():
    package_root = Path(tpnet.__file__).resolve().parent
    for part in ("evaluation", "export"):
        for path in (package_root / part).rglob("*.py"):
            names = [name for _, name in imported_modules(path, module_name(package_root, path))]
            assert not [n for n in names if n.startswith("tpnet.training")], path


@pytest.mark.parametrize(
    ("importer", "source", "complaint"),
    [
        (
            "core/postprocess.py",
            "from tpnet.inference.cli import main\n",
            "tpnet.core (layer 0) imports tpnet.inference",
        ),
        (
            "core/io.py",
            "def lazy():\n    import tpnet.data.dataset\n",
            "tpnet.core (layer 0) imports tpnet.data",
        ),
        ("evaluation/cli.py", "from tpnet.training.train import train\n", "imports tpnet.training"),
        (
            "export/cli.py",
            "from tpnet.inference import cli\n",
            "tpnet.export (layer 3) imports tpnet.inference",
        ),
        (
            "inference/cli.py",
            "from tpnet.data.dataset import FullFrameDataset\n",
            "tpnet.inference (layer 3) imports",
        ),
        ("core/model_file.py", "from ..training import train\n", "imports tpnet.training"),
    ],
)
def test_the_check_catches_upward_imports(tmp_path, importer, source, complaint):
    root = tmp_path / "tpnet"
    target = root / importer
    target.parent.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    target.write_text(source)
    found = violations(root)
    assert len(found) == 1 and complaint in found[0], found


def test_downward_and_own_imports_pass(tmp_path):
    root = tmp_path / "tpnet"
    (root / "training").mkdir(parents=True)
    (root / "core").mkdir()
    (root / "training" / "train.py").write_text(
        "from tpnet.core.io import read_bmode\nfrom tpnet.evaluation import evaluate\nfrom . import checkpoint\n"
    )
    (root / "core" / "io.py").write_text(
        "from tpnet import __version__\nfrom tpnet.core.encoding import Encoding\n"
    )
    assert violations(root) == []
