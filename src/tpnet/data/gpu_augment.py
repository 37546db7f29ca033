"""Training augmentation on the device (``augment=gpu``): the rules of ``tpnet.data.transforms`` for a whole
batch of margin crops at once; the patch is then encoded into ``Encoding.encode``'s channels on the device.

The warps, flips, contrast, brightness, gamma and blur are kornia 0.9's (Apache-2.0): its augmentation modules
draw one set of random parameters per sample for the whole batch in one call (``torchvision.transforms.v2``
draws one per call, i.e. one per batch). What kornia lacks is a few lines of tensor arithmetic here: the joint
brightness/contrast gate, multiplicative speckle, and the elastography rules (noise, voids, drop).

Rules (as on the CPU path):
- geometry (left-right flip, affine) moves B-mode (bilinear), label map, kPa and its validity (nearest, one
  tensor, so validity moves with the kPa values and kPa are never blended); outside the frame is B-mode 0,
  background and "no signal";
- intensity touches B-mode only, clipped to [0, 1]; pixels outside the imaged region (B-mode 0 after the
  warp) stay 0, so they stay out of the z-score as they are at inference;
- elastography keeps its kPa meaning: multiplicative noise (>= 0), elliptical signal voids, the whole modality
  dropped with ``elasto_drop_p``;
- the patch is centre-cropped from the margin crop right after the geometry, so intensity and elastography
  artefacts work on the pixels the network sees only.
The usaugment ultrasound artefacts have no GPU version here.

Reproducible: every draw comes from generators seeded by a hash of the batch's per-sample seeds. kornia draws
its parameters on the CPU from torch's global generator, so that is forked and seeded for the call and
restored afterwards; the per-pixel noise comes from a generator of its own on the batch's device. CPU and CUDA
give different (each reproducible) draws. Only ``batch["seed"]`` is read on the host: kept on the CPU it costs
no device sync at all, on the device one per batch.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia import augmentation as K

from tpnet.core.encoding import IMAGED_GREY_MIN, Encoding

SPECKLE_MULTIPLIER = (0.9, 1.1)  # as the CPU path's MultiplicativeNoise
BLUR_SIGMA = (0.3, 0.8)  # as the CPU path's 3x3 GaussianBlur
VOID_RADIUS = (0.03, 0.12)  # elliptical void radii, fraction of the patch's height/width (CPU path's values)
STD_FLOOR = 1e-3  # imaged_region_stats' floor, for encode_on_device without given statistics


class GpuAugment:
    """Augment a batch of margin crops on its device and return (images [B,C,h,w] float32, masks [B,h,w] int64)."""

    on_device = True  # marker read by the data set-up: the loader then delivers raw margin crops

    def __init__(
        self,
        hflip_p: float = 0.5,
        affine_p: float = 0.5,
        scale: tuple[float, float] = (0.9, 1.1),
        rotate_deg: float = 10.0,
        translate: float = 0.05,
        brightness_contrast_p: float = 0.5,
        brightness_limit: float = 0.1,
        contrast_limit: float = 0.15,
        gamma_p: float = 0.3,
        gamma_limit: tuple[float, float] = (80, 120),
        speckle_noise_p: float = 0.3,
        blur_p: float = 0.2,
        elasto_noise_std: float = 0.05,
        elasto_void_p: float = 0.2,
        elasto_drop_p: float = 0.2,
    ) -> None:
        # Only left-right flips: depth has a direction in ultrasound (skin on top, shadows below). Masks
        # (label, kPa, validity stacked) are resampled nearest by kornia whatever the image uses.
        self.geometric = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=hflip_p),
            K.RandomAffine(
                degrees=rotate_deg,
                translate=(translate, translate),
                scale=tuple(scale),
                resample="bilinear",
                padding_mode="zeros",
                p=affine_p,
            ),
            data_keys=["input", "mask"],
        )
        # Contrast then brightness, x * alpha + beta, under one gate per sample: albumentations'
        # RandomBrightnessContrast. Clipping once at the end, as the CPU path does.
        self.contrast = K.RandomContrast(
            contrast=(1 - contrast_limit, 1 + contrast_limit), clip_output=False, p=1
        )
        self.brightness = K.RandomBrightness(
            brightness=(1 - brightness_limit, 1 + brightness_limit), clip_output=False, p=1
        )
        self.brightness_contrast_p = brightness_contrast_p
        self.gamma = K.RandomGamma(gamma=(gamma_limit[0] / 100, gamma_limit[1] / 100), p=gamma_p)
        self.speckle_noise_p = speckle_noise_p
        self.blur = K.RandomGaussianBlur(kernel_size=(3, 3), sigma=BLUR_SIGMA, p=blur_p)
        self.elasto_noise_std = elasto_noise_std
        self.elasto_void_p = elasto_void_p
        self.elasto_drop_p = elasto_drop_p

    def __call__(
        self, batch: dict[str, torch.Tensor], encoding: Encoding, patch_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bmode = batch["bmode"].float().unsqueeze(1)  # [B, 1, H, W]
        device = bmode.device
        n = bmode.shape[0]
        kpa_in = batch["elasto_kpa"].float()
        valid = torch.isfinite(kpa_in)
        # One nearest-resampled tensor: label, kPa (0 where no signal) and validity move as one.
        stacked = torch.stack(
            [batch["mask"].float(), torch.where(valid, kpa_in, 0.0), valid.float()], dim=1
        )  # [B, 3, H, W]
        cpu_seed, device_seed = _batch_seeds(batch["seed"])
        noise = torch.Generator(device=device)
        noise.manual_seed(device_seed)
        h, w = patch_size
        top, left = (bmode.shape[-2] - h) // 2, (bmode.shape[-1] - w) // 2
        window = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(cpu_seed)
            bmode, stacked = self.geometric(bmode, stacked)
            # The patch, then appearance: per-pixel work only on the pixels the network sees (as the CPU path).
            bmode, stacked = bmode[window].contiguous(), stacked[window].contiguous()
            bmode = self._intensity(bmode, noise)
            # Per-sample decisions for the elastography, drawn here (CPU, B numbers) and moved in one copy.
            draws = torch.rand(n, 6).to(device, non_blocking=True)
        mask = stacked[:, 0].round().long()
        kpa, valid = stacked[:, 1], stacked[:, 2] > 0.5
        valid = valid & (draws[:, :1, None] >= self.elasto_drop_p)
        if self.elasto_noise_std > 0:
            # Multiplicative, uniform with std elasto_noise_std (the CPU path's choice), never below 0 kPa.
            half_width = self.elasto_noise_std * 3.0**0.5
            uniform = torch.rand(kpa.shape, generator=noise, device=device)
            kpa = (kpa * (1.0 - half_width + 2.0 * half_width * uniform)).clamp_min(0.0)
        valid = valid & ~_elliptical_voids(draws[:, 1:], kpa.shape[-2:], self.elasto_void_p)
        elasto = torch.where(valid, kpa, torch.nan)
        images = encode_on_device(encoding, bmode[:, 0], elasto, batch["bmode_stats"].float())
        return images, mask

    def _intensity(self, bmode: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        """B-mode intensity: brightness/contrast, gamma, speckle, blur; the zero fill outside stays 0."""
        imaged = bmode > IMAGED_GREY_MIN
        n = bmode.shape[0]
        gate = (torch.rand(n) < self.brightness_contrast_p).to(bmode.device, non_blocking=True)
        adjusted = self.brightness(self.contrast(bmode))
        out = torch.where(gate[:, None, None, None], adjusted, bmode)
        out = self.gamma(out.clamp(0.0, 1.0))  # a negative base has no real power
        speckled = (torch.rand(n) < self.speckle_noise_p).to(bmode.device, non_blocking=True)
        low, high = SPECKLE_MULTIPLIER
        factor = low + (high - low) * torch.rand(out.shape, generator=noise, device=bmode.device)
        out = torch.where(speckled[:, None, None, None], out * factor, out)
        out = self.blur(out)
        return torch.where(imaged, out.clamp(0.0, 1.0), 0.0)


def _batch_seeds(seeds: torch.Tensor) -> tuple[int, int]:
    """Two 32-bit seeds from the batch's per-sample seeds (NumPy's SeedSequence as the hash): the same seeds,
    in the same order, give the same draws whoever made the batch."""
    values = seeds.detach().to("cpu", torch.int64).numpy().view(np.uint64)
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2)
    return int(state[0]), int(state[1])


def _elliptical_voids(draws: torch.Tensor, shape: torch.Size, p: float) -> torch.Tensor:
    """[B, H, W] True inside a "black hole" void (SWE's no-signal patches), for the samples that get one.
    ``draws`` [B, 5] uniform: gate, centre y, centre x, radius y, radius x."""
    h, w = shape
    lo, hi = VOID_RADIUS
    gate = draws[:, 0] < p
    cy, cx = draws[:, 1] * h, draws[:, 2] * w
    ry, rx = (lo + (hi - lo) * draws[:, 3]) * h, (lo + (hi - lo) * draws[:, 4]) * w
    yy = torch.arange(h, device=draws.device, dtype=draws.dtype)[None, :, None]
    xx = torch.arange(w, device=draws.device, dtype=draws.dtype)[None, None, :]
    inside = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
        (xx - cx[:, None, None]) / rx[:, None, None]
    ) ** 2
    return (inside <= 1.0) & gate[:, None, None]


def encode_on_device(
    encoding: Encoding, bmode: torch.Tensor, elasto_kpa: torch.Tensor, bmode_stats: torch.Tensor | None
) -> torch.Tensor:
    """``Encoding.encode`` for a batch on its device: bmode [B,h,w] in [0, 1], elasto_kpa [B,h,w] (NaN = no
    signal; all NaN = no SWE), bmode_stats [B, 2] the whole frames' (mean, std) -> [B, C, h, w] float32.
    ``bmode_stats`` is ignored for bmode_norm "none"; None = each crop's own imaged-region statistics."""
    grey = bmode.float()
    kpa = elasto_kpa.float()
    valid = torch.isfinite(kpa)
    planes = []
    for name in encoding.channels:
        if name == "bmode":
            planes.append(_bmode_plane(encoding, grey, bmode_stats))
        elif name == "elasto":
            planes.append(torch.where(valid, kpa.clamp(0.0, encoding.kpa_clip), 0.0) / encoding.kpa_scale)
        elif name == "elasto_valid":
            planes.append(valid.float())
    return torch.stack(planes, dim=1)


def _bmode_plane(encoding: Encoding, grey: torch.Tensor, stats: torch.Tensor | None) -> torch.Tensor:
    if encoding.bmode_norm == "none":
        return grey
    imaged = grey > IMAGED_GREY_MIN
    if stats is None:
        stats = _imaged_region_stats(grey, imaged)
    mean, std = stats.float()[:, 0, None, None], stats.float()[:, 1, None, None]
    return torch.where(imaged, (grey - mean) / std, 0.0)


def _imaged_region_stats(grey: torch.Tensor, imaged: torch.Tensor) -> torch.Tensor:
    """Per-sample ``imaged_region_stats``: (mean, std) over the imaged pixels, the whole crop when none is."""
    region = torch.where(imaged.flatten(1).any(1, keepdim=True), imaged.flatten(1), True)
    values = grey.flatten(1)
    count = region.sum(1)
    mean = torch.where(region, values, 0.0).sum(1) / count
    var = torch.where(region, (values - mean[:, None]) ** 2, 0.0).sum(1) / count
    return torch.stack([mean, var.sqrt().clamp_min(STD_FLOOR)], dim=1)


def build_gpu_augment(enabled: bool = True, **kwargs) -> GpuAugment | None:
    """Hydra entry point of ``augment=gpu``; ``enabled: false`` disables augmentation."""
    return GpuAugment(**kwargs) if enabled else None
