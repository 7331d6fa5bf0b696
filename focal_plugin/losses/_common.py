"""Shared helpers of the loss package: hyperparameter validation, path switches, log-once."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

logger = logging.getLogger("focal_plugin.losses")

REDUCTIONS = ("none", "sum", "mean")

#: Environment variable that forces the reference (autograd) formulas everywhere.
REFERENCE_ENV = "FOCAL_PLUGIN_REFERENCE_LOSS"
#: Environment variable that keeps the fused path but runs its kernels eagerly (no torch.compile).
COMPILE_ENV = "FOCAL_PLUGIN_COMPILE"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

_logged: set = set()


def log_once(key: Any, level: int, msg: str, *args: Any) -> None:
    """Log ``msg`` the first time ``key`` is seen in this process."""
    if key in _logged:
        return
    _logged.add(key)
    logger.log(level, msg, *args)


def reference_forced() -> bool:
    """True when ``FOCAL_PLUGIN_REFERENCE_LOSS`` asks for the reference formulas."""
    return os.environ.get(REFERENCE_ENV, "").strip().lower() in _TRUE


def compile_enabled() -> bool:
    """False when ``FOCAL_PLUGIN_COMPILE=0``: fused kernels then run eagerly."""
    return os.environ.get(COMPILE_ENV, "").strip().lower() not in _FALSE


# ------------------------------------------------------------------------------ validation
def _number(owner: str, name: str, value: Any, allowed: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}: {name} = {value!r} is invalid: expected {allowed}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{owner}: {name} = {value!r} is invalid: expected {allowed}")
    return value


def check_gamma(value: Any, owner: str, *, strictly_positive: bool = False) -> float:
    """gamma >= 0 (FL) or gamma > 0 (FL*), finite."""
    allowed = "a finite number > 0" if strictly_positive else "a finite number >= 0"
    g = _number(owner, "gamma", value, allowed)
    if not math.isfinite(g) or g < 0 or (strictly_positive and g == 0):
        raise ValueError(f"{owner}: gamma = {value!r} is invalid: expected {allowed}")
    return g


def check_alpha(value: Any, owner: str) -> float:
    """alpha in [0, 1], or any negative number to disable alpha-weighting."""
    allowed = "a number in [0, 1], or negative to disable alpha-weighting"
    a = _number(owner, "alpha", value, allowed)
    if a > 1:
        raise ValueError(f"{owner}: alpha = {value!r} is invalid: expected {allowed}")
    return a


def check_beta(value: Any, owner: str) -> float:
    """beta finite (FL*'s shift)."""
    allowed = "a finite number"
    b = _number(owner, "beta", value, allowed)
    if not math.isfinite(b):
        raise ValueError(f"{owner}: beta = {value!r} is invalid: expected {allowed}")
    return b


def check_reduction(value: Any, owner: str) -> str:
    if value not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction = {value!r} is invalid: expected one of {list(REDUCTIONS)}")
    return value


def alpha_weights(alpha: float) -> tuple[float, float]:
    """(alpha_t of positives, alpha_t of negatives); (1, 1) when alpha < 0 disables it."""
    if alpha < 0:
        return 1.0, 1.0
    return alpha, 1.0 - alpha


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32, ints) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
