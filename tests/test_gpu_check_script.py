"""scripts/gpu_check.sh is ready for a GPU this machine does not have: its dry run lists every step, and each
benchmark step's arguments parse and compose into tpnet-train's config (experiment=gpu_full, augment=gpu), so a
lent GPU's few minutes are not lost to a typo."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _dry_run(tmp_path: Path) -> dict[str, list[str]]:
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    steps = {}
    for line in done.stdout.splitlines():
        if line.startswith("STEP "):
            name, command = line[len("STEP ") :].split(": ", 1)
            steps[name] = shlex.split(command)
    return steps


def test_gpu_check_lists_the_issue_15_figures_and_its_benchmark_steps_compose(tmp_path):
    steps = _dry_run(tmp_path)
    assert {"augment_gpu_no_sync", "bench_train_cpu_augment", "bench_train_gpu_augment", "bench_infer"} <= set(steps)
    assert steps["augment_gpu_no_sync"][-1] == "scripts/gpu_augment_check.py"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for name in ("bench_train_cpu_augment", "bench_train_gpu_augment", "bench_infer"):
        command = steps[name]
        assert command[:2] == ["bench", name]
        args = benchmark.build_parser().parse_args(["--device", "cuda", "--workdir", str(tmp_path), *command[2:]])
        assert set(args.sections.split(",")) <= set(benchmark.SECTIONS)
        if args.device == "cuda" and not torch.cuda.is_available():
            args.device = "cpu"  # compose the same config here; make_settings refuses cuda without a GPU
        settings = benchmark.make_settings(args, tmp_path)
        cfg = benchmark.train_config(settings)
        if "train" in args.sections:
            assert args.batch_size == 32 and cfg.model.base_width == 32 and cfg.model.depth == 5  # gpu_full
            assert cfg.augment._target_.endswith("build_gpu_augment") == (name == "bench_train_gpu_augment")
