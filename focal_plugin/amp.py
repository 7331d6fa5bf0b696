"""Mixed-precision training (``SOLVER.AMP.ENABLED``) on the CPU as well as on CUDA.

detectron2 v0.6's ``AMPTrainer`` runs only on CUDA, in float16. Here ``SOLVER.AMP.PRECISION``
picks the autocast dtype: ``auto`` = bfloat16 on the CPU (fast on CPUs with AVX-512 BF16 or AMX),
float16 on CUDA (detectron2's choice); ``bfloat16`` anywhere; ``float16`` on CUDA only (the CPU
has no fast float16 kernels). float16 scales the loss (``torch.amp.GradScaler``); bfloat16 has
float32's exponent range and needs no scaling. FocalRetinaNet computes its losses in float32
whatever the precision (``FocalRetinaNet.losses``).

Inference has its own key, ``TEST.AMP.ENABLED`` / ``TEST.AMP.PRECISION`` (same values): FocalRetinaNet
runs its backbone and head under autocast and its scores, box decoding and NMS in float32.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer

PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype(cfg: CfgNode, node: str = "SOLVER") -> Optional[torch.dtype]:
    """The autocast dtype of ``cfg.<node>.AMP`` (``SOLVER``: training, ``TEST``: inference; None:
    AMP off). Raises ``ValueError`` naming ``<node>.AMP.PRECISION`` for an unknown value, float16
    on the CPU, or a precision set while ``<node>.AMP.ENABLED`` is False (it would have no effect)."""
    amp, cuda, key = cfg[node].AMP, cfg.MODEL.DEVICE.startswith("cuda"), f"cfg.{node}.AMP"
    precision = amp.PRECISION
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"{key}.PRECISION = {precision!r}: expected 'auto' or one of {list(PRECISIONS)}")
    if not amp.ENABLED:
        if precision != "auto":
            raise ValueError(f"{key}.PRECISION = {precision!r} has no effect while {key}.ENABLED is "
                             "False: enable AMP or leave the precision at 'auto'")
        return None
    if precision == "float16" and not cuda:
        raise ValueError(f"{key}.PRECISION = 'float16' needs CUDA (cfg.MODEL.DEVICE = "
                         f"{cfg.MODEL.DEVICE!r}): use 'bfloat16' or 'auto' on the CPU")
    return PRECISIONS.get(precision, torch.float16 if cuda else torch.bfloat16)


def precision_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    """The :data:`PRECISIONS` name of ``dtype`` (None for None)."""
    return None if dtype is None else next(k for k, v in PRECISIONS.items() if v is dtype)


def inference_autocast(device: torch.device, precision: Optional[str]):
    """``torch.autocast`` in ``precision`` (a :data:`PRECISIONS` name) on ``device``'s type, or a
    no-op context for None (an autocast the caller opened stays in force)."""
    if precision is None:
        return contextlib.nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"test_precision = {precision!r}: expected None or one of {list(PRECISIONS)}")
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


class MixedPrecisionTrainer(AMPTrainer):
    """detectron2's ``AMPTrainer`` step under ``torch.autocast(device, dtype)`` for the model's
    device; the loss is scaled only in float16."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype):
        self.device_type = next(model.parameters()).device.type
        scaler = torch.amp.GradScaler(self.device_type, enabled=precision is torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler)
        # after super().__init__: later detectron2 versions' AMPTrainer sets its own `precision`
        # (float16 by default), which would replace ours
        self.precision = precision

    def run_step(self) -> None:
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # a checkpoint written without AMP (or in bfloat16: a disabled scaler's state is empty)
        # holds no scaler state; the scaler then starts afresh
        super(AMPTrainer, self).load_state_dict(state_dict)
        if state_dict.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def use_mixed_precision(trainer, cfg: CfgNode) -> None:
    """Replace ``trainer._trainer`` (a ``DefaultTrainer``'s step runner) by a
    :class:`MixedPrecisionTrainer` when ``SOLVER.AMP.ENABLED``; the same model, optimizer and
    data-loader iterator (no second set of loader workers)."""
    dtype = amp_dtype(cfg)
    if dtype is None:
        return
    old = trainer._trainer
    new = MixedPrecisionTrainer(old.model, old._data_loader_iter, old.optimizer, dtype)
    new.data_loader = old.data_loader
    trainer._trainer = new
