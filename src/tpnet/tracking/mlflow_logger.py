"""MLflow tracking that can never kill a training run.

Every call goes through ``_safe``: a failure (server down, network gone) is counted, warned about once, and the
call is dropped; after a failure the tracker backs off for ``retry_after_s`` before trying the server again.
Metrics that could not be sent are queued (bounded) and replayed when the server answers again. At the end,
``summary_of_losses()`` says exactly what was not logged. The local run folder is written independently.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# MLflow retries HTTP calls for minutes by default; a training loop must not stall that long on a dead server.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_QUEUED_METRICS = 100_000


def resolve_tracking_uri(uri: str | None) -> str:
    """Default: a SQLite store ``mlflow.db`` in the working directory, made absolute so that every process
    (DDP ranks, subprocesses) writes to the same file. MLflow 3 refuses a plain ./mlruns folder store."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


class MlflowTracker:
    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        run_name: str | None = None,
        run_id: str | None = None,
        enabled: bool = True,
        retry_after_s: float = 30.0,
    ) -> None:
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.run_id = run_id
        self.enabled = enabled
        self.retry_after_s = retry_after_s
        self.resumed = False
        self.experiment_id: str | None = None
        self._client = None
        self._down_since: float | None = None
        self._queued: list[tuple[str, float, int]] = []
        self.lost: dict[str, int] = {}

    # -- plumbing -----------------------------------------------------------------------------------------
    def _safe(self, what: str, fn: Callable[[], Any], count: int = 1) -> Any:
        if not self.enabled:
            return None
        if self._down_since is not None and time.monotonic() - self._down_since < self.retry_after_s:
            self._count_lost(what, count)
            return None
        try:
            out = fn()
        except Exception as exc:  # any failure of the tracking backend
            self._count_lost(what, count)
            if _is_rejected_request(exc):  # the server answered: it is up, this one call was refused
                log.warning("MLflow: %s refused (%s)", what, exc)
                return None
            if self._down_since is None:
                log.warning(
                    "MLflow: %s failed (%s: %s); training continues, will retry",
                    what,
                    type(exc).__name__,
                    exc,
                )
            self._down_since = time.monotonic()
            return None
        if self._down_since is not None:
            log.warning("MLflow: tracking server reachable again")
            self._down_since = None
        return out

    def _count_lost(self, what: str, count: int) -> None:
        # count 0: the caller keeps the items (queued metrics) and reports them itself if they never get through.
        if count:
            self.lost[what] = self.lost.get(what, 0) + count

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- run lifecycle --------------------------------------------------------------------------------------
    def start(self, tags: Mapping[str, str] | None = None) -> str | None:
        """Create the run, or continue ``run_id`` (resume). Returns the run id, or None when unreachable."""

        def _start() -> str:
            if self.run_id:
                run = self.client.get_run(self.run_id)  # raises if it does not exist
                self.client.update_run(self.run_id, status="RUNNING")
                self.resumed = True
                self.experiment_id, self.run_name = run.info.experiment_id, run.info.run_name
                return self.run_id
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                experiment_id = self.client.create_experiment(
                    self.experiment_name, **self._artifact_location()
                )
            else:
                experiment_id = experiment.experiment_id
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=dict(tags or {}))
            self.experiment_id, self.run_name = experiment_id, run.info.run_name
            return run.info.run_id

        run_id = self._safe("start run", _start)
        if run_id:
            self.run_id = run_id
            if tags and self.resumed:
                self.set_tags(tags)
        return self.run_id

    def _artifact_location(self) -> dict[str, str]:
        # With a SQLite store, keep artifacts next to the database instead of MLflow's cwd-relative default.
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri[len("sqlite:///") :])
            return {"artifact_location": (db.parent / "mlartifacts").resolve().as_uri()}
        return {}

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._flush_queue()
            self._safe("end run", lambda: self.client.set_terminated(self.run_id, status=status))

    # -- logging --------------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.run_id:
            self.lost["params"] = self.lost.get("params", 0) + len(params)
            return
        from mlflow.entities import Param

        if self.resumed:
            return  # params were logged by the first attempt; MLflow refuses to change them
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            chunk = items[i : i + 100]
            self._safe(
                "params", lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk), len(chunk)
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.run_id:
            self.lost["tags"] = self.lost.get("tags", 0) + len(tags)
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._safe("tags", lambda: self.client.log_batch(self.run_id, tags=items), len(items))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        # NaN is not logged; '@' (as in det_f1@3mm) is not allowed in MLflow metric names.
        self._queued.extend((metric_name(k), float(v), step) for k, v in metrics.items() if v == v)
        del self._queued[:-MAX_QUEUED_METRICS]
        self._flush_queue()

    def _flush_queue(self) -> None:
        if not self._queued:
            return
        if not self.run_id:
            self.start()  # the server may have come up since
            if not self.run_id:
                return
        from mlflow.entities import Metric

        pending = list(self._queued)
        now = int(time.time() * 1000)

        def _send() -> bool:
            for i in range(0, len(pending), 1000):
                chunk = [Metric(k, v, now, s) for k, v, s in pending[i : i + 1000]]
                self.client.log_batch(self.run_id, metrics=chunk)
            return True

        if self._safe("metrics", _send, 0):
            self._queued.clear()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.run_id:
            self.lost["artifacts"] = self.lost.get("artifacts", 0) + 1
            return
        self._safe(
            f"artifact {Path(path).name}",
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
        )

    def describe(self) -> str | None:
        """Where to find the run: ``MLflow run NAME (ID) in experiment E at URI`` plus its web address (a server)
        or the command that serves a local store; None when there is no run."""
        if not self.run_id:
            return None
        text = f"MLflow run {self.run_name} ({self.run_id}) in experiment {self.experiment_name} at {self.tracking_uri}"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{text}: {self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{text} (browse: mlflow ui --backend-store-uri {self.tracking_uri})"

    def summary_of_losses(self) -> str | None:
        """One sentence saying what did not reach MLflow, or None when everything did."""
        lost = dict(self.lost)
        if self._queued:
            lost["metric values still queued"] = len(self._queued)
        if not self.enabled or not lost:
            return None
        parts = ", ".join(f"{what}: {n}" for what, n in sorted(lost.items()))
        return f"not logged to MLflow at {self.tracking_uri} ({parts}); the local run folder has everything"


def metric_name(key: str) -> str:
    return key.replace("@", "_at_")


def _is_rejected_request(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "INVALID_STATE"}


def unique_run_name(recipe: str, model: str, fold: int | None = None) -> str:
    """``<recipe>-<model>[-fold<k>]-<6 hex>``, e.g. ``cpu_demo-unet-fold2-3fa9c1``: says what ran, and the random
    part (os.urandom, untouched by the run's seed: MLflow's own random names repeat once the seed is set) keeps
    two runs of one config apart."""
    fold_part = f"-fold{fold}" if fold is not None else ""
    return f"{recipe}-{model}{fold_part}-{secrets.token_hex(3)}"


# MLflow refuses longer tag values (8000 characters in MLflow 3); an override list rarely comes near.
MAX_TAG_CHARS = 5000


def run_tags(
    run_dir: Path, recipe: str, model: str, overrides: list[str] | tuple[str, ...], fold: int | None = None,
    sweep_dir: Path | None = None, job_num: int | None = None,
) -> dict[str, str]:  # fmt: skip
    """Tags that find a run again: its folder, recipe, model, the command line's overrides, the CV fold and, for
    a Hydra multirun (``-m``), the sweep's folder (``sweep_id``) and the job's number in it."""
    tags = {
        "run_folder": str(Path(run_dir).resolve()),
        "recipe": recipe,
        "model": model,
        "overrides": (" ".join(overrides) or "(none)")[:MAX_TAG_CHARS],
    }
    if fold is not None:
        tags["fold"] = str(fold)
    if sweep_dir is not None:
        tags["sweep_id"] = str(sweep_dir)
        tags["sweep_job"] = str(job_num)
    return tags


def default_tags(device: str, dataset_name: str, dataset_fingerprint: str) -> dict[str, str]:
    return {
        "git_commit": _git_commit(),
        "dataset": dataset_name,
        "dataset_fingerprint": dataset_fingerprint,
        "host": socket.gethostname(),
        "device": device,
    }


def _git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": value} for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
