"""Faster equivalents of four detectron2 functions that ``FocalRetinaNet`` calls every step.

Not part of the paper's method: each gives detectron2's results (bit for bit, or, for the box
loss, up to the order of one summation) with fewer operations or without reading values back from
the device (a host sync each on a GPU). ``tests/modeling/test_fast_ops.py`` compares each with
detectron2's own function; ``benchmarks/profile_train_step.py`` times them.

================================  ==========================================================
here                              detectron2
================================  ==========================================================
``AnchorCache``                   ``DefaultAnchorGenerator.forward``
``label_anchors``                 ``RetinaNet.label_anchors`` (``pairwise_iou`` + ``Matcher``)
``box_regression_loss``           ``modeling.box_regression._dense_box_regression_loss``
``batched_pairwise_iou``          ``structures.pairwise_iou``, with a batch dimension
================================  ==========================================================
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances
from fvcore.nn import smooth_l1_loss

#: feature-map geometries whose anchors are kept (multi-scale training cycles through a few)
ANCHOR_CACHE_SIZE = 16


class AnchorCache:
    """``generator(features)`` (detectron2's ``DefaultAnchorGenerator.forward``), generated once
    per geometry.

    Faster because the anchors depend only on the feature maps' sizes (and the generator's
    strides, offset, device, dtype and cell anchors): they are kept, keyed by these, for the last
    ``size`` geometries, instead of being regenerated (a grid, a shift and a concatenation per
    level) at every training and inference step. The tensors are shared between calls, so
    read-only (detectron2 never writes into anchors). Another generator class (which may depend on
    more than shapes) is called directly, and nothing is cached while tracing, scripting or
    compiling. An edited or replaced cell anchor misses the cache (its storage and version are in
    the key).
    """

    def __init__(self, size: int = ANCHOR_CACHE_SIZE):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, generator: torch.nn.Module, features: List[torch.Tensor]) -> List[Boxes]:
        """``features``: list of (N, C, Hi, Wi) maps -> list of ``Boxes`` (Hi * Wi * A, 4) per
        level, as ``generator(features)``."""
        if type(generator) is not DefaultAnchorGenerator or torch.jit.is_scripting() \
                or torch.jit.is_tracing() or getattr(torch.compiler, "is_compiling", lambda: False)():
            return generator(features)
        cells = list(generator.cell_anchors)
        key = (tuple(tuple(f.shape[-2:]) for f in features), tuple(generator.strides),
               float(generator.offset), features[0].device, cells[0].device, cells[0].dtype,
               tuple((c.data_ptr(), c._version) for c in cells))
        cached = self._entries.get(key)
        if cached is None:
            cached = [b.tensor for b in generator(features)]
            self._entries[key] = cached
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return [Boxes(t) for t in cached]


def label_anchors(anchors: List[Boxes], gt_instances: List[Instances], matcher: Matcher,
                  num_classes: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """detectron2's ``RetinaNet.label_anchors`` with ``anchor_matcher = matcher`` (same inputs, same
    outputs, bit for bit), for all images at once.

    Args:
        anchors: list of ``Boxes`` per level (one image's anchors; the batch shares them).
        gt_instances: N ``Instances`` with ``gt_boxes`` (Gi, 4) and ``gt_classes`` (Gi,) int64.
        matcher: detectron2's ``Matcher`` (its thresholds, labels and low-quality rule are used).
        num_classes: K, the background label.

    Returns:
        N int64 (R,) labels in {-1 ignore, 0..K-1, K background} and N (R, 4) matched boxes
        (zeros for an image without ground truth), R = all anchors of all levels.

    Faster because nothing is read back to the host: the ground truth is padded to the largest
    count in the batch (padding has IoU -1, which never matches), the IoU of the whole batch is
    one ``batched_pairwise_iou``, and the matcher's rules are masked fills instead of its
    per-image boolean indexing, ``nonzero`` and ``assert torch.all(iou >= 0)``. When padding would
    more than double the boxes (N x max G > 2 sum G + N), images are labelled one at a time:
    memory and time then scale with the batch's total box count, not N times its largest.
    """
    sizes = [len(x) for x in gt_instances]
    if len(sizes) > 1 and len(sizes) * max(sizes) > 2 * sum(sizes) + len(sizes):
        # padding would more than double the (N, G, R) IoU's work and memory (one crowded image):
        # image by image, so the cost scales with the total box count, as detectron2's
        per_image = [label_anchors(anchors, [x], matcher, num_classes) for x in gt_instances]
        return [p[0][0] for p in per_image], [p[1][0] for p in per_image]
    anchors_t = Boxes.cat(anchors).tensor  # (R, 4)
    n, r = len(gt_instances), anchors_t.shape[0]
    if max(sizes, default=0) == 0:  # no ground truth in the batch: all background
        labels = anchors_t.new_full((n, r), num_classes, dtype=torch.int64)
        return list(labels.unbind(0)), list(anchors_t.new_zeros((n, r, 4)).unbind(0))
    boxes, classes = pad_ground_truth(gt_instances, max(sizes))
    labels, matched_boxes = label_padded(anchors_t, boxes, classes, matcher, num_classes)
    return list(labels.unbind(0)), list(matched_boxes.unbind(0))


def pad_ground_truth(gt_instances: List[Instances], count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """N ``Instances`` with at most ``count`` boxes each -> (N, count, 4) boxes (zeros where
    padded) and (N, count) int64 classes (-1 where padded), on the boxes' device and dtype."""
    ref = gt_instances[0].gt_boxes.tensor
    boxes = ref.new_zeros((len(gt_instances), count, 4))
    classes = torch.full((len(gt_instances), count), -1, dtype=torch.int64, device=ref.device)
    for i, inst in enumerate(gt_instances):
        boxes[i, : len(inst)] = inst.gt_boxes.tensor
        classes[i, : len(inst)] = inst.gt_classes
    return boxes, classes


def label_padded(anchors: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, matcher: Matcher,
                 num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`label_anchors` on padded ground truth, with every shape fixed by the inputs' (no
    host sync, no data-dependent shape: what a captured step needs).

    Args:
        anchors: (R, 4) XYXY anchors of all levels; boxes: (N, G, 4) ground truth, classes:
        (N, G) int64 with -1 marking padding (:func:`pad_ground_truth`); matcher, num_classes: as
        :func:`label_anchors`.

    Returns:
        (N, R) int64 labels in {-1 ignore, 0..K-1, K background} and (N, R, 4) matched boxes
        (zeros for an image without ground truth): :func:`label_anchors`'s, whatever G is."""
    n, r = boxes.shape[0], anchors.shape[0]
    real = classes >= 0
    iou = batched_pairwise_iou(boxes, anchors).masked_fill_(~real[:, :, None], -1.0)  # (N, G, R)
    matches, match_labels = _match(iou, real, matcher)
    labels = classes.gather(1, matches)
    labels.masked_fill_(match_labels == 0, num_classes)
    labels.masked_fill_(match_labels == -1, -1)
    labels.masked_fill_(~real.any(dim=1, keepdim=True), num_classes)  # an image without ground truth
    matched_boxes = boxes.gather(1, matches[:, :, None].expand(n, r, 4))  # zeros for such images
    return labels, matched_boxes


def _match(iou: torch.Tensor, real: torch.Tensor, matcher: Matcher) -> Tuple[torch.Tensor, torch.Tensor]:
    """``Matcher.__call__`` on (N, G, R) IoU (padding -1; ``real`` (N, G) marks real boxes) ->
    (N, R) int64 matched index, (N, R) int8 label in {-1, 0, 1}."""
    matched_vals, matches = iou.max(dim=1)  # (N, R)
    match_labels = torch.ones_like(matches, dtype=torch.int8)
    for label, low, high in zip(matcher.labels, matcher.thresholds[:-1], matcher.thresholds[1:]):
        match_labels.masked_fill_((matched_vals >= low) & (matched_vals < high), label)
    if matcher.allow_low_quality_matches:  # each gt's best anchors (all ties) are foreground
        best = (iou == iou.max(dim=2, keepdim=True).values) & real[:, :, None]
        match_labels.masked_fill_(best.any(dim=1), 1)
    return matches, match_labels


def box_regression_loss(
    anchors: List[Boxes],
    box2box_transform: Box2BoxTransform,
    pred_anchor_deltas: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """detectron2's ``_dense_box_regression_loss`` (same arguments): the box loss summed over the
    anchors in ``fg_mask``, a scalar.

    Args:
        anchors: list of ``Boxes`` (Ri, 4) per level; pred_anchor_deltas: list of (N, Ri, 4) per
        level; gt_boxes: N (R, 4) matched boxes; fg_mask: (N, R) bool.

    Faster for the smooth-L1 (and L1, beta 0) type, computed for the whole batch at once without
    boolean indexing (a host sync and a copy): a masked sum, with non-foreground anchors regressing
    onto themselves so every term stays finite. The same terms and gradients; only the order of
    the final summation differs. Other types ("giou", "diou", "ciou") call detectron2's function.
    """
    if box_reg_loss_type != "smooth_l1":
        return _dense_box_regression_loss(
            anchors, box2box_transform, pred_anchor_deltas, gt_boxes, fg_mask,
            box_reg_loss_type=box_reg_loss_type, smooth_l1_beta=smooth_l1_beta,
        )
    anchors_t = Boxes.cat(anchors).tensor  # (R, 4)
    n, r = fg_mask.shape
    src = anchors_t.expand(n, r, 4)
    target = torch.where(fg_mask[:, :, None], torch.stack(gt_boxes), src)
    target_deltas = box2box_transform.get_deltas(src.reshape(-1, 4), target.reshape(-1, 4))
    per_coord = smooth_l1_loss(cat(pred_anchor_deltas, dim=1), target_deltas.view(n, r, 4),
                               beta=smooth_l1_beta, reduction="none")
    return torch.where(fg_mask[:, :, None], per_coord, per_coord.new_zeros(())).sum()


def batched_pairwise_iou(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, G, 4) boxes, (R, 4) anchors (XYXY, float) -> (N, G, R) IoU of the same dtype:
    detectron2's ``pairwise_iou(Boxes(boxes[i]), Boxes(anchors))`` for every i at once.

    Faster because the batch is one broadcast instead of N calls; the same operations in the same
    order, so the same float values (0 where boxes do not overlap, also for empty boxes).
    """
    area1 = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    area2 = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    width_height = torch.min(boxes[:, :, None, 2:], anchors[:, 2:]) - torch.max(
        boxes[:, :, None, :2], anchors[:, :2]
    )
    width_height.clamp_(min=0)
    inter = width_height.prod(dim=3)
    return torch.where(inter > 0, inter / (area1[:, :, None] + area2 - inter),
                       torch.zeros(1, dtype=inter.dtype, device=inter.device))
