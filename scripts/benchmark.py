"""Throughput of every stage of tpnet, one JSON line per figure on stdout, a readable table on stderr.

    python scripts/benchmark.py                   # full run, CPU (docs/benchmarks.md has the results)
    python scripts/benchmark.py --quick           # small sizes, < 1 min: a smoke test, not a measurement
    python scripts/benchmark.py --device cuda --amp --channels-last   # same figures on a GPU, + the GPU ladder

Sections (``--sections``, default all that apply):
  synth   synthetic generation: ``generate_frame`` loop, and ``write_synthetic_dataset`` with disk writes
  loader  the training data pipeline alone (decode, resample, augment, collate) through the real DataLoader
  train   training steps fed by the real loader / the same steps on batches already in memory (efficiency)
  scale   1x / 4x / 16x tpnet-train's default dataset: loader-fed training samples/s, host memory of the
          process and its workers, the preprocessed cache's build time per frame
  infer   eager vs TorchScript forward, end-to-end ``tpnet-infer`` on a folder, peak RSS for 10 vs N frames
  sweep   ``tpnet-infer`` on one synthetic sweep (NIfTI, .nii.gz) of 40 and of 400 slices: peak RSS of each (issue
          #17's goal: the long sweep within 10 % of the short one) and slices/s
  onnx    onnxruntime vs TorchScript forward of the same network (exported with ``tpnet-export format=onnx``'s
          code, CPU, fp32), and end-to-end ``tpnet-infer`` on the ``.onnx`` file (a process without torch)
  gpu     (cuda only) fp32 vs bf16 AMP vs + channels_last vs + torch.compile, with peak GPU memory
  decode  scanner-screenshot colour decoding (issue #11): synthetic screenshots (jet, turbo x dual, overlay,
          JPEG quality 90) decoded by ``read_screenshot``, error vs the true kPa and % of SWE pixels recovered

Every figure is the median of ``--repeats`` timed blocks after warm-up; each line carries the batch size,
the frame size and the settings it was measured with. stdout holds only JSON lines (the first one,
``"figure": "machine"``, describes the machine), so ``| jq`` or ``json.loads`` per line just works.
Model, loss, optimiser, schedule, augmentation and data settings are tpnet-train's own, composed by Hydra from
the shipped configs, and the training figures run the real ``train_one_epoch``: the benchmark needs the
training extra (``pip install "tpnet[train]"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpnet.inference.memory import MMAP_THRESHOLD_BYTES, bound_cpu_memory

SECTIONS = ("synth", "loader", "train", "scale", "infer", "sweep", "onnx", "gpu", "decode")
RSS_REPEATS = 2  # tpnet-infer runs per frame count for the peak-RSS figures
IN_CHANNELS, NUM_CLASSES = 3, 4  # encoding (bmode, elasto, elasto_valid) and the default classes


# ----------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """What every section reads; ``--quick`` shrinks sizes and counts, never the code path."""

    device: torch.device
    size: int
    batch_size: int
    threads: int
    amp: bool
    channels_last: bool
    compile: bool
    repeats: int
    synth_frames: int
    dataset_subjects: int
    dataset_frames_per_subject: int
    loader_batches: int
    train_steps: int
    infer_batches: int
    infer_frames: int
    # tpnet-infer frame counts of the scaling figures (--long adds 10,000)
    infer_scaling_frames: tuple[int, ...]
    decode_frames: int
    train_workers: tuple[int, ...]
    workdir: Path
    # The onnx section's network: the default one, or with --quick a depth-1 U-Net (the dynamo export of the
    # default takes ~15 s here, of a depth-1 one ~5 s).
    onnx_model_overrides: tuple[str, ...] = ()
    quick: bool = False
    frame_size: int = 0  # --frame-size: the synthetic datasets' frames (0 = size: frame = patch)
    overrides: tuple[
        str, ...
    ] = ()  # --override: Hydra overrides of tpnet-train's config (loader/train/scale)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.amp else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def common(self) -> dict[str, Any]:
        return {
            "height": self.size,
            "width": self.size,
            "batch_size": self.batch_size,
            "device": self.device.type,
            "amp": "bf16" if self.amp else "fp32",
            "channels_last": self.channels_last,
            "compile": self.compile,
            **({"frame_size": self.frame_size} if self.frame_size else {}),
            **({"overrides": list(self.overrides)} if self.overrides else {}),
        }


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------- reporting
class Report:
    """Prints each figure as one JSON line the moment it is measured; keeps them for the final table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def emit(self, figure: str, value: float, unit: str, **fields: Any) -> None:
        row = {"figure": figure, "value": round(float(value), 4), "unit": unit, **fields}
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def table(self) -> str:
        skip = {"figure", "value", "unit", "cpu_model", "python", "platform"}
        lines = [f"{'figure':<34} {'value':>12}  {'unit':<14} settings", "-" * 100]
        for row in self.rows:
            details = " ".join(f"{k}={v}" for k, v in row.items() if k not in skip)
            lines.append(f"{row['figure']:<34} {row['value']:>12.4g}  {row['unit']:<14} {details}")
        return "\n".join(lines)


def machine_info(settings: Settings) -> dict[str, Any]:
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": _onnxruntime_version(),
        "torch_threads": settings.threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if settings.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(settings.device)
        info["cuda"] = torch.version.cuda
    return info


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


