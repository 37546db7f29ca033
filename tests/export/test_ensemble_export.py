"""Fold ensembles: the averaging module, members that must agree, and ``tpnet-export checkpoint=[...]`` writing one
parity-checked model file that plain ``torch.jit.load`` runs, recorded in an MLflow run of its own. (An ensemble
as an MLflow Model served from ``models:/``: test_mlflow_model.py.)"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from ensemble_members import make_fold_checkpoints
from tpnet.core.model_file import read_meta
from tpnet.models.ensemble import PROB_FLOOR, EnsembleError, FoldEnsemble, ensemble_postprocess
from tpnet.models.from_checkpoint import load_deployable
from tpnet.models.unet import UNet
from train_helpers import REPO, subprocess_env


def test_fold_ensemble_returns_the_log_of_the_averaged_probabilities_and_scripts():
    torch.manual_seed(0)
    members = [UNet(3, 4, base_width=4, depth=depth).eval() for depth in (2, 3, 2)]
    ensemble = FoldEnsemble(members).eval()
    assert ensemble.size_multiple == 8  # lcm(4, 8, 4)
    x = torch.rand(2, 3, 32, 40) * 3
    with torch.no_grad():
        averaged = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(dim=0)
        logits = ensemble(x)
        assert torch.allclose(
            torch.softmax(logits, dim=1), averaged, atol=1e-6
        )  # the contract: softmax = mean
        assert logits.min() >= torch.log(torch.tensor(PROB_FLOOR))  # finite everywhere
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation
            scripted = torch.jit.script(ensemble)
        assert torch.equal(scripted(x), logits)


def test_postprocess_is_the_median_of_the_members():
    metas = [
        {"postprocess": {"threshold": t, "min_area_mm2": a, "match_mm": 5.0, "min_mean_prob": p}}
        for t, a, p in ((0.3, 1.0, 0.0), (0.5, 4.0, 0.2), (0.9, 2.0, 0.1))
    ]
    assert ensemble_postprocess(metas) == {
        "threshold": 0.5, "min_area_mm2": 2.0, "match_mm": 5.0, "min_mean_prob": 0.1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "key"),
    [
        # The reference run's five classes in another order: as many outputs, other meanings.
        ({"classes": ["background", "active_trp", "latent_trp", "nerve", "vessel"]}, "classes"),
        ({"spacing_mm": 0.25}, "spacing_mm"),
    ],
    ids=["classes", "spacing_mm"],
)
def test_members_that_disagree_are_refused_naming_the_checkpoint_and_key(
    tmp_path, reference_run, mlflow_uri, change, key
):
    paths = make_fold_checkpoints(reference_run, tmp_path, mlflow_uri, folds=3, fold2=change)
    with pytest.raises(EnsembleError, match=key) as refused:
        load_deployable([str(p) for p in paths])
    assert str(paths[2]) in str(refused.value) and str(paths[0]) in str(refused.value)
    # One checkpoint in a list is that checkpoint's own model, not an ensemble of one.
    single = load_deployable([str(paths[0])])
    assert single.ensemble is None and isinstance(single.model, UNet)


@pytest.mark.slow
def test_export_cli_writes_one_parity_checked_ensemble(tmp_path, reference_run, mlflow_uri):
    from mlflow import MlflowClient

    paths = make_fold_checkpoints(reference_run, tmp_path, mlflow_uri, folds=3)
    output = tmp_path / "ensemble.pt"
    result = subprocess.run(
        [
            sys.executable, "-m", "tpnet.export.cli",
            f"checkpoint=[{','.join(str(p) for p in paths)}]",
            f"output={output}",
            f"tracking_uri={mlflow_uri}",
            "register_name=trp-ensemble",
            "register_alias=champion",
            "parity_frames=2",
            "mlflow_model=false",  # MLflow's own torch.export of the ensemble costs seconds: test_mlflow_model.py
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    meta, kind = read_meta(output)
    assert kind == "torchscript" and meta["mlflow_run_id"] is None
    info = meta["ensemble"]
    assert info["n_members"] == 3 and [m["fold"] for m in info["members"]] == [0, 1, 2]
    member_states = [torch.load(p, weights_only=True) for p in paths]
    assert [m["mlflow_run_id"] for m in info["members"]] == [s["mlflow_run_id"] for s in member_states]
    assert (
        info["members"][1]["checkpoint"] == "fold1/checkpoints/best.pt"
        and len(info["members"][1]["sha256"]) == 16
    )
    assert "median" in info["postprocess_rule"]
    assert meta["postprocess"] == ensemble_postprocess([s["meta"] for s in member_states])
    assert meta["size_multiple"] == member_states[0]["meta"]["size_multiple"]

    # The file holds the three networks: plain torch.jit.load reproduces their eager ensemble. (The parity check
    # already ran it in a fresh process that cannot import tpnet, on random and real validation frames.)
    assert '"max_abs_diff"' in result.stdout + result.stderr
    x = torch.rand(2, len(meta["encoding"]["channels"]), 48, 64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation
        from_file = torch.jit.load(output)(x)
        eager = load_deployable([str(p) for p in paths]).model(x)
    assert (from_file - eager).abs().max() < 1e-4

    # MLflow: a run of the ensemble's own, tagged with the members' runs, holds the file behind the alias.
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    version = client.get_model_version_by_alias("trp-ensemble", "champion")
    run = client.get_run(version.run_id)
    assert run.info.run_name == f"ensemble-3folds-{info['id']}"
    assert run.data.tags["tpnet.ensemble.member_run_ids"] == ",".join(
        m["mlflow_run_id"] for m in info["members"]
    )
    assert run.info.run_id not in {m["mlflow_run_id"] for m in info["members"]}
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [meta["dataset_fingerprint"]]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "exported/ensemble_pt")] == [
        "exported/ensemble_pt/ensemble.pt"
    ]
