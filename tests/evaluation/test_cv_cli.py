"""``tpnet-cv``'s errors as a person meets them: the console script in a fresh process, one line naming the
folder, exit 2, before numpy and scipy are imported. (summarize and compare on a real sweep: test_cv_sweep.py;
the comparison's logic on synthetic folds: test_cross_validation.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TPNET_CV = str(Path(sys.executable).with_name("tpnet-cv"))


def tpnet_cv(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([TPNET_CV, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_errors_are_one_line_naming_the_folder(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("summarize", tmp_path / "missing"), ("compare", empty), ("summarize", empty)):
        result = tpnet_cv(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(f"tpnet-cv: {args[1]}") and result.stderr.count("\n") == 1, (
            result.stderr
        )
        assert "Traceback" not in result.stderr
