"""tools/ablate.py end to end with real detectron2 training on the tiny synthetic preset.

- ``--workers 1`` and ``--workers 2`` give bitwise the same cells (fixed thread count per cell);
- (slow) two cells train, evaluate and are timed (ms/image); the runner is SIGKILLed while the
  second cell trains and then resumed: the first cell is kept, the second continues from its
  detectron2 checkpoint; a table timed another way times the same cells without training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = """\
title: "E2E: tiny FL vs CE"
source: "tiny synthetic preset"
columns: [loss]
metrics: [AP, AP50, ms]
timing: {images: 3, warmup: 1}
scales:
  mini: {base: mini/smoke_tiny.yaml}
overrides: {SOLVER.MAX_ITER: 8, SOLVER.STEPS: [6], SOLVER.CHECKPOINT_PERIOD: 2}
rows:
  - {id: ce, settings: {loss: CE}, overrides: {MODEL.FOCAL.LOSS: sigmoid_ce, MODEL.FOCAL.ALPHA: 0.75},
     paper: {AP: 31.1, AP50: 49.4}}
  - {id: fl, settings: {loss: FL}, paper: {AP: 34.0, AP50: 52.5}}
claims:
  - {text: "FL beats CE", type: better, row: fl, than: ce, metric: AP}
"""


def _ablate(tmp_path, *args, spec="e2e.yaml", out="out"):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, os.path.join(ROOT, "tools", "ablate.py"), "--spec", str(tmp_path / spec),
           "--output-dir", str(tmp_path / out), "--no-progress", "--no-imbalance", *args]
    return subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _cells(out):
    """key -> (status, cell.json) of every cell under ``out``."""
    return {p.parent.name: (json.loads(p.read_text()), json.loads((p.parent / "cell.json").read_text()))
            for p in (out / "cells").glob("*/status.json")}


def test_workers_1_and_2_give_bitwise_the_same_cells(tmp_path):
    import torch

    (tmp_path / "e2e.yaml").write_text(SPEC.replace("metrics: [AP, AP50, ms]", "metrics: [AP, AP50]")
                                       .replace("timing: {images: 3, warmup: 1}\n", "")
                                       .replace("SOLVER.MAX_ITER: 8", "SOLVER.MAX_ITER: 4")
                                       .replace("paper: {AP: 31.1, AP50: 49.4}", "paper: {AP: 31.1}")
                                       .replace("paper: {AP: 34.0, AP50: 52.5}", "paper: {AP: 34.0}"))
    for workers, out in (("1", "one"), ("2", "two")):
        proc = _ablate(tmp_path, "--workers", workers, out=out)
        text, _ = proc.communicate(timeout=1200)
        assert proc.returncode == 0, text[-3000:]
    one, two = _cells(tmp_path / "one"), _cells(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 2  # one key per config + seed, wherever it ran
    for key in one:
        assert one[key][0]["metrics"] == two[key][0]["metrics"], key
        assert one[key][0]["device"]["torch_threads"] == two[key][0]["device"]["torch_threads"] == 1
        a = torch.load(tmp_path / "one" / "cells" / key / "model_final.pth", map_location="cpu")["model"]
        b = torch.load(tmp_path / "two" / "cells" / key / "model_final.pth", map_location="cpu")["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key


@pytest.mark.slow
def test_real_cells_sigkill_resume_timing_report(tmp_path):
    (tmp_path / "e2e.yaml").write_text(SPEC)
    first = _ablate(tmp_path, "--workers", "1")
    deadline = time.time() + 1200
    while len(list((tmp_path / "out" / "cells").glob("*/last_checkpoint"))) < 2:  # the 2nd cell's 1st
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint of the second cell"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    cells = _cells(tmp_path / "out")
    done = {k: v for k, v in cells.items() if v[0]["state"] == "done"}
    killed = {k: v for k, v in cells.items() if v[0]["state"] == "running"}
    assert len(done) == 1 and len(killed) == 1
    ce = next(iter(done))
    assert json.loads((tmp_path / "out" / "cells" / ce / "timing.json").read_text())["images"] == 3

    again = _ablate(tmp_path, "--workers", "2")
    text, _ = again.communicate(timeout=1800)
    assert again.returncode == 0, text[-3000:]
    assert "1 finished cell(s) kept, 1 to run" in text
    cells = _cells(tmp_path / "out")
    assert cells[ce] == done[ce]  # not rerun
    fl_key = next(iter(killed))
    fl, fl_dir = cells[fl_key][0], tmp_path / "out" / "cells" / fl_key
    assert fl["state"] == "done" and fl["attempts"] == 2
    assert fl["resumed_from_iter"] >= 2 and fl["iterations"] == 8 - fl["resumed_from_iter"]
    assert (fl_dir / "config.yaml").is_file() and (fl_dir / "log.txt").is_file()
    assert sorted(p.name for p in fl_dir.glob("*.pth")) == ["model_final.pth"] and fl["pruned_checkpoints"]
    assert json.loads((fl_dir / "timing.json").read_text())["ms"] > 0
    md = (tmp_path / "out" / "e2e" / "report.md").read_text()
    assert "FL beats CE" in md and "**inconclusive**" in md  # one seed

    # the same cells timed another way (Table 2 / 1e vs other tables): timed again, not trained
    (tmp_path / "e2e_retimed.yaml").write_text(SPEC.replace("timing: {images: 3, warmup: 1}",
                                                            "timing: {images: 2, warmup: 1}"))
    retimed = _ablate(tmp_path, "--only", "fl", "--workers", "1", spec="e2e_retimed.yaml")
    text, _ = retimed.communicate(timeout=1800)
    assert retimed.returncode == 0, text[-3000:]
    assert _cells(tmp_path / "out")[fl_key][0] == fl  # no training step
    timing = json.loads((fl_dir / "timing.json").read_text())
    assert timing["images"] == 2 and timing["ms"] > 0
