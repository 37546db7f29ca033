"""Fixtures shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from foreign import write_foreign_dataset


@pytest.fixture(scope="module")
def foreign_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contract dataset written by another tool (tests/foreign.py); copy it (shutil.copytree) to alter it."""
    return write_foreign_dataset(tmp_path_factory.mktemp("foreign") / "ds")
