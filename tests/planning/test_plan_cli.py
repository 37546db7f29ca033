"""``tpnet-data plan ROOT [--out JSON]``: the table and the JSON on a tiny dataset; a broken dataset is one line
naming the file and exit 2; the output never overwrites a file of the dataset."""

from __future__ import annotations

from foreign import write_foreign_dataset
from tpnet.planning.cli import main_plan
from tpnet.planning.plan import PLAN_KEYS, Plan


def test_plan_prints_the_table_and_writes_json(tmp_path, capsys):
    root = write_foreign_dataset(tmp_path / "foreign")
    out = tmp_path / "plan.json"
    assert main_plan(root, out) == 0
    printed = capsys.readouterr().out
    assert "experiment plan for foreign_lab" in printed and "data.patch_size" in printed
    plan = Plan.from_json(out.read_text())
    assert set(plan.values) == set(PLAN_KEYS)
    assert plan.values["spacing_mm"].source == "fingerprint"


def test_a_broken_dataset_names_the_file_and_exits_2(tmp_path, capsys):
    root = write_foreign_dataset(tmp_path / "foreign")
    broken = root / "P01" / "bmode"
    target = sorted(broken.iterdir())[0]
    target.write_bytes(b"\x89PNG broken")
    assert main_plan(root, None) == 2
    err = capsys.readouterr().err
    assert err.startswith("tpnet-data plan: ") and target.name in err and "Traceback" not in err


def test_out_never_overwrites_a_file_of_the_dataset(tmp_path, capsys):
    root = write_foreign_dataset(tmp_path / "foreign")
    before = (root / "manifest.csv").read_bytes()
    assert main_plan(root, root / "manifest.csv") == 2
    assert (root / "manifest.csv").read_bytes() == before
    assert "is a file of the dataset" in capsys.readouterr().err
