#!/usr/bin/env python
"""Build (once) the backbone pre-trained on the synthetic classification task of the mini protocol.

    python tools/pretrain_backbone.py                      # recipe proto-r18, prints the path
    python tools/pretrain_backbone.py --recipe proto-r18 --force
    python tools/pretrain_backbone.py --print-path          # the cached path, builds nothing

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
    parser.add_argument("--recipe", default="proto-r18", choices=sorted(pretrain.RECIPES))
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--print-path", action="store_true", help="print the cache path and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.print_path:
        print(pretrain.weights_path(pretrain.get_recipe(args.recipe)))
        return 0
    path = pretrain.build(args.recipe, force=args.force)
    with open(path.parent / "RECIPE.json") as f:
        report = json.load(f)
    print(f"{path}\nval accuracy {report['val_accuracy']:.4f} on {report['num_val_crops']} held-out crops, "
          f"{report['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
