"""An exported model as an MLflow Model (real SQLite store): linked to its training run and dataset, registered
with an alias, and ``models:/NAME@champion`` loading back (pickle-free) to the exported file's outputs."""

from __future__ import annotations

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch import nn

from tpnet.core.archive_safety import check_pt2_archive
from tpnet.core.model_file import build_meta, load_model_file, read_meta
from tpnet.export.cli import _mlflow_example
from tpnet.export.export import export_torchscript
from tpnet.export.registry import DatasetRef, NewRun, log_export_to_mlflow
from tpnet.models.ensemble import FoldEnsemble
from tpnet.models.unet import UNet

CLASSES = ["background", "active_trp"]


def _meta(model: nn.Module) -> dict:
    return build_meta(
        model_name=type(model).__name__,
        classes=CLASSES,
        encoding={"channels": ["bmode", "elasto", "elasto_valid"]},
        spacing_mm=0.1,
        size_multiple=model.size_multiple,
        postprocess={"threshold": 0.5, "min_area_mm2": 1.0, "match_mm": 2.0},
        export_method="script",
    )


def _finished_training_run(uri: str, tmp_path) -> tuple[MlflowClient, str, str]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("training", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment_id, run_name="fold0").info.run_id
    client.set_terminated(run_id)  # training finished long ago
    return client, experiment_id, run_id


@pytest.fixture
def uris(mlflow_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # models:/ URIs resolve through these
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_uri)
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)  # MLflow's pickle-free loader
    return mlflow_uri


def test_models_uri_round_trip_reproduces_the_exported_file(tmp_path, uris):
    torch.manual_seed(0)
    network = UNet(in_channels=3, num_classes=len(CLASSES), base_width=4, depth=2).eval()
    model_file = tmp_path / "unet.pt"
    export_torchscript(network, _meta(network), model_file, torch.rand(2, 3, 16, 16))
    client, experiment_id, run_id = _finished_training_run(uris, tmp_path)
    dataset = DatasetRef("synthetic-trapezius", "0123456789abcdef", str(tmp_path / "data" / "manifest.csv"))

    report = log_export_to_mlflow(
        model_file, run_id, uris, "trp", network=network, register_alias="champion", dataset=dataset
    )

    assert report["logged"] and report["mlflow_model"]["serialization"] == "pt2"
    assert (report["version"], report["alias"], report["dataset_logged"]) == (1, "champion", True)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"  # logging to it did not leave it running
    assert [o.model_id for o in run.outputs.model_outputs] == [report["mlflow_model"]["model_id"]]
    assert [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs] == [
        ("synthetic-trapezius", "0123456789abcdef")
    ]
    logged_model = client.get_logged_model(report["mlflow_model"]["model_id"])
    assert (logged_model.source_run_id, logged_model.experiment_id) == (run_id, experiment_id)
    version = client.get_model_version_by_alias("trp", "champion")
    assert (version.run_id, version.source) == (run_id, f"models:/{logged_model.model_id}")
    assert version.tags["tpnet.mlflow_model"] == "pt2"

    # The MLflow Model: tpnet_meta.json as its metadata, a dynamic tensor signature, our file beside it, and a
    # pt2 archive that tpnet's own pre-load checks (stricter than MLflow's) accept too.
    local = tmp_path / "downloaded"
    mlflow.artifacts.download_artifacts("models:/trp@champion", dst_path=str(local))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["metadata"] == read_meta(model_file)[0]
    assert '"shape": [-1, 3, -1, -1]' in mlmodel["signature"]["inputs"]
    assert (local / "input_example.json").is_file()
    assert (local / "extra_files" / "unet.pt").read_bytes() == model_file.read_bytes()
    check_pt2_archive((local / "data" / "model.pt2").read_bytes())

    served = mlflow.pytorch.load_model("models:/trp@champion")
    exported = load_model_file(model_file).module
    with torch.no_grad():
        for shape in ((1, 3, 32, 48), (3, 3, 16, 20)):  # other batch sizes and frame sizes than the example
            x = torch.rand(*shape)
            assert (served(x) - exported(x)).abs().max() < 1e-5, shape


def test_an_ensemble_is_one_mlflow_model_in_a_run_of_its_own(tmp_path, uris):
    torch.manual_seed(1)
    network = FoldEnsemble([UNet(3, len(CLASSES), base_width=4, depth=depth) for depth in (2, 3)]).eval()
    meta = {**_meta(network), "ensemble": {"n_members": 2, "id": "0f0f0f0f", "members": []}}
    model_file = tmp_path / "ensemble.pt"
    export_torchscript(network, meta, model_file, torch.rand(2, 3, 16, 16))
    client, experiment_id, member_run = _finished_training_run(uris, tmp_path)
    frame = torch.rand(3, 52, 70)  # an encoded validation frame, as tpnet-export passes it
    example = _mlflow_example([frame], network.size_multiple)
    assert example.shape == (2, 3, 48, 64)  # a corner cropped to the stride, batch 2 keeps the batch dynamic

    report = log_export_to_mlflow(
        model_file, None, uris, "trp-ensemble", network=network, input_example=example,
        new_run=NewRun("ensemble-2folds-0f0f0f0f", {"tpnet.ensemble.id": "0f0f0f0f"}, member_run),
    )  # fmt: skip

    run = client.get_run(report["run_id"])
    assert run.info.run_id != member_run and run.info.experiment_id == experiment_id  # beside its members
    assert run.info.run_name == "ensemble-2folds-0f0f0f0f"
    served = mlflow.pytorch.load_model(f"models:/trp-ensemble/{report['version']}")
    exported = load_model_file(model_file).module
    with torch.no_grad():
        x = torch.rand(1, 3, 40, 56)
        assert (served(x) - exported(x)).abs().max() < 1e-5
    # Exporting the same ensemble again records it in the same run.
    same_ensemble = NewRun("ensemble-2folds-0f0f0f0f", {"tpnet.ensemble.id": "0f0f0f0f"}, member_run)
    again = log_export_to_mlflow(model_file, None, uris, new_run=same_ensemble)
    assert again["run_id"] == report["run_id"]


class DataDependentNet(nn.Module):
    """TorchScript scripts it; torch.export refuses the branch on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.size_multiple = 1
        self.head = nn.Conv2d(3, len(CLASSES), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x)
        if bool(logits.mean() > 1e6):
            return -logits
        return logits


def test_a_network_torch_export_rejects_falls_back_to_the_file_artifact(tmp_path, uris):
    network = DataDependentNet().eval()
    model_file = tmp_path / "net.pt"
    export_torchscript(network, _meta(network), model_file, torch.rand(2, 3, 8, 8))
    client, _, run_id = _finished_training_run(uris, tmp_path)

    with pytest.warns(RuntimeWarning, match="NOT logged as an MLflow Model .* plain artifact"):
        report = log_export_to_mlflow(
            model_file, run_id, uris, "trp-fallback", network=network, register_alias="champion"
        )

    assert report["logged"] and report["mlflow_model"] is None
    assert report["artifact_uri"] == f"runs:/{run_id}/exported/net_pt/net.pt"
    version = client.get_model_version_by_alias("trp-fallback", "champion")
    assert version.tags["tpnet.mlflow_model"] == "file artifact"
    mlflow.artifacts.download_artifacts("models:/trp-fallback@champion", dst_path=str(tmp_path / "d"))
    assert (tmp_path / "d" / "net.pt").read_bytes() == model_file.read_bytes()
