"""FocalRetinaNet builds from every registered loss/initializer and matches detectron2's RetinaNet
where it should (bad MODEL.FOCAL values: tests/modeling/test_validate.py)."""

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from focal_plugin.anchors import anchor_overrides, anchor_sizes, aspect_ratios
from focal_plugin.losses import LOSS_REGISTRY

from helpers import make_batch, tiny_cfg

LOSSES = sorted(name for name, _ in LOSS_REGISTRY)


def _train_losses(model, batch):
    model.train()
    with EventStorage(0) as storage:
        losses = model(batch)
    return losses, storage


def test_all_losses_registered():
    assert {"sigmoid_ce", "sigmoid_focal", "sigmoid_focal_star", "softmax_focal"} <= set(LOSSES)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bias_init", ["prior", "zero"])
def test_builds_for_every_loss_and_bias_init(loss, bias_init):
    extra = {"GAMMA": 1.0, "BETA": 1.0} if loss == "sigmoid_focal_star" else {}
    cfg = tiny_cfg(LOSS=loss, BIAS_INIT=bias_init, **extra)
    model = build_model(cfg)
    assert type(model).__name__ == "FocalRetinaNet"
    bias = model.head.cls_score.bias.detach()
    k, a = 3, 9
    if loss == "softmax_focal":
        assert bias.numel() == a * (k + 1)
        if bias_init == "prior":  # every foreground class starts at probability pi
            probs = torch.softmax(bias.view(a, k + 1), dim=1)
            torch.testing.assert_close(probs[:, :k], torch.full((a, k), 0.01))
    else:
        assert bias.numel() == a * k
    if bias_init == "zero":
        assert torch.count_nonzero(bias) == 0
    elif loss != "softmax_focal":
        torch.testing.assert_close(bias, torch.full_like(bias, -math.log(99)))
    # the paper's conv init: sigma 0.01 weights, zero bias elsewhere in the head
    w = model.head.cls_subnet[0].weight.detach()
    assert abs(w.std().item() - 0.01) < 0.002
    assert torch.count_nonzero(model.head.bbox_pred.bias) == 0
    losses, _ = _train_losses(model, make_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_equals_detectron2_retinanet_with_ema_normalizer():
    focal_cfg = tiny_cfg(LOSS="sigmoid_focal", GAMMA=2.0, ALPHA=0.25, NORMALIZER="ema")
    d2_cfg = tiny_cfg("RetinaNet")
    ours, theirs = build_model(focal_cfg), build_model(d2_cfg)
    ours.load_state_dict(theirs.state_dict())
    batch = make_batch(num_images=2, size=96, boxes_per_image=4)
    for step in range(2):  # the EMA normalizer evolves identically too
        a, _ = _train_losses(ours, batch)
        b, _ = _train_losses(theirs, batch)
        for key in ("loss_cls", "loss_box_reg"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{key} step {step}")
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        ra, rb = ours(batch[:1])[0]["instances"], theirs(batch[:1])[0]["instances"]
    torch.testing.assert_close(ra.scores, rb.scores)
    torch.testing.assert_close(ra.pred_boxes.tensor, rb.pred_boxes.tensor)


def test_num_pos_normalizer_divides_by_batch_positives():
    model = build_model(tiny_cfg(NORMALIZER="num_pos"))
    losses, storage = _train_losses(model, make_batch(num_images=2))
    hist = storage.histories()
    num_pos = hist["num_pos_anchors"].latest() * 2
    assert hist["loss_normalizer"].latest() == pytest.approx(max(num_pos, 1.0))
    share = hist["cls_loss_pos_share"].latest()
    assert 0.0 < share < 1.0


def test_ema_normalizer_trains():
    model = build_model(tiny_cfg(NORMALIZER="ema"))
    losses, storage = _train_losses(model, make_batch())
    num_pos = storage.histories()["num_pos_anchors"].latest() * 2
    assert storage.histories()["loss_normalizer"].latest() == pytest.approx(100 * 0.9 + 0.1 * num_pos)
    sum(losses.values()).backward()


def test_images_without_annotations_train():
    model = build_model(tiny_cfg())
    losses, storage = _train_losses(model, make_batch(num_images=2, empty=(0,)))
    assert all(torch.isfinite(v) for v in losses.values())
    losses, storage = _train_losses(model, make_batch(num_images=2, empty=(0, 1)))
    assert losses["loss_box_reg"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    assert storage.histories()["loss_normalizer"].latest() == 1.0


def test_softmax_focal_trains_and_infers():
    model = build_model(tiny_cfg(LOSS="softmax_focal"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses, _ = _train_losses(model, make_batch())
    sum(losses.values()).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        inst = model(make_batch(num_images=1))[0]["instances"]
    assert len(inst) > 0
    assert int(inst.pred_classes.max()) < 3  # background never predicted
    assert float(inst.scores.max()) <= 1.0


def test_group_norm_head_builds_and_trains():
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.NORM = "GN"
    model = build_model(cfg)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules())
    losses, _ = _train_losses(model, make_batch())
    assert torch.isfinite(sum(losses.values()))


@pytest.mark.parametrize("n,aspects,expected", [(1, 1, 1), (2, 1, 2), (3, 3, 9), (4, 3, 12)])
def test_table_1c_density_written_into_detectrons_anchor_keys(n, aspects, expected):
    cfg = tiny_cfg()
    cfg.merge_from_list(anchor_overrides(n, aspects, base_sizes=(16, 32, 64, 128, 256)))
    model = build_model(cfg)
    assert model.anchor_generator.num_cell_anchors == [expected] * 5
    areas = list(model.anchor_generator.cell_anchors)[0]
    # anchors of one scale share their area across aspect ratios (up to rounding of w, h)
    sides = ((areas[:, 2] - areas[:, 0]) * (areas[:, 3] - areas[:, 1])).sqrt().round(decimals=1).unique()
    expected_sides = torch.tensor([16 * 2 ** (k / n) for k in range(n)])
    torch.testing.assert_close(sides.sort().values, expected_sides, atol=0.1, rtol=0)
    # detectron2's own RetinaNet reads the same keys: same anchors
    stock = tiny_cfg("RetinaNet")
    stock.merge_from_list(anchor_overrides(n, aspects, base_sizes=(16, 32, 64, 128, 256)))
    stock_anchors = build_model(stock).anchor_generator.cell_anchors
    for ours, theirs in zip(model.anchor_generator.cell_anchors, stock_anchors):
        torch.testing.assert_close(ours, theirs)


def test_anchor_helper_rejects_bad_densities():
    with pytest.raises(ValueError, match="scales_per_octave"):
        anchor_sizes(0)
    with pytest.raises(ValueError, match="num_aspects"):
        aspect_ratios(2)
    assert anchor_sizes(3)[0] == pytest.approx([32.0, 40.317474, 50.796834])


def test_explicit_anchor_keys_still_work():
    cfg = tiny_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[20, 30]] * 5
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    assert build_model(cfg).anchor_generator.num_cell_anchors == [2] * 5


def test_low_quality_matches_key_reaches_matcher():
    assert build_model(tiny_cfg()).anchor_matcher.allow_low_quality_matches is True
    model = build_model(tiny_cfg(ALLOW_LOW_QUALITY_MATCHES=False))
    assert model.anchor_matcher.allow_low_quality_matches is False


def test_ohem_trains_and_limits_classification_anchors():
    model = build_model(tiny_cfg(**{"OHEM.ENABLED": True, "OHEM.BATCH_SIZE_PER_IMAGE": 16,
                                    "OHEM.POSITIVE_FRACTION": 0.25, "LOSS": "sigmoid_ce",
                                    "ALPHA": -1.0}))
    losses, storage = _train_losses(model, make_batch())
    assert storage.histories()["cls_anchors_per_image"].latest() <= 16
    assert model.anchor_sampler.pre_nms_topk == 8192
    sum(losses.values()).backward()
    grads = model.head.cls_score.weight.grad
    assert grads is not None and torch.isfinite(grads).all()


def test_reimport_of_the_same_source_never_fails_already_registered():
    import focal_plugin
    import focal_plugin.modeling.focal_retinanet as mod

    importlib.reload(mod)
    importlib.reload(focal_plugin)
    assert META_ARCH_REGISTRY.get("FocalRetinaNet") is mod.FocalRetinaNet
    # the same file under a second module name is another object: refused, naming both
    spec = importlib.util.spec_from_file_location("second_path.focal_retinanet", mod.__file__)
    again = importlib.util.module_from_spec(spec)
    with pytest.raises(KeyError, match=r"focal_plugin\.modeling\.focal_retinanet.*second_path"):
        spec.loader.exec_module(again)
    assert META_ARCH_REGISTRY.get("FocalRetinaNet") is mod.FocalRetinaNet


def test_a_different_object_cannot_take_a_registered_name():
    from focal_plugin.registry import register

    class FocalRetinaNetImpostor:  # noqa: B903
        pass

    FocalRetinaNetImpostor.__name__ = "FocalRetinaNet"
    with pytest.raises(KeyError, match="already registered"):
        register(META_ARCH_REGISTRY)(FocalRetinaNetImpostor)


USER_MODULE = """
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(RetinaNet):
    pass
"""


def test_users_own_class_named_like_ours_is_kept_with_a_clear_error(tmp_path):
    pkg = tmp_path / "my_project" / "modeling"
    pkg.mkdir(parents=True)
    (tmp_path / "my_project" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "focal_retinanet.py").write_text(USER_MODULE)
    code = (
        "import my_project.modeling.focal_retinanet as mine\n"
        "from detectron2.modeling import META_ARCH_REGISTRY\n"
        "try:\n"
        "    import focal_plugin\n"
        "except KeyError as e:\n"
        "    print('ERROR', e)\n"
        "assert META_ARCH_REGISTRY.get('FocalRetinaNet') is mine.FocalRetinaNet\n"
        "print('kept')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "my_project.modeling.focal_retinanet" in out.stdout
    assert "focal_plugin.modeling.focal_retinanet" in out.stdout
    assert out.stdout.strip().endswith("kept")


def test_non_finite_loss_names_term_and_iteration():
    model = build_model(tiny_cfg())
    with torch.no_grad():
        model.head.cls_score.bias.fill_(float("nan"))
    model.train()
    with EventStorage(7):
        with pytest.raises(FloatingPointError, match=r"loss_cls.*iteration 7"):
            model(make_batch())


def test_prior_init_kept_when_class_count_differs_from_checkpoint(tmp_path):
    src = build_model(tiny_cfg(num_classes=3))
    DetectionCheckpointer(src, save_dir=str(tmp_path)).save("k3")
    dst = build_model(tiny_cfg(num_classes=5))
    DetectionCheckpointer(dst).load(str(tmp_path / "k3.pth"))
    bias = dst.head.cls_score.bias.detach()
    assert bias.numel() == 9 * 5
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(99)))
    torch.testing.assert_close(dst.head.cls_subnet[0].weight, src.head.cls_subnet[0].weight)
