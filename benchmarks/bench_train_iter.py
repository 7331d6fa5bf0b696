#!/usr/bin/env python
"""Training-iteration time: FocalRetinaNet vs detectron2's RetinaNet, identical config/weights/batches.

Prints s/iter medians and ratios measured in one run (interleaved, so machine noise hits all
models alike) at a small CPU setting and a paper-like one (R50-FPN, 80 classes, 600 px, batch 2).
Models: detectron2 RetinaNet (fvcore FL, EMA normalizer), FocalRetinaNet with each classification
loss (fused FL, CE, FL*, softmax FL; paper's normalizer) and with OHEM (B=128, NMS .5; plain and
1:3), with channels_last weights and with the static-shape step (``MODEL.FOCAL.STATIC_SHAPES``);
and both detectron2's RetinaNet and FocalRetinaNet FL under mixed precision (``+AMP``:
autocast in bfloat16 on the CPU, float16 on CUDA, as ``SOLVER.AMP.PRECISION auto`` trains; no loss
scaling, which does not change the time). Ratios: against detectron2's RetinaNet and against
FocalRetinaNet FL (for ``FL +AMP``: the mixed-precision step over the float32 one). Peak memory of one
step (forward, backward, SGD step) above what the models hold, measured after the timings
(``_peak_memory.py``: CUDA allocator peak, or the rise of the process's peak RSS on the CPU).

    python benchmarks/bench_train_iter.py            # both settings, all variants
    python benchmarks/bench_train_iter.py --quick    # small setting only, fewer iterations
    python benchmarks/bench_train_iter.py --settings paper --variants d2,fl   # the headline ratio
    python benchmarks/bench_train_iter.py --variants d2_amp,fl_amp            # mixed precision
    python benchmarks/bench_train_iter.py --settings protocol --variants fl_amp,fl_amp_cl,fl_cl,fl_static
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import focal_plugin  # noqa: E402, F401

# isort: split
from _peak_memory import mmap_small_allocations, peak_mib  # noqa: E402
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from focal_plugin import compat
from focal_plugin.engine import get_focal_cfg
from focal_plugin.io import write_json_atomic
from focal_plugin.modeling.static_shapes import capturable_sgd

SETTINGS = {
    "small": dict(depth=18, size=(128, 128), batch=4, classes=5, fpn=64, convs=2, norm="BN"),
    # BN, not the paper's FrozenBN: without ImageNet weights FrozenBN lets activations overflow
    "paper": dict(depth=50, size=(600, 904), batch=2, classes=80, fpn=256, convs=4, norm="BN"),
    "paper_b16": dict(depth=50, size=(600, 904), batch=16, classes=80, fpn=256, convs=4, norm="BN"),
    # the mini protocol's model as its config builds it (frozen ResNet-18, GN head), random weights
    "protocol": dict(config="configs/mini/protocol/fl_default.yaml", size=(256, 256), batch=8, classes=80),
}


def make_cfg(setting: dict, model: str, ohem_fraction: float | None = None, loss: str | None = None):
    cfg = get_focal_cfg()
    if "config" in setting:
        cfg.merge_from_file(setting["config"])
        cfg.MODEL.WEIGHTS = ""
    else:
        _small_or_paper(cfg, setting)
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet" if model == "d2" else "FocalRetinaNet"
    if ohem_fraction is not None:
        cfg.MODEL.FOCAL.OHEM.ENABLED = True
        cfg.MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE = 128
        cfg.MODEL.FOCAL.OHEM.NMS_THRESH = 0.5
        cfg.MODEL.FOCAL.OHEM.POSITIVE_FRACTION = ohem_fraction
        cfg.MODEL.FOCAL.LOSS = "sigmoid_ce"
        cfg.MODEL.FOCAL.ALPHA = -1.0
    if loss is not None:
        cfg.MODEL.FOCAL.LOSS = loss
    return cfg


def _small_or_paper(cfg, setting: dict) -> None:
    cfg.merge_from_file("configs/Base-FocalRetinaNet.yaml")
    cfg.MODEL.RESNETS.DEPTH = setting["depth"]
    cfg.MODEL.RESNETS.NORM = setting["norm"]
    if setting["depth"] in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.FPN.OUT_CHANNELS = setting["fpn"]
    cfg.MODEL.RETINANET.NUM_CONVS = setting["convs"]
    cfg.MODEL.RETINANET.NUM_CLASSES = setting["classes"]
    # identical anchors for both: explicit sizes (detectron2's RetinaNet ignores MODEL.FOCAL)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[b * 2 ** (k / 3) for k in range(3)] for b in (32, 64, 128, 256, 512)]


#: key -> (label, make_cfg arguments after the setting); labels ending in AMP_SUFFIX step under
#: autocast; with CHANNELS_LAST FocalRetinaNet takes MODEL.FOCAL.CHANNELS_LAST (detectron2's
#: RetinaNet, which has no such key, is converted with model.to(memory_format=...));
#: with STATIC the model takes MODEL.FOCAL.STATIC_SHAPES (and fused SGD with a tensor lr)
AMP_SUFFIX = " +AMP"
CHANNELS_LAST, STATIC = "channels_last", "static shapes"
VARIANTS = {
    "d2_amp": ("detectron2 RetinaNet" + AMP_SUFFIX, ("d2",)),
    "d2_amp_cl": ("detectron2 RetinaNet channels_last" + AMP_SUFFIX, ("d2",)),
    "fl_amp": ("FocalRetinaNet (fused FL)" + AMP_SUFFIX, ("focal",)),
    "fl_amp_cl": ("FocalRetinaNet channels_last" + AMP_SUFFIX, ("focal",)),
    "fl_cl": ("FocalRetinaNet channels_last", ("focal",)),
    "fl_static": ("FocalRetinaNet static shapes", ("focal",)),
    "d2": ("detectron2 RetinaNet", ("d2",)),
    "fl": ("FocalRetinaNet (fused FL)", ("focal",)),
    "ce": ("FocalRetinaNet CE", ("focal", None, "sigmoid_ce")),
    "flstar": ("FocalRetinaNet FL* (g2,b1)", ("focal", None, "sigmoid_focal_star")),
    "softmax": ("FocalRetinaNet softmax FL", ("focal", None, "softmax_focal")),
    "ohem": ("FocalRetinaNet OHEM 128/.5", ("focal", -1.0)),
    "ohem13": ("FocalRetinaNet OHEM 1:3 128/.5", ("focal", 0.25)),
}


def _build(cfg):
    """``build_model``; detectron2 v0.6's own RetinaNetHead crashes on ``NORM: "GN"`` (the mini
    protocol's head), so its baseline gets the same GroupNorm through compat's factory."""
    if cfg.MODEL.META_ARCHITECTURE != "RetinaNet" or cfg.MODEL.RETINANET.NORM != "GN":
        return build_model(cfg)
    plain = cfg.clone()
    plain.MODEL.RETINANET.NORM = ""
    model = build_model(plain)
    shapes = [model.backbone.output_shape()[f] for f in model.head_in_features]
    args = RetinaNetHead.from_config(plain, shapes)
    model.head = RetinaNetHead(**{**args, "norm": compat.gn_norm()}).to(model.device)
    return model


def make_batches(setting: dict, n: int, device: str):
    g = torch.Generator().manual_seed(0)
    h, w = setting["size"]
    batches = []
    for _ in range(n):
        batch = []
        for _ in range(setting["batch"]):
            k = 7  # COCO's mean objects per image
            xy = torch.rand(k, 2, generator=g) * torch.tensor([w, h]) * 0.7
            wh = 16 + torch.rand(k, 2, generator=g) * torch.tensor([w, h]) * 0.3
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
            inst.gt_classes = torch.randint(0, setting["classes"], (k,), generator=g)
            batch.append({"image": torch.randint(0, 256, (3, h, w), generator=g).float(),
                          "instances": inst.to(device)})
        batches.append(batch)
    return batches


def step(model, opt, batch, amp: bool = False) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16, enabled=amp):
        losses = model(batch)
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run(name: str, setting: dict, warmup: int, iters: int, keys=tuple(VARIANTS)) -> dict:
    keys = ["d2", "fl"] + [k for k in keys if k not in ("d2", "fl")]  # the two baselines always
    variants = {VARIANTS[k][0]: make_cfg(setting, *VARIANTS[k][1]) for k in keys}
    for label, cfg in variants.items():
        cfg.MODEL.FOCAL.CHANNELS_LAST = CHANNELS_LAST in label and cfg.MODEL.META_ARCHITECTURE != "RetinaNet"
        if STATIC in label:  # the images' size padded to 32 is the one static size: no extra pixels
            static = cfg.MODEL.FOCAL.STATIC_SHAPES
            static.ENABLED, static.IMAGE_SIZES = True, [[-(-v // 32) * 32 for v in setting["size"]]]
    torch.manual_seed(0)
    models = {}
    reference_state = None
    for label, cfg in variants.items():
        model = _build(cfg)
        if reference_state is None:
            reference_state = model.state_dict()
        # identical weights everywhere (softmax FL's classifier has K+1 outputs: its own init)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in reference_state.items()
                               if k in own and own[k].shape == v.shape}, strict=False)
        model.train()
        if CHANNELS_LAST in label and cfg.MODEL.META_ARCHITECTURE == "RetinaNet":  # no key: by hand
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        models[label] = (model, capturable_sgd(optimizer) if STATIC in label else optimizer)
    device = next(iter(models.values()))[0].device.type
    batches = make_batches(setting, warmup + iters, device)
    times = {label: [] for label in models}
    with EventStorage(0):
        order = list(models)
        for i, batch in enumerate(batches):
            # interleaved, so machine noise hits all alike; the order rotates every round, so no
            # model always runs right after the same other one (allocator and cache state)
            for label in order[i % len(order):] + order[:i % len(order)]:
                model, opt = models[label]
                dt = step(model, opt, batch, amp=label.endswith(AMP_SUFFIX))
                if i >= warmup:
                    times[label].append(dt)
        extra = make_batches(setting, 1, device)[0]
        if device == "cpu":
            mmap_small_allocations()
        amp = {label: label.endswith(AMP_SUFFIX) for label in models}
        peaks = {label: peak_mib(lambda m=m, o=o, a=amp[label]: step(m, o, extra, a), torch.device(device))
                 for label, (m, o) in models.items()}
    base = statistics.median(times["detectron2 RetinaNet"])
    fl = statistics.median(times["FocalRetinaNet (fused FL)"])
    fl_mem = peaks["FocalRetinaNet (fused FL)"]
    model_name = setting.get("config") or f"R{setting['depth']}-FPN"
    print(f"\n== {name}: {model_name}, {setting['classes']} classes, "
          f"{setting['size'][0]}x{setting['size'][1]} px, batch {setting['batch']}, device {device}, "
          f"{iters} timed iterations after {warmup} warm-up, load average {os.getloadavg()[0]:.2f} ==")
    print(f"{'model':38s} {'s/iter (med)':>12s} {'/ d2 RetinaNet':>15s} {'/ FocalRetinaNet FL':>20s} "
          f"{'peak MiB':>9s} {'mem / FL':>9s} {'images/s':>9s}")
    out = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        mem = peaks[label]
        mem_s = "n/a" if mem is None else f"{mem:.0f}"
        ratio = "n/a" if mem is None or not fl_mem else f"{mem / fl_mem:.2f}"
        print(f"{label:38s} {med:12.3f} {med / base:15.3f} {med / fl:20.3f} {mem_s:>9s} {ratio:>9s} "
              f"{setting['batch'] / med:9.1f}")
        out[label] = {"s_per_iter": med, "vs_d2": med / base, "vs_fl": med / fl, "peak_mib": mem,
                      "images_per_s": setting["batch"] / med,
                      "times_s": [round(t, 4) for t in ts]}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small setting only, fewer iterations")
    parser.add_argument("--settings", nargs="+", default=None, choices=sorted(SETTINGS))
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)} (d2 and fl always run)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    keys = [k for k in args.variants.split(",") if k]
    unknown = sorted(set(keys) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {list(VARIANTS)}")
    names = args.settings or (["small"] if args.quick else ["small", "protocol", "paper"])
    results = {}
    for name in names:
        default_iters = {"small": 10 if args.quick else 20, "paper": 5, "protocol": 10}[name]
        results[name] = run(name, SETTINGS[name], warmup=args.warmup, iters=args.iters or default_iters,
                            keys=keys)
    if args.json:
        write_json_atomic(args.json, results, indent=1)


if __name__ == "__main__":
    main()
