"""``focal_plugin/modeling/fast_ops.py`` gives detectron2's results: each function against
detectron2's own on random inputs, with the edge cases (no ground truth in an image or in the
whole batch, images of different sizes in one batch, a box overlapping no anchor, duplicated
boxes, empty boxes, another anchor generator)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances, pairwise_iou

from focal_plugin.modeling.fast_ops import (
    ANCHOR_CACHE_SIZE,
    AnchorCache,
    batched_pairwise_iou,
    box_regression_loss,
    label_anchors,
    label_padded,
    pad_ground_truth,
)

from helpers import make_batch, tiny_cfg

STRIDES = (8, 16, 32)
NUM_CLASSES = 3


def _generator(offset: float = 0.0) -> DefaultAnchorGenerator:
    return DefaultAnchorGenerator(sizes=[[16, 20], [32, 40], [64, 80]], aspect_ratios=[[0.5, 1.0, 2.0]],
                                  strides=list(STRIDES), offset=offset)


def _features(height: int, width: int, n: int = 2):
    return [torch.zeros(n, 1, -(-height // s), -(-width // s)) for s in STRIDES]


def _matcher(low_quality: bool) -> Matcher:  # RetinaNet's (cfg.MODEL.RETINANET.IOU_*)
    return Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=low_quality)


def _boxes(n: int, size, g: torch.Generator) -> torch.Tensor:
    """(n, 4) XYXY boxes inside an image of ``size`` = (height, width)."""
    h, w = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = 1 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
    return torch.cat([xy, xy + wh], 1)


def _gt(counts, sizes, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, size in zip(counts, sizes):
        inst = Instances(size)
        inst.gt_boxes = Boxes(_boxes(n, size, g))
        inst.gt_classes = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        out.append(inst)
    return out


def _reference_labels(anchors, gt, matcher):
    """detectron2's RetinaNet.label_anchors (it reads only these two attributes of the model)."""
    model = SimpleNamespace(anchor_matcher=matcher, num_classes=NUM_CLASSES)
    return RetinaNet.label_anchors(model, anchors, gt)


# -------------------------------------------------------------------------- pairwise IoU
@pytest.mark.parametrize("num_boxes", [0, 1, 9])
def test_batched_pairwise_iou_equals_pairwise_iou(num_boxes):
    g = torch.Generator().manual_seed(num_boxes)
    anchors = _boxes(200, (96, 128), g)  # float32, as detectron2's Boxes always are
    boxes = _boxes(3 * num_boxes, (96, 128), g).view(3, num_boxes, 4)
    if num_boxes > 1:
        boxes[0, 0] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # empty (zero width)
        boxes[1, 0] = anchors[5]  # an anchor itself: IoU 1
        boxes[2, 0] = torch.tensor([900.0, 900.0, 901.0, 901.0])  # overlaps no anchor
    ours = batched_pairwise_iou(boxes, anchors)
    assert ours.shape == (3, num_boxes, 200) and ours.dtype == torch.float32
    for i in range(3):
        assert torch.equal(ours[i], pairwise_iou(Boxes(boxes[i]), Boxes(anchors)))  # bit for bit


# ------------------------------------------------------------------------------ anchors
@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_cached_anchors_equal_detectron2s_and_are_generated_once_per_geometry(monkeypatch, offset):
    generator, cache = _generator(offset), AnchorCache()
    calls = []
    real = DefaultAnchorGenerator.forward
    monkeypatch.setattr(DefaultAnchorGenerator, "forward", lambda self, f: calls.append(1) or real(self, f))
    for size in ((64, 64), (96, 64), (64, 64), (96, 64), (128, 96)):
        feats = _features(*size)
        cached, fresh = cache(generator, feats), real(generator, feats)
        assert len(cached) == len(fresh) == len(STRIDES)
        for a, b in zip(cached, fresh):
            assert isinstance(a, Boxes) and torch.equal(a.tensor, b.tensor)
    assert len(calls) == 3  # 64x64, 96x64, 128x96: one generation each


