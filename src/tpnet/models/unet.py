"""U-Net (Ronneberger et al. 2015) with early fusion: B-mode and elastography channels enter one encoder.

    input (B, C, H, W)
      -> encoder: double conv, then `depth` x (max-pool 2 + double conv)   widths w, 2w, 4w, ...
      -> decoder: `depth` x (upsample to the skip's size + concat skip + double conv)
      -> 1x1 conv head -> logits (B, K, H, W)

H and W must be divisible by 2**depth (= size_multiple); callers pad outside the network.

Deep supervision (nnU-Net): with ``deep_supervision=True`` a 1x1 head also reads each coarser decoder level
except the coarsest (nnU-Net gives that one loss weight 0), and in training mode ``forward`` returns the list
[full-resolution logits, 1/2, 1/4 ...] for ``tpnet.training.losses.deep_supervision``. In eval mode it returns
the full-resolution logits only, so validation and prediction never see a list; the deployable model is built
with ``deep_supervision=False`` (``tpnet.models.from_checkpoint``), without the auxiliary heads, so TorchScript
and torch.export see the plain network.
"""

from __future__ import annotations

import torch
from torch import nn

from tpnet.models.blocks import Decoder, Encoder, encoder_widths

AUX_HEADS = "aux_heads"  # state-dict prefix of the deep-supervision heads (dropped for deployment)


class UNet(nn.Module):
    # A TorchScript constant: scripting folds the deep-supervision branch away when it is off.
    __constants__ = ["deep_supervision"]

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_width: int = 16,
        depth: int | None = 4,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "bilinear",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if depth is None:  # model/unet.yaml's null: tpnet-train fills it in from the plan before building
            raise ValueError("UNet depth is None ('planned'): plan it (tpnet-train does) or pass an int")
        widths = encoder_widths(base_width, depth)
        self.size_multiple: int = 2**depth
        self.deep_supervision = bool(deep_supervision)
        self.encoder = Encoder(in_channels, widths, norm, dropout)
        self.decoder = Decoder(widths, norm, dropout, upsample)
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        if self.deep_supervision:
            # Decoder levels at 1/2, 1/4 ... of the input, finest first; the coarsest decoder level has none.
            self.aux_heads = nn.ModuleList(
                nn.Conv2d(widths[level], num_classes, kernel_size=1) for level in range(1, depth)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deep_supervision and self.training:
            # A list, for the training loss only. TorchScript folds this branch away when deep supervision is
            # off; a deep-supervised model is deployed without it (tpnet.models.from_checkpoint).
            return self.forward_levels(x)
        return self.head(self.decoder(self.encoder(x)))

    @torch.jit.unused
    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[full-resolution logits, logits at 1/2, 1/4 ...] (deep supervision only)."""
        levels = self.decoder.forward_levels(self.encoder(x))  # coarsest first, full resolution last
        coarser = levels[-2::-1]  # 1/2, 1/4 ... finest first
        return [self.head(levels[-1])] + [head(f) for head, f in zip(self.aux_heads, coarser, strict=True)]
