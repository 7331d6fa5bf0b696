"""``check_focal_config``: the one place a config's ``MODEL.FOCAL`` values meet their rules.

``engine.setup_cfg`` runs it on every config it sets up (``train_net.py``, the ablation runner,
the analysis tools), so a bad value is refused before any dataset is loaded or any cell starts;
``FocalRetinaNet.from_config`` runs it for configs assembled in Python. Each rule is written once:
a loss's hyperparameters in the loss (``focal_plugin.losses``), the bias init in the initializer
(``focal_plugin.init``), the OHEM hyperparameters in ``modeling.ohem.check_ohem_args``, the loss
normalizer here (``check_normalizer``, which ``FocalRetinaNet`` also applies to its argument).
Every error names the config key and its value: "cfg.MODEL.FOCAL.GAMMA = -1.0: ...".
"""

from __future__ import annotations

from typing import Any

from focal_plugin.config import get_focal_cfg
from focal_plugin.init import build_initializer
from focal_plugin.losses import LOSS_REGISTRY
from focal_plugin.modeling.config_keys import build_loss_from_cfg, cfg_value, config_keys
from focal_plugin.modeling.ohem import check_ohem_args

#: loss normalizers (cfg.MODEL.FOCAL.NORMALIZER): the paper's batch count, detectron2's EMA
NORMALIZERS = ("num_pos", "ema")
_OHEM_KEYS = tuple(f"MODEL.FOCAL.OHEM.{k}" for k in
                   ("BATCH_SIZE_PER_IMAGE", "NMS_THRESH", "POSITIVE_FRACTION", "PRE_NMS_TOPK"))
_LOSS_HYPERPARAMETERS = ("GAMMA", "ALPHA", "BETA")  # MODEL.FOCAL keys a loss may read
_SWITCHES = ("MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES", "MODEL.FOCAL.OHEM.ENABLED", "MODEL.FOCAL.CHANNELS_LAST",
             "MODEL.FOCAL.STATIC_SHAPES.ENABLED")  # FUSED_LOSS: the loss's
_STATIC_KEYS = tuple(f"MODEL.FOCAL.STATIC_SHAPES.{k}" for k in ("IMAGE_SIZES", "MAX_GT", "STATS_PERIOD"))


def check_normalizer(normalizer: Any) -> None:
    """``ValueError`` unless ``normalizer`` is one of ``NORMALIZERS``: "num_pos" (the paper, §4.1:
    the number of positive anchors) or "ema" (detectron2's moving average of it)."""
    if not isinstance(normalizer, str) or normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer = {normalizer!r} is invalid: expected one of {list(NORMALIZERS)}")


def _check_read(cfg, loss) -> None:
    """A ``MODEL.FOCAL`` value changed from its default that this config's model would not read
    is refused, naming what reads it: a hyperparameter the loss has none of (GAMMA with
    "sigmoid_ce"), the OHEM sizes while OHEM is off. (PRIOR_PROB with an initializer that sets no
    prior: the initializer's own rule.)"""
    focal, defaults = cfg.MODEL.FOCAL, get_focal_cfg().MODEL.FOCAL
    for key in _LOSS_HYPERPARAMETERS:
        if key.lower() not in loss.hyperparameters and focal[key] != defaults[key]:
            readers = sorted(k for k, c in LOSS_REGISTRY if key.lower() in c.hyperparameters)
            raise ValueError(f"cfg.MODEL.FOCAL.{key} = {focal[key]!r} has no effect with "
                             f"cfg.MODEL.FOCAL.LOSS = {focal.LOSS!r} "
                             f"(it reads {[p.upper() for p in loss.hyperparameters]}): "
                             f"losses that read {key}: {readers}; or leave it at {defaults[key]!r}")
    if not focal.OHEM.ENABLED:
        for key in _OHEM_KEYS:
            name = key.rsplit(".", 1)[1]
            if focal.OHEM[name] != defaults.OHEM[name]:
                raise ValueError(f"cfg.{key} = {focal.OHEM[name]!r} has no effect while "
                                 "cfg.MODEL.FOCAL.OHEM.ENABLED = False: set it True (Table 1d's OHEM), "
                                 f"or leave {name} at {defaults.OHEM[name]!r}")


