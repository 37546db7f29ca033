"""The optional parts of the install ("extras") and the one line a command prints when its extra is missing.

The base install (``pip install tpnet``) is what the clinicians' ``tpnet-infer`` needs for ONNX models
(onnxruntime, no PyTorch); TorchScript / .pt2 models need ``pip install "tpnet[torch]"`` (``tpnet.core.model_file``
says so in one line). ``tpnet-train``, ``tpnet-eval`` and ``tpnet-export`` need the training stack,
``pip install "tpnet[train]"``. Their console scripts point at small entry modules that call :func:`run_tool`: it looks for the extra's top-level modules
(``importlib.util.find_spec``, nothing imported) before importing the tool, so a missing extra is one line on
stderr and exit 2, not an ``ImportError`` traceback. Standard library only: it runs before anything heavy."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable

# extra name -> (what it is called in the message, the top-level modules its packages provide)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    # TorchScript / .pt2 models; the base install runs ONNX models with onnxruntime and has no torch.
    "torch": ("PyTorch", ("torch",)),
    "train": (
        "training",
        ("torch", "hydra", "omegaconf", "mlflow", "albumentations", "torchvision", "scipy"),
    ),
}

EXIT_MISSING_EXTRA = 2
EXIT_INTERRUPTED = 130


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The names in ``modules`` that cannot be imported (no spec found, or the finder refuses them)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def install_command(extra: str) -> str:
    return f'pip install "tpnet[{extra}]"'


def missing_extra_message(prog: str, extra: str) -> str | None:
    """The one-line message for ``prog`` when ``extra`` is not (fully) installed, else ``None``."""
    label, modules = EXTRAS[extra]
    missing = missing_modules(modules)
    if not missing:
        return None
    return f"{prog}: needs the {label} extra: {install_command(extra)} (missing: {', '.join(missing)})"


def run_tool(prog: str, extra: str, module: str) -> None:
    """Check ``extra``, then import ``module`` and call its ``main()``. Missing extra: one line, exit 2.
    A Ctrl-C during the import (seconds: torch, Hydra, MLflow) ends as quietly as one during the run."""
    message = missing_extra_message(prog, extra)
    if message is not None:
        print(message, file=sys.stderr)
        sys.exit(EXIT_MISSING_EXTRA)
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (SIGINT) before it started; nothing was written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    main()
