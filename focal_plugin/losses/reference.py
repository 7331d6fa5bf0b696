"""Reference formulas: the paper's losses written directly in log-sigmoid space, differentiated
by autograd. They define what the fused kernels (``fused.py``) must reproduce, and they are the
path taken when ``FOCAL_PLUGIN_REFERENCE_LOSS=1`` or ``fused=False``.

Notation (PAPER.md): x logit, y in {0, 1} the target, x_t = (2y - 1) x, p_t = sigmoid(x_t),
alpha_t = alpha if y = 1 else 1 - alpha (1 when alpha < 0). log p_t = logsigmoid(x_t) and
log(1 - p_t) = logsigmoid(-x_t) are evaluated without forming p_t, so nothing overflows for any
finite logit, and d/dx (1 - p_t)^gamma = -gamma (1 - p_t)^gamma p_t stays finite for gamma < 1.

All inputs are expected in the compute dtype already (float32 or float64); see ``functional``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: loss kinds of the sigmoid family: "focal" (CE is focal with gamma = 0) and "star" (FL*)
SIGMOID_KINDS = ("focal", "star")


def sigmoid_elementwise(
    kind: str, x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float, beta: float = 0.0
) -> torch.Tensor:
    """Elementwise FL / CE (kind "focal") or FL* (kind "star") for binary targets ``t``."""
    z = x * (2 * t - 1)  # x_t
    if kind == "focal":
        if gamma == 0:
            loss = -F.logsigmoid(z)  # CE = -log p_t
        else:  # FL = -(1 - p_t)^gamma log p_t
            loss = -torch.exp(gamma * F.logsigmoid(-z)) * F.logsigmoid(z)
    elif kind == "star":  # FL* = -log sigmoid(gamma x_t + beta) / gamma
        loss = -F.logsigmoid(gamma * z + beta) / gamma
    else:
        raise ValueError(f"unknown sigmoid loss kind {kind!r}; expected one of {SIGMOID_KINDS}")
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def one_hot_targets(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(M,) labels in [0, K] (K = background) -> (M, K) {0, 1} targets; background is all zeros."""
    return F.one_hot(labels, num_classes + 1)[:, :num_classes].to(dtype)


def sigmoid_per_anchor(
    kind: str, x: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float, beta: float = 0.0
) -> torch.Tensor:
    """(M, K) logits, (M,) labels in [0, K] -> (M,) loss summed over the K classes."""
    t = one_hot_targets(labels, x.shape[1], x.dtype)
    return sigmoid_elementwise(kind, x, t, alpha, gamma, beta).sum(dim=1)


def softmax_per_sample(x: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """(N, K+1) logits (background last), (N,) labels in [0, K] -> (N,) softmax FL.

    With u = logsumexp_{j != label} x_j - x_label: p_t = sigmoid(-u), so log p_t = logsigmoid(-u)
    and log(1 - p_t) = logsigmoid(u), both exact even where p_t rounds to 1 (the textbook
    log_softmax(x)[label] = x_label - logsumexp(x) loses all relative precision there).
    """
    num_logits = x.shape[1]
    idx = labels.unsqueeze(1)
    x_t = x.gather(1, idx).squeeze(1)
    u = torch.logsumexp(x.scatter(1, idx, float("-inf")), dim=1) - x_t
    loss = -F.logsigmoid(-u)
    if gamma != 0:
        loss = loss * torch.exp(gamma * F.logsigmoid(u))
    if alpha >= 0:
        is_fg = (labels < num_logits - 1).to(loss.dtype)
        loss = loss * (alpha * is_fg + (1 - alpha) * (1 - is_fg))
    return loss
