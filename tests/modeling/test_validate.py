"""``focal_plugin/modeling/validate.py``: every ``MODEL.FOCAL`` rule refuses a bad value with a
``ValueError`` naming the key, on each path a config takes: ``check_focal_config`` itself,
``setup_cfg`` (train_net.py, the ablation runner: command-line strings) and ``build_model`` on a
config assembled in Python."""

import pytest
from detectron2.modeling import build_model

from focal_plugin import engine
from focal_plugin.modeling.validate import NORMALIZERS, check_focal_config, check_normalizer

from helpers import tiny_cfg

BAD_VALUES = [
    ("LOSS", "focal"),
    ("LOSS", ["sigmoid_focal"]),
    ("BIAS_INIT", "xavier"),
    ("GAMMA", -1.0),
    ("ALPHA", 1.5),
    ("PRIOR_PROB", 0.0),
    ("PRIOR_PROB", 1.0),
    ("NORMALIZER", "batch"),
    ("ALLOW_LOW_QUALITY_MATCHES", "yes"),
    ("OHEM.ENABLED", 1),
    ("OHEM.BATCH_SIZE_PER_IMAGE", 0),
    ("OHEM.NMS_THRESH", 1.5),
    ("OHEM.NMS_THRESH", 0.0),
    ("OHEM.POSITIVE_FRACTION", 0.0),
    ("OHEM.POSITIVE_FRACTION", -0.5),
    ("OHEM.PRE_NMS_TOPK", 64),
    ("OHEM.PRE_NMS_TOPK", -1),
    ("FUSED_LOSS", "yes"),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_invalid_focal_values_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"cfg.MODEL.FOCAL.{key} = "):
        check_focal_config(tiny_cfg(**{key: value}))


def _same_type_as_default(key, value) -> bool:  # yacs refuses a change of type itself when merging
    default = tiny_cfg().MODEL.FOCAL
    for part in key.split("."):
        default = default[part]
    return type(value) is type(default)


@pytest.mark.parametrize("key,value", [(k, v) for k, v in BAD_VALUES if _same_type_as_default(k, v)])
def test_setup_cfg_refuses_them_from_the_command_line(key, value):
    with pytest.raises(ValueError, match=f"cfg.MODEL.FOCAL.{key} = "):
        engine.setup_cfg(opts=[f"MODEL.FOCAL.{key}", str(value)])


@pytest.mark.parametrize("key,value", [("GAMMA", -1.0), ("NORMALIZER", "batch"), ("OHEM.ENABLED", 1)])
def test_build_model_refuses_them_for_a_config_assembled_in_python(key, value):
    with pytest.raises(ValueError, match=f"cfg.MODEL.FOCAL.{key} = "):
        build_model(tiny_cfg(**{key: value}))


def test_focal_star_gamma_zero_refused_naming_key():
    with pytest.raises(ValueError, match="cfg.MODEL.FOCAL.GAMMA = 0.0"):
        check_focal_config(tiny_cfg(LOSS="sigmoid_focal_star", GAMMA=0.0))


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_class_count_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="cfg.MODEL.RETINANET.NUM_CLASSES = "):
        check_focal_config(tiny_cfg(num_classes=value))


def test_softmax_prior_needs_room_for_the_background_naming_both_keys():
    cfg = tiny_cfg(num_classes=5, LOSS="softmax_focal", GAMMA=2.0, PRIOR_PROB=0.2)  # 5 x .2 = 1
    with pytest.raises(ValueError, match=r"cfg.MODEL.FOCAL.PRIOR_PROB = 0.2.*NUM_CLASSES = 5"):
        check_focal_config(cfg)
    cfg.MODEL.FOCAL.LOSS = "sigmoid_focal"  # no background logit: fine
    check_focal_config(cfg)


def test_defaults_and_the_normalizers_pass():
    check_focal_config(tiny_cfg())
    for name in NORMALIZERS:
        check_normalizer(name)
    with pytest.raises(ValueError, match=r"'EMA' is invalid: expected one of \['num_pos', 'ema'\]"):
        check_normalizer("EMA")
