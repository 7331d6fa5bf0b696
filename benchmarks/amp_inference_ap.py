#!/usr/bin/env python
"""Does inference under autocast (``TEST.AMP.ENABLED``) keep the AP? Each trained cell's final
weights evaluated twice on its own test set, float32 and with TEST.AMP (bfloat16 on the CPU,
float16 on CUDA), in this process; per model the AP difference, over models the mean difference
with its 95 % interval by the paired t-test (the same model both ways) and by Welch's t (the
project's rule for two rows), and the evaluation times.

    python benchmarks/amp_inference_ap.py results/mini/v3_rerun/cells/KEY1 KEY2 ... \\
        --out results/mini/v3_rerun/amp_inference

Writes ``<out>/report.md`` and ``<out>/report.json``. Needs each cell's ``config.yaml`` and
``model_final.pth`` (checkpoints are not committed: run it where the cells were trained).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import focal_plugin  # noqa: F401
from focal_plugin.analysis.seed_stats import RowStats, paired, welch
from focal_plugin.engine import evaluate, setup_cfg
from focal_plugin.io import write_json_atomic, write_text_atomic

METRICS = ("AP", "AP50", "AP75")


def _evaluate(cell: str, amp: bool, out_dir: str) -> dict:
    cfg = setup_cfg(os.path.join(cell, "config.yaml"),
                    ["OUTPUT_DIR", out_dir, "TEST.AMP.ENABLED", str(amp)])
    result = evaluate(cfg, os.path.join(cell, "model_final.pth"))
    (bbox,) = [m["bbox"] for m in result["metrics"].values()][:1]
    return {"metrics": {m: bbox[m] for m in METRICS}, "eval_s": result["eval_wall_time_s"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", help="cell folders (config.yaml, model_final.pth)")
    parser.add_argument("--out", required=True, help="folder for report.md / report.json")
    args = parser.parse_args(argv)
    missing = [c for c in args.cells if not os.path.isfile(os.path.join(c, "model_final.pth"))]
    if missing:
        print(f"error: no model_final.pth in {missing}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            fp32 = _evaluate(cell, False, os.path.join(tmp, "fp32"))
            amp = _evaluate(cell, True, os.path.join(tmp, "amp"))
            rows.append({"cell": os.path.basename(os.path.normpath(cell)), "fp32": fp32, "amp": amp})
            print(f"{rows[-1]['cell']}: AP {fp32['metrics']['AP']:.3f} (float32) {amp['metrics']['AP']:.3f} "
                  f"(TEST.AMP); eval {fp32['eval_s']:.1f} s / {amp['eval_s']:.1f} s", flush=True)
    summary = {}
    for m in METRICS:
        a = [r["amp"]["metrics"][m] for r in rows]
        f = [r["fp32"]["metrics"][m] for r in rows]
        entry = {"amp": a, "fp32": f}
        if len(rows) >= 2:
            # the same model both ways: paired by model (seed_stats.paired, keyed by position)
            entry["paired"] = paired(RowStats("amp", by_seed={m: dict(enumerate(a))}),
                                     RowStats("fp32", by_seed={m: dict(enumerate(f))}), m)
            entry["welch"] = dict(zip(("diff", "ci", "p"), welch(a, f)))
        summary[m] = entry
    time_ratio = statistics.fmean(r["amp"]["eval_s"] / r["fp32"]["eval_s"] for r in rows)
    report = {"cells": rows, "summary": summary, "eval_time_ratio_mean": time_ratio}
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "report.json"), report, indent=1)
    lines = ["# Inference under autocast (TEST.AMP) vs float32: AP of the same weights", "",
             "Synthetic data. Each model evaluated twice on its test set; AMP − float32.", "",
             "| cell | AP float32 | AP TEST.AMP | Δ AP | Δ AP50 | Δ AP75 | eval s (fp32 / AMP) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = {m: r["amp"]["metrics"][m] - r["fp32"]["metrics"][m] for m in METRICS}
        lines.append(f"| `{r['cell']}` | {r['fp32']['metrics']['AP']:.3f} | "
                     f"{r['amp']['metrics']['AP']:.3f} | {d['AP']:+.3f} | {d['AP50']:+.3f} | "
                     f"{d['AP75']:+.3f} | "
                     f"{r['fp32']['eval_s']:.1f} / {r['amp']['eval_s']:.1f} |")
    lines.append("")
    for m, e in summary.items():
        if "paired" in e:
            p, w = e["paired"], e["welch"]
            lines.append(f"- {m}: mean Δ {p['diff']:+.3f}, paired 95 % CI [{p['ci'][0]:+.3f}, "
                         f"{p['ci'][1]:+.3f}] (p {p['p']:.2f}); Welch CI [{w['ci'][0]:+.3f}, "
                         f"{w['ci'][1]:+.3f}] (p {w['p']:.2f}); {len(rows)} models")
    lines.append(f"- evaluation time, AMP / float32: {time_ratio:.2f} (the whole evaluation: data, "
                 f"model, COCOeval; load average {os.getloadavg()[0]:.1f} at the end: other jobs make "
                 "it noise; benchmarks/bench_inference.py --amp times the model alone)")
    write_text_atomic(os.path.join(args.out, "report.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
