"""Contract parsing and frame I/O against files written the way other tools write them (cv2/tifffile/numpy)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from foreign import FOREIGN_COLUMNS, FOREIGN_ROWS, write_foreign_dataset
from tpnet.core import io
from tpnet.core.contract import ContractError, load_manifest, load_spec, read_manifest_raw, resolve_path
from tpnet.core.encoding import elasto_to_kpa


def test_read_bmode_scales_every_format(tmp_path: Path) -> None:
    u8 = np.array([[0, 255], [51, 102]], np.uint8)
    u16 = np.array([[0, 65535], [32768, 13107]], np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), u8)
    cv2.imwrite(str(tmp_path / "b.png"), u16)
    tifffile.imwrite(tmp_path / "c.tif", u16)
    np.save(tmp_path / "d.npy", np.array([[0.0, 1.5], [-0.2, 0.25]], np.float32))
    np.save(tmp_path / "e.npy", u8)
    expected_u8 = u8 / 255.0
    expected_u16 = u16 / 65535.0
    np.testing.assert_allclose(io.read_bmode(tmp_path / "a.png"), expected_u8, atol=1e-6)
    np.testing.assert_allclose(io.read_bmode(tmp_path / "b.png"), expected_u16, atol=1e-6)  # not / 255
    np.testing.assert_allclose(io.read_bmode(tmp_path / "c.tif"), expected_u16, atol=1e-6)
    np.testing.assert_allclose(io.read_bmode(tmp_path / "d.npy"), [[0.0, 1.0], [0.0, 0.25]])  # floats clipped
    np.testing.assert_allclose(io.read_bmode(tmp_path / "e.npy"), expected_u8, atol=1e-6)
    assert all(io.read_bmode(tmp_path / n).dtype == np.float32 for n in ("a.png", "b.png", "c.tif", "d.npy"))


def test_bad_frames_name_the_file_and_reason(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    colour = np.zeros((8, 9, 3), np.uint8)
    colour[:, :4] = (0, 0, 255)  # genuinely coloured (grey stored as RGB is B-mode: tests/core/test_plain_images.py)
    cv2.imwrite(str(rgb), colour)
    png = cv2.imencode(".png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))[1].tobytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is a text file someone renamed\n")
    (tmp_path / "frame.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "frame.gif").write_bytes(b"GIF89a")
    np.save(tmp_path / "stack.npy", np.zeros((2, 8, 8), np.float32))
    cases = {
        "rgb.png": "RGB",
        "truncated.png": "truncated",
        "empty.png": "zero-byte",
        "notes.png": "not a PNG",
        "missing.png": "file not found",
        "frame.jpg": "unreadable or truncated JPEG",
        "frame.gif": "unsupported file type",
        "stack.npy": "single-channel",
    }
    for name, words in cases.items():
        with pytest.raises(io.FrameReadError) as info:
            io.read_bmode(tmp_path / name)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and words in message, message


def test_elastography_units(tmp_path: Path) -> None:
    speed = np.array([[3.0, np.nan], [2.0, 6.0]], np.float32)
    tifffile.imwrite(tmp_path / "swe.tif", speed)
    kpa = io.read_elasto(tmp_path / "swe.tif", "m/s")
    assert kpa[0, 0] == pytest.approx(27.0)  # E = 3 * 1000 kg/m^3 * (3 m/s)^2 = 27 kPa
    assert kpa[1, 0] == pytest.approx(12.0) and kpa[1, 1] == pytest.approx(108.0)
    assert np.isnan(kpa[0, 1]) and kpa.dtype == np.float32
    np.testing.assert_array_equal(io.read_elasto(tmp_path / "swe.tif", "kPa")[1], speed[1])
    with pytest.raises(ValueError, match="unknown elastography unit"):
        elasto_to_kpa(speed, "Pa")


def test_resolve_path_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "frames").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "frames" / "link.png")
    assert resolve_path(root, "frames/../frames/a.png") == (root / "frames" / "a.png").resolve()
    for relative, words in [
        ("../secret.png", "escapes the dataset root"),
        ("frames/../../secret.png", "escapes the dataset root"),
        (str(tmp_path / "secret.png"), "absolute path"),
        ("frames/link.png", "escapes the dataset root"),
    ]:
        with pytest.raises(ContractError, match=words) as info:
            resolve_path(root, relative)
        assert str(info.value).startswith(relative)


def test_foreign_manifest_extra_and_reordered_columns(tmp_path: Path) -> None:
    root = write_foreign_dataset(tmp_path / "ds")
    raw = read_manifest_raw(root)
    assert list(raw[0]) == list(FOREIGN_COLUMNS)  # extra columns kept in the raw view
    rows = load_manifest(root)
    assert [(r.sample_id, r.subject_id) for r in rows] == [(r[0], r[1]) for r in FOREIGN_ROWS]
    assert all(r.split is None for r in rows)
    spec = load_spec(root)
    assert spec.name == "foreign_lab" and spec.classes[0] == "background" and spec.elasto_unit == "m/s"
    shapes = {io.read_bmode(resolve_path(root, r.bmode)).shape for r in rows}
    assert shapes == {(70, 90), (83, 61)}  # neither divisible by 32, and not one size for all
    sixteen_bit = [
        r for r in rows if r.bmode.endswith(".png") and io.read_array(root / r.bmode).dtype == np.uint16
    ]
    assert sixteen_bit, "the foreign dataset must exercise 16-bit PNG"
    for r in rows:
        if r.mask:
            mask = io.read_mask(resolve_path(root, r.mask))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2, 3}


class _Payload:
    """Unpickling this creates ``marker``: the side effect a malicious ``.npy`` would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_npy_frame_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "x_bmode.npy"
    np.save(path, np.array([[_Payload(marker)]], dtype=object), allow_pickle=True)
    for read in (io.read_bmode, io.read_elasto, io.read_mask):
        with pytest.raises(io.FrameReadError, match="x_bmode.npy"):
            read(path)
    assert not marker.exists()
