"""The benchmark plumbing: gpu_check.sh on a machine without CUDA, the Markdown report, and the
scripts' command lines (no timing is asserted anywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["bench_loss.py", "bench_train_iter.py", "bench_inference.py", "bench_coco_eval.py",
           "profile_train_step.py", "report.py", "bench_memory.py", "amp_inference_ap.py"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device runs the real check")
def test_gpu_check_without_cuda_skips_with_a_message_and_writes_the_table(tmp_path):
    env = dict(os.environ, PY=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "no CUDA device" in out.stdout and "skipped" in out.stdout
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| comparison | baseline | ours | ratio | goal |" in table and "skipped" in table


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_command_lines_parse(script, capsys, monkeypatch):
    """Each script's parser, in this interpreter (a fresh one per script costs seconds of imports;
    the report's and gpu_check's command lines run as subprocesses in the other tests)."""
    from helpers import load_script

    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put benchmarks/ on it
    module = load_script(ROOT / "benchmarks" / script, f"bench_script_{script[:-3]}")
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_report_makes_one_markdown_table(tmp_path):
    loss = {"device": "cuda", "kernel_mode": "compiled", "results": {"200000x80": {
        "fvcore FL": {"time_ms": 10.0}, "ours FL fused": {"time_ms": 1.0},
        "floor: one elementwise pass": {"time_ms": 0.25}}}}
    row = {"s_per_iter": 0.1, "peak_mib": 100.0}
    train = {"paper": {"detectron2 RetinaNet": row, "FocalRetinaNet (fused FL)": dict(row, s_per_iter=0.08),
                       "FocalRetinaNet OHEM 128/.5": dict(row, s_per_iter=0.09)}}
    inference = {"device": "cuda", "results": [{"depth": 50, "scale": 600, "d2_ms": 20.0, "focal_ms": 19.0,
                                                "ratio": 0.95}]}
    coco = {"images": 5000, "times_s": {"pycocotools": [70.0], "faster_coco_eval": [10.0]},
            "metrics": {b: {m: 30.0 for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
                        for b in ("pycocotools", "faster_coco_eval")}}
    paths = {}
    for name, data in (("loss", loss), ("train", train), ("inference", inference), ("coco", coco)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    out = tmp_path / "table.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), *sum(
        ([f"--{k}", str(v)] for k, v in paths.items()), []), "--out", str(out)], check=True,
        capture_output=True, timeout=300)
    lines = out.read_text().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 2 + 2 + 1 + 2 + 1 + 1  # header, loss x2 + kernels, train x2, inference, coco
    text = "\n".join(table)
    assert "10.0x faster" in text and "4.0x floor" in text and "| 0.800 | <= 0.90 |" in text
    assert "1.125" in text and "0.950" in text and "7.0x faster, AP diff 0.0e+00" in text
