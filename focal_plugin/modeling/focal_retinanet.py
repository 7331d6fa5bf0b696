"""``FocalRetinaNet``: detectron2's RetinaNet with the paper's loss, init, normalization and
sampling chosen in ``cfg.MODEL.FOCAL``.

Only what must change is overridden: construction (``from_config``), the classification loss
(``losses``), and score computation at inference (sigmoid or softmax). Four steps call faster
equivalents of detectron2's functions, with the same results (``modeling/fast_ops.py``, tested in
``tests/modeling/test_fast_ops.py``): anchor generation, anchor labelling, IoU and the box loss;
the training step reads nothing back from the device but the one stacked statistics read
(``_log_and_check``); see ``benchmarks/profile_train_step.py``.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.backbone import build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.build import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from focal_plugin.amp import amp_dtype, inference_autocast, precision_name
from focal_plugin.losses import ClassificationLoss, build_classification_loss
from focal_plugin.modeling import fast_ops
from focal_plugin.modeling.config_keys import build_loss_from_cfg
from focal_plugin.modeling.feature_cache import install_feature_cache
from focal_plugin.modeling.head import FocalRetinaNetHead
from focal_plugin.modeling.sampler import AllAnchorsSampler, OhemSampler
from focal_plugin.modeling.static_shapes import DeviceStats, StaticShapes, pad_images
from focal_plugin.modeling.validate import check_focal_config, check_normalizer
from focal_plugin.registry import register

logger = logging.getLogger(__name__)

# initial value and momentum of detectron2's EMA loss normalizer
_EMA_START, _EMA_MOMENTUM = 100, 0.9


def _storage():
    try:
        return get_event_storage()
    except AssertionError:  # called outside a trainer: nothing to log to
        return None


def _refuse_unread_focal_args(kwargs: Dict[str, Any]) -> None:
    """detectron2's ``focal_loss_alpha`` / ``focal_loss_gamma`` (in its LazyConfig model) reach
    RetinaNet, but FocalRetinaNet's loss is ``classification_loss``: a changed value would have no
    effect, so it is refused naming the argument that works."""
    params = inspect.signature(RetinaNet.__init__).parameters
    for name, instead in (("focal_loss_alpha", "alpha"), ("focal_loss_gamma", "gamma")):
        default = params[name].default if name in params else None
        if name in kwargs and kwargs[name] != default:
            raise ValueError(
                f"{name} = {kwargs[name]!r} has no effect on FocalRetinaNet (its loss is "
                f"classification_loss): set the loss's {instead} (LazyConfig: "
                f"model.classification_loss.{instead}; YAML: MODEL.FOCAL.{instead.upper()}), and leave "
                f"{name} at {default!r}")


@register(META_ARCH_REGISTRY)
class FocalRetinaNet(RetinaNet):
    """RetinaNet (§4) with a registered classification loss, selectable loss normalizer and an
    anchor sampler seam (all non-ignored anchors, or OHEM)."""

    @configurable
    def __init__(
        self,
        *,
        classification_loss: ClassificationLoss,
        normalizer: str = "num_pos",
        anchor_sampler: Optional[Callable] = None,
        test_precision: Optional[str] = None,
        static_shapes: Optional[StaticShapes] = None,
        empty_classes: int = 0,
        channels_last: bool = False,
        **kwargs,
    ):
        """
        Args:
            classification_loss: a ``focal_plugin.losses.ClassificationLoss``; it returns the loss
                per anchor (summed over classes) and turns logits into scores at inference.
            normalizer: "num_pos" (the paper: positive anchors of the batch, summed over workers)
                or "ema" (detectron2: EMA of that count, start 100, momentum 0.9).
            anchor_sampler: callable(logits (N, R, C), deltas (list of (N, Ri, 4) per level),
                anchors (list of Boxes per level), gt_labels (N, R)) -> (N, R) bool mask of the
                anchors entering the classification loss; default: all non-ignored anchors.
            test_precision: None (float32 inference) or "bfloat16" / "float16": at inference the
                backbone and head run under ``torch.autocast`` in that dtype, scores, box decoding
                and NMS in float32 (YAML: ``TEST.AMP``).
            static_shapes: None (eager shapes) or the static-shape training step's sizes
                (``focal_plugin.modeling.static_shapes``; YAML: ``MODEL.FOCAL.STATIC_SHAPES``).
            empty_classes: E classification outputs after the ``num_classes`` of the data that no
                anchor is ever labelled with (all their anchors are negatives), dropped at
                inference: more easy negatives and nothing else changed (YAML:
                ``MODEL.FOCAL.EMPTY_CLASSES``). The head must predict ``num_classes + E`` classes.
            channels_last: the 4-d weights (convolutions) in ``torch.channels_last`` memory format,
                so are the feature maps they compute (YAML: ``MODEL.FOCAL.CHANNELS_LAST``).
            kwargs: everything detectron2's ``RetinaNet`` takes.
        """
        check_normalizer(normalizer)
        inference_autocast(torch.device("cpu"), test_precision)  # ValueError for an unknown name
        _refuse_unread_focal_args(kwargs)
        super().__init__(**kwargs)
        self.classification_loss = classification_loss
        self.normalizer = normalizer
        self.test_precision = test_precision
        self.static_shapes = static_shapes
        self._device_stats = DeviceStats(static_shapes.stats_period) if static_shapes else None
        self.anchor_sampler = anchor_sampler or AllAnchorsSampler()
        if not isinstance(empty_classes, int) or isinstance(empty_classes, bool) or empty_classes < 0:
            raise ValueError(f"empty_classes = {empty_classes!r}: expected an integer >= 0")
        if empty_classes and anchor_sampler is not None:
            raise ValueError("empty_classes with an anchor_sampler (OHEM): not supported")
        self.empty_classes = empty_classes
        self.num_logits = classification_loss.num_logits(self.num_classes + empty_classes)
        self._check_head_matches_loss()
        self._anchor_cache = fast_ops.AnchorCache()  # see _anchors
        if channels_last:  # 4-d parameters and buffers only; .to(device) keeps the format
            self.to(memory_format=torch.channels_last)
            if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None
                   and m.weight.requires_grad for m in self.modules()):
                # measured with torch 2.14: at 1 thread its channels_last batch-norm backward is ~1 %
                # off a float64 reference (the default layout: 1e-5); FrozenBN and GN are not affected
                logger.warning("MODEL.FOCAL.CHANNELS_LAST with trainable BatchNorm: torch's CPU "
                               "channels_last batch-norm backward can be ~1 %% off at one thread; "
                               "prefer FrozenBN / GN or the default layout")

    def _check_head_matches_loss(self) -> None:
        # Coupled fields (LazyConfig users set them separately): the head's logits per anchor
        # follow from the loss (K sigmoid logits, or K+1 with background for softmax FL).
        num_anchors = self.anchor_generator.num_cell_anchors[0]
        out = getattr(getattr(self.head, "cls_score", None), "out_channels", None)
        if out is not None and out != num_anchors * self.num_logits:
            bg = " + background" if self.classification_loss.is_softmax else ""
            raise ValueError(
                f"the head predicts {out} logits per location but the model needs {num_anchors} "
                f"anchors x {self.num_logits} logits ({type(self.classification_loss).__name__} with "
                f"num_classes={self.num_classes}"
                + (f" + {self.empty_classes} empty classes" if self.empty_classes else "") + f"{bg}): "
                "make head.num_classes equal model.num_classes and head.softmax equal "
                "classification_loss.is_softmax (and head.num_anchors the anchor generator's count)"
            )

    @classmethod
    def from_config(cls, cfg):
        check_focal_config(cfg)  # every MODEL.FOCAL value, naming its key
        focal, retina = cfg.MODEL.FOCAL, cfg.MODEL.RETINANET
        classification_loss = build_loss_from_cfg(cfg)
        box2box_transform = Box2BoxTransform(weights=retina.BBOX_REG_WEIGHTS)
        backbone = build_backbone(cfg)
        install_feature_cache(backbone, cfg.MODEL.BACKBONE.FEATURE_CACHE_MB)
        feature_shapes = _head_input_shapes(cfg, backbone)
        return {
            "backbone": backbone,
            "head": FocalRetinaNetHead(cfg, feature_shapes),
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": box2box_transform,
            "anchor_matcher": Matcher(
                retina.IOU_THRESHOLDS,
                retina.IOU_LABELS,
                allow_low_quality_matches=focal.ALLOW_LOW_QUALITY_MATCHES,
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": retina.NUM_CLASSES,
            "head_in_features": retina.IN_FEATURES,
            "smooth_l1_beta": retina.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": retina.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": retina.SCORE_THRESH_TEST,
            "test_topk_candidates": retina.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": retina.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "classification_loss": classification_loss,
            "normalizer": focal.NORMALIZER,
            "anchor_sampler": _ohem_sampler(cfg, classification_loss, box2box_transform)
            if focal.OHEM.ENABLED else None,
            "test_precision": precision_name(amp_dtype(cfg, "TEST")),
            "static_shapes": StaticShapes.from_config(focal.STATIC_SHAPES, backbone.size_divisibility),
            "empty_classes": focal.EMPTY_CLASSES,
            "channels_last": focal.CHANNELS_LAST,
        }

    def forward(self, batched_inputs):
        # inference AMP: the whole forward is under autocast; forward_inference leaves it at once
        precision = None if self.training else self.test_precision
        self._fell_back = False  # _static_fallback counts a batch once
        with inference_autocast(self.device, precision):
            return super().forward(batched_inputs)

    # ----------------------------------------------------------------------------- training
    def preprocess_image(self, batched_inputs):
        """detectron2's (normalize, pad to the batch's largest image), then, in the static-shape
        step, padded to the smallest ``MODEL.FOCAL.STATIC_SHAPES.IMAGE_SIZES`` holding it."""
        images = super().preprocess_image(batched_inputs)
        if self.training and self.static_shapes is not None:
            size = self.static_shapes.size_for(*images.tensor.shape[-2:])
            if size is None:
                self._static_fallback()
                return images
            if size[0] * size[1] > 2 * images.tensor.shape[-2] * images.tensor.shape[-1] \
                    and not getattr(self, "_warned_padding", False):
                self._warned_padding = True  # once: a config choice, not a per-batch event
                logger.warning("MODEL.FOCAL.STATIC_SHAPES pads a %s batch to %s, more than twice its "
                               "area: add an IMAGE_SIZES entry near the input size",
                               tuple(images.tensor.shape[-2:]), size)
            images = pad_images(images, size)
        return images

    def _static_fallback(self) -> None:
        # a batch that does not fit the static shapes runs eagerly; counted once per batch
        if getattr(self, "_fell_back", False):
            return
        self._fell_back = True
        self.static_fallbacks = getattr(self, "static_fallbacks", 0) + 1
        storage = _storage()
        if storage is not None:
            storage.put_scalar("static_shapes_fallbacks", self.static_fallbacks, smoothing_hint=False)

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4]
        )
        anchors = self._anchors(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def _anchors(self, features: List[torch.Tensor]) -> List[Boxes]:
        """``self.anchor_generator(features)``, generated once per feature-map geometry
        (``fast_ops.AnchorCache``)."""
        return self._anchor_cache(self.anchor_generator, features)

    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """``RetinaNet.label_anchors`` (same inputs, same outputs), for the whole batch at once
        (``fast_ops.label_anchors``)."""
        static = self.static_shapes if self.training else None
        if static is not None and max((len(x) for x in gt_instances), default=0) <= static.max_gt:
            boxes, classes = fast_ops.pad_ground_truth(gt_instances, static.max_gt)
            labels, matched = fast_ops.label_padded(Boxes.cat(anchors).tensor, boxes, classes,
                                                    self.anchor_matcher, self.num_classes)
            return list(labels.unbind(0)), list(matched.unbind(0))
        if static is not None:
            self._static_fallback()
        return fast_ops.label_anchors(anchors, gt_instances, self.anchor_matcher, self.num_classes)

    def _loss_normalizer(self, num_pos: torch.Tensor):
        if self.normalizer == "ema":
            # detectron2's EMA on the device (no .item()): in float64 like detectron2's Python
            # floats, so its values are exactly detectron2's; cast for the division as before.
            count = num_pos.to(torch.float64).clamp(min=1)
            old = getattr(self, "loss_normalizer", None)
            if isinstance(old, torch.Tensor) and old.device != count.device:
                self.loss_normalizer = old.to(count.device)
            return self._ema_update("loss_normalizer", count, _EMA_START, _EMA_MOMENTUM).float()
        # The paper: positives of the whole batch. DDP averages gradients over workers, so each
        # worker divides its sum by the mean count per worker.
        total = num_pos.float()
        world = comm.get_world_size()
        if world > 1:
            dist.all_reduce(total)
            total = total / world
        return total.clamp(min=1.0)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Same inputs and outputs as ``RetinaNet.losses``; see there.

        The classification loss is summed over the anchors chosen by ``anchor_sampler`` and
        divided, like the box loss, by the loss normalizer. Computed in float32 under autocast
        (``SOLVER.AMP``): the head's outputs are cast up, the loss never runs in low precision.
        """
        if torch.is_autocast_enabled(pred_logits[0].device.type):
            with torch.autocast(pred_logits[0].device.type, enabled=False):
                return self.losses(anchors, [x.float() for x in pred_logits], gt_labels,
                                   [x.float() for x in pred_anchor_deltas], gt_boxes)
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R), -1 ignore, K background
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        normalizer = self._loss_normalizer(num_pos)

        logits = cat(pred_logits, dim=1)  # (N, R, C)
        # per-level deltas/anchors: only samplers that need them (OHEM) pay for concatenating
        mask = self.anchor_sampler(
            logits=logits, deltas=pred_anchor_deltas, anchors=anchors, gt_labels=gt_labels
        )
        cls_labels = gt_labels  # background is the loss's last class: K + E with empty classes
        if self.empty_classes:
            cls_labels = torch.where(gt_labels == self.num_classes, self.num_classes + self.empty_classes,
                                     gt_labels)
        per_anchor, kept = self._cls_loss_per_anchor(logits, cls_labels, mask)
        cls_sum = per_anchor.sum()
        box_sum = fast_ops.box_regression_loss(  # detectron2's _dense_box_regression_loss
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask,
            box_reg_loss_type=self.box_reg_loss_type, smooth_l1_beta=self.smooth_l1_beta,
        )
        losses = {"loss_cls": cls_sum / normalizer, "loss_box_reg": box_sum / normalizer}
        pos_kept = pos_mask.flatten()[kept]
        self._log_and_check(losses, num_images, num_pos, normalizer, per_anchor, pos_kept, mask)
        return losses

    def _cls_loss_per_anchor(self, logits, gt_labels, mask) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-anchor loss, index of its anchors into (N, R)) of the anchors in ``mask``.

        A sampler that keeps most anchors (``dense = True``: all non-ignored anchors) gets the loss
        of every anchor, zero where the mask is False: no boolean indexing (a host sync, and a
        copy of the logits and its scatter back in backward). A sparse one (OHEM: B per image)
        gets the loss of its anchors only. The terms and gradients are the same either way."""
        if getattr(self.anchor_sampler, "dense", False):
            # any valid label where unused
            labels = torch.where(mask, gt_labels, self.num_classes + self.empty_classes)
            per_anchor = self.classification_loss(logits.flatten(0, 1), labels.flatten())
            per_anchor = torch.where(mask.flatten(), per_anchor, per_anchor.new_zeros(()))
            return per_anchor, (slice(None),)
        kept = mask.flatten().nonzero().squeeze(1)
        return self.classification_loss(logits.flatten(0, 1)[kept], gt_labels.flatten()[kept]), kept

    def _log_and_check(self, losses, num_images, num_pos, normalizer, per_anchor, pos_kept, mask):
        # One host sync for all statistics and the finiteness check: every step, or once per
        # MODEL.FOCAL.STATIC_SHAPES.STATS_PERIOD steps in the static-shape step (summed on the device).
        per_anchor = per_anchor.detach()
        stats = torch.stack(
            [
                num_pos.float(),
                torch.as_tensor(normalizer, dtype=torch.float32, device=num_pos.device),
                torch.where(pos_kept, per_anchor, per_anchor.new_zeros(())).sum().float(),
                per_anchor.sum().float(),
                mask.sum().float(),
                losses["loss_cls"].detach().float(),
                losses["loss_box_reg"].detach().float(),
                torch.full((), float(num_images), device=num_pos.device),
                torch.ones((), device=num_pos.device),
            ]
        )
        storage = _storage()
        iteration = storage.iter if storage is not None else None
        where = f"iteration {iteration}" if storage is not None else "this forward pass"
        if self._device_stats is None or not self.training:
            values, when = stats.tolist(), "before this iteration's optimizer step"
        else:
            period = self._device_stats.add(stats, iteration)
            if period is None:
                return
            values, span = period
            when = (f"at {where}: the static-shape step reads its statistics every "
                    f"{self._device_stats.period} steps and saw it in {span}")
        n_pos, norm, pos_loss, all_loss, n_kept, loss_cls, loss_box, images, steps = values
        for name, value in (("loss_cls", loss_cls), ("loss_box_reg", loss_box)):
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"FocalRetinaNet: {name} = {value} at {where} ({self.classification_loss!r}, "
                    f"normalizer={norm / steps:g}, positive anchors={int(n_pos)}). Training stopped "
                    f"{when}; checkpoints already written are intact."
                )
        if storage is not None:  # per-step means over the period (one step when eager)
            smooth = steps == 1  # a period's mean is smoothed already: no median over periods
            storage.put_scalar("num_pos_anchors", n_pos / images, smoothing_hint=smooth)
            storage.put_scalar("loss_normalizer", norm / steps, smoothing_hint=smooth)
            storage.put_scalar("cls_anchors_per_image", n_kept / images, smoothing_hint=smooth)
            storage.put_scalar("cls_loss_pos_share", pos_loss / all_loss if all_loss > 0 else 0.0,
                               smoothing_hint=smooth)

    # ---------------------------------------------------------------------------- inference
    def forward_inference(self, images: ImageList, features: List[torch.Tensor], predictions):
        if self.test_precision is not None:  # scores, decoding and NMS in float32 (TEST.AMP)
            with torch.autocast(self.device.type, enabled=False):
                predictions = [[x.float() for x in level] for level in predictions]
                return self._forward_inference(images, features, predictions)
        return self._forward_inference(images, features, predictions)

    def _forward_inference(self, images: ImageList, features: List[torch.Tensor], predictions):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4]
        )
        anchors = self._anchors(features)
        # whole batch at once; the empty classes' scores dropped (MODEL.FOCAL.EMPTY_CLASSES)
        scores_all = [self.classification_loss.scores(x)[..., : self.num_classes] for x in pred_logits]
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores = [x[img_idx] for x in scores_all]
            deltas = [x[img_idx] for x in pred_anchor_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results



def _head_input_shapes(cfg, backbone) -> list:
    """The backbone's ``ShapeSpec`` of each level in ``cfg.MODEL.RETINANET.IN_FEATURES``;
    ``ValueError`` naming the keys if a level is missing or the levels' channel counts differ
    (the head's convs are shared across levels)."""
    backbone_shape = backbone.output_shape()
    features = cfg.MODEL.RETINANET.IN_FEATURES
    missing = [f for f in features if f not in backbone_shape]
    if missing:
        raise ValueError(
            f"cfg.MODEL.RETINANET.IN_FEATURES names {missing}, which the backbone does not "
            f"produce (it has {sorted(backbone_shape)})"
        )
    channels = {f: backbone_shape[f].channels for f in features}
    if len(set(channels.values())) != 1:
        raise ValueError(
            f"cfg.MODEL.BACKBONE.NAME = {cfg.MODEL.BACKBONE.NAME!r} gives the levels of "
            f"cfg.MODEL.RETINANET.IN_FEATURES different channel counts {channels}; the RetinaNet "
            "head is shared across levels and needs one channel count (e.g. an FPN's OUT_CHANNELS)"
        )
    return [backbone_shape[f] for f in features]


def _ohem_sampler(cfg, classification_loss: ClassificationLoss, box2box_transform) -> OhemSampler:
    """The OHEM baseline of Table 1d from ``cfg.MODEL.FOCAL.OHEM``: anchors ranked by plain CE (the
    paper's OHEM scores by CE whatever loss trains), sigmoid or softmax like the training loss."""
    focal, ohem = cfg.MODEL.FOCAL, cfg.MODEL.FOCAL.OHEM
    scorer = (
        build_classification_loss("softmax_focal", gamma=0.0, alpha=-1.0, fused=focal.FUSED_LOSS)
        if classification_loss.is_softmax
        else build_classification_loss("sigmoid_ce", alpha=-1.0, fused=focal.FUSED_LOSS)
    )
    return OhemSampler(
        scorer=scorer,
        box2box_transform=box2box_transform,
        num_classes=cfg.MODEL.RETINANET.NUM_CLASSES,
        batch_size_per_image=ohem.BATCH_SIZE_PER_IMAGE,
        nms_thresh=ohem.NMS_THRESH,
        positive_fraction=ohem.POSITIVE_FRACTION,
        pre_nms_topk=ohem.PRE_NMS_TOPK or None,
    )
