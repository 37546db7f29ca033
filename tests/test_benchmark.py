"""Smoke test of scripts/benchmark.py: ``--quick`` runs every CPU section and prints parseable figures.

Timings are not asserted (a shared CI machine makes them meaningless); that every figure is present,
positive and labelled with its settings is.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"

EXPECTED = {
    "machine",
    "synth_frames_per_s",
    "synth_write_frames_per_s",
    "loader_samples_per_s",
    "loader_cache_speedup",
    "train_memory_samples_per_s",
    "train_loader_samples_per_s",
    "train_efficiency",
    "scale_train_samples_per_s",
    "scale_cache_build_ms_per_frame",
    "scale_main_peak_rss_mb",
    "scale_workers_rss_anon_mb",
    "infer_eager_images_per_s",
    "infer_torchscript_images_per_s",
    "infer_torchscript_over_eager",
    "infer_e2e_frames_per_s",
    "infer_e2e_over_model",
    "infer_model_frames_per_s",
    "infer_host_ms_per_frame",
    "infer_peak_rss_mb",
    "infer_onnx_torchscript_images_per_s",
    "infer_onnxruntime_images_per_s",
    "infer_onnxruntime_over_torchscript",
    "infer_onnx_e2e_frames_per_s",
    "benchmark_wall_s",
}


# ~50 s here (idle machine; the onnx section ~11 s of it): eight subprocesses (benchmark, two export parity checks, six tpnet-infer runs) and an ONNX export
@pytest.mark.slow
def test_quick_benchmark_prints_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    rows = [json.loads(line) for line in done.stdout.splitlines()]  # stdout holds JSON lines only
    by_figure: dict[str, list[dict]] = {}
    for row in rows:
        by_figure.setdefault(row["figure"], []).append(row)
    missing = EXPECTED - set(by_figure)
    assert not missing, f"missing figures: {sorted(missing)}"
    for row in rows:
        if row["figure"] == "infer_host_ms_per_frame":  # a difference of two rates: noise can make it < 0
            assert math.isfinite(row["value"]), row
        else:
            assert row["value"] > 0, row
        assert row["unit"], row

    # Settings travel with every figure; the loader runs with 0, 1 and 2 workers, training with 1 and 2.
    for row in by_figure["train_efficiency"] + by_figure["infer_e2e_frames_per_s"]:
        assert row["batch_size"] == 2 and row["height"] == row["width"] == 64
    # The loader: 0, 1 and 2 workers x cache on / off x augment=default / ultrasound, a speed-up per pair.
    loader = {(r["augment"], r["num_workers"], r["cache"]) for r in by_figure["loader_samples_per_s"]}
    assert loader == {(a, w, c) for a in ("default", "ultrasound") for w in (0, 1, 2) for c in (False, True)}
    assert len(by_figure["loader_cache_speedup"]) == 6
    # Scaling: 1x the dataset in --quick (4x and 16x in a full run), in its own process, memory split.
    (scale,) = by_figure["scale_workers_rss_anon_mb"]
    assert scale["dataset_x"] == 1 and scale["frames"] > 0 and scale["workers_rss_file_mb"] >= 0
    assert sorted(r["num_workers"] for r in by_figure["train_efficiency"]) == [1, 2]
    assert sorted(r["frames"] for r in by_figure["infer_peak_rss_mb"]) == [10, 12]
    # Peak RSS: tpnet-infer's default batch size, two runs each, the highest reported.
    for row in by_figure["infer_peak_rss_mb"]:
        assert row["batch_size"] == 4 and len(row["runs"]) == 2
        assert row["value"] == pytest.approx(max(row["runs"]), abs=0.05)
    assert "THP_MEM_ALLOC_ENABLE" in by_figure["machine"][0]["cpu_allocator"]
    assert by_figure["infer_e2e_frames_per_s"][0]["frames"] == 12
    # onnxruntime and TorchScript run the same (quick: depth-1) network at the same size, batch and threads; the
    # end-to-end run on the .onnx file never imports torch.
    onnx_rows = [by_figure[f][0] for f in EXPECTED if f.startswith(("infer_onnx", "infer_onnxruntime"))]
    for row in onnx_rows:
        assert (row["height"], row["batch_size"], row["threads"], row["device"]) == (64, 2, 1, "cpu"), row
        assert row["model_overrides"] == ["model.depth=1"] and row["providers"] == ["CPUExecutionProvider"]
    assert by_figure["infer_onnx_e2e_frames_per_s"][0]["torch_imported"] is False
    assert by_figure["infer_onnx_e2e_frames_per_s"][0]["frames"] == 12
    assert by_figure["machine"][0]["onnxruntime"]
    # The readable table goes to stderr, one line per figure.
    assert "train_efficiency" in done.stderr and "infer_e2e_over_model" in done.stderr
    # A workdir given on the command line is kept (the default temp folder is removed).
    assert (tmp_path / "work" / "unet.pt").is_file() and (tmp_path / "work" / "unet.onnx").is_file()


def test_decode_section_reports_error_and_recovery_per_colormap_and_layout(tmp_path: Path) -> None:
    """``--sections decode``: every colour map x layout gets its error, recovery and speed figures, with the
    goal beside them, and the readable decode table goes to stderr (the goal itself is asserted in
    tests/data/test_synth_screenshots.py)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--sections", "decode", "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    cases = {("jet", "dual"), ("jet", "overlay"), ("turbo", "dual"), ("turbo", "overlay")}
    for figure, goal in (("decode_median_abs_error_pct", 3.0), ("decode_recovered_pct", 95.0)):
        found = [r for r in rows if r["figure"] == figure]
        assert {(r["colormap"], r["layout"]) for r in found} == cases, figure
        for row in found:
            assert row["goal"] == goal and row["jpeg_quality"] == 90 and row["frames"] == 3
            assert row["valid_px"] > 0 and isinstance(row["goal_met"], bool)
            assert 0 <= row["value"] <= 100
    assert len([r for r in rows if r["figure"] == "decode_frames_per_s" and r["value"] > 0]) == 4
    assert "screenshot decode" in done.stderr and "recovered %" in done.stderr
    assert (tmp_path / "work" / "screenshots-turbo-overlay" / "profile.yaml").is_file()


