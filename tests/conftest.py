"""Shared fixtures. Tests mirror the package: tests/core, tests/data, tests/models, tests/training, ..."""

from __future__ import annotations

import os

# Two cores here: one intra-op thread per test process keeps parallel subprocesses from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _no_default_mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """MLflow 3's default tracking URI is ./mlflow.db in the working directory: any in-process call that
    forgets its URI would write into the repository. Point the default at a throw-away store instead."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('default_mlflow') / 'mlflow.db'}"
    yield
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session", autouse=True)
def _preprocessed_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """tpnet-train's preprocessed frame cache defaults to ./.cache/tpnet/preprocessed: keep the suite's
    (training subprocesses inherit the variable) out of the repository."""
    previous = os.environ.get("TPNET_PREPROCESSED")
    os.environ["TPNET_PREPROCESSED"] = str(tmp_path_factory.mktemp("preprocessed"))
    yield
    if previous is None:
        os.environ.pop("TPNET_PREPROCESSED", None)
    else:
        os.environ["TPNET_PREPROCESSED"] = previous


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic dataset of ``train_helpers.SYNTH``, generated once per session."""
    from tpnet.data.synth import ensure_synthetic_dataset
    from train_helpers import SYNTH

    cache = tmp_path_factory.mktemp("synthetic_cache")
    ensure_synthetic_dataset(cache, **SYNTH)
    return cache


@pytest.fixture(scope="session")
def tiny_train_overrides(synthetic_cache: Path) -> list[str]:
    from train_helpers import tiny_overrides

    return tiny_overrides(synthetic_cache)


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow SQLite store: creating one costs seconds of migrations, copying it does not."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, mlflow_store_template: Path) -> str:
    """A fresh SQLite tracking store for one test (a copy of the template)."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_store_template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path):
    """ONE real ``mlflow server`` on 127.0.0.1 for the session; yields its URL."""
    from train_helpers import start_mlflow_server, stop_mlflow_server

    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), mlflow_store_template)
    yield url
    stop_mlflow_server(proc)


@pytest.fixture(scope="session")
def reference_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_train_overrides: list[str], mlflow_store_template: Path
) -> Path:
    """An uninterrupted 3-epoch tiny run (seed 0): the baseline for resume equality, and a checkpoint for the
    evaluation and corrupted-checkpoint tests. Returns its run folder (``mlflow.db`` lies beside it)."""
    from train_helpers import run_train

    root = tmp_path_factory.mktemp("reference")
    shutil.copy(mlflow_store_template, root / "mlflow.db")
    result = run_train(
        [
            *tiny_train_overrides,
            "trainer.max_epochs=3",
            f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"hydra.run.dir={root / 'run'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"
