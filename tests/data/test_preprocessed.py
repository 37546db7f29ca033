"""The preprocessed frame cache: it holds what training would read from the files, a change of the dataset or the
spacing gives a new cache (a stale one is never read), two processes that start together build it once, and a
build that fails or is killed leaves nothing that could be read as a cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from foreign import write_foreign_dataset
from tpnet.core.contract import load_manifest, load_spec
from tpnet.core.encoding import Encoding, imaged_region_stats
from tpnet.data.cli import main as tpnet_data
from tpnet.data.dataset import TrainPatchDataset, load_frame
from tpnet.data.preprocessed import (
    INDEX,
    CacheError,
    PreprocessedFrames,
    cache_folder,
    ensure_preprocessed,
    foreground_labels,
)
from tpnet.data.transforms import TrainTransform

SPACING_MM = 0.1


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    return write_foreign_dataset(tmp_path_factory.mktemp("foreign"))


def _labelled(root: Path):
    spec = load_spec(root)
    return spec, [r for r in load_manifest(root) if r.mask]


def test_cached_frames_hold_what_training_reads_from_the_files(foreign, tmp_path):
    spec, rows = _labelled(foreign)
    frames = ensure_preprocessed(spec, rows, SPACING_MM, tmp_path, workers=2, show_progress=False)
    assert len(frames) == len(rows) and frames.spacing_mm == SPACING_MM
    labels = np.array(foreground_labels(spec), np.uint8)
    with_swe = 0
    for row in rows:
        expected = load_frame(spec, row, SPACING_MM)
        view = frames.view(row.sample_id)
        np.testing.assert_allclose(view.bmode / 65535.0, expected.bmode, atol=1.0 / 65535)
        np.testing.assert_array_equal(view.mask, expected.mask)
        if expected.elasto_kpa is None:
            assert view.elasto is None, row.sample_id
        else:
            with_swe += 1
            stored = view.elasto.astype(np.float32)
            np.testing.assert_array_equal(np.isnan(stored), np.isnan(expected.elasto_kpa))
            np.testing.assert_allclose(stored, expected.elasto_kpa, rtol=1e-3, equal_nan=True)
        ys, xs = np.nonzero(np.isin(expected.mask, labels))
        np.testing.assert_array_equal(view.foreground, np.stack([ys, xs], axis=1))
        assert view.bmode_stats == pytest.approx(imaged_region_stats(expected.bmode))
    assert 0 < with_swe < len(rows)  # the dataset mixes frames with and without SWE


def test_patches_from_the_cache_match_patches_from_the_files(foreign, tmp_path):
    spec, rows = _labelled(foreign)
    frames = ensure_preprocessed(spec, rows, SPACING_MM, tmp_path, workers=1, show_progress=False)
    for encoding in (Encoding(), Encoding(bmode_norm="zscore_frame")):
        from_files = TrainPatchDataset(spec, rows, encoding, SPACING_MM, (32, 32), TrainTransform(), seed=5)
        cached = TrainPatchDataset(spec, rows, encoding, SPACING_MM, (32, 32), TrainTransform(), 5, frames)
        for index in range(len(rows)):
            for force_fg in (False, True):
                image_a, mask_a = from_files[(index, force_fg, 2)]
                image_b, mask_b = cached[(index, force_fg, 2)]
                assert image_b.dtype == torch.float16 and mask_b.dtype == torch.uint8  # compact in transit
                torch.testing.assert_close(image_b.float(), image_a.float(), atol=2e-2, rtol=1e-2)
                assert torch.equal(mask_a, mask_b), rows[index].sample_id


def test_a_changed_manifest_file_or_spacing_gives_a_new_cache(foreign, tmp_path):
    root = tmp_path / "dataset"
    subprocess.run(["cp", "-r", str(foreign), str(root)], check=True)
    spec, rows = _labelled(root)
    first = ensure_preprocessed(spec, rows, SPACING_MM, tmp_path / "cache", workers=1, show_progress=False)
    built_ns = (first.folder / INDEX).stat().st_mtime_ns
    again = ensure_preprocessed(spec, rows, SPACING_MM, tmp_path / "cache", workers=1, show_progress=False)
    assert again.folder == first.folder and (first.folder / INDEX).stat().st_mtime_ns == built_ns  # reused

    coarser = ensure_preprocessed(spec, rows, 0.2, tmp_path / "cache", workers=1, show_progress=False)
    assert coarser.folder != first.folder and coarser.spacing_mm == 0.2

    # A frame's file rewritten (new content, new modification time): its cache is rebuilt from the new pixels.
    row = rows[0]
    bmode_path = root / row.bmode
    old_view = first.view(row.sample_id).bmode.copy()
    import cv2

    image = cv2.imread(str(bmode_path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(bmode_path), (image.max() - image).astype(image.dtype))  # inverted grey levels
    stat = bmode_path.stat()
    os.utime(bmode_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = ensure_preprocessed(spec, rows, SPACING_MM, tmp_path / "cache", workers=1, show_progress=False)
    assert changed.folder != first.folder
    assert not np.array_equal(changed.view(row.sample_id).bmode, old_view)

    # The manifest edited (one labelled row dropped): a new cache without that row.
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    dropped = next(i for i, line in enumerate(lines) if rows[-1].sample_id in line)
    manifest.write_text("".join(lines[:dropped] + lines[dropped + 1 :]))
    spec, fewer = _labelled(root)
    smaller = ensure_preprocessed(spec, fewer, SPACING_MM, tmp_path / "cache", workers=1, show_progress=False)
    assert smaller.folder not in (first.folder, changed.folder)
    assert len(smaller) == len(rows) - 1 and rows[-1].sample_id not in smaller
    # The old caches are untouched (another run may still be reading them).
    assert (first.folder / INDEX).stat().st_mtime_ns == built_ns


_CONCURRENT = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    from tpnet.core.contract import load_manifest, load_spec
    from tpnet.data.preprocessed import ensure_preprocessed
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    root, cache, barrier = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    spec = load_spec(root)
    rows = [r for r in load_manifest(root) if r.mask]
    (barrier / str(time.monotonic_ns())).touch()
    while len(list(barrier.iterdir())) < 2:  # both processes, imports done, call at the same moment
        time.sleep(0.001)
    frames = ensure_preprocessed(spec, rows, 0.1, cache, workers=1, show_progress=False)
    print("FOLDER", frames.folder, int(frames.view(rows[0].sample_id).bmode.sum()))
    """
)


