"""MODEL.BACKBONE.FEATURE_CACHE_MB: the frozen bottom-up features of an input seen before are kept,
and training with them is bitwise training without them; refused where it could change results or
would have no effect."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_plugin import engine
from focal_plugin.amp import MixedPrecisionTrainer
from focal_plugin.modeling.feature_cache import FeatureCache, frozen_problems

from helpers import make_batch, tiny_cfg

SMOKE = "configs/mini/smoke_tiny.yaml"
# 256 px: P7 is 2x2. At 1x1 maps, whose 3x3 taps see only padding, oneDNN's bfloat16 weight
# gradient of p7 has non-finite values in those taps from run to run (torch 2.14 on this CPU),
# with or without the cache.
SIZE = 256


def _frozen_cfg(cache_mb: int = 0):
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    cfg.MODEL.BACKBONE.FEATURE_CACHE_MB = cache_mb
    # unit-variance input: with FrozenBN's identity statistics a random ResNet's features are
    # otherwise large enough for the head's logits to overflow
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
    return cfg


def _model(cache_mb: int):
    torch.manual_seed(0)
    model = build_model(_frozen_cfg(cache_mb))
    model.train()
    return model


def _batches():
    """Six batches of two images drawn from four, so that inputs recur in other company."""
    images = make_batch(num_images=4, size=SIZE, seed=3)
    flipped = [{**d, "image": d["image"].flip(-1)} for d in images]
    order = [(0, 1), (2, 3), (1, 0), (3, 0), (2, 1), (0, 3)]
    pool = images + flipped
    return [[pool[i], pool[j + 4 * (k % 2)]] for k, (i, j) in enumerate(order)]


_BATCHES = _batches()


@pytest.fixture
def threads_1():
    """One torch thread for the test (restored after: the thread count changes the kernels)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(model, batches, amp: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = MixedPrecisionTrainer(model, iter(batches), optimizer, torch.bfloat16) if amp else \
        SimpleTrainer(model, iter(batches), optimizer)
    losses = []
    model.losses = _recording(model.losses, losses)
    with EventStorage(0) as trainer.storage:
        for _ in batches:
            trainer.run_step()
    return losses, model.state_dict()


def _recording(fn, out):
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        out.append({k: v.detach().clone() for k, v in result.items()})
        return result
    return wrapper


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bfloat16"])
def test_training_with_the_cache_is_bitwise_training_without_it(amp, threads_1):
    plain_losses, plain_state = _train(_model(0), _BATCHES, amp)
    model = _model(1024)
    cache = model.backbone.bottom_up.forward.__self__
    cached_losses, cached_state = _train(model, _BATCHES, amp)
    distinct = len({id(d) for batch in _BATCHES for d in batch})
    assert (cache.misses, cache.hits) == (distinct, 12 - distinct)  # each distinct input computed once
    for a, b in zip(plain_losses, cached_losses):
        assert all(torch.equal(a[k], b[k]) for k in a), (a, b)
    assert [k for k in plain_state if not torch.equal(plain_state[k], cached_state[k])] == []


def test_inputs_are_told_apart_by_bytes_shape_and_precision_and_eval_bypasses():
    model = _model(1024)
    bottom_up, cache = model.backbone.bottom_up, model.backbone.bottom_up.forward.__self__
    x = torch.randn(2, 3, 64, 64)
    reference = {k: v.clone() for k, v in bottom_up(x).items()}
    again = bottom_up(x.flip(0))
    assert (cache.hits, cache.misses) == (2, 2)
    assert all(torch.equal(again[k], reference[k].flip(0)) for k in reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bottom_up(x)
    assert cache.misses == 4 and low["res5"].dtype == torch.bfloat16
    bottom_up(torch.randn(1, 3, 96, 64))
    assert cache.misses == 5
    model.eval()
    bottom_up(x)
    assert cache.misses == 5 and cache.hits == 2  # evaluation images are not cached


def test_size_budget_and_loading_weights_empty_it():
    model = _model(1)  # 1 MiB: a 256 px input's res3-res5 in float32 are 0.92 MB
    bottom_up, cache = model.backbone.bottom_up, model.backbone.bottom_up.forward.__self__
    bottom_up(torch.randn(4, 3, SIZE, SIZE))
    assert len(cache._entries) == 1 and cache.bytes == 229376 * 4
    model.load_state_dict(model.state_dict())
    assert cache.bytes == 0 and not cache._entries


def test_a_network_that_is_not_frozen_is_refused_naming_why():
    cfg = _frozen_cfg(64)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.raises(ValueError, match="FEATURE_CACHE_MB needs a frozen.*res3.*trainable"):
        build_model(cfg)
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).requires_grad_(False)
    assert frozen_problems(bn) == ["1 (BatchNorm2d) updates batch statistics"]
    with pytest.raises(ValueError, match="batch statistics"):
        FeatureCache(bn, 1)


@pytest.mark.parametrize("opts, words", [
    (["MODEL.BACKBONE.FEATURE_CACHE_MB", "-1"], "expected MiB >= 0"),
    (["MODEL.BACKBONE.FEATURE_CACHE_MB", "64", "MODEL.META_ARCHITECTURE", "RetinaNet"],
     "has no effect on RetinaNet"),
])
def test_bad_or_ineffective_values_are_refused_at_setup(opts, words):
    with pytest.raises(ValueError, match="cfg.MODEL.BACKBONE.FEATURE_CACHE_MB") as info:
        engine.setup_cfg(SMOKE, opts)
    assert words in str(info.value)


def test_the_cache_keeps_channels_last_feature_maps():
    torch.manual_seed(0)
    cfg = _frozen_cfg(64)
    cfg.MODEL.FOCAL.CHANNELS_LAST = True
    model = build_model(cfg).train()
    seen = []
    model.backbone.bottom_up.register_forward_hook(lambda m, i, o: seen.append(o))
    with EventStorage(0):
        for batch in _BATCHES[:3]:
            model(copy.deepcopy(batch))
    assert model.backbone.bottom_up.forward.__self__.hits > 0  # some features came from the cache
    assert all(f.is_contiguous(memory_format=torch.channels_last) for out in seen for f in out.values())
