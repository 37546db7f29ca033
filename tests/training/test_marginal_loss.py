"""MarginalLoss: a pixel whose label is a set of classes is scored on the set's merged probability."""

import math

import pytest
import torch

from tpnet.training.losses import CrossEntropyLoss, DiceLoss, MarginalLoss

CODE = 130  # "background or class 2"


def _logits(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, len(values), 1, 1)


def test_cross_entropy_of_a_coded_pixel_is_minus_log_of_the_merged_probability():
    logits = _logits([0.5, 1.0, 2.0])
    probs = torch.softmax(logits.flatten(), dim=0)
    loss = MarginalLoss(CrossEntropyLoss(), {CODE: (0, 2)})(logits, torch.tensor([[[CODE]]]))
    assert float(loss) == pytest.approx(-math.log(float(probs[0] + probs[2])), rel=1e-5)
    # the naive reading (background) is a different, larger loss: it punishes the probability of class 2
    naive = CrossEntropyLoss()(logits, torch.tensor([[[0]]]))
    assert float(naive) > float(loss) + 0.5


def test_labelled_pixels_and_batches_without_codes_are_unchanged():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    plain = CrossEntropyLoss()(logits, target) + DiceLoss()(logits, target)
    wrapped = MarginalLoss(CrossEntropyLoss(), {CODE: (0, 2)})(logits, target) + MarginalLoss(
        DiceLoss(), {CODE: (0, 2)}
    )(logits, target)
    assert float(wrapped) == pytest.approx(float(plain), rel=1e-6)


def test_dice_counts_no_false_positive_of_an_unknown_class_on_coded_pixels():
    # Class 2 predicted on pixels whose source does not label class 2: no false positive for it there, so a
    # prediction of class 2 where the source has it as "unknown" costs nothing, unlike the naive background.
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[:, 2] = 5.0  # everything predicted as class 2
    target = torch.full((1, 4, 4), CODE)
    target[0, 0, 0] = 2  # one labelled class-2 pixel (another source labels it)
    marginal = MarginalLoss(DiceLoss(), {CODE: (0, 2)})(logits, target)
    naive = DiceLoss()(logits, torch.where(target == CODE, 0, target))
    assert float(marginal) < 0.6 * float(naive)


def test_gradient_flows_and_is_finite():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), CODE)
    target[0, :2] = 1
    loss = MarginalLoss(CrossEntropyLoss(), {CODE: (0, 2)})(logits, target) + MarginalLoss(
        DiceLoss(), {CODE: (0, 2)}
    )(logits, target)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) > 0


def test_a_label_set_must_start_with_the_background():
    with pytest.raises(ValueError, match="background"):
        MarginalLoss(CrossEntropyLoss(), {CODE: (2,)})
