"""Training and evaluation, callable from code and from ``train_net.py``; results as plain dicts.

``setup_cfg`` → ``train(cfg)`` / ``evaluate(cfg)``. Everything else is detectron2's engine:
``DefaultTrainer`` (hooks, checkpoints, writers, ``SOLVER.REFERENCE_WORLD_SIZE`` rescaling) and
``COCOEvaluator``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import _test_loader_from_config, _train_loader_from_config
from detectron2.data.common import DatasetFromList
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from focal_plugin import compat
from focal_plugin.amp import amp_dtype, use_mixed_precision
from focal_plugin.checkpoint import SafeCheckpointer, load_for_inference, weights_record
from focal_plugin.config import get_focal_cfg
from focal_plugin.evaluation import FocalCOCOEvaluator, resolve_eval_backend
from focal_plugin.io import read_json, write_json_atomic
from focal_plugin.modeling.config_keys import cfg_value
from focal_plugin.modeling.static_shapes import capturable_sgd
from focal_plugin.modeling.validate import check_focal_config
from focal_plugin.unread_keys import check_read, written_keys

logger = logging.getLogger("focal_plugin")

RESULTS_FILE = "results.json"


def setup_cfg(config_file: Optional[str] = None, opts: Sequence[str] = (), freeze: bool = True) -> CfgNode:
    """Load a YAML config and ``KEY VALUE`` overrides onto the focal defaults.

    Errors name the offending file or key; ``check_config`` refuses what cannot take effect,
    ``MODEL.FOCAL`` values included (``modeling.validate.check_focal_config``).
    """
    cfg = get_focal_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except Exception as e:  # yacs' messages do not say which file
            raise ValueError(f"cannot merge config file {config_file}: {e}") from e
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd list: {list(opts)}")
        for key in opts[0::2]:  # yacs refuses an unknown key with a bare AssertionError
            if not cfg.key_is_deprecated(key) and not has_key(cfg, key):
                raise unknown_key(cfg, key)
        cfg.merge_from_list(list(opts))
    _seed_weights(cfg)
    check_config(cfg, written_keys(opts))
    if freeze:
        cfg.freeze()
    return cfg


#: In ``MODEL.WEIGHTS``, replaced by the run's ``SEED``: ``focal-pretrained://proto-r18@{SEED}`` is
#: the backbone pre-trained with the run's seed, so seeds sample the backbone's variance too.
SEED_PLACEHOLDER = "{SEED}"


def _seed_weights(cfg: CfgNode) -> None:
    if SEED_PLACEHOLDER not in cfg.MODEL.WEIGHTS:
        return
    if cfg.SEED < 0:
        raise ValueError(f"cfg.MODEL.WEIGHTS = {cfg.MODEL.WEIGHTS!r} names the run's seed, but cfg.SEED = "
                         f"{cfg.SEED} (random): set SEED to an integer >= 0")
    cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS.replace(SEED_PLACEHOLDER, str(cfg.SEED))


def has_key(cfg: CfgNode, key: str) -> bool:
    """Whether ``key`` (dotted, e.g. ``MODEL.FOCAL.GAMMA``) is a leaf or node of ``cfg``."""
    node: Any = cfg
    for part in str(key).split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def unknown_key(cfg: CfgNode, key: str) -> ValueError:
    """The error for a key ``cfg`` lacks, naming the closest existing key."""
    import difflib

    def leaves(node: CfgNode, prefix: str = "") -> List[str]:
        out: List[str] = []
        for k, v in node.items():
            out += leaves(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"]
        return out

    close = difflib.get_close_matches(str(key).upper(), leaves(cfg), n=1)
    hint = f"; did you mean cfg.{close[0]}?" if close else ""
    return ValueError(f"cfg.{key} does not exist (config override){hint}")


def check_config(cfg: CfgNode, written: Iterable[str] = ()) -> None:
    """Settings that cannot take effect are refused (``ValueError`` naming the key), when the
    config is set up and again when a run starts from a config built in Python: ``MODEL.FOCAL``
    values the model cannot use or would not read, keys the meta-architecture does not read
    (:mod:`focal_plugin.unread_keys`; ``written``: the keys given on the command line),
    evaluation settings we cannot honour."""
    check_focal_config(cfg)
    check_read(cfg, written)
    amp_dtype(cfg)
    amp_dtype(cfg, "TEST")
    _check_feature_cache(cfg)
    try:
        resolve_eval_backend(cfg.TEST.COCO_EVAL_BACKEND)
    except ValueError as e:
        raise ValueError(f"cfg.TEST.COCO_EVAL_BACKEND = {cfg.TEST.COCO_EVAL_BACKEND!r}: {e}") from e
    if cfg.TEST.AUG.ENABLED:
        raise ValueError(
            "cfg.TEST.AUG.ENABLED = True: test-time augmentation is not implemented for dense "
            "detectors here (detectron2's own TTA supports GeneralizedRCNN only); set it to False"
        )


def _check_feature_cache(cfg: CfgNode) -> None:
    """``MODEL.BACKBONE.FEATURE_CACHE_MB``: a number >= 0, read by FocalRetinaNet only (whether the
    bottom-up network is really frozen is checked on the built model)."""
    mb = cfg.MODEL.BACKBONE.FEATURE_CACHE_MB
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb >= 0:
        raise ValueError(f"cfg.MODEL.BACKBONE.FEATURE_CACHE_MB = {mb!r}: expected MiB >= 0 (0 = off)")
    if mb and cfg.MODEL.META_ARCHITECTURE != "FocalRetinaNet":
        raise ValueError(f"cfg.MODEL.BACKBONE.FEATURE_CACHE_MB = {mb!r} has no effect on "
                         f"{cfg.MODEL.META_ARCHITECTURE}: only FocalRetinaNet reads it; set it to 0")


def _dataset_num_classes(name: str) -> Optional[int]:
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes", None) is None and name in DatasetCatalog.list():
        DatasetCatalog.get(name)  # detectron2 fills thing_classes of COCO files only when loading
    classes = metadata.get("thing_classes", None)
    return len(classes) if classes is not None else None


def check_datasets(cfg: CfgNode) -> None:
    """Before any expensive stage: every dataset's class count must match
    ``MODEL.RETINANET.NUM_CLASSES``, whatever was loaded before (datasets whose classes are known
    only after loading are loaded), and every image of the test sets must exist (evaluation
    would otherwise fail after the whole training)."""
    key = "MODEL.ROI_HEADS.NUM_CLASSES" if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" else \
        "MODEL.RETINANET.NUM_CLASSES"  # the key the meta-architecture reads
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        n = _dataset_num_classes(name)
        if n is not None and n != cfg_value(cfg, key):
            raise ValueError(f"dataset '{name}' has {n} classes but cfg.{key} = {cfg_value(cfg, key)}; "
                             f"set {key} {n}")
    for name in cfg.DATASETS.TEST:
        if name not in DatasetCatalog.list():
            continue  # detectron2 names the unregistered dataset itself
        missing = [d["file_name"] for d in DatasetCatalog.get(name) if not os.path.isfile(d["file_name"])]
        if missing:
            raise FileNotFoundError(
                f"test dataset '{name}': {len(missing)} image file(s) missing, e.g. {missing[:3]}"
            )


#: detectron2 norms (``get_norm`` names) that normalize with batch statistics while training, and
#: whether they pool them over all workers (the synchronized ones) or use one worker's images
_BATCH_STAT_NORMS = {"BN": False, "SyncBN": True, "nnSyncBN": True, "naiveSyncBN": True,
                     "naiveSyncBN_N": True}
#: the smallest map each normalized part sees, as a stride: the head's P7, the FPN's and the
#: backbone's res5
_NORM_STRIDES = (("MODEL.RETINANET.NORM", 128), ("MODEL.FPN.NORM", 32), ("MODEL.RESNETS.NORM", 32))


def check_batch_norm_batch(cfg: CfgNode, world_size: int) -> None:
    """Refuse, before anything is built, a batch-statistics norm that would see a single value per
    channel (torch: "Expected more than 1 value per channel when training"): the values a norm
    sees are the images it pools over (one worker's; all workers' for a synchronized norm) times
    the cells of its smallest map (side ``INPUT.MIN_SIZE_TRAIN`` / stride; one cell when the
    size is not fixed). ``ValueError`` names the key, what it would see and what works here."""
    world = max(world_size, 1)
    per_worker = cfg.SOLVER.IMS_PER_BATCH // world
    sides = [s for s in cfg.INPUT.MIN_SIZE_TRAIN if s > 0]
    for key, stride in _NORM_STRIDES:
        norm, frozen = cfg_value(cfg, key), key == "MODEL.RESNETS.NORM" and cfg.MODEL.BACKBONE.FREEZE_AT >= 5
        if norm not in _BATCH_STAT_NORMS or frozen:  # a frozen stage's BN is FrozenBN: no batch statistics
            continue
        images = per_worker * (world if _BATCH_STAT_NORMS[norm] else 1)
        cells = math.ceil(min(sides) / stride) ** 2 if sides else 1
        if images * cells >= 2:
            continue
        pooled = f"all {world} worker(s)" if _BATCH_STAT_NORMS[norm] else "one worker"
        advice = "at least 2 images per worker, or NORM 'GN' (no batch statistics)"
        if world == 1 and _BATCH_STAT_NORMS[norm]:
            advice += f"; {norm} in one process pools nothing more than BN"
        elif not _BATCH_STAT_NORMS[norm] and world > 1:
            advice += ", or 'SyncBN' (statistics over every worker's images)"
        raise ValueError(
            f"cfg.{key} = {norm!r} normalizes over the images of {pooled}: cfg.SOLVER.IMS_PER_BATCH = "
            f"{cfg.SOLVER.IMS_PER_BATCH} over {world} worker(s) gives it {images} image(s) x {cells} "
            f"cell(s) of its smallest map (stride {stride}) = 1 value per channel, which cannot train: "
            f"use {advice}")


def log_inference_settings(cfg: CfgNode) -> None:
    r = cfg.MODEL.RETINANET
    logger.info(
        "Inference: score_thresh=%g, topk_candidates/level=%d, nms_thresh=%g, detections/image=%d",
        r.SCORE_THRESH_TEST, r.TOPK_CANDIDATES_TEST, r.NMS_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE,
    )


class SkipUnreadableImages:
    """Training mapper: an image that cannot be read (truncated or not an image; PIL raises
    ``OSError``) is skipped with a warning naming its file, image id and the count so far, and
    another image of the dataset is drawn in its place. (Not by returning None: v0.6's
    ``MapDataset`` then draws with ``random.sample`` from a set, a TypeError on Python >= 3.11.)"""

    MAX_TRIES = 100

    def __init__(self, mapper: Any, dataset: Sequence[Dict[str, Any]], seed: int = 42):
        import random

        self.mapper, self.dataset, self.skipped = mapper, dataset, 0
        self._rng = random.Random(seed)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Any:
        for _ in range(self.MAX_TRIES):
            try:
                return self.mapper(dataset_dict)
            except OSError as e:
                self.skipped += 1
                logger.warning(
                    "skipped unreadable training image %s (image id %s): %s; %d skipped so far in "
                    "this data-loading process", dataset_dict.get("file_name"),
                    dataset_dict.get("image_id"), e, self.skipped)
                dataset_dict = self._rng.choice(self.dataset)
        raise OSError(f"{self.MAX_TRIES} training images in a row could not be read (the last: "
                      f"{dataset_dict.get('file_name')}); see the warnings above")


class NameUnreadableImages:
    """Test mapper: an image that cannot be read stops evaluation with an ``OSError`` naming its
    file and image id (skipping it would score a different test set)."""

    def __init__(self, mapper: Any):
        self.mapper = mapper

    def __call__(self, dataset_dict: Dict[str, Any]) -> Any:
        try:
            return self.mapper(dataset_dict)
        except OSError as e:
            raise OSError(f"cannot read test image {dataset_dict.get('file_name')} (image id "
                          f"{dataset_dict.get('image_id')}): {e}") from e


def _lr_tensors_to_device(optimizer) -> None:
    # a checkpoint is loaded on the CPU; the static-shape step's tensor lr must sit with the
    # parameters (fused SGD on CUDA would otherwise read it back every step)
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor) and group["params"] and lr.device != group["params"][0].device:
            group["lr"] = lr.to(group["params"][0].device)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation that works without compiled ops, and a log of the
    effective schedule after ``SOLVER.REFERENCE_WORLD_SIZE`` rescaling."""

    def __init__(self, cfg: CfgNode):
        check_batch_norm_batch(cfg, comm.get_world_size())
        check_datasets(cfg)
        # rescales cfg by REFERENCE_WORLD_SIZE, builds model/optimizer/loader, wraps DDP
        with compat.ddp_without_device_ids_on_cpu():
            super().__init__(cfg)
        use_mixed_precision(self, cfg)  # SOLVER.AMP on the CPU too, in SOLVER.AMP.PRECISION

    @classmethod
    def build_optimizer(cls, cfg, model):
        optimizer = super().build_optimizer(cfg, model)
        if cfg.MODEL.FOCAL.STATIC_SHAPES.ENABLED:  # fused SGD, tensor lr: a step without host values
            return capturable_sgd(optimizer)
        return optimizer

    def build_hooks(self):
        # every checkpoint (periodic, final) finite and written atomically; see SafeCheckpointer
        self.checkpointer = SafeCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                             **self.checkpointer.checkpointables)
        return super().build_hooks()

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        self._log_schedule()

    # detectron2 v0.6's DefaultTrainer checkpoints the iteration and the hooks only: a resume then
    # restarts SGD momentum from zero and runs its first iteration at the lr the optimizer was
    # built with (warmup's start). The optimizer state goes into every checkpoint, as in later
    # detectron2 versions (same key, "_trainer"), so a resume continues exactly.
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.setdefault("_trainer", self._trainer.state_dict())
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # TrainerBase's (iteration, hooks), not DefaultTrainer's: later detectron2 versions' one
        # reads state_dict["_trainer"] unconditionally (KeyError for a checkpoint without it)
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
            _lr_tensors_to_device(self.optimizer)
            return
        from detectron2.solver.lr_scheduler import LRMultiplier

        logger.warning("The checkpoint holds no optimizer state (written without it, e.g. by "
                       "detectron2's own trainer): SGD momentum restarts from zero at iteration %d",
                       self.iter + 1)
        if isinstance(self.scheduler, LRMultiplier):  # its lr is a closed form of the iteration
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
                if isinstance(group["lr"], torch.Tensor):  # the static-shape step's, kept in place
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr  # the lr of the next iteration, not warmup's start

    @classmethod
    def build_train_loader(cls, cfg):
        kwargs = _train_loader_from_config(cfg)
        cls._last_train_set_size = len(kwargs["dataset"])
        if isinstance(kwargs["dataset"], list):
            # serialized into one buffer, as detectron2's loader would: the mapper's fallback draws
            # from it, so no list of record dicts stays alive in the trainer and every worker
            kwargs["dataset"] = DatasetFromList(kwargs["dataset"], copy=False, serialize=True)
        kwargs["mapper"] = SkipUnreadableImages(kwargs["mapper"], kwargs["dataset"])
        return build_detection_train_loader(**kwargs)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        kwargs = _test_loader_from_config(cfg, dataset_name)
        kwargs["mapper"] = NameUnreadableImages(kwargs["mapper"])
        return build_detection_test_loader(**kwargs)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # COCOeval_opt needs detectron2's compiled ops; pycocotools' COCOeval computes the same numbers.
        return FocalCOCOEvaluator(
            dataset_name, tasks=("bbox",), output_dir=output_folder,
            use_fast_impl=compat.has_compiled_ops(), backend=cfg.TEST.COCO_EVAL_BACKEND,
        )

    def _log_schedule(self) -> None:
        """The schedule really in effect (after REFERENCE_WORLD_SIZE rescaling and after a resume,
        whose checkpoint restores the scheduler's base lr over SOLVER.BASE_LR)."""
        s = self.cfg.SOLVER
        world = comm.get_world_size()
        size = getattr(type(self), "_last_train_set_size", None)
        epochs = f"{s.MAX_ITER * s.IMS_PER_BATCH / size:.2f}" if size else "?"
        base_lr = self.scheduler.base_lrs[0] if getattr(self.scheduler, "base_lrs", None) else s.BASE_LR
        logger.info(
            "Effective schedule: %d worker(s) x %d image(s) = batch %d, base lr %g, %d iterations "
            "(starting at %d), lr steps %s, warmup %d, weight decay %g, momentum %g; %s training "
            "images = %s epochs (REFERENCE_WORLD_SIZE=%d)",
            world, s.IMS_PER_BATCH // max(world, 1), s.IMS_PER_BATCH, base_lr, s.MAX_ITER,
            self.start_iter, list(s.STEPS), s.WARMUP_ITERS, s.WEIGHT_DECAY, s.MOMENTUM, size, epochs,
            s.REFERENCE_WORLD_SIZE,
        )
        if not math.isclose(base_lr, s.BASE_LR, rel_tol=1e-9):
            logger.warning(
                "Resumed from iteration %d: the checkpoint's scheduler state keeps base lr %g; "
                "SOLVER.BASE_LR = %g is NOT in effect (detectron2 restores the scheduler on "
                "--resume). To train with a new lr, start a new OUTPUT_DIR with MODEL.WEIGHTS set "
                "to the checkpoint.", self.start_iter, base_lr, s.BASE_LR,
            )
        log_inference_settings(self.cfg)


