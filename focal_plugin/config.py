"""``add_focal_config``: the ``MODEL.FOCAL`` keys and their defaults (the paper's, §3–4).

Only defaults live here. The values are checked in one place,
``focal_plugin.modeling.validate.check_focal_config`` (run by ``engine.setup_cfg`` and when the
model is built), with errors naming the config key.
Anchors and matching stay in detectron2's own keys (``MODEL.ANCHOR_GENERATOR``,
``MODEL.RETINANET.IOU_*``); ``focal_plugin.anchors`` writes Table 1c's densities into them.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

from focal_plugin.modeling.ohem import DEFAULT_PRE_NMS_TOPK


def add_focal_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.FOCAL`` (idempotent) and return ``cfg``."""
    if "FOCAL" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.FOCAL = CN()
    # A name in focal_plugin.losses.LOSS_REGISTRY: sigmoid_ce | sigmoid_focal |
    # sigmoid_focal_star | softmax_focal. Each reads the hyperparameters it has of the three below.
    _C.MODEL.FOCAL.LOSS = "sigmoid_focal"
    # gamma: focusing parameter of FL (§3.2) and steepness of FL* (Appendix A).
    _C.MODEL.FOCAL.GAMMA = 2.0
    # alpha_t weight of positives (§3.1); negative disables alpha-balancing.
    _C.MODEL.FOCAL.ALPHA = 0.25
    # FL*'s shift (Appendix A); with GAMMA 2 and ALPHA .25 this is Table 3's FL* (2, 1) row.
    _C.MODEL.FOCAL.BETA = 1.0
    # pi of the prior-probability bias init (§3.3).
    _C.MODEL.FOCAL.PRIOR_PROB = 0.01
    # A name in focal_plugin.init.INITIALIZER_REGISTRY for the last classification conv's bias:
    # "prior" (the paper) or "zero" (the init ablation).
    _C.MODEL.FOCAL.BIAS_INIT = "prior"
    # "num_pos": divide by the batch's positive-anchor count summed over all workers (the paper);
    # "ema": detectron2's exponential moving average of it (start 100, momentum 0.9).
    _C.MODEL.FOCAL.NORMALIZER = "num_pos"
    # The one switch between the fused loss+gradient kernels (True) and the reference formulas.
    _C.MODEL.FOCAL.FUSED_LOSS = True
    # detectron2 hard-codes True in RetinaNet: an anchor that is the best match of a gt box is
    # foreground even below the IoU threshold. Exposed because it moves AP.
    _C.MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES = True

    # Classes that never occur, added to the NUM_CLASSES of the data: E more classification
    # outputs whose every anchor is a negative, dropped at inference (AP over the data's classes).
    # An imbalance lever that changes nothing else (same images, positives, anchors and AP
    # classes): binary negatives per positive grow by (K + E) / K. Not with OHEM.
    _C.MODEL.FOCAL.EMPTY_CLASSES = 0

    # Convolution weights (so their outputs) in channels_last memory format: another conv
    # kernel, faster on CPUs with AVX-512 (measured: benchmarks/bench_train_iter.py --variants
    # fl_cl,fl_amp_cl) and on tensor cores; the same model up to float rounding (but torch's CPU
    # channels_last batch-norm backward is ~1 % off at one thread: warned with trainable BN).
    _C.MODEL.FOCAL.CHANNELS_LAST = False

    # Online hard example mining (Table 1d): CE on the B highest-loss anchors after NMS.
    _C.MODEL.FOCAL.OHEM = CN()
    _C.MODEL.FOCAL.OHEM.ENABLED = False
    _C.MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE = 128
    _C.MODEL.FOCAL.OHEM.NMS_THRESH = 0.5
    # -1 = no ratio (original OHEM); 0.25 = "OHEM 1:3" (at most 1 positive per 3 negatives).
    _C.MODEL.FOCAL.OHEM.POSITIVE_FRACTION = -1.0
    # NMS sees at most this many highest-loss anchors per image (exact within the cap; 0 = no
    # cap, exact but slow on ~100k anchors). See focal_plugin.modeling.ohem.
    _C.MODEL.FOCAL.OHEM.PRE_NMS_TOPK = DEFAULT_PRE_NMS_TOPK

    # The static-shape training step (focal_plugin.modeling.static_shapes): images padded to the
    # smallest of IMAGE_SIZES ([H, W] pixels, multiples of the backbone's size divisibility) that
    # holds the batch, ground truth padded to MAX_GT boxes per image, anchors labelled by masks,
    # the loss statistics read once per STATS_PERIOD steps, fused SGD with a tensor learning
    # rate: a step with fixed shapes and no host sync, what capturing it as a CUDA graph needs.
    # A batch that does not fit runs eagerly (counted). Not with OHEM (data-dependent sizes).
    _C.MODEL.FOCAL.STATIC_SHAPES = CN()
    _C.MODEL.FOCAL.STATIC_SHAPES.ENABLED = False
    _C.MODEL.FOCAL.STATIC_SHAPES.IMAGE_SIZES = [[1344, 1344]]  # detectron2's MAX_SIZE_TRAIN 1333, /32
    _C.MODEL.FOCAL.STATIC_SHAPES.MAX_GT = 100
    _C.MODEL.FOCAL.STATIC_SHAPES.STATS_PERIOD = 20  # detectron2's log period

    # COCO evaluation backend of Trainer.build_evaluator (a key detectron2 does not have; only
    # added where absent): "faster_coco_eval" (the faster-coco-eval package, ~7x pycocotools'
    # speed, same AP), "pycocotools" (detectron2's own path), or "auto" = the first when installed.
    # Checked once, in engine.setup_cfg (focal_plugin.evaluation.resolve_eval_backend).
    if "COCO_EVAL_BACKEND" not in _C.TEST:
        _C.TEST.COCO_EVAL_BACKEND = "auto"
    # The autocast dtype of detectron2's SOLVER.AMP.ENABLED (a key detectron2 v0.6 does not have;
    # upstream's AMPTrainer takes it as `precision`): "auto" = bfloat16 on the CPU, float16 on
    # CUDA; "bfloat16"; "float16" (CUDA only). Losses stay float32. See focal_plugin.amp.
    if "PRECISION" not in _C.SOLVER.AMP:
        _C.SOLVER.AMP.PRECISION = "auto"
    # Inference under autocast (a key detectron2 does not have): backbone and head in
    # TEST.AMP.PRECISION (as SOLVER.AMP.PRECISION: "auto" = bfloat16 on the CPU, float16 on CUDA),
    # scores, box decoding and NMS in float32. Read by FocalRetinaNet's forward at inference (so by
    # evaluation, tools/predict.py and detectron2's DefaultPredictor alike). See focal_plugin.amp.
    if "AMP" not in _C.TEST:
        _C.TEST.AMP = CN({"ENABLED": False, "PRECISION": "auto"})
    # MiB of frozen bottom-up features kept per process, so that an input seen before (the same
    # image and flip) is not recomputed: exactly the same tensors, a cheaper step when the whole
    # bottom-up network is frozen (FREEZE_AT covering every stage, FrozenBN); 0 = off. Read by
    # FocalRetinaNet only. See focal_plugin.modeling.feature_cache.
    if "FEATURE_CACHE_MB" not in _C.MODEL.BACKBONE:
        _C.MODEL.BACKBONE.FEATURE_CACHE_MB = 0
    return cfg


def get_focal_cfg() -> CN:
    """detectron2's default config plus ``MODEL.FOCAL`` (a fresh copy)."""
    from detectron2.config import get_cfg

    return add_focal_config(get_cfg())
