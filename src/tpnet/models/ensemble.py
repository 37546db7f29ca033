"""A fold ensemble as one network: the members' class probabilities averaged (nnU-Net's cross-validation ensemble).

    image (B, C, H, W) -> each member -> softmax over classes -> mean over members -> log(mean)  "logits"

Returning log(mean probability) keeps the exported-model contract (logits out, softmax applied by
``tpnet.core.predict``): softmax(log p) = p / sum(p) = p, so the probabilities every tool sees are exactly the
averaged ones, and evaluation, calibration and tpnet-infer need not know that a file holds several networks.
The module is plain tensor code over an ``nn.ModuleList``: it scripts (TorchScript), exports (torch.export) and
converts (ONNX) like a single network. Members are the deployable networks of
``tpnet.models.from_checkpoint`` (deep-supervision heads stripped).

The members must describe the same model contract: classes, input encoding (hence input channels) and pixel
spacing (the cross-validation plan fixes the spacing once per dataset, so folds agree). Post-processing:
each key is the median of the members' calibrated values (``POSTPROCESS_RULE``): a documented choice, robust
to one fold whose calibration landed on an edge of its grid; an explicit ``postprocess`` overrides it.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tpnet.core.encoding import Encoding
from tpnet.core.postprocess import PostprocessParams

# log(0) = -inf would survive softmax, but not parity differences (inf - inf = nan) nor every ONNX runtime.
PROB_FLOOR = 1e-12
POSTPROCESS_RULE = "median of the members' calibrated post-processing, per key"
SHA256_PREFIX = 16  # hex digits of a member checkpoint's sha256 kept in the model file


class EnsembleError(ValueError):
    """The checkpoints cannot form one ensemble; the message names the checkpoint and the key."""


class FoldEnsemble(nn.Module):
    """Average the members' softmax probabilities; return log(mean probability) as the logits."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise EnsembleError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)
        self.num_members: int = len(members)
        # The padded input must suit every member's stride.
        self.size_multiple: int = math.lcm(*(int(m.size_multiple) for m in members))
        self.prob_floor: float = PROB_FLOOR  # an attribute: TorchScript cannot read module globals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member in self.members:
            # float32 softmax: under autocast a member may return bf16/fp16 logits, which lose small probabilities.
            probs = torch.softmax(member(x).float(), dim=1)
            total = probs if total is None else total + probs
        assert total is not None  # for TorchScript's type refinement; __init__ refuses an empty ensemble
        return torch.log((total / self.num_members).clamp_min(self.prob_floor))


def check_members_agree(paths: Sequence[Path], metas: Sequence[dict]) -> None:
    """Raise ``EnsembleError`` naming the first checkpoint whose classes, input channels, encoding or pixel
    spacing differ from the first checkpoint's."""
    first_path, first = paths[0], metas[0]
    for path, meta in zip(paths[1:], metas[1:], strict=True):
        for key, value, reference in (
            ("classes", list(meta["classes"]), list(first["classes"])),
            (
                "input channels",
                Encoding.from_dict(meta["encoding"]).in_channels,
                Encoding.from_dict(first["encoding"]).in_channels,
            ),
            ("encoding", meta["encoding"], first["encoding"]),
        ):
            if value != reference:
                raise _disagreement(path, key, value, first_path, reference)
        spacing, reference = float(meta["spacing_mm"]), float(first["spacing_mm"])
        if not math.isclose(spacing, reference, rel_tol=1e-6):
            raise _disagreement(path, "spacing_mm", spacing, first_path, reference)


def _disagreement(path: Path, key: str, value: Any, first_path: Path, reference: Any) -> EnsembleError:
    return EnsembleError(
        f"{path}: {key} {value!r} differs from {reference!r} in {first_path}; the members of one ensemble "
        "must be folds of one experiment plan (same classes, encoding and spacing)"
    )


