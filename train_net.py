#!/usr/bin/env python
"""detectron2's training CLI for FocalRetinaNet.

    python train_net.py --config-file configs/mini/demo_focal_R18_dense_shapes.yaml --num-gpus 1
    python train_net.py --config-file configs/paper/retinanet_R_50_FPN_600_90k.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume              # continue from OUTPUT_DIR

Without CUDA, ``--num-gpus N`` runs N CPU worker processes (gloo).
"""

from detectron2.engine import default_argument_parser

import focal_plugin  # noqa: F401  (registers FocalRetinaNet, losses, initializers, datasets)
from focal_plugin.compat import launch
from focal_plugin.engine import main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
