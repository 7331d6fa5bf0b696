"""The speed work on FocalRetinaNet leaves its results unchanged: the sync-free
classification path and OHEM scoring give the same terms and gradients, the EMA normalizer the
same values, batched inference the same detections; and the training step reads nothing back from
the device but its statistics. The faster equivalents of detectron2's functions (anchors,
labelling, IoU, box loss) are tested against detectron2 in tests/modeling/test_fast_ops.py."""

from __future__ import annotations

import collections

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.profiler import ProfilerActivity, profile, record_function

from focal_plugin.modeling.ohem import ohem_select
from focal_plugin.modeling.sampler import AllAnchorsSampler

from helpers import make_batch, tiny_cfg

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def _features(model, size):
    images = model.preprocess_image(make_batch(num_images=2, size=size))
    feats = model.backbone(images.tensor)
    return [feats[f] for f in model.head_in_features]


def _gt(n_images, counts, size=96, seed=0, num_classes=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_images):
        n = counts[i]
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = 1 + torch.rand(n, 2, generator=g) * size * 0.4
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        out.append(inst)
    return out


# ---------------------------------------------------------------------------- losses
def _inputs(model, counts=(3, 0), seed=0):
    torch.manual_seed(seed)
    anchors = model._anchors(_features(model, 96))
    gt_labels, gt_boxes = model.label_anchors(anchors, _gt(len(counts), counts, seed=seed))
    n = len(counts)
    deltas = [torch.randn(n, len(a), 4, requires_grad=True) for a in anchors]
    return anchors, gt_labels, gt_boxes, deltas


class _SparseAll(AllAnchorsSampler):
    dense = False  # the same mask through the gathering path


@pytest.mark.parametrize("loss", ["sigmoid_focal", "softmax_focal"])
def test_dense_classification_path_equals_the_gathering_one(loss):
    model = build_model(tiny_cfg(LOSS=loss))
    anchors, gt_labels, gt_boxes, _ = _inputs(model)
    labels = torch.stack(gt_labels)
    assert (labels == -1).any()  # ignored anchors exist and must not count
    logits = torch.randn(labels.shape[0], labels.shape[1], model.num_logits, requires_grad=True)
    mask = model.anchor_sampler(logits=logits, deltas=None, anchors=anchors, gt_labels=labels)
    dense, _ = model._cls_loss_per_anchor(logits, labels, mask)
    g_dense, = torch.autograd.grad(dense.sum(), logits)
    model.anchor_sampler = _SparseAll()
    sparse, _ = model._cls_loss_per_anchor(logits, labels, mask)
    g_sparse, = torch.autograd.grad(sparse.sum(), logits)
    assert torch.equal(dense.view(labels.shape)[mask], sparse)  # every term, bit for bit
    assert torch.count_nonzero(dense.view(labels.shape)[~mask]) == 0
    torch.testing.assert_close(dense.sum(), sparse.sum(), rtol=1e-6, atol=0)
    assert torch.equal(g_dense, g_sparse)


def test_ohem_sampler_mask_equals_scoring_only_the_valid_anchors():
    model = build_model(tiny_cfg(**{"OHEM.ENABLED": True, "OHEM.BATCH_SIZE_PER_IMAGE": 16,
                                    "OHEM.POSITIVE_FRACTION": 0.25, "LOSS": "sigmoid_ce", "ALPHA": -1.0}))
    anchors, gt_labels, _, deltas = _inputs(model, counts=(4, 2))
    labels = torch.stack(gt_labels)
    logits = torch.randn(labels.shape[0], labels.shape[1], model.num_logits)
    sampler = model.anchor_sampler
    mask = sampler(logits=logits, deltas=[d.detach() for d in deltas], anchors=anchors, gt_labels=labels)
    # the former implementation: score the non-ignored anchors only
    valid = labels >= 0
    losses = torch.zeros(labels.shape)
    losses[valid] = sampler.scorer(logits[valid], labels[valid]).float()
    n, r = labels.shape
    boxes = model.box2box_transform.apply_deltas(
        torch.cat([d.detach() for d in deltas], 1).reshape(n * r, 4),
        Boxes.cat(anchors).tensor.repeat(n, 1)).view(n, r, 4)
    ref = ohem_select(losses, boxes, labels, model.num_classes, 16, sampler.nms_thresh, 0.25)
    assert torch.equal(mask, ref) and mask.any()


