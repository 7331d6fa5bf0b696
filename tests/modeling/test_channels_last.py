"""``MODEL.FOCAL.CHANNELS_LAST``: the convolution weights and the feature maps in channels_last,
the same losses, gradients and detections as the default layout up to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_plugin import engine

from helpers import SMOKE_CONFIG, make_batch, tiny_cfg


def _cfg(**focal):
    # a frozen-BN backbone, as the protocol's (with trainable BN see the warning test below)
    cfg = tiny_cfg(**focal)
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT = "FrozenBN", 2
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
    return cfg


def _pair():
    torch.manual_seed(0)
    plain = build_model(_cfg())
    torch.manual_seed(0)
    fast = build_model(_cfg(CHANNELS_LAST=True))
    fast.load_state_dict(plain.state_dict())  # the same values (copied into the model's layout)
    return plain, fast


def test_weights_and_feature_maps_are_channels_last():
    plain, fast = _pair()
    conv = fast.head.cls_score.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.head.cls_score.weight.is_contiguous()
    maps = []
    fast.head.register_forward_hook(lambda m, i, o: maps.append(o[0][0]))
    with EventStorage(0):
        fast.train()(make_batch(2, size=64))
    assert maps[0].is_contiguous(memory_format=torch.channels_last)


def test_the_same_losses_gradients_and_detections_up_to_rounding():
    plain, fast = _pair()
    batch = make_batch(2, size=64)
    grads = []
    for model in (plain, fast):
        with EventStorage(0):
            losses = model.train()(copy.deepcopy(batch))
        sum(losses.values()).backward()
        grads.append((losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    for k in l0:
        assert torch.allclose(l0[k], l1[k], rtol=1e-5), k
    assert g0.keys() == g1.keys()
    for n in g0:  # relative to the tensor's norm (1e-5 seen at 1 and 2 threads)
        norm = torch.linalg.vector_norm
        err = float(norm(g1[n] - g0[n]) / norm(g0[n]).clamp(min=1e-12))
        assert err < 1e-4, (n, err)
    images = [{"image": x["image"]} for x in batch]
    with torch.no_grad():
        a, b = plain.eval()(images), fast.eval()(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(y["instances"].scores[:20], x["instances"].scores[:20],
                                   rtol=1e-4, atol=1e-5)


def test_the_key_is_a_switch_and_refused_under_retinanet():
    with pytest.raises(ValueError, match="CHANNELS_LAST"):
        engine.setup_cfg(SMOKE_CONFIG, ["MODEL.FOCAL.CHANNELS_LAST", "'yes'"])
    with pytest.raises(ValueError, match="CHANNELS_LAST = True has no effect on RetinaNet"):
        engine.setup_cfg(SMOKE_CONFIG, ["MODEL.META_ARCHITECTURE", "RetinaNet",
                                        "MODEL.FOCAL.CHANNELS_LAST", "True"])


def test_trainable_batch_norm_is_warned(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="focal_plugin.modeling.focal_retinanet"):
        build_model(tiny_cfg(CHANNELS_LAST=True))  # NORM "BN", FREEZE_AT 0: trainable BatchNorm
        build_model(_cfg(CHANNELS_LAST=True))  # FrozenBN: no warning
    assert sum("channels_last batch-norm backward" in r.getMessage() for r in caplog.records) == 1
