"""The pre-training task: crops of the source scenes labelled with their object's class (or "no
object"), and a ResNet classifier trained on them with softmax cross-entropy, like ImageNet."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from focal_plugin.pretrain.recipe import KEY_PREFIX, PretrainRecipe, build_resnet, source_images
from focal_plugin.processes import cpu_name

logger = logging.getLogger(__name__)


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

    root, coco = source_images(recipe)
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


def build_classifier(recipe: PretrainRecipe, num_outputs: int):
    """detectron2's ResNet (BN, nothing frozen, res5 out) + global average pool + linear."""
    import torch

    resnet = build_resnet(recipe, "BN", ["res5"])

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.resnet = resnet
            self.fc = torch.nn.Linear(resnet.output_shape()["res5"].channels, num_outputs)

        def forward(self, x):
            f = self.resnet(x)["res5"]
            return self.fc(f.mean(dim=(2, 3)))

    return Classifier()


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
    batch = _batcher(recipe, crops, labels)
    model = build_classifier(recipe, num_classes + 1)
    history = _fit(recipe, model, batch, train_idx, log_period, start)
    state = {KEY_PREFIX + k: v.detach().clone() for k, v in model.resnet.state_dict().items()}
    report = {
        "recipe": dataclasses.asdict(recipe), "fingerprint": recipe.fingerprint(),
        "num_crops": int(n), "num_train_crops": int(len(train_idx)), "num_val_crops": int(n_val),
        "num_labels": num_classes + 1, "val_accuracy": _correct(model, batch, val_idx) / max(n_val, 1),
        "history": history, "wall_time_s": time.perf_counter() - start,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        # the kernels' instruction set: another one rounds differently and, training being
        # chaotic, gives another backbone (the weights' checksum is what identifies it)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_name(),  # the model too: one capability rounds differently on AMD and Intel
    }
    return state, report


def _batcher(recipe: PretrainRecipe, crops: np.ndarray, labels: np.ndarray) -> Callable:
    """``batch(idx, flips=None)`` -> (normalized float (B, 3, S, S) images, int64 (B,) labels) of the
    crops ``idx``, those with ``flips`` True mirrored horizontally."""
    import torch

    mean = torch.tensor(recipe.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.pixel_std).view(1, 3, 1, 1)

    def batch(idx: np.ndarray, flips: Optional[np.ndarray] = None):
        x = crops[idx]
        if flips is not None:
            x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
        return (x - mean) / std, torch.from_numpy(labels[idx])

    return batch


def _optimizer(recipe: PretrainRecipe, model):
    """SGD with momentum; weight decay on the weights, none on biases and BN parameters (1-D)."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim == 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=recipe.base_lr, momentum=recipe.momentum)


def _fit(recipe: PretrainRecipe, model, batch: Callable, train_idx: np.ndarray, log_period: int,
         start: float) -> List[Dict[str, float]]:
    """``recipe.iterations`` SGD steps of softmax CE on reshuffled epochs of ``train_idx`` with random
    flips (seed ``recipe.seed + 2``); returns the logged history. ``FloatingPointError`` on a
    non-finite loss."""
    import torch

    opt = _optimizer(recipe, model)
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
    return history


def _correct(model, batch: Callable, val_idx: np.ndarray) -> int:
    """How many of the crops ``val_idx`` the model classifies correctly (eval mode, batches of 256)."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(val_idx), 256):
            x, y = batch(val_idx[i:i + 256])
            correct += int((model(x).argmax(1) == y).sum())
    return correct


__all__ = ["build_classifier", "build_crops", "train_classifier"]
