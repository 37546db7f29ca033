"""Training augmentation. The ONLY module of tpnet that imports albumentations.

albumentations 2.0.8 (MIT) is unmaintained upstream since 2025 and its successor is AGPL, so every call sits
behind ``build_train_transform`` here: swapping it for ``torchvision.transforms.v2`` touches this file alone.

Ultrasound-specific artefacts come from ``usaugment`` 1.0.1 (MIT, small, maintained, published with a benchmark
of ultrasound augmentations): depth attenuation and haze (Ostvik et al. 2021), Gaussian acoustic shadows and
speckle reduction by a bilateral filter (Smistad et al. 2018). They are the physics of a scan we would otherwise
hand-write; they are off by default (``configs/augment/default.yaml``) and on in ``augment=ultrasound``, which
also widens the gain/contrast/gamma ranges: together they make a model lean less on one simulator's texture.
They act on the imaged region of the patch (B-mode > 0: not the zero fill of rotations or of padding), and
"depth" is the patch's own top-to-bottom axis (a patch rarely starts at the skin; as a gain/TGC error that is
what we want).

Rules that keep the data meaningful:
- geometric transforms move B-mode, elastography, its validity mask and the label map together; label map and
  elastography use nearest-neighbour interpolation, so labels stay labels and kPa values are never blended;
- intensity/speckle transforms touch B-mode only;
- elastography keeps its kPa meaning: multiplicative noise and signal voids are allowed, rescaling is not;
  the whole modality can be dropped, so the model also works when SWE was not acquired.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# On import albumentations asks PyPI for a newer release: a network call at run time (and a warning on offline
# cluster nodes). tpnet never downloads anything while it runs, so the check is off unless a user turns it on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from usaugment.albumentations import (  # noqa: E402
    DepthAttenuation,
    GaussianShadow,
    HazeArtifact,
    SpeckleReduction,
)

# Ultrasound artefact strengths, for B-mode in [0, 1]. usaugment's own defaults except: attenuation up to
# exp(-2) at the patch bottom (its 3 darkens a patch almost to black), a haze ring never thinner than 2 % of
# the patch (its 0 divides by zero), bilateral colour sigma kept in the range where it smooths speckle but
# keeps edges of [0, 1] images, and a 3x3 window: 2.5x cheaper than 5x5 at 256 px (see the README).
ATTENUATION_RATE = (0.0, 2.0)
SHADOW_STRENGTH = (0.25, 0.8)
HAZE_SIGMA = (0.02, 0.1)
SPECKLE_SIGMA_SPATIAL = (0.1, 2.0)
SPECKLE_SIGMA_COLOR = (0.05, 0.3)
SPECKLE_WINDOW = 3


@dataclass
class Frame:
    """One frame in physical units: B-mode [0, 1], kPa map (NaN = no signal) or None, label map; for a slice of
    a sweep read with context (``data.context_slices`` = k), its neighbours' B-mode as (2k, H, W)."""

    bmode: np.ndarray
    elasto_kpa: np.ndarray | None
    mask: np.ndarray
    context: np.ndarray | None = None


