#!/usr/bin/env python
"""One Markdown table from the benchmarks' ``--json`` files (any subset of them).

    python benchmarks/report.py --loss loss.json --train train.json --inference inf.json \\
        --coco coco.json --out table.md [--note "measured under load (load avg 6.1)"]

Rows: what was compared, the baseline measured in the same run, ours, the ratio and the goal
of the project's speed targets where there is one (time ratios: ours / baseline, lower is
better; speedups: x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import List, Optional

import torch


def _load(path: Optional[str]):
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


def loss_rows(data) -> List[tuple]:
    rows = []
    device = data.get("device", "cpu")
    for size, res in data["results"].items():
        base, ours = res.get("fvcore FL"), res.get("ours FL fused")
        floor = res.get("floor: one elementwise pass")
        if base and ours:
            b, o = base["time_ms"], ours["time_ms"]
            rows.append((f"FL fwd+bwd {size} ({device})", f"fvcore {b:.2f} ms", f"fused {o:.2f} ms",
                         f"{b / o:.1f}x faster", ""))
        if ours and floor:
            f, o = floor["time_ms"], ours["time_ms"]
            goal = "<= 6x" if size.startswith("200000x") else ""
            rows.append((f"fused FL vs one elementwise pass {size} ({device})", f"floor {f:.2f} ms",
                         f"fused {o:.2f} ms", f"{o / f:.1f}x floor", goal))
    if data.get("kernel_mode"):
        rows.append((f"fused kernels on {device}", "", data["kernel_mode"], "", "compiled"))
    return rows


def _mem(r) -> str:
    return "" if r.get("peak_mib") is None else f", {r['peak_mib']:.0f} MiB"


def train_rows(data) -> List[tuple]:
    rows = []
    for setting, res in data.items():
        d2, fl = res["detectron2 RetinaNet"], res["FocalRetinaNet (fused FL)"]
        rows.append((f"train iter {setting}: FocalRetinaNet FL / RetinaNet",
                     f"{d2['s_per_iter']:.3f} s{_mem(d2)}", f"{fl['s_per_iter']:.3f} s{_mem(fl)}",
                     f"{fl['s_per_iter'] / d2['s_per_iter']:.3f}",
                     {"paper": "<= 0.90", "small": "<= 1.0"}.get(setting, "")))
        for label, r in res.items():
            if label in ("detectron2 RetinaNet", "FocalRetinaNet (fused FL)"):
                continue
            mem_ratio = (f", mem {r['peak_mib'] / fl['peak_mib']:.2f}"
                         if r.get("peak_mib") is not None and fl.get("peak_mib") else "")
            rate = f", {r['images_per_s']:.1f} img/s" if r.get("images_per_s") else ""
            rows.append((f"train iter {setting}: {label.replace('FocalRetinaNet ', '')} / FL",
                         f"{fl['s_per_iter']:.3f} s", f"{r['s_per_iter']:.3f} s{_mem(r)}{rate}",
                         f"{r['s_per_iter'] / fl['s_per_iter']:.3f}{mem_ratio}; / RetinaNet "
                         f"{r['s_per_iter'] / d2['s_per_iter']:.3f}",
                         "<= 1.3" if "OHEM" in label else ""))
    return rows


def _merge_train(files: List[str]) -> dict:
    """The settings of several bench_train_iter.py files; a setting met again keeps both, the
    later one named by its file."""
    out: dict = {}
    for f in files:
        for k, v in (_load(f) or {}).items():
            out[k if k not in out else f"{k} ({os.path.basename(f)})"] = v
    return out


def inference_rows(data) -> List[tuple]:
    rows = []
    for r in data["results"]:
        where = f"R{r['depth']}-FPN {r['scale']} px, batch 1 ({data['device']})"
        rows.append((f"inference {where}", f"{r['d2_ms']:.1f} ms", f"{r['focal_ms']:.1f} ms",
                     f"{r['ratio']:.3f}", "<= 1.0"))
        if "amp_ms" in r:  # bench_inference.py --amp
            rows.append((f"inference TEST.AMP / float32, {where}", f"{r['focal_ms']:.1f} ms",
                         f"{r['amp_ms']:.1f} ms", f"{r['amp_ratio']:.3f}", ""))
    return rows


def coco_rows(data) -> List[tuple]:
    t = {b: sorted(v)[len(v) // 2] for b, v in data["times_s"].items()}
    diff = max(abs(data["metrics"]["pycocotools"][m] - data["metrics"]["faster_coco_eval"][m])
               for m in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    return [(f"COCO bbox eval, {data['images']} images", f"pycocotools {t['pycocotools']:.1f} s",
             f"faster-coco-eval {t['faster_coco_eval']:.1f} s",
             f"{t['pycocotools'] / t['faster_coco_eval']:.1f}x faster, AP diff {diff:.1e}", ">= 5x, 1e-4")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("loss", "inference", "coco"):
        parser.add_argument(f"--{name}", default=None)
    parser.add_argument("--train", action="append", default=[],
                        help="bench_train_iter.py --json output (repeatable: settings are merged)")
    parser.add_argument("--skipped", action="append", default=[],
                        help="a line saying what was skipped and why (repeatable)")
    parser.add_argument("--note", default=None, help="conditions of the measurement (load, device)")
    parser.add_argument("--out", default=None, help="write the Markdown here (and print it)")
    args = parser.parse_args(argv)
    rows = []
    for name, fn in (("loss", loss_rows), ("train", train_rows), ("inference", inference_rows),
                     ("coco", coco_rows)):
        data = _merge_train(args.train) if name == "train" else _load(getattr(args, name))
        if data:
            rows += fn(data)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    lines = [f"Benchmarks: torch {torch.__version__}, {gpu}, {platform.processor() or platform.machine()}"
             + (f"; {args.note}" if args.note else ""), ""]
    lines += ["| comparison | baseline | ours | ratio | goal |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += [f"| {s} | | | skipped | |" for s in args.skipped]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from focal_plugin.io import write_text_atomic  # (installed by make setup)

        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
