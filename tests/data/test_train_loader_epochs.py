"""The training loader's epochs reach its DataLoader workers: new crops and augmentations every epoch, and the
same batches whatever the number of workers (the bug: persistent workers kept epoch 0 for the whole run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from foreign import write_foreign_dataset
from tpnet.core.contract import load_manifest, load_spec
from tpnet.core.encoding import Encoding
from tpnet.data.datamodule import DataSetup, train_loader
from tpnet.data.transforms import TrainTransform
from tpnet.training.distributed import EpochSampler


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> DataSetup:
    root = write_foreign_dataset(tmp_path_factory.mktemp("foreign"))
    rows = [r for r in load_manifest(root) if r.mask]
    return DataSetup(load_spec(root), {"train": rows}, Encoding(), 0.1, "test")


def _epoch_batches(
    setup: DataSetup, workers: int, epochs: int = 3, cache_dir: Path | None = None
) -> list[list[torch.Tensor]]:
    """What ``tpnet-train`` feeds the network, epoch by epoch, through the real ``train_loader`` (with its
    preprocessed cache when ``cache_dir`` is given)."""
    cache = SimpleNamespace(enabled=cache_dir is not None, dir=str(cache_dir), workers=1)
    cfg = SimpleNamespace(
        patch_size=[24, 24], batch_size=2, num_workers=workers, fg_fraction=0.33, cache=cache
    )
    sampler = EpochSampler(len(setup.splits["train"]), None, seed=3)
    loader = train_loader(setup, cfg, TrainTransform(), sampler, 3, torch.device("cpu"))
    assert (loader.dataset.frames is not None) == (cache_dir is not None)
    batches = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        batches.append([images for images, _ in loader])
    return batches


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_every_epoch_draws_new_patches_and_workers_do_not_change_them(setup, workers, tmp_path):
    # From the files with 0 and 2 workers; from the preprocessed cache (memory-mapped in each worker) with 1.
    cache_dir = tmp_path if workers == 1 else None
    batches = _epoch_batches(setup, workers, cache_dir=cache_dir)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert not torch.equal(torch.cat(batches[a]), torch.cat(batches[b])), f"epochs {a} and {b} identical"
    if workers:
        reference = _epoch_batches(setup, 0, cache_dir=cache_dir)
        for epoch, (ours, theirs) in enumerate(zip(batches, reference, strict=True)):
            assert torch.equal(torch.cat(ours), torch.cat(theirs)), f"epoch {epoch} differs from 0 workers"
