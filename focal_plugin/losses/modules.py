"""Registered classification losses: what ``FocalRetinaNet`` builds from ``cfg.MODEL.FOCAL.LOSS``.

Each is a ``ClassificationLoss`` module: ``forward(logits (M, C), labels (M,)) -> (M,)`` gives the
loss of every anchor summed over its classes (labels in [0, K], K = background), and
``scores(logits)`` gives the per-class probabilities used at inference.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from fvcore.common.registry import Registry

from focal_plugin.losses._common import as_number
from focal_plugin.losses.functional import sigmoid_loss_per_anchor, softmax_focal_loss
from focal_plugin.losses.reference import check_hyperparameters, compute_dtype
from focal_plugin.registry import register

Tensor = torch.Tensor

LOSS_REGISTRY = Registry("FOCAL_LOSS")
LOSS_REGISTRY.__doc__ = """Classification losses by name (``cfg.MODEL.FOCAL.LOSS``); each entry is
a ``ClassificationLoss`` subclass built by ``build_classification_loss(name, **params)``."""


class ClassificationLoss(torch.nn.Module):
    """Base of the registered losses.

    Class attributes: ``hyperparameters`` (the constructor's hyperparameter keywords, a subset of
    ("gamma", "alpha", "beta")) and ``is_softmax`` (K+1 logits with background last, instead of
    K sigmoid logits). Hyperparameters are required keyword arguments (no defaults: the config
    holds them). ``fused`` is the one switch between the fused kernels (True, the default) and
    the reference formulas (False); the config passes ``MODEL.FOCAL.FUSED_LOSS``.
    """

    hyperparameters: Tuple[str, ...] = ()
    is_softmax: bool = False

    def __init__(self, *, fused: bool = True):
        super().__init__()
        if not isinstance(fused, bool):
            raise ValueError(f"{type(self).__name__}: Invalid fused = {fused!r}: expected True or False")
        self.fused = fused

    def num_logits(self, num_classes: int) -> int:
        """Logits per anchor for ``num_classes`` object classes: K (sigmoid) or K+1 (softmax)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{type(self).__name__}: num_classes = {num_classes!r} is invalid: "
                             "expected an integer >= 1")
        return num_classes + 1 if self.is_softmax else num_classes

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(M, C) logits and (M,) labels in [0, K] -> (M,) loss per anchor summed over classes
        (float32, or float64 for float64 logits), differentiable w.r.t. the logits."""
        raise NotImplementedError

    def scores(self, logits: Tensor) -> Tensor:
        """(..., C) logits -> (..., K) class probabilities (float32 for half-precision logits)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        parts = [f"{name}={getattr(self, name)!r}" for name in self.hyperparameters]
        return ", ".join(parts + [f"fused={self.fused}"])


def _checked(owner: str, kind: str, **params: Any) -> Dict[str, float]:
    values = {k: as_number(owner, k, v) for k, v in params.items()}
    check_hyperparameters(owner, kind, values.get("alpha", -1.0), values.get("gamma", 1.0),
                          values.get("beta", 0.0))
    return values


class _SigmoidLoss(ClassificationLoss):
    kind = "focal"
    is_softmax = False
    gamma: float = 0.0  # CE
    beta: float = 0.0  # FL* only

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return sigmoid_loss_per_anchor(self.kind, logits, labels, self.alpha, self.gamma, self.beta,
                                       fused=self.fused, owner=type(self).__name__)

    def scores(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.to(compute_dtype(logits.dtype)))


@register(LOSS_REGISTRY, "sigmoid_ce")
class SigmoidCELoss(_SigmoidLoss):
    """Sigmoid cross entropy, -alpha_t log p_t summed over the K classes; alpha < 0 gives plain
    CE, alpha in [0, 1] the alpha-balanced CE of §3.1."""

    hyperparameters = ("alpha",)

    def __init__(self, *, alpha: float, fused: bool = True):
        super().__init__(fused=fused)
        self.alpha = _checked(type(self).__name__, "focal", alpha=alpha)["alpha"]


