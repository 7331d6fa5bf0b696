"""The public loss functions: drop-in replacements for ``fvcore.nn`` / ``torchvision.ops``.

Same positional order, defaults and target convention as fvcore's and torchvision's
``sigmoid_focal_loss`` (and fvcore's ``sigmoid_focal_loss_star``); reductions "none" | "sum" |
"mean"; ``alpha < 0`` disables alpha-weighting. Every function takes the fused path
(``fused.py``) unless it is unavailable or switched off (``fused=False`` or the environment
variable ``FOCAL_PLUGIN_REFERENCE_LOSS=1``), and falls back to the reference formulas
(``reference.py``) otherwise. Inputs in float16/bfloat16 (autocast included) are computed in
float32 and the loss is returned in float32; float64 inputs are computed and returned in float64.
"""

from __future__ import annotations

import logging

import torch

from focal_plugin.losses import reference
from focal_plugin.losses._common import (
    REFERENCE_ENV,
    alpha_weights,
    check_alpha,
    check_beta,
    check_gamma,
    check_reduction,
    compute_dtype,
    log_once,
    reference_forced,
)
from focal_plugin.losses.fused import fused_loss, params_tensor

Tensor = torch.Tensor

__all__ = [
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "softmax_focal_loss",
    "sigmoid_loss_per_anchor",
    "use_fused_path",
]


def use_fused_path(fused: bool, x: Tensor, targets: Tensor | None = None) -> bool:
    """Whether a call takes the fused path; says once in the log why it does not, if it should."""
    if not fused:
        return False
    if reference_forced():
        log_once("ref-env", logging.INFO,
                 "focal_plugin.losses: %s=1, using the reference loss formulas.", REFERENCE_ENV)
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        log_once("ref-jit", logging.INFO,
                 "focal_plugin.losses: TorchScript tracing/scripting, using the reference formulas.")
        return False
    if torch.compiler.is_compiling():  # an outer torch.compile fuses the reference formulas itself
        return False
    if x.numel() == 0:
        return False
    if targets is not None and targets.requires_grad:
        log_once("ref-target-grad", logging.INFO,
                 "focal_plugin.losses: targets require grad, which the fused path does not give; "
                 "using the reference formulas for such calls.")
        return False
    return True


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def _sigmoid_loss(owner, kind, inputs, targets, alpha, gamma, beta, reduction, fused) -> Tensor:
    check_reduction(reduction, owner)
    dtype = compute_dtype(inputs.dtype)
    x = inputs.to(dtype)
    t = torch.as_tensor(targets, device=x.device).to(dtype)
    if t.shape != x.shape:
        shape = torch.broadcast_shapes(x.shape, t.shape)
        if shape != x.shape:
            x = x.expand(shape)
        t = t.expand(shape)
    if not use_fused_path(fused, x, t):
        return _reduce(reference.sigmoid_elementwise(kind, x, t, alpha, gamma, beta), reduction)
    prm = params_tensor((*alpha_weights(alpha), gamma, beta), dtype, x.device)
    xf = x.contiguous().view(-1)
    tf = t.contiguous().view(-1)
    if reduction == "none":
        return fused_loss(f"{kind}_elem", xf, tf, prm).view(x.shape)
    total = fused_loss(f"{kind}_sum", xf, tf, prm)
    return total if reduction == "sum" else total / xf.numel()


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    fused: bool = True,
) -> Tensor:
    """Focal loss of RetinaNet (https://arxiv.org/abs/1708.02002, eq. 5):

        FL(p_t) = -alpha_t * (1 - p_t)^gamma * log(p_t)

    with p = sigmoid(inputs), p_t = p where targets == 1 and 1 - p where targets == 0, alpha_t =
    alpha for positives and 1 - alpha for negatives (no weighting when alpha < 0). gamma = 0
    gives the alpha-balanced cross entropy. Computed in log-sigmoid space
    (log p_t = logsigmoid(x_t), (1 - p_t)^gamma = exp(gamma * logsigmoid(-x_t)), x_t = (2y-1) x),
    so loss and gradient are finite for all finite logits and every gamma >= 0.

    Args:
        inputs: float tensor of any shape: the logits.
        targets: tensor of the same shape (or broadcastable to it): binary labels, 0 for the
            negative and 1 for the positive class.
        alpha: weight of positives in [0, 1]; negative disables alpha-weighting. Default 0.25.
        gamma: focusing parameter >= 0. Default 2.
        reduction: "none" | "mean" | "sum".
        fused: False forces the reference formulas (as does FOCAL_PLUGIN_REFERENCE_LOSS=1).
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    """
    owner = "sigmoid_focal_loss"
    alpha = check_alpha(alpha, owner)
    gamma = check_gamma(gamma, owner)
    return _sigmoid_loss(owner, "focal", inputs, targets, alpha, gamma, 0.0, reduction, fused)


def sigmoid_focal_loss_star(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = -1,
    gamma: float = 1.0,
    reduction: str = "none",
    beta: float = 0.0,
    *,
    fused: bool = True,
) -> Tensor:
    """FL* of RetinaNet's Appendix A (https://arxiv.org/abs/1708.02002):

        p*_t = sigmoid(gamma * x_t + beta),   FL* = -alpha_t * log(p*_t) / gamma

    with x_t = x for positives and -x for negatives (targets in {0, 1}), alpha_t as in the focal
    loss (no weighting when alpha < 0, the default). With beta = 0 this equals fvcore's
    ``sigmoid_focal_loss_star``; beta is the paper's shift (the paper uses alpha = 0.25).

    Args:
        inputs: float tensor of any shape: the logits.
        targets: {0, 1} tensor of the same shape (or broadcastable to it).
        alpha: weight of positives in [0, 1]; negative disables it. Default -1.
        gamma: steepness > 0. Default 1.
        reduction: "none" | "mean" | "sum".
        beta: shift, any finite number. Default 0.
        fused: False forces the reference formulas (as does FOCAL_PLUGIN_REFERENCE_LOSS=1).
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    """
    owner = "sigmoid_focal_loss_star"
    alpha = check_alpha(alpha, owner)
    gamma = check_gamma(gamma, owner, strictly_positive=True)
    beta = check_beta(beta, owner)
    return _sigmoid_loss(owner, "star", inputs, targets, alpha, gamma, beta, reduction, fused)


