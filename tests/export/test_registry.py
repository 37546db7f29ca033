"""Log an exported file to a real MLflow store (SQLite in tmp) and register it; survive a dead server."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tpnet.core.model_file import build_meta
from tpnet.export.export import export_torchscript
from tpnet.export.registry import log_export_to_mlflow
from tpnet.models.unet import UNet


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = UNet(in_channels=3, num_classes=2, base_width=4, depth=2).eval()
    meta = build_meta(
        model_name="unet",
        classes=["background", "active_trp"],
        encoding={"channels": ["bmode", "elasto", "elasto_valid"]},
        spacing_mm=0.1,
        size_multiple=model.size_multiple,
        postprocess={"threshold": 0.5, "min_area_mm2": 1.0, "match_mm": 2.0},
        export_method="script",
    )
    path = tmp_path_factory.mktemp("model") / "unet.pt"
    export_torchscript(model, meta, path, torch.rand(2, 3, 16, 16))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking + registry store for the module (creating it runs migrations: a few seconds).
    Both experiments keep artifacts in tmp, never in ./mlruns."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    training = client.create_experiment("training", artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("tpnet-export", artifact_location=(root / "export-artifacts").as_uri())
    return uri, client, training


def test_logs_and_registers_under_source_run(store, model_file, tmp_path, monkeypatch):
    uri, client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)  # training finished long ago; exporting later must still work

    report = log_export_to_mlflow(model_file, run_id, uri, register_name="tpnet-trp")

    assert report["logged"] and report["run_id"] == run_id
    assert report["artifact_uri"] == f"runs:/{run_id}/exported/unet_pt/unet.pt"
    listed = [f.path for f in client.list_artifacts(run_id, "exported/unet_pt")]
    assert listed == ["exported/unet_pt/unet.pt"]

    versions = client.search_model_versions("name='tpnet-trp'")
    assert [(int(v.version), v.run_id) for v in versions] == [(report["version"], run_id)]
    assert versions[0].tags["tpnet.export_method"] == "script"
    # The registered version resolves to the very same bytes.
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # models:/ URIs resolve through the registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # else MLflow 3 opens its default ./mlflow.db in the cwd
    mlflow.artifacts.download_artifacts(
        f"models:/tpnet-trp/{report['version']}", dst_path=str(tmp_path), tracking_uri=uri
    )
    assert (tmp_path / "unet.pt").read_bytes() == model_file.read_bytes()

    # Registering again under the existing name adds a version instead of failing.
    again = log_export_to_mlflow(model_file, run_id, uri, register_name="tpnet-trp")
    assert again["version"] == report["version"] + 1


def test_without_run_id_creates_an_export_run(store, model_file):
    uri, client, _ = store
    report = log_export_to_mlflow(model_file, None, uri)
    assert report["logged"] and report["version"] is None
    run = client.get_run(report["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "tpnet-export"
    assert [f.path for f in client.list_artifacts(report["run_id"], "exported/unet_pt")] == [
        "exported/unet_pt/unet.pt"
    ]


def test_unknown_run_warns_and_keeps_file(store, model_file):
    uri, _, _ = store
    before = model_file.read_bytes()
    with pytest.warns(RuntimeWarning, match="NOT logged to MLflow"):
        report = log_export_to_mlflow(model_file, "0" * 32, uri, register_name="tpnet-trp")
    assert not report["logged"] and report["version"] is None
    assert model_file.read_bytes() == before


def test_unreachable_server_warns_and_keeps_file(model_file, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    before = model_file.read_bytes()
    with pytest.warns(RuntimeWarning, match=r"NOT logged to MLflow at http://127\.0\.0\.1:9"):
        report = log_export_to_mlflow(model_file, "abc", "http://127.0.0.1:9", register_name="tpnet-trp")
    assert report == {
        "logged": False,
        "run_id": "abc",
        "artifact_uri": None,
        "mlflow_model": None,
        "dataset_logged": False,
        "registered_name": None,
        "version": None,
        "alias": None,
    }
    assert model_file.read_bytes() == before