def test_anchor_cache_misses_when_the_generator_changes_and_is_bounded():
    generator, cache = _generator(), AnchorCache()
    feats = _features(64, 64)
    first = cache(generator, feats)[0].tensor.clone()
    with torch.no_grad():  # an edited cell anchor must not be served from the cache
        next(iter(generator.cell_anchors)).mul_(2)
    assert torch.equal(cache(generator, feats)[0].tensor, generator(feats)[0].tensor)
    assert not torch.equal(cache(generator, feats)[0].tensor, first)
    for size in range(32, 32 + 8 * (ANCHOR_CACHE_SIZE + 3), 8):
        cache(generator, _features(size, size))
    assert len(cache) == ANCHOR_CACHE_SIZE


def test_another_anchor_generator_is_called_every_time():
    class Shifted(DefaultAnchorGenerator):  # may depend on more than shapes: never cached
        pass

    generator, cache = Shifted(sizes=[[32]], aspect_ratios=[[1.0]], strides=[8]), AnchorCache()
    feats = [torch.zeros(1, 1, 8, 8)]
    for _ in range(2):
        assert torch.equal(cache(generator, feats)[0].tensor, generator(feats)[0].tensor)
    assert len(cache) == 0


# ---------------------------------------------------------------------------- labelling
@pytest.mark.parametrize("counts", [(3, 5), (0, 4), (0, 0), (1, 0, 7), (60, 1, 2)])
@pytest.mark.parametrize("low_quality", [True, False])
def test_batched_label_anchors_equal_detectron2s(counts, low_quality):
    sizes = [(96, 96), (64, 96), (96, 48)][: len(counts)]  # images of different sizes, padded to 96
    anchors = _generator()(_features(96, 96))
    gt = _gt(counts, sizes, seed=sum(counts))
    if counts[0] > 1:  # a box overlapping no anchor at all and a duplicated box (ties)
        gt[0].gt_boxes.tensor[0] = torch.tensor([500.0, 500.0, 501.0, 501.0])
        gt[0].gt_boxes.tensor[1] = gt[0].gt_boxes.tensor[-1]
    matcher = _matcher(low_quality)
    ours_labels, ours_boxes = label_anchors(anchors, gt, matcher, NUM_CLASSES)
    ref_labels, ref_boxes = _reference_labels(anchors, gt, matcher)
    assert len(ours_labels) == len(ref_labels) == len(counts)
    for a, b in zip(ours_labels, ref_labels):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for a, b in zip(ours_boxes, ref_boxes):
        assert torch.equal(a, b)


@pytest.mark.parametrize("counts", [(3, 5), (0, 4), (0, 0), (60, 1, 2)])
@pytest.mark.parametrize("extra", [0, 1, 40])
def test_labelling_padded_ground_truth_equals_detectron2s_at_any_padded_count(counts, extra):
    """The static-shape step pads every image to a fixed count (more than the batch's largest):
    the padding (class -1) never matches, whatever its count."""
    sizes = [(96, 96), (64, 96), (96, 48)][: len(counts)]
    anchors = _generator()(_features(96, 96))
    gt = _gt(counts, sizes, seed=7 + sum(counts))
    boxes, classes = pad_ground_truth(gt, max(counts) + extra or 1)
    assert boxes.shape == (len(counts), max(counts) + extra or 1, 4)
    assert [int((c >= 0).sum()) for c in classes] == list(counts)
    labels, matched = label_padded(Boxes.cat(anchors).tensor, boxes, classes, _matcher(True), NUM_CLASSES)
    ref_labels, ref_boxes = _reference_labels(anchors, gt, _matcher(True))
    assert torch.equal(labels, torch.stack(ref_labels)) and torch.equal(matched, torch.stack(ref_boxes))