def sigmoid_ce_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = -1,
    reduction: str = "none",
    *,
    fused: bool = True,
) -> Tensor:
    """Binary cross entropy on sigmoid outputs, optionally alpha-balanced (§3.1):

        CE(p_t) = -alpha_t * log(p_t)

    (alpha_t = 1 when alpha < 0, the default: plain CE, equal to
    ``F.binary_cross_entropy_with_logits``). Equals ``sigmoid_focal_loss`` with gamma = 0.

    Args:
        inputs: float tensor of any shape: the logits.
        targets: {0, 1} tensor of the same shape (or broadcastable to it).
        alpha: weight of positives in [0, 1]; negative disables it. Default -1.
        reduction: "none" | "mean" | "sum".
        fused: False forces the reference formulas (as does FOCAL_PLUGIN_REFERENCE_LOSS=1).
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    """
    owner = "sigmoid_ce_loss"
    alpha = check_alpha(alpha, owner)
    return _sigmoid_loss(owner, "focal", inputs, targets, alpha, 0.0, 0.0, reduction, fused)


def _check_labels(owner: str, logits: Tensor, labels: Tensor, max_label: int) -> Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise ValueError(f"{owner}: labels must be an integer tensor, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{owner}: labels must have shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
    labels = labels.to(device=logits.device, dtype=torch.long)
    if labels.device.type == "cpu" and labels.numel():  # on accelerators this would sync
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > max_label:
            raise ValueError(f"{owner}: labels must lie in [0, {max_label}] ({max_label} = background), "
                             f"got values in [{lo}, {hi}]")
    return labels


def softmax_focal_loss(
    inputs: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    fused: bool = True,
) -> Tensor:
    """Softmax focal loss over K+1 classes with background last (the original Detectron's
    softmax option; §3.2 notes the focal loss extends to the multi-class case):

        p = softmax(inputs), p_t = p[label],   FL = -alpha_t * (1 - p_t)^gamma * log(p_t)

    alpha_t = alpha for foreground labels (< K) and 1 - alpha for background (label K); no
    weighting when alpha < 0. With gamma = 0 and alpha < 0 this is ``F.cross_entropy``. Computed
    as the binary focal loss of z = x_label - logsumexp_{j != label} x_j (p_t = sigmoid(z)), so
    log p_t and log(1 - p_t) are exact even where p_t rounds to 1.

    Args:
        inputs: (N, K+1) float logits, background in the last column.
        labels: (N,) integer labels in [0, K] (K = background).
        alpha: weight of foreground samples in [0, 1]; negative disables it. Default 0.25.
        gamma: focusing parameter >= 0. Default 2.
        reduction: "none" (per sample, shape (N,)) | "mean" | "sum".
        fused: False forces the reference formulas (as does FOCAL_PLUGIN_REFERENCE_LOSS=1).
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    """
    owner = "softmax_focal_loss"
    alpha = check_alpha(alpha, owner)
    gamma = check_gamma(gamma, owner)
    check_reduction(reduction, owner)
    if inputs.dim() != 2 or inputs.shape[1] < 2:
        raise ValueError(f"{owner}: inputs must be (N, K+1) logits with K >= 1, got {tuple(inputs.shape)}")
    labels = _check_labels(owner, inputs, labels, inputs.shape[1] - 1)
    dtype = compute_dtype(inputs.dtype)
    x = inputs.to(dtype)
    if use_fused_path(fused, x):
        prm = params_tensor((*alpha_weights(alpha), gamma, 0.0), dtype, x.device)
        loss = fused_loss("softmax_rows", x.contiguous(), labels.contiguous(), prm, rows=True)
    else:
        loss = reference.softmax_per_sample(x, labels, alpha, gamma)
    return _reduce(loss, reduction)


def sigmoid_loss_per_anchor(
    kind: str,
    logits: Tensor,
    labels: Tensor,
    alpha: float,
    gamma: float,
    beta: float = 0.0,
    *,
    fused: bool = True,
    owner: str = "sigmoid_loss_per_anchor",
) -> Tensor:
    """(M, K) logits, (M,) labels in [0, K] (K = background) -> (M,) sigmoid loss per anchor,
    summed over the K classes, the target of anchor m being one_hot(labels[m], K+1)[:K].

    ``kind``: "focal" (FL; CE when gamma = 0) or "star" (FL*). Hyperparameters are assumed
    validated (the loss modules do it). The fused kernel reads the labels directly: no (M, K)
    target tensor is formed.
    """
    if logits.dim() != 2:
        raise ValueError(f"{owner}: logits must be (M, K), got {tuple(logits.shape)}")
    labels = _check_labels(owner, logits, labels, logits.shape[1])
    dtype = compute_dtype(logits.dtype)
    x = logits.to(dtype)
    if not use_fused_path(fused, x):
        return reference.sigmoid_per_anchor(kind, x, labels, alpha, gamma, beta)
    prm = params_tensor((*alpha_weights(alpha), gamma, beta), dtype, x.device)
    return fused_loss(f"{kind}_rows", x.contiguous(), labels.contiguous(), prm, rows=True)
