"""Initializers of the RetinaNet head (§3.3, §4.1), by name.

``build_initializer(name, **params)`` validates ``params`` and returns a callable that
initializes a conv layer in place. Registered:

* ``normal`` — the paper's init of the subnet convs: weight ~ N(0, sigma^2) (sigma = 0.01), bias 0.
* ``prior`` — the final classification conv's bias, so that every anchor starts with
  probability pi (``prior_prob``) for each foreground class: b = -log((1 - pi) / pi) for sigmoid
  outputs; for softmax outputs (per anchor, K+1 channels with background last) background bias 0
  and foreground bias log(pi / (1 - K pi)). Weights are untouched.
* ``zero`` — bias 0 (the "no prior" ablation).

Every initializer accepts the bias-init context ``prior_prob``, ``num_classes`` and ``softmax``
(validated when given), so a head can call any of them uniformly. One that uses ``prior_prob``
gives it a default (``prior``: the paper's pi = .01); one that only accepts it (default None)
refuses any other pi than that default: it would have no effect.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from fvcore.common.registry import Registry

from focal_plugin.registry import register

INITIALIZER_REGISTRY = Registry("FOCAL_INITIALIZER")
INITIALIZER_REGISTRY.__doc__ = """Layer initializers by name (``cfg.MODEL.FOCAL.BIAS_INIT`` picks the
final classification conv's). Each entry is a factory ``(**params) -> Callable[[nn.Conv2d], None]``
that validates its parameters; use ``build_initializer``."""

Initializer = Callable[[torch.nn.Module], None]

#: the paper's prior probability pi (§3.3)
DEFAULT_PRIOR_PROB = 0.01


def _fail(owner: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"initializer {owner!r}: {name} = {value!r} is invalid: expected {allowed}")


def _check_pi(value: Any, owner: str = "prior", name: str = "prior_prob") -> float:
    allowed = "a probability in the open interval (0, 1)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(owner, name, value, allowed)
    if not (0.0 < float(value) < 1.0):  # also rejects NaN
        _fail(owner, name, value, allowed)
    return float(value)


def prior_bias(pi: float) -> float:
    """Bias b with sigmoid(b) = pi: b = -log((1 - pi) / pi) (§3.3); prior_bias(0.01) = -log(99)."""
    pi = _check_pi(pi, owner="prior_bias", name="pi")
    with np.errstate(over="ignore", divide="ignore"):  # (1 - pi) / pi overflows for subnormal pi
        bias = -float(np.log(np.float64(1.0 - pi) / np.float64(pi)))
    if not math.isfinite(bias):
        _fail("prior_bias", "pi", pi, "a probability whose bias -log((1 - pi) / pi) is finite "
              "(not within ~1e-308 of 0)")
    return bias


def _check_context(owner: str, prior_prob: Optional[float], num_classes: Optional[int],
                   softmax: Any) -> None:
    if prior_prob is not None:
        _check_pi(prior_prob, owner)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        _fail(owner, "num_classes", num_classes, "an integer >= 1")
    if not isinstance(softmax, bool):
        _fail(owner, "softmax", softmax, "True or False")


def _bias_of(layer: torch.nn.Module, owner: str) -> torch.Tensor:
    bias = getattr(layer, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"initializer {owner!r} needs a layer with a bias, got {type(layer).__name__} "
                         "without one")
    return bias


class _LayerInit:
    """An in-place initializer with a readable repr (what ``build_initializer`` returns)."""

    def __init__(self, name: str, params: Dict[str, Any], fn: Initializer):
        self.name, self.params, self._fn = name, params, fn

    def __call__(self, layer: torch.nn.Module) -> None:
        with torch.no_grad():
            self._fn(layer)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"initializer {self.name}({args})"


@register(INITIALIZER_REGISTRY, "prior")
def prior_initializer(
    *, prior_prob: float = DEFAULT_PRIOR_PROB, num_classes: Optional[int] = None, softmax: bool = False
) -> Initializer:
    """Bias init of the final classification conv so that each foreground class starts with
    probability ``prior_prob`` (§3.3). ``softmax``: the conv's output channels are A groups of
    ``num_classes`` + 1 (background last); ``num_classes`` is then required and
    ``num_classes * prior_prob`` must be < 1."""
    _check_context("prior", prior_prob, num_classes, softmax)
    pi = _check_pi(prior_prob)
    if not softmax:
        value = prior_bias(pi)

        def init(layer: torch.nn.Module) -> None:
            _bias_of(layer, "prior").fill_(value)

        return _LayerInit("prior", {"prior_prob": pi, "softmax": False}, init)

    if num_classes is None:
        _fail("prior", "num_classes", None, "the number of foreground classes K when softmax=True")
    k = num_classes
    if k * pi >= 1.0:
        raise ValueError(
            f"initializer 'prior': prior_prob = {pi!r} with num_classes = {k} is invalid for softmax "
            f"outputs: the foreground probabilities num_classes * prior_prob = {k * pi:g} must be < 1"
        )
    fg = math.log(pi / (1.0 - k * pi))

    def init_softmax(layer: torch.nn.Module) -> None:
        bias = _bias_of(layer, "prior")
        if bias.numel() % (k + 1):
            raise ValueError(
                f"initializer 'prior': the layer has {bias.numel()} output channels, not a multiple "
                f"of num_classes + 1 = {k + 1} (softmax outputs: A groups of K+1, background last)"
            )
        groups = bias.view(-1, k + 1)
        groups[:, :k] = fg
        groups[:, k] = 0.0

    return _LayerInit("prior", {"prior_prob": pi, "num_classes": k, "softmax": True}, init_softmax)


@register(INITIALIZER_REGISTRY, "zero")
def zero_initializer(
    *, prior_prob: Optional[float] = None, num_classes: Optional[int] = None, softmax: bool = False
) -> Initializer:
    """Bias 0 (a layer without bias is left as is); the bias-init context is accepted and ignored."""
    _check_context("zero", prior_prob, num_classes, softmax)

    def init(layer: torch.nn.Module) -> None:
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()

    return _LayerInit("zero", {}, init)


@register(INITIALIZER_REGISTRY, "normal")
def normal_initializer(
    *,
    sigma: float = 0.01,
    prior_prob: Optional[float] = None,
    num_classes: Optional[int] = None,
    softmax: bool = False,
) -> Initializer:
    """The paper's conv init (§4.1): weight ~ N(0, sigma^2), bias 0."""
    _check_context("normal", prior_prob, num_classes, softmax)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (
        0.0 < float(sigma) < math.inf
    ):
        _fail("normal", "sigma", sigma, "a finite number > 0")
    std = float(sigma)

    def init(layer: torch.nn.Module) -> None:
        torch.nn.init.normal_(layer.weight, mean=0.0, std=std)
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()

    return _LayerInit("normal", {"sigma": std}, init)


def build_initializer(name: str, **params: Any) -> Initializer:
    """The registered initializer ``name`` with ``params`` (validated), as an in-place callable
    ``init(layer)``. Unknown names and parameters raise ``ValueError`` listing what is accepted."""
    if not isinstance(name, str) or name not in INITIALIZER_REGISTRY:
        raise ValueError(f"unknown initializer {name!r}: registered initializers are "
                         f"{sorted(k for k, _ in INITIALIZER_REGISTRY)}")
    factory = INITIALIZER_REGISTRY.get(name)
    accepted = [p for p in inspect.signature(factory).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"initializer {name!r} got unknown parameter(s) {unknown}: it accepts {accepted}")
    pi = params.get("prior_prob")
    if pi is not None and pi != DEFAULT_PRIOR_PROB and not _uses_prior_prob(factory):
        users = sorted(k for k, f in INITIALIZER_REGISTRY if _uses_prior_prob(f))
        raise ValueError(f"initializer {name!r}: prior_prob = {pi!r} has no effect (it sets no prior): "
                         f"use one of {users}, or leave prior_prob at {DEFAULT_PRIOR_PROB}")
    return factory(**params)


def _uses_prior_prob(factory: Callable) -> bool:
    p = inspect.signature(factory).parameters.get("prior_prob")
    return p is not None and p.default is not None
