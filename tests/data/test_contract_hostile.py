"""Hostile datasets: misplaced or repeated classes, repeated header columns, non-UTF-8 files, symlink loops and
names too long for the file system. Each is an error naming the file or sample: exit 1 in ``tpnet-data check``,
exit 2 in ``tpnet-train``, never a traceback."""

from __future__ import annotations

import io as text_io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tpnet.core.contract import ContractError, load_spec, read_manifest_raw
from tpnet.data.check import main_check
from train_helpers import REPO, subprocess_env


def _run_check(root: Path) -> tuple[int, str]:
    stream = text_io.StringIO()
    code = main_check(root, stream=stream)
    return code, stream.getvalue()


def _yaml(classes: str, extra: str = "") -> Callable[[Path], None]:
    def write(root: Path) -> None:
        (root / "dataset.yaml").write_text(f"name: x\nclasses: {classes}\nelasto_unit: m/s\n{extra}")

    return write


def _replace_first_bmode(root: Path, new_path: str) -> str:
    """Point the first row's bmode at ``new_path``; returns that row's sample_id."""
    lines = (root / "manifest.csv").read_text().splitlines()
    header = lines[0].split(",")
    first = lines[1].split(",")
    first[header.index("bmode")] = new_path
    lines[1] = ",".join(first)
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return first[header.index("sample_id")]


def _duplicate_header(root: Path) -> None:
    lines = (root / "manifest.csv").read_text().splitlines()
    lines[0] += ",bmode"
    lines[1:] = [line + ",P01/bmode/P01_f0.png" for line in lines[1:]]  # the last copy would win silently
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")


def _latin1_manifest(root: Path) -> None:
    text = (root / "manifest.csv").read_text().replace("P01_f0,", "P01_f0_Müller,", 1)
    (root / "manifest.csv").write_bytes(text.encode("latin-1"))


def _latin1_yaml(root: Path) -> None:
    (root / "dataset.yaml").write_bytes("name: Klinik Zürich\nelasto_unit: m/s\n".encode("latin-1"))


def _looping_yaml(root: Path) -> None:
    (root / "dataset.yaml").unlink()
    os.symlink("dataset.yaml", root / "dataset.yaml")


def _looping_bmode(root: Path) -> None:
    os.symlink("loop.png", root / "loop.png")
    _replace_first_bmode(root, "loop.png")


def _too_long_bmode(root: Path) -> None:
    _replace_first_bmode(root, "P01/" + "x" * 300 + ".png")


# case -> (break it, words in the error, where: "dataset.yaml", "manifest.csv" or a sample_id)
HOSTILE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "background last": (
        _yaml("[active_trp, latent_trp, vessel, background]"),
        "class index 0 must be the background ('background', at index 3); got 'active_trp'",
        "dataset.yaml",
    ),
    "no background": (_yaml("[tissue, active_trp]"), "('background', missing)", "dataset.yaml"),
    "repeated class": (
        _yaml("[background, active_trp, active_trp, vessel]"),
        "names ['active_trp'] more than once",
        "dataset.yaml",
    ),
    "declared background that is a TrP class": (
        _yaml("[active_trp, latent_trp]", "background_class: active_trp\n"),
        "cannot be a trigger-point",
        "dataset.yaml",
    ),
    "repeated header column": (_duplicate_header, "header repeats column(s) ['bmode']", "manifest.csv"),
    "latin-1 manifest": (_latin1_manifest, "manifest.csv is not UTF-8 text (byte 0xfc", "manifest.csv"),
    "latin-1 dataset.yaml": (_latin1_yaml, "dataset.yaml is not UTF-8 text (byte 0xfc", "dataset.yaml"),
    "looping dataset.yaml": (_looping_yaml, "broken or looping symbolic link", "dataset.yaml"),
    "looping bmode": (_looping_bmode, "bmode loop.png: symbolic link loop", "P01_f0"),
    "bmode name too long": (_too_long_bmode, "unusable path (File name too long)", "P01_f0"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_check_names_the_file_and_exits_1(foreign_root: Path, tmp_path: Path, case: str) -> None:
    break_it, words, where = HOSTILE[case]
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    break_it(root)
    code, output = _run_check(root)
    assert code == 1, output
    where = str(root / where) if where in ("dataset.yaml", "manifest.csv") else where
    errors = [line for line in output.splitlines() if line.startswith(f"ERROR {where}: ")]
    assert any(words in line for line in errors), output
    assert "Traceback" not in output


def test_declared_background_under_another_name_is_accepted(foreign_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    _yaml("[bg, active_trp, latent_trp, vessel]", "background_class: bg\n")(root)
    assert load_spec(root).classes == ("bg", "active_trp", "latent_trp", "vessel")
    assert _run_check(root)[0] == 0


def test_a_byte_order_mark_is_not_part_of_the_first_column(foreign_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    (root / "manifest.csv").write_bytes(b"\xef\xbb\xbf" + (root / "manifest.csv").read_bytes())
    assert read_manifest_raw(root)[0]["sample_id"] == "P01_f0"


def test_a_cell_past_the_csv_field_limit_names_the_file(foreign_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    text = (root / "manifest.csv").read_text()
    (root / "manifest.csv").write_text(text.replace("P01_f1,", '"' + "x" * 200_000 + '",', 1))
    with pytest.raises(ContractError, match=r"manifest.csv: not a readable CSV file \(line \d+"):
        read_manifest_raw(root)


TRAIN_CASES = ("background last", "repeated header column", "latin-1 manifest", "looping bmode")


@pytest.mark.slow
def test_tpnet_train_refuses_each_hostile_dataset_with_exit_2(foreign_root: Path, tmp_path: Path) -> None:
    """The trainer runs the same check before any data set-up: exit 2, the message names the file."""
    for index, case in enumerate(TRAIN_CASES):
        break_it, words, _ = HOSTILE[case]
        root = shutil.copytree(foreign_root, tmp_path / f"ds{index}")
        break_it(root)
        result = subprocess.run(
            [
                sys.executable, "-m", "tpnet.training.cli", f"data.root={root}", "trainer.device=cpu",
                f"hydra.run.dir={tmp_path / f'run{index}'}", "logger.enabled=false", "data.num_workers=0",
            ],
            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, f"{case}: {result.stderr[-2000:]}"
        assert words in result.stderr, f"{case}: {result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, f"{case}: {result.stderr[-2000:]}"
