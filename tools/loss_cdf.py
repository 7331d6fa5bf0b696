#!/usr/bin/env python
"""Figure 4: cumulative distribution of the focal loss over positive and negative anchors of a
trained model, for several gamma on the same predictions.

    python tools/loss_cdf.py --config-file configs/mini/demo_focal_R18_dense_shapes.yaml \\
        --weights output/demo/model_final.pth --num-images 300 --out-dir docs/figures

Runs the model over --num-images random images of --dataset (default DATASETS.TEST[0]), mapped
like training data but at the test size (annotations kept), labels anchors with the model's own
anchor generator and matcher, samples positives and negatives (uniform reservoirs of
--max-positives / --max-negatives), and writes <out-dir>/fig4_loss_cdf.{png,csv} and
fig4_summary.json; prints per gamma the share of the positive loss carried by the hardest 20% of
positives and of the negative loss by the hardest 1% and 10% of negatives. A weights file that
does not fit the config is refused naming both. See focal_plugin/analysis/loss_cdf.py.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import focal_plugin  # noqa: F401  (registers the model and the dense_shapes datasets)
from focal_plugin.analysis import loss_cdf
from focal_plugin.checkpoint import load_for_inference
from focal_plugin.io import write_json_atomic


def parse_gammas(text: str) -> list[float]:
    try:
        gammas = [float(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gammas must be comma-separated numbers, got {text!r}") from None
    if not gammas or any(g < 0 for g in gammas):
        raise argparse.ArgumentTypeError(f"--gammas must be numbers >= 0, got {text!r}")
    return gammas


def mapped_images(cfg, dataset: str, num_images: int, seed: int):
    """(count, iterator of mapped images): ``num_images`` random images of ``dataset`` (0 = all)
    through detectron2's DatasetMapper at the test-time size, annotations kept."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data.detection_utils import build_augmentation

    dicts = list(DatasetCatalog.get(dataset))
    if not dicts:
        raise ValueError(f"dataset {dataset} has no images")
    random.Random(seed).shuffle(dicts)
    dicts = dicts[:num_images] if num_images > 0 else dicts
    mapper = DatasetMapper(cfg, is_train=True, augmentations=build_augmentation(cfg, is_train=False))
    return len(dicts), (mapper(d) for d in dicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's detectron2 yaml")
    parser.add_argument("--weights", required=True, help="trained weights (.pth) of that config")
    parser.add_argument("--dataset", default=None, help="dataset name (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=200, help="random images (0 = all; default 200)")
    parser.add_argument("--gammas", type=parse_gammas, default=list(loss_cdf.FIG4_GAMMAS),
                        help="comma-separated gammas (default 0,0.5,1,2)")
    parser.add_argument("--max-positives", type=int, default=100_000,
                        help="positive samples kept (default 1e5)")
    parser.add_argument("--max-negatives", type=int, default=1_000_000,
                        help="negative samples kept (default 1e6)")
    parser.add_argument("--out-dir", default="results/fig4", help="output folder (default results/fig4)")
    parser.add_argument("--formats", default="png", help="figure formats: png, svg, pdf (default png)")
    parser.add_argument("--title", default=None, help="figure title (default: dataset, images, weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice and sampling")
    parser.add_argument("--csv-points", type=int, default=1001,
                        help="points per curve in the CSV, fractions 0..1 evenly (default 1001)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from focal_plugin.engine import setup_cfg

    cfg = setup_cfg(args.config_file, args.opts)
    model = build_model(cfg)
    load_for_inference(model, args.weights, f"config {args.config_file}")
    dataset = args.dataset or (list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN))[0]
    total, images = mapped_images(cfg, dataset, args.num_images, args.seed)
    acc = loss_cdf.collect(model, images, args.gammas, args.max_positives, args.max_negatives, args.seed,
                           total=total)

    summary = {"config_file": args.config_file, "weights": args.weights, "dataset": dataset,
               "loss": cfg.MODEL.FOCAL.LOSS, "trained_gamma": cfg.MODEL.FOCAL.GAMMA, **acc.summary()}
    synthetic = " — synthetic data" if MetadataCatalog.get(dataset).get("preset") else ""
    title = args.title or (f"Fig. 4: loss CDF of {os.path.basename(args.weights)} on {dataset} "
                           f"({acc.images} images){synthetic}")
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, "fig4_loss_cdf")
    paths = loss_cdf.plot_cdf(acc, stem, [f.strip() for f in args.formats.split(",") if f.strip()], title)
    loss_cdf.write_csv(acc, stem + ".csv", args.csv_points)
    write_json_atomic(os.path.join(args.out_dir, "fig4_summary.json"), summary, indent=1)
    print(loss_cdf.format_summary(summary))
    print("wrote", ", ".join([*paths, stem + ".csv", os.path.join(args.out_dir, "fig4_summary.json")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
