"""Ctrl-C / SIGTERM in a real ``tpnet-infer`` process: no traceback, the output is marked incomplete, and
``--resume`` finishes it with the same results as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from model_files import blob_frame, make_model_file
from tpnet.core.io import write_png
from tpnet.inference.cli import main
from tpnet.inference.progress import PROGRESS_NAME

N_FRAMES = 12
VARYING_SUMMARY_KEYS = ("created", "timing", "output")  # when and where, not what was found


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model, a folder of frames and the outputs of one uninterrupted run over it."""
    root = tmp_path_factory.mktemp("interrupt")
    model_path = make_model_file(root / "model")
    scans = root / "scans"
    scans.mkdir()
    for i in range(N_FRAMES):
        nodules = [(1.5 + 0.3 * i, 3.0, 1.2)] if i % 3 else []  # some frames with a finding, some without
        bmode = blob_frame((6.4, 6.4), 0.2, nodules=nodules, vessels=[(5.0, 5.0, 0.8)])[0]
        write_png(scans / f"f{i:02d}_bmode.png", np.round(bmode * 255).astype(np.uint8))
        (scans / f"f{i:02d}.json").write_text(json.dumps({"spacing_mm": 0.2}))
    (scans / "broken_bmode.png").write_text("not an image")  # a rejection in the journal, too
    straight = root / "straight"
    assert main(_args(model_path, scans, straight)) == 3
    return model_path, scans, straight


def _args(model_path, scans, out):
    return ["--model", str(model_path), "--input", str(scans), "--output", str(out), "--batch-size", "1"]


def _finished_frames(out):
    try:
        return len((out / PROGRESS_NAME).read_text().splitlines()) - 1  # first line: the run's settings
    except OSError:
        return 0


def _summary(out):
    data = json.loads((out / "summary.json").read_text())
    return {k: v for k, v in data.items() if k not in VARYING_SUMMARY_KEYS}


def _report(out):
    return re.sub(r"Generated: [^<&]*", "", (out / "report.html").read_text())


def _interrupt_midway(model_path, scans, out, signum):
    """Start a slowed-down run in its own process, send ``signum`` after a few frames; (exit code, stderr)."""
    env = {**os.environ, "TPNET_TEST_INFER_FRAME_DELAY_S": "0.4"}
    command = [sys.executable, "-m", "tpnet.inference.cli", *_args(model_path, scans, out), "--workers", "1"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _finished_frames(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


@pytest.mark.slow  # two real processes importing torch: ~20 s each on two shared cores
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_is_marked_incomplete_and_resume_completes_it(tmp_path, setup, signum, capsys):
    model_path, scans, straight = setup
    out = tmp_path / "out"

    code, stderr = _interrupt_midway(model_path, scans, out, signum)

    assert code == 128 + signum
    assert "Traceback" not in stderr
    assert f"interrupted ({signal.Signals(signum).name})" in stderr and "--resume" in stderr
    partial = json.loads((out / "summary.json").read_text())
    assert partial["complete"] is False and partial["interrupted_by"] == signal.Signals(signum).name
    done = partial["frames_finished"]
    assert 3 <= done < N_FRAMES and partial["frames_remaining"] == N_FRAMES + 1 - done
    assert partial["counts"]["frames_processed"] + partial["counts"]["frames_rejected"] == done
    assert not (out / "report.html").exists()  # no report that looks finished

    # Another model or other settings: refused, the partial run left as it was.
    assert main([*_args(model_path, scans, out), "--resume", "--no-tta"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert _finished_frames(out) == done

    assert main([*_args(model_path, scans, out), "--resume"]) == 3
    assert f"resuming: {done} of {N_FRAMES + 1} frame(s) already finished" in capsys.readouterr().out

    assert (out / "detections.csv").read_text() == (straight / "detections.csv").read_text()
    assert _summary(out) == _summary(straight) and _summary(out)["complete"] is True
    assert _report(out) == _report(straight)
    for folder in ("masks", "overlays"):
        names = sorted(p.name for p in (straight / folder).iterdir())
        assert sorted(p.name for p in (out / folder).iterdir()) == names
        for name in names:
            assert (out / folder / name).read_bytes() == (straight / folder / name).read_bytes()
    assert not list(out.glob(".*"))  # progress file and lock gone: nothing left to resume

    assert main([*_args(model_path, scans, out), "--resume"]) == 3  # complete: nothing to do
    assert "nothing to resume" in capsys.readouterr().out


def test_ctrl_c_while_the_tool_is_still_importing_prints_no_traceback(tmp_path):
    """The console script's entry imports the tool inside its handler: a Ctrl-C in the first seconds is quiet.
    Without torch (ONNX) the import is too quick to hit with a timer, so a real SIGINT is sent from inside it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = (
        "import importlib.abc, os, signal, sys, time\n"
        "class SigintDuringImport(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tpnet.inference.cli':\n"
        "            os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "        return None\n"
        "sys.meta_path.insert(0, SigintDuringImport())\n"
        "from tpnet.inference.entry import main\n"
        "sys.exit(main(['--help']))\n"
    )
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so would the
    # tool: give it the default disposition a terminal's Ctrl-C meets.
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode == 130, (proc.returncode, err)
    assert "interrupted (SIGINT) before it started" in err
