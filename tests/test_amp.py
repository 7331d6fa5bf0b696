"""Mixed precision (focal_plugin.amp): SOLVER.AMP on the CPU in bfloat16, the losses in float32,
every wrong or ineffective SOLVER.AMP.PRECISION refused at set-up naming the key."""

from __future__ import annotations

import os

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_plugin import engine
from focal_plugin.amp import MixedPrecisionTrainer, amp_dtype

from helpers import make_batch, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "mini", "smoke_tiny.yaml")


@pytest.mark.parametrize("opts, dtype", [([], None), (["SOLVER.AMP.ENABLED", "True"], torch.bfloat16),
                                         (["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16"],
                                          torch.bfloat16)])
def test_precision_on_the_cpu(opts, dtype):
    assert amp_dtype(engine.setup_cfg(SMOKE, opts)) is dtype


@pytest.mark.parametrize("node", ["SOLVER", "TEST"])
@pytest.mark.parametrize("opts, words", [
    (["{n}.AMP.ENABLED", "True", "{n}.AMP.PRECISION", "float16"], "'float16' needs CUDA"),
    (["{n}.AMP.PRECISION", "bfloat16"], "has no effect while cfg.{n}.AMP.ENABLED is False"),
    (["{n}.AMP.ENABLED", "True", "{n}.AMP.PRECISION", "half"], "expected 'auto' or one of"),
])
def test_wrong_or_ineffective_precision_is_refused_at_setup(node, opts, words):
    with pytest.raises(ValueError, match=f"cfg.{node}.AMP.PRECISION") as info:
        engine.setup_cfg(SMOKE, [o.format(n=node) for o in opts])
    assert words.format(n=node) in str(info.value)


def test_inference_amp_is_read_by_focal_retinanet_and_refused_elsewhere():
    cfg = tiny_cfg()
    cfg.TEST.AMP.ENABLED = True
    assert build_model(cfg).test_precision == "bfloat16"
    assert build_model(tiny_cfg()).test_precision is None
    for meta in ("RetinaNet", "GeneralizedRCNN"):
        with pytest.raises(ValueError, match="TEST.AMP.ENABLED"):
            engine.setup_cfg(SMOKE, ["MODEL.META_ARCHITECTURE", meta, "TEST.AMP.ENABLED", "True"])


def test_inference_runs_backbone_and_head_in_bfloat16_and_returns_float32_detections():
    """TEST.AMP: the head's outputs are bfloat16, the detections float32 and close to the float32
    model's (the same weights)."""
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0  # every candidate: compare the top scores
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = [{"image": x["image"]} for x in make_batch(2, size=96)]
    dtypes = []
    model.head.register_forward_hook(lambda m, i, out: dtypes.append(out[0][0].dtype))
    with torch.no_grad():
        ref = model(batch)
        model.test_precision = "bfloat16"
        amp = model(batch)
    assert dtypes == [torch.float32, torch.bfloat16]
    for r, a in zip(ref, amp):
        r, a = r["instances"], a["instances"]
        assert a.scores.dtype == a.pred_boxes.tensor.dtype == torch.float32 and abs(len(a) - len(r)) <= 2
        # bfloat16 keeps 8 bits of mantissa: top scores agree to a few parts in a hundred (NMS may
        # keep a box more or less: this random model's boxes overlap)
        assert torch.allclose(a.scores[:10], r.scores[:10], rtol=0.05, atol=0.01)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast
        model.test_precision = None
        model(batch)
    assert dtypes[-1] == torch.bfloat16  # is left in force when TEST.AMP is off


def _model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_a_step_runs_the_model_in_bfloat16_and_the_loss_in_float32():
    model, batch = _model(), make_batch()
    head_dtypes = []
    model.head.register_forward_hook(lambda m, i, out: head_dtypes.append(out[0][0].dtype))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = MixedPrecisionTrainer(model, [batch] * 2, optimizer, torch.bfloat16)
    losses = []
    model.losses = _recording(model.losses, losses)
    with EventStorage(0) as trainer.storage:
        trainer.run_step()
    assert head_dtypes == [torch.bfloat16]
    assert losses and all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses[0].values())
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)  # float32 weights, updated
    assert any(not torch.equal(after[k], before[k]) for k in before if before[k].is_floating_point())
    assert not trainer.grad_scaler.is_enabled()  # bfloat16: no loss scaling


def _recording(fn, out):
    def wrapped(*args, **kwargs):
        result = fn(*args, **kwargs)
        out.append(result)
        return result
    return wrapped


def test_losses_under_autocast_equal_float32_losses_of_the_same_outputs():
    model, batch = _model(), make_batch()
    images = model.preprocess_image(batch)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    logits, deltas = model.head(features)
    gt = [b["instances"] for b in batch]
    anchors = model.anchor_generator(features)
    from detectron2.modeling.meta_arch.retinanet import permute_to_N_HWA_K

    logits = [permute_to_N_HWA_K(x, model.num_classes).to(torch.bfloat16) for x in logits]
    deltas = [permute_to_N_HWA_K(x, 4).to(torch.bfloat16) for x in deltas]
    labels, boxes = model.label_anchors(anchors, gt)
    reference = model.losses(anchors, [x.float() for x in logits], labels, [x.float() for x in deltas], boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.losses(anchors, logits, labels, deltas, boxes)
    assert {k: v.dtype for k, v in mixed.items()} == {k: torch.float32 for k in reference}
    assert all(torch.equal(mixed[k], reference[k]) for k in reference)


def test_a_float32_checkpoint_resumes_under_amp():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    plain = SimpleTrainer(model, [make_batch()], optimizer)
    with EventStorage(0) as plain.storage:
        plain.run_step()
    mixed = MixedPrecisionTrainer(model, [make_batch()], optimizer, torch.bfloat16)
    mixed.load_state_dict(plain.state_dict())  # no grad_scaler state in it: the scaler starts afresh
    assert mixed.optimizer.state_dict()["state"]  # momentum buffers restored


def test_train_net_trains_and_evaluates_with_amp_on_the_cpu(data_root, tmp_path):
    result = engine.train_from_files(SMOKE, ["OUTPUT_DIR", str(tmp_path), "SOLVER.AMP.ENABLED", "True"])
    assert result["iterations"] == 4
    assert "AP" in result["metrics"]["dense_shapes_tiny_val"]["bbox"]
