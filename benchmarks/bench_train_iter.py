#!/usr/bin/env python
"""Training-iteration time: FocalRetinaNet vs detectron2's RetinaNet, identical config/weights/batches.

Prints s/iter medians and ratios measured in one run (interleaved, so machine noise hits all
models alike) at a small CPU setting and a paper-like one (R50-FPN, 80 classes, 600 px, batch 2).
Models: detectron2 RetinaNet (fvcore FL, EMA normalizer), FocalRetinaNet (fused FL, paper's
normalizer), FocalRetinaNet + OHEM (B=128, NMS .5) and + OHEM 1:3.

    python benchmarks/bench_train_iter.py            # both settings
    python benchmarks/bench_train_iter.py --quick    # small setting only, fewer iterations
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import focal_plugin  # noqa: F401

# isort: split
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from focal_plugin.engine import get_focal_cfg

SETTINGS = {
    "small": dict(depth=18, size=(128, 128), batch=4, classes=5, fpn=64, convs=2, norm="BN"),
    # BN, not the paper's FrozenBN: without ImageNet weights FrozenBN lets activations overflow
    "paper": dict(depth=50, size=(600, 904), batch=2, classes=80, fpn=256, convs=4, norm="BN"),
}


def make_cfg(setting: dict, model: str, ohem_fraction: float | None = None):
    cfg = get_focal_cfg()
    cfg.merge_from_file("configs/Base-FocalRetinaNet.yaml")
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
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
    cfg.MODEL.FOCAL.ANCHOR_SCALES_PER_OCTAVE = 0
    cfg.MODEL.FOCAL.ANCHOR_ASPECTS = 0
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet" if model == "d2" else "FocalRetinaNet"
    if ohem_fraction is not None:
        cfg.MODEL.FOCAL.OHEM.ENABLED = True
        cfg.MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE = 128
        cfg.MODEL.FOCAL.OHEM.NMS_THRESH = 0.5
        cfg.MODEL.FOCAL.OHEM.POSITIVE_FRACTION = ohem_fraction
        cfg.MODEL.FOCAL.LOSS = "sigmoid_ce"
        cfg.MODEL.FOCAL.ALPHA = -1.0
    return cfg


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


def step(model, opt, batch) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    losses = model(batch)
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run(name: str, setting: dict, warmup: int, iters: int) -> None:
    variants = {
        "detectron2 RetinaNet": make_cfg(setting, "d2"),
        "FocalRetinaNet (fused FL)": make_cfg(setting, "focal"),
        "FocalRetinaNet OHEM 128/.5": make_cfg(setting, "focal", -1.0),
        "FocalRetinaNet OHEM 1:3 128/.5": make_cfg(setting, "focal", 0.25),
    }
    torch.manual_seed(0)
    models = {}
    reference_state = None
    for label, cfg in variants.items():
        model = build_model(cfg)
        if reference_state is None:
            reference_state = model.state_dict()
        model.load_state_dict(reference_state)  # identical weights everywhere
        model.train()
        models[label] = (model, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    device = next(iter(models.values()))[0].device.type
    batches = make_batches(setting, warmup + iters, device)
    times = {label: [] for label in models}
    with EventStorage(0):
        for i, batch in enumerate(batches):
            for label, (model, opt) in models.items():  # interleaved: noise hits all alike
                dt = step(model, opt, batch)
                if i >= warmup:
                    times[label].append(dt)
    base = statistics.median(times["detectron2 RetinaNet"])
    fl = statistics.median(times["FocalRetinaNet (fused FL)"])
    print(f"\n== {name}: R{setting['depth']}-FPN, {setting['classes']} classes, "
          f"{setting['size'][0]}x{setting['size'][1]} px, batch {setting['batch']}, device {device}, "
          f"{iters} timed iterations after {warmup} warm-up ==")
    print(f"{'model':34s} {'s/iter (median)':>16s} {'/ d2 RetinaNet':>15s} {'/ FocalRetinaNet FL':>20s}")
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"{label:34s} {med:16.3f} {med / base:15.3f} {med / fl:20.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small setting only, fewer iterations")
    parser.add_argument("--settings", nargs="+", default=None, choices=sorted(SETTINGS))
    parser.add_argument("--iters", type=int, default=None)
    args = parser.parse_args()
    names = args.settings or (["small"] if args.quick else ["small", "paper"])
    for name in names:
        default_iters = {"small": 10 if args.quick else 20, "paper": 5}[name]
        run(name, SETTINGS[name], warmup=2, iters=args.iters or default_iters)


if __name__ == "__main__":
    main()
