#!/usr/bin/env python
"""Build (once) the backbone pre-trained on the synthetic classification task of the mini protocol.

    python tools/pretrain_backbone.py                      # recipe proto-r18, prints the path
    python tools/pretrain_backbone.py --recipe proto-r18 --force
    python tools/pretrain_backbone.py --print-path          # the cached path, builds nothing
    python tools/pretrain_backbone.py --seeds 0 1 2         # proto-r18@0..2: protocol v3's backbones

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="proto-r18",
                        help=f"one of {sorted(pretrain.RECIPES)}, optionally NAME@SEED")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="build the recipe at each of these pre-training seeds (NAME@SEED)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--print-path", action="store_true", help="print the cache path and exit")
    args = parser.parse_args(argv)
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
        export = report.get("exports", {}).get(path.name, {})
        print(f"{name}: {path}\n  val accuracy {report['val_accuracy']:.4f} on {report['num_val_crops']} "
              f"held-out crops, {report['wall_time_s']:.0f} s, sha256 "
              f"{export.get('sha256') or pretrain.file_sha256(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
