"""The static-shape training step (``MODEL.FOCAL.STATIC_SHAPES``): every tensor of a step has a
shape fixed by the config, and FocalRetinaNet reads nothing back to the host but its statistics,
once every ``STATS_PERIOD`` steps. (detectron2's trainer still does, each step: its metric writer
reads the losses and checks them, its lr hook reads the lr; a captured trainer replaces both.)

What a captured step (one CUDA graph replayed per padded size, as NVIDIA's MLPerf RetinaNet does)
needs, usable and testable eagerly on any device:

- images padded to the smallest of a few fixed sizes (``IMAGE_SIZES``) that holds the batch, so
  the backbone, head and anchors see one of a few shapes; the padding is zeros after
  normalization, as detectron2's own padding to the batch's largest image;
- ground truth padded to ``MAX_GT`` boxes per image (class -1 marks padding) and anchors labelled
  by masks (``fast_ops.label_padded``): no ``nonzero``, boolean indexing or ``.item()``;
- the loss statistics and the finiteness check accumulated on the device (:class:`DeviceStats`)
  and read once per period;
- the optimizer's learning rate a tensor updated in place by the scheduler, with fused SGD
  (``engine.Trainer.build_optimizer``): a step without host values.

A batch that does not fit (an image larger than every size, more than ``MAX_GT`` boxes) runs the
eager step; such batches are counted (``static_shapes_fallbacks`` in the event storage). With
images already of a padded size and at most ``MAX_GT`` boxes the step computes the eager step's
losses and weights (``tests/modeling/test_static_shapes.py``); padding an image further adds
anchors over zeros, labelled background, so it is another (equally valid) loss.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import ImageList


@dataclasses.dataclass(frozen=True)
class StaticShapes:
    """``MODEL.FOCAL.STATIC_SHAPES``: ``image_sizes`` ((H, W) pixels, each a multiple of the
    backbone's size divisibility), ``max_gt`` boxes per image, ``stats_period`` steps between
    reads of the loss statistics."""

    image_sizes: Tuple[Tuple[int, int], ...]
    max_gt: int
    stats_period: int

    def __post_init__(self):  # smallest area first: size_for takes the first that holds a batch
        object.__setattr__(self, "image_sizes", tuple(sorted(
            ((int(h), int(w)) for h, w in self.image_sizes), key=lambda s: (s[0] * s[1], s))))

    @classmethod
    def from_config(cls, node, size_divisibility: int) -> Optional[StaticShapes]:
        """From ``cfg.MODEL.FOCAL.STATIC_SHAPES`` (None when not enabled); ``ValueError`` naming the
        key for a size that is not a positive multiple of ``size_divisibility``."""
        if not node.ENABLED:
            return None
        div = max(int(size_divisibility), 1)
        sizes = tuple((int(h), int(w)) for h, w in node.IMAGE_SIZES)
        bad = [s for s in sizes if min(s) <= 0 or s[0] % div or s[1] % div]
        if bad:
            raise ValueError(f"cfg.MODEL.FOCAL.STATIC_SHAPES.IMAGE_SIZES has {bad}: each (H, W) must be "
                             f"positive multiples of the backbone's size divisibility {div}")
        return cls(sizes, int(node.MAX_GT), int(node.STATS_PERIOD))

    def size_for(self, height: int, width: int) -> Optional[Tuple[int, int]]:
        """The smallest (by area) of ``image_sizes`` holding ``height`` x ``width``, or None."""
        return next(((h, w) for h, w in self.image_sizes if h >= height and w >= width), None)


def pad_images(images: ImageList, size: Tuple[int, int]) -> ImageList:
    """``images`` (N, C, H, W, padded by detectron2 to the batch's largest) padded with zeros at
    the bottom and right to ``size`` (H', W') >= (H, W); ``image_sizes`` unchanged."""
    h, w = images.tensor.shape[-2:]
    tensor = F.pad(images.tensor, (0, size[1] - w, 0, size[0] - h))
    return ImageList(tensor, list(images.image_sizes))


class DeviceStats:
    """Loss statistics summed on the device over ``period`` steps and read back once per period
    (one host sync per period instead of one per step).

    ``add(values, iteration)`` takes the step's float32 (S,) vector; every ``period``-th call
    returns ``(sums, where)``: the period's sums as Python floats and the iterations they cover as
    text (else None). A non-finite loss is therefore seen up to ``period - 1`` steps late."""

    def __init__(self, period: int):
        self.period = max(int(period), 1)
        self._sum: Optional[torch.Tensor] = None
        self._count = 0
        self._first: Optional[int] = None

    def add(self, values: torch.Tensor, iteration: Optional[int]) -> Optional[Tuple[List[float], str]]:
        values = values.detach()
        if self._sum is None:
            self._sum, self._first = values.clone(), iteration
        else:
            self._sum.add_(values)
        self._count += 1
        if self._count < self.period:
            return None
        sums, first = self._sum.tolist(), self._first
        self._sum, self._count = None, 0
        where = "this forward pass" if iteration is None else (
            f"iteration {iteration}" if first in (None, iteration) else f"iterations {first}-{iteration}")
        return sums, where


def capturable_sgd(optimizer: torch.optim.SGD) -> torch.optim.SGD:
    """``optimizer`` (detectron2's ``build_optimizer``: SGD, possibly its gradient-clipping
    subclass) rebuilt as fused SGD with each group's learning rate a 0-dim float64 tensor, which
    the lr scheduler fills in place: a step that reads no host value (the float lr is a Python
    argument baked into a captured graph). The plain SGD's updates up to the rounding of the fused
    kernel (below one float32 ulp, on a few elements: ``tests/modeling/test_static_shapes.py``).
    ``TypeError`` for another optimizer class."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError("the static-shape step needs SGD (detectron2's build_optimizer), got "
                        f"{type(optimizer).__name__}")
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    groups = [{**g, "lr": _lr_tensor(g["lr"], device)} for g in optimizer.param_groups]
    for g in groups:
        g.pop("initial_lr", None)  # the scheduler sets it from the new tensor
        g.update(fused=True, foreach=None)
    defaults = {**optimizer.defaults, "lr": _lr_tensor(optimizer.defaults["lr"], device),
                "fused": True, "foreach": None}
    fused = type(optimizer)(groups, **{k: v for k, v in defaults.items() if k in _SGD_ARGS})
    if type(optimizer) is not torch.optim.SGD:
        # detectron2's gradient-clipping subclass clips in step(): a float16 GradScaler must unscale
        # the gradients first, not hand the scale to the fused kernel
        fused._step_supports_amp_scaling = False
    return fused


_SGD_ARGS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach",
             "differentiable", "fused")


def _lr_tensor(lr: float, device: torch.device) -> torch.Tensor:
    # float64: the plain SGD's Python-float lr is a double; a float32 one would round the update
    return torch.tensor(float(lr), dtype=torch.float64, device=device)
