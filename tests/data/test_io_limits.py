"""Frame I/O against hostile or careless files: decompression bombs and B-mode bit depths."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from crafted_images import write_png16, write_png_bomb
from foreign import write_foreign_dataset
from peak_rss import run_with_peak_rss
from tpnet.core import io
from tpnet.core.contract import load_manifest
from tpnet.core.encoding import Encoding
from tpnet.core.image_header import read_png_header
from tpnet.data.check import DatasetCheckError, check_dataset, check_or_raise

BOMB_SIDE = 30_000  # 900 MP declared in a ~4 MB file


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png", BOMB_SIDE, BOMB_SIDE)


def _read_quietly(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rescale that was not expected fails the test
        return io.read_bmode(path)


# --- decompression bombs ---------------------------------------------------------------------------


def test_png_bomb_is_refused_from_its_header_by_every_reader(bomb: Path) -> None:
    header = read_png_header(bomb)
    assert (header.width, header.height, header.bit_depth, header.channels) == (BOMB_SIDE, BOMB_SIDE, 8, 1)
    for reader in (io.read_array, io.read_bmode, io.read_mask, io.read_elasto):
        with pytest.raises(io.FrameReadError) as info:
            reader(bomb)
        message = str(info.value)
        assert message.startswith(str(bomb)), message
        assert "30000x30000 px" in message and "900.0 megapixels" in message, message
        assert "limit of 16 megapixels" in message and io.MAX_FRAME_PIXELS_ENV in message, message


def test_limit_is_configurable_and_covers_tiff_and_npy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = np.full((40, 50), 128, np.uint8)  # 2000 px
    cv2.imwrite(str(tmp_path / "f.png"), frame)
    tifffile.imwrite(tmp_path / "f.tif", frame)
    np.save(tmp_path / "f.npy", frame)
    np.save(tmp_path / "stack.npy", np.zeros((3, 40, 50), np.uint8))  # planes count: 6000 px
    names = ("f.png", "f.tif", "f.npy")
    monkeypatch.setenv(io.MAX_FRAME_PIXELS_ENV, "2000")
    assert all(io.read_array(tmp_path / n).shape == (40, 50) for n in names)  # at the limit: accepted
    monkeypatch.setenv(io.MAX_FRAME_PIXELS_ENV, "1.999e3")
    for name in names:
        with pytest.raises(io.FrameReadError, match=r"declares 50x40 px \(0.0 megapixels\), above the limit"):
            io.read_bmode(tmp_path / name)
    monkeypatch.setenv(io.MAX_FRAME_PIXELS_ENV, "5000")
    with pytest.raises(io.FrameReadError, match=r"shape \(3, 40, 50\)"):
        io.read_array(tmp_path / "stack.npy")
    monkeypatch.setenv(io.MAX_FRAME_PIXELS_ENV, "lots")
    with pytest.raises(io.FrameReadError, match="TPNET_MAX_FRAME_PIXELS='lots' is not a positive number"):
        io.read_bmode(tmp_path / "f.png")
    monkeypatch.delenv(io.MAX_FRAME_PIXELS_ENV)
    assert io.max_frame_pixels() == io.DEFAULT_MAX_FRAME_PIXELS


def test_sparse_tiff_and_npy_declaring_900_megapixels_are_refused_unread(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "huge.tif", shape=(BOMB_SIDE, BOMB_SIDE), dtype=np.uint8)  # sparse file
    np.lib.format.open_memmap(tmp_path / "huge.npy", mode="w+", dtype=np.uint8, shape=(BOMB_SIDE, BOMB_SIDE))
    for name in ("huge.tif", "huge.npy"):
        with pytest.raises(io.FrameReadError, match="30000x30000 px"):
            io.read_bmode(tmp_path / name)


def test_opencv_limit_follows_tpnet_limit() -> None:
    """tpnet/__init__ sets OpenCV's own limit (read once, at cv2's import) to tpnet's."""
    env = {k: v for k, v in os.environ.items() if k != io.OPENCV_MAX_PIXELS_ENV}
    env[io.MAX_FRAME_PIXELS_ENV] = "1000"
    code = (
        "import os, numpy as np, tpnet, cv2\n"
        "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])\n"
        "png = cv2.imencode('.png', np.zeros((40, 40), np.uint8))[1]\n"
        "try:\n    cv2.imdecode(png, -1); print('decoded')\n"
        "except cv2.error:\n    print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1000", "refused"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc (Linux)")
def test_check_reports_the_bomb_by_name_without_decoding_it(tmp_path: Path, bomb: Path) -> None:
    root = write_foreign_dataset(tmp_path / "ds")
    victim = next(row for row in load_manifest(root) if row.bmode.endswith(".png"))
    (root / victim.bmode).write_bytes(bomb.read_bytes())

    done, peak_mib = run_with_peak_rss("tpnet.data.cli", ["check", str(root)])
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    lines = [line for line in out.splitlines() if line.startswith(f"ERROR {victim.sample_id}: ")]
    assert len(lines) == 1 and "30000x30000 px" in lines[0] and "TPNET_MAX_FRAME_PIXELS" in lines[0], out
    assert "Traceback" not in out + done.stderr
    assert peak_mib < 400, f"tpnet-data check peaked at {peak_mib:.0f} MiB: the 900 MB frame was decoded"

    with pytest.raises(DatasetCheckError, match=f"{victim.sample_id}: bmode .*30000x30000 px"):
        check_or_raise(root)  # what tpnet-train runs before it reads a frame


# --- bit depth -------------------------------------------------------------------------------------


def _ramp(top: int, dtype: type = np.uint16) -> np.ndarray:
    return np.linspace(0, top, 64 * 48).reshape(48, 64).round().astype(dtype)


def test_12_and_8_bit_data_in_16_bit_png_use_their_own_scale(tmp_path: Path) -> None:
    twelve, eight = _ramp(4095), _ramp(255)
    write_png16(tmp_path / "twelve.png", twelve)
    write_png16(tmp_path / "eight.png", eight)
    with pytest.warns(io.FrameRescaledWarning, match="twelve.png: uint16 B-mode read as 12-bit .*4095"):
        np.testing.assert_allclose(io.read_bmode(tmp_path / "twelve.png"), twelve / 4095.0, atol=1e-6)
    with pytest.warns(io.FrameRescaledWarning, match="read as 8-bit"):
        np.testing.assert_allclose(io.read_bmode(tmp_path / "eight.png"), eight / 255.0, atol=1e-6)


def test_png_sbit_decides_the_scale(tmp_path: Path) -> None:
    ten = _ramp(1000)
    write_png16(tmp_path / "ten.png", ten, significant_bits=10)
    with pytest.warns(io.FrameRescaledWarning, match=r"10-bit .*declares 10 significant bits \(sBIT\)"):
        np.testing.assert_allclose(io.read_bmode(tmp_path / "ten.png"), ten / 1023.0, atol=1e-6)
    # 12 significant bits shifted to the top, as the PNG spec asks: the full 16-bit scale, silently.
    shifted = (_ramp(4095).astype(np.uint32) << 4).astype(np.uint16)
    write_png16(tmp_path / "shifted.png", shifted, significant_bits=12)
    assert read_png_header(tmp_path / "shifted.png").significant_bits == 12
    np.testing.assert_allclose(_read_quietly(tmp_path / "shifted.png"), shifted / 65535.0, atol=1e-6)
    full = _ramp(65535)
    write_png16(tmp_path / "full.png", full)
    np.testing.assert_allclose(_read_quietly(tmp_path / "full.png"), full / 65535.0, atol=1e-6)


def test_same_anatomy_at_8_and_12_bits_encodes_the_same(tmp_path: Path) -> None:
    """The network's B-mode channel must not depend on the container the scanner exported."""
    scene = np.random.default_rng(0).random((48, 64))
    cv2.imwrite(str(tmp_path / "eight.png"), np.round(scene * 255).astype(np.uint8))
    write_png16(tmp_path / "twelve.png", np.round(scene * 4095).astype(np.uint16))
    encoding = Encoding()
    eight = encoding.encode(_read_quietly(tmp_path / "eight.png"), None)[0]
    with pytest.warns(io.FrameRescaledWarning):
        twelve = encoding.encode(io.read_bmode(tmp_path / "twelve.png"), None)[0]
    assert np.abs(eight - twelve).max() <= 0.5 / 255 + 0.5 / 4095 + 1e-6


def test_check_reports_a_guessed_bit_depth_as_a_warning_of_its_row(tmp_path: Path) -> None:
    root = write_foreign_dataset(tmp_path / "ds")
    victim = next(row for row in load_manifest(root) if row.bmode.endswith(".png"))
    shape = io.read_array(root / victim.bmode).shape
    write_png16(root / victim.bmode, np.resize(_ramp(4095), shape))  # same size: only the depth changes
    with warnings.catch_warnings():
        warnings.simplefilter("error", io.FrameRescaledWarning)  # reported in the check, not as a warning
        report = check_dataset(root)
    assert report.ok, report.errors
    (note,) = [p for p in report.warnings if p.where == victim.sample_id]
    assert note.reason.startswith("bmode uint16 B-mode read as 12-bit data"), note


@pytest.mark.parametrize(
    ("dtype", "top", "full"),
    [(np.int64, 255, 255), (np.int8, 127, 255), (np.int64, 4095, 4095), (np.int32, 60000, 65535)],
)
def test_integer_npy_of_any_dtype_uses_the_depth_its_values_fit(
    tmp_path: Path, dtype: type, top: int, full: int
) -> None:
    image = _ramp(top, dtype)
    np.save(tmp_path / "b.npy", image)
    with pytest.warns(io.FrameRescaledWarning, match=f"{np.dtype(dtype).name} B-mode read as"):
        bmode = io.read_bmode(tmp_path / "b.npy")
    assert bmode.dtype == np.float32
    np.testing.assert_allclose(bmode, image / full, atol=1e-6)
    assert bmode.max() == pytest.approx(top / full)  # not constant, not near-black


def test_float_npy_in_0_255_is_scaled_and_0_1_is_untouched(tmp_path: Path) -> None:
    image = np.linspace(0.0, 1.0, 64 * 48).reshape(48, 64)
    np.save(tmp_path / "unit.npy", image)  # float64
    np.save(tmp_path / "bytes.npy", image * 255.0)
    np.testing.assert_allclose(_read_quietly(tmp_path / "unit.npy"), image, atol=1e-6)
    with pytest.warns(io.FrameRescaledWarning, match=r"bytes.npy: float B-mode up to 255 read as 0..255"):
        np.testing.assert_allclose(io.read_bmode(tmp_path / "bytes.npy"), image, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "array", "words"),
    [
        ("signed.npy", np.array([[-5, 100], [3, 4]], np.int64), "negative values (min -5, int64)"),
        ("wide.npy", np.array([[0, 70000], [3, 4]], np.int64), "values up to 70000 (int64) exceed 16 bits"),
        ("huge_u32.npy", np.array([[0, 2**31], [3, 4]], np.uint32), "exceed 16 bits"),
        ("centred.npy", np.array([[-1.0, 1.0], [0.0, 0.5]]), "negative values (min -1"),
        ("decibels.npy", np.array([[-60.0, 0.0], [-30.0, -6.0]]), "log-compressed (dB)"),
        ("float_wide.npy", np.array([[0.0, 1e6], [3.0, 4.0]]), "float B-mode values up to 1e+06 exceed"),
        ("nan.npy", np.array([[np.nan, 1.0], [0.0, 0.5]]), "NaN or Inf"),
        ("bool.npy", np.array([[True, False], [False, True]]), "unsupported B-mode dtype bool"),
    ],
)
def test_uninterpretable_bmode_is_refused_by_name(
    tmp_path: Path, name: str, array: np.ndarray, words: str
) -> None:
    np.save(tmp_path / name, array)
    with pytest.raises(io.FrameReadError) as info:
        io.read_bmode(tmp_path / name)
    message = str(info.value)
    assert message.startswith(str(tmp_path / name)) and words in message, message
