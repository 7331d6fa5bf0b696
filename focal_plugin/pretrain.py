"""Backbone pre-training on a synthetic *classification* task: the mini protocol's "ImageNet".

The paper starts every RetinaNet from an ImageNet-pre-trained ResNet. The mini protocol
(``configs/mini/protocol``) does the same at CPU scale: a ResNet is trained once, deterministically,
to classify crops of ``dense_shapes`` scenes (80 object classes + 1 "no object" class), and cached
like a model-zoo file. Its recipe is :data:`RECIPES` (in the repo), its file name carries the
recipe's fingerprint, and detectron2 configs refer to it as ``focal-pretrained://<recipe name>``
(``MODEL.WEIGHTS``), resolved by a ``PathManager`` handler registered on import.

What the pre-training is and is not:
- Source images: ``focal_plugin.protocol.PRETRAIN_SOURCE``: the protocol's generator with another
  seed, so not one pixel of the detection train/val images is seen.
- Task: softmax cross-entropy over 81 crop labels (a crop centred on an annotated object, with
  context, is labelled with its class; a random crop that overlaps no object at IoU >= 0.1 is
  "no object"), like ImageNet classification. None of the detection losses compared in the tables
  (sigmoid CE, alpha-CE, FL, FL*, OHEM) is used, and no box is regressed.
- Output: the ResNet's weights (BatchNorm statistics included, loaded into FrozenBN by detectron2)
  under ``backbone.bottom_up.*``: ``DetectionCheckpointer`` loads them by name into
  ``build_retinanet_resnet_fpn_backbone``; FPN and heads stay at their paper initialization.

Build: ``python tools/pretrain_backbone.py [--recipe NAME]`` (idempotent; ``--force`` rebuilds).
Cache: ``$FOCAL_PLUGIN_CACHE`` or ``~/.cache/focal_plugin``, in ``pretrained/<name>-<fingerprint>/``
(``model_final.pth`` and ``RECIPE.json`` with the recipe, accuracy and wall time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

PREFIX = "focal-pretrained://"
#: Bumped when the training code changes what a recipe produces (part of the fingerprint).
PRETRAIN_VERSION = 1
#: Key prefix of the saved weights: the ResNet inside detectron2's FPN backbone.
KEY_PREFIX = "backbone.bottom_up."


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pre-trained weights (all of it is in the fingerprint)."""

    name: str
    source: str = "proto-pretrain"  # a key of SOURCES: the SyntheticConfig of the source images
    depth: int = 18  # detectron2 ResNet depth (18 or 34: BasicBlock, 64 stem channels)
    crop_size: int = 48  # crops are resized to crop_size x crop_size
    context: float = 1.5  # object crops: square of side context * max(w, h), centred on the box
    background_per_image: int = 1  # "no object" crops per source image (label = num_classes)
    val_fraction: float = 0.1  # held-out crops for the reported accuracy (not used in training)
    iterations: int = 1000
    batch_size: int = 32
    base_lr: float = 0.1  # SGD, cosine decay to 0 after a linear warm-up
    warmup_iters: int = 50
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    # image normalization (detectron2's defaults: BGR, MSRA-style mean, std 1)
    pixel_mean: Tuple[float, float, float] = (103.530, 116.280, 123.675)
    pixel_std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Export: res3/res4/res5 outputs rescaled to this RMS on the source images by an exact
    # reparametrization of the FrozenBN layers (0 = the raw classifier backbone); see rescale_stages.
    feature_rms: float = 1.0
    rms_images: int = 64  # source images (native size) over which the RMS is measured

    def fingerprint(self) -> str:
        """Of the *training* fields (the cache folder); the export fields name the file in it."""
        params = dataclasses.asdict(self)
        for key in ("name", "feature_rms", "rms_images"):
            params.pop(key)
        source = SOURCES[self.source]() if self.source in SOURCES else self.source
        blob = json.dumps({"version": PRETRAIN_VERSION, "params": params,
                           "source": source.fingerprint() if hasattr(source, "fingerprint") else source},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _protocol_source():
    from focal_plugin.protocol import PRETRAIN_SOURCE

    return PRETRAIN_SOURCE


#: Source datasets by name (lazy, so this module imports nothing heavy).
SOURCES = {"proto-pretrain": _protocol_source}

#: The recipes in use. ``proto-r18``: the mini protocol's backbone.
RECIPES: Dict[str, PretrainRecipe] = {
    "proto-r18": PretrainRecipe(name="proto-r18"),
}


# --------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """``$FOCAL_PLUGIN_CACHE`` or ``~/.cache/focal_plugin``."""
    env = os.environ.get("FOCAL_PLUGIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "focal_plugin"


def weights_dir(recipe: PretrainRecipe) -> Path:
    return cache_root() / "pretrained" / f"{recipe.name}-{recipe.fingerprint()}"


def raw_weights_path(recipe: PretrainRecipe) -> Path:
    """The classifier's backbone as trained (no export reparametrization)."""
    return weights_dir(recipe) / "backbone_raw.pth"


def weights_path(recipe: PretrainRecipe) -> Path:
    """The file ``focal-pretrained://<recipe>`` resolves to."""
    if not recipe.feature_rms:
        return raw_weights_path(recipe)
    return weights_dir(recipe) / f"model_final_rms{recipe.feature_rms:g}_n{recipe.rms_images}.pth"


def get_recipe(name_or_recipe) -> PretrainRecipe:
    if isinstance(name_or_recipe, PretrainRecipe):
        return name_or_recipe
    if name_or_recipe not in RECIPES:
        raise KeyError(f"unknown pre-training recipe {name_or_recipe!r}; known: {sorted(RECIPES)}")
    return RECIPES[name_or_recipe]


def resolve(uri: str) -> str:
    """Local path of ``focal-pretrained://<recipe>``; a clear error naming the build command when
    the weights have not been built yet."""
    name = uri[len(PREFIX):] if uri.startswith(PREFIX) else uri
    path = weights_path(get_recipe(name))
    if not path.is_file():
        raise FileNotFoundError(
            f"{uri}: pre-trained backbone not built yet (expected {path}). Build it once with "
            f"`python tools/pretrain_backbone.py --recipe {name}` (deterministic; see "
            "focal_plugin/pretrain.py)")
    return str(path)


def register_path_handler() -> None:
    """Let detectron2 (``PathManager``) open ``focal-pretrained://<recipe>`` (idempotent)."""
    from detectron2.utils.file_io import PathManager
    from iopath.common.file_io import PathHandler

    class _PretrainedHandler(PathHandler):
        def _get_supported_prefixes(self) -> List[str]:
            return [PREFIX]

        def _get_local_path(self, path: str, **kwargs: Any) -> str:
            return resolve(path)

        def _open(self, path: str, mode: str = "r", **kwargs: Any):
            return PathManager.open(resolve(path), mode, **kwargs)

        def _isfile(self, path: str, **kwargs: Any) -> bool:
            return Path(resolve(path)).is_file()

    if PREFIX not in getattr(PathManager, "_path_handlers", {}):
        PathManager.register_handler(_PretrainedHandler())


# --------------------------------------------------------------------------- data
def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _square_crop(img: np.ndarray, cx: float, cy: float, side: float, out: int) -> np.ndarray:
    """A ``side``-pixel square centred on (cx, cy), zero-padded at the borders, resized to ``out``."""
    import cv2

    s = max(int(round(side)), 2)
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    h, w = img.shape[:2]
    canvas = np.zeros((s, s, 3), dtype=img.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return cv2.resize(canvas, (out, out), interpolation=cv2.INTER_AREA if s > out else cv2.INTER_LINEAR)


def build_crops(recipe: PretrainRecipe) -> Tuple[np.ndarray, np.ndarray, int]:
    """(crops uint8 N x S x S x 3 BGR, labels int64 N, num_classes): deterministic in the recipe."""
    import cv2

    from focal_plugin.data import prepare_dataset

    source = SOURCES[recipe.source]()
    root = prepare_dataset(source, progress=False)
    with open(root / "annotations" / "instances_train.json") as f:
        coco = json.load(f)
    num_classes = len(coco["categories"])
    cat_index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    anns: Dict[int, List[dict]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng(recipe.seed)
    crops, labels = [], []
    for im in sorted(coco["images"], key=lambda im: im["id"]):
        img = cv2.imread(str(root / "train" / im["file_name"]), cv2.IMREAD_COLOR)
        if img is None:
            raise RuntimeError(f"cannot read {root / 'train' / im['file_name']}")
        h, w = img.shape[:2]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns.get(im["id"], [])]).reshape(-1, 4)
        for a, b in zip(anns.get(im["id"], []), boxes):
            side = recipe.context * max(b[2] - b[0], b[3] - b[1])
            crops.append(_square_crop(img, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, side, recipe.crop_size))
            labels.append(cat_index[a["category_id"]])
        for _ in range(recipe.background_per_image):
            for _try in range(20):
                side = float(np.exp(rng.uniform(np.log(16), np.log(min(h, w)))))
                cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
                box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
                if (_iou(box, boxes) < 0.1).all():
                    crops.append(_square_crop(img, cx, cy, side, recipe.crop_size))
                    labels.append(num_classes)
                    break
    return np.stack(crops), np.asarray(labels, dtype=np.int64), num_classes


# --------------------------------------------------------------------------- model
def build_classifier(recipe: PretrainRecipe, num_outputs: int):
    """detectron2's ResNet (BN, nothing frozen, res5 out) + global average pool + linear."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = recipe.depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.resnet = resnet
            self.fc = torch.nn.Linear(resnet.output_shape()["res5"].channels, num_outputs)

        def forward(self, x):
            f = self.resnet(x)["res5"]
            return self.fc(f.mean(dim=(2, 3)))

    return Classifier()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lr(recipe: PretrainRecipe, it: int) -> float:
    if it < recipe.warmup_iters:
        return recipe.base_lr * (it + 1) / recipe.warmup_iters
    t = (it - recipe.warmup_iters) / max(recipe.iterations - recipe.warmup_iters, 1)
    return 0.5 * recipe.base_lr * (1 + np.cos(np.pi * t))


def train_classifier(recipe: PretrainRecipe, log_period: int = 50) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train the recipe's classifier; returns (detectron2 state dict of the ResNet, report).

    Deterministic on CPU for a given torch build: seeded init, seeded data order and flips, and
    one intra-op thread (set here, restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions depend on the thread count
    try:
        return _train_classifier(recipe, log_period)
    finally:
        torch.set_num_threads(threads)


def _train_classifier(recipe: PretrainRecipe, log_period: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    import torch

    torch.manual_seed(recipe.seed)
    start = time.perf_counter()
    crops, labels, num_classes = build_crops(recipe)
    n = len(labels)
    order = np.random.default_rng(recipe.seed + 1).permutation(n)
    n_val = int(round(recipe.val_fraction * n))
    val_idx, train_idx = order[:n_val], order[n_val:]
    mean = torch.tensor(recipe.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.pixel_std).view(1, 3, 1, 1)

    def batch(idx: np.ndarray, flips: Optional[np.ndarray] = None):
        x = crops[idx]
        if flips is not None:
            x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
        return (x - mean) / std, torch.from_numpy(labels[idx])

    model = build_classifier(recipe, num_classes + 1)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim == 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=recipe.base_lr, momentum=recipe.momentum)
    rng = np.random.default_rng(recipe.seed + 2)
    perm, pos = rng.permutation(train_idx), 0
    history = []
    model.train()
    for it in range(recipe.iterations):
        if pos + recipe.batch_size > len(perm):
            perm, pos = rng.permutation(train_idx), 0
        idx = perm[pos:pos + recipe.batch_size]
        pos += recipe.batch_size
        x, y = batch(idx, rng.random(len(idx)) < 0.5)
        for g in opt.param_groups:
            g["lr"] = _lr(recipe, it)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pre-training loss is {loss.item()} at iteration {it}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % log_period == 0 or it == recipe.iterations - 1:
            history.append({"iter": it, "loss": loss.item(), "lr": _lr(recipe, it)})
            logger.info("pretrain %s: iter %d/%d loss %.4f lr %.4f (%.0f s)", recipe.name, it,
                        recipe.iterations, loss.item(), _lr(recipe, it), time.perf_counter() - start)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, n_val, 256):
            x, y = batch(val_idx[i:i + 256])
            correct += int((model(x).argmax(1) == y).sum())
    state = {KEY_PREFIX + k: v.detach().clone() for k, v in model.resnet.state_dict().items()}
    report = {
        "recipe": dataclasses.asdict(recipe), "fingerprint": recipe.fingerprint(),
        "num_crops": int(n), "num_train_crops": int(len(train_idx)), "num_val_crops": int(n_val),
        "num_labels": num_classes + 1, "val_accuracy": correct / max(n_val, 1),
        "history": history, "wall_time_s": time.perf_counter() - start,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    return state, report


STAGES = ("res3", "res4", "res5")


def _frozen_resnet(recipe: PretrainRecipe, state: Dict[str, Any]):
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = recipe.depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    own = {k[len(KEY_PREFIX):]: v for k, v in state.items() if k.startswith(KEY_PREFIX)}
    own = {k: v for k, v in own.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = resnet.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}")
    return resnet.eval().requires_grad_(False), torch


def stage_rms(recipe: PretrainRecipe, state: Dict[str, Any]) -> Dict[str, float]:
    """RMS of the res3/res4/res5 outputs (FrozenBN, as detection uses them) over the first
    ``recipe.rms_images`` source images at native size."""
    import cv2

    from focal_plugin.data import prepare_dataset

    resnet, torch = _frozen_resnet(recipe, state)
    root = prepare_dataset(SOURCES[recipe.source](), progress=False)
    with open(root / "annotations" / "instances_train.json") as f:
        images = sorted(json.load(f)["images"], key=lambda im: im["id"])[: recipe.rms_images]
    mean = torch.tensor(recipe.pixel_mean).view(3, 1, 1)
    std = torch.tensor(recipe.pixel_std).view(3, 1, 1)
    sums = {k: 0.0 for k in STAGES}
    counts = {k: 0 for k in STAGES}
    with torch.no_grad():
        for im in images:
            img = cv2.imread(str(root / "train" / im["file_name"]), cv2.IMREAD_COLOR)
            x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() - mean) / std
            out = resnet(x[None])
            for k in STAGES:
                sums[k] += float((out[k].double() ** 2).sum())
                counts[k] += out[k].numel()
    return {k: (sums[k] / counts[k]) ** 0.5 for k in STAGES}


def rescale_stages(state: Dict[str, Any], scales: Dict[str, float]) -> Dict[str, Any]:
    """Multiply the outputs of stages res3/res4/res5 by ``scales[stage]``, exactly, for FrozenBN.

    In every block of a stage scaled by s the last norm's affine (``conv2.norm`` weight and bias)
    and the projection shortcut's norm are multiplied by s; every norm that reads a scaled input
    (a block's ``conv1.norm`` and a projection ``shortcut.norm``) gets running_mean x s_in and
    running_var x s_in^2, so it normalizes to what it did before. ReLU is positively homogeneous,
    so each stage's output is its old output times its own s (up to BN's eps: exact while
    s_in^2 x running_var >> eps; the proto-r18 export lands within 0.3 % of its target RMS).
    """
    out = {k: v.clone() for k, v in state.items()}
    p = KEY_PREFIX
    blocks = sorted({k[len(p):].split(".conv")[0].split(".shortcut")[0] for k in state
                     if k.startswith(p + "res")})
    prev = 1.0  # scale of the stage input (res2 is not rescaled)
    for stage in ["res2", *STAGES]:
        s = 1.0 if stage == "res2" else float(scales[stage])
        for b in sorted((b for b in blocks if b.startswith(stage + ".")), key=lambda b: int(b.split(".")[1])):
            s_in = prev if b.endswith(".0") else s
            for norm in (f"{b}.conv1.norm", f"{b}.shortcut.norm"):
                if p + norm + ".running_mean" in out:
                    sc_in = prev if norm.endswith("shortcut.norm") else s_in
                    out[p + norm + ".running_mean"] *= sc_in
                    out[p + norm + ".running_var"] *= sc_in ** 2
            for norm in (f"{b}.conv2.norm", f"{b}.shortcut.norm"):
                if p + norm + ".weight" in out:
                    out[p + norm + ".weight"] *= s
                    out[p + norm + ".bias"] *= s
        prev = s
    return out


def _save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build(recipe="proto-r18", force: bool = False) -> Path:
    """Path of the recipe's weights, training them first if missing (or if ``force``).

    Written atomically (temporary folder renamed into place) under a file lock."""
    import torch

    recipe = get_recipe(recipe)
    final = weights_dir(recipe)
    if weights_path(recipe).is_file() and not force:
        return weights_path(recipe)
    author = "focal_plugin.pretrain " + recipe.name
    with _file_lock(final.parent / f".{final.name}.lock"):
        if weights_path(recipe).is_file() and not force:
            return weights_path(recipe)
        if force or not raw_weights_path(recipe).is_file():
            state, report = train_classifier(recipe)
            tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save({"model": state, "__author__": author}, tmp / raw_weights_path(recipe).name)
            with open(tmp / "RECIPE.json", "w") as f:
                json.dump(report, f, indent=1, sort_keys=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        if recipe.feature_rms:
            raw = torch.load(raw_weights_path(recipe))["model"]
            rms = stage_rms(recipe, raw)
            scales = {k: recipe.feature_rms / v for k, v in rms.items()}
            state = rescale_stages(raw, scales)
            after = stage_rms(recipe, state)
            _save({"model": state, "__author__": author}, weights_path(recipe))
            with open(final / "RECIPE.json") as f:
                report = json.load(f)
            report.setdefault("exports", {})[weights_path(recipe).name] = {
                "feature_rms": recipe.feature_rms, "rms_images": recipe.rms_images,
                "rms_raw": rms, "scales": scales, "rms_exported": after}
            tmp = final / f".tmp-RECIPE-{os.getpid()}.json"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=1, sort_keys=True)
            os.replace(tmp, final / "RECIPE.json")
    return weights_path(recipe)


__all__ = ["PREFIX", "RECIPES", "PretrainRecipe", "build", "build_crops", "build_classifier",
           "cache_root", "get_recipe", "register_path_handler", "resolve", "train_classifier",
           "weights_dir", "weights_path"]

register_path_handler()  # MODEL.WEIGHTS "focal-pretrained://<recipe>" works once the package is imported