# ----------------------------------------------------------------------------------------------- timing
def median_rate(run_block: Callable[[], int], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Items/s of ``run_block`` (which returns how many items it processed): median over ``repeats``."""
    for _ in range(warmup):
        run_block()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = run_block()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), rates


def spread(rates: list[float]) -> dict[str, float]:
    return {"min": round(min(rates), 4), "max": round(max(rates), 4), "repeats": len(rates)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- model parts
def train_config(
    settings: Settings, compile_model: bool | None = None, extra_overrides: tuple[str, ...] = ()
) -> Any:
    """``tpnet-train``'s own config, composed by Hydra from the shipped configs: the model, loss, optimiser,
    schedule, augmentation and data settings measured are the defaults a training run uses."""
    from hydra import compose, initialize_config_dir

    from tpnet.configuration import config_dir

    compile_model = settings.compile if compile_model is None else compile_model
    overrides = [
        f"trainer.device={settings.device.type}",
        f"trainer.precision={'bf16' if settings.amp else 'fp32'}",
        f"trainer.channels_last={settings.channels_last}",
        f"trainer.compile={compile_model}",
        "trainer.max_epochs=1",
        f"data.patch_size=[{settings.size},{settings.size}]",
        f"data.batch_size={settings.batch_size}",
        # --override (e.g. experiment=gpu_full, augment=gpu); a section's own choice of a group wins
        *(o for o in settings.overrides if o.split("=")[0] not in {e.split("=")[0] for e in extra_overrides}),
        *extra_overrides,
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="benchmark"):
        from tpnet.planning.apply import fill_unplanned

        return fill_unplanned(compose("train", overrides=overrides))


def build_model(settings: Settings, overrides: tuple[str, ...] = ()) -> torch.nn.Module:
    """The default ``model`` of tpnet-train (unet: base width 16, depth 4) as it is deployed: without deep
    supervision's extra heads, which exist in training only (tpnet.models.from_checkpoint drops them).
    ``overrides`` (Hydra, e.g. ``model.depth=1``) change it."""
    from omegaconf import open_dict

    from tpnet.models import build_model as build

    torch.manual_seed(0)  # the same (untrained) weights every run: post-processing cost depends on them
    model_cfg = train_config(settings, extra_overrides=overrides).model
    with open_dict(model_cfg):
        model_cfg.deep_supervision = False
    return build(model_cfg, IN_CHANNELS, NUM_CLASSES)


@dataclass
class Trainer:
    """The real training step: ``tpnet.training.train.train_one_epoch`` over a ``TrainState`` built by
    ``build_train_state`` (Hydra ``instantiate`` of the model, loss, optimiser and schedule groups)."""

    state: Any  # tpnet.training.train.TrainState
    wait_s: float = 0.0

    @classmethod
    def build(cls, settings: Settings, compile_model: bool | None = None, data: Any = None) -> Trainer:
        """``data``: the loader's ``setup_data`` result, whose classes and channels the network must match (the
        synthetic datasets label nerves too: a 4-class network trained on them fails its first loss); without
        it, the benchmark's own random batches' (``IN_CHANNELS``, ``NUM_CLASSES``)."""
        from tpnet.training.train import build_train_state

        cfg = train_config(settings, compile_model)
        in_channels, num_classes = (
            (data.encoding.in_channels, len(data.spec.classes)) if data else (IN_CHANNELS, NUM_CLASSES)
        )
        torch.manual_seed(0)
        # A schedule long enough never to end inside the benchmark (its lr does not change the speed).
        state = build_train_state(
            cfg, in_channels, num_classes, batches_per_epoch=10**9, device=settings.device
        )
        if cfg.trainer.compile:
            state.forward = torch.compile(state.model)  # as tpnet-train wraps it (single process: no DDP)
        from hydra.utils import instantiate

        from tpnet.data.datamodule import encoding_from_config
        from tpnet.training.train import on_device_augment

        # augment=gpu: the step augments each batch on the device, as tpnet-train wires it.
        state.on_device_augment = on_device_augment(
            instantiate(cfg.augment), encoding_from_config(cfg.data), cfg.data.patch_size
        )
        return cls(state)

    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    @property
    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.state.forward

    def train_on(self, make_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> int:
        """One ``train_one_epoch`` over ``make_batches()``; returns the number of samples. ``wait_s`` keeps the
        time it spent waiting for batches (a loader that keeps up makes it ~0)."""
        from tpnet.training.train import train_one_epoch

        stats = train_one_epoch(self.state, make_batches(), epoch=0, max_epochs=1)
        self.wait_s = stats.data_wait_s
        return stats.n_images


def random_batch(settings: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shape = (settings.batch_size, IN_CHANNELS, settings.size, settings.size)
    images = torch.rand(shape, generator=gen).to(settings.device)
    masks = torch.randint(0, NUM_CLASSES, (shape[0], *shape[2:]), generator=gen).to(settings.device)
    return images, masks


# ----------------------------------------------------------------------------------------------- synth
def bench_synth(settings: Settings, report: Report) -> Path:
    """Frame generation alone, then a whole dataset with PNG/TIFF writes; returns that dataset's root."""
    from tpnet.data.synth import generate_frame, write_synthetic_dataset

    size, n = settings.size, settings.synth_frames
    counter = iter(range(10**9))  # fresh frame indices: no block re-uses an earlier frame

    def generate() -> int:
        for _ in range(n):
            generate_frame(0, 0, next(counter), size, size)
        return n

    rate, rates = median_rate(generate, settings.repeats)
    report.emit("synth_frames_per_s", rate, "frames/s", height=size, width=size, frames=n, **spread(rates))

    subjects, per_subject = settings.dataset_subjects, settings.dataset_frames_per_subject
    root = settings.workdir / "dataset"
    rates = []
    for seed in range(settings.repeats):
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        frame = settings.frame_size or size
        write_synthetic_dataset(root, subjects, per_subject, seed, frame, frame, workers=1)
        rates.append(subjects * per_subject / (time.perf_counter() - start))
    report.emit(
        "synth_write_frames_per_s", statistics.median(rates), "frames/s", height=settings.frame_size or size,
        width=settings.frame_size or size,
        frames=subjects * per_subject, workers=1, **spread(rates),
    )  # fmt: skip
    return root


# ----------------------------------------------------------------------------------------------- loader
@dataclass
class LoaderParts:
    setup: Any
    data_cfg: Any
    transform: Any


def loader_parts(settings: Settings, dataset_root: Path, augment: str | None = None) -> LoaderParts:
    """tpnet-train's data settings and augmentation (``instantiate(cfg.augment)``; ``augment`` picks another
    config of the group) over ``dataset_root``; the preprocessed cache goes to the scratch folder."""
    from hydra.utils import instantiate

    from tpnet.data.datamodule import setup_data

    cfg = train_config(settings, extra_overrides=(f"augment={augment}",) if augment else ())
    data_cfg = cfg.data
    data_cfg.root = str(dataset_root)
    data_cfg.cache.dir = str(settings.workdir / "preprocessed")
    setup = setup_data(data_cfg, seed=0, check=False)
    return LoaderParts(setup, data_cfg, instantiate(cfg.augment))


def make_train_loader(
    parts: LoaderParts, settings: Settings, workers: int, batches: int, cache: bool = True
) -> Callable[[], Any]:
    """The training DataLoader exactly as ``tpnet-train`` builds it (datamodule.train_loader); ``cache=False``
    reads and resamples the files per item (``data.cache.enabled=false``). The first call builds the cache."""
    from tpnet.data.datamodule import train_loader
    from tpnet.training.distributed import EpochSampler

    parts.data_cfg.num_workers = workers
    parts.data_cfg.cache.enabled = cache
    sampler = EpochSampler(len(parts.setup.splits["train"]), batches * settings.batch_size, seed=0)
    loader = train_loader(parts.setup, parts.data_cfg, parts.transform, sampler, 0, settings.device)
    epoch = iter(range(10**9))

    def new_epoch():
        loader.sampler.set_epoch(next(epoch))
        return loader

    return new_epoch


