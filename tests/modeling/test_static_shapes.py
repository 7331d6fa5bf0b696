"""``MODEL.FOCAL.STATIC_SHAPES``: the static-shape step computes the eager step's losses and
weights for the same batches, with fixed shapes and one host read per statistics period; batches
that do not fit run eagerly and are counted; its keys are validated."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.utils.events import EventStorage

from focal_plugin import engine
from focal_plugin.modeling.static_shapes import DeviceStats, StaticShapes, capturable_sgd

from helpers import SMOKE_CONFIG, make_batch, tiny_cfg

STATIC = {"STATIC_SHAPES.ENABLED": True, "STATIC_SHAPES.IMAGE_SIZES": [[64, 64], [96, 96]],
          "STATIC_SHAPES.MAX_GT": 8, "STATIC_SHAPES.STATS_PERIOD": 2}


def _cfg(**focal):
    cfg = tiny_cfg(**focal)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 0.01, 6, (3,)
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WEIGHT_DECAY = 2, 1e-4
    return cfg


def _train(cfg, batches, static_optimizer: bool):
    """Losses per step and final weights of SGD steps on ``batches`` (detectron2's optimizer and
    lr schedule; the static step's fused SGD with a tensor lr when ``static_optimizer``)."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = d2_build_optimizer(cfg, model)
    if static_optimizer:
        optimizer = capturable_sgd(optimizer)
    scheduler = build_lr_scheduler(cfg, optimizer)
    losses = []
    with EventStorage(0) as storage:
        for batch in batches:
            loss = model(copy.deepcopy(batch))
            losses.append({k: v.detach().clone() for k, v in loss.items()})
            optimizer.zero_grad()
            sum(loss.values()).backward()
            optimizer.step()
            scheduler.step()
            storage.step()
    return losses, model.state_dict(), storage


def test_the_static_step_gives_the_eager_steps_losses_and_weights_bit_for_bit():
    # images already of a padded size, at most MAX_GT boxes (one image without any)
    batches = [make_batch(2, size=64, boxes_per_image=1 + i, seed=i, empty=(1,) if i == 2 else ())
               for i in range(5)]
    eager_losses, eager_weights, _ = _train(_cfg(), batches, static_optimizer=False)
    static_losses, static_weights, storage = _train(_cfg(**STATIC), batches, static_optimizer=False)
    for a, b in zip(eager_losses, static_losses):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert eager_weights.keys() == static_weights.keys()
    assert all(torch.equal(eager_weights[k], static_weights[k]) for k in eager_weights)  # BN buffers too
    assert "static_shapes_fallbacks" not in storage.histories()

    # with its fused SGD and tensor lr: the same losses and the same weights up to the rounding
    # of the fused update (below one float32 ulp on a few elements of small tensors)
    fused_losses, fused_weights, _ = _train(_cfg(**STATIC), batches, static_optimizer=True)
    for a, b in zip(eager_losses, fused_losses):
        assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=0) for k in a)
    for k, v in eager_weights.items():
        torch.testing.assert_close(fused_weights[k], v, rtol=1e-6, atol=1e-9, msg=k)


def test_statistics_are_read_once_per_period(monkeypatch):
    """Four steps at STATS_PERIOD 2: two host reads of the statistics (eager: four), and the
    logged per-step means equal the eager step's."""
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or original(t))
    batches = [make_batch(2, size=64, seed=i) for i in range(4)]
    _, _, eager = _train(_cfg(), batches, static_optimizer=False)
    eager_reads = len(reads)
    reads.clear()
    _, _, static = _train(_cfg(**STATIC), batches, static_optimizer=True)
    assert eager_reads == 4 and len(reads) == 2
    eager_pos = [v for v, _ in eager.history("num_pos_anchors").values()]
    static_pos = [v for v, _ in static.history("num_pos_anchors").values()]
    assert static_pos == pytest.approx([sum(eager_pos[:2]) / 2, sum(eager_pos[2:]) / 2], rel=1e-6)


def test_batches_that_do_not_fit_run_eagerly_and_are_counted():
    cfg = _cfg(**STATIC)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    shapes = []
    model.backbone.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape[-2:])))
    with EventStorage(0) as storage:
        model(make_batch(2, size=64))  # a padded size: unchanged
        model(make_batch(2, size=40))  # padded up to the smallest size holding it
        model(make_batch(2, size=128))  # larger than every size: eager shape, counted
        model(make_batch(2, size=64, boxes_per_image=9))  # more than MAX_GT boxes: counted
    assert shapes == [(64, 64), (64, 64), (128, 128), (64, 64)]
    assert model.static_fallbacks == 2
    assert storage.history("static_shapes_fallbacks").latest() == 2


def test_a_non_finite_loss_is_reported_at_the_end_of_its_period():
    cfg = _cfg(**{**STATIC, "STATIC_SHAPES.STATS_PERIOD": 3})
    model = build_model(cfg).train()
    with EventStorage(0) as storage:
        model(make_batch(2, size=64))
        storage.step()
        with torch.no_grad():
            model.head.cls_score.bias.fill_(float("nan"))
        model(make_batch(2, size=64))  # not read yet
        storage.step()
        with pytest.raises(FloatingPointError, match=r"loss_cls = nan at iteration 2 .* every 3 steps and "
                                                     r"saw it in iterations 0-2"):
            model(make_batch(2, size=64))


