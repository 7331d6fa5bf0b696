#!/usr/bin/env python
"""Detect objects in images with a trained FocalRetinaNet.

    python tools/predict.py --config-file configs/mini/focal_R18_dense_shapes.yaml \
        --input some.jpg some_folder/ --output out/ MODEL.WEIGHTS output/.../model_final.pth
"""

import argparse
import json

import focal_plugin  # noqa: F401
from focal_plugin.engine import setup_cfg
from focal_plugin.predict import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--output", required=True, help="folder for pictures and detections.json")
    parser.add_argument("--score-thresh", type=float, default=0.3, help="draw boxes scoring at least this")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    cfg = setup_cfg(args.config_file, args.opts)
    summary = predict(cfg, args.input, args.output, score_thresh=args.score_thresh)
    print(json.dumps({k: v for k, v in summary.items() if k != "pictures"}, indent=2))


if __name__ == "__main__":
    main()
