"""Record an exported model in MLflow: an MLflow Model of its training run, the dataset it learnt from, a
registered version and an alias (``models:/NAME@champion``).

With ``network`` (the eager module that was just exported and parity-checked), the model is logged with
``mlflow.pytorch.log_model(serialization_format="pt2")``: MLflow runs ``torch.export`` itself (batch, height and
width dynamic: the signature's -1 dims), stores the input example, the tensor signature and ``tpnet_meta.json``
as the MLflow Model's ``metadata``, and keeps our exported file beside it (``extra_files/``), so one
``models:/`` URI serves both ``mlflow.pytorch.load_model`` and tpnet-infer. That makes an MLflow 3 LoggedModel,
an output of the training run. Loading it back never unpickles: for pt2, MLflow 3.17's loader first checks that
every record of the archive is JSON, raw tensor bytes or accepted by ``torch.load(weights_only=True)``, then
calls ``torch.export.load`` (``mlflow.pytorch._load_model``; unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set,
which tpnet never does). MLflow's other serialization, pickle (the only one it offers for TorchScript modules),
is never used. Where MLflow cannot log the network that way (an MLflow without pt2, a network torch.export
rejects), the file is logged as a plain artifact under ``exported/<stem>_<suffix>/`` and the version points at
that folder, and a warning says so.

MLflow trouble never costs the exported file: every failure becomes a warning and a report of what was not done.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tpnet.core.encoding import Encoding
from tpnet.core.model_file import read_meta

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tpnet-export"
MODEL_NAME_IN_RUN = "tpnet-model"  # the LoggedModel's name
ENSEMBLE_ID_TAG = "tpnet.ensemble.id"  # an ensemble's exports and evaluations share the run with this tag


@dataclass
class NewRun:
    """Where to record an export that has no training run of its own (an ensemble of several)."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    experiment_of_run: str | None = None  # put the run into this run's experiment (a member's) when it exists


@dataclass
class DatasetRef:
    """The training data, recorded by reference (``mlflow.log_input``): nothing is uploaded."""

    name: str
    digest: str
    source: str  # e.g. the dataset's manifest.csv


