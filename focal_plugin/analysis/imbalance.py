"""Foreground/background imbalance of a dataset under a RetinaNet config, next to COCO's.

Counts are those of RetinaNet's classification loss at the test-time image size, made with the
model's own parts: the backbone of ``cfg`` (``build_backbone``) gives the strides of
``MODEL.RETINANET.IN_FEATURES`` (``output_shape()``) and the padding (``size_divisibility``);
detectron2's anchor generator is built from ``MODEL.ANCHOR_GENERATOR`` for those features; and
detectron2's ``Matcher`` labels the anchors with ``MODEL.RETINANET.IOU_THRESHOLDS/IOU_LABELS`` and
``MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES``, as ``FocalRetinaNet`` does.

Per image: positives = anchors labeled 1; binary negatives = every (anchor, class) sigmoid target
that is 0 and not ignored = (anchors - ignored) * K - positives, K = the dataset's class count.
The ratio is mean binary negatives / mean positives.

COCO at the paper's setting (:func:`coco_reference`): anchors exact for a 640x427 image (COCO's
most common shape) resized to 600x899 with the paper's 9 anchors on P3-P7 (105,849); positives
are an ESTIMATE from simulated COCO-like boxes (7.3 objects/image = 860k instances / 117k
train2017 images; 41% / 34% / 24% small / medium / large by COCO's area ranges at the native
scale, sqrt(area) log-uniform within [8, 32], [32, 96], [96, 400] px; aspect w/h log-normal with
sigma 0.6; uniform positions), matched exactly as above.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_anchor_generator, build_backbone
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from tabulate import tabulate

from focal_plugin.anchors import anchor_sizes, aspect_ratios

COCO_OBJECTS_PER_IMAGE = 7.3
COCO_SIZE_MIX = (0.41, 0.34, 0.24)  # small / medium / large (cocodataset.org detection eval page)
COCO_SIZE_BINS = ((8.0, 32.0), (32.0, 96.0), (96.0, 400.0))  # sqrt(area) px, native scale
COCO_ASPECT_SIGMA = 0.6
COCO_NATIVE_SIZE = (427, 640)  # (h, w)
COCO_NUM_CLASSES = 80
AREA_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, math.inf)}


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Many small tensor ops: one intra-op thread is much faster (and unaffected by CPU load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def feature_sizes(height: int, width: int, strides: Sequence[int], size_divisibility: int
                  ) -> List[Tuple[int, int]]:
    """Feature-map (h, w) per stride for an image padded to ``size_divisibility``, as detectron2's
    ResNet-FPN computes them: ``ceil(padded / stride)`` (stride-2 convs with padding round up)."""
    div = max(1, size_divisibility)
    ph, pw = math.ceil(height / div) * div, math.ceil(width / div) * div
    return [(math.ceil(ph / s), math.ceil(pw / s)) for s in strides]


class AnchorCounter:
    """Anchors (cached per image size) and matcher of ``cfg``'s RetinaNet; :meth:`count` labels them."""

    def __init__(self, cfg: CfgNode):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        features = [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        self.strides = [s.stride for s in features]
        self.size_divisibility = backbone.size_divisibility
        self.generator = build_anchor_generator(cfg, features)
        self.anchors_per_location = self.generator.num_cell_anchors[0]
        r = cfg.MODEL.RETINANET
        self.matcher = Matcher(list(r.IOU_THRESHOLDS), list(r.IOU_LABELS),
                               allow_low_quality_matches=cfg.MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES)
        self.fg_threshold = float(max(r.IOU_THRESHOLDS))
        self._cache: Dict[Tuple[Tuple[int, int], ...], Boxes] = {}

    def anchors(self, height: int, width: int) -> Boxes:
        key = tuple(feature_sizes(height, width, self.strides, self.size_divisibility))
        if key not in self._cache:
            feats = [torch.empty((1, 0, h, w)) for h, w in key]
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch.meshgrid indexing notice
                self._cache[key] = Boxes.cat(self.generator(feats))
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def count(self, height: int, width: int, gt_xyxy: torch.Tensor) -> Dict[str, int]:
        """Anchors, positives, ignored, negatives, objects and objects whose best anchor IoU is
        below the foreground threshold, for one image with ground-truth boxes ``gt_xyxy`` (N, 4)."""
        anchors = self.anchors(height, width)
        n = len(anchors)
        if gt_xyxy.numel() == 0:
            return {"anchors": n, "positives": 0, "ignored": 0, "negatives": n, "objects": 0,
                    "low_quality_only": 0}
        iou = pairwise_iou(Boxes(gt_xyxy), anchors)
        _, labels = self.matcher(iou)
        return {
            "anchors": n, "positives": int((labels == 1).sum()), "ignored": int((labels == -1).sum()),
            "negatives": int((labels == 0).sum()), "objects": int(gt_xyxy.shape[0]),
            "low_quality_only": int((iou.max(dim=1).values < self.fg_threshold).sum()),
        }


def _test_size(cfg: CfgNode, height: int, width: int) -> Tuple[int, int]:
    short = cfg.INPUT.MIN_SIZE_TEST
    if not short:
        return height, width
    return ResizeShortestEdge.get_output_shape(height, width, short, cfg.INPUT.MAX_SIZE_TEST)


def _summarize(per_image: List[Dict[str, int]], num_classes: int) -> Dict[str, float]:
    keys = ("anchors", "positives", "ignored", "negatives", "objects", "low_quality_only")
    tot = {k: float(sum(p[k] for p in per_image)) for k in keys}
    n = max(len(per_image), 1)
    binary_neg = sum((p["anchors"] - p["ignored"]) * num_classes - p["positives"] for p in per_image) / n
    pos = tot["positives"] / n
    return {
        "anchors_per_image": tot["anchors"] / n,
        "objects_per_image": tot["objects"] / n,
        "positive_anchors_per_image": pos,
        "ignored_anchors_per_image": tot["ignored"] / n,
        "negative_anchors_per_image": tot["negatives"] / n,
        "binary_negatives_per_image": binary_neg,
        "negatives_per_positive": binary_neg / pos if pos > 0 else math.inf,
        "positives_per_object": tot["positives"] / tot["objects"] if tot["objects"] else 0.0,
        "objects_low_quality_only": tot["low_quality_only"] / tot["objects"] if tot["objects"] else 0.0,
    }


def _boxes_and_areas(d: Dict[str, Any]) -> Tuple[List[List[float]], List[float]]:
    """XYXY boxes and areas (the annotation's ``area``, else the box's) of a dataset dict, no crowds."""
    boxes, areas = [], []
    for a in d.get("annotations", []):
        if not a.get("iscrowd", 0):
            boxes.append(BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS))
            x0, y0, x1, y1 = boxes[-1]
            areas.append(float(a.get("area", (x1 - x0) * (y1 - y0))))
    return boxes, areas


