"""Python-side helpers of the loss package: hyperparameters as numbers, log-once.

The rules themselves (ranges of alpha, gamma, beta; reductions; targets in [0, 1]) are defined
once, TorchScript-compatible, in ``reference.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger("focal_plugin.losses")

_logged: set = set()


def log_once(key: Any, level: int, msg: str, *args: Any) -> None:
    """Log ``msg`` the first time ``key`` is seen in this process."""
    if key in _logged:
        return
    _logged.add(key)
    logger.log(level, msg, *args)


def as_number(owner: str, name: str, value: Any) -> float:
    """A hyperparameter as a Python float: numbers and one-element tensors are accepted (as by
    fvcore and torchvision), anything else (strings, bools, None) raises ValueError."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}: Invalid {name} = {value!r}: expected a number")
    return float(value)


def alpha_weights(alpha: float) -> tuple[float, float]:
    """(alpha_t of positives, alpha_t of negatives); (1, 1) when alpha < 0 disables it."""
    if alpha < 0:
        return 1.0, 1.0
    return alpha, 1.0 - alpha