def test_two_processes_starting_together_build_one_cache_and_read_the_same(foreign, tmp_path):
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(foreign), str(cache), str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    results = [next(line for line in out.splitlines() if line.startswith("FOLDER")) for out, _ in outputs]
    assert results[0] == results[1]  # same folder, same pixels
    builds = sum(out.count("preprocessed ") for out, _ in outputs)
    assert builds == 1, [out for out, _ in outputs]  # one built it; the other waited and read its result
    caches = [p for p in cache.iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / INDEX).exists()  # no temporary folder left behind


def test_a_failed_or_killed_build_leaves_nothing_that_reads_as_a_cache(foreign, tmp_path):
    root = tmp_path / "dataset"
    subprocess.run(["cp", "-r", str(foreign), str(root)], check=True)
    spec, rows = _labelled(root)
    cache = tmp_path / "cache"
    folder = cache_folder(cache, spec, rows, SPACING_MM)
    # A killed build's remains: a temporary folder with half the data and no index.
    remains = folder.parent / f"{folder.name}.tmp-999999"
    remains.mkdir(parents=True)
    (remains / "bmode.u16").write_bytes(b"\0" * 100)
    with pytest.raises(CacheError, match="not a complete preprocessed cache"):
        PreprocessedFrames(remains)
    frames = ensure_preprocessed(spec, rows, SPACING_MM, cache, workers=1, show_progress=False)
    assert frames.folder == folder and not remains.exists()

    # A frame that cannot be read: the error names the sample, and no cache (nor temporary folder) appears.
    broken = rows[2]
    (root / broken.bmode).write_bytes(b"not an image")
    spec, rows = _labelled(root)
    with pytest.raises(CacheError, match=broken.sample_id):
        ensure_preprocessed(spec, rows, SPACING_MM, cache, workers=2, show_progress=False)
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [folder.name]


def test_tpnet_data_preprocess_builds_the_cache_training_uses(foreign, tmp_path, capsys):
    rc = tpnet_data(["preprocess", str(foreign), "--spacing-mm", "0.1", "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    spec, rows = _labelled(foreign)
    folder = cache_folder(tmp_path, spec, rows, 0.1)
    assert rc == 0 and str(folder) in out and "MiB" in out and f"{len(rows)} frames" in out
    assert (folder / INDEX).exists()
    assert tpnet_data(["preprocess", str(foreign), "--spacing-mm", "0", "--cache-dir", str(tmp_path)]) == 2
