"""The README's main job: synthetic data → train FocalRetinaNet on the CPU → COCO AP → a picture.

    python -m focal_plugin.demo                       # what `make demo` runs
    python -m focal_plugin.demo --config-file configs/mini/<other>.yaml SOLVER.MAX_ITER 200

Results are on SYNTHETIC data (focal_plugin.data), not COCO.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict

import cv2
import numpy as np

from focal_plugin.io import write_json_atomic

DEFAULT_CONFIG = "mini/demo_focal_R18_dense_shapes.yaml"  # shipped in focal_plugin/configs


def save_prediction_picture(cfg, output_path: str, num_images: int = 3, score_thresh: float = 0.4) -> str:
    """Predictions (left) next to ground truth (right) for the first val images, one row each."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    from focal_plugin.predict import Predictor, draw

    name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(name)
    # prefer images that have objects, so the picture shows something
    dicts = sorted(DatasetCatalog.get(name), key=lambda d: -len(d.get("annotations", [])))[:num_images]
    predictor = Predictor(cfg)
    rows = []
    for d in dicts:
        rgb, instances = predictor(d["file_name"])
        left = draw(rgb, instances, metadata, score_thresh, scale=2.0)
        right = Visualizer(rgb, metadata, scale=2.0).draw_dataset_dict(d).get_image()
        sep = np.full((left.shape[0], 8, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([left, sep, right], axis=1))
    width = max(r.shape[1] for r in rows)  # images differ in size: pad rows to one width
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    canvas = np.concatenate(rows, axis=0)
    os.makedirs(os.path.dirname(output_path) or ".", exist_ok=True)
    cv2.imwrite(output_path, canvas[:, :, ::-1])
    return output_path


def format_table(result: Dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = []
    for dataset, tasks in result["metrics"].items():
        bbox = tasks.get("bbox", {})
        rows.append([dataset] + [bbox.get(k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")])
    table = tabulate(rows, headers=["dataset (synthetic)", "AP", "AP50", "AP75", "APs", "APm", "APl"],
                     floatfmt=".1f")
    return table


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description="Train and evaluate FocalRetinaNet on synthetic data (CPU)")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG,
                        help="a config file, or the name of a shipped one (default: %(default)s)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    from detectron2.utils.logger import setup_logger

    from focal_plugin.configs import resolve_config_file
    from focal_plugin.data import BUILTIN_DATASETS, prepare_dataset
    from focal_plugin.engine import setup_cfg, train

    cfg = setup_cfg(resolve_config_file(args.config_file), args.opts)
    setup_logger(output=cfg.OUTPUT_DIR, name="detectron2")
    setup_logger(output=cfg.OUTPUT_DIR, name="focal_plugin")
    start = time.perf_counter()
    presets = {BUILTIN_DATASETS[n][0] for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
               if n in BUILTIN_DATASETS}
    for preset in sorted(presets):
        prepare_dataset(preset)  # generates on first use, with a progress bar
    data_s = time.perf_counter() - start
    result = train(cfg)
    trained = cfg.clone()
    trained.defrost()
    trained.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    picture = save_prediction_picture(trained, os.path.join(cfg.OUTPUT_DIR, "predictions_vs_gt.png"))
    total_s = time.perf_counter() - start
    result.update({"data_time_s": data_s, "total_time_s": total_s, "picture": picture})
    write_json_atomic(os.path.join(cfg.OUTPUT_DIR, "demo_summary.json"), result)
    print()
    print(format_table(result))
    print(f"\nSynthetic-data results. {result['iterations']} iterations; data {data_s:.0f} s, "
          f"total {total_s / 60:.1f} min. Picture (predictions | ground truth): {picture}")
    return result


if __name__ == "__main__":
    main()
