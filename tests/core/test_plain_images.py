"""Plain images as people have them (issue #11, 2b): JPEG/BMP B-mode, grey stored as RGB(A), a few coloured
annotation pixels (read as luma, reported), colour Doppler/SWE refused by name; read_rgb for screenshots."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tpnet.core import io

GREY = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 7 % 256).astype(np.uint8)


def _write(path: Path, image: np.ndarray, *params: int) -> Path:
    """Write with OpenCV; ``image`` is RGB(A) or grey."""
    if image.ndim == 3:
        order = [2, 1, 0, 3][: image.shape[-1]]
        image = np.ascontiguousarray(image[..., order])
    assert cv2.imwrite(str(path), image, list(params))
    return path


def test_grey_jpeg_bmp_and_grey_stored_as_rgb_are_bmode(tmp_path: Path) -> None:
    rgb = np.dstack([GREY] * 3)
    rgba = np.dstack([GREY] * 3 + [np.full_like(GREY, 255)])
    expected = GREY / 255.0
    exact = {
        "grey.bmp": _write(tmp_path / "grey.bmp", GREY),
        "rgb.bmp": _write(tmp_path / "rgb.bmp", rgb),
        "rgb.png": _write(tmp_path / "rgb.png", rgb),
        "rgba.png": _write(tmp_path / "rgba.png", rgba),
    }
    for name, path in exact.items():
        frame = io.read_bmode(path)
        assert frame.dtype == np.float32 and frame.shape == GREY.shape, name
        np.testing.assert_allclose(frame, expected, atol=1e-6, err_msg=name)
    # JPEG of grey stored as colour (how most exports look): grey within JPEG's own error, no note.
    smooth = cv2.GaussianBlur(GREY, (0, 0), 2.0)
    path = _write(tmp_path / "rgb.jpg", np.dstack([smooth] * 3), cv2.IMWRITE_JPEG_QUALITY, 90)
    notes: list[str] = []
    frame = io.read_bmode(path, on_rescale=notes.append)
    assert np.abs(frame - smooth / 255.0).max() < 0.05 and notes == []
    path = _write(tmp_path / "grey.jpeg", smooth, cv2.IMWRITE_JPEG_QUALITY, 90)
    assert io.read_bmode(path).shape == GREY.shape


def test_a_few_coloured_annotation_pixels_are_read_as_luma_and_reported(tmp_path: Path) -> None:
    rgb = np.dstack([GREY] * 3)
    rgb[2, 3:13] = (255, 255, 0)  # 10 yellow pixels of 2000: a caliper mark
    path = _write(tmp_path / "marked.png", rgb)
    notes: list[str] = []
    frame = io.read_bmode(path, on_rescale=notes.append)
    assert len(notes) == 1 and notes[0].startswith(str(path)) and "10 coloured pixel(s)" in notes[0]
    assert frame[2, 3] == pytest.approx(round(0.299 * 255 + 0.587 * 255) / 255.0)  # luma of yellow
    np.testing.assert_allclose(frame[10:], GREY[10:] / 255.0, atol=1e-6)
    with pytest.warns(io.FrameRescaledWarning, match="coloured pixel"):  # without a callback: a warning
        io.read_bmode(path)


def test_colour_doppler_or_swe_is_refused_naming_the_share_and_the_profile(tmp_path: Path) -> None:
    rgb = np.dstack([GREY] * 3)
    rgb[10:20, 10:30, 0] = 255  # 200 of 2000 pixels red: 10 %
    for name in ("swe.png", "swe.jpg"):
        path = _write(tmp_path / name, rgb)
        with pytest.raises(io.FrameReadError) as info:
            io.read_bmode(path)
        message = str(info.value)
        assert message.startswith(str(path)), message
        assert "colour Doppler/SWE" in message and "--profile" in message and "single-channel" in message
        share = re.search(r"(\d+\.\d)% of its pixels are coloured", message)
        assert share and 8.0 <= float(share[1]) <= 20.0, message  # ~10 % red (JPEG bleeds colour around it)


def test_read_rgb_gives_uint8_rgb_for_every_screenshot_type(tmp_path: Path) -> None:
    colour = np.zeros((12, 16, 3), np.uint8)
    colour[..., 0] = 200  # red
    colour[:, 8:, 2] = 100  # with some blue on the right
    for name in ("s.png", "s.bmp"):
        np.testing.assert_array_equal(io.read_rgb(_write(tmp_path / name, colour)), colour)
    rgba = np.dstack([colour, np.full((12, 16), 128, np.uint8)])
    np.testing.assert_array_equal(io.read_rgb(_write(tmp_path / "a.png", rgba)), colour)  # alpha dropped
    shot = io.read_rgb(_write(tmp_path / "s.jpg", colour, cv2.IMWRITE_JPEG_QUALITY, 95))
    assert shot.dtype == np.uint8 and shot.shape == (12, 16, 3) and shot[6, 2, 0] > 180 and shot[6, 2, 2] < 40
    grey = io.read_rgb(_write(tmp_path / "g.png", GREY))
    assert grey.shape == (40, 50, 3) and (grey[..., 1] == GREY).all()
    deep = io.read_rgb(_write(tmp_path / "d.png", colour.astype(np.uint16) * 257))
    np.testing.assert_array_equal(deep, colour)  # 16 bit -> 8 bit
    np.save(tmp_path / "x.npy", colour)
    with pytest.raises(io.FrameReadError, match="x.npy: unsupported screenshot type"):
        io.read_rgb(tmp_path / "x.npy")


def test_bad_jpeg_and_bmp_files_name_the_file_and_reason(tmp_path: Path, monkeypatch) -> None:
    good = cv2.imencode(".jpg", np.dstack([GREY] * 3))[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.bmp").write_text("not an image\n")
    (tmp_path / "empty.jpeg").write_bytes(b"")
    cases = {
        "cut.jpg": "truncated JPEG",
        "text.bmp": "unreadable or truncated BMP",
        "empty.jpeg": "zero-byte",
    }
    for name, words in cases.items():
        for reader in (io.read_bmode, io.read_rgb):
            with pytest.raises(io.FrameReadError) as info:
                reader(tmp_path / name)
            assert str(info.value).startswith(str(tmp_path / name)) and words in str(info.value)
    # The declared size is checked before decoding, as for PNG.
    path = _write(tmp_path / "big.jpg", np.dstack([GREY] * 3))
    assert io.declared_shape(path) == GREY.shape
    monkeypatch.setenv(io.MAX_FRAME_PIXELS_ENV, "1000")
    for reader in (io.read_bmode, io.read_rgb):
        with pytest.raises(io.FrameReadError, match=r"big.jpg: declares 50x40 px .* above the limit"):
            reader(path)
