#!/usr/bin/env python
"""Memory that must not grow with the dataset or with one crowded image, ours vs detectron2's.

    python benchmarks/bench_memory.py                      # both parts, the defaults below
    python benchmarks/bench_memory.py --records 40000 --boxes 3000 --json mem.json

* ``loader``: the resident memory a training loader keeps after it is built from ``--records``
  COCO-style records (7 boxes each, registered as a dataset): detectron2's
  ``build_detection_train_loader(cfg)`` against our ``Trainer.build_train_loader(cfg)`` (which
  adds the unreadable-image fallback). Each is built in a fresh interpreter; the figure is its
  VmRSS after building, garbage collection and ``malloc_trim`` minus its VmRSS before the dataset
  existed. detectron2 serializes the records into one byte buffer; a loader that keeps the plain
  list of dicts alive costs several times that, in the trainer and in every loader worker.
* ``labelling``: anchor labelling of a batch of ``--batch`` images at the paper's 600 px scale
  (RetinaNet's 9 anchors per location on P3-P7, IoU thresholds .4/.5), one image holding
  ``--boxes`` ground-truth boxes and the others 5: detectron2's ``RetinaNet.label_anchors``
  against ours (``fast_ops.label_anchors``). Peak memory is the rise of the process's peak
  resident set (see ``_peak_memory``), time the median of ``--reps`` calls. The labels are checked
  equal before anything is printed.

Ratios are ours / detectron2's, measured in the same run. Time ratios need an otherwise idle
machine; the memory figures do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peak_memory import _status_kib, _trim_heap, mmap_small_allocations, peak_mib  # noqa: E402

DATASET = "bench_memory_records"


def _records(n: int):
    box = {"bbox": [10.0, 10.0, 40.0, 30.0], "bbox_mode": 1, "category_id": 3, "iscrowd": 0}
    return [{"file_name": f"/nonexistent/{i:012d}.jpg", "height": 480, "width": 640, "image_id": i,
             "annotations": [dict(box, category_id=j) for j in range(7)]} for i in range(n)]


def _loader_kept_mib(variant: str, records: int) -> float:
    """In this interpreter: MiB the built loader keeps (see the module docstring)."""
    import gc

    from detectron2.data import DatasetCatalog, build_detection_train_loader

    from focal_plugin.engine import Trainer, setup_cfg

    DatasetCatalog.register(DATASET, lambda: _records(records))
    cfg = setup_cfg(opts=["DATASETS.TRAIN", f"('{DATASET}',)", "DATALOADER.NUM_WORKERS", "0"])
    gc.collect()
    _trim_heap()
    before = _status_kib("VmRSS")
    build = build_detection_train_loader if variant == "detectron2" else Trainer.build_train_loader
    loader = build(cfg)
    gc.collect()
    _trim_heap()
    kept = (_status_kib("VmRSS") - before) / 1024
    del loader
    return kept


def bench_loader(records: int) -> dict:
    out = {}
    for variant in ("detectron2", "ours"):
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "--_loader-variant", variant,
                              "--records", str(records)], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"the {variant} loader measurement failed:\n{run.stderr[-3000:]}")
        out[variant] = float(run.stdout.strip().splitlines()[-1])
    out["ratio"] = out["ours"] / out["detectron2"]
    return out


def _batch(boxes: int, batch: int, size: int, max_size: int):
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from detectron2.structures import Boxes, Instances

    gen = DefaultAnchorGenerator(
        sizes=[[s * 2 ** (i / 3) for i in range(3)] for s in (32, 64, 128, 256, 512)],
        aspect_ratios=[[0.5, 1.0, 2.0]], strides=[8, 16, 32, 64, 128])
    feats = [torch.empty(1, 1, -(-size // s), -(-max_size // s)) for s in (8, 16, 32, 64, 128)]
    anchors = gen(feats)
    g = torch.Generator().manual_seed(0)
    gts = []
    for i in range(batch):
        n = boxes if i == 0 else 5
        xy = torch.rand(n, 2, generator=g) * torch.tensor([max_size - 64.0, size - 64.0])
        wh = 8 + torch.rand(n, 2, generator=g) * 56
        inst = Instances((size, max_size))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 80, (n,), generator=g)
        gts.append(inst)
    return anchors, gts


def bench_labelling(boxes: int, batch: int, reps: int, size: int = 600, max_size: int = 1000) -> dict:
    from detectron2.modeling.matcher import Matcher
    from detectron2.modeling.meta_arch.retinanet import RetinaNet

    from focal_plugin.modeling import fast_ops

    anchors, gts = _batch(boxes, batch, size, max_size)
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    methods = {
        "detectron2": lambda: RetinaNet.label_anchors(
            SimpleNamespace(anchor_matcher=matcher, num_classes=80), anchors, gts),
        "ours": lambda: fast_ops.label_anchors(anchors, gts, matcher, 80),
    }
    with torch.no_grad():
        ref, got = methods["detectron2"](), methods["ours"]()
        for a, b in zip(ref[0], got[0]):
            if not torch.equal(a, b):
                raise AssertionError("ours and detectron2's anchor labels differ")
        times = {k: [] for k in methods}
        for _ in range(reps):
            for name, fn in methods.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        mmap_small_allocations()
        out = {"anchors": int(sum(len(a) for a in anchors)), "boxes": [len(x) for x in gts]}
        for name, fn in methods.items():
            out[name] = {"time_s": statistics.median(times[name]),
                         "peak_mib": peak_mib(fn, torch.device("cpu"))}
    out["time_ratio"] = out["ours"]["time_s"] / out["detectron2"]["time_s"]
    if out["ours"]["peak_mib"] is not None and out["detectron2"]["peak_mib"]:
        out["memory_ratio"] = out["ours"]["peak_mib"] / out["detectron2"]["peak_mib"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=40000, help="dataset records for the loader part")
    p.add_argument("--boxes", type=int, default=3000, help="boxes in the crowded image")
    p.add_argument("--batch", type=int, default=4, help="images per labelled batch")
    p.add_argument("--reps", type=int, default=3, help="timed calls per labelling method")
    p.add_argument("--only", choices=("loader", "labelling"), help="run one part")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--_loader-variant", dest="loader_variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loader_variant:  # the fresh interpreter of one loader measurement
        print(_loader_kept_mib(args.loader_variant, args.records))
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    if args.only in (None, "loader"):
        r = results["loader"] = bench_loader(args.records)
        print(f"training loader over {args.records:,} records keeps: detectron2 {r['detectron2']:.0f} MiB, "
              f"ours {r['ours']:.0f} MiB ({r['ratio']:.2f}x)")
    if args.only in (None, "labelling"):
        r = results["labelling"] = bench_labelling(args.boxes, args.batch, args.reps)
        d, o = r["detectron2"], r["ours"]
        print(f"anchor labelling, {r['anchors']:,} anchors, boxes per image {r['boxes']}: "
              f"detectron2 {d['time_s']:.2f} s / {d['peak_mib']:.0f} MiB, "
              f"ours {o['time_s']:.2f} s / {o['peak_mib']:.0f} MiB "
              f"(time {r['time_ratio']:.2f}x, memory {r.get('memory_ratio', float('nan')):.2f}x)")
    if args.json:
        from focal_plugin.io import write_json_atomic

        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
