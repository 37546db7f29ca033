"""How a frame becomes network input: units, channel encoding, resampling to one pixel spacing, padding.

Shared by the training loader and the inference tool (numpy + OpenCV + torch only), and recorded
verbatim in exported models, so a model file states exactly what it expects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

TISSUE_DENSITY_KG_M3 = 1000.0  # soft tissue, as every SWE scanner assumes for E = 3 * rho * c^2
# The elasto channel's defaults (0-300 kPa -> 0-3): the one place they are written. Training's schema
# (tpnet.configuration) and model files without them fall back to these.
DEFAULT_KPA_SCALE = 100.0
DEFAULT_KPA_CLIP = 300.0
CHANNEL_NAMES: tuple[str, ...] = ("bmode", "elasto", "elasto_valid")
ELASTO_CHANNELS: tuple[str, ...] = ("elasto", "elasto_valid")
# How the B-mode channel is scaled: "none" keeps the reader's [0, 1]; "zscore_frame" subtracts the frame's mean
# and divides by its standard deviation over the imaged region (nnU-Net's choice for non-CT images: gain, TGC
# and dynamic range differ between scanners and presets, so absolute grey levels carry no tissue meaning).
BMODE_NORMS: tuple[str, ...] = ("none", "zscore_frame")
# Pixels at or below this grey level are outside the imaged region (sector corners, crop and pad fill): they
# are left out of the frame's statistics and stay 0 after normalisation, as the network's zero padding is.
IMAGED_GREY_MIN = 0.0
BmodeStats = tuple[float, float]  # (mean, std) of the imaged region


def elasto_to_kpa(values: np.ndarray, unit: str) -> np.ndarray:
    """Young's modulus in kPa. ``m/s`` is shear-wave speed c: E = 3 * rho * c^2 (rho = 1000 kg/m^3),
    so 3 m/s -> 27 kPa. NaN (no signal) stays NaN."""
    if unit == "kPa":
        return values.astype(np.float32, copy=False)
    if unit == "m/s":
        return shear_speed_to_kpa(np.square(values, dtype=np.float32)).astype(np.float32)
    raise ValueError(f"unknown elastography unit {unit!r}; expected 'kPa' or 'm/s'")


def shear_speed_to_kpa(speed_squared: np.ndarray | float) -> np.ndarray | float:
    """E in kPa from the squared shear-wave speed c^2 in m^2/s^2: E = 3 * rho * c^2 (Pa) / 1000."""
    return 3.0 * (TISSUE_DENSITY_KG_M3 / 1000.0) * speed_squared


@dataclass(frozen=True)
class Encoding:
    """Input encoding. Defaults: B-mode in [0, 1]; elasto = clip(E_kPa, 0, kpa_clip) / kpa_scale
    (0-300 kPa -> 0-3, covering the 0-180 kPa scanner scales with room); elasto_valid = 1 where SWE
    has signal. Missing SWE (NaN or no file) gives elasto = 0 and elasto_valid = 0. ``bmode_norm`` (see
    ``BMODE_NORMS``) scales the B-mode plane; SWE stays physical (kPa / kpa_scale) whatever it is.

    ``context_slices`` = k > 0 (2.5-D input, issue #17): a slice of a sweep comes with the B-mode of its k
    neighbours on each side as 2k more planes right after its own B-mode (order -k..-1, +1..+k; a neighbour
    beyond the sweep's end is all 0, "not imaged"), scaled by the centre frame's statistics, so a 2-D network
    sees 3-D context at 2-D cost. 0 = the 2-D input every model file before it had. ``context_spacing_mm``: the
    mm between neighbour planes, interpolated between slices when a sweep's slice spacing differs (the network
    learns one physical offset, as it learns one pixel size); None = each sweep's own slice spacing."""

    channels: tuple[str, ...] = CHANNEL_NAMES
    kpa_scale: float = DEFAULT_KPA_SCALE
    kpa_clip: float = DEFAULT_KPA_CLIP
    bmode_norm: str = "none"
    context_slices: int = 0
    context_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        unknown = [c for c in self.channels if c not in CHANNEL_NAMES]
        if unknown or not self.channels or self.channels[0] != "bmode":
            raise ValueError(
                f"channels must start with 'bmode' and use only {list(CHANNEL_NAMES)}; got {list(self.channels)}"
            )
        if self.bmode_norm not in BMODE_NORMS:
            raise ValueError(f"bmode_norm must be one of {list(BMODE_NORMS)}; got {self.bmode_norm!r}")
        if (
            isinstance(self.context_slices, bool)
            or not isinstance(self.context_slices, int)
            or self.context_slices < 0
        ):
            raise ValueError(f"context_slices must be a whole number >= 0; got {self.context_slices!r}")
        if self.context_spacing_mm is not None and not (0 < float(self.context_spacing_mm) < float("inf")):
            raise ValueError(
                f"context_spacing_mm must be a positive number of mm; got {self.context_spacing_mm!r}"
            )

    @property
    def in_channels(self) -> int:
        return len(self.channels) + 2 * self.context_slices

    @property
    def input_planes(self) -> tuple[str, ...]:
        """One name per network input plane, in order: the neighbours as bmode_z-1, bmode_z+1, ..."""
        k = self.context_slices
        neighbours = tuple(f"bmode_z{d:+d}" for d in (*range(-k, 0), *range(1, k + 1)))
        planes: list[str] = []
        for name in self.channels:
            planes.append(name)
            if name == "bmode":
                planes.extend(neighbours)
        return tuple(planes)

    @property
    def context_planes(self) -> int:
        """Neighbour B-mode planes a frame needs (2k)."""
        return 2 * self.context_slices

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Encoding:
        return cls(
            channels=tuple(d.get("channels", CHANNEL_NAMES)),
            kpa_scale=float(d.get("kpa_scale", DEFAULT_KPA_SCALE)),
            kpa_clip=float(d.get("kpa_clip", DEFAULT_KPA_CLIP)),
            # Model files and checkpoints from before the key existed were trained on [0, 1] B-mode.
            bmode_norm=str(d.get("bmode_norm", "none")),
            context_slices=int(d.get("context_slices", 0)),  # 2-D before issue #17
            context_spacing_mm=None
            if d.get("context_spacing_mm") is None
            else float(d["context_spacing_mm"]),
        )

    def bmode_stats(self, bmode: np.ndarray) -> BmodeStats | None:
        """The statistics ``encode`` normalises with, from a whole frame; None when ``bmode_norm`` is "none".
        Training takes them from the whole resampled frame before it crops a patch, so a patch is scaled as
        the same frame is at inference (which encodes whole frames)."""
        if self.bmode_norm == "none":
            return None
        return imaged_region_stats(bmode)

    def encode(
        self,
        bmode: np.ndarray,
        elasto_kpa: np.ndarray | None,
        bmode_stats: BmodeStats | None = None,
        context: np.ndarray | None = None,
    ) -> np.ndarray:
        """(H, W) B-mode in [0, 1] and optional (H, W) kPa map -> (C, H, W) float32. ``bmode_stats``: the
        whole frame's (mean, std) when ``bmode`` is a crop of it; None = computed from ``bmode`` itself.
        ``context``: the (2k, H, W) neighbour B-mode planes when ``context_slices`` = k > 0 (required then)."""
        planes = []
        valid = None
        if elasto_kpa is not None:
            valid = np.isfinite(elasto_kpa)
        if self.context_slices:
            expected = (self.context_planes, *bmode.shape)
            if context is None or tuple(context.shape) != expected:
                got = "none" if context is None else tuple(context.shape)
                raise ValueError(
                    f"this encoding takes {self.context_slices} neighbour slice(s) on each side: context must "
                    f"be {expected}, got {got} (a 2.5-D model reads sweeps, not single frames)"
                )
        for name in self.channels:
            if name == "bmode":
                if bmode_stats is None and self.bmode_norm != "none":
                    bmode_stats = imaged_region_stats(bmode)  # the centre frame's, for its neighbours too
                planes.append(self._bmode_plane(bmode, bmode_stats))
                if self.context_slices:
                    planes.extend(self._bmode_plane(plane, bmode_stats) for plane in context)
            elif name == "elasto":
                if valid is None:
                    planes.append(np.zeros_like(bmode, dtype=np.float32))
                else:
                    kpa = np.where(valid, np.clip(elasto_kpa, 0.0, self.kpa_clip), 0.0)
                    planes.append((kpa / self.kpa_scale).astype(np.float32))
            elif name == "elasto_valid":
                planes.append(np.zeros_like(bmode, np.float32) if valid is None else valid.astype(np.float32))
        return np.stack(planes, axis=0)

    def _bmode_plane(self, bmode: np.ndarray, stats: BmodeStats | None) -> np.ndarray:
        grey = bmode.astype(np.float32, copy=False)
        if self.bmode_norm == "none":
            return grey
        mean, std = stats if stats is not None else imaged_region_stats(grey)
        imaged = grey > IMAGED_GREY_MIN
        scaled = (grey - np.float32(mean)) / np.float32(std)
        return np.where(imaged, scaled, np.float32(0.0)).astype(np.float32)


ContextPlane = tuple[tuple[int, float], ...]  # (slice index, weight) pairs; () = beyond the sweep: all 0


def context_planes(
    z: int, slices: int, context_slices: int, slice_spacing_mm: float, context_spacing_mm: float | None = None
) -> list[ContextPlane]:
    """How each of slice ``z``'s 2k neighbour planes (order -k..-1, +1..+k) is made from the sweep's slices: the
    slice ``d`` away, or, with ``context_spacing_mm``, linear interpolation at ``d * context_spacing_mm`` mm from
    slice z. A plane past either end of the sweep is () (all 0, "not imaged"), as one slice off the end is."""
    step = 1.0 if context_spacing_mm is None else float(context_spacing_mm) / float(slice_spacing_mm)
    planes: list[ContextPlane] = []
    for d in (*range(-context_slices, 0), *range(1, context_slices + 1)):
        position = z + d * step
        if position < -1e-6 or position > slices - 1 + 1e-6:
            planes.append(())
            continue
        low = min(int(np.floor(position + 1e-9)), slices - 1)
        weight = position - low
        if weight < 1e-6 or low == slices - 1:
            planes.append(((low, 1.0),))
        else:
            planes.append(((low, 1.0 - weight), (low + 1, weight)))
    return planes


def blend_slices(read_slice, plane: ContextPlane, shape: tuple[int, int]) -> np.ndarray:  # noqa: ANN001
    """One neighbour plane from ``context_planes``: the weighted sum of the slices ``read_slice(z)`` gives,
    float32 (H, W); zeros for ``()``."""
    out = np.zeros(shape, np.float32)
    for index, weight in plane:
        out += np.float32(weight) * np.asarray(read_slice(index), np.float32)
    return out


def imaged_region_stats(bmode: np.ndarray) -> BmodeStats:
    """(mean, std) of the B-mode over its imaged region (grey > ``IMAGED_GREY_MIN``); the whole frame when
    nothing is imaged. std has a floor, so a flat frame gives finite values."""
    grey = np.asarray(bmode, dtype=np.float32)
    values = grey[grey > IMAGED_GREY_MIN]
    if values.size == 0:
        values = grey.ravel()
    return float(values.mean()), max(float(values.std()), 1e-3)


def resample_scale(src_spacing_mm: float, dst_spacing_mm: float) -> float:
    """Zoom factor that takes pixels of ``src`` mm to pixels of ``dst`` mm."""
    return float(src_spacing_mm) / float(dst_spacing_mm)


def resampled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize(arr: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D array to (H, W): bilinear for images, nearest neighbour for label maps."""
    if tuple(arr.shape[:2]) == tuple(shape):
        return arr
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(arr, (shape[1], shape[0]), interpolation=interp)


def resize_elasto(kpa: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize that keeps NaN (no signal) out of the valid values: a pixel is valid when at
    least half its interpolation weight came from valid pixels."""
    if tuple(kpa.shape) == tuple(shape):
        return kpa
    valid = np.isfinite(kpa).astype(np.float32)
    filled = np.where(valid > 0, kpa, 0.0).astype(np.float32)
    num = resize(filled, shape)
    den = resize(valid, shape)
    out = np.full(shape, np.nan, dtype=np.float32)
    ok = den >= 0.5
    out[ok] = num[ok] / den[ok]
    return out


def resample_frame(
    bmode: np.ndarray,
    elasto_kpa: np.ndarray | None,
    mask: np.ndarray | None,
    src_spacing_mm: float,
    dst_spacing_mm: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Bring one frame to ``dst_spacing_mm`` per pixel (images bilinear, masks nearest)."""
    shape = resampled_shape(bmode.shape, resample_scale(src_spacing_mm, dst_spacing_mm))
    bmode = resize(bmode, shape)
    if elasto_kpa is not None:
        elasto_kpa = resize_elasto(elasto_kpa, shape)
    if mask is not None:
        mask = resize(mask, shape, nearest=True)
    return bmode, elasto_kpa, mask


def pad_amounts(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Bottom/right padding that makes (H, W) divisible by ``multiple`` (the network's stride)."""
    return (-height) % multiple, (-width) % multiple