def _check_static_shapes(cfg) -> None:
    """``MODEL.FOCAL.STATIC_SHAPES``: sizes a non-empty list of [H, W] positive integers (multiples
    of the backbone's size divisibility: checked when the model is built), MAX_GT and STATS_PERIOD
    positive integers; its values refused while it is off (no effect), and with OHEM (whose
    sampling has data-dependent sizes: it stays eager)."""
    static, defaults = cfg.MODEL.FOCAL.STATIC_SHAPES, get_focal_cfg().MODEL.FOCAL.STATIC_SHAPES
    sizes = static.IMAGE_SIZES
    if not (isinstance(sizes, (list, tuple)) and sizes and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s)
            for s in sizes)):
        raise ValueError(f"cfg.MODEL.FOCAL.STATIC_SHAPES.IMAGE_SIZES = {sizes!r}: expected a non-empty "
                         "list of [H, W] positive integers (pixels), e.g. [[640, 640], [512, 768]]")
    for key in ("MAX_GT", "STATS_PERIOD"):
        if not isinstance(static[key], int) or isinstance(static[key], bool) or static[key] < 1:
            raise ValueError(f"cfg.MODEL.FOCAL.STATIC_SHAPES.{key} = {static[key]!r}: expected an "
                             "integer >= 1")
    if not static.ENABLED:
        for key in _STATIC_KEYS:
            name = key.rsplit(".", 1)[1]
            if _plain(static[name]) != _plain(defaults[name]):
                raise ValueError(f"cfg.{key} = {static[name]!r} has no effect while "
                                 "cfg.MODEL.FOCAL.STATIC_SHAPES.ENABLED = False: set it True, or leave "
                                 f"{name} at {defaults[name]!r}")
    elif cfg.MODEL.FOCAL.OHEM.ENABLED:
        raise ValueError("cfg.MODEL.FOCAL.STATIC_SHAPES.ENABLED = True with cfg.MODEL.FOCAL.OHEM.ENABLED "
                         "= True: OHEM's sampling has data-dependent sizes and runs only in the eager "
                         "step; turn one of them off")


def _plain(value):
    return [list(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_focal_config(cfg) -> None:
    """Refuse (``ValueError`` naming the key and value) any value under ``cfg.MODEL.FOCAL`` that the
    model could not use, and ``MODEL.RETINANET.NUM_CLASSES`` unless a positive integer: the loss
    name, its hyperparameters and ``FUSED_LOSS``, the bias init with its prior, the normalizer, the
    switches (True or False) and the OHEM hyperparameters (also while OHEM is off: a config must
    not carry invalid values). Nothing is built but the loss module and the initializer (cheap)."""
    focal, retina = cfg.MODEL.FOCAL, cfg.MODEL.RETINANET
    for key in _SWITCHES:
        with config_keys(cfg, key):
            if not isinstance(cfg_value(cfg, key), bool):
                raise ValueError("expected True or False")
    with config_keys(cfg, "MODEL.FOCAL.NORMALIZER"):
        check_normalizer(focal.NORMALIZER)
    loss = build_loss_from_cfg(cfg)  # MODEL.FOCAL.LOSS and the hyperparameters that loss reads
    with config_keys(cfg, "MODEL.RETINANET.NUM_CLASSES"):
        loss.num_logits(retina.NUM_CLASSES)  # a positive integer
    empty = focal.EMPTY_CLASSES
    if not isinstance(empty, int) or isinstance(empty, bool) or empty < 0:
        raise ValueError(f"cfg.MODEL.FOCAL.EMPTY_CLASSES = {empty!r}: expected an integer >= 0")
    # the head's classes: the data's and the empty ones (the softmax prior spreads over all)
    with config_keys(cfg, "MODEL.FOCAL.BIAS_INIT", "MODEL.FOCAL.PRIOR_PROB", "MODEL.RETINANET.NUM_CLASSES",
                     "MODEL.FOCAL.LOSS", *(["MODEL.FOCAL.EMPTY_CLASSES"] if empty else [])):
        build_initializer(focal.BIAS_INIT, prior_prob=focal.PRIOR_PROB,
                          num_classes=retina.NUM_CLASSES + empty, softmax=loss.is_softmax)
    _check_read(cfg, loss)
    _check_static_shapes(cfg)
    if empty and focal.OHEM.ENABLED:
        raise ValueError(f"cfg.MODEL.FOCAL.EMPTY_CLASSES = {empty} with cfg.MODEL.FOCAL.OHEM.ENABLED = True: "
                         "OHEM ranks the data's classes only; turn one of them off")
    ohem = focal.OHEM
    with config_keys(cfg, *_OHEM_KEYS):
        check_ohem_args(retina.NUM_CLASSES, ohem.BATCH_SIZE_PER_IMAGE, ohem.NMS_THRESH,
                        ohem.POSITIVE_FRACTION, ohem.PRE_NMS_TOPK or None)
