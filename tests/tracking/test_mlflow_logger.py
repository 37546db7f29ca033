"""MlflowTracker against real stores: a SQLite file and the session's ``mlflow server`` (reached through a TCP
forwarder that the test cuts and restores, i.e. a real network outage)."""

from __future__ import annotations

import contextlib
import math
import re
import socket
import threading
import time
import uuid
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from tpnet.tracking.mlflow_logger import MlflowTracker, flatten, run_tags, unique_run_name
from train_helpers import free_port


def test_more_than_100_params_are_logged_in_batches_and_a_resumed_run_is_continued(mlflow_uri):
    params = {f"group.param_{i:03d}": i for i in range(250)}
    tracker = MlflowTracker(mlflow_uri, "unit")
    run_id = tracker.start({"dataset": "d1"})
    tracker.log_params(params)
    tracker.end()
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(run_id).data.params == {k: str(v) for k, v in params.items()}

    again = MlflowTracker(mlflow_uri, "unit", run_id=run_id)
    assert again.start({"dataset": "d1", "attempt": "2"}) == run_id and again.resumed
    again.log_params({"group.param_000": "changed"})  # MLflow refuses changed params: not even tried
    again.end()
    run = client.get_run(run_id)
    assert run.data.params["group.param_000"] == "0" and run.data.tags["attempt"] == "2"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert again.summary_of_losses() is None


def test_metric_names_are_sanitised_and_nan_is_not_logged(mlflow_uri):
    tracker = MlflowTracker(mlflow_uri, "unit")
    run_id = tracker.start()
    tracker.log_metrics({"val/det_f1@3mm": 0.5, "val/loc_err_mm": math.nan, "val/loss": 1.25}, step=1)
    tracker.end()
    metrics = MlflowClient(tracking_uri=mlflow_uri).get_run(run_id).data.metrics
    assert metrics == {"val/det_f1_at_3mm": 0.5, "val/loss": 1.25}
    assert tracker.summary_of_losses() is None


def test_run_names_say_what_ran_and_differ_under_the_same_seed():
    import random

    import numpy as np
    import torch

    names = []
    for _ in range(2):  # what train.py does before naming the run: seed every generator
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        names.append(unique_run_name("cpu_demo", "unet", fold=2))
    assert names[0] != names[1]
    assert all(re.fullmatch(r"cpu_demo-unet-fold2-[0-9a-f]{6}", name) for name in names), names
    assert re.fullmatch(r"default-resnet18_unet-[0-9a-f]{6}", unique_run_name("default", "resnet18_unet"))


def test_a_named_run_keeps_its_name_and_tells_where_it_is(mlflow_uri, tmp_path):
    tags = run_tags(
        tmp_path / "run", "cpu_demo", "unet", ["seed=1", "x=" + "y" * 9000], 0, tmp_path / "sweep", 3
    )
    assert tags["run_folder"] == str((tmp_path / "run").resolve()) and tags["overrides"].startswith(
        "seed=1 x=yy"
    )
    assert (tags["fold"], tags["sweep_id"], tags["sweep_job"]) == ("0", str(tmp_path / "sweep"), "3")
    assert run_tags(tmp_path, "default", "unet", [])["overrides"] == "(none)"
    tracker = MlflowTracker(mlflow_uri, "unit", run_name="my-run")
    run_id = tracker.start(tags)
    tracker.end()
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(run_id)
    assert run.info.run_name == "my-run" and run.data.tags["sweep_job"] == "3"
    assert len(run.data.tags["overrides"]) <= 5000  # MLflow refuses tag values over 8000 characters
    assert tracker.describe().startswith(f"MLflow run my-run ({run_id}) in experiment unit at {mlflow_uri}")
    resumed = MlflowTracker(mlflow_uri, "unit", run_id=run_id)
    resumed.start()
    assert resumed.run_name == "my-run"  # the resumed run's own name, for the console
    server = MlflowTracker("http://host:5000/", "e", run_name="n", run_id="abc")
    server.experiment_id = "1"  # as start() sets it
    assert server.describe().endswith(": http://host:5000/#/experiments/1/runs/abc")  # a link to open


def test_flatten_nested_config():
    assert flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None}) == {"a.b.c": 1, "a.d": [1, 2], "e": None}


def test_unreachable_server_is_fast_and_reports_what_was_not_logged():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    tracker = MlflowTracker(uri, "unit")
    assert tracker.start({"dataset": "d"}) is None
    tracker.log_params({"a": 1, "b": 2})
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": 1.0 / step}, step=step)
    tracker.log_artifact(__file__)
    tracker.end()
    assert time.monotonic() - start < 20  # MLflow's own retries would take minutes
    summary = tracker.summary_of_losses()
    assert uri in summary and "params: 2" in summary and "metric values still queued: 3" in summary


class TcpForwarder:
    """127.0.0.1:port -> 127.0.0.1:target. ``stop`` closes the port and every open connection: an outage."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target_port = free_port(), target_port
        self._sockets: list[socket.socket] = []
        self._running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.settimeout(0.1)
        self._running = True
        self._sockets = [listener]
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._running = False
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._sockets = []
        time.sleep(0.2)  # the accept loop sees the flag


def test_metrics_queued_during_an_outage_are_replayed_when_the_server_answers_again(mlflow_server):
    forwarder = TcpForwarder(urlparse(mlflow_server).port)
    forwarder.start()
    tracker = MlflowTracker(forwarder.url, f"replay-{uuid.uuid4().hex[:8]}", retry_after_s=0)
    run_id = tracker.start()
    assert run_id
    tracker.log_metrics({"train/loss": 1.0}, step=1)

    forwarder.stop()
    tracker.log_metrics({"train/loss": 0.5}, step=2)
    assert "metric values still queued: 1" in tracker.summary_of_losses()

    forwarder.start()
    tracker.log_metrics({"train/loss": 0.25}, step=3)
    tracker.end()
    forwarder.stop()
    history = MlflowClient(tracking_uri=mlflow_server).get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert MlflowClient(tracking_uri=mlflow_server).get_run(run_id).info.status == "FINISHED"
    assert tracker.summary_of_losses() is None  # everything got through in the end
