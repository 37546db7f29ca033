"""U-Net (Ronneberger et al. 2015) with early fusion: B-mode and elastography channels enter one encoder.

    input (B, C, H, W)
      -> encoder: double conv, then `depth` x (max-pool 2 + double conv)   widths w, 2w, 4w, ...
      -> decoder: `depth` x (upsample to the skip's size + concat skip + double conv)
      -> 1x1 conv head -> logits (B, K, H, W)

H and W must be divisible by 2**depth (= size_multiple); callers pad outside the network.
"""

from __future__ import annotations

import torch
from torch import nn

from tpnet.models.blocks import Decoder, Encoder, encoder_widths


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "bilinear",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if deep_supervision:
            raise NotImplementedError("deep_supervision")
        widths = encoder_widths(base_width, depth)
        self.size_multiple: int = 2**depth
        self.encoder = Encoder(in_channels, widths, norm, dropout)
        self.decoder = Decoder(widths, norm, dropout, upsample)
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))
