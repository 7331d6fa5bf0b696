"""Settings that would have no effect are refused at every entry point (YAML, command line, a
config built in Python, LazyConfig, the ablation runner), for each meta-architecture we know."""

from __future__ import annotations

import os

import pytest

from focal_plugin.engine import get_focal_cfg, setup_cfg, train
from focal_plugin.unread_keys import UNREAD

BASE = "configs/Base-FocalRetinaNet.yaml"
FASTER = "configs/paper/faster_rcnn_R_101_FPN_800_jitter_135k.yaml"
RETINANET = ["MODEL.META_ARCHITECTURE", "RetinaNet"]

REFUSED = [  # (config, overrides, the key named, what the message offers instead)
    (BASE, ["MODEL.FOCAL.LOSS", "sigmoid_ce", "MODEL.FOCAL.GAMMA", "1.0"], "MODEL.FOCAL.GAMMA",
     "sigmoid_focal"),
    (BASE, ["MODEL.FOCAL.BETA", "0.0"], "MODEL.FOCAL.BETA", "sigmoid_focal_star"),
    (BASE, ["MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE", "64"], "MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE",
     "OHEM.ENABLED = False"),
    (BASE, ["MODEL.FOCAL.BIAS_INIT", "zero", "MODEL.FOCAL.PRIOR_PROB", "0.05"], "MODEL.FOCAL.PRIOR_PROB",
     "no effect"),
    (BASE, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"], "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
     "MODEL.RETINANET.SCORE_THRESH_TEST"),
    (BASE, ["MODEL.ROI_HEADS.NUM_CLASSES", "5"], "MODEL.ROI_HEADS.NUM_CLASSES",
     "MODEL.RETINANET.NUM_CLASSES"),
    (BASE, ["MODEL.RPN.NMS_THRESH", "0.5"], "MODEL.RPN.NMS_THRESH", "nothing in this model reads it"),
    (BASE, ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.0"], "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
     "MODEL.FOCAL.GAMMA"),
    ("", [*RETINANET, "MODEL.FOCAL.GAMMA", "1.0"], "MODEL.FOCAL.GAMMA", "MODEL.RETINANET.FOCAL_LOSS_GAMMA"),
    ("", [*RETINANET, "MODEL.FOCAL.LOSS", "sigmoid_ce"], "MODEL.FOCAL.LOSS", "FocalRetinaNet"),
    ("", [*RETINANET, "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.6"], "MODEL.ROI_HEADS.NMS_THRESH_TEST",
     "MODEL.RETINANET.NMS_THRESH_TEST"),
    (FASTER, ["MODEL.FOCAL.GAMMA", "1.0"], "MODEL.FOCAL.GAMMA", "nothing in this model reads it"),
    (FASTER, ["MODEL.RETINANET.NUM_CLASSES", "5"], "MODEL.RETINANET.NUM_CLASSES",
     "MODEL.ROI_HEADS.NUM_CLASSES"),
    (FASTER, ["MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", "0.11"], "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA",
     "remove"),  # written on the command line, though equal to the inherited value
]


@pytest.mark.parametrize("config, opts, key, instead", REFUSED, ids=[" ".join(r[1]) for r in REFUSED])
def test_a_setting_without_effect_is_refused_naming_key_and_what_works(config, opts, key, instead):
    with pytest.raises(ValueError) as info:
        setup_cfg(config or None, opts)
    text = str(info.value)
    assert f"cfg.{key} = " in text and "no effect" in text and instead in text


@pytest.mark.parametrize("config, opts", [
    (BASE, ["MODEL.FOCAL.OHEM.ENABLED", "True", "MODEL.FOCAL.GAMMA", "1.0"]),  # OHEM trains the given loss
    (BASE, ["MODEL.FOCAL.OHEM.ENABLED", "True", "MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE", "64"]),
    (BASE, ["MODEL.FOCAL.LOSS", "softmax_focal", "MODEL.FOCAL.ALPHA", "0.5"]),
    (BASE, ["MODEL.FOCAL.LOSS", "sigmoid_focal_star", "MODEL.FOCAL.BETA", "0.0"]),
    (BASE, ["MODEL.FOCAL.LOSS", "sigmoid_ce", "MODEL.FOCAL.ALPHA", "0.75"]),
    (FASTER, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"]),  # inherits a RetinaNet config's values
    ("", [*RETINANET, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.0"]),
    ("", ["MODEL.META_ARCHITECTURE", "SemanticSegmentor", "MODEL.FOCAL.GAMMA", "1.0"]),  # not ours to judge
])
def test_settings_that_take_effect_pass(config, opts):
    setup_cfg(config or None, opts)


def test_a_key_typed_on_the_command_line_counts_even_at_its_default(tmp_path):
    with pytest.raises(ValueError, match="NUM_CLASSES = 80 has no effect on FocalRetinaNet.*remove"):
        setup_cfg(BASE, ["MODEL.ROI_HEADS.NUM_CLASSES", "80"])
    dumped = tmp_path / "config.yaml"  # a run's config.yaml writes every key: they count by value
    dumped.write_text(setup_cfg(BASE).dump())
    setup_cfg(str(dumped))


def test_a_config_built_in_python_is_checked_before_anything_is_written(tmp_path):
    cfg = get_focal_cfg()
    cfg.merge_from_file(BASE)
    cfg.MODEL.RPN.NMS_THRESH = 0.5
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    with pytest.raises(ValueError, match="cfg.MODEL.RPN.NMS_THRESH = 0.5 has no effect"):
        train(cfg)
    assert not os.path.exists(tmp_path / "out" / "config.yaml")


def test_every_rule_names_a_key_that_exists():
    cfg = get_focal_cfg()
    for arch, table in UNREAD.items():
        for key, instead in table.items():
            for k in [key] + ([instead] if instead and " " not in instead else []):
                node = cfg
                for part in k.split("."):
                    assert part in node, f"{arch}: {k} is not a detectron2 / MODEL.FOCAL key"
                    node = node[part]


def test_lazyconfig_arguments_without_effect_are_refused():
    from detectron2.config import LazyConfig, instantiate

    lazy = LazyConfig.load("configs/lazy/focal_retinanet_R_50_FPN_600_90k.py")
    instantiate(lazy.model)  # detectron2's focal_loss_* defaults, as its model zoo writes them
    lazy.model.focal_loss_gamma = 1.0
    with pytest.raises(ValueError, match="focal_loss_gamma = 1.0 has no effect on FocalRetinaNet.*"
                                         "model.classification_loss.gamma"):
        instantiate(lazy.model)
    lazy.model.focal_loss_gamma = 2.0
    lazy.model.head.bias_init, lazy.model.head.prior_prob = "zero", 0.05
    with pytest.raises(ValueError, match="prior_prob = 0.05 has no effect"):
        instantiate(lazy.model)

