#!/usr/bin/env python
"""COCO bbox evaluation time: FocalCOCOEvaluator's backends, faster-coco-eval vs pycocotools.

    python benchmarks/bench_coco_eval.py            # 5000 images, ~80 detections each, 80 classes
    python benchmarks/bench_coco_eval.py --quick    # 500 images, 1 repetition

What is measured: ``FocalCOCOEvaluator._eval_predictions`` (results already in COCO json form,
as after ``process``): loading the results onto the ground truth, matching, accumulation and
the summary; the same evaluator class, ground truth and detections for both backends, only
``backend`` differs ("pycocotools" runs detectron2's own path with pycocotools' ``COCOeval``,
``use_fast_impl=False``, as where detectron2 has no compiled ops). Median of ``--reps``
repetitions taken round-robin over the backends (load from other processes hits both alike).
Prints both times, their ratio, and every AP of both backends with the largest difference.

Data (``coco_like``): COCO-like synthetic ground truth (640x480 images, 7.3 objects per image on
average as in COCO train2017, box sides log-uniform 4..400 px so small/medium/large all occur,
1% crowd boxes) and detections per image: jittered copies of the ground truth (right class
mostly) and random false positives, ~80 in all, scores uniform.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import focal_plugin  # noqa: E402, F401

# isort: split
from detectron2.data import MetadataCatalog  # noqa: E402

from focal_plugin.evaluation import FocalCOCOEvaluator  # noqa: E402
from focal_plugin.io import write_json_atomic  # noqa: E402

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_like(num_images: int, dets_per_image: int = 80, num_classes: int = 80,
              seed: int = 0) -> Tuple[dict, List[dict]]:
    """(ground truth as a COCO json dict, detections as COCO result dicts); see module docstring."""
    rng = np.random.default_rng(seed)
    w, h = 640, 480
    images, anns, dets = [], [], []
    for img_id in range(1, num_images + 1):
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id}.jpg"})
        n = int(rng.poisson(7.3))
        side = np.exp(rng.uniform(np.log(4), np.log(400), (n, 2)))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - side).clip(min=1)
        cls = rng.integers(1, num_classes + 1, n)
        for j in range(n):
            bw, bh = (float(v) for v in side[j])
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(cls[j]),
                         "bbox": [float(xy[j, 0]), float(xy[j, 1]), bw, bh], "area": bw * bh,
                         "iscrowd": int(rng.random() < 0.01)})
            for _ in range(int(rng.integers(1, 6))):  # hits of varying quality
                jit = rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]
                c = int(cls[j]) if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1))
                dets.append({"image_id": img_id, "category_id": c, "score": float(rng.random()),
                             "bbox": [float(xy[j, 0] + jit[0]), float(xy[j, 1] + jit[1]),
                                      max(1.0, bw + jit[2]), max(1.0, bh + jit[3])]})
        own = sum(1 for d in dets if d["image_id"] == img_id) if n else 0
        for _ in range(max(0, dets_per_image - own)):  # false positives
            s = np.exp(rng.uniform(np.log(8), np.log(300), 2))
            x, y = rng.uniform(0, 1) * (w - s[0]), rng.uniform(0, 1) * (h - s[1])
            dets.append({"image_id": img_id, "category_id": int(rng.integers(1, num_classes + 1)),
                         "score": float(rng.random()) * 0.7,
                         "bbox": [float(x), float(y), float(s[0]), float(s[1])]})
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def register(gt: dict, directory: str, name: str) -> str:
    """Write ``gt`` to ``directory`` and give dataset ``name`` metadata pointing at it."""
    path = os.path.join(directory, f"{name}.json")
    write_json_atomic(path, gt, indent=None)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(json_file=path, evaluator_type="coco",
                                  thing_classes=[c["name"] for c in gt["categories"]])
    return name


def evaluate(dataset: str, backend: str, dets: List[dict], evaluator=None) -> Tuple[float, Dict[str, float]]:
    """(seconds, bbox metrics) of one ``_eval_predictions`` call on ``dets``."""
    evaluator = evaluator or FocalCOCOEvaluator(dataset, tasks=("bbox",), distributed=False,
                                                output_dir=None, use_fast_impl=False, backend=backend)
    by_image: Dict[int, List[dict]] = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    predictions = [{"image_id": i, "instances": copy.deepcopy(v)} for i, v in by_image.items()]
    evaluator._results = {}
    start = time.perf_counter()
    evaluator._eval_predictions(predictions)
    seconds = time.perf_counter() - start
    return seconds, dict(evaluator._results["bbox"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 images, 1 repetition")
    parser.add_argument("--images", type=int, default=None, help="default 5000 (500 with --quick)")
    parser.add_argument("--dets", type=int, default=80, help="detections per image (default 80)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    images = args.images or (500 if args.quick else 5000)
    reps = args.reps or (1 if args.quick else 3)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {images} images, ~{args.dets} detections "
          f"each, 80 classes, {reps} repetition(s)")
    gt, dets = coco_like(images, args.dets)
    backends = ("pycocotools", "faster_coco_eval")
    with tempfile.TemporaryDirectory() as tmp:
        name = register(gt, tmp, "bench_coco_like")
        evaluators = {b: FocalCOCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=None,
                                            use_fast_impl=False, backend=b) for b in backends}
        times = {b: [] for b in backends}
        metrics = {}
        for _ in range(reps):
            for b in backends:  # round-robin: machine noise hits both alike
                dt, metrics[b] = evaluate(name, b, dets, evaluators[b])
                times[b].append(dt)
    base, fast = (statistics.median(times[b]) for b in backends)
    print(f"\n== COCO bbox evaluation, {images} images, {len(gt['annotations'])} gt boxes, "
          f"{len(dets)} detections ==")
    print(f"{'backend':18s} {'s (median)':>11s} {'speedup':>8s}  " + " ".join(f"{m:>8s}" for m in METRICS))
    for b, t in zip(backends, (base, fast)):
        print(f"{b:18s} {t:11.2f} {base / t:7.2f}x  " + " ".join(f"{metrics[b][m]:8.4f}" for m in METRICS))
    diff = max(abs(metrics[backends[0]][m] - metrics[backends[1]][m]) for m in METRICS)
    print(f"RATIO faster_coco_eval vs pycocotools: {base / fast:.2f}x faster; largest AP difference "
          f"{diff:.2e} (AP in percent)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        write_json_atomic(args.json, {"images": images, "times_s": times, "metrics": metrics}, indent=1)


if __name__ == "__main__":
    main()
