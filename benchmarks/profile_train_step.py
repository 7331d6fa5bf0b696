#!/usr/bin/env python
"""torch.profiler over FocalRetinaNet training steps: time per part of our code, and host syncs.

    python benchmarks/profile_train_step.py                     # small setting, FL
    python benchmarks/profile_train_step.py --ohem 0.25         # + OHEM 1:3 (B=128, NMS .5)
    python benchmarks/profile_train_step.py --setting paper     # R50-FPN, 600 px, batch 2

Each part of the step is wrapped in a ``record_function`` label (here, in the script, not in the
library): the anchor generator, anchor labelling, the sampler (OHEM), the classification loss,
the box loss, the normalizer and the statistics read. Printed per part: CPU ms per step, share of
the step, and the operators that make a CUDA device wait for the host to read a value
(``aten::_local_scalar_dense`` = ``.item()``/``int()``/``bool()`` of a tensor; ``aten::nonzero`` =
boolean-mask indexing, ``nonzero``, NMS output sizes), counted per step and attributed to the
innermost labelled part ("cls_path" = the classification-loss path around the loss module
"cls_loss"). The statistics read's ``.tolist()`` is no operator and is not counted. On the CPU
these reads cost nothing extra (some read CPU tensors, e.g. detectron2's ImageList sizes); the
counts say what would make a GPU wait.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import focal_plugin  # noqa: E402, F401

# isort: split
from bench_train_iter import SETTINGS, make_batches, make_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from focal_plugin.modeling import fast_ops  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def _labelled(label, fn):
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    wrapper.dense = getattr(fn, "dense", False)  # a sampler's declaration (see modeling/sampler.py)
    return wrapper


def instrument(model) -> list:
    """Wrap the parts of one model instance in labels."""
    model.anchor_generator.forward = _labelled("focal:anchors", model.anchor_generator.forward)
    model.label_anchors = _labelled("focal:label_anchors", model.label_anchors)
    sampler = model.anchor_sampler
    model.anchor_sampler = _labelled("focal:sampler", sampler)
    model.classification_loss.forward = _labelled("focal:cls_loss", model.classification_loss.forward)
    model._loss_normalizer = _labelled("focal:normalizer", model._loss_normalizer)
    model._log_and_check = _labelled("focal:stats_read", model._log_and_check)
    # the box loss is a function, labelled in the module the model looks it up in (this process only)
    fast_ops.box_regression_loss = _labelled("focal:box_loss", fast_ops.box_regression_loss)
    model._cls_loss_per_anchor = _labelled("focal:cls_path", model._cls_loss_per_anchor)
    return ["focal:anchors", "focal:label_anchors", "focal:sampler", "focal:cls_path", "focal:cls_loss",
            "focal:box_loss", "focal:normalizer", "focal:stats_read"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="small", choices=sorted(SETTINGS))
    parser.add_argument("--ohem", type=float, default=None,
                        help="OHEM positive fraction (-1 = plain OHEM, 0.25 = OHEM 1:3); default: FL")
    parser.add_argument("--loss", default=None, help="MODEL.FOCAL.LOSS (default: the config's)")
    parser.add_argument("--normalizer", default=None, choices=("num_pos", "ema"))
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up)")
    parser.add_argument("--top", type=int, default=12, help="also print the N costliest operators")
    args = parser.parse_args(argv)
    setting = SETTINGS[args.setting]
    cfg = make_cfg(setting, "focal", args.ohem)
    if args.loss:
        cfg.MODEL.FOCAL.LOSS = args.loss
    if args.normalizer:
        cfg.MODEL.FOCAL.NORMALIZER = args.normalizer
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    labels = instrument(model)
    batches = make_batches(setting, 2 + args.steps, model.device.type)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    def step(batch):
        with record_function("focal:step"):
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()

    with EventStorage(0):
        for batch in batches[:2]:
            step(batch)
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            for batch in batches[2:]:
                step(batch)
        wall = (time.perf_counter() - start) / args.steps
    events = prof.events()
    # attribute each sync op to the innermost focal label enclosing it (by CPU time interval)
    syncs = collections.Counter()
    for e in events:
        if e.name in SYNC_OPS:  # attributed to the innermost labelled part around it
            parent = e.cpu_parent
            while parent is not None and parent.name not in labels:
                parent = parent.cpu_parent
            syncs[(parent.name if parent is not None else "(detectron2/backbone/other)", e.name)] += 1
    # With CUDA activity a label also appears as a GPU annotation (CPU time 0): keep the CPU one.
    totals = {}
    for k in prof.key_averages():
        if k.key not in totals or k.cpu_time_total > totals[k.key].cpu_time_total:
            totals[k.key] = k
    variant = f"OHEM {args.ohem:g}" if args.ohem is not None else cfg.MODEL.FOCAL.LOSS
    step_ms = totals["focal:step"].cpu_time_total / 1e3 / args.steps
    print(f"== {args.setting}: {variant}, "
          f"normalizer {cfg.MODEL.FOCAL.NORMALIZER}, device {model.device}, {args.steps} profiled steps, "
          f"load average {os.getloadavg()[0]:.2f} ==")
    print(f"step: {step_ms:.1f} ms CPU (profiled), {1e3 * wall:.1f} ms wall per step")
    print(f"{'part':22s} {'ms/step':>9s} {'share':>7s} {'host syncs/step':>16s}")
    for label in labels:
        k = totals.get(label)
        ms = k.cpu_time_total / 1e3 / args.steps if k else 0.0
        n = sum(v for (w, _), v in syncs.items() if w == label) / args.steps
        print(f"{label[6:]:22s} {ms:9.2f} {ms / step_ms:7.1%} {n:16.1f}")
    other = sum(v for (w, _), v in syncs.items() if not w.startswith("focal:")) / args.steps
    print(f"{'outside these parts':22s} {'':9s} {'':7s} {other:16.1f}")
    print("sync operators by part (per step):")
    for (where, op), n in sorted(syncs.items()):
        print(f"  {where:32s} {op:28s} {n / args.steps:6.1f}")
    if args.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
