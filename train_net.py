#!/usr/bin/env python
"""detectron2's training CLI for FocalRetinaNet.

    python train_net.py --config-file configs/mini/demo_focal_R18_dense_shapes.yaml --num-gpus 1
    python train_net.py --config-file configs/paper/retinanet_R_50_FPN_600_90k.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume              # continue from OUTPUT_DIR

Without CUDA, ``--num-gpus N`` runs N CPU worker processes (gloo).
"""

# focal_plugin first: it makes detectron2 importable without its compiled extension.
import focal_plugin  # noqa: F401  (registers FocalRetinaNet, losses, datasets)

# isort: split
from detectron2.engine import default_argument_parser

from focal_plugin.engine import launch_main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_main(args)
