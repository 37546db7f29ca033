"""DDP helpers: the same script runs alone or under ``torchrun`` (NCCL on GPU, gloo on CPU)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_type: str, timeout_s: float = 300.0) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    # A finite timeout turns a dead peer into an error instead of a hang.
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend,
        timeout=timeout,
        store=_attempt_store(timeout),
        rank=int(os.environ["RANK"]),
        world_size=world_size,
    )
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def _attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """Under ``torchrun --max-restarts``, workers share the rendezvous TCPStore across restarts and a restarted
    rank can read a dead peer's address left by the previous attempt ("Gloo connectFullMesh failed ... Connection
    refused", pytorch/pytorch#135712). Give each attempt its own key space. None = torch's default env:// store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"tpnet/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(items: list[Any], info: DistInfo) -> list[Any]:
    """Concatenate per-rank lists on every rank (validation records)."""
    if not info.enabled:
        return items
    out: list[list[Any]] = [None] * info.world_size  # type: ignore[list-item]
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def mean_across_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def any_across_ranks(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on one (e.g. a non-finite loss: all ranks must skip together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class EpochSampler(Sampler):
    """Distributed sampler with a fixed epoch length: each epoch draws ``samples_per_epoch`` indices from a
    permutation seeded by (seed, epoch) (repeated when longer than the dataset) and gives rank r every
    ``world_size``-th one. Depends only on (seed, epoch), so a resumed run replays the same epochs.
    ``weights`` (per index, summing to 1; multi-source runs): indices drawn with replacement by weight instead."""

    def __init__(
        self,
        n: int,
        samples_per_epoch: int | None,
        seed: int,
        info: DistInfo = DistInfo(),
        weights: np.ndarray | None = None,
    ) -> None:
        self.n = n
        self.weights = weights
        self.total = samples_per_epoch or n
        self.total -= self.total % info.world_size  # equal shards, no rank waits on another
        self.seed = seed
        self.info = info
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        if self.weights is not None:
            order = rng.choice(self.n, size=self.total, p=self.weights)
            return iter(order[self.info.rank :: self.info.world_size].tolist())
        reps = -(-self.total // self.n)
        order = np.concatenate([rng.permutation(self.n) for _ in range(reps)])[: self.total]
        return iter(order[self.info.rank :: self.info.world_size].tolist())

    def __len__(self) -> int:
        return self.total // self.info.world_size
