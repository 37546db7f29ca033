"""Datasets and samplers over a contract dataset written by another tool (tests/foreign.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foreign import SPEED_RANGE_M_S, write_foreign_dataset
from tpnet.core.contract import load_manifest, load_spec
from tpnet.core.encoding import Encoding
from tpnet.data.dataset import FullFrameDataset, PatchSampler, TrainPatchDataset, load_frame
from tpnet.data.transforms import TrainTransform
from tpnet.training.distributed import DistInfo, EpochSampler


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    root = write_foreign_dataset(tmp_path_factory.mktemp("foreign"))
    spec = load_spec(root)
    rows = {r.sample_id: r for r in load_manifest(root)}
    return spec, rows


def _frames(foreign, sample_ids, spacing_mm, encoding=None):
    spec, rows = foreign
    return FullFrameDataset(spec, [rows[s] for s in sample_ids], encoding or Encoding(), spacing_mm)


def test_default_three_channels_and_bmode_only(foreign):
    item = _frames(foreign, ["P01_f0"], 0.08)[0]
    assert item["image"].shape == (3, 70, 90) and item["image"].dtype.is_floating_point
    bmode_only = _frames(foreign, ["P01_f0"], 0.08, Encoding(channels=("bmode",)))[0]
    assert bmode_only["image"].shape == (1, 70, 90)
    np.testing.assert_array_equal(bmode_only["image"][0], item["image"][0])
    assert float(item["image"][0].min()) >= 0 and float(item["image"][0].max()) <= 1


def test_shear_wave_speed_becomes_kpa_through_the_dataset(foreign):
    item = _frames(foreign, ["P01_f0"], 0.08)[0]  # m/s in .npy, at its own spacing: no resampling
    kpa = item["elasto_kpa"]
    valid = np.isfinite(kpa)
    assert valid.any() and (~valid).any()  # SWE box inside a NaN surround
    low, high = (3.0 * c**2 for c in SPEED_RANGE_M_S)  # E = 3 rho c^2, rho = 1000 kg/m^3 -> kPa
    assert low - 1e-3 <= kpa[valid].min() and kpa[valid].max() <= high + 1e-3
    encoding = Encoding()
    image = item["image"].numpy()
    np.testing.assert_allclose(
        image[1][valid], np.clip(kpa[valid], 0, encoding.kpa_clip) / encoding.kpa_scale, rtol=1e-6
    )
    np.testing.assert_array_equal(image[2], valid.astype(np.float32))


def test_missing_elastography_gives_zero_channels_and_zero_validity(foreign):
    item = _frames(foreign, ["P01_f1"], 0.1)[0]  # no SWE for this row
    assert item["elasto_kpa"] is None
    assert float(item["image"][1].abs().max()) == 0.0 and float(item["image"][2].abs().max()) == 0.0


def test_resampling_to_a_target_spacing_scales_the_shape(foreign):
    native = _frames(foreign, ["P01_f0"], 0.08)[0]
    coarse = _frames(foreign, ["P01_f0"], 0.16)[0]
    assert tuple(native["mask"].shape) == (70, 90)
    assert tuple(coarse["mask"].shape) == (35, 45) and coarse["image"].shape[1:] == (35, 45)
    assert coarse["spacing_mm"] == 0.16
    # a row without its own spacing uses dataset.yaml's 0.1 mm: 83x61 at 0.1 -> 0.05 mm doubles it
    assert tuple(_frames(foreign, ["P02_f0"], 0.05)[0]["mask"].shape) == (166, 122)
    assert set(np.unique(coarse["mask"].numpy())) <= set(
        np.unique(native["mask"].numpy())
    )  # labels stay labels


def _patch_dataset(foreign, transform=None, seed=0):
    spec, rows = foreign
    labelled = [r for r in rows.values() if r.mask]
    return TrainPatchDataset(spec, labelled, Encoding(), 0.1, (24, 24), transform, seed)


@pytest.mark.parametrize("transform", [None, TrainTransform()])
def test_foreground_forced_patches_contain_a_trigger_point(foreign, transform):
    dataset = _patch_dataset(foreign, transform)
    spec, _ = foreign
    with_trp = [
        i for i, row in enumerate(dataset.rows) if np.isin(load_frame(spec, row, 0.1).mask, (1, 2)).any()
    ]
    assert 0 < len(with_trp) < len(dataset)  # P04_f2 has vessels only
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in with_trp:
            image, mask = dataset[(index, True)]
            assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
            assert bool(((mask == 1) | (mask == 2)).any()), (epoch, dataset.rows[index].sample_id)


def test_patches_depend_only_on_seed_epoch_and_index(foreign):
    a, b = _patch_dataset(foreign, TrainTransform()), _patch_dataset(foreign, TrainTransform())
    for dataset in (a, b):
        dataset.set_epoch(2)
    image_a, mask_a = a[(1, False)]
    image_b, mask_b = b[(1, False)]
    assert image_a.equal(image_b) and mask_a.equal(mask_b)
    a.set_epoch(3)
    assert not a[(1, False)][0].equal(image_a)


def test_epoch_sampler_is_deterministic_and_ranks_get_disjoint_shards():
    single = EpochSampler(10, None, seed=5)
    single.set_epoch(1)
    first = list(single)
    assert sorted(first) == list(range(10)) and first == list(single)
    single.set_epoch(2)
    assert list(single) != first
    single.set_epoch(1)
    assert list(single) == first  # (seed, epoch) alone decides: a resumed run replays it

    shards = []
    for rank in (0, 1):
        sampler = EpochSampler(10, None, seed=5, info=DistInfo(rank=rank, world_size=2))
        sampler.set_epoch(1)
        shards.append(list(sampler))
        assert len(sampler) == 5
    assert set(shards[0]).isdisjoint(shards[1]) and sorted(shards[0] + shards[1]) == list(range(10))

    longer = EpochSampler(4, 10, seed=0, info=DistInfo(rank=0, world_size=3))
    assert len(list(longer)) == len(longer) == 3  # 10 -> 9 samples, 3 per rank


def test_patch_sampler_forces_foreground_at_the_start_of_each_batch():
    items = list(PatchSampler(list(range(8)), batch_size=4, fg_fraction=0.33))
    assert [index for index, _, _ in items] == list(range(8))
    assert [forced for _, forced, _ in items] == [True, True, False, False] * 2  # ceil(0.33 * 4) = 2
    assert not any(forced for _, forced, _ in PatchSampler(range(4), batch_size=4, fg_fraction=0.0))
    assert math.ceil(0.33 * 4) == 2


def test_patch_sampler_carries_its_epoch_with_every_index_and_reshuffles_the_base():
    base = EpochSampler(6, None, seed=1)
    sampler = PatchSampler(base, batch_size=2)
    sampler.set_epoch(4)
    assert base.epoch == 4 and {epoch for _, _, epoch in sampler} == {4}
