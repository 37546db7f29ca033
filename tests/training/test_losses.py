"""Losses: every config trains a tiny U-Net sanely; Dice/Tversky extremes; ignore_index; AMP dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tpnet.models.unet import UNet
from tpnet.training.losses import (
    CompoundLoss,
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceLoss,
    FocalLoss,
    TverskyLoss,
    deep_supervision,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "src" / "tpnet" / "configs" / "loss"
NUM_CLASSES = 4
ALL_LOSSES = [CrossEntropyLoss, DiceLoss, FocalLoss, TverskyLoss]


def blob_target(batch: int = 2, size: int = 16) -> torch.Tensor:
    """Background with one square of each foreground class per image."""
    target = torch.zeros(batch, size, size, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    target[:, 9:13, 3:7] = 2
    target[:, 4:8, 10:15] = 3
    return target


def logits_for(labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    return scale * F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("config_path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_loss_config_trains_a_tiny_unet(config_path: Path) -> None:
    torch.manual_seed(0)
    criterion = instantiate(OmegaConf.load(config_path))
    model = UNet(3, NUM_CLASSES, base_width=4, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 3, 16, 16)
    target = blob_target()
    target[:, 0, :] = 255  # an unlabelled row

    losses = []
    for step in range(4):
        optimizer.zero_grad()
        loss = criterion(model(x), target)
        assert loss.ndim == 0 and torch.isfinite(loss), config_path.stem
        loss.backward()
        if step == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
            assert sum(g.abs().sum() for g in grads) > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], (config_path.stem, losses)

    if isinstance(criterion, CompoundLoss):
        terms = criterion.last_terms
        assert set(terms) == set(criterion.weights) and all(isinstance(v, float) for v in terms.values())
        assert losses[-1] == pytest.approx(sum(criterion.weights[k] * v for k, v in terms.items()), rel=1e-5)


@pytest.mark.parametrize("loss_cls", [DiceLoss, TverskyLoss])
def test_overlap_losses_are_zero_when_perfect_and_high_when_wrong(loss_cls: type) -> None:
    criterion = loss_cls()
    target = blob_target()
    assert criterion(logits_for(target), target).item() < 1e-3
    wrong = (target + 1) % NUM_CLASSES
    assert criterion(logits_for(wrong), target).item() > 0.9


@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_ignored_pixels_have_no_effect(loss_cls: type) -> None:
    torch.manual_seed(0)
    criterion = loss_cls()
    logits = torch.randn(2, NUM_CLASSES, 16, 16)
    target = blob_target()
    target[:, :, 8:] = 255  # right half unlabelled

    reference = criterion(logits, target)
    scrambled = logits.clone()
    scrambled[:, :, :, 8:] = 100 * torch.randn(2, NUM_CLASSES, 16, 8)
    torch.testing.assert_close(criterion(scrambled, target), reference)
    # Same as never having seen the ignored half.
    torch.testing.assert_close(criterion(logits[..., :8], target[..., :8]), reference)


@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_low_precision_logits_give_a_finite_float32_loss(loss_cls: type) -> None:
    logits = (30 * torch.randn(2, NUM_CLASSES, 16, 16)).to(torch.bfloat16)
    loss = loss_cls()(logits, blob_target())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_cross_entropy_matches_torch_with_class_weights_and_survives_all_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 16, 16)
    target = blob_target()
    target[0, 0] = 255
    weight = [0.5, 2.0, 2.0, 1.0]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weight), ignore_index=255)
    torch.testing.assert_close(CrossEntropyLoss(weight=weight)(logits, target), expected)
    all_ignored = torch.full_like(target, 255)
    assert CrossEntropyLoss()(logits, all_ignored).item() == 0.0


def test_focal_with_gamma_zero_is_cross_entropy_and_down_weights_easy_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 16, 16)
    target = blob_target()
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), CrossEntropyLoss()(logits, target))
    assert FocalLoss(gamma=2.0)(logits, target) < CrossEntropyLoss()(logits, target)


def test_tversky_with_equal_weights_is_dice_and_beta_penalises_misses() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 16, 16)
    target = blob_target()
    # Exactly Dice without smoothing (the smoothing terms differ by a factor 2).
    tversky_half = TverskyLoss(alpha=0.5, beta=0.5, smooth=0.0)(logits, target)
    torch.testing.assert_close(tversky_half, DiceLoss(smooth=0.0)(logits, target))
    # Predicting all background misses every trigger point: recall-weighted Tversky is harsher.
    background = logits_for(torch.zeros_like(target), scale=3.0)
    missed = TverskyLoss(alpha=0.3, beta=0.7)(background, target)
    lenient = TverskyLoss(alpha=0.7, beta=0.3)(background, target)
    assert missed > lenient


def test_compound_loss_needs_one_weight_per_term() -> None:
    with pytest.raises(ValueError, match="one weight per term"):
        CompoundLoss({"ce": CrossEntropyLoss(), "dice": DiceLoss()}, {"ce": 1.0})


# ---- deep supervision ----------------------------------------------------------------------------------


def test_deep_supervision_weights_halve_per_level_and_sum_to_one() -> None:
    assert DeepSupervisionLoss.level_weights(1) == [1.0]
    assert DeepSupervisionLoss.level_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_deep_supervision_loss_is_the_weighted_sum_against_the_nearest_downsampled_target() -> None:
    torch.manual_seed(0)
    target = blob_target(size=16)
    target[:, 0, :] = 255  # ignore_index must survive the downsampling as a label, not be blended
    ce = CrossEntropyLoss()
    logits = [
        torch.randn(2, NUM_CLASSES, 16, 16),
        torch.randn(2, NUM_CLASSES, 8, 8),
        torch.randn(2, NUM_CLASSES, 4, 4),
    ]
    expected = (
        4 / 7 * ce(logits[0], target)
        + 2 / 7 * ce(logits[1], target[:, ::2, ::2])  # nearest of an exact halving = every second pixel
        + 1 / 7 * ce(logits[2], target[:, ::4, ::4])
    )
    torch.testing.assert_close(deep_supervision(ce, enabled=True)(logits, target), expected)


def test_deep_supervision_passes_a_single_tensor_through_and_is_absent_when_disabled() -> None:
    ce = CrossEntropyLoss()
    assert deep_supervision(ce, enabled=False) is ce
    logits, target = torch.randn(2, NUM_CLASSES, 16, 16), blob_target()
    torch.testing.assert_close(deep_supervision(ce, enabled=True)(logits, target), ce(logits, target))


def test_deep_supervision_training_step_trains_every_head() -> None:
    """One optimiser step of a deep-supervised U-Net: finite loss, a gradient for every parameter (DDP would hang
    on a head without one), the loss goes down on the batch it saw."""
    torch.manual_seed(0)
    model = UNet(3, NUM_CLASSES, base_width=4, depth=3, deep_supervision=True).train()
    loss_fn = deep_supervision(
        CompoundLoss({"ce": CrossEntropyLoss(), "dice": DiceLoss()}, {"ce": 1, "dice": 1}), True
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, target = torch.randn(2, 3, 16, 16), blob_target()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux_heads.parameters())
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
