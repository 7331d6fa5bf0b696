#!/usr/bin/env python
"""Inference time per image: FocalRetinaNet vs detectron2's RetinaNet, by input scale and depth.

    python benchmarks/bench_inference.py                       # R50 and R101, scales 400..800
    python benchmarks/bench_inference.py --quick               # R50, scales 400 and 800
    python benchmarks/bench_inference.py --images 20           # more timed images per cell
    python benchmarks/bench_inference.py --quick --amp         # also FocalRetinaNet with TEST.AMP

The data behind the paper's Table 1e and speed/accuracy plot: ms per image at batch 1 (the whole
``model([input])`` call: normalisation, backbone, head, decoding, NMS, rescaling), for
ResNet-{50,101}-FPN RetinaNet with 80 classes at shorter side 400..800 px (longer side x 4/3, as
COCO's typical aspect). Both models have identical weights (random, FrozenBN as in the paper's
configs) and see identical images; each cell is timed after ``--warmup`` images, on ``--images``
images, round-robin over the two models (so machine noise hits both alike); the median is printed
with the ratio FocalRetinaNet / RetinaNet (goal <= 1.0).

Post-processing: random weights put no score above detectron2's 0.05 threshold, which would time
an empty decode. ``--score-thresh`` (default 0.0) makes every level hand its top 1000 candidates
(``TOPK_CANDIDATES_TEST``) to NMS, the most post-processing a trained model can cost.

``--amp`` adds a third model, FocalRetinaNet with ``TEST.AMP.ENABLED`` (bfloat16 on the CPU, float16
on CUDA; same weights), timed in the same round-robin, and prints its ratio to the float32 one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import focal_plugin  # noqa: E402, F401

# isort: split
from detectron2.modeling import build_model  # noqa: E402

from focal_plugin.engine import get_focal_cfg  # noqa: E402
from focal_plugin.io import write_json_atomic  # noqa: E402

ARCHS = {"d2": "RetinaNet", "focal": "FocalRetinaNet"}
AMP_ARCH = {"focal_amp": "FocalRetinaNet"}  # with TEST.AMP.ENABLED (--amp)


def make_cfg(depth: int, arch: str, score_thresh: float, device: str):
    cfg = get_focal_cfg()
    cfg.TEST.AMP.ENABLED = arch == "focal_amp"
    cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "configs", "Base-FocalRetinaNet.yaml"))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RETINANET.NUM_CLASSES = 80
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = score_thresh
    # identical anchors for both: explicit sizes (detectron2's RetinaNet ignores MODEL.FOCAL)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[b * 2 ** (k / 3) for k in range(3)] for b in (32, 64, 128, 256, 512)]
    cfg.MODEL.META_ARCHITECTURE = {**ARCHS, **AMP_ARCH}[arch]
    return cfg


def build_pair(depth: int, score_thresh: float, device: str, amp: bool = False):
    torch.manual_seed(0)
    models = {}
    state = None
    for arch in [*ARCHS, *(["focal_amp"] if amp else [])]:
        model = build_model(make_cfg(depth, arch, score_thresh, device)).eval()
        if state is None:
            state = model.state_dict()
        model.load_state_dict(state)  # identical weights
        models[arch] = model
    return models


def _image(scale: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    h, w = scale, round(scale * 4 / 3)
    return {"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h, "width": w}


def time_one(model, inp) -> float:
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model([inp])
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_cell(models, scale: int, warmup: int, images: int):
    times = {arch: [] for arch in models}
    order = list(models)
    for i in range(warmup + images):
        inp = _image(scale, i)
        # round-robin, the order rotating every image: neither model always runs first
        for arch in order[i % len(order):] + order[:i % len(order)]:
            dt = time_one(models[arch], inp)
            if i >= warmup:
                times[arch].append(dt)
    return {arch: 1e3 * statistics.median(ts) for arch, ts in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="R50, scales 400 and 800")
    parser.add_argument("--depths", default=None, help="comma-separated ResNet depths (default 50,101)")
    parser.add_argument("--scales", default=None, help="comma-separated shorter sides (default 400,...,800)")
    parser.add_argument("--images", type=int, default=None,
                        help="timed images per cell (default 4 on the CPU, 20 on a GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="default 1 on the CPU, 5 on a GPU")
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--amp", action="store_true", help="also FocalRetinaNet with TEST.AMP.ENABLED")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    depths = [int(d) for d in (args.depths or ("50" if args.quick else "50,101")).split(",")]
    default_scales = "400,800" if args.quick else "400,500,600,700,800"
    scales = [int(s) for s in (args.scales or default_scales).split(",")]
    images = args.images or (20 if gpu else 4)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"score threshold {args.score_thresh}, {images} timed images per cell after {warmup} warm-up, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    amp_cols = f" {'AMP ms/img':>11s} {'AMP/fp32':>9s}" if args.amp else ""
    print(f"\n{'model':10s} {'scale':>6s} {'RetinaNet ms/img':>17s} {'FocalRetinaNet ms/img':>22s} "
          f"{'ratio':>7s}{amp_cols}")
    results = []
    for depth in depths:
        models = build_pair(depth, args.score_thresh, args.device, args.amp)
        for scale in scales:
            ms = run_cell(models, scale, warmup, images)
            ratio = ms["focal"] / ms["d2"]
            results.append({"depth": depth, "scale": scale, "d2_ms": ms["d2"], "focal_ms": ms["focal"],
                            "ratio": ratio})
            amp = ""
            if args.amp:
                results[-1].update(amp_ms=ms["focal_amp"], amp_ratio=ms["focal_amp"] / ms["focal"])
                amp = f" {ms['focal_amp']:11.1f} {results[-1]['amp_ratio']:9.3f}"
            print(f"R{depth}-FPN   {scale:6d} {ms['d2']:17.1f} {ms['focal']:22.1f} {ratio:7.3f}{amp}",
                  flush=True)
        del models
    ratios = [r["ratio"] for r in results]
    print(f"RATIO FocalRetinaNet / RetinaNet inference: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}) over {len(ratios)} cells")
    if args.amp:
        amp = [r["amp_ratio"] for r in results]
        print(f"RATIO FocalRetinaNet TEST.AMP / float32 inference: median {statistics.median(amp):.3f} "
              f"(range {min(amp):.3f}-{max(amp):.3f}) over {len(amp)} cells")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        write_json_atomic(args.json, {"device": args.device, "images": images, "results": results}, indent=1)


if __name__ == "__main__":
    main()