@pytest.mark.parametrize("counts", [(3000, 2, 1, 0), (5, 6, 4, 5), (0, 9, 0, 0)])
def test_labelling_cost_scales_with_the_total_box_count(counts, monkeypatch):
    """One crowded image in a batch must not make every image pay for its boxes: the IoU tensors
    labelling builds hold at most 2 x (all boxes) + N rows of R anchors, whatever the largest
    count (padded batching when it costs little, image by image otherwise)."""
    from focal_plugin.modeling import fast_ops

    rows = []
    real = fast_ops.batched_pairwise_iou
    def recording(boxes, anchors):
        rows.append(boxes.shape[0] * boxes.shape[1])
        return real(boxes, anchors)

    monkeypatch.setattr(fast_ops, "batched_pairwise_iou", recording)
    anchors = _generator()(_features(96, 96))
    gt = _gt(counts, [(96, 96)] * len(counts), seed=1)
    labels, _ = label_anchors(anchors, gt, _matcher(True), NUM_CLASSES)
    assert len(labels) == len(counts)
    assert sum(rows) <= 2 * sum(counts) + len(counts)
    if counts[0] == 3000:  # labelled image by image: the crowded image's labels are detectron2's
        ref, _ = _reference_labels(anchors, gt, _matcher(True))
        assert all(torch.equal(a, b) for a, b in zip(labels, ref))


def test_the_models_anchors_and_labels_equal_detectron2s_on_a_batch_of_different_sizes():
    """Through FocalRetinaNet: images of 64x96 and 80x48 padded into one batch, one without boxes."""
    model = build_model(tiny_cfg())
    batch = make_batch(num_images=2, size=96, empty=(1,))
    batch[0]["image"] = batch[0]["image"][:, :64]
    batch[1]["image"] = batch[1]["image"][:, :80, :48]
    images = model.preprocess_image(batch)
    feats = model.backbone(images.tensor)
    features = [feats[f] for f in model.head_in_features]
    anchors = model._anchors(features)
    for a, b in zip(anchors, model.anchor_generator(features)):
        assert torch.equal(a.tensor, b.tensor)
    gt = [b["instances"] for b in batch]
    gt[0].gt_boxes.clip((64, 96))
    for a, b in zip(model.label_anchors(anchors, gt), RetinaNet.label_anchors(model, anchors, gt)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- box loss
def _box_inputs(counts=(3, 0), seed=0):
    anchors = _generator()(_features(96, 96))
    gt_labels, gt_boxes = label_anchors(anchors, _gt(counts, [(96, 96)] * len(counts), seed),
                                        _matcher(True), NUM_CLASSES)
    fg = torch.stack(gt_labels)
    fg = (fg >= 0) & (fg != NUM_CLASSES)
    g = torch.Generator().manual_seed(seed)
    deltas = [torch.randn(len(counts), len(a), 4, generator=g).requires_grad_() for a in anchors]
    return anchors, gt_boxes, fg, deltas


@pytest.mark.parametrize("loss_type,beta", [("smooth_l1", 0.0), ("smooth_l1", 0.1), ("giou", 0.0)])
@pytest.mark.parametrize("counts", [(3, 0), (0, 0)])
def test_box_loss_equals_detectron2s_with_the_same_gradients(loss_type, beta, counts):
    anchors, gt_boxes, fg, deltas = _box_inputs(counts)
    assert fg.any() == (sum(counts) > 0)
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    args = (anchors, transform, deltas, gt_boxes, fg)
    ours = box_regression_loss(*args, box_reg_loss_type=loss_type, smooth_l1_beta=beta)
    ref = _dense_box_regression_loss(*args, box_reg_loss_type=loss_type, smooth_l1_beta=beta)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)  # only the summation order differs
    if not fg.any():
        assert ours.item() == 0.0
    for a, b in zip(torch.autograd.grad(ours, deltas), torch.autograd.grad(ref, deltas)):
        assert torch.equal(a, b)
