"""Sample rendering: one PNG per frame, three panels plus a colour bar, readable back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tpnet.core.io import read_array
from tpnet.data.cli import main
from tpnet.data.render import COLOUR_BAR_PX, TITLE_PX, mask_panel, render_frame, render_samples
from tpnet.data.synth import write_synthetic_dataset

H, W = 96, 80


def test_render_samples_writes_three_panel_pngs(tmp_path: Path):
    root = write_synthetic_dataset(tmp_path / "ds", 2, 3, seed=2, height=H, width=W)
    paths = render_samples(root, tmp_path / "out", n=2)
    assert len(paths) == 2
    for path in paths:
        image = read_array(path)
        assert image.shape == (TITLE_PX + H, 3 * W + COLOUR_BAR_PX, 3)
        assert image.dtype == np.uint8


def test_render_cli_and_more_requested_than_available(tmp_path: Path):
    root = write_synthetic_dataset(tmp_path / "ds", 1, 2, seed=4, height=48, width=48)
    assert main(["render", str(root), str(tmp_path / "out"), "--n", "5"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sample_0.png", "sample_1.png"]


def test_swe_overlay_only_where_valid_and_mask_colours():
    bmode = np.full((40, 40), 0.5, np.float32)
    elasto = np.full((40, 40), np.nan, np.float32)
    elasto[10:30, 10:30] = 90.0  # stiff -> red end of the jet map
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 25:35] = 1
    image = render_frame(bmode, elasto, mask, ("background", "active_trp", "latent_trp", "vessel"))
    swe = image[TITLE_PX:, 40:80]  # second panel
    assert (swe[20, 20, 0] > swe[20, 20, 2]) and swe[20, 20, 0] > 150  # red-ish inside
    assert swe[2, 2].tolist() == [127, 127, 127]  # untouched grey outside the box
    overlay = mask_panel(bmode, mask, ("background", "active_trp"))
    assert overlay[10, 30, 0] > overlay[10, 30, 2]  # active TrP tinted red
    assert overlay[30, 5].tolist() == [127, 127, 127]


def test_render_reads_a_dicom_row_as_training_does(tmp_path: Path):
    """A DICOM cine row: its frame, cropped to the image region, with a full-frame mask cropped alike."""
    from dicom_files import write_us_dicom
    from tpnet.core.io import write_png

    root = tmp_path / "ds"
    root.mkdir()
    pixels = np.stack([np.full((40, 60), 50 * (i + 1), np.uint8) for i in range(3)])
    write_us_dicom(root / "loop.dcm", pixels=pixels, region=(10, 5, 50, 35), delta_cm=(0.01, 0.01))
    write_png(root / "mask.png", np.zeros((40, 60), np.uint8))  # the full frame's size
    (root / "dataset.yaml").write_text("name: d\n")
    (root / "manifest.csv").write_text("sample_id,subject_id,bmode,mask,frame\nf2,p1,loop.dcm,mask.png,2\n")

    (path,) = render_samples(root, tmp_path / "out", n=1)

    image = read_array(path)
    assert image.shape == (TITLE_PX + 30, 3 * 40 + COLOUR_BAR_PX, 3)  # the 40x30 region, not the 60x40 frame
    assert abs(int(image[TITLE_PX + 15, 20, 0]) - 150) <= 2  # frame 2's grey, not frame 0's