def _scaled(boxes: Any, native: Tuple[int, int], test: Tuple[int, int]) -> torch.Tensor:
    """XYXY boxes of an image of size ``native`` (h, w) resized to ``test``, as an (N, 4) tensor."""
    (h, w), (th, tw) = native, test
    gt = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return gt * torch.tensor([tw / w, th / h, tw / w, th / h])


def imbalance_stats(cfg: CfgNode, dataset_name: str, max_images: Optional[int] = 200,
                    with_coco: bool = True) -> Dict[str, Any]:
    """Anchors, positive anchors and binary negatives per image of ``dataset_name`` under ``cfg``.

    ``cfg`` needs ``focal_plugin.add_focal_config`` (raises ``ValueError`` otherwise). Uses
    ``max_images`` images evenly spread over the dataset (all when None or <= 0), resized by
    ``INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST`` (0 = native size). Returns a plain dict: the keys of
    :func:`_summarize`, plus ``dataset``, ``num_classes``, ``num_images_used``, ``empty_images``,
    ``test_size_mean``, ``anchors_per_location``, ``area_fractions`` (COCO's small/medium/large by
    the annotation ``area`` at native size) and ``coco`` (:func:`coco_reference`) when ``with_coco``.
    """
    if "FOCAL" not in cfg.MODEL:
        raise ValueError("cfg.MODEL.FOCAL is missing: call focal_plugin.add_focal_config(cfg)")
    dicts = DatasetCatalog.get(dataset_name)
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    num_classes = len(classes) if classes is not None else int(cfg.MODEL.RETINANET.NUM_CLASSES)
    num_classes += int(cfg.MODEL.FOCAL.EMPTY_CLASSES)  # every anchor a negative of each empty class
    if max_images and 0 < max_images < len(dicts):
        idx = np.unique(np.linspace(0, len(dicts) - 1, max_images).round().astype(int))
        dicts = [dicts[i] for i in idx]
    counter = AnchorCounter(cfg)
    per_image, sizes, areas = [], [], []
    with _single_thread():
        for d in dicts:
            native = (int(d["height"]), int(d["width"]))
            test = _test_size(cfg, *native)
            boxes, box_areas = _boxes_and_areas(d)
            per_image.append(counter.count(*test, _scaled(boxes, native, test)))
            sizes.append(test)
            areas += box_areas
    mean_size = np.mean(sizes, axis=0).tolist() if sizes else [0.0, 0.0]
    out: Dict[str, Any] = {
        "dataset": dataset_name, "num_classes": num_classes, "num_images_used": len(per_image),
        "empty_images": sum(1 for p in per_image if p["objects"] == 0),
        "test_size_mean": [float(v) for v in mean_size], "anchors_per_location": counter.anchors_per_location,
    }
    out.update(_summarize(per_image, num_classes))
    arr = np.asarray(areas)
    out["area_fractions"] = {k: float(((arr >= lo) & (arr < hi)).mean()) if arr.size else 0.0
                             for k, (lo, hi) in AREA_RANGES.items()}
    if with_coco:
        out["coco"] = coco_reference()
    return out