def _flatten_results(results: Dict[str, Any]) -> Dict[str, Any]:
    """COCOEvaluator's OrderedDicts (possibly one per test dataset) as plain, JSON-safe dicts."""
    out: Dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, dict):
            out[key] = _flatten_results(value)
        else:
            v = float(value) if isinstance(value, (int, float)) else value
            out[key] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def _write_results(cfg: CfgNode, payload: Dict[str, Any]) -> None:
    if not comm.is_main_process():
        return
    write_json_atomic(os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE), payload)  # never half-written


def train(cfg: CfgNode, resume: bool = False, hooks: Sequence[Any] = ()) -> Dict[str, Any]:
    """Train ``cfg`` (resuming from ``OUTPUT_DIR``'s last checkpoint if ``resume``), evaluate on
    ``DATASETS.TEST``, and return ``{"metrics": {dataset: {AP, AP50, ...}}, ...}``. ``hooks``:
    extra detectron2 hooks, registered after the trainer's own.

    The same dict is written to ``OUTPUT_DIR/results.json`` by the main process. The run is set
    up as ``train_net.py`` sets it up (:func:`setup_run`): seeded with ``SEED``, logging to
    ``OUTPUT_DIR/log.txt``, the config saved as ``OUTPUT_DIR/config.yaml``.
    """
    setup_run(cfg)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    start_iter = trainer.start_iter
    payload: Dict[str, Any] = {
        "weights": weights_record(cfg.MODEL.WEIGHTS),
        "max_iter": trainer.max_iter,
        "resumed_from_iter": start_iter,
        "output_dir": cfg.OUTPUT_DIR,
        "world_size": comm.get_world_size(),
    }
    try:
        trainer.train()
    except BaseException as e:  # a late failure (e.g. in evaluation) keeps what was computed
        payload.update({"error": f"{type(e).__name__}: {e}", "iterations": trainer.iter - start_iter,
                        "train_wall_time_s": time.perf_counter() - start})
        _write_results(cfg, payload)
        raise
    eval_results = getattr(trainer, "_last_eval_results", None) or {}
    if cfg.TEST.EXPECTED_RESULTS and comm.is_main_process():
        verify_results(cfg, eval_results)
    payload.update({
        "metrics": _flatten_results(_by_dataset(cfg, eval_results)),
        "iterations": trainer.max_iter - start_iter,
        "train_wall_time_s": time.perf_counter() - start,
    })
    _write_results(cfg, payload)
    return payload


