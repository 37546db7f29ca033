"""Attach an exported model file to its MLflow training run and, optionally, register it.

``mlflow.pytorch.log_model`` refuses TorchScript modules, and our file already carries its own metadata,
so the file is logged as a plain artifact under ``exported/<stem>_<suffix>/`` and the model version points
at that folder (``models:/NAME/VERSION`` then downloads the folder holding the file). MLflow trouble never
costs the exported file: every failure becomes a warning and a report of what was not done.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from tpnet.core.model_file import read_meta

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tpnet-export"


def log_export_to_mlflow(
    model_file: Path,
    run_id: str | None,
    tracking_uri: str | None,
    register_name: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
) -> dict:
    """Log ``model_file`` to run ``run_id`` (a new run in ``experiment_name`` if None) and register it.

    Returns ``{"logged", "run_id", "artifact_uri", "registered_name", "version"}``; fields stay None/False
    for whatever MLflow could not do (a warning says why). Raises only if ``model_file`` is not a model file.
    """
    model_file = Path(model_file)
    meta, kind = read_meta(model_file)  # bad input is the caller's error, not an MLflow failure
    report = {
        "logged": False,
        "run_id": run_id,
        "artifact_uri": None,
        "registered_name": None,
        "version": None,
    }
    where = tracking_uri or "the default MLflow tracking URI"
    artifact_dir = f"exported/{model_file.stem}_{model_file.suffix.lstrip('.')}"

    try:
        from mlflow import MlflowClient  # imported lazily: exporting must work without a tracking server

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if run_id is None:
            run_id = _new_run(client, experiment_name, model_file)
        client.log_artifact(run_id, str(model_file), artifact_dir)
    except Exception as exc:  # network, auth, unknown run, broken store: all must leave the file alone
        _warn(f"{model_file}: NOT logged to MLflow at {where} (run {run_id}): {type(exc).__name__}: {exc}")
        return report
    report.update(logged=True, run_id=run_id, artifact_uri=f"runs:/{run_id}/{artifact_dir}/{model_file.name}")
    log.info("Logged %s to MLflow run %s as %s", model_file, run_id, report["artifact_uri"])

    if register_name:
        try:
            version = _register(client, register_name, f"runs:/{run_id}/{artifact_dir}", run_id, meta, kind)
        except Exception as exc:
            _warn(
                f"{model_file}: logged to run {run_id} but NOT registered as {register_name!r} at {where}: "
                f"{type(exc).__name__}: {exc}"
            )
            return report
        report.update(registered_name=register_name, version=version)
        log.info("Registered %s as %s version %s", model_file, register_name, version)
    return report


def _new_run(client, experiment_name: str, model_file: Path) -> str:
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    run = client.create_run(experiment_id, run_name=f"export-{model_file.stem}")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _register(client, name: str, source: str, run_id: str, meta: dict, kind: str) -> int:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="tpnet trigger-point segmentation model")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {
        "tpnet.model_name": str(meta["model_name"]),
        "tpnet.file_kind": kind,
        "tpnet.export_method": str(meta["export"]["method"]),
        "tpnet.format_version": str(meta["format_version"]),
        "tpnet.classes": ",".join(meta["classes"]),
    }
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    return int(version.version)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)
