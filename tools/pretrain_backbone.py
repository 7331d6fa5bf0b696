#!/usr/bin/env python
"""Build (once) the backbone pre-trained on the synthetic classification task of the mini protocol.

    python tools/pretrain_backbone.py                      # recipe proto-r18, prints the path
    python tools/pretrain_backbone.py --recipe proto-r18 --force
    python tools/pretrain_backbone.py --print-path          # the cached path, builds nothing
    python tools/pretrain_backbone.py --seeds 0 1 2         # proto-r18@0..2: protocol v3's backbones
    python tools/pretrain_backbone.py --check results/mini/v3/backbones.json   # the committed bytes?

Deterministic (seeded, one torch thread), cached under $FOCAL_PLUGIN_CACHE or ~/.cache/focal_plugin
in pretrained/<recipe>-<fingerprint>/ with RECIPE.json; configs use it as
MODEL.WEIGHTS "focal-pretrained://<recipe>". The recipe is focal_plugin.pretrain.RECIPES.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

torch.set_num_threads(1)

import focal_plugin  # noqa: E402,F401  (compat shims, datasets)
from focal_plugin import pretrain  # noqa: E402
from focal_plugin.io import read_json, write_json_atomic  # noqa: E402
from focal_plugin.processes import cpu_name  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="proto-r18",
                        help=f"one of {sorted(pretrain.RECIPES)}, optionally NAME@SEED")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="build the recipe at each of these pre-training seeds (NAME@SEED)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--print-path", action="store_true", help="print the cache path and exit")
    parser.add_argument("--record", metavar="JSON", help="add each backbone's sha256, accuracy and "
                        "CPU capability to this file (results/mini/v3/backbones.json)")
    parser.add_argument("--check", metavar="JSON", help="compare the backbones built here with a "
                        "--record file (exit 1 when some differ); builds nothing")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    names = [f"{args.recipe.partition('@')[0]}@{s}" for s in args.seeds] if args.seeds else [args.recipe]
    try:
        recipes = [pretrain.get_recipe(n) for n in names]
    except (KeyError, ValueError) as e:
        parser.error(str(e.args[0]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name, recipe in zip(names, recipes):
        if args.print_path:
            print(pretrain.weights_path(recipe))
            continue
        path = pretrain.build(recipe, force=args.force)
        with open(path.parent / "RECIPE.json") as f:
            report = json.load(f)
        entry = describe(name, path, report)
        print(f"{name}: {path}\n  val accuracy {entry['val_accuracy']:.4f} on {report['num_val_crops']} "
              f"held-out crops, {report['wall_time_s']:.0f} s, sha256 {entry['sha256']}")
        if args.record:
            recorded = read_json(args.record) or {}
            write_json_atomic(args.record, {**recorded, name: entry}, indent=1)
    return 0


def describe(name: str, path, report: dict) -> dict:
    """What identifies a built backbone: its bytes' sha256, and what it was built with."""
    export = report.get("exports", {}).get(path.name, {})
    return {"uri": pretrain.PREFIX + name, "sha256": export.get("sha256") or pretrain.file_sha256(path),
            "val_accuracy": report["val_accuracy"], "fingerprint": report["fingerprint"],
            "cpu_capability": report.get("cpu_capability"), "torch": report.get("torch"),
            "cpu": report.get("cpu") or cpu_name()}


def check(record_file: str) -> int:
    """Print, per recorded backbone, whether the one built here has the same bytes; 1 if any
    differs or is missing."""
    recorded, worst = read_json(record_file), 0
    if not recorded:
        print(f"error: {record_file} is missing or empty", file=sys.stderr)
        return 2
    here = f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}"
    for name, entry in sorted(recorded.items()):
        path = pretrain.weights_path(pretrain.get_recipe(name))
        sha = pretrain.file_sha256(path) if path.is_file() else None
        same = sha == entry["sha256"]
        worst = max(worst, 0 if same else 1)
        why = "the same bytes: cells trained on it reproduce bit for bit" if same else (
            "not built here" if sha is None else
            f"other bytes (this CPU: {here}; recorded: {entry.get('cpu', 'CPU model not recorded')}, "
            f"{entry.get('cpu_capability')}): cells trained "
            "here are other draws of the backbone; compare them within the rows' seed spread")
        print(f"{name}: {why}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