def _by_dataset(cfg: CfgNode, results: Dict[str, Any]) -> Dict[str, Any]:
    # DefaultTrainer.test returns the bare task dict when there is a single test dataset.
    if len(cfg.DATASETS.TEST) == 1 and "bbox" in results:
        return {cfg.DATASETS.TEST[0]: results}
    return dict(results)


def evaluate(cfg: CfgNode, weights: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``weights`` (default ``cfg.MODEL.WEIGHTS``) on ``DATASETS.TEST``; plain dict. Set
    up as ``train_net.py --eval-only`` (:func:`setup_run`)."""
    setup_run(cfg, eval_only=True)
    check_datasets(cfg)
    log_inference_settings(cfg)
    model = Trainer.build_model(cfg)
    load_for_inference(model, weights or cfg.MODEL.WEIGHTS, "the config being evaluated")
    start = time.perf_counter()
    results = Trainer.test(cfg, model)
    if cfg.TEST.EXPECTED_RESULTS and comm.is_main_process():
        verify_results(cfg, results)
    payload = {
        "metrics": _flatten_results(_by_dataset(cfg, results)),
        "weights": weights or cfg.MODEL.WEIGHTS,
        "eval_wall_time_s": time.perf_counter() - start,
        "output_dir": cfg.OUTPUT_DIR,
    }
    _write_results(cfg, payload)
    return payload


__all__: List[str] = ["Trainer", "setup_cfg", "setup_run", "get_focal_cfg", "train", "evaluate"]


def setup_run(cfg: CfgNode, eval_only: bool = False) -> None:
    """What detectron2's ``default_setup`` does for ``train_net.py``, for every entry point: seed
    every RNG with ``SEED`` (+ the worker's rank; a random seed when negative), log to
    ``OUTPUT_DIR/log.txt`` (ours and detectron2's loggers), save the config as
    ``OUTPUT_DIR/config.yaml``, log the environment. Idempotent: running it again reseeds, so a
    run started from Python after other work trains the same bits as the same command line."""
    from detectron2.engine import default_setup
    from detectron2.utils.logger import setup_logger

    check_config(cfg)  # a config built in Python has not met setup_cfg's check
    default_setup(cfg, argparse.Namespace(config_file="", opts=[], eval_only=eval_only))
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="focal_plugin")


def main(args: argparse.Namespace) -> Dict[str, Any]:
    """``train_net.py``'s main (one process of a run): ``args`` as detectron2's
    ``default_argument_parser`` gives them (``config_file``, ``opts``, ``resume``, ``eval_only``)."""
    cfg = setup_cfg(args.config_file, args.opts)
    logger.info("Command line arguments: %s", args)
    if args.eval_only:
        return evaluate(cfg)
    return train(cfg, resume=args.resume)


def train_from_files(config_file: str, opts: Sequence[str], resume: bool = False,
                     num_gpus: int = 1) -> Dict[str, Any]:
    """``python train_net.py --config-file config_file [--resume] --num-gpus N opts`` as a call:
    :func:`train`'s result dict. One process directly; several through ``compat.launch``
    (detectron2's on CUDA, gloo processes on CPU), the result then read back from ``results.json``
    in ``OUTPUT_DIR`` (``RuntimeError`` when the workers wrote none)."""
    args = argparse.Namespace(config_file=config_file, opts=list(opts), resume=resume, eval_only=False)
    if num_gpus <= 1:
        return main(args)
    compat.launch(main, num_gpus, dist_url="auto", args=(args,))
    cfg = setup_cfg(config_file, list(opts))
    result = read_results(cfg)
    if result is None:
        raise RuntimeError(f"training on {num_gpus} workers wrote no {RESULTS_FILE} in {cfg.OUTPUT_DIR}")
    return result


def read_results(cfg: CfgNode) -> Optional[Dict[str, Any]]:
    """``OUTPUT_DIR``'s ``results.json`` (None when absent) as :func:`train` returned it: the file
    is written with sorted keys, so its per-dataset metrics are put back in ``DATASETS.TEST``'s
    order (the first test set is the one a caller reads first, in one process or many)."""
    result = read_json(os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE))
    if result is not None and isinstance(result.get("metrics"), dict):
        metrics = result["metrics"]
        first = [d for d in cfg.DATASETS.TEST if d in metrics]
        result["metrics"] = {d: metrics[d] for d in first + [d for d in metrics if d not in first]}
    return result


def divergence_iteration(exc: BaseException) -> Optional[int]:
    """The iteration of a non-finite-loss error (-1 if not stated), or None for other errors.

    Recognises the model's ``FloatingPointError("... at iteration N ...")``, detectron2's
    "Loss became infinite or NaN at iteration=N!", also when re-raised from a spawned worker.
    """
    text = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, FloatingPointError) and "FloatingPointError" not in text:
        return None
    m = re.search(r"iteration\s*=?\s*(\d+)", text)
    return int(m.group(1)) if m else -1
