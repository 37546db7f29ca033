"""U-Net decoder on a torchvision ResNet encoder (resnet18/34), optionally initialised from local weights.

    input (B, C, H, W)
      -> stem (7x7 conv s2, C -> 64)          1/2
      -> max-pool + layer1                    1/4   64
      -> layer2 / layer3 / layer4             1/8 128, 1/16 256, 1/32 512
      -> decoder: 4 x (upsample + concat skip + double conv) back to 1/2
      -> upsample to H x W + conv-norm-ReLU + 1x1 head -> logits (B, K, H, W)

Weights are never downloaded: `pretrained_path` is a local state dict of a torchvision ResNet
(e.g. ImageNet weights copied onto the machine), loaded with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34

from tpnet.models.blocks import ConvNormAct, UpBlock

ENCODERS = {"resnet18": resnet18, "resnet34": resnet34}
STAGE_CHANNELS = (64, 64, 128, 256, 512)  # stem, layer1..layer4 (BasicBlock ResNets)


def load_resnet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a torchvision ResNet state dict from a local file; errors name the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder weights not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or pickled objects that weights_only refuses
        raise ValueError(f"cannot read pretrained encoder weights {path}: {err}") from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"pretrained encoder weights {path} are not a state dict of tensors")
    return state_dict


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The stem conv for `in_channels` inputs. Pretrained RGB filters are averaged and the mean filter
    is repeated for every input channel (the usual recipe for grey-scale / multi-channel inputs)."""
    if in_channels == conv.in_channels:
        return conv
    new_conv = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new_conv.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1))
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias)
    return new_conv


class ResNetUNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "resnet18",
        pretrained_path: str | None = None,
        decoder_width: int = 16,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {list(ENCODERS)}")
        resnet = ENCODERS[encoder](weights=None)
        if pretrained_path is not None:
            state_dict = load_resnet_state_dict(pretrained_path)
            try:
                resnet.load_state_dict(state_dict)
            except RuntimeError as err:  # missing/unexpected keys or shape mismatch (e.g. resnet34 file)
                raise ValueError(
                    f"pretrained encoder weights {pretrained_path} do not fit a torchvision {encoder}: {err}"
                ) from err

        self.size_multiple: int = 32
        self.stem = nn.Sequential(adapt_first_conv(resnet.conv1, in_channels), resnet.bn1, resnet.relu)
        self.pool = resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )

        # Decoder widths at 1/16, 1/8, 1/4, 1/2: 8w, 4w, 2w, w.
        decoder_widths = [decoder_width * 2**i for i in (3, 2, 1, 0)]
        coarse = STAGE_CHANNELS[4]
        ups = []
        for skip_channels, out_channels in zip(STAGE_CHANNELS[3::-1], decoder_widths, strict=True):
            ups.append(UpBlock(coarse, skip_channels, out_channels, norm=norm))
            coarse = out_channels
        self.ups = nn.ModuleList(ups)
        # Full-resolution refinement is cheap at decoder_width channels and sharpens small nodules.
        self.final = ConvNormAct(decoder_width, decoder_width, norm=norm)
        self.head = nn.Conv2d(decoder_width, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        s1 = self.layer1(self.pool(stem))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        y = self.layer4(s3)
        skips = [s3, s2, s1, stem]
        for i, up in enumerate(self.ups):
            y = up(y, skips[i])
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.final(y))
