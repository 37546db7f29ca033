"""Building blocks shared by the U-Net family: conv-norm-ReLU, double conv, encoder, decoder.

Everything here is plain ``nn.Module`` code that works eagerly, under ``torch.jit.script`` and under
``torch.export`` with dynamic batch/height/width: no Python-side shape logic, upsampling always to the
exact size of the skip tensor, lists of tensors only (no dicts of modules indexed by strings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group", "none")
UPSAMPLES = ("bilinear", "transpose")


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer by name. BatchNorm is the fast default on CPU; GroupNorm/InstanceNorm help
    when the per-GPU batch is tiny (large patches, 3D-like memory budgets)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        # Largest group count <= 8 that divides the channels (8 groups is the usual sweet spot).
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")


class ConvNormAct(nn.Sequential):
    """Conv (no bias when a norm follows: the norm's shift makes it redundant) -> norm -> ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The classic U-Net block: two 3x3 conv-norm-ReLU, optional spatial dropout in between."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm=norm),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            ConvNormAct(out_channels, out_channels, norm=norm),
        )


def encoder_widths(base_width: int, depth: int) -> list[int]:
    """Channel count at each scale: base_width doubled per level (depth + 1 scales incl. the bottleneck)."""
    if base_width < 1 or depth < 1:
        raise ValueError(f"base_width and depth must be >= 1; got base_width={base_width}, depth={depth}")
    return [base_width * 2**level for level in range(depth + 1)]


class Encoder(nn.Module):
    """U-Net encoder: a double conv at full resolution, then ``depth`` times max-pool + double conv.
    Returns the features of every scale, finest first; the last one is the bottleneck."""

    def __init__(
        self, in_channels: int, widths: list[int], norm: str = "batch", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.stem = DoubleConv(in_channels, widths[0], norm, dropout)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out, norm, dropout))
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class UpBlock(nn.Module):
    """Upsample the coarse features to the skip's size, concatenate, double conv."""

    def __init__(
        self,
        coarse_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsample {upsample!r}; expected one of {list(UPSAMPLES)}")
        self.bilinear = upsample == "bilinear"
        # Transposed conv learns the upsampling and halves the channels at the same time.
        self.up = (
            nn.Identity()
            if self.bilinear
            else nn.ConvTranspose2d(coarse_channels, coarse_channels // 2, kernel_size=2, stride=2)
        )
        up_channels = coarse_channels if self.bilinear else coarse_channels // 2
        self.conv = DoubleConv(up_channels + skip_channels, out_channels, norm, dropout)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            # Interpolating to the skip's exact size (not scale_factor=2) keeps shapes symbolic under export.
            coarse = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        else:
            coarse = self.up(coarse)
        return self.conv(torch.cat([coarse, skip], dim=1))


class Decoder(nn.Module):
    """U-Net decoder: from the bottleneck up, one UpBlock per skip scale; output at the finest scale."""

    def __init__(
        self, widths: list[int], norm: str = "batch", dropout: float = 0.0, upsample: str = "bilinear"
    ) -> None:
        super().__init__()
        # ups[0] works at the coarsest skip scale, ups[-1] at full resolution.
        self.ups = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], widths[level], norm, dropout, upsample)
            for level in reversed(range(len(widths) - 1))
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for i, up in enumerate(self.ups):
            x = up(x, features[-2 - i])
        return x

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The output of every UpBlock, coarsest first (the last is ``forward``'s): for deep supervision."""
        levels = [features[-1]]
        for i, up in enumerate(self.ups):
            levels.append(up(levels[-1], features[-2 - i]))
        return levels[1:]
