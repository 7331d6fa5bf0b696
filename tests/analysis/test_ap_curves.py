"""AP vs iteration curves (focal_plugin.analysis.ap_curves, tools/ap_curve.py): from a
TEST.EVAL_PERIOD run's metrics.json, and from a run's saved checkpoints, evaluated."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from focal_plugin.analysis.ap_curves import ap_curve, checkpoint_curve, write_curves

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "mini" / "smoke_tiny.yaml")


def _metrics(path, lines):
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_ap_curve_tool_takes_labels_with_equals_signs(tmp_path):
    _metrics(tmp_path / "metrics.json", [{"iteration": 9, "bbox/AP": 1.0, "bbox/AP50": 2.0,
                                          "bbox/AP75": 0.5}])
    cmd = [sys.executable, str(ROOT / "tools" / "ap_curve.py"), "--run", f"FL γ=2 α=.25={tmp_path}",
           "--out", str(tmp_path / "c")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "FL γ=2 α=.25: 10: 1.00" in proc.stdout and (tmp_path / "c.png").exists()


def test_ap_curve_pairs_each_evaluation_with_the_losses_logged_before_it(tmp_path):
    _metrics(tmp_path / "metrics.json", [
        {"iteration": 19, "loss_cls": 3.0, "total_loss": 3.5},
        {"iteration": 39, "loss_cls": 2.0, "total_loss": 2.4},
        {"iteration": 39, "bbox/AP": 1.0, "bbox/AP50": 2.0, "bbox/AP75": 0.5},
        {"iteration": 59, "loss_cls": 1.0, "total_loss": 1.2},
        {"iteration": 60, "bbox/AP": 4.0, "bbox/AP50": 6.0, "bbox/AP75": 3.0},  # the final evaluation
    ])
    (tmp_path / "results.json").write_text(json.dumps({"max_iter": 60}))
    rows = ap_curve(tmp_path)
    assert [(r["iter"], r["AP"], r["loss_cls"]) for r in rows] == [(40, 1.0, 2.0), (60, 4.0, 1.0)]
    assert ap_curve(tmp_path / "metrics.json") == rows  # the file itself is accepted too
    # without results.json the final evaluation (logged at max_iter) is placed at the last
    # training iteration logged
    (tmp_path / "results.json").unlink()
    assert [r["iter"] for r in ap_curve(tmp_path)] == [40, 60]
    write_curves({"run a": rows, "run b": str(tmp_path)}, tmp_path / "c.csv", tmp_path / "c.png", title="t")
    with open(tmp_path / "c.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["run"], r["iter"]) for r in table] == [("run a", "40"), ("run a", "60"), ("run b", "40"),
                                                      ("run b", "60")]
    assert (tmp_path / "c.png").stat().st_size > 0


def test_checkpoint_curve_evaluates_each_saved_checkpoint(tmp_path, data_root, smoke_run):
    """A 4-iteration run with a checkpoint every 2: iterations 2 and 4 (model_final) evaluated once."""
    run = Path(smoke_run[0])
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("model_0000001.pth", "model_final.pth", "metrics.json"):
        shutil.copy(run / name, ckpts / name)
    rows = checkpoint_curve(ckpts, SMOKE)
    assert [r["iter"] for r in rows] == [2, 4] and rows[-1]["loss_cls"] is not None  # logged at 4
    final = json.loads((run / "results.json").read_text())["metrics"]["dense_shapes_tiny_val"]["bbox"]["AP"]
    assert rows[-1]["AP"] == pytest.approx(final, abs=1e-6), "model_final evaluates as the run's evaluation"
    first = (ckpts / "eval_2" / "results.json").stat().st_mtime_ns
    assert checkpoint_curve(ckpts, SMOKE) == rows  # read back, not evaluated again
    assert (ckpts / "eval_2" / "results.json").stat().st_mtime_ns == first
    # other test settings, or a checkpoint file replaced since: evaluated again, never the old numbers
    fewer = checkpoint_curve(ckpts, SMOKE, ["TEST.DETECTIONS_PER_IMAGE", "1"])
    assert (ckpts / "eval_2" / "results.json").stat().st_mtime_ns != first
    assert fewer[-1]["AP"] <= rows[-1]["AP"]
    assert checkpoint_curve(ckpts, SMOKE) == rows
    again = (ckpts / "eval_4" / "results.json").stat().st_mtime_ns
    os.utime(ckpts / "model_final.pth")
    assert checkpoint_curve(ckpts, SMOKE) == rows
    assert (ckpts / "eval_4" / "results.json").stat().st_mtime_ns != again
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_.*empty"):
        checkpoint_curve(tmp_path / "empty", SMOKE)


def test_ap_curve_tool_names_the_run_it_cannot_read(tmp_path):
    (tmp_path / "no_metrics").mkdir()
    _metrics(tmp_path / "metrics.json", [{"iteration": 19, "loss_cls": 3.0, "total_loss": 3.5}])
    for run, message in ((tmp_path / "no_metrics", "no detectron2 metrics.json"),
                         (tmp_path, "no bbox/AP entry")):
        cmd = [sys.executable, str(ROOT / "tools" / "ap_curve.py"), "--run", f"a={run}", "--out",
               str(tmp_path / "c")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr and f"a={run}" in proc.stderr, proc.stderr
        assert not (tmp_path / "c.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--run", "no-label-here"], "expected LABEL=PATH"),
    (["--run", "a=.", "--run", "a=tools"], "label(s) ['a'] given twice"),
    (["--run", "γ=2=no/such/dir"], "no existing path after any '='"),
    (["--checkpoints", "a=b"], "--checkpoints needs --config-file"),
    ([], "give at least one --run or --checkpoints"),
])
def test_ap_curve_tool_usage_errors(tmp_path, args, message, capsys, monkeypatch):
    """In this interpreter (the command line itself: the test above): each usage error exits
    non-zero with its message."""
    from helpers import load_script

    tool = load_script(ROOT / "tools" / "ap_curve.py", "ap_curve_tool")
    monkeypatch.chdir(ROOT)  # "a=." and "a=tools" name existing folders
    with pytest.raises(SystemExit) as info:
        tool.main([*args, "--out", str(tmp_path / "x")])
    out = capsys.readouterr()
    assert info.value.code not in (0, None) and message in f"{info.value.code} {out.err} {out.out}"
