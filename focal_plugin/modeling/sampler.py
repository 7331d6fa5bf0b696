"""Which anchors enter the classification loss: all non-ignored ones, or OHEM's selection.

This is the seam between anchor labelling and the loss: a sampler returns a (N, R) bool mask;
``FocalRetinaNet.losses`` applies the classification loss to the masked anchors only. A sampler
whose mask keeps most anchors says so with ``dense = True``: the loss then runs over every anchor
and the mask zeroes the others (no boolean indexing, hence no host sync); otherwise the masked
anchors are gathered first.
"""

from __future__ import annotations

from typing import List

import torch
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes

from focal_plugin.losses import ClassificationLoss
from focal_plugin.modeling.ohem import DEFAULT_PRE_NMS_TOPK, check_ohem_args, ohem_select_unchecked


class AllAnchorsSampler:
    """The paper's focal-loss setting: every anchor that is not ignored (label >= 0)."""

    dense = True

    def __call__(
        self, *, logits: torch.Tensor, deltas: List[torch.Tensor], anchors: List[Boxes],
        gt_labels: torch.Tensor,
    ) -> torch.Tensor:
        return gt_labels >= 0


class OhemSampler:
    """Online hard example mining for a one-stage detector (Table 1d).

    Scores every non-ignored anchor by its CE loss summed over classes (``scorer``, no graph),
    decodes its predicted box, and keeps per image the ``batch_size_per_image`` highest-loss
    anchors that survive NMS at ``nms_thresh`` (with ``positive_fraction`` > 0: at most that
    share of positives, "OHEM 1:3" being 0.25). The hyperparameters are checked here, once
    (``ValueError`` naming the argument); nothing is validated per iteration.
    """

    dense = False  # B anchors per image: gathering them beats a loss over all anchors

    def __init__(
        self,
        *,
        scorer: ClassificationLoss,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        batch_size_per_image: int,
        nms_thresh: float,
        positive_fraction: float = -1.0,
        pre_nms_topk: int | None = DEFAULT_PRE_NMS_TOPK,
    ):
        check_ohem_args(num_classes, batch_size_per_image, nms_thresh, positive_fraction, pre_nms_topk)
        self.scorer = scorer
        self.box2box_transform = box2box_transform
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.nms_thresh = nms_thresh
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = pre_nms_topk

    @torch.no_grad()
    def __call__(
        self, *, logits: torch.Tensor, deltas: List[torch.Tensor], anchors: List[Boxes],
        gt_labels: torch.Tensor,
    ) -> torch.Tensor:
        n, r = gt_labels.shape
        deltas_all = cat(deltas, dim=1)  # (N, R, 4)
        anchors_all = Boxes.cat(anchors)
        # Every anchor is scored (an ignored one as background): no boolean indexing, no host sync;
        # ignored anchors rank last whatever their score (ohem_select masks them).
        labels = torch.where(gt_labels >= 0, gt_labels, self.num_classes)
        losses = self.scorer(logits.detach().flatten(0, 1), labels.flatten()).float().view(n, r)
        boxes = self.box2box_transform.apply_deltas(
            deltas_all.detach().reshape(n * r, 4), anchors_all.tensor.repeat(n, 1)
        ).view(n, r, 4)
        return ohem_select_unchecked(
            losses, boxes, gt_labels, self.num_classes, self.batch_size_per_image,
            self.nms_thresh, self.positive_fraction, self.pre_nms_topk,
        )
