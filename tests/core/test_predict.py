from __future__ import annotations

import pytest
import torch
from torch import nn

from tpnet.core.predict import predict_probs


class StridedNet(nn.Module):
    """Down-and-up by 4: only works on sizes divisible by 4, like a real U-Net."""

    size_multiple = 4

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(2, 3, kernel_size=4, stride=4)
        self.up = nn.ConvTranspose2d(3, 3, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))


def single_conv(symmetric: bool) -> nn.Conv2d:
    """One 3x3 zero-padded conv: zero padding added outside changes nothing inside the frame."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=3, padding=1)
    if symmetric:
        with torch.no_grad():
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)  # left-right symmetric kernels
    return conv.eval()


def test_odd_sizes_come_back_at_input_size():
    torch.manual_seed(0)
    net = StridedNet().eval()
    images = torch.rand(2, 2, 33, 45)
    assert net(images).shape[-2:] != images.shape[-2:]  # unpadded, the network loses the edges
    probs = predict_probs(net, images, size_multiple=4)
    assert probs.shape == (2, 3, 33, 45)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 33, 45))


def test_padding_equals_unpadded_run_for_a_single_conv():
    conv = single_conv(symmetric=False)
    images = torch.rand(1, 2, 21, 30)
    expected = torch.softmax(conv(images), dim=1).detach()
    torch.testing.assert_close(predict_probs(conv, images, size_multiple=16), expected)


def test_tta_of_flip_equivariant_model_equals_plain():
    conv = single_conv(symmetric=True)
    images = torch.rand(1, 2, 19, 27)
    torch.testing.assert_close(predict_probs(conv, images, 8, tta=True), predict_probs(conv, images, 8))


def test_tta_averages_identity_and_horizontal_flip_only():
    conv = single_conv(symmetric=False)
    images = torch.rand(1, 2, 16, 24)
    plain = predict_probs(conv, images, 8)
    flipped = predict_probs(conv, images.flip(-1), 8).flip(-1)
    tta = predict_probs(conv, images, 8, tta=True)
    assert not torch.allclose(plain, flipped)
    torch.testing.assert_close(tta, (plain + flipped) / 2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_module_and_inference_mode():
    torch.manual_seed(0)
    net = StridedNet().eval()
    scripted = torch.jit.script(net)
    images = torch.rand(1, 2, 13, 18)
    probs = predict_probs(scripted, images, 4)
    assert probs.is_inference()
    torch.testing.assert_close(probs, predict_probs(net, images, 4))


def test_torch_export_module():
    torch.manual_seed(0)
    net = StridedNet().eval()
    example = torch.rand(1, 2, 16, 20)
    blocks_h, blocks_w = (
        torch.export.Dim("blocks_h", min=1, max=64),
        torch.export.Dim("blocks_w", min=1, max=64),
    )
    program = torch.export.export(net, (example,), dynamic_shapes=({2: 4 * blocks_h, 3: 4 * blocks_w},))
    images = torch.rand(1, 2, 13, 18)
    torch.testing.assert_close(predict_probs(program.module(), images, 4), predict_probs(net, images, 4))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="B, C, H, W"):
        predict_probs(single_conv(False), torch.rand(2, 8, 8), 4)
