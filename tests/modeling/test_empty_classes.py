"""``MODEL.FOCAL.EMPTY_CLASSES``: E classification outputs that never have a positive — more easy
negatives and nothing else changed: the loss is the FL formula over K + E columns with zero
targets in the extra ones, inference is the K-class model's, the imbalance grows by (K + E) / K."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torchvision.ops import sigmoid_focal_loss

from focal_plugin import engine
from focal_plugin.analysis.imbalance import imbalance_stats

from helpers import SMOKE_CONFIG, make_batch, tiny_cfg

K, E = 3, 5


def _model(empty: int, **focal):
    torch.manual_seed(0)
    return build_model(tiny_cfg(num_classes=K, EMPTY_CLASSES=empty, **focal))


def test_the_loss_is_fl_over_the_data_and_the_empty_classes():
    model = _model(E).train()
    assert model.head.cls_score.out_channels == 9 * (K + E)
    batch = make_batch(2, size=64, num_classes=K, empty=(1,))
    captured = {}
    original = model.losses

    def record(anchors, pred_logits, gt_labels, deltas, gt_boxes):
        captured.update(logits=torch.cat(pred_logits, 1).detach(), labels=torch.stack(gt_labels))
        return original(anchors, pred_logits, gt_labels, deltas, gt_boxes)

    model.losses = record
    with EventStorage(0):
        losses = model(batch)
    logits, labels = captured["logits"], captured["labels"]
    assert logits.shape[-1] == K + E and int(labels.max()) == K  # K = background: no empty-class label
    valid = labels >= 0
    targets = torch.zeros_like(logits)
    fg = valid & (labels < K)
    targets[fg] = torch.nn.functional.one_hot(labels[fg], K + E).float()
    expected = sigmoid_focal_loss(logits[valid], targets[valid], alpha=0.25, gamma=2.0, reduction="sum")
    assert torch.allclose(losses["loss_cls"], expected / fg.sum().clamp(min=1), rtol=1e-5)


def test_inference_is_the_k_class_models_with_the_same_weights():
    with_empty, plain = _model(E).eval(), _model(0).eval()
    state = with_empty.state_dict()
    # the classification conv's outputs are (anchor, class) pairs: keep the data's classes
    keep = torch.tensor([a * (K + E) + k for a in range(9) for k in range(K)])
    state = {**state, "head.cls_score.weight": state["head.cls_score.weight"][keep],
             "head.cls_score.bias": state["head.cls_score.bias"][keep]}
    plain.load_state_dict(state)
    batch = [{"image": x["image"]} for x in make_batch(2, size=64)]
    with torch.no_grad():
        ours, ref = with_empty(batch), plain(batch)
    for a, b in zip(ours, ref):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) > 0 and int(a.pred_classes.max()) < K
        assert torch.equal(a.pred_classes, b.pred_classes) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_softmax_fl_keeps_background_last():
    model = _model(E, LOSS="softmax_focal", ALPHA=-1.0).train()
    assert model.head.cls_score.out_channels == 9 * (K + E + 1)
    with EventStorage(0):
        losses = model(make_batch(2, size=64, num_classes=K))
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"]} for x in make_batch(1, size=64)])
    assert int(out[0]["instances"].pred_classes.max()) < K


def test_the_imbalance_grows_by_the_class_count_and_nothing_else(tmp_path):
    from focal_plugin.data import SyntheticConfig, register_dense_shapes

    data = SyntheticConfig(name="empty_cls", num_train=4, num_val=2, image_size=(96, 96), num_classes=K,
                           mean_objects=4.0, max_objects=8, empty_fraction=0.0, scale_range=(0.15, 0.5))
    name = "focal_test_empty_classes_train"
    register_dense_shapes(name, data, "train", root=tmp_path)
    stats = {}
    for e in (0, E):
        cfg = tiny_cfg(num_classes=K, EMPTY_CLASSES=e)
        cfg.INPUT.MIN_SIZE_TEST = 0
        stats[e] = imbalance_stats(cfg, name, max_images=0, with_coco=False)
    assert stats[E]["positive_anchors_per_image"] == stats[0]["positive_anchors_per_image"] > 0
    total = {e: (s["negatives_per_positive"] + 1) * s["positive_anchors_per_image"] for e, s in stats.items()}
    assert total[E] / total[0] == pytest.approx((K + E) / K, rel=1e-9)
    assert stats[E]["num_classes"] == K + E


@pytest.mark.parametrize("opts, words", [
    (["MODEL.FOCAL.EMPTY_CLASSES", "-1"], "EMPTY_CLASSES = -1: expected an integer >= 0"),
    (["MODEL.FOCAL.EMPTY_CLASSES", "4", "MODEL.FOCAL.OHEM.ENABLED", "True"], "OHEM ranks the data's classes"),
    (["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.FOCAL.EMPTY_CLASSES", "4"],
     "has no effect on RetinaNet"),
])
def test_bad_or_ineffective_empty_classes_are_refused_at_setup(opts, words):
    with pytest.raises(ValueError, match="EMPTY_CLASSES") as info:
        engine.setup_cfg(SMOKE_CONFIG, opts)
    assert words in str(info.value)


def test_the_prior_is_checked_over_the_data_and_the_empty_classes():
    """Softmax FL spreads the prior over every class: with K + E classes a prior that fits K alone
    may not fit; the error names EMPTY_CLASSES at set-up, before anything is built."""
    opts = ["MODEL.FOCAL.LOSS", "softmax_focal", "MODEL.FOCAL.ALPHA", "-1.0",
            "MODEL.FOCAL.PRIOR_PROB", "0.02"]
    engine.setup_cfg(SMOKE_CONFIG, opts)  # 6 classes x 0.02: fine
    with pytest.raises(ValueError, match="EMPTY_CLASSES"):
        engine.setup_cfg(SMOKE_CONFIG, [*opts, "MODEL.FOCAL.EMPTY_CLASSES", "60"])  # 66 x 0.02 > 1


@pytest.mark.parametrize("loss", ["sigmoid_focal", "softmax_focal"])
def test_fig4_losses_treat_background_as_background(loss):
    """tools/loss_cdf.py on a model with empty classes: a negative's loss is the loss of the
    background label (all K + E targets zero), as the model trained it."""
    from focal_plugin.analysis.loss_cdf import LossCDF, image_predictions, window_losses

    model = _model(E, LOSS=loss, **({"ALPHA": -1.0} if loss == "softmax_focal" else {})).eval()
    item = make_batch(1, size=64, num_classes=K)[0]
    logits, labels = image_predictions(model, item)
    assert int(labels.max()) == K + E and not bool(((labels >= K) & (labels < K + E)).any())
    acc = LossCDF((2.0,), K + E, softmax=loss == "softmax_focal")
    acc.update(logits, labels)
    neg = labels == K + E
    expected = window_losses(logits[neg], labels[neg], (2.0,), loss == "softmax_focal")
    assert torch.allclose(acc.losses("negative").sort(0).values, expected.sort(0).values)