def test_scale_datasets_repeat_every_frame_as_new_subjects_without_copying_files(tmp_path: Path) -> None:
    """The scale section's 4x / 16x datasets (checked here: --quick measures 1x only)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import benchmark
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from foreign import write_foreign_dataset
    from tpnet.core.contract import load_manifest

    base = write_foreign_dataset(tmp_path / "base")
    big = benchmark.replicated_dataset(base, 3, tmp_path / "big")
    rows, big_rows = load_manifest(base), load_manifest(big)
    assert len(big_rows) == 3 * len(rows) and len({r.sample_id for r in big_rows}) == len(big_rows)
    assert len({r.subject_id for r in big_rows}) == 3 * len({r.subject_id for r in rows})
    assert (big / rows[0].bmode).stat().st_ino == (base / rows[0].bmode).stat().st_ino  # hard link, no copy
    assert load_manifest(base) == rows  # the base dataset's manifest is untouched


def test_training_figures_build_the_network_for_the_datasets_classes(tmp_path: Path) -> None:
    """The loader-fed figures train on synthetic datasets that label nerves too: a network built for the
    benchmark's own 4 classes failed its first loss on a crop with a nerve (a device-side assert on a GPU)."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import benchmark
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from tpnet.data.synth import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "data", 2, 1, 0, 64, 64, workers=1)
    args = benchmark.build_parser().parse_args(["--quick", "--workdir", str(tmp_path / "work")])
    settings = benchmark.make_settings(args, tmp_path / "work")
    parts = benchmark.loader_parts(settings, root)
    classes = len(parts.setup.spec.classes)
    assert classes > benchmark.NUM_CLASSES  # nerve: the case this guards
    model = benchmark.Trainer.build(settings, data=parts.setup).model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, parts.setup.encoding.in_channels, 64, 64))
    assert out.shape[1] == classes