@register(LOSS_REGISTRY, "sigmoid_focal")
class SigmoidFocalLoss(_SigmoidLoss):
    """The focal loss -alpha_t (1 - p_t)^gamma log p_t summed over the K classes (§3.2)."""

    hyperparameters = ("gamma", "alpha")

    def __init__(self, *, gamma: float, alpha: float, fused: bool = True):
        super().__init__(fused=fused)
        values = _checked(type(self).__name__, "focal", gamma=gamma, alpha=alpha)
        self.gamma, self.alpha = values["gamma"], values["alpha"]


@register(LOSS_REGISTRY, "sigmoid_focal_star")
class SigmoidFocalStarLoss(_SigmoidLoss):
    """FL* of Appendix A, -alpha_t log sigmoid(gamma x_t + beta) / gamma, summed over the K
    classes. No defaults here: Table 3's settings (gamma 2, beta 1, alpha .25) are the config's
    ``MODEL.FOCAL`` defaults; the function ``sigmoid_focal_loss_star`` keeps fvcore's."""

    kind = "star"
    hyperparameters = ("gamma", "beta", "alpha")

    def __init__(self, *, gamma: float, beta: float, alpha: float, fused: bool = True):
        super().__init__(fused=fused)
        values = _checked(type(self).__name__, "star", gamma=gamma, beta=beta, alpha=alpha)
        self.gamma, self.beta, self.alpha = values["gamma"], values["beta"], values["alpha"]


@register(LOSS_REGISTRY, "softmax_focal")
class SoftmaxFocalLoss(ClassificationLoss):
    """Softmax focal loss over K+1 logits per anchor (background last); alpha_t = alpha for
    foreground anchors and 1 - alpha for background ones."""

    hyperparameters = ("gamma", "alpha")
    is_softmax = True

    def __init__(self, *, gamma: float, alpha: float, fused: bool = True):
        super().__init__(fused=fused)
        values = _checked(type(self).__name__, "focal", gamma=gamma, alpha=alpha)
        self.gamma, self.alpha = values["gamma"], values["alpha"]

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.dim() != 2:
            raise ValueError(f"{type(self).__name__}: logits must be (M, K+1), got {tuple(logits.shape)}")
        return softmax_focal_loss(logits, labels, self.alpha, self.gamma, "none", self.fused)

    def scores(self, logits: Tensor) -> Tensor:
        return F.softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)[..., :-1]


def _accepted(cls: type) -> Tuple[str, ...]:
    return tuple(cls.hyperparameters) + ("fused",)


def loss_class(name: Any) -> type:
    """The ``ClassificationLoss`` subclass registered as ``name``; ``ValueError`` listing the
    registered names for any other value (also a non-string)."""
    if not isinstance(name, str) or name not in LOSS_REGISTRY:
        raise ValueError(f"unknown classification loss {name!r}: registered losses are "
                         f"{sorted(k for k, _ in LOSS_REGISTRY)}")
    return LOSS_REGISTRY.get(name)


def build_classification_loss(name: str, **params: Any) -> ClassificationLoss:
    """Build the registered loss ``name`` with its hyperparameters ``params`` (all required: the
    config, ``MODEL.FOCAL``, is the one place that holds the paper's defaults) and optionally
    ``fused``. Unknown names, unknown or missing parameters and values out of range raise
    ``ValueError`` saying what is accepted.
    """
    cls = loss_class(name)
    accepted = tuple(cls.hyperparameters) + ("fused",)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"classification loss {name!r} got unknown parameter(s) {unknown}: "
                         f"it accepts {list(accepted)}")
    missing = [p for p in cls.hyperparameters if p not in params]
    if missing:
        raise ValueError(f"classification loss {name!r} needs hyperparameter(s) {missing}: "
                         f"it takes {list(cls.hyperparameters)} (the config passes MODEL.FOCAL."
                         f"{', MODEL.FOCAL.'.join(p.upper() for p in cls.hyperparameters)})")
    return cls(**params)
