"""Test helper: fold checkpoints for ensemble tests, made cheaply from one real training run's best.pt.

Each member is that checkpoint with its convolution weights perturbed (so the members really differ), its
``cv.fold`` set, and an MLflow training run of its own in the given store, as a cross-validation would leave.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from tpnet.training.checkpoint import save_checkpoint


def make_fold_checkpoints(
    reference_run: Path, root: Path, tracking_uri: str, folds: int = 3, **meta_changes: dict
) -> list[Path]:
    """``root/fold<k>/checkpoints/best.pt`` for k < ``folds``. ``meta_changes`` maps a fold index (as
    ``fold1={...}``) to checkpoint ``meta`` keys to overwrite (a member that must be refused)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("tpnet")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("tpnet", artifact_location=(root / "mlartifacts").as_uri())
    )
    state = torch.load(reference_run / "checkpoints" / "best.pt", weights_only=True)
    paths = []
    for fold in range(folds):
        member = copy.deepcopy(state)
        gen = torch.Generator().manual_seed(fold)
        for weights in (member["model"], member.get("ema")):
            for tensor in (weights or {}).values():
                if tensor.is_floating_point() and tensor.ndim == 4:  # conv kernels; BatchNorm stats untouched
                    tensor.add_(0.3 * tensor.std() * torch.randn(tensor.shape, generator=gen))
        member["config"]["cv"] = {"folds": folds, "fold": fold}
        member["meta"].update(meta_changes.get(f"fold{fold}", {}))
        run = client.create_run(experiment_id, run_name=f"fold{fold}", tags={"tpnet.fold": str(fold)})
        client.set_terminated(run.info.run_id)
        member["mlflow_run_id"] = run.info.run_id
        path = root / f"fold{fold}" / "checkpoints" / "best.pt"
        save_checkpoint(member, path)
        paths.append(path)
    return paths
