#!/usr/bin/env python
"""Foreground/background imbalance of a dataset under a RetinaNet config, next to COCO's.

    python tools/dataset_stats.py --config-file configs/mini/demo_focal_R18_dense_shapes.yaml
    python tools/dataset_stats.py --config-file X --dataset dense_shapes_repro_train \\
        INPUT.MIN_SIZE_TEST 0 MODEL.ANCHOR_GENERATOR.SIZES "[[32], [64], [128], [256], [512]]"

Prints, per dataset, the mean positive anchors per image (the config's backbone strides, anchor
generator and Matcher at the test-time size), anchors per image, binary negatives per image
(non-ignored anchors x classes - positives) and negatives per positive, and COCO's at the paper's
setting (anchors exact, positives an estimate). Without --config-file, detectron2's Base-RetinaNet
settings are used at the images' native size (INPUT.MIN_SIZE_TEST 0).
"""

from __future__ import annotations

import argparse
import json
import sys

import focal_plugin  # noqa: F401  (compat shims; registers the dense_shapes datasets)
from focal_plugin.analysis.imbalance import coco_reference, format_table, imbalance_stats


def build_cfg(config_file: str | None, opts: list[str]):
    """The config (validated, errors naming file/key); default: detectron2's Base-RetinaNet."""
    from detectron2 import model_zoo

    from focal_plugin.engine import setup_cfg

    if config_file:
        return setup_cfg(config_file, opts, freeze=False)
    cfg = setup_cfg(model_zoo.get_config_file("Base-RetinaNet.yaml"), freeze=False)
    cfg.DATASETS.TRAIN = ("dense_shapes_train",)
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.merge_from_list(opts)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=None, help="detectron2 yaml (default: Base-RetinaNet)")
    parser.add_argument("--dataset", action="extend", nargs="+", default=None,
                        help="dataset name(s); default: the config's DATASETS.TRAIN[0]")
    parser.add_argument("--max-images", type=int, default=200, help="images sampled per dataset (0 = all)")
    parser.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    cfg = build_cfg(args.config_file, args.opts)
    names = args.dataset or [cfg.DATASETS.TRAIN[0]]
    stats = [imbalance_stats(cfg, n, max_images=args.max_images, with_coco=False) for n in names]
    stats.append(coco_reference())
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    size = cfg.INPUT.MIN_SIZE_TEST or "native"
    print(f"Imbalance at test size {size} (max {cfg.INPUT.MAX_SIZE_TEST}), IoU thresholds "
          f"{list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)}, allow_low_quality_matches="
          f"{cfg.MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES}:\n")
    print(format_table(stats))
    print("\nbinary negatives = (anchors - ignored) x classes - positives; COCO: anchors exact for a "
          "640x427 image at 600 px,\npositives estimated from simulated COCO-like boxes "
          "(see focal_plugin/analysis/imbalance.py).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