def log_export_to_mlflow(
    model_file: Path,
    run_id: str | None,
    tracking_uri: str | None,
    register_name: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
    *,
    network: nn.Module | None = None,
    input_example: np.ndarray | None = None,
    register_alias: str | None = None,
    dataset: DatasetRef | None = None,
    new_run: NewRun | None = None,
) -> dict:
    """Log ``model_file`` to run ``run_id`` (else ``new_run``, else a new run in ``experiment_name``): as an
    MLflow Model when ``network`` is given (see the module docstring), else as a plain artifact; link the
    ``dataset``; register it as ``register_name`` and point ``register_alias`` at the new version.

    Returns ``{"logged", "run_id", "artifact_uri", "mlflow_model", "dataset_logged", "registered_name",
    "version", "alias"}``; fields stay None/False for whatever MLflow could not do (a warning says why).
    ``mlflow_model`` is ``{"model_id", "model_uri", "serialization"}`` when the MLflow Model was logged.
    Raises only if ``model_file`` is not a model file.
    """
    model_file = Path(model_file)
    meta, kind = read_meta(model_file)  # bad input is the caller's error, not an MLflow failure
    report: dict[str, Any] = {
        "logged": False,
        "run_id": run_id,
        "artifact_uri": None,
        "mlflow_model": None,
        "dataset_logged": False,
        "registered_name": None,
        "version": None,
        "alias": None,
    }
    where = tracking_uri or "the default MLflow tracking URI"
    # MLflow resolves models:/ and runs:/ URIs through its global (fluent) URIs, whatever a client was given:
    # point them at this store for the duration, so nothing lands in a default ./mlflow.db.
    with _fluent_uris(tracking_uri):
        artifact_dir = f"exported/{model_file.stem}_{model_file.suffix.lstrip('.')}"

        try:
            from mlflow import MlflowClient  # imported lazily: exporting must work without a tracking server

            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            if run_id is None:
                run_id = _find_or_create_run(client, tracking_uri, new_run, experiment_name, model_file)
                report["run_id"] = run_id
            client.get_run(run_id)  # an unknown run fails here, before anything is written
        except Exception as exc:  # network, auth, unknown run, broken store: all must leave the file alone
            _warn(
                f"{model_file}: NOT logged to MLflow at {where} (run {run_id}): {type(exc).__name__}: {exc}"
            )
            return report

        if network is not None:
            try:
                report["mlflow_model"] = _log_mlflow_model(
                    client, run_id, model_file, network, input_example, meta, kind
                )
                report["logged"] = True
                log.info("Logged %s to MLflow run %s as MLflow Model %s", model_file, run_id,
                         report["mlflow_model"]["model_uri"])  # fmt: skip
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [""])[0]  # torch.export's errors run to pages
                _warn(
                    f"{model_file}: NOT logged as an MLflow Model ({type(exc).__name__}: {reason}); "
                    f"logging the file as a plain artifact of run {run_id} instead"
                )
                log.debug("MLflow Model logging failed", exc_info=exc)
        if not report["logged"]:
            try:
                client.log_artifact(run_id, str(model_file), artifact_dir)
            except Exception as exc:
                _warn(
                    f"{model_file}: NOT logged to MLflow at {where} (run {run_id}): {type(exc).__name__}: {exc}"
                )
                return report
            report.update(logged=True, artifact_uri=f"runs:/{run_id}/{artifact_dir}/{model_file.name}")
            log.info("Logged %s to MLflow run %s as %s", model_file, run_id, report["artifact_uri"])

        if dataset is not None:
            try:
                _log_dataset(client, run_id, dataset)
                report["dataset_logged"] = True
            except Exception as exc:
                _warn(
                    f"{model_file}: dataset {dataset.name!r} NOT linked to run {run_id}: {type(exc).__name__}: {exc}"
                )

        if register_name:
            mlflow_model = report["mlflow_model"]
            source = mlflow_model["model_uri"] if mlflow_model else f"runs:/{run_id}/{artifact_dir}"
            try:
                version = _register(client, register_name, source, run_id, meta, kind,
                                    mlflow_model["model_id"] if mlflow_model else None)  # fmt: skip
            except Exception as exc:
                _warn(
                    f"{model_file}: logged to run {run_id} but NOT registered as {register_name!r} at {where}: "
                    f"{type(exc).__name__}: {exc}"
                )
                return report
            report.update(registered_name=register_name, version=version)
            log.info("Registered %s as %s version %s", model_file, register_name, version)
            if register_alias:
                try:
                    client.set_registered_model_alias(register_name, register_alias, str(version))
                except Exception as exc:
                    _warn(
                        f"{model_file}: registered as {register_name!r} version {version} but alias "
                        f"{register_alias!r} NOT set: {type(exc).__name__}: {exc}"
                    )
                    return report
                report["alias"] = register_alias
                log.info("models:/%s@%s now points at version %s", register_name, register_alias, version)
        elif register_alias:
            _warn(f"{model_file}: register_alias={register_alias!r} ignored: it needs register_name")
        return report


def _log_mlflow_model(
    client, run_id: str, model_file: Path, network: nn.Module,
    input_example: np.ndarray | None, meta: dict, kind: str,
) -> dict:  # fmt: skip
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from tpnet.export.export import cpu_eval_copy

    pt2_keyword = _pt2_keyword(mlflow.pytorch.log_model)
    if pt2_keyword is None:
        raise RuntimeError(f"MLflow {mlflow.__version__} cannot log a model in the pickle-free pt2 format")
    in_channels, num_classes = Encoding.from_dict(meta["encoding"]).in_channels, len(meta["classes"])
    if input_example is None:
        multiple = int(meta["size_multiple"])
        gen = torch.Generator().manual_seed(0)
        input_example = torch.rand(2, in_channels, 4 * multiple, 4 * multiple, generator=gen).numpy()
    # -1 = dynamic: MLflow's torch.export marks those dims Dim.AUTO (a batch of 2 keeps the batch dynamic).
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, -1, -1), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes, -1, -1), "logits")]),
    )
    tags = {**_version_tags(meta, kind), "tpnet.exported_file": model_file.name}
    with _active_run(client, run_id):
        info = mlflow.pytorch.log_model(
            cpu_eval_copy(network),
            name=MODEL_NAME_IN_RUN,
            input_example=np.ascontiguousarray(input_example, dtype=np.float32),
            signature=signature,
            metadata=meta,
            extra_files=[str(model_file)],  # the tpnet model file itself, for tpnet-infer
            # The exported graph needs torch only; pinning it skips MLflow's slow requirement inference.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            tags=tags,
            validate_serving_input=False,  # pyfunc's list-based serving check does not apply to tensors
            **pt2_keyword,
        )
    return {"model_id": info.model_id, "model_uri": info.model_uri, "serialization": "pt2"}


