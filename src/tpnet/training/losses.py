"""Segmentation losses. All take (logits (B, K, H, W), target (B, H, W) long) and return a scalar.

Pixels whose target equals `ignore_index` (default 255: unlabelled / padding) contribute nothing.
Everything is computed in float32, so the losses stay finite under AMP (fp16/bf16 logits).
Dice/Tversky are "batch" variants (sums over the whole batch, as in nnU-Net), which keeps small,
rare trigger points from producing a noisy per-image ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _valid_target(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target with ignored pixels mapped to class 0 so it can index, float mask of kept pixels)."""
    valid = target != ignore_index
    return torch.where(valid, target, torch.zeros_like(target)), valid


def _soft_counts(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class soft true positives, predicted mass and target mass over the batch, ignored pixels out."""
    num_classes = logits.shape[1]
    safe_target, valid = _valid_target(target, ignore_index)
    keep = valid.unsqueeze(1).float()
    probs = torch.softmax(logits.float(), dim=1) * keep
    one_hot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).float() * keep
    dims = (0, 2, 3)
    return (probs * one_hot).sum(dims), probs.sum(dims), one_hot.sum(dims)


def _class_mean(per_class: torch.Tensor, include_background: bool) -> torch.Tensor:
    return per_class.mean() if include_background else per_class[1:].mean()


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy; `weight` = optional per-class weights. Averaged over kept pixels
    (weighted mean when weights are given); an all-ignored batch gives 0 rather than NaN."""

    def __init__(self, weight: Sequence[float] | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        class_weight = None if weight is None else torch.tensor([float(w) for w in weight])
        self.register_buffer("weight", class_weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(
            logits.float(), target, weight=self.weight, ignore_index=self.ignore_index, reduction="sum"
        )
        safe_target, valid = _valid_target(target, self.ignore_index)
        # Same normaliser as torch's "mean": the (weighted) number of kept pixels.
        pixel_weight = valid.float() if self.weight is None else self.weight[safe_target] * valid
        return total / pixel_weight.sum().clamp_min(1e-6)


class DiceLoss(nn.Module):
    """1 - soft multi-class Dice, averaged over classes (background excluded by default)."""

    def __init__(
        self, include_background: bool = False, smooth: float = 1.0, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        true_pos, predicted, actual = _soft_counts(logits, target, self.ignore_index)
        dice = (2 * true_pos + self.smooth) / (predicted + actual + self.smooth)
        return 1 - _class_mean(dice, self.include_background)


class TverskyLoss(nn.Module):
    """1 - Tversky index TP / (TP + alpha FP + beta FN). beta > alpha penalises missed pixels more
    than false alarms, which favours recall of small trigger points. alpha = beta = 0.5 is Dice."""

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        include_background: bool = False,
        smooth: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.include_background = include_background
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        true_pos, predicted, actual = _soft_counts(logits, target, self.ignore_index)
        false_pos, false_neg = predicted - true_pos, actual - true_pos
        tversky = (true_pos + self.smooth) / (
            true_pos + self.alpha * false_pos + self.beta * false_neg + self.smooth
        )
        return 1 - _class_mean(tversky, self.include_background)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, so the many easy
    background pixels stop dominating. `alpha`: per-class weights (list), or a float a giving the
    foreground classes weight a and the background 1 - a; None = no class weighting."""

    def __init__(
        self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.alpha_scalar = float(alpha) if isinstance(alpha, int | float) else None
        class_alpha = None
        if alpha is not None and self.alpha_scalar is None:
            class_alpha = torch.tensor([float(a) for a in alpha])
        self.register_buffer("alpha", class_alpha, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        safe_target, valid = _valid_target(target, self.ignore_index)
        log_prob = torch.log_softmax(logits.float(), dim=1)
        log_p_true = log_prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        p_true = log_p_true.exp()
        loss = -((1 - p_true).clamp_min(0) ** self.gamma) * log_p_true
        if self.alpha is not None:
            loss = loss * self.alpha[safe_target]
        elif self.alpha_scalar is not None:
            loss = loss * torch.where(safe_target > 0, self.alpha_scalar, 1 - self.alpha_scalar)
        return (loss * valid).sum() / valid.sum().clamp_min(1)


class CompoundLoss(nn.Module):
    """Weighted sum of named losses, e.g. {"ce": CE, "dice": Dice} (nnU-Net's default).
    `last_terms` holds the unweighted value of every term from the latest call, for logging."""

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        # Hydra hands over DictConfigs: copy into plain dicts.
        terms, weights = dict(terms.items()), {str(k): float(v) for k, v in weights.items()}
        if not terms or set(terms) != set(weights):
            raise ValueError(
                f"CompoundLoss needs one weight per term; terms={sorted(terms)}, weights={sorted(weights)}"
            )
        self.terms = nn.ModuleDict(terms)
        self.weights = weights
        self._last_terms: dict[str, torch.Tensor] = {}

    @property
    def last_terms(self) -> dict[str, float]:
        # Kept as detached tensors and converted on access, so training does not sync the GPU each step.
        return {name: float(value) for name, value in self._last_terms.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = {name: term(logits, target) for name, term in self.terms.items()}
        self._last_terms = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())


class DeepSupervisionLoss(nn.Module):
    """nnU-Net's deep supervision: ``loss_fn`` on each decoder level's logits against the label map downsampled
    (nearest neighbour, so labels and ``ignore_index`` stay labels) to that level's size, weighted 1, 1/2,
    1/4 ... (finest first) and normalised to sum 1. nnU-Net also gives its coarsest output weight 0; tpnet's
    models do not make that output at all (tpnet.models.unet). A single tensor (validation, eval mode) gets
    ``loss_fn`` itself."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    @staticmethod
    def level_weights(n_levels: int) -> list[float]:
        raw = [0.5**level for level in range(n_levels)]
        return [w / sum(raw) for w in raw]

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.loss_fn(logits, target)
        if not logits:
            raise ValueError("deep supervision needs at least one logits tensor")
        total = logits[0].new_zeros((), dtype=torch.float32)
        for weight, level in zip(self.level_weights(len(logits)), logits, strict=True):
            if level.shape[-2:] != target.shape[-2:]:
                small = F.interpolate(target[:, None].float(), size=level.shape[-2:], mode="nearest")
                level_target = small[:, 0].to(target.dtype)
            else:
                level_target = target
            total = total + weight * self.loss_fn(level, level_target)
        return total


def deep_supervision(loss_fn: Callable, enabled: bool) -> Callable:
    """The loss for a model's output: ``loss_fn`` itself, or (``enabled``) the weighted sum over the decoder
    levels' logit maps that a deep-supervised model returns in training mode (``DeepSupervisionLoss``)."""
    return DeepSupervisionLoss(loss_fn) if enabled else loss_fn


class MarginalLoss(nn.Module):
    """Partial labels (issue #16, ``data.sources``): ``loss_fn`` where a pixel's label may be a *set* of classes.

    A source that does not label some classes marks its background pixels with a code (``label_sets``: code ->
    the classes it may be, background first; ``tpnet.data.sources``). At such a pixel the merged probability
    of the set is what the label says: the background logit becomes the log-sum-exp of the set's logits and the
    set's other classes get no probability, so cross-entropy scores log P(set) and Dice / Tversky count neither
    a false positive nor a false negative of an unknown class there: the marginal loss of Shi et al. (2021,
    "Marginal loss and exclusion loss for partially supervised multi-organ segmentation"). Pixels the source
    does label keep every class, so a labelled vessel pixel still teaches "not a nerve" (their exclusion loss).
    Without codes in the batch it is ``loss_fn`` unchanged."""

    def __init__(self, loss_fn: Callable, label_sets: Mapping[int, Sequence[int]]) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.label_sets = {int(code): tuple(int(k) for k in members) for code, members in label_sets.items()}
        for code, members in self.label_sets.items():
            if not members or members[0] != 0:
                raise ValueError(
                    f"label set of code {code} must start with the background (0); got {members}"
                )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        present = [code for code in self.label_sets if bool((target == code).any())]
        if not present:
            return self.loss_fn(logits, target)
        merged = logits.float()
        target = target.clone()
        for code in present:
            members = list(self.label_sets[code])
            where = (target == code).unsqueeze(1)  # (B, 1, H, W)
            background = torch.logsumexp(merged[:, members], dim=1, keepdim=True)
            # A finite "minus infinity": exp underflows to exactly 0, and no inf - inf NaN in the softmax.
            others = torch.full_like(merged[:, members[1:]], -1e4)
            merged = torch.cat(
                [
                    torch.where(where, background, merged[:, :1]),
                    merged[:, 1:],
                ],
                dim=1,
            )
            if len(members) > 1:
                index = torch.tensor(members[1:], device=merged.device)
                current = merged.index_select(1, index)
                merged = merged.index_copy(1, index, torch.where(where, others, current))
            target[target == code] = 0
        return self.loss_fn(merged, target)
