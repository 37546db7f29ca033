"""data.sources: several contract datasets with different label sets, mapped onto one run's classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tpnet.configuration import config_dir
from tpnet.core.io import write_png
from tpnet.data.datamodule import frame_dataset, setup_data, train_loader
from tpnet.data.sources import UNLABELLED_CODE_BASE, sample_weights
from tpnet.training.distributed import EpochSampler


def _write_dataset(root: Path, classes: list[str], blobs: dict[str, int], subjects: int = 4) -> Path:
    """Frames of 48x48 px with one square per class in ``blobs`` (name -> mask value)."""
    rows = ["sample_id,subject_id,bmode,mask,spacing_mm"]
    rng = np.random.default_rng(len(classes))
    for s in range(subjects):
        for f in range(2):
            sid = f"s{s}_f{f}"
            mask = np.zeros((48, 48), np.uint8)
            for k, (_, value) in enumerate(blobs.items()):
                mask[6 + 14 * k : 16 + 14 * k, 10:22] = value
            write_png(root / "bmode" / f"{sid}.png", (rng.random((48, 48)) * 200).astype(np.uint8))
            write_png(root / "masks" / f"{sid}.png", mask)
            rows.append(f"{sid},p{s},bmode/{sid}.png,masks/{sid}.png,0.2")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.yaml").write_text(f"name: {root.name}\nclasses: {classes}\n")
    return root


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sources")
    trp = _write_dataset(base / "trp", ["background", "active_trp", "vessel"], {"active_trp": 1, "vessel": 2})
    nerves = _write_dataset(base / "nerves", ["background", "vessel", "nerve"], {"vessel": 1, "nerve": 2})
    return trp, nerves


def _data_cfg(roots: tuple[Path, Path], mode: str = "marginal", weights=(1.0, 1.0)):
    base = OmegaConf.load(Path(config_dir()) / "data" / "synthetic.yaml")
    sources = [{"root": str(r), "weight": w} for r, w in zip(roots, weights, strict=True)]
    return OmegaConf.merge(
        base,
        {
            "sources": sources, "partial_labels": mode, "spacing_mm": 0.2, "patch_size": [32, 32],
            "batch_size": 4, "num_workers": 0, "val_fraction": 0.25, "test_fraction": 0.25,
            "cache": {"enabled": False},
        },
    )  # fmt: skip


def test_classes_are_merged_by_name_and_masks_mapped(two_sources):
    data = setup_data(_data_cfg(two_sources), seed=0)
    assert data.spec.classes == ("background", "active_trp", "vessel", "nerve")
    assert data.spec.class_roles.trp == ("active_trp",)
    assert data.spec.class_roles.critical == ("vessel", "nerve")
    assert [s.name for s in data.sources] == ["trp", "nerves"]
    assert [s.unlabelled for s in data.sources] == [(3,), (1,)]  # trp lacks nerve, nerves lacks active_trp
    assert len(data.splits["train"]) == sum(len(s.setup.splits["train"]) for s in data.sources)

    frames = frame_dataset(data, "val")
    seen = {}
    for i in range(len(frames)):
        frame = frames[i]
        seen[frame["source"]] = frame
        assert frame["sample_id"].startswith(frame["source"] + "/")
        assert frame["subject_id"].startswith(frame["source"] + "/")
    # evaluation masks: run classes, background stays 0; the nerves source's vessel (1 there) is the run's 2
    assert set(np.unique(seen["trp"]["mask"].numpy())) == {0, 1, 2}
    assert set(np.unique(seen["nerves"]["mask"].numpy())) == {0, 2, 3}
    assert seen["trp"]["unlabelled_classes"] == (3,) and seen["nerves"]["unlabelled_classes"] == (1,)
    # the validation loss reads the background as training does: "background or unknown" (the source's code)
    for index, frame in enumerate((seen["trp"], seen["nerves"])):
        mask, loss_mask = frame["mask"].numpy(), frame["loss_mask"].numpy()
        assert (loss_mask[mask == 0] == UNLABELLED_CODE_BASE + index).all()
        assert (loss_mask[mask > 0] == mask[mask > 0]).all()


@pytest.mark.parametrize("mode", ["marginal", "background"])
def test_training_masks_mark_unknown_background_only_with_marginal(two_sources, mode):
    data = setup_data(_data_cfg(two_sources, mode), seed=0)
    sampler = EpochSampler(len(data.splits["train"]), None, 0, weights=sample_weights(data.sources))
    loader = train_loader(data, _data_cfg(two_sources, mode), None, sampler, 0, torch.device("cpu"))
    values = set()
    for _, masks in loader:
        values |= set(np.unique(masks.numpy()).tolist())
    codes = {UNLABELLED_CODE_BASE, UNLABELLED_CODE_BASE + 1}
    if mode == "marginal":
        assert codes <= values and 0 not in values  # every background pixel is "background or unknown"
    else:
        assert not values & codes and 0 in values
    assert values - codes <= {0, 1, 2, 3}


def test_sample_weights_give_each_source_its_share(two_sources):
    data = setup_data(_data_cfg(two_sources, weights=(3.0, 1.0)), seed=0)
    weights = sample_weights(data.sources)
    n_first = len(data.sources[0].setup.splits["train"])
    assert weights.sum() == pytest.approx(1.0)
    assert weights[:n_first].sum() == pytest.approx(0.75)
    draws = list(EpochSampler(len(weights), 4000, 0, weights=weights))
    assert np.mean(np.array(draws) < n_first) == pytest.approx(0.75, abs=0.03)


def test_a_source_sharing_no_class_with_the_run_is_refused(two_sources, tmp_path):
    cfg = _data_cfg(two_sources)
    cfg.classes = ["background", "nerve"]
    cfg.sources = [cfg.sources[0]]  # the trp source labels neither
    with pytest.raises(ValueError, match="none of its classes"):
        setup_data(cfg, seed=0)


def test_a_tiny_two_source_run_logs_per_source_validation(two_sources, tmp_path):
    from train_helpers import run_train

    sources = ",".join(f"{{root: '{r}'}}" for r in two_sources)
    run_dir = tmp_path / "run"
    result = run_train(
        [
            f"data.sources=[{sources}]",
            "data.spacing_mm=0.2",
            "data.patch_size=[32,32]",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.val_fraction=0.25",
            "data.test_fraction=0.25",
            "model.base_width=4",
            "model.depth=2",
            "trainer.device=cpu",
            "trainer.max_epochs=1",
            "evaluation.n_boot=20",
            "logger=none",
            "logger.progress_plot=false",
            f"hydra.run.dir={run_dir}",
            f"data.cache.dir={tmp_path / 'cache'}",
        ]  # fmt: skip
    )
    assert result.returncode == 0, result.stderr[-3000:]
    epoch = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert "val/trp/dice/active_trp" in epoch and "val/nerves/dice/nerve" in epoch
    assert "val/trp/dice/nerve" not in epoch  # not labelled there: not measured
    assert "val/trp/det_f1" in epoch and "val/nerves/det_f1" not in epoch  # no TrP labelled in "nerves"

    meta = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["meta"]
    assert meta["classes"] == ["background", "active_trp", "vessel", "nerve"]
    assert meta["roles"] == {"trp": ["active_trp"], "critical": ["vessel", "nerve"]}