# ------------------------------------------------------------------------ normalizer
def test_ema_normalizer_values_equal_detectron2s_recurrence():
    model = build_model(tiny_cfg(NORMALIZER="ema")).train()
    expected = None
    for step, seed in enumerate((0, 1, 2)):
        with EventStorage(step) as storage:
            model(make_batch(num_images=2, seed=seed))
        num_pos = round(storage.histories()["num_pos_anchors"].latest() * 2)
        # detectron2: _ema_update("loss_normalizer", max(num_pos, 1), 100, 0.9) in Python floats
        old = 100 if expected is None else expected
        expected = old * 0.9 + max(num_pos, 1) * (1 - 0.9)
        assert isinstance(model.loss_normalizer, torch.Tensor)
        assert model.loss_normalizer.item() == expected  # exactly


# --------------------------------------------------------------------------- inference
def test_batched_inference_equals_detectron2s_per_image_loop():
    """Scores computed for the whole batch at once, cached anchors: the same detections as
    detectron2's RetinaNet.forward_inference on the same predictions."""
    model = build_model(tiny_cfg()).eval()
    with torch.no_grad():
        images = model.preprocess_image(make_batch(num_images=3, size=96))
        feats = model.backbone(images.tensor)
        features = [feats[f] for f in model.head_in_features]
        predictions = model.head(features)
        model._anchors(features)  # warm the cache
        ours = model.forward_inference(images, features, predictions)
        ref = RetinaNet.forward_inference(model, images, features, predictions)
    for a, b in zip(ours, ref):
        assert len(a) > 0
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


# ----------------------------------------------------------------------------- syncs
def _count_syncs(model, batch, parts):
    """Sync operators inside each labelled part of one training step (see
    benchmarks/profile_train_step.py): .item()/.tolist()-like reads and nonzero."""
    def labelled(label, fn):
        def wrapper(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)
        wrapper.dense = getattr(fn, "dense", False)  # a sampler's declaration
        return wrapper

    for attr, label in parts.items():
        setattr(model, attr, labelled(label, getattr(model, attr)))
    model.classification_loss.forward = labelled("cls_loss", model.classification_loss.forward)
    with EventStorage(0):
        model(batch)  # warm-up: the fused kernels compile on first use
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sum(model(batch).values()).backward()
    labels = set(parts.values()) | {"cls_loss"}
    counts = collections.Counter()
    for e in prof.events():
        if e.name in SYNC_OPS:  # attributed to the innermost labelled part around it
            parent = e.cpu_parent
            while parent is not None and parent.name not in labels:
                parent = parent.cpu_parent
            counts[parent.name if parent is not None else "other"] += 1
    return counts


@pytest.mark.parametrize("normalizer", ["num_pos", "ema"])
def test_no_host_sync_in_labelling_normalizer_sampler_and_statistics(normalizer):
    model = build_model(tiny_cfg(NORMALIZER=normalizer)).train()
    parts = {"label_anchors": "label_anchors", "_loss_normalizer": "normalizer",
             "anchor_sampler": "sampler", "_cls_loss_per_anchor": "cls_path",
             "_log_and_check": "stats", "_anchors": "anchors"}
    counts = _count_syncs(model, make_batch(num_images=2, empty=(1,)), parts)
    for label in ("label_anchors", "normalizer", "sampler", "stats", "anchors"):
        assert counts[label] == 0, (label, counts)
    # cls_path: nothing besides what the loss module does (its label check reads on the CPU only)
    assert counts["cls_path"] == 0, counts