def ensemble_postprocess(metas: Sequence[dict]) -> dict[str, float]:
    """``POSTPROCESS_RULE``: per key, the median of the members' values (a member saved before a key existed
    counts with that key's default)."""
    defaults = PostprocessParams().to_dict()
    keys = [k for k in defaults if any(k in m["postprocess"] for m in metas)]
    return {k: float(statistics.median(m["postprocess"].get(k, defaults[k]) for m in metas)) for k in keys}


def member_record(path: Path, state: dict) -> dict[str, Any]:
    """What the model file says about one member: enough to find its checkpoint and run again."""
    return {
        "checkpoint": f"{path.parent.parent.name}/{path.parent.name}/{path.name}",  # <run folder>/checkpoints/best.pt
        "sha256": file_sha256(path)[:SHA256_PREFIX],
        "mlflow_run_id": state.get("mlflow_run_id"),
        "fold": (state["config"].get("cv") or {}).get("fold"),
    }


def ensemble_info(paths: Sequence[Path], states: Sequence[dict]) -> dict[str, Any]:
    """The ``ensemble`` block of the model metadata and of metrics.json."""
    members = [member_record(Path(p), s) for p, s in zip(paths, states, strict=True)]
    digest = hashlib.sha256("".join(m["sha256"] for m in members).encode()).hexdigest()[:8]
    return {"n_members": len(members), "id": digest, "members": members, "postprocess_rule": POSTPROCESS_RULE}


def ensemble_meta(metas: Sequence[dict]) -> dict[str, Any]:
    """A checkpoint-style ``meta`` for the ensemble (the keywords of ``core.model_file.build_meta``)."""
    first = metas[0]
    names = [str(m["model_name"]) for m in metas]
    model_name = (
        f"ensemble_{len(names)}x{names[0]}" if len(set(names)) == 1 else "ensemble_" + "+".join(names)
    )
    return {
        **first,
        "model_name": model_name,
        "size_multiple": math.lcm(*(int(m["size_multiple"]) for m in metas)),
        "postprocess": ensemble_postprocess(metas),
        # Each fold's config differs (the fold index), so no single config fingerprint describes the ensemble.
        "config_fingerprint": None,
        "dataset_fingerprint": _shared(metas, "dataset_fingerprint"),
        "dataset_name": _shared(metas, "dataset_name"),
        # Each member's calibration was fitted on its own validation fold and does not hold for the averaged
        # probabilities: the ensemble is uncalibrated (identity) until it is fitted as a whole.
        "calibration": None,
        "model_card": _ensemble_card(first.get("model_card"), len(metas)),
    }


def _ensemble_card(card: dict | None, n_members: int) -> dict | None:
    """The first member's card (same training data, channels, spacing and input reference) without its
    validation and test figures, which describe that member only."""
    if not isinstance(card, dict):
        return None
    return {
        **card,
        "validation": None,
        "test": None,
        "active_separable": False,
        "note": f"ensemble of {n_members} folds: no validated figures of its own (score it with tpnet-eval)",
    }


def _shared(metas: Sequence[dict], key: str) -> Any:
    values = {m.get(key) for m in metas}
    return values.pop() if len(values) == 1 else None


def ensemble_run_name(info: dict) -> str:
    return f"ensemble-{info['n_members']}folds-{info['id']}"


def ensemble_tags(info: dict) -> dict[str, str]:
    """MLflow tags of the run that records an ensemble: its id and the members' training runs."""
    run_ids = [str(m["mlflow_run_id"] or "none") for m in info["members"]]
    tags = {
        "tpnet.ensemble.id": info["id"],
        "tpnet.ensemble.n_members": str(info["n_members"]),
        "tpnet.ensemble.member_run_ids": ",".join(run_ids),
    }
    for index, (member, run_id) in enumerate(zip(info["members"], run_ids, strict=True)):
        tags[f"tpnet.ensemble.member.{index}"] = f"{run_id} fold={member['fold']} {member['checkpoint']}"
    return tags


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
