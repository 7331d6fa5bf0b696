"""The RetinaNet head with the paper's initialization chosen from the initializer registry."""

from __future__ import annotations

from typing import Callable, List, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from focal_plugin import compat
from focal_plugin.init import build_initializer
from focal_plugin.losses import LOSS_REGISTRY


class FocalRetinaNetHead(RetinaNetHead):
    """detectron2's ``RetinaNetHead`` (4 x (3x3 conv, ReLU) per subnet, separate parameters), with

    * all convs initialized N(0, ``conv_init_std``) with zero bias, then the final classification
      conv's bias set by the registered initializer ``bias_init`` (§3.3: "prior", pi = 0.01);
    * ``softmax=True``: K+1 logits per anchor (background last) for the softmax focal loss;
    * ``norm="GN"`` working on every detectron2 version (v0.6's own head crashes with it).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: List[int],
        norm: Union[str, Callable] = "",
        prior_prob: float = 0.01,
        bias_init: str = "prior",
        softmax: bool = False,
        conv_init_std: float = 0.01,
    ):
        if norm == "GN":
            norm = compat.gn_norm()
        num_logits = num_classes + 1 if softmax else num_classes
        # The parent's own prior init is overwritten below; 0.01 keeps its math defined for any pi
        # we may be given (ours is validated by the initializer).
        super().__init__(
            input_shape=input_shape,
            num_classes=num_logits,
            num_anchors=num_anchors,
            conv_dims=conv_dims,
            norm=norm,
            prior_prob=0.01,
        )
        self.num_object_classes = num_classes
        self.softmax = softmax
        conv_init = build_initializer("normal", sigma=conv_init_std)
        for modules in (self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred):
            for layer in modules.modules():
                if isinstance(layer, torch.nn.Conv2d):
                    conv_init(layer)
        build_initializer(bias_init, prior_prob=prior_prob, num_classes=num_classes, softmax=softmax)(
            self.cls_score
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"MODEL.ANCHOR_GENERATOR gives {num_anchors} anchors per location on the levels; "
                "the RetinaNet head needs the same number on every level"
            )
        focal = cfg.MODEL.FOCAL
        return {
            "input_shape": input_shape,
            # outputs for the data's classes and the empty ones (MODEL.FOCAL.EMPTY_CLASSES)
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES + focal.EMPTY_CLASSES,
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.RETINANET.NUM_CONVS,
            "norm": cfg.MODEL.RETINANET.NORM,
            "num_anchors": num_anchors[0],
            "prior_prob": focal.PRIOR_PROB,
            "bias_init": focal.BIAS_INIT,
            "softmax": LOSS_REGISTRY.get(focal.LOSS).is_softmax,
        }
