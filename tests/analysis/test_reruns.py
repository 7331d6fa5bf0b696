"""focal_plugin.analysis.reruns and tools/compare_reruns.py: cells of two output folders paired by
key, per-row Welch differences, per-pair outcomes; the committed re-run comparison matches its cells."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from focal_plugin.analysis.reruns import compare_folders, to_markdown
from focal_plugin.analysis.seed_stats import welch

from helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def _cell(folder, key, row, seed, ap, sha="a" * 64, state="done", cpu="CPU A"):
    d = folder / "cells" / key
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"planned_by": row, "seed": seed}))
    (d / "status.json").write_text(json.dumps({"state": state, "metrics": {"AP": ap}, "device": {"cpu": cpu},
                                               "weights": {"uri": "w", "sha256": sha}}))


@pytest.fixture
def folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i, (fa, fb) in enumerate([(10.0, 11.0), (10.5, 12.5), (9.5, 10.0)]):
        _cell(a, f"fl{i}", "t/fl", i, fa)
        _cell(b, f"fl{i}", "t/fl", i, fb, sha="b" * 64, cpu="CPU B")
    for i, (fa, fb) in enumerate([(12.0, 12.0), (13.0, 13.0), (12.5, 12.5)]):
        _cell(a, f"ce{i}", "t/ce", i, fa)
        _cell(b, f"ce{i}", "t/ce", i, fb)
    _cell(a, "only_a", "t/fl", 3, 1.0)  # not in b: left out
    _cell(b, "failed", "t/ce", 3, 1.0, state="failed")
    _cell(a, "failed", "t/ce", 3, 1.0)
    return a, b


def test_cells_pair_by_key_and_rows_get_welchs_difference(folders):
    a, b = folders
    result = compare_folders(str(a), str(b))
    assert sorted(c["key"] for c in result["cells"]) == ["ce0", "ce1", "ce2", "fl0", "fl1", "fl2"]
    fl = result["rows"]["t/fl"]
    diff, ci, p = welch([11.0, 12.5, 10.0], [10.0, 10.5, 9.5])
    assert fl["diff"] == pytest.approx(diff) and fl["ci"] == pytest.approx(ci) and fl["p"] == pytest.approx(p)
    assert result["rows"]["t/ce"]["diff"] == 0 and result["rows"]["t/ce"]["relation"] == "within"
    assert not result["same_bytes"] and not result["bitwise_equal"]
    assert {c["key"]: c["same_weights"] for c in result["cells"]}["ce0"] is True
    pair = result["row_pairs"][0]
    assert pair["rows"] == ["t/ce", "t/fl"] and pair["a"]["relation"] == "better"  # ce beats fl on a
    # paired by seed on each side: ce − fl = (2.0, 2.5, 3.0) on a
    assert pair["a"]["paired"]["diffs"] == pytest.approx([2.0, 2.5, 3.0]) and pair["a"]["paired"]["n"] == 3
    md = to_markdown(result, "T")
    assert "| `fl1` | t/fl | 1 | 10.50 | 12.50 | +2.00 | no | CPU A | CPU B |" in md
    assert "| t/ce | 3 | 12.50 ± 0.50 | 12.50 ± 0.50 | +0.00 |" in md


def test_the_tool_writes_both_files_and_refuses_folders_without_common_cells(folders, tmp_path, capsys):
    tool = load_script(ROOT / "tools" / "compare_reruns.py", "compare_reruns_tl")
    a, b = folders
    assert tool.main([str(a), str(b), "--rows", "t/ce"]) == 0
    saved = json.loads((b / "rerun_comparison.json").read_text())
    assert list(saved["rows"]) == ["t/ce"] and saved["bitwise_equal"] and saved["same_bytes"]
    assert (b / "rerun_comparison.md").read_text().startswith("# Re-run comparison")
    empty = tmp_path / "empty"
    (empty / "cells").mkdir(parents=True)
    assert tool.main([str(a), str(empty)]) == 1
    assert tool.main([str(a), str(tmp_path / "nope")]) == 2
    assert "holds no cells/ folder" in capsys.readouterr().err


COMMITTED = ROOT / "results" / "mini" / "v3_rerun" / "rerun_comparison.json"


@pytest.mark.skipif(not COMMITTED.is_file(), reason="no committed re-run comparison")
def test_the_committed_rerun_comparison_matches_its_cells():
    committed = json.loads(COMMITTED.read_text())
    rebuilt = compare_folders(os.path.join(ROOT, committed["a"]), os.path.join(ROOT, committed["b"]),
                              committed["metric"], committed.get("only_rows") or None)
    assert [c["key"] for c in rebuilt["cells"]] == [c["key"] for c in committed["cells"]]
    for new, old in zip(rebuilt["cells"], committed["cells"]):
        assert (new["a"], new["b"], new["same_weights"]) == (old["a"], old["b"], old["same_weights"])
    for row, r in committed["rows"].items():
        assert rebuilt["rows"][row]["diff"] == pytest.approx(r["diff"], abs=1e-12)
        assert rebuilt["rows"][row]["relation"] == r["relation"]


def test_a_metric_a_cell_has_no_value_of_is_left_out(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _cell(a, "k0", "t/fl", 0, 10.0)
    _cell(b, "k0", "t/fl", 0, 11.0)
    _cell(a, "k1", "t/fl", 1, None)  # e.g. APs of a test set without small objects
    _cell(b, "k1", "t/fl", 1, 12.0)
    result = compare_folders(str(a), str(b))
    assert [c["key"] for c in result["cells"]] == ["k0"]
    assert compare_folders(str(a), str(b), metric="ms")["cells"] == []
