"""Frozen bottom-up features computed once per distinct training input (``MODEL.BACKBONE.FEATURE_CACHE_MB``).

When the whole bottom-up network is frozen (``MODEL.BACKBONE.FREEZE_AT`` covering every stage,
FrozenBN) its output is a fixed function of its input. With augmentations of a small fixed set
(the protocol's horizontal flip at native size) the same padded image recurs every epoch, so its
features can be kept instead of recomputed: the FPN, the head, the loss and the optimizer see
exactly the tensors the eager path computes (per-sample results of detectron2's ResNet do not
depend on the batch they are computed in; ``tests/modeling/test_feature_cache.py`` checks it
bitwise, training included).

An input is identified by its bytes (BLAKE2b of the padded, normalized float image), its shape and
the autocast dtype in force, so a different flip, size or precision is a different entry. The cache
is used in training mode only (evaluation images are seen once), holds at most the configured
size (later inputs are computed, not cached), and is emptied when weights are loaded into the
network.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional

import torch
from torch import nn

#: Bytes per MiB, the unit of ``MODEL.BACKBONE.FEATURE_CACHE_MB``.
MB = 1 << 20


def frozen_problems(module: nn.Module) -> List[str]:
    """Why ``module``'s output could change during training ([] if it cannot): trainable
    parameters, or batch-statistics norms (their running statistics move in training mode)."""
    problems = [f"parameter {n} is trainable" for n, p in module.named_parameters() if p.requires_grad]
    problems += [f"{n} ({type(m).__name__}) updates batch statistics" for n, m in module.named_modules()
                 if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    return problems


def _key(sample: torch.Tensor) -> tuple:
    dtype = torch.get_autocast_dtype(sample.device.type) if torch.is_autocast_enabled(sample.device.type) \
        else None
    digest = hashlib.blake2b(sample.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).digest()
    return digest, tuple(sample.shape), str(sample.dtype), str(dtype)


class FeatureCache:
    """Replaces ``module.forward`` (a frozen network returning ``dict[str, Tensor]`` of batched
    features, detectron2's ``Backbone`` contract) by one that computes only the batch's samples not
    seen before. Attributes ``hits``, ``misses``, ``bytes``: statistics since the last reset.

    Raises ``ValueError`` listing :func:`frozen_problems` when ``module`` is not frozen."""

    def __init__(self, module: nn.Module, max_mb: float):
        problems = frozen_problems(module)
        if problems:
            raise ValueError("MODEL.BACKBONE.FEATURE_CACHE_MB needs a frozen bottom-up network "
                             f"(MODEL.BACKBONE.FREEZE_AT covering every stage, FrozenBN): {problems[:3]}")
        self.module, self.max_bytes = module, int(max_mb * MB)
        self._forward = module.forward
        self._entries: Dict[tuple, Dict[str, torch.Tensor]] = {}
        self.hits = self.misses = self.bytes = 0
        module.forward = self.forward  # instance attribute: state-dict keys and hooks are unchanged
        module._register_load_state_dict_pre_hook(lambda *args, **kwargs: self.clear())

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if not self.module.training or not len(x):
            return self._forward(x)
        keys = [_key(sample) for sample in x]
        missing = [i for i, k in enumerate(keys) if k not in self._entries]
        computed: Optional[Dict[str, torch.Tensor]] = self._forward(x[missing]) if missing else None
        fresh = {}
        for j, i in enumerate(missing):
            fresh[keys[i]] = {name: f[j] for name, f in computed.items()}
            self._store(keys[i], fresh[keys[i]])
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        rows = [self._entries.get(k) or fresh[k] for k in keys]
        # in the layout the network computes (channels_last convolutions: MODEL.FOCAL.CHANNELS_LAST)
        fmt = torch.channels_last if self._channels_last() else torch.contiguous_format
        return {name: torch.stack([r[name] for r in rows]).contiguous(memory_format=fmt) for name in rows[0]}

    def _channels_last(self) -> bool:
        conv = next((p for p in self.module.parameters() if p.dim() == 4), None)
        return conv is not None and conv.is_contiguous(memory_format=torch.channels_last) \
            and not conv.is_contiguous()

    def _store(self, key: tuple, features: Dict[str, torch.Tensor]) -> None:
        size = sum(f.numel() * f.element_size() for f in features.values())
        if key not in self._entries and self.bytes + size <= self.max_bytes:
            # clone: a slice would keep the whole batch's storage alive
            self._entries[key] = {n: f.detach().clone() for n, f in features.items()}
            self.bytes += size


def install_feature_cache(backbone: nn.Module, max_mb: float) -> Optional[FeatureCache]:
    """A :class:`FeatureCache` on ``backbone.bottom_up`` (detectron2's FPN), or None if ``max_mb``
    is 0. ``ValueError`` naming the key when the backbone has no ``bottom_up`` or it is not frozen."""
    if not max_mb:
        return None
    bottom_up = getattr(backbone, "bottom_up", None)
    if not isinstance(bottom_up, nn.Module):
        raise ValueError(f"MODEL.BACKBONE.FEATURE_CACHE_MB = {max_mb} needs an FPN backbone with a "
                         f"bottom_up network; {type(backbone).__name__} has none (set it to 0)")
    return FeatureCache(bottom_up, max_mb)


__all__ = ["FeatureCache", "frozen_problems", "install_feature_cache"]