def batch_size_of(batch: Any) -> int:
    """Samples in a loader batch: (images, masks), or augment=gpu's dict of raw crops."""
    return int(batch["bmode"].shape[0] if isinstance(batch, dict) else batch[0].shape[0])


def count_samples(make_batches: Callable[[], Iterable[Any]]) -> int:
    return sum(batch_size_of(batch) for batch in make_batches())


LOADER_AUGMENTS = ("default", "ultrasound")  # augment/default.yaml, and train.yaml's default (+ usaugment)


def bench_loader(settings: Settings, report: Report, dataset_root: Path) -> None:
    """Samples/s of the training loader reading the preprocessed cache vs the files (decode + resample per
    item), per worker count and augmentation; blocks alternate cache / files so load changes hit both.
    ``loader_cache_speedup``: median of the per-block ratios."""
    for augment in LOADER_AUGMENTS:
        parts = loader_parts(settings, dataset_root, augment)
        for workers in (0, 1, 2):
            epochs = {
                cache: make_train_loader(parts, settings, workers, settings.loader_batches, cache)
                for cache in (False, True)
            }
            for make_batches in epochs.values():  # warm-up: workers started, caches (and the page cache) warm
                count_samples(make_batches)
            rates: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(settings.repeats):
                for cache in (False, True):
                    rates[cache].append(median_rate(partial(count_samples, epochs[cache]), 1, warmup=0)[0])
            fields = {**settings.common(), "num_workers": workers, "augment": augment}
            for cache in (False, True):
                report.emit(
                    "loader_samples_per_s", statistics.median(rates[cache]), "samples/s", **fields,
                    cache=cache, **spread(rates[cache]),
                )  # fmt: skip
            ratios = [c / f for c, f in zip(rates[True], rates[False], strict=True)]
            goal = {"goal": 4.0} if augment == "default" and workers else {}
            report.emit(
                "loader_cache_speedup", statistics.median(ratios), "ratio", **fields, **goal, **spread(ratios)
            )  # fmt: skip
            del epochs  # stop this worker count's processes before the next starts


# ----------------------------------------------------------------------------------------------- train
def bench_train(settings: Settings, report: Report, parts: LoaderParts) -> None:
    """Loader-fed epochs vs the same steps on batches already in memory, alternating block by block so a
    change of machine load (other users, frequency scaling) hits both alike; efficiency = median of the
    per-block ratios. Each fed block is a whole epoch of ``train_steps`` steps, its start-up included (the
    first batch is built while the network waits). The workers are idle during the in-memory blocks, so
    the CPU time they take shows up in the fed blocks only (alternating single steps would hide it: the
    workers would refill their prefetch queue during the in-memory steps too)."""
    cores = usable_cores()
    for workers in settings.train_workers:
        # The loader's worker processes need CPU time too: leave them the cores they use.
        threads = max(1, min(settings.threads, cores - workers))
        torch.set_num_threads(threads)
        trainer = Trainer.build(settings, data=parts.setup)
        epoch = make_train_loader(parts, settings, workers, settings.train_steps)
        # Warm-up epoch: starts the workers, and its batches become the in-memory data (same content).
        in_memory = []

        def recording(epoch=epoch, in_memory=in_memory):
            for batch in epoch():
                in_memory.append(_on_device(batch, settings.device))
                yield batch

        trainer.train_on(recording)

        fed, memory = partial(trainer.train_on, epoch), partial(trainer.train_on, in_memory.__iter__)
        fed_rates, memory_rates, wait_fractions = [], [], []
        for _ in range(settings.repeats):
            memory_rates.append(median_rate(memory, 1, warmup=0)[0])
            fed_rates.append(median_rate(fed, 1, warmup=0)[0])
            wait_fractions.append(trainer.wait_s * fed_rates[-1] / (len(in_memory) * settings.batch_size))
        ratios = [f / m for f, m in zip(fed_rates, memory_rates, strict=True)]
        fields = {
            **settings.common(),
            "num_workers": workers,
            "torch_threads": threads,
            "steps": len(in_memory),
        }
        report.emit("train_memory_samples_per_s", statistics.median(memory_rates), "samples/s",
                    **fields, **spread(memory_rates))  # fmt: skip
        report.emit("train_loader_samples_per_s", statistics.median(fed_rates), "samples/s",
                    **fields, **spread(fed_rates))  # fmt: skip
        report.emit("train_efficiency", statistics.median(ratios), "ratio", **fields, goal=0.95,
                    data_wait_fraction=round(statistics.median(wait_fractions), 4), **spread(ratios))  # fmt: skip
    torch.set_num_threads(settings.threads)


def _on_device(batch: Any, device: torch.device) -> Any:
    """A loader batch moved to the device once (augment=gpu's seeds stay on the host, as the step keeps them)."""
    if isinstance(batch, dict):
        return {k: v if k == "seed" else v.to(device) for k, v in batch.items()}
    return tuple(t.to(device) for t in batch)


# ----------------------------------------------------------------------------------------------- scale
SCALE_FACTORS = (1, 4, 16)  # x tpnet-train's default synthetic dataset (data/synthetic.yaml: 24 x 8 frames)

# One dataset size in a fresh process: cache build, then loader-fed training steps, then the memory of this
# process and of its DataLoader workers. RssAnon is private memory (what must not grow with the dataset);
# RssFile counts the cache's memory-mapped pages (shared, reclaimable page cache).
_SCALE_CHILD = r"""
import json, re, statistics, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import benchmark as b
args = json.loads(sys.argv[2])
settings = b.make_settings(b.build_parser().parse_args(args["argv"]), Path(args["workdir"]))
root = Path(args["root"])
parts = b.loader_parts(settings, root)
parts.data_cfg.cache.dir = args["cache_dir"]
from tpnet.data.datamodule import preprocessed_frames
start = time.perf_counter()
frames = preprocessed_frames(parts.setup, parts.data_cfg)
build_s = time.perf_counter() - start
trainer = b.Trainer.build(settings, data=parts.setup)
epoch = b.make_train_loader(parts, settings, args["workers"], settings.train_steps)
trainer.train_on(epoch)  # warm-up: starts the workers
rates = b.median_rate(lambda: trainer.train_on(epoch), args["repeats"], warmup=0)[1]

def status(pid):
    text = open(f"/proc/{pid}/status").read()
    return {k: int(re.search(k + r":\s+(\d+) kB", text).group(1)) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}

import os
children = [int(c) for t in os.listdir("/proc/self/task") for c in open(f"/proc/self/task/{t}/children").read().split()]
workers = [status(pid) for pid in children]
print("SCALE " + json.dumps({
    "frames": len(frames), "build_s": build_s, "cache_mb": frames.size_bytes / 2**20, "rates": rates,
    "main": status("self"), "workers_rss_anon_mb": sum(w["RssAnon"] for w in workers),
    "workers_rss_file_mb": sum(w["RssFile"] for w in workers), "workers_peak_mb": sum(w["VmHWM"] for w in workers),
    "n_workers": len(workers),
}))
"""