def paper_cfg() -> CfgNode:
    """detectron2's Base-RetinaNet (ResNet-50-FPN, P3-P7, IoU 0.4/0.5) with the paper's 9 anchors
    per location, 80 classes and 600 px test images."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from focal_plugin.config import add_focal_config

    cfg = get_cfg()
    add_focal_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Base-RetinaNet.yaml"))
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = anchor_sizes(3)
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = aspect_ratios(3)
    cfg.MODEL.RETINANET.NUM_CLASSES = COCO_NUM_CLASSES
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 600, 1000
    return cfg


def _simulate_coco(rng: np.random.Generator, num_images: int) -> List[np.ndarray]:
    """XYXY boxes of ``num_images`` simulated COCO images at native size (see the module docstring)."""
    h0, w0 = COCO_NATIVE_SIZE
    out = []
    for _ in range(num_images):
        n = int(rng.poisson(COCO_OBJECTS_PER_IMAGE))
        bins = rng.choice(3, size=n, p=np.asarray(COCO_SIZE_MIX) / sum(COCO_SIZE_MIX))
        lo = np.log([COCO_SIZE_BINS[b][0] for b in bins])
        hi = np.log([COCO_SIZE_BINS[b][1] for b in bins])
        side = np.exp(rng.uniform(lo, hi)) if n else np.zeros(0)
        aspect = np.exp(rng.normal(0.0, COCO_ASPECT_SIGMA, size=n))
        bw = np.minimum(side * np.sqrt(aspect), w0)
        bh = np.minimum(side / np.sqrt(aspect), h0)
        x0 = rng.uniform(0, 1, n) * (w0 - bw)
        y0 = rng.uniform(0, 1, n) * (h0 - bh)
        out.append(np.stack([x0, y0, x0 + bw, y0 + bh], axis=1))
    return out


#: ``coco_reference(recompute=True, num_images=2000, seed=0)`` (about 3 minutes on 2 cores).
_COCO_PRECOMPUTED = {
    "num_images_used": 2000,
    "anchors_per_image": 105849.0,  # exact: 76x116 + 38x58 + 19x29 + 10x15 + 5x8 locations x 9
    "objects_per_image": 7.2485,
    "positive_anchors_per_image": 149.837,
    "ignored_anchors_per_image": 277.0625,
    "negative_anchors_per_image": 105422.1005,
    "binary_negatives_per_image": 8445605.163,
    "negatives_per_positive": 56365.285,
    "positives_per_object": 20.6714,
    "objects_low_quality_only": 0.21929,
}


def _coco_header(test_size: Tuple[int, int], anchors_per_location: int) -> Dict[str, Any]:
    return {"dataset": "COCO (paper setting; positives estimated)", "num_classes": COCO_NUM_CLASSES,
            "test_size_mean": [float(test_size[0]), float(test_size[1])],
            "anchors_per_location": anchors_per_location,
            "area_fractions": dict(zip(AREA_RANGES, COCO_SIZE_MIX)), "positives_are_estimate": True}


@lru_cache(maxsize=4)
def _coco_reference(num_images: int, seed: int) -> Dict[str, Any]:
    cfg = paper_cfg()
    counter = AnchorCounter(cfg)
    test = _test_size(cfg, *COCO_NATIVE_SIZE)
    with _single_thread():
        per_image = [counter.count(*test, _scaled(b, COCO_NATIVE_SIZE, test))
                     for b in _simulate_coco(np.random.default_rng(seed), num_images)]
    out = _coco_header(test, counter.anchors_per_location)
    out["num_images_used"] = num_images
    out.update(_summarize(per_image, COCO_NUM_CLASSES))
    return out


def coco_reference(recompute: bool = False, num_images: int = 2000, seed: int = 0) -> Dict[str, Any]:
    """COCO's imbalance at the paper's setting (:func:`paper_cfg`: 600x899 test size, 9 anchors
    per location on P3-P7, 80 classes, IoU 0.4/0.5, low-quality matches on).

    Anchors are exact. Positives are an ESTIMATE from simulated COCO-like boxes (see the module
    docstring); by default the stored result of ``recompute=True`` with 2000 images is returned.
    """
    if recompute:
        return copy.deepcopy(_coco_reference(num_images, seed))
    out = _coco_header((600, 899), 9)
    out.update(_COCO_PRECOMPUTED)
    return out


_ROWS = (
    ("test image size (h x w)", "test_size_mean", "size"),
    ("classes K", "num_classes", "int"),
    ("anchors per location A", "anchors_per_location", "int"),
    ("anchors / image", "anchors_per_image", "num"),
    ("objects / image", "objects_per_image", "num"),
    ("positive anchors / image", "positive_anchors_per_image", "num"),
    ("ignored anchors / image", "ignored_anchors_per_image", "num"),
    ("binary negatives / image", "binary_negatives_per_image", "num"),
    ("negatives per positive", "negatives_per_positive", "num"),
    ("positives per object", "positives_per_object", "num"),
    ("objects w/o IoU>=fg anchor", "objects_low_quality_only", "pct"),
    ("small / medium / large", "area_fractions", "areas"),
    ("images used", "num_images_used", "int"),
)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "size":
        return f"{value[0]:.0f} x {value[1]:.0f}"
    if kind == "int":
        return f"{int(value)}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "areas":
        return " / ".join(f"{100 * value[k]:.0f}%" for k in AREA_RANGES)
    if math.isinf(value):
        return "inf"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def format_table(stats: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table with one column per stats dict (e.g. datasets, then ``coco_reference()``)."""
    rows = [[label, *[_fmt(s.get(key), kind) for s in stats]] for label, key, kind in _ROWS]
    return tabulate(rows, headers=["", *[s["dataset"] for s in stats]], tablefmt="github",
                    disable_numparse=True)
