"""``add_focal_config``: the ``MODEL.FOCAL`` keys, their validation and derived anchor settings.

Defaults are the paper's (§3–4 of *Focal Loss for Dense Object Detection*).
"""

from __future__ import annotations

import math

from detectron2.config import CfgNode as CN

NORMALIZERS = ("num_pos", "ema")


def add_focal_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.FOCAL`` (idempotent) and return ``cfg``."""
    if "FOCAL" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.FOCAL = CN()
    # A name in focal_plugin.losses.LOSS_REGISTRY: sigmoid_ce | sigmoid_focal |
    # sigmoid_focal_star | softmax_focal.
    _C.MODEL.FOCAL.LOSS = "sigmoid_focal"
    _C.MODEL.FOCAL.GAMMA = 2.0
    # alpha_t weight of positives; negative disables alpha-balancing.
    _C.MODEL.FOCAL.ALPHA = 0.25
    # FL* shift (Appendix A); used by sigmoid_focal_star only.
    _C.MODEL.FOCAL.BETA = 0.0
    # pi of the prior-probability bias init (§3.3).
    _C.MODEL.FOCAL.PRIOR_PROB = 0.01
    # A name in focal_plugin.init.INITIALIZER_REGISTRY for the last classification conv's bias:
    # "prior" (the paper) or "zero" (the init ablation).
    _C.MODEL.FOCAL.BIAS_INIT = "prior"
    # "num_pos": divide by the batch's positive-anchor count summed over all workers (the paper);
    # "ema": detectron2's exponential moving average of it (start 100, momentum 0.9).
    _C.MODEL.FOCAL.NORMALIZER = "num_pos"
    # Use the fused loss+gradient kernel; False forces the reference formulas
    # (also forced by the environment variable FOCAL_PLUGIN_REFERENCE_LOSS=1).
    _C.MODEL.FOCAL.FUSED_LOSS = True
    # detectron2 hard-codes True in RetinaNet: an anchor that is the best match of a gt box is
    # foreground even below the IoU threshold.
    _C.MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES = True
    # Table 1c anchor density. 0 = use MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS as given.
    # n > 0 scales per octave: sizes base * 2^(k/n), k < n, with base = SIZES[level][0].
    _C.MODEL.FOCAL.ANCHOR_SCALES_PER_OCTAVE = 0
    # 0 = as given; 1 = square anchors only; 3 = {1:2, 1:1, 2:1}.
    _C.MODEL.FOCAL.ANCHOR_ASPECTS = 0

    # Online hard example mining (Table 1d): CE on the B highest-loss anchors after NMS.
    _C.MODEL.FOCAL.OHEM = CN()
    _C.MODEL.FOCAL.OHEM.ENABLED = False
    _C.MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE = 128
    _C.MODEL.FOCAL.OHEM.NMS_THRESH = 0.5
    # -1 = no ratio (original OHEM); 0.25 = "OHEM 1:3" (at most 1 positive per 3 negatives).
    _C.MODEL.FOCAL.OHEM.POSITIVE_FRACTION = -1.0
    # NMS sees at most this many highest-loss anchors per image (exact within the cap; 0 = no cap,
    # exact but slow on ~100k anchors). See focal_plugin.modeling.ohem.
    _C.MODEL.FOCAL.OHEM.PRE_NMS_TOPK = 8192
    return cfg


def _fail(key: str, value: object, allowed: str) -> None:
    raise ValueError(f"cfg.MODEL.FOCAL.{key} = {value!r} is invalid: expected {allowed}")


def validate_focal_config(cfg: CN) -> None:
    """Check every ``MODEL.FOCAL`` key; raise ``ValueError`` naming the first bad one."""
    if "FOCAL" not in cfg.MODEL:
        raise ValueError("cfg.MODEL.FOCAL is missing: call focal_plugin.add_focal_config(cfg)")
    from focal_plugin.init import INITIALIZER_REGISTRY
    from focal_plugin.losses import LOSS_REGISTRY

    f = cfg.MODEL.FOCAL
    if f.LOSS not in LOSS_REGISTRY:
        _fail("LOSS", f.LOSS, f"one of {sorted(k for k, _ in LOSS_REGISTRY)}")
    if f.BIAS_INIT not in INITIALIZER_REGISTRY:
        _fail("BIAS_INIT", f.BIAS_INIT, f"one of {sorted(k for k, _ in INITIALIZER_REGISTRY)}")
    for key in ("GAMMA", "ALPHA", "BETA", "PRIOR_PROB"):
        value = f[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(key, value, "a finite number")
    if not 0.0 < f.PRIOR_PROB < 1.0:
        _fail("PRIOR_PROB", f.PRIOR_PROB, "a probability in the open interval (0, 1)")
    if LOSS_REGISTRY.get(f.LOSS).is_softmax and f.PRIOR_PROB * cfg.MODEL.RETINANET.NUM_CLASSES >= 1.0:
        _fail("PRIOR_PROB", f.PRIOR_PROB, "PRIOR_PROB * MODEL.RETINANET.NUM_CLASSES < 1 for softmax_focal "
              f"(K = {cfg.MODEL.RETINANET.NUM_CLASSES} foreground probabilities must sum below 1)")
    if f.NORMALIZER not in NORMALIZERS:
        _fail("NORMALIZER", f.NORMALIZER, f"one of {list(NORMALIZERS)}")
    for key in ("FUSED_LOSS", "ALLOW_LOW_QUALITY_MATCHES"):
        if not isinstance(f[key], bool):
            _fail(key, f[key], "True or False")
    build_loss_from_cfg(cfg)  # validates GAMMA / ALPHA / BETA for the chosen loss
    n = f.ANCHOR_SCALES_PER_OCTAVE
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        _fail("ANCHOR_SCALES_PER_OCTAVE", n, "an integer >= 0 (0 = use ANCHOR_GENERATOR.SIZES)")
    if f.ANCHOR_ASPECTS not in (0, 1, 3) or isinstance(f.ANCHOR_ASPECTS, bool):
        _fail("ANCHOR_ASPECTS", f.ANCHOR_ASPECTS, "0 (as given), 1 ({1}) or 3 ({0.5, 1, 2})")
    o = f.OHEM
    if not isinstance(o.ENABLED, bool):
        _fail("OHEM.ENABLED", o.ENABLED, "True or False")
    b = o.BATCH_SIZE_PER_IMAGE
    if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
        _fail("OHEM.BATCH_SIZE_PER_IMAGE", b, "an integer > 0")
    t = o.NMS_THRESH
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
        _fail("OHEM.NMS_THRESH", t, "a number in (0, 1]")
    k = o.PRE_NMS_TOPK
    if isinstance(k, bool) or not isinstance(k, int) or (k != 0 and k < b):
        _fail("OHEM.PRE_NMS_TOPK", k, f"0 (no cap) or an integer >= OHEM.BATCH_SIZE_PER_IMAGE ({b})")
    p = o.POSITIVE_FRACTION
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p == -1 or 0.0 < p <= 1.0):
        _fail("OHEM.POSITIVE_FRACTION", p, "-1 (no ratio) or a number in (0, 1]")


def build_loss_from_cfg(cfg: CN, name: str | None = None, **overrides):
    """The classification loss named ``cfg.MODEL.FOCAL.LOSS`` with its hyperparameters from cfg."""
    from focal_plugin.losses import LOSS_REGISTRY, build_classification_loss

    focal = cfg.MODEL.FOCAL
    name = name or focal.LOSS
    loss_cls = LOSS_REGISTRY.get(name)
    params = {p: focal[p.upper()] for p in loss_cls.hyperparameters}
    params.update(overrides)
    try:
        return build_classification_loss(name, fused=focal.FUSED_LOSS, **params)
    except ValueError as e:  # name the config key, not only the function parameter
        keys = ", ".join(f"cfg.MODEL.FOCAL.{p.upper()}={params[p]!r}" for p in params)
        raise ValueError(f"invalid loss settings for {name} ({keys}): {e}") from e


def anchor_settings(cfg: CN) -> tuple[list[list[float]], list[list[float]]]:
    """The anchor sizes and aspect ratios to use, after ``ANCHOR_SCALES_PER_OCTAVE``/``ASPECTS``.

    With n scales per octave each level gets sizes ``base * 2**(k/n)`` for k < n, where ``base``
    is that level's first entry of ``MODEL.ANCHOR_GENERATOR.SIZES`` (32 … 512 in the paper).
    """
    sizes = [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    ratios = [list(r) for r in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS]
    n = cfg.MODEL.FOCAL.ANCHOR_SCALES_PER_OCTAVE
    if n:
        sizes = [[float(level[0]) * 2 ** (k / n) for k in range(n)] for level in sizes]
    aspects = cfg.MODEL.FOCAL.ANCHOR_ASPECTS
    if aspects:
        ratios = [[1.0]] if aspects == 1 else [[0.5, 1.0, 2.0]]
    return sizes, ratios


def resolved_anchor_cfg(cfg: CN) -> CN:
    """A copy of ``cfg`` whose ``MODEL.ANCHOR_GENERATOR`` holds the resolved sizes/ratios."""
    sizes, ratios = anchor_settings(cfg)
    out = cfg.clone()
    out.defrost()
    out.MODEL.ANCHOR_GENERATOR.SIZES = sizes
    out.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = ratios
    return out