def replicated_dataset(base: Path, factor: int, out: Path) -> Path:
    """``factor`` copies of every frame of ``base`` as new subjects (files hard-linked, not copied): a dataset
    ``factor`` times as large whose frames cost the same to read."""
    import csv

    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["cp", "-al", str(base), str(out)], check=True)
    with (base / "manifest.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields, records = reader.fieldnames, list(reader)
    (out / "manifest.csv").unlink()  # a hard link to base's manifest: replace it, do not write through it
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for copy in range(factor):
            for record in records:
                writer.writerow({**record, "sample_id": f"{record['sample_id']}_c{copy}",
                                 "subject_id": f"{record['subject_id']}_c{copy}"})  # fmt: skip
    return out


def bench_scale(settings: Settings, report: Report, argv: list[str]) -> None:
    """Training samples/s (loader-fed, the cache on) and host memory for 1x / 4x / 16x tpnet-train's default
    dataset, and the cache's build time per frame; one fresh process per size."""
    from tpnet.data.synth import write_synthetic_dataset

    subjects, per_subject = (4, 2) if settings.quick else (24, 8)
    base = write_synthetic_dataset(
        settings.workdir / "scale-1x", subjects, per_subject, 0, settings.frame_size or settings.size,
        settings.frame_size or settings.size, workers=usable_cores()
    )  # fmt: skip
    workers = max(settings.train_workers)
    for factor in SCALE_FACTORS[:1] if settings.quick else SCALE_FACTORS:  # quick: 1x only (a smoke test)
        root = (
            base if factor == 1 else replicated_dataset(base, factor, settings.workdir / f"scale-{factor}x")
        )
        child_args = {
            "argv": argv, "workdir": str(settings.workdir), "root": str(root), "workers": workers,
            "cache_dir": str(settings.workdir / f"preprocessed-scale-{factor}x"), "repeats": min(settings.repeats, 2),
        }  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", _SCALE_CHILD, str(Path(__file__).parent), json.dumps(child_args)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        line = next((x for x in proc.stdout.splitlines() if x.startswith("SCALE ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"scale {factor}x failed:\n{proc.stderr[-3000:]}")
        r = json.loads(line[len("SCALE ") :])
        fields = {**settings.common(), "dataset_x": factor, "frames": r["frames"], "num_workers": workers}
        report.emit("scale_train_samples_per_s", statistics.median(r["rates"]), "samples/s", **fields,
                    **spread(r["rates"]))  # fmt: skip
        report.emit("scale_cache_build_ms_per_frame", 1000 * r["build_s"] / r["frames"], "ms/frame", **fields,
                    cache_mb=round(r["cache_mb"], 1), build_processes=usable_cores())  # fmt: skip
        report.emit("scale_main_peak_rss_mb", r["main"]["VmHWM"], "MiB", **fields,
                    main_rss_anon_mb=round(r["main"]["RssAnon"], 1), main_rss_file_mb=round(r["main"]["RssFile"], 1))  # fmt: skip
        report.emit("scale_workers_rss_anon_mb", r["workers_rss_anon_mb"], "MiB", **fields,
                    workers_rss_file_mb=round(r["workers_rss_file_mb"], 1),
                    workers_peak_mb=round(r["workers_peak_mb"], 1))  # fmt: skip


# ----------------------------------------------------------------------------------------------- infer
# Peak RSS: VmHWM of this process's own address space. (ru_maxrss would be wrong here: Linux carries the
# parent's high-water mark across fork + exec, so the child would report the benchmark's own size.)
_INFER_CHILD = r"""
import json, re, resource, sys, time
from tpnet.inference.cli import main
start = time.perf_counter()
rc = main(sys.argv[1:])
wall_s = time.perf_counter() - start
try:
    with open("/proc/self/status") as fh:
        peak_kb = int(re.search(r"VmHWM:\s+(\d+) kB", fh.read()).group(1))
except (OSError, AttributeError):  # not Linux: the best the standard library offers
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch_imported = "torch" in sys.modules
print("BENCHMARK " + json.dumps({"rc": rc, "wall_s": wall_s, "peak_rss_kb": peak_kb, "torch_imported": torch_imported}))
"""