def test_the_trainers_optimizer_is_fused_sgd_with_a_tensor_lr_the_scheduler_fills():
    cfg = _cfg(**STATIC)
    model = build_model(cfg)
    optimizer = engine.Trainer.build_optimizer(cfg, model)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert all(isinstance(lr, torch.Tensor) and lr.dim() == 0 for lr in lrs)
    assert all(g["fused"] for g in optimizer.param_groups)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == lrs  # the same tensors, filled in place
    assert float(lrs[0]) == pytest.approx(0.01 * 0.1)  # after warmup and the step at iteration 3
    assert not isinstance(engine.Trainer.build_optimizer(_cfg(), model).param_groups[0]["lr"], torch.Tensor)
    with pytest.raises(TypeError, match="needs SGD"):
        capturable_sgd(torch.optim.Adam(model.parameters()))


@pytest.mark.parametrize("opts, words", [
    (["MODEL.FOCAL.STATIC_SHAPES.MAX_GT", "50"], "has no effect while cfg.MODEL.FOCAL.STATIC_SHAPES.ENABLED"),
    (["MODEL.FOCAL.STATIC_SHAPES.ENABLED", "True", "MODEL.FOCAL.STATIC_SHAPES.IMAGE_SIZES", "[[64]]"],
     "IMAGE_SIZES = [[64]]: expected a non-empty list of [H, W]"),
    (["MODEL.FOCAL.STATIC_SHAPES.ENABLED", "True", "MODEL.FOCAL.STATIC_SHAPES.STATS_PERIOD", "0"],
     "STATS_PERIOD = 0: expected an integer >= 1"),
    (["MODEL.FOCAL.STATIC_SHAPES.ENABLED", "True", "MODEL.FOCAL.OHEM.ENABLED", "True"],
     "OHEM's sampling has data-dependent sizes"),
])
def test_static_shape_keys_are_refused_at_setup(opts, words):
    with pytest.raises(ValueError, match="cfg.MODEL.FOCAL.STATIC_SHAPES") as info:
        engine.setup_cfg(SMOKE_CONFIG, opts)
    assert words in str(info.value)


def test_sizes_off_the_backbones_divisibility_are_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"IMAGE_SIZES has \[\(64, 80\)\]: .* size divisibility 32"):
        build_model(_cfg(**{**STATIC, "STATIC_SHAPES.IMAGE_SIZES": [[64, 64], [64, 80]]}))


def test_sizes_are_tried_smallest_first_and_device_stats_sum_a_period():
    shapes = StaticShapes(((96, 96), (32, 128), (64, 64)), max_gt=1, stats_period=1)
    assert shapes.size_for(40, 40) == (64, 64) and shapes.size_for(20, 100) == (32, 128)
    assert shapes.size_for(97, 10) is None
    stats = DeviceStats(2)
    assert stats.add(torch.tensor([1.0, 2.0]), 4) is None
    assert stats.add(torch.tensor([3.0, 5.0]), 5) == ([4.0, 7.0], "iterations 4-5")
    assert stats.add(torch.tensor([1.0, 1.0]), 6) is None  # a new period


def test_with_gradient_clipping_a_float16_scaler_unscales_before_the_fused_step():
    """detectron2's clipping subclass clips in step(): the scaled gradients must be unscaled first
    (else the clipper sees them 65,536 times too large)."""
    from detectron2.config import get_cfg
    from detectron2.solver.build import maybe_add_gradient_clipping

    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = True, 1.0
    clipping_sgd = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
    updates = []
    for fused in (False, True):
        w = torch.nn.Parameter(torch.ones(4, 4))
        optimizer = clipping_sgd([{"params": [w]}], lr=1.0, momentum=0.0)
        optimizer = capturable_sgd(optimizer) if fused else optimizer
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        scaler.scale((w * 0.1).sum()).backward()  # gradient norm 0.4: clipping leaves it alone
        scaler.step(optimizer)
        updates.append(float(1 - w.detach()[0, 0]))
    assert updates[1] == pytest.approx(updates[0]) == pytest.approx(0.1)


def test_a_batch_that_misses_twice_counts_once():
    model = build_model(_cfg(**STATIC)).train()
    with EventStorage(0):
        model(make_batch(2, size=128, boxes_per_image=9))  # too large and too many boxes
    assert model.static_fallbacks == 1


def test_a_resumed_tensor_lr_stays_a_tensor_on_the_parameters_device(tmp_path):
    from focal_plugin.engine import _lr_tensors_to_device

    model = build_model(_cfg(**STATIC))
    optimizer = engine.Trainer.build_optimizer(_cfg(**STATIC), model)
    state = optimizer.state_dict()
    torch.save(state, tmp_path / "opt.pth")
    optimizer.load_state_dict(torch.load(tmp_path / "opt.pth", map_location="cpu"))
    _lr_tensors_to_device(optimizer)
    assert all(isinstance(g["lr"], torch.Tensor) and g["lr"].device == g["params"][0].device
               for g in optimizer.param_groups)


def test_padding_far_beyond_the_batch_is_warned_once(caplog):
    import logging

    model = build_model(_cfg(**{**STATIC, "STATIC_SHAPES.IMAGE_SIZES": [[128, 128]]})).train()
    with EventStorage(0), caplog.at_level(logging.WARNING, logger="focal_plugin.modeling.focal_retinanet"):
        model(make_batch(2, size=64))
        model(make_batch(2, size=64))
    warned = [r for r in caplog.records if "more than twice its area" in r.getMessage()]
    assert len(warned) == 1 and "(64, 64)" in warned[0].getMessage()