class TrainTransform:
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
        depth_attenuation_p: float = 0.0,
        shadow_p: float = 0.0,
        haze_p: float = 0.0,
        speckle_reduction_p: float = 0.0,
        elasto_noise_std: float = 0.05,
        elasto_void_p: float = 0.2,
        elasto_drop_p: float = 0.2,
    ) -> None:
        # Only left-right flips: depth has a direction in ultrasound (skin on top, shadows below). The flip and
        # whether the affine applies are drawn here, so a sample without the affine skips the warps (and the
        # margin around its patch) altogether: half of the samples at the default affine_p.
        self.hflip_p, self.affine_p = hflip_p, affine_p
        self.scale, self.rotate_deg, self.translate = tuple(scale), rotate_deg, translate
        # Acquisition artefacts first, then the display mapping (gain, contrast, gamma) as on a scanner.
        # None when all are off: no extra random draws, so runs without them are exactly as before.
        ultrasound = [
            DepthAttenuation(attenuation_rate=ATTENUATION_RATE, p=depth_attenuation_p),
            GaussianShadow(strength=SHADOW_STRENGTH, p=shadow_p),
            HazeArtifact(sigma=HAZE_SIGMA, p=haze_p),
            SpeckleReduction(
                sigma_spatial=SPECKLE_SIGMA_SPATIAL,
                sigma_color=SPECKLE_SIGMA_COLOR,
                window_size=SPECKLE_WINDOW,
                p=speckle_reduction_p,
            ),
        ]
        self.ultrasound = (
            A.Compose([t for t in ultrasound if t.p > 0]) if any(t.p > 0 for t in ultrasound) else None
        )
        # The display mapping and speckle, as albumentations defines them (RandomBrightnessContrast with
        # brightness_by_max, RandomGamma, elementwise MultiplicativeNoise, a 3x3 GaussianBlur), written as the
        # few array operations they are: albumentations' per-call machinery cost more than the arithmetic
        # (see the README, "Performance").
        self.brightness_contrast_p, self.brightness_limit = brightness_contrast_p, brightness_limit
        self.contrast_limit, self.gamma_p, self.gamma_limit = contrast_limit, gamma_p, tuple(gamma_limit)
        self.speckle_noise_p, self.blur_p = speckle_noise_p, blur_p
        self.elasto_noise_std = elasto_noise_std
        self.elasto_void_p = elasto_void_p
        self.elasto_drop_p = elasto_drop_p

    def __call__(
        self, frame: Frame, rng: np.random.Generator, out_size: tuple[int, int] | None = None
    ) -> Frame:
        """Augment one frame; all randomness comes from ``rng`` so a (seed, epoch, index) fixes the result.
        ``out_size``: centre-crop to this size after the geometry (the training patch inside its margin crop),
        so the per-pixel appearance transforms touch only the pixels the network sees."""
        flip, warp = rng.random() < self.hflip_p, rng.random() < self.affine_p
        out = {"image": frame.bmode, "mask": frame.mask, "elasto": frame.elasto_kpa, "context": frame.context}
        if warp:
            out = self._warp(frame, rng)
        if out_size is not None:
            out = {k: None if v is None else _centre_crop(v, out_size) for k, v in out.items()}
        if flip:
            # The last axis is the lateral one for every plane (context: (2k, H, W)); the sweep axis never flips.
            out = {k: None if v is None else np.ascontiguousarray(v[..., ::-1]) for k, v in out.items()}
        # The frame and its neighbours are one acquisition: the same artefacts, gain and gamma on every plane.
        planes = (
            out["image"][None]
            if out["context"] is None
            else np.concatenate([out["image"][None], out["context"]])
        )
        if self.ultrasound is not None:
            seed = int(rng.integers(2**31))
            planes = np.stack([self._ultrasound_artefacts(plane, seed) for plane in planes])
        outside = planes <= 0.0  # fill of the warp and of padding: not imaged, so no gain or noise lifts it
        planes = self._intensity(planes, rng)
        planes[outside] = 0.0
        elasto = None
        if out["elasto"] is not None and rng.random() >= self.elasto_drop_p:
            elasto = self._elasto_artefacts(out["elasto"].astype(np.float32, copy=False), rng)
        context = None if out["context"] is None else planes[1:]
        return Frame(bmode=planes[0], elasto_kpa=elasto, mask=out["mask"], context=context)

    def _intensity(self, planes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Gain and contrast, gamma, multiplicative speckle and a slight blur, each with its probability, the
        same draw for every (H, W) plane of ``planes`` (P, H, W); B-mode in [0, 1] out. One plane draws exactly
        the numbers a 2-D frame always drew (a (1, H, W) draw is the (H, W) one)."""
        out = planes.astype(np.float32, copy=True)
        if rng.random() < self.brightness_contrast_p:
            alpha = 1.0 + rng.uniform(-self.contrast_limit, self.contrast_limit)
            beta = rng.uniform(-self.brightness_limit, self.brightness_limit)
            out *= np.float32(alpha)
            out += np.float32(beta)
        if rng.random() < self.gamma_p:
            np.clip(out, 0.0, 1.0, out=out)
            np.power(out, np.float32(rng.uniform(*self.gamma_limit) / 100.0), out=out)
        if rng.random() < self.speckle_noise_p:
            factor = rng.random(out.shape, dtype=np.float32)
            factor *= 0.2
            factor += 0.9  # x U(0.9, 1.1) per pixel
            out *= factor
        if rng.random() < self.blur_p:
            sigma = rng.uniform(0.3, 0.8)
            out = np.stack([cv2.GaussianBlur(plane, (3, 3), sigmaX=sigma) for plane in out])
        return np.clip(out, 0.0, 1.0, out=out)

    def _warp(self, frame: Frame, rng: np.random.Generator) -> dict[str, np.ndarray | None]:
        """Scale, rotation and translation about the centre (albumentations' Affine parameters), one matrix for
        every plane: B-mode bilinear (fill 0: not imaged), labels and kPa nearest (never blended; kPa fill NaN:
        no signal). OpenCV's warp directly: albumentations' per-call machinery around the same four warps
        cost twice the warps themselves (see the README, "Performance")."""
        h, w = frame.mask.shape
        zoom = rng.uniform(*self.scale)
        angle = rng.uniform(-self.rotate_deg, self.rotate_deg)
        shift = rng.uniform(-self.translate, self.translate, size=2) * (w, h)
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, zoom)
        matrix[:, 2] += shift

        def warp(plane: np.ndarray, nearest: bool, fill: float) -> np.ndarray:
            flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
            return cv2.warpAffine(
                plane, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
            )

        elasto = context = None
        if frame.elasto_kpa is not None:
            elasto = warp(frame.elasto_kpa.astype(np.float32, copy=False), True, float("nan"))
        if frame.context is not None:
            context = np.stack([warp(plane, False, 0.0) for plane in frame.context])
        return {
            "image": warp(frame.bmode, False, 0.0),
            "mask": warp(frame.mask, True, 0),
            "elasto": elasto,
            "context": context,
        }

    def _ultrasound_artefacts(self, bmode: np.ndarray, seed: int) -> np.ndarray:
        self.ultrasound.set_random_seed(seed)
        scan_mask = (bmode > 0).astype(np.uint8)  # the imaged region, not the zero fill around it
        # usaugment draws its parameters from the global ``random`` and ``np.random``, not from the seed
        # albumentations hands each transform: seed both from our generator for this call only.
        with _global_random_seeded(seed):
            out = self.ultrasound(image=bmode, scan_mask=scan_mask)["image"]
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def _elasto_artefacts(self, kpa: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.elasto_noise_std > 0:
            # Multiplicative noise of std elasto_noise_std, uniform (a third of the cost of Gaussian draws);
            # NaN (no signal) stays NaN.
            half_width = np.float32(self.elasto_noise_std * np.sqrt(3.0))
            factor = rng.random(kpa.shape, dtype=np.float32)
            factor *= 2 * half_width
            factor += 1 - half_width
            kpa = np.maximum(kpa * factor, np.float32(0.0))
        if rng.random() < self.elasto_void_p:
            # A "black hole" void: an elliptical patch with no signal, as SWE shows in low-signal regions.
            h, w = kpa.shape
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.03, 0.12) * h, rng.uniform(0.03, 0.12) * w
            # Only the ellipse's bounding box is evaluated.
            y0, y1 = max(int(cy - ry), 0), min(int(np.ceil(cy + ry)) + 1, h)
            x0, x1 = max(int(cx - rx), 0), min(int(np.ceil(cx + rx)) + 1, w)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            kpa = kpa.copy()
            kpa[y0:y1, x0:x1][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = np.nan
        return kpa


def _centre_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre (h, w) of the last two axes (a plane, or a stack of context planes)."""
    h, w = arr.shape[-2:]
    y0, x0 = (h - size[0]) // 2, (w - size[1]) // 2
    return np.ascontiguousarray(arr[..., y0 : y0 + size[0], x0 : x0 + size[1]])


@contextmanager
def _global_random_seeded(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global generators, restoring their states afterwards (no other code that
    draws from them sees a difference)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def build_train_transform(enabled: bool = True, **kwargs) -> TrainTransform | None:
    """Hydra entry point for the ``augment`` config group; ``enabled: false`` disables augmentation."""
    return TrainTransform(**kwargs) if enabled else None