def _pt2_keyword(log_model) -> dict | None:
    """``serialization_format="pt2"`` (MLflow >= 3.x), the older ``export_model=True``, or None."""
    parameters = inspect.signature(log_model).parameters
    if "serialization_format" in parameters:
        return {"serialization_format": "pt2"}
    if "export_model" in parameters:
        return {"export_model": True}
    return None


@contextlib.contextmanager
def _active_run(client, run_id: str) -> Iterator[None]:
    """Make ``run_id`` MLflow's active run (a LoggedModel joins the active run's experiment), then put the
    run's status back: a finished training run stays finished."""
    import mlflow

    status = client.get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status=status)


@contextlib.contextmanager
def _fluent_uris(tracking_uri: str | None) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to ``tracking_uri`` (and no progress bars), then put back
    exactly: the module-level values (None = unset; ``mlflow.get_tracking_uri()`` would return the resolved
    default, and restoring that would pin every later call to this store) and the environment variables
    ``mlflow.set_tracking_uri`` writes as a side effect."""
    import os

    try:
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_state
        from mlflow.tracking._tracking_service import utils as tracking_state
    except ImportError:  # reported by the caller's first MLflow call, as a warning
        yield
        return
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    environment = {name: os.environ.get(name) for name in names}
    previous = getattr(tracking_state, "_tracking_uri", None), getattr(registry_state, "_registry_uri", None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # tqdm bars in a CLI's log are noise
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        if tracking_uri:
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _log_dataset(client, run_id: str, dataset: DatasetRef) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(dataset.source)
    entity = MetaDataset(source, name=dataset.name, digest=dataset.digest)._to_mlflow_entity()
    client.log_inputs(
        run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
    )


def _find_or_create_run(
    client, tracking_uri: str | None, new_run: NewRun | None, experiment_name: str, model_file: Path
) -> str:
    new_run = new_run or NewRun(name=f"export-{model_file.stem}")
    experiment_id = None
    if new_run.experiment_of_run:
        with contextlib.suppress(Exception):  # the member's run may live in another store: use the default
            experiment_id = client.get_run(new_run.experiment_of_run).info.experiment_id
    if experiment_id is None:
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(experiment_name, **_artifact_location(tracking_uri))
        )
    ensemble_id = new_run.tags.get(ENSEMBLE_ID_TAG)
    if ensemble_id:  # one run per ensemble: its exports (and evaluations) gather there
        found = client.search_runs(
            [experiment_id], f"tags.`{ENSEMBLE_ID_TAG}` = '{ensemble_id}'", max_results=1
        )
        if found:
            return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=new_run.name, tags=new_run.tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _artifact_location(tracking_uri: str | None) -> dict[str, str]:
    # With a SQLite store, artifacts go next to the database (as training's tracker does), not into ./mlruns.
    prefix = "sqlite:///"
    if tracking_uri and tracking_uri.startswith(prefix):
        return {
            "artifact_location": (Path(tracking_uri[len(prefix) :]).parent / "mlartifacts").resolve().as_uri()
        }
    return {}


def _version_tags(meta: dict, kind: str) -> dict[str, str]:
    tags = {
        "tpnet.model_name": str(meta["model_name"]),
        "tpnet.file_kind": kind,
        "tpnet.export_method": str(meta["export"]["method"]),
        "tpnet.format_version": str(meta["format_version"]),
        "tpnet.classes": ",".join(meta["classes"]),
    }
    ensemble = meta.get("ensemble")
    if isinstance(ensemble, Mapping):
        tags["tpnet.ensemble.n_members"] = str(ensemble.get("n_members"))
        runs = [str(m.get("mlflow_run_id")) for m in ensemble.get("members", [])]
        tags["tpnet.ensemble.member_run_ids"] = ",".join(runs)
    return tags


def _register(
    client, name: str, source: str, run_id: str, meta: dict, kind: str, model_id: str | None = None
) -> int:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="tpnet trigger-point segmentation model")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {**_version_tags(meta, kind), "tpnet.mlflow_model": "pt2" if model_id else "file artifact"}
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id)
    return int(version.version)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)
