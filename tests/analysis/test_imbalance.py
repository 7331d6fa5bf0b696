"""focal_plugin.analysis.imbalance: anchors, positives and negatives per image, next to COCO's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone

from focal_plugin.analysis.imbalance import AnchorCounter, coco_reference, feature_sizes, imbalance_stats
from focal_plugin.config import add_focal_config
from focal_plugin.data import SyntheticConfig, register_dense_shapes

REPO = Path(__file__).resolve().parents[2]
SQUARES = SyntheticConfig(name="squares96", num_train=8, num_val=4, image_size=(96, 96), num_classes=5,
                          mean_objects=6.0, max_objects=12, empty_fraction=0.2, scale_range=(0.12, 0.5))


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """The train split of SQUARES (96x96 images) registered under a test name."""
    name = "focal_test_imbalance_train"
    register_dense_shapes(name, SQUARES, "train", root=tmp_path_factory.mktemp("datasets"))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _retinanet_cfg():
    """detectron2's Base-RetinaNet (9 anchors per location on P3-P7) at the images' native size."""
    cfg = get_cfg()
    add_focal_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Base-RetinaNet.yaml"))
    cfg.INPUT.MIN_SIZE_TEST = 0
    return cfg


def test_feature_sizes_and_coco_anchor_count():
    sizes = feature_sizes(600, 899, [8, 16, 32, 64, 128], 32)
    assert sizes == [(76, 116), (38, 58), (19, 29), (10, 15), (5, 8)]
    assert 9 * sum(h * w for h, w in sizes) == coco_reference()["anchors_per_image"] == 105849


def test_feature_sizes_match_the_backbone_and_strides_come_from_output_shape():
    cfg = _retinanet_cfg()
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64  # a cheap forward
    backbone = build_backbone(cfg).eval()
    counter = AnchorCounter(cfg)
    assert counter.strides == [8, 16, 32, 64, 128] and counter.size_divisibility == 32
    for h, w in [(96, 96), (101, 157), (600, 899)]:
        with torch.no_grad():
            x = torch.zeros(1, 3, -(-h // 32) * 32, -(-w // 32) * 32)  # padded as ImageList does
            out = backbone(x)
        real = [tuple(out[f].shape[-2:]) for f in cfg.MODEL.RETINANET.IN_FEATURES]
        assert feature_sizes(h, w, counter.strides, counter.size_divisibility) == real
    cfg.MODEL.RETINANET.IN_FEATURES = ["p4", "p5", "p6"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[64], [128], [256]]
    assert AnchorCounter(cfg).strides == [16, 32, 64]


def test_imbalance_stats_are_consistent(squares):
    cfg = _retinanet_cfg()
    s = imbalance_stats(cfg, squares, max_images=0, with_coco=False)
    # 96x96 at native size: 12^2 + 6^2 + 3^2 + 2^2 + 1^2 locations x 9 anchors
    assert s["anchors_per_image"] == 9 * 194 and s["anchors_per_location"] == 9
    assert s["positive_anchors_per_image"] > 0 and s["num_classes"] == SQUARES.num_classes
    non_ignored = s["anchors_per_image"] - s["ignored_anchors_per_image"]
    expected_neg = non_ignored * 5 - s["positive_anchors_per_image"]
    assert s["binary_negatives_per_image"] == pytest.approx(expected_neg)
    assert s["negatives_per_positive"] == pytest.approx(
        s["binary_negatives_per_image"] / s["positive_anchors_per_image"])
    assert s["positives_per_object"] >= 1.0  # low-quality matches give every object an anchor
    assert s["objects_low_quality_only"] > 0  # ... including objects no anchor covers at IoU 0.5

    cfg.MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES = False
    strict = imbalance_stats(cfg, squares, max_images=0, with_coco=False)
    assert strict["positive_anchors_per_image"] < s["positive_anchors_per_image"]

    cfg.INPUT.MIN_SIZE_TEST = 192
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]  # 1 scale x 3 aspects
    s2 = imbalance_stats(cfg, squares, max_images=3, with_coco=False)
    assert s2["anchors_per_image"] == 3 * (24 * 24 + 12 * 12 + 6 * 6 + 3 * 3 + 2 * 2)
    assert s2["anchors_per_location"] == 3
    assert s2["num_images_used"] == 3 and s2["test_size_mean"] == [192.0, 192.0]


def test_imbalance_stats_needs_the_focal_keys(squares):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Base-RetinaNet.yaml"))
    with pytest.raises(ValueError, match="add_focal_config"):
        imbalance_stats(cfg, squares)


def test_coco_reference_estimate_is_reproducible_in_spirit():
    fresh = coco_reference(recompute=True, num_images=12)
    stored = coco_reference()
    assert fresh["anchors_per_image"] == stored["anchors_per_image"]
    assert fresh["anchors_per_location"] == stored["anchors_per_location"] == 9
    assert fresh["test_size_mean"] == stored["test_size_mean"] == [600.0, 899.0]
    assert 0.5 < fresh["positive_anchors_per_image"] / stored["positive_anchors_per_image"] < 2


def test_cli_prints_table(squares, capsys):
    spec = importlib.util.spec_from_file_location("dataset_stats", REPO / "tools/dataset_stats.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dataset", squares, "--max-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "negatives per positive" in out and "105,849" in out and squares in out