def forward_rate(forward: Callable, images: torch.Tensor, settings: Settings, warmup: int = 2) -> tuple:
    amp_dtype = settings.amp_dtype

    def block() -> int:
        ctx = torch.autocast(settings.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        with torch.inference_mode(), ctx:
            for _ in range(settings.infer_batches):
                forward(images)
        sync(settings.device)
        return settings.infer_batches * images.shape[0]

    return median_rate(block, settings.repeats, warmup=warmup)


def paired_ratio(
    fast: Callable, base: Callable, images: torch.Tensor, settings: Settings, pairs: int = 5
) -> list:
    """Rate of ``fast`` / rate of ``base``, timed in alternating blocks (one ratio per pair), so that load
    changes on a shared machine hit both sides alike; fp32, no autocast (as tpnet-infer runs)."""

    def rate(forward: Callable) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(settings.infer_batches):
                forward(images)
        sync(settings.device)
        return settings.infer_batches * images.shape[0] / (time.perf_counter() - start)

    rate(fast), rate(base)  # warm-up (TorchScript's profiling runs)
    return [rate(fast) / rate(base) for _ in range(pairs)]


def write_frames(folder: Path, count: int, size: int) -> None:
    """``<stem>_bmode.png`` (+ ``<stem>_elasto.tif`` when the frame has SWE): tpnet-infer's folder input."""
    from tpnet.core.io import write_png, write_tiff
    from tpnet.data.synth import generate_frame

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        frame = generate_frame(1, i // 8, i % 8, size, size)
        write_png(folder / f"f{i:04d}_bmode.png", frame["bmode"])
        if frame["elasto"] is not None:
            write_tiff(folder / f"f{i:04d}_elasto.tif", frame["elasto"])


def run_infer_cli(
    model_file: Path,
    frames: Path,
    output: Path,
    settings: Settings,
    spacing_mm: float,
    batch_size: int,
    extra: tuple[str, ...] = (),
) -> dict:
    """``tpnet-infer`` in a fresh process (its own peak RSS); returns its summary.json plus the process figures.
    ``extra``: further tpnet-infer arguments (e.g. ``--no-overlays``)."""
    args = [
        "--model", str(model_file), "--input", str(frames), "--output", str(output),
        "--device", settings.device.type, "--batch-size", str(batch_size),
        "--spacing-mm", str(spacing_mm), "--overwrite", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _INFER_CHILD, *args], capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCHMARK ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"tpnet-infer on {frames} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(lines[-1].removeprefix("BENCHMARK "))
    if figures["rc"] != 0:
        raise RuntimeError(f"tpnet-infer on {frames} exited {figures['rc']}:\n{done.stdout[-3000:]}")
    summary = json.loads((output / "summary.json").read_text())
    return {**figures, "summary": summary}


SPACING_MM = 0.1  # the benchmark model's pixel size; frames are written at it (--spacing-mm)


def deployed_meta(model: torch.nn.Module) -> dict:
    """tpnet_meta.json for the benchmark network, as tpnet-export writes it for the default classes."""
    from tpnet.core.model_file import build_meta

    return build_meta(
        model_name="UNet", classes=("background", "active_trp", "latent_trp", "vessel"),
        encoding={"channels": ["bmode", "elasto", "elasto_valid"], "kpa_scale": 100.0, "kpa_clip": 300.0},
        spacing_mm=SPACING_MM, size_multiple=int(model.size_multiple),
        postprocess={"threshold": 0.5, "min_area_mm2": 2.0, "match_mm": 5.0}, export_method="script",
    )  # fmt: skip


def benchmark_frames(settings: Settings) -> Path:
    """``infer_frames`` synthetic frames of the benchmark size, written once per run (infer and onnx share them)."""
    folder = settings.workdir / "frames_many"
    if not folder.is_dir():
        write_frames(folder, settings.infer_frames, settings.size)
    return folder


def bench_infer(settings: Settings, report: Report) -> None:
    from tpnet.export.parity import export_model

    torch.set_num_threads(settings.threads)
    model = build_model(settings).to(settings.device).eval()
    images = random_batch(settings)[0]
    common = settings.common()

    eager = model.to(memory_format=settings.memory_format)
    eager_fn = torch.compile(eager) if settings.compile else eager
    rate, rates = forward_rate(eager_fn, images.contiguous(memory_format=settings.memory_format), settings)
    report.emit("infer_eager_images_per_s", rate, "images/s", **common, **spread(rates))

    # TorchScript runs as tpnet-infer runs it: fp32, default memory format, no torch.compile.
    plain = {**common, "amp": "fp32", "channels_last": False, "compile": False}
    model = model.to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        scripted = torch.jit.script(model)
    script_rate, rates = forward_rate(scripted, images, settings, warmup=3)
    report.emit("infer_torchscript_images_per_s", script_rate, "images/s", **plain, **spread(rates))
    ratios = paired_ratio(scripted, model, images, settings, pairs=max(3, settings.repeats))
    report.emit(
        "infer_torchscript_over_eager",
        statistics.median(ratios),
        "ratio",
        **plain,
        goal=1.0,
        **spread(ratios),
    )

    # Model-only as tpnet-infer runs the network: both test-time passes (the frame and its mirror image, the
    # default), padding included; the end-to-end figures are compared with this, pass for pass.
    from tpnet.core.predict import predict_passes

    passes_fn = partial(predict_passes, scripted, size_multiple=int(model.size_multiple), tta=True)
    model_rate, rates = forward_rate(passes_fn, images, settings, warmup=3)
    report.emit("infer_model_frames_per_s", model_rate, "frames/s", **plain, passes=2, **spread(rates))

    model_file = settings.workdir / "unet.pt"
    export_model(model.cpu(), deployed_meta(model), model_file, fmt="torchscript")

    # Frames at the model's spacing (--spacing-mm), so the network sees exactly the benchmark size.
    many = benchmark_frames(settings)
    few = settings.workdir / "frames_10"
    few.mkdir()
    for path in sorted(many.iterdir()):
        if int(path.name[1:5]) < 10:  # f0000..f0009
            shutil.copy2(path, few / path.name)
    # Throughput: the many-frame folder at the benchmark's batch size (the model-only figures' batch size).
    e2e_run = run_infer_cli(
        model_file, many, settings.workdir / "out_e2e", settings, SPACING_MM, settings.batch_size
    )
    n_many = e2e_run["summary"]["counts"]["frames_processed"]
    e2e = e2e_run["summary"]["timing"]["frames_per_s"]
    e2e_fields = {**plain, "frames": n_many, "torch_threads": settings.threads, "reader_threads": 2}
    n_trp = sum(e2e_run["summary"]["trp_by_class"].values())
    report.emit("infer_e2e_frames_per_s", e2e, "frames/s", **e2e_fields, trigger_points=n_trp,
                process_wall_s=round(e2e_run["wall_s"], 2),
                peak_rss_mb=round(e2e_run["peak_rss_kb"] / 1024, 1))  # fmt: skip
    # Over the model-only rate at the same passes (figures before issue #15 divided by one pass's rate).
    report.emit("infer_e2e_over_model", e2e / model_rate, "ratio", **e2e_fields, goal=0.8, passes=2)
    bench_infer_scaling(settings, report, model_file, model_rate, e2e_fields)

    # Streaming memory: peak RSS of 10 vs N frames at tpnet-infer's default batch size, so that the 10-frame
    # run holds two full batches as a long run does (the first batch of any run starts from a cold heap and
    # caches, so 10 frames at batch 8 would compare one cold batch with hundreds of warm ones). Each run is
    # repeated; the highest peak of the repeats is reported for both.
    from tpnet.inference.cli import build_parser as infer_parser

    rss_batch = infer_parser().get_default("batch_size")
    peaks = {
        name: [
            run_infer_cli(
                model_file, folder, settings.workdir / f"out_rss_{name}", settings, SPACING_MM, rss_batch
            )["peak_rss_kb"]
            / 1024
            for _ in range(RSS_REPEATS)
        ]
        for name, folder in (("10", few), ("many", many))
    }
    rss_fields = {**e2e_fields, "batch_size": rss_batch}
    report.emit("infer_peak_rss_mb", max(peaks["10"]), "MiB", **rss_fields | {"frames": 10},
                runs=[round(p, 1) for p in peaks["10"]])  # fmt: skip
    report.emit("infer_peak_rss_mb", max(peaks["many"]), "MiB", **rss_fields,
                runs=[round(p, 1) for p in peaks["many"]],
                growth_mb_vs_10=round(max(peaks["many"]) - max(peaks["10"]), 1))  # fmt: skip


SWEEP_SLICE_MM = 0.5  # the synthetic sweeps' default slice spacing
SWEEP_LENGTHS = (
    40,
    400,
)  # slices; the long one is the short one's anatomy repeated (the same work per slice)


def write_sweep(folder: Path, slices: int, size: int) -> None:
    """``sweep_bmode.nii.gz`` + ``sweep_elasto.nii.gz``: a synthetic sweep of ``SWEEP_LENGTHS[0]`` slices at the
    benchmark model's pixel size, repeated along the sweep to ``slices``."""
    from tpnet.data.synth_sweeps import _write_nifti, generate_sweep

    base = generate_sweep(
        1, 0, slices=SWEEP_LENGTHS[0], height=size, width=size, spacing_mm=SPACING_MM,
        slice_spacing_mm=SWEEP_SLICE_MM,
    )  # fmt: skip
    repeats = -(-slices // SWEEP_LENGTHS[0])
    folder.mkdir(parents=True, exist_ok=True)
    for role in ("bmode", "elasto"):
        volume = np.concatenate([base[role]] * repeats)[:slices]
        _write_nifti(folder / f"sweep_{role}.nii.gz", volume, SPACING_MM, SWEEP_SLICE_MM)


def bench_sweep(settings: Settings, report: Report) -> None:
    """Issue #17's streaming goal: ``tpnet-infer``'s peak RSS over a 400-slice sweep within 10 % of a 40-slice
    one (each the highest of ``RSS_REPEATS`` runs in a fresh process, at tpnet-infer's default batch size)."""
    from tpnet.export.parity import export_model
    from tpnet.inference.cli import build_parser as infer_parser

    torch.set_num_threads(settings.threads)
    model = build_model(settings).eval()
    model_file = settings.workdir / "unet_sweep.pt"
    export_model(model.cpu(), deployed_meta(model), model_file, fmt="torchscript")
    rss_batch = infer_parser().get_default("batch_size")
    peaks, rates = {}, {}
    for slices in SWEEP_LENGTHS:
        folder = settings.workdir / f"sweep_{slices}"
        write_sweep(folder, slices, settings.size)
        runs = [
            run_infer_cli(
                model_file, folder, settings.workdir / f"out_sweep_{slices}", settings, SPACING_MM, rss_batch
            )
            for _ in range(RSS_REPEATS)
        ]
        peaks[slices] = max(r["peak_rss_kb"] for r in runs) / 1024
        rates[slices] = statistics.median(r["summary"]["timing"]["frames_per_s"] for r in runs)
        fields = {**settings.common(), "amp": "fp32", "channels_last": False, "compile": False,
                  "slices": slices, "batch_size": rss_batch, "format": "nii.gz"}  # fmt: skip
        report.emit("sweep_infer_peak_rss_mb", peaks[slices], "MiB", **fields,
                    runs=[round(r["peak_rss_kb"] / 1024, 1) for r in runs])  # fmt: skip
        report.emit("sweep_infer_slices_per_s", rates[slices], "slices/s", **fields)
    short, long = SWEEP_LENGTHS
    report.emit(
        "sweep_infer_peak_rss_ratio", peaks[long] / peaks[short], "ratio", **settings.common(),
        slices=f"{long} vs {short}", goal=1.10,
    )  # fmt: skip


def scaling_frames(settings: Settings, count: int) -> Path:
    """``count`` frames: the first ``infer_frames`` written once, the rest hard links to them under new names
    (the same work per frame, without gigabytes of input for the 10,000-frame run)."""
    base = benchmark_frames(settings)
    folder = settings.workdir / f"frames_scaling_{count}"
    folder.mkdir()
    sources = sorted(base.glob("*_bmode.png"))
    for i in range(count):
        bmode = sources[i % len(sources)]
        stem = bmode.name.removesuffix("_bmode.png")
        for source in (bmode, base / f"{stem}_elasto.tif"):
            if source.exists():
                os.link(source, folder / source.name.replace(stem, f"s{i:05d}", 1))
    return folder


def bench_infer_scaling(
    settings: Settings, report: Report, model_file: Path, model_rate: float, fields: dict[str, Any]
) -> None:
    """How tpnet-infer's cost grows with work (issue #15): frames/s and peak RSS for each count of
    ``infer_scaling_frames``, with and without overlays, and the host-side milliseconds per frame (end-to-end
    minus model-only time per frame at the same batch size and passes: what binds once the network is fast)."""
    for count in settings.infer_scaling_frames:
        folder = scaling_frames(settings, count)
        # --quick: without overlays only (the e2e figure above has them): one tpnet-infer start-up less.
        for overlays in (False,) if settings.quick else (True, False):
            output = settings.workdir / "out_scaling"
            run = run_infer_cli(
                model_file, folder, output, settings, SPACING_MM, settings.batch_size,
                extra=() if overlays else ("--no-overlays",),
            )  # fmt: skip
            rate = run["summary"]["timing"]["frames_per_s"]
            common = {**fields, "frames": run["summary"]["counts"]["frames_processed"], "overlays": overlays}
            report.emit("infer_e2e_frames_per_s", rate, "frames/s", **common, scaling=True,
                        peak_rss_mb=round(run["peak_rss_kb"] / 1024, 1), process_wall_s=round(run["wall_s"], 2))  # fmt: skip
            report.emit("infer_host_ms_per_frame", 1000 / rate - 1000 / model_rate, "ms/frame", **common,
                        model_frames_per_s=round(model_rate, 2))  # fmt: skip
            shutil.rmtree(output)
        shutil.rmtree(folder)


# ----------------------------------------------------------------------------------------------- onnx
def bench_onnx(settings: Settings, report: Report) -> None:
    """onnxruntime against TorchScript on the same network, weights and images, both as tpnet-infer runs them
    (CPU, fp32, ``threads`` threads each): model-only images/s, the ratio from alternating blocks, then
    end-to-end ``tpnet-infer`` on the exported ``.onnx`` file (its process imports no torch)."""
    from tpnet.core.device import onnxruntime_providers
    from tpnet.core.model_file import read_meta
    from tpnet.core.onnx_model import OnnxNetwork
    from tpnet.export.parity import export_model

    cpu = dataclasses.replace(
        settings, device=torch.device("cpu"), amp=False, channels_last=False, compile=False
    )
    torch.set_num_threads(cpu.threads)
    model = build_model(cpu, settings.onnx_model_overrides).eval()
    onnx_file = settings.workdir / "unet.onnx"
    # Parity-checked as tpnet-export does it: the benchmarked file computes what the eager network does.
    exported = export_model(model, deployed_meta(model), onnx_file, fmt="onnx")
    network = OnnxNetwork(onnx_file.read_bytes(), onnxruntime_providers("cpu"), threads=cpu.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        scripted = torch.jit.script(model)
    images = random_batch(cpu)[0]
    arrays = images.numpy()
    fields = {
        **cpu.common(), "threads": cpu.threads, "size_multiple": int(model.size_multiple),
        "model_overrides": list(settings.onnx_model_overrides), "providers": network.providers,
        "onnx_opset": read_meta(onnx_file)[0]["export"]["onnx_opset"],
        "parity_max_abs_diff": exported["max_abs_diff"],
    }  # fmt: skip
    script_rate, rates = forward_rate(scripted, images, cpu, warmup=3)
    report.emit("infer_onnx_torchscript_images_per_s", script_rate, "images/s", **fields, **spread(rates))

    def onnx_block() -> int:
        for _ in range(cpu.infer_batches):
            network(arrays)
        return cpu.infer_batches * arrays.shape[0]

    onnx_rate, rates = median_rate(onnx_block, cpu.repeats, warmup=2)
    report.emit("infer_onnxruntime_images_per_s", onnx_rate, "images/s", **fields, **spread(rates))
    ratios = paired_ratio(lambda _: network(arrays), scripted, images, cpu, pairs=max(3, cpu.repeats))
    report.emit(
        "infer_onnxruntime_over_torchscript", statistics.median(ratios), "ratio", **fields, **spread(ratios)
    )

    run = run_infer_cli(
        onnx_file, benchmark_frames(cpu), settings.workdir / "out_onnx_e2e", cpu, SPACING_MM, cpu.batch_size
    )
    report.emit("infer_onnx_e2e_frames_per_s", run["summary"]["timing"]["frames_per_s"], "frames/s", **fields,
                frames=run["summary"]["counts"]["frames_processed"], reader_threads=2,
                torch_imported=run["torch_imported"], process_wall_s=round(run["wall_s"], 2),
                peak_rss_mb=round(run["peak_rss_kb"] / 1024, 1))  # fmt: skip


# ----------------------------------------------------------------------------------------------- gpu ladder
GPU_VARIANTS = (
    ("fp32", False, False, False),
    ("bf16", True, False, False),
    ("bf16+channels_last", True, True, False),
    ("bf16+channels_last+compile", True, True, True),
)


def bench_gpu(settings: Settings, report: Report) -> None:
    """Training (in-memory batches) and inference throughput for each precision/layout/compile variant."""
    images, masks = random_batch(settings)
    for name, amp, channels_last, compiled in GPU_VARIANTS:
        variant = Settings(
            **{**settings.__dict__, "amp": amp, "channels_last": channels_last, "compile": compiled}
        )
        fields = {**variant.common(), "variant": name}
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(settings.device)
        trainer = Trainer.build(variant)
        same_batch = partial(itertools.repeat, (images, masks), variant.train_steps)
        # torch.compile compiles on the first calls: two warm-up blocks keep that out of the timing.
        rate, rates = median_rate(
            partial(trainer.train_on, same_batch), variant.repeats, warmup=2 if compiled else 1
        )
        report.emit("gpu_train_samples_per_s", rate, "samples/s", **fields, **spread(rates))
        report.emit("gpu_train_peak_mem_mb", torch.cuda.max_memory_allocated(settings.device) / 2**20, "MiB",
                    **fields)  # fmt: skip

        trainer.model.eval()
        torch.cuda.reset_peak_memory_stats(settings.device)
        x = images.contiguous(memory_format=variant.memory_format)
        rate, rates = forward_rate(trainer.forward, x, variant, warmup=3)
        report.emit("gpu_infer_images_per_s", rate, "images/s", **fields, **spread(rates))
        report.emit("gpu_infer_peak_mem_mb", torch.cuda.max_memory_allocated(settings.device) / 2**20, "MiB",
                    **fields)  # fmt: skip


# ----------------------------------------------------------------------------------------------- decode
DECODE_COLORMAPS = ("jet", "turbo")
DECODE_LAYOUTS = ("dual", "overlay")
DECODE_JPEG_QUALITY = 90  # issue #11 states the goal at this quality


def bench_decode(settings: Settings, report: Report) -> None:
    """Colour-SWE decoding of scanner screenshots against the truth: for each colour map x layout, write
    ``decode_frames`` synthetic screenshots (one frame per subject: anatomy varies, seed 0) at JPEG quality
    90 with ``write_screenshot_dataset``, decode each with ``tpnet.core.scanner_profile.read_screenshot`` and its
    profile.yaml, and pool |decoded - true kPa| over the valid SWE pixels (true kPa not NaN). Prints a table
    to stderr; the goal (median <= 3 % of the bar's range, >= 95 % recovered) goes with each figure."""
    from tpnet.data.synth_screenshots import (
        GOAL_MEDIAN_ABS_ERROR_PCT,
        GOAL_RECOVERED_PCT,
        measure_decode_error,
        write_screenshot_dataset,
    )

    n, size = settings.decode_frames, settings.size
    lines = [
        f"screenshot decode: {n} frames {size}x{size} per case, JPEG quality {DECODE_JPEG_QUALITY}; goal median "
        f"|error| <= {GOAL_MEDIAN_ABS_ERROR_PCT:g} % of the bar's range and >= {GOAL_RECOVERED_PCT:g} % recovered",
        f"{'colormap':<9} {'layout':<8} {'median|err| %':>13} {'p95|err| %':>10} {'bias %':>7} "
        f"{'recovered %':>11} {'false sig. %':>12} {'frames/s':>8}  goal",
    ]
    for colormap, layout in itertools.product(DECODE_COLORMAPS, DECODE_LAYOUTS):
        root = write_screenshot_dataset(
            settings.workdir / f"screenshots-{colormap}-{layout}", n, 1, 0, size, size, colormap, layout,
            jpeg_quality=DECODE_JPEG_QUALITY,
        )  # fmt: skip
        error = measure_decode_error(root)
        fields = {
            "colormap": colormap, "layout": layout, "jpeg_quality": DECODE_JPEG_QUALITY, "frames": error.frames,
            "height": size, "width": size, "valid_px": error.valid_px,
        }  # fmt: skip
        report.emit("decode_median_abs_error_pct", error.median_abs_error_pct, "% of bar range", **fields,
                    goal=GOAL_MEDIAN_ABS_ERROR_PCT, p95_abs_error_pct=round(error.p95_abs_error_pct, 3),
                    bias_pct=round(error.median_error_pct, 3), goal_met=error.meets_goal())  # fmt: skip
        report.emit("decode_recovered_pct", error.recovered_pct, "% of valid px", **fields,
                    goal=GOAL_RECOVERED_PCT, false_signal_pct=round(error.false_signal_pct, 3),
                    goal_met=error.meets_goal())  # fmt: skip
        rate = error.frames / max(error.decode_s, 1e-9)
        report.emit("decode_frames_per_s", rate, "frames/s", **fields)
        lines.append(
            f"{colormap:<9} {layout:<8} {error.median_abs_error_pct:>13.2f} {error.p95_abs_error_pct:>10.2f} "
            f"{error.median_error_pct:>+7.2f} {error.recovered_pct:>11.1f} {error.false_signal_pct:>12.2f} "
            f"{rate:>8.1f}  {'met' if error.meets_goal() else 'MISSED'}"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--quick", action="store_true", help="64x64 frames, few repeats: a smoke test (< 1 min)"
    )
    parser.add_argument("--size", type=int, help="frame/patch height = width (default 256; quick 64)")
    parser.add_argument("--batch-size", type=int, help="default 8 (quick 2)")
    parser.add_argument(
        "--frame-size",
        type=int,
        help="height = width of the synthetic datasets' frames (default: --size; experiment=gpu_full's data: 384)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's own, i.e. OMP_NUM_THREADS or the cores)"
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for training and eager inference")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--repeats", type=int, help="timed blocks per figure (median; default 3, quick 1)")
    parser.add_argument(
        "--train-steps",
        type=int,
        help="train: timed in-memory/loader-fed step pairs (default 6; cuda 20); gpu: steps per timed block",
    )
    parser.add_argument("--infer-frames", type=int, help="frames in the large tpnet-infer run (default 100)")
    parser.add_argument(
        "--long",
        action="store_true",
        help="infer: add the 10,000-frame tpnet-infer scaling runs (with and without overlays; long on a CPU)",
    )
    parser.add_argument(
        "--decode-frames",
        type=int,
        help="decode: synthetic screenshots per colour map and layout (default 24)",
    )
    parser.add_argument(
        "--train-workers", default="1,2", help="DataLoader workers for the train section, comma-separated"
    )
    parser.add_argument(
        "--sections", help=f"comma-separated subset of {','.join(SECTIONS)} (default: all; gpu only on cuda)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override of tpnet-train's config for the loader/train/scale sections (repeatable), "
        "e.g. --override experiment=gpu_full --override augment=gpu",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder, removed after)")
    return parser


def make_settings(args: argparse.Namespace, workdir: Path) -> Settings:
    quick, cuda = args.quick, args.device == "cuda"

    def pick(value: int | None, full: int, small: int) -> int:
        return value if value is not None else (small if quick else full)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda requested but torch sees no CUDA device")
    return Settings(
        device=torch.device(args.device),
        size=pick(args.size, 256, 64),
        batch_size=pick(args.batch_size, 8, 2),
        threads=args.threads or torch.get_num_threads(),
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        repeats=pick(args.repeats, 3, 1),
        synth_frames=pick(None, 12, 3),
        dataset_subjects=pick(None, 8, 4),
        dataset_frames_per_subject=pick(None, 4, 2),
        loader_batches=pick(None, 12, 2),
        # A GPU step takes milliseconds: time longer blocks there so launch jitter averages out.
        train_steps=pick(args.train_steps, 20 if cuda else 4, 1),
        infer_batches=pick(None, 20 if cuda else 2, 1),
        infer_frames=pick(args.infer_frames, 100, 12),
        infer_scaling_frames=(6,) if quick else (100, 1000, *((10_000,) if args.long else ())),
        decode_frames=pick(args.decode_frames, 24, 3),
        train_workers=tuple(int(w) for w in args.train_workers.split(",") if w.strip()),
        workdir=workdir,
        onnx_model_overrides=("model.depth=1",) if quick else (),
        quick=quick,
        frame_size=args.frame_size or 0,
        overrides=tuple(args.override),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before the first tensor: every figure uses tpnet-infer's CPU allocator settings (glibc mmap threshold +
    # huge pages), so model-only and end-to-end inference are measured alike. Recorded in the machine line.
    allocator = "system default"
    if bound_cpu_memory():
        allocator = f"glibc mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, THP_MEM_ALLOC_ENABLE=1"
    sections = (
        args.sections.split(",")
        if args.sections
        else [s for s in SECTIONS if s != "gpu" or args.device == "cuda"]
    )
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"benchmark: unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    if "gpu" in sections and args.device != "cuda":
        raise SystemExit("benchmark: the gpu section needs --device cuda")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tpnet-benchmark-"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = make_settings(args, workdir)
    torch.set_num_threads(settings.threads)
    torch.backends.cudnn.benchmark = True  # as trainer=gpu (deterministic: false): fastest conv kernels
    report = Report()
    report.emit(
        "machine",
        usable_cores(),
        "cores",
        **machine_info(settings),
        cpu_allocator=allocator,
        quick=args.quick,
    )
    started = time.perf_counter()
    try:
        dataset_root = None
        if {"synth", "loader", "train"} & set(sections):
            dataset_root = bench_synth(settings, report) if "synth" in sections else None
            if dataset_root is None:  # loader/train without the synth figures still need a dataset
                from tpnet.data.synth import write_synthetic_dataset

                dataset_root = write_synthetic_dataset(
                    workdir / "dataset", settings.dataset_subjects, settings.dataset_frames_per_subject,
                    0, settings.frame_size or settings.size, settings.frame_size or settings.size,
                )  # fmt: skip
        if {"loader", "train"} & set(sections):
            if "loader" in sections:
                bench_loader(settings, report, dataset_root)
            if "train" in sections:
                bench_train(settings, report, loader_parts(settings, dataset_root))
        if "scale" in sections:
            bench_scale(settings, report, sys.argv[1:] if argv is None else list(argv))
        if "infer" in sections:
            bench_infer(settings, report)
        if "sweep" in sections:
            bench_sweep(settings, report)
        if "onnx" in sections:
            bench_onnx(settings, report)
        if "gpu" in sections:
            bench_gpu(settings, report)
        if "decode" in sections:
            bench_decode(settings, report)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report.emit(
        "benchmark_wall_s", time.perf_counter() - started, "s", load_avg_1min=round(os.getloadavg()[0], 2)
    )
    print("\n" + report.table(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
