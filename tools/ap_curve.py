#!/usr/bin/env python
"""AP vs iteration of one or more runs, as a CSV and a PNG (the mini protocol's curves).

    # runs trained with TEST.EVAL_PERIOD (their metrics.json)
    python tools/ap_curve.py --run "FL=out/fl_curve" --run "α-CE .75=out/ace_curve" --out curves
    # a run's saved checkpoints (model_*.pth, model_final.pth), each evaluated with the config
    python tools/ap_curve.py --checkpoints "α-CE .90=out/cell_ckpts" --config-file \\
        configs/mini/protocol/alpha_ce.yaml --out curves MODEL.FOCAL.ALPHA 0.9

Writes ``<out>.csv`` and ``<out>.png``. For --checkpoints, each evaluation goes to
``<dir>/eval_<iteration>/`` (kept: a second call with the same config and checkpoint files reads it;
other settings or replaced checkpoints are evaluated again); losses come from ``<dir>/metrics.json``
when the run's detectron2 metrics file is copied there.
"""

from __future__ import annotations

import argparse
import os
import sys

import focal_plugin  # noqa: F401  (registers the datasets and the config keys)
from focal_plugin.analysis.ap_curves import ap_curve, checkpoint_curve, write_curves


def _pair(text: str, flag: str) -> tuple:
    """LABEL=PATH, where the label may hold "=" too (γ=2): split at the first "=" after which an
    existing path follows."""
    cuts = [i for i, ch in enumerate(text) if ch == "="]
    for i in cuts:
        if i > 0 and os.path.exists(text[i + 1:]):
            return text[:i], text[i + 1:]
    if not cuts or cuts[0] == 0:
        raise SystemExit(f"error: {flag} {text!r}: expected LABEL=PATH")
    raise SystemExit(f"error: {flag} {text!r}: no existing path after any '=' (expected LABEL=PATH)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="LABEL=DIR of a TEST.EVAL_PERIOD run")
    parser.add_argument("--checkpoints", action="append", default=[], help="LABEL=DIR holding checkpoints")
    parser.add_argument("--config-file", default=None, help="the config the checkpoints were trained with")
    parser.add_argument("--out", required=True, help="output stem: <out>.csv, <out>.png")
    parser.add_argument("--title", default="")
    parser.add_argument("--ylabel", default="COCO AP")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for --checkpoints")
    args = parser.parse_args(argv)
    if not args.run and not args.checkpoints:
        parser.error("give at least one --run or --checkpoints")
    if args.checkpoints and not args.config_file:
        parser.error("--checkpoints needs --config-file (the config the run trained with)")
    pairs = [(*_pair(t, "--run"), ap_curve) for t in args.run]
    pairs += [(*_pair(t, "--checkpoints"), lambda p: checkpoint_curve(p, args.config_file, args.opts))
              for t in args.checkpoints]
    labels = [label for label, _, _ in pairs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        parser.error(f"label(s) {twice} given twice: each curve needs its own label")
    runs = {}
    for label, path, curve in pairs:
        try:
            runs[label] = curve(path)
        except (OSError, ValueError) as e:
            print(f"error: {label}={path}: {e}", file=sys.stderr)
            return 2
    write_curves(runs, f"{args.out}.csv", f"{args.out}.png", title=args.title, ylabel=args.ylabel)
    for label, rows in runs.items():
        print(f"{label}: " + ", ".join(f"{r['iter']}: {r['AP']:.2f}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
