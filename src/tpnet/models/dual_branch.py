"""Dual-branch U-Net: early vs late fusion of B-mode and elastography as one config switch.

fusion="early": one encoder on all channels (identical to UNet).
fusion="late":  one encoder for B-mode (first `bmode_channels` channels) and one for elastography
                (the rest); at every scale both feature maps are concatenated and mixed by a 1x1
                conv-norm-ReLU, and the fused map is what the decoder sees (skips and bottleneck).
Keeping the branches separate lets each learn its own low-level filters (speckle texture vs a smooth
stiffness map with holes) before they meet.
"""

from __future__ import annotations

import torch
from torch import nn

from tpnet.models.blocks import ConvNormAct, Decoder, Encoder, encoder_widths

FUSIONS = ("late", "early")


class LateFusionEncoder(nn.Module):
    """Two encoders, fused per scale. Returns the fused features, finest first (same as Encoder)."""

    def __init__(
        self, in_channels: int, bmode_channels: int, widths: list[int], norm: str, dropout: float
    ) -> None:
        super().__init__()
        self.bmode_channels = bmode_channels
        self.bmode_encoder = Encoder(bmode_channels, widths, norm, dropout)
        self.elasto_encoder = Encoder(in_channels - bmode_channels, widths, norm, dropout)
        self.fuse = nn.ModuleList(ConvNormAct(2 * width, width, kernel_size=1, norm=norm) for width in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        bmode_features = self.bmode_encoder(x[:, : self.bmode_channels])
        elasto_features = self.elasto_encoder(x[:, self.bmode_channels :])
        fused: list[torch.Tensor] = []
        for level, fuse in enumerate(self.fuse):
            fused.append(fuse(torch.cat([bmode_features[level], elasto_features[level]], dim=1)))
        return fused


class DualBranchUNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
        fusion: str = "late",
        bmode_channels: int = 1,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {list(FUSIONS)}")
        if fusion == "late" and in_channels <= bmode_channels:
            raise ValueError(
                f"late fusion needs elastography channels after the {bmode_channels} B-mode channel(s), "
                f"but in_channels={in_channels}; use fusion='early' (or a UNet) for B-mode-only input"
            )
        widths = encoder_widths(base_width, depth)
        self.size_multiple: int = 2**depth
        self.fusion = fusion
        # Both encoders return per-scale features, so the decoder is the same for either fusion.
        self.encoder = (
            LateFusionEncoder(in_channels, bmode_channels, widths, norm, dropout)
            if fusion == "late"
            else Encoder(in_channels, widths, norm, dropout)
        )
        self.decoder = Decoder(widths, norm, dropout, upsample)
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))
