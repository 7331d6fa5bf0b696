"""Tiny configs and batches for fast CPU tests (no dataset, no weights)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from typing import Iterator, List

import torch
from detectron2.structures import Boxes, Instances

from focal_plugin.anchors import anchor_sizes, aspect_ratios
from focal_plugin.configs import get_config_file
from focal_plugin.engine import get_focal_cfg
from focal_plugin.losses import build_classification_loss

#: the loss modules take every hyperparameter explicitly; these are the paper's (Table 1, Table 3)
PAPER_LOSSES = {
    "sigmoid_ce": {"alpha": -1.0},
    "sigmoid_focal": {"gamma": 2.0, "alpha": 0.25},
    "sigmoid_focal_star": {"gamma": 2.0, "beta": 1.0, "alpha": 0.25},
    "softmax_focal": {"gamma": 2.0, "alpha": 0.25},
}
#: the γ values the loss tests sweep (Table 1b's and beyond)
GAMMAS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def paper_loss(name: str, **kw):
    """The registered loss ``name`` with the paper's hyperparameters, ``kw`` replacing some."""
    return build_classification_loss(name, **{**PAPER_LOSSES[name], **kw})


#: the smallest shipped config: set-up refusals are tested on it
SMOKE_CONFIG = get_config_file("mini/smoke_tiny.yaml")


def tiny_cfg(meta: str = "FocalRetinaNet", num_classes: int = 3, **focal):
    """A ResNet-18-FPN RetinaNet with 32 channels and one conv per subnet: builds in ~0.1 s."""
    cfg = get_focal_cfg()
    cfg.MODEL.META_ARCHITECTURE = meta
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = anchor_sizes(3, (16, 32, 64, 128, 256))
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = aspect_ratios(3)
    for key, value in focal.items():
        node = cfg.MODEL.FOCAL
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def make_batch(num_images: int = 2, size: int = 64, num_classes: int = 3, boxes_per_image: int = 3,
               seed: int = 0, empty: tuple = ()):
    """detectron2 model inputs with random boxes; images listed in ``empty`` have no boxes."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(num_images):
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        n = 0 if i in empty else boxes_per_image
        xy = torch.rand(n, 2, generator=g) * size * 0.6
        wh = 8 + torch.rand(n, 2, generator=g) * size * 0.35
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


@contextlib.contextmanager
def captured(logger_name: str) -> Iterator[List[str]]:
    """Messages of ``logger_name`` (detectron2's setup_logger may stop propagation to the root)."""
    records: List[str] = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log, handler = logging.getLogger(logger_name), Handler(logging.WARNING)
    log.addHandler(handler)
    old = log.level
    log.setLevel(min(old or logging.WARNING, logging.WARNING))
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


def load_script(path, name: str):
    """A repository script (tools/, benchmarks/) imported as module ``name`` from its file."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
