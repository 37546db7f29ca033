"""tpnet.data.gpu_augment (augment=gpu): geometry moves labels, B-mode and kPa together, as on the CPU path; the
encoding equals Encoding.encode; kPa values are never blended; the output depends on the batch's seeds only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tpnet.configuration import config_dir
from tpnet.core.encoding import Encoding
from tpnet.data.gpu_augment import GpuAugment, encode_on_device
from tpnet.data.transforms import Frame, TrainTransform

PATCH = (64, 64)
MARGIN = (80, 80)  # int(1.25 * patch), as TrainPatchDataset crops
OFFSET = ((MARGIN[0] - PATCH[0]) // 2, (MARGIN[1] - PATCH[1]) // 2)
DISC = (30, 58, 12)  # centre y, centre x, radius: right of centre, so a flip moves it by ~37 px
TISSUE, BRIGHT = 0.3, 0.9
SOFT, STIFF = 10.0, 200.0  # kPa outside / inside the disc
NOTHING_RANDOM = {
    "hflip_p": 0.0,
    "affine_p": 0.0,
    "brightness_contrast_p": 0.0,
    "gamma_p": 0.0,
    "speckle_noise_p": 0.0,
    "blur_p": 0.0,
    "elasto_noise_std": 0.0,
    "elasto_void_p": 0.0,
    "elasto_drop_p": 0.0,
}
STRONG_GEOMETRY = {
    **NOTHING_RANDOM,
    "hflip_p": 1.0,
    "affine_p": 1.0,
    "rotate_deg": 20.0,
    "scale": (0.8, 1.2),
    "translate": 0.05,
}
ENCODING = Encoding()


def _disc_frame() -> Frame:
    yy, xx = np.mgrid[: MARGIN[0], : MARGIN[1]]
    cy, cx, r = DISC
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return Frame(
        bmode=np.where(disc, BRIGHT, TISSUE).astype(np.float32),
        elasto_kpa=np.where(disc, STIFF, SOFT).astype(np.float32),
        mask=disc.astype(np.uint8),
    )


def _batch(frames: list[Frame], seeds: list[int], stats: list[tuple[float, float]] | None = None) -> dict:
    """The loader's batch of margin crops: float16 B-mode and kPa (NaN = no signal), uint8 labels."""
    nan = np.full(frames[0].bmode.shape, np.nan, np.float32)
    return {
        "bmode": torch.from_numpy(np.stack([f.bmode for f in frames])).half(),
        "elasto_kpa": torch.from_numpy(
            np.stack([nan if f.elasto_kpa is None else f.elasto_kpa for f in frames])
        ).half(),
        "mask": torch.from_numpy(np.stack([f.mask for f in frames])),
        "bmode_stats": torch.tensor(stats or [(0.5, 0.2)] * len(frames), dtype=torch.float32),
        "seed": torch.tensor(seeds, dtype=torch.int64),
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _agreement(bmode: np.ndarray, kpa: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """IoU of the label with the bright B-mode pixels and with the stiff kPa pixels."""
    label = mask == 1
    threshold = (TISSUE + BRIGHT) / 2
    return _iou(label, bmode > threshold), _iou(label, np.nan_to_num(kpa) > (SOFT + STIFF) / 2)


def _crop(arr: np.ndarray) -> np.ndarray:
    return arr[OFFSET[0] : OFFSET[0] + PATCH[0], OFFSET[1] : OFFSET[1] + PATCH[1]]


def test_geometry_moves_label_bmode_and_kpa_together_as_the_cpu_path_does():
    frame = _disc_frame()
    seeds = list(range(6))
    images, masks = GpuAugment(**STRONG_GEOMETRY)(_batch([frame] * len(seeds), seeds), ENCODING, PATCH)
    assert images.shape == (len(seeds), 3, *PATCH) and images.dtype == torch.float32
    assert masks.shape == (len(seeds), *PATCH) and masks.dtype == torch.int64
    unmoved = _crop(frame.mask) == 1
    cpu = TrainTransform(**STRONG_GEOMETRY)
    for k in range(len(seeds)):
        label = masks[k].numpy() == 1
        assert label.sum() > 0.5 * unmoved.sum()  # the disc is still (mostly) in the patch
        assert _iou(label, unmoved) < 0.3  # ... and has moved: a warp that left the labels alone fails
        kpa = (images[k, 1] * ENCODING.kpa_scale).numpy()
        gpu_bright, gpu_stiff = _agreement(images[k, 0].numpy(), kpa, masks[k].numpy())
        out = cpu(frame, np.random.default_rng(k))
        cpu_bright, cpu_stiff = _agreement(_crop(out.bmode), _crop(out.elasto_kpa), _crop(out.mask))
        assert gpu_bright > 0.9 and gpu_stiff > 0.9, (k, gpu_bright, gpu_stiff)
        assert gpu_bright > cpu_bright - 0.05 and gpu_stiff > cpu_stiff - 0.05, (k, cpu_bright, cpu_stiff)


def _textured(seed: int, size: tuple[int, int] = (24, 32), swe: bool = True) -> Frame:
    """Textured B-mode with a zero strip (outside the imaged region); kPa over the clip, NaN on top."""
    rng = np.random.default_rng(seed)
    bmode = rng.uniform(0.02, 1.0, size).astype(np.float16).astype(np.float32)  # what float16 carries
    bmode[:, :5] = 0.0
    kpa = rng.uniform(0.0, 400.0, size).astype(np.float16).astype(np.float32)
    kpa[:6] = np.nan
    return Frame(bmode=bmode, elasto_kpa=kpa if swe else None, mask=rng.integers(0, 3, size).astype(np.uint8))


@pytest.mark.parametrize("bmode_norm", ["none", "zscore_frame"])
def test_encode_on_device_equals_encoding_encode(bmode_norm):
    encoding = Encoding(bmode_norm=bmode_norm)
    frames = [_textured(0), _textured(1, swe=False)]
    stats = [(0.45, 0.25), (0.6, 0.1)]
    batch = _batch(frames, [0, 1], stats)
    for given in (True, False):  # the whole frame's statistics, or (None) the crop's own
        got = encode_on_device(
            encoding, batch["bmode"], batch["elasto_kpa"], batch["bmode_stats"] if given else None
        )
        for k, frame in enumerate(frames):
            want = encoding.encode(frame.bmode, frame.elasto_kpa, stats[k] if given else None)
            np.testing.assert_allclose(got[k].numpy(), want, rtol=1e-6, atol=1e-6)
    # With nothing random, the whole path is the centre crop of the margin crop, then Encoding.encode.
    crops = [_textured(2, MARGIN), _textured(3, MARGIN, swe=False)]
    images, masks = GpuAugment(**NOTHING_RANDOM)(_batch(crops, [0, 1], stats), encoding, PATCH)
    for k, frame in enumerate(crops):
        want = encoding.encode(_crop(frame.bmode), _crop(frame.elasto_kpa) if k == 0 else None, stats[k])
        np.testing.assert_allclose(images[k].numpy(), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(masks[k].numpy(), _crop(frame.mask))


KPA_LEVELS = np.array([8.0, 20.0, 50.0, 120.0, 290.0], np.float32)  # exact in float16


def _kpa_frame(seed: int) -> Frame:
    """Blocky kPa from a few levels with a no-signal band on the left; textured B-mode."""
    rng = np.random.default_rng(seed)
    kpa = np.kron(rng.choice(KPA_LEVELS, (10, 10)), np.ones((8, 8))).astype(np.float32)
    kpa[:, :20] = np.nan
    bmode = rng.uniform(0.1, 0.9, MARGIN).astype(np.float32)
    return Frame(bmode=bmode, elasto_kpa=kpa, mask=np.zeros(MARGIN, np.uint8))


def test_kpa_values_are_never_blended_and_no_signal_stays_invalid():
    augment = GpuAugment(**{**STRONG_GEOMETRY, "brightness_contrast_p": 1.0, "gamma_p": 1.0, "blur_p": 1.0})
    frames = [_kpa_frame(k) for k in range(4)] + [_textured(9, MARGIN, swe=False)]
    images, _ = augment(_batch(frames, list(range(5))), ENCODING, PATCH)
    kpa, valid = images[:, 1].numpy() * ENCODING.kpa_scale, images[:, 2].numpy()
    assert set(np.unique(valid)) <= {0.0, 1.0}
    np.testing.assert_array_equal(kpa[valid == 0], 0.0)  # no signal: elasto channel 0
    assert (valid[:4] == 0).any(axis=(1, 2)).all() and (valid[:4] == 1).any(axis=(1, 2)).all()
    nearest = np.abs(kpa[valid == 1][:, None] - KPA_LEVELS[None]).min(axis=1)
    np.testing.assert_allclose(nearest, 0.0, atol=1e-4)  # every valid value is one of the input's levels
    np.testing.assert_array_equal(valid[4], 0.0)  # a frame without SWE has no signal anywhere
    # Dropping the modality and voids both mean "no signal"; noise is multiplicative.
    dropped, _ = GpuAugment(**{**NOTHING_RANDOM, "elasto_drop_p": 1.0})(
        _batch(frames, [0] * 5), ENCODING, PATCH
    )
    np.testing.assert_array_equal(dropped[:, 1:].numpy(), 0.0)
    voids, _ = GpuAugment(**{**NOTHING_RANDOM, "elasto_void_p": 1.0})(
        _batch(frames, [0] * 5), ENCODING, PATCH
    )
    plain, _ = GpuAugment(**NOTHING_RANDOM)(_batch(frames, [0] * 5), ENCODING, PATCH)
    # (A void may fall on the no-signal band or outside the patch: fewer valid pixels overall, never more.)
    assert (voids[:, 2] <= plain[:, 2]).all() and (voids[:, 2] < plain[:, 2]).sum() > 100
    std = 0.2
    noisy, _ = GpuAugment(**{**NOTHING_RANDOM, "elasto_noise_std": std})(
        _batch(frames, [0] * 5), ENCODING, PATCH
    )
    torch.testing.assert_close(noisy[:, 2], plain[:, 2])  # noise moves no pixel in or out of "no signal"
    ratio = (noisy[:4, 1] / plain[:4, 1])[plain[:4, 2] > 0]  # the input's kPa are all > 0 and <= the clip
    ratio = ratio[noisy[:4, 1][plain[:4, 2] > 0] < ENCODING.kpa_clip / ENCODING.kpa_scale]
    assert (ratio - 1).abs().max() <= std * 3**0.5 + 1e-4  # multiplicative, uniform of std `std`
    assert (ratio - 1).std() > 0.5 * std


def test_output_depends_only_on_the_batch_seeds():
    augment = GpuAugment()  # augment=default's probabilities: every random path takes part
    frames = [_kpa_frame(k) for k in range(4)]

    def run(seeds: list[int], global_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        before = torch.get_rng_state()
        out = augment(_batch(frames, seeds), ENCODING, PATCH)
        assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
        return out

    images, masks = run([11, 12, 13, 14], global_seed=0)
    assert images[:, 0].min() >= 0.0 and images[:, 0].max() <= 1.0  # intensity is clipped to [0, 1]
    again, again_masks = run([11, 12, 13, 14], global_seed=1)
    assert torch.equal(images, again) and torch.equal(masks, again_masks)
    other, _ = run([11, 12, 13, 15], global_seed=0)
    assert not torch.equal(images, other)


def test_gpu_preset_mirrors_the_default_augmentation():
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        gpu = compose("train", overrides=["augment=gpu"]).augment
        default = compose("train", overrides=["augment=default"]).augment
    assert isinstance(instantiate(gpu), GpuAugment)
    shared = {k: v for k, v in default.items() if k != "_target_" and k in gpu}
    assert shared == {k: gpu[k] for k in shared}
    missing = set(default) - set(gpu)
    assert missing == {"depth_attenuation_p", "shadow_p", "haze_p", "speckle_reduction_p"}  # usaugment: off
    assert all(default[k] == 0.0 for k in missing)
