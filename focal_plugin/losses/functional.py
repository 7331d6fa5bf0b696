"""The public loss functions, drop-in replacements for the library each one mirrors:

==========================  ==========================================  ==========================
function                    mirrors (signature, defaults, error types)  defaults
==========================  ==========================================  ==========================
sigmoid_focal_loss          torchvision.ops.sigmoid_focal_loss          alpha=0.25, gamma=2
sigmoid_focal_loss_star     fvcore.nn.sigmoid_focal_loss_star (+ beta)  alpha=-1, gamma=1, beta=0
sigmoid_ce_loss             F.binary_cross_entropy_with_logits values   alpha=-1
softmax_focal_loss          (no peer; F.cross_entropy at gamma=0)       alpha=0.25, gamma=2
==========================  ==========================================  ==========================

(fvcore's ``sigmoid_focal_loss`` has alpha=-1: replacing it, pass alpha explicitly, as
detectron2 does.) All take reduction "none" (default) | "mean" | "sum" and raise ValueError with
"Invalid" for any other; targets in [0, 1] (soft targets use the general formula of
``reference.py``), anything else raises ValueError naming the function (on CUDA: an asynchronous
device-side assertion, which costs no host sync).

Differences kept on purpose: alpha may be any negative number to disable weighting (torchvision
accepts only -1); float16/bfloat16 inputs are computed and returned in float32 (as fvcore;
torchvision keeps half), float64 in float64 (as torchvision; fvcore casts to float32); FL* has a
shift beta (the paper's) and its soft-target form is linear in t (fvcore's is flat at t = 0.5);
(1 - p_t)^gamma is formed in log space (accurate where fvcore's and torchvision's 1 - p_t cancels).

One switch chooses the path: ``fused`` (default True; the config's ``MODEL.FOCAL.FUSED_LOSS``
reaches it through the loss modules). True takes the fused kernels (``fused.py``) when they apply;
False the reference formulas (``reference.py``). The reference formulas are also taken, with the
same results, where the kernels do not apply: under TorchScript (``torch.jit.script`` of these
functions compiles the reference formulas), tracing or an outer ``torch.compile``, for empty
inputs, for targets that require grad, and for gamma = 0 (CE), which is torch's own fused
``binary_cross_entropy_with_logits``, so that it equals it bitwise. Second and higher derivatives
are exact on both paths.
"""

from __future__ import annotations

from typing import Any

import torch

from focal_plugin.losses import reference
from focal_plugin.losses._common import alpha_weights, as_number
from focal_plugin.losses.fused import fused_loss, params_tensor, sum_kernel_shape

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
    """Whether a call takes the fused kernels: ``fused`` asks for them, and they apply (no tracing,
    no outer torch.compile, which fuses the reference formulas itself; a non-empty input; targets
    that need no gradient)."""
    return (
        fused
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and x.numel() > 0
        and (targets is None or not targets.requires_grad)
    )


def _prm(alpha: float, gamma: float, beta: float, x: Tensor):
    return params_tensor((*alpha_weights(alpha), gamma, beta), x.dtype, x.device,
                         torch.is_inference_mode_enabled())


def _sigmoid(owner: str, kind: str, inputs: Tensor, targets: Any, alpha: Any, gamma: Any, beta: Any,
             reduction: str, fused: bool) -> Tensor:
    """Eager body of the public sigmoid losses: the checks of ``reference``, then a path."""
    alpha, gamma, beta = (as_number(owner, "alpha", alpha), as_number(owner, "gamma", gamma),
                          as_number(owner, "beta", beta))
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(targets)
    reference.check_reduction(owner, reduction)
    reference.check_hyperparameters(owner, kind, alpha, gamma, beta)
    x, t = reference.prepare_sigmoid(owner, inputs, targets)
    ce = kind == "focal" and gamma == 0  # torch's fused BCE-with-logits, bitwise
    if ce or not use_fused_path(fused, x, t):
        return reference.reduce(reference.sigmoid_elementwise(kind, x, t, alpha, gamma, beta), reduction)
    shape = (-1,) if reduction == "none" else sum_kernel_shape(x)
    xf = x.contiguous().view(shape)
    tf = t.contiguous().view(shape)
    prm = _prm(alpha, gamma, beta, x)

    def ref(v: Tensor) -> Tensor:
        loss = reference.sigmoid_elementwise(kind, v, tf, alpha, gamma, beta)
        return loss if reduction == "none" else loss.sum()

    if reduction == "none":
        return fused_loss(f"{kind}_elem", xf, tf, prm, ref).view(x.shape)
    total = fused_loss(f"{kind}_sum", xf, tf, prm, ref)
    return total if reduction == "sum" else total / xf.numel()


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    fused: bool = True,
) -> Tensor:
    """Focal loss of RetinaNet (https://arxiv.org/abs/1708.02002, eq. 5); mirrors
    ``torchvision.ops.sigmoid_focal_loss`` (same arguments, defaults and errors):

        FL = -alpha_t (1 - p_t)^gamma log(p_t),   p = sigmoid(inputs)

    p_t = p where targets == 1 and 1 - p where targets == 0; alpha_t = alpha for positives and
    1 - alpha for negatives (no weighting when alpha < 0). For soft targets t in [0, 1] (label
    smoothing) the general form torchvision uses: p_t = p t + (1 - p)(1 - t), -log(p_t) becomes
    binary_cross_entropy_with_logits(inputs, t), alpha_t = alpha t + (1 - alpha)(1 - t).
    gamma = 0 gives the alpha-balanced cross entropy (bitwise ``F.binary_cross_entropy_with_logits``
    for alpha < 0), and FL <= that CE elementwise. (1 - p_t)^gamma is computed in log space, so
    loss and gradient are finite for all finite logits and every gamma >= 0.

    Args:
        inputs: float tensor of any shape: the logits.
        targets: tensor of the same shape or broadcastable with it, values in [0, 1]: 0 for the
            negative and 1 for the positive class, or a soft target.
        alpha: weight of positives in [0, 1]; negative disables alpha-weighting. Default 0.25.
        gamma: focusing parameter >= 0. Default 2.
        reduction: "none" | "mean" | "sum".
        fused: True (default) takes the fused kernels where they apply; False the reference
            formulas. Same results either way.
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    Raises:
        ValueError: reduction, alpha or gamma out of range, or targets outside [0, 1] (on CUDA
            an asynchronous device-side assertion instead, to avoid a host sync).
    """
    owner = "sigmoid_focal_loss"
    if not torch.jit.is_scripting():
        return _sigmoid(owner, "focal", inputs, targets, alpha, gamma, 0.0, reduction, fused)
    return reference.sigmoid_loss(owner, "focal", inputs, targets, alpha, gamma, 0.0, reduction)


def sigmoid_focal_loss_star(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = -1,
    gamma: float = 1,
    reduction: str = "none",
    beta: float = 0.0,
    fused: bool = True,
) -> Tensor:
    """FL* of RetinaNet's Appendix A (https://arxiv.org/abs/1708.02002); mirrors
    ``fvcore.nn.sigmoid_focal_loss_star`` (same arguments and defaults, plus ``beta``):

        p*_t = sigmoid(gamma x_t + beta),   FL* = -alpha_t log(p*_t) / gamma

    x_t = x for positives and -x for negatives, alpha_t as in the focal loss (no weighting when
    alpha < 0, the default). With beta = 0 this is fvcore's FL*. The defaults are fvcore's, not the
    paper's: Table 3 used gamma = 2, beta = 1 (or gamma = 4, beta = 0) with alpha = 0.25, which the
    config (``MODEL.FOCAL``) states. Soft targets t in [0, 1]: t FL*(x_t = x) + (1 - t) FL*(x_t =
    -x), linear in t (equal to binary_cross_entropy_with_logits for gamma = 1, beta = 0); fvcore
    uses x_t = (2t - 1) x instead, which agrees for t in {0, 1} only.

    Args:
        inputs: float tensor of any shape: the logits.
        targets: tensor of the same shape or broadcastable with it, values in [0, 1].
        alpha: weight of positives in [0, 1]; negative disables it. Default -1.
        gamma: steepness > 0. Default 1.
        reduction: "none" | "mean" | "sum".
        beta: shift, any finite number. Default 0.
        fused: True (default) takes the fused kernels where they apply; False the reference formulas.
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    Raises:
        ValueError: reduction, alpha, gamma or beta out of range, or targets outside [0, 1].
    """
    owner = "sigmoid_focal_loss_star"
    if not torch.jit.is_scripting():
        return _sigmoid(owner, "star", inputs, targets, alpha, gamma, beta, reduction, fused)
    return reference.sigmoid_loss(owner, "star", inputs, targets, alpha, gamma, beta, reduction)


def sigmoid_ce_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = -1,
    reduction: str = "none",
    fused: bool = True,
) -> Tensor:
    """Binary cross entropy on sigmoid outputs, optionally alpha-balanced (§3.1):

        CE = -alpha_t log(p_t)

    Equals ``sigmoid_focal_loss`` with gamma = 0; its values are those of
    ``F.binary_cross_entropy_with_logits`` (bitwise when alpha < 0, the default; times alpha_t
    otherwise), soft targets included. Unlike that function the default reduction is "none" (as
    for the focal losses) and targets outside [0, 1] raise. Both paths call torch's fused
    ``binary_cross_entropy_with_logits``.

    Args:
        inputs: float tensor of any shape: the logits.
        targets: tensor of the same shape or broadcastable with it, values in [0, 1].
        alpha: weight of positives in [0, 1]; negative disables it. Default -1.
        reduction: "none" | "mean" | "sum".
        fused: accepted for a uniform signature (CE has one path).
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    Raises:
        ValueError: reduction or alpha out of range, or targets outside [0, 1].
    """
    owner = "sigmoid_ce_loss"
    if not torch.jit.is_scripting():
        return _sigmoid(owner, "focal", inputs, targets, alpha, 0.0, 0.0, reduction, fused)
    return reference.sigmoid_loss(owner, "focal", inputs, targets, alpha, 0.0, 0.0, reduction)


def softmax_focal_loss(
    inputs: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
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
        fused: True (default) takes the fused kernel where it applies; False the reference formulas.
    Returns:
        The loss with ``reduction`` applied; float32 (float64 for float64 inputs).
    Raises:
        ValueError: reduction, alpha or gamma out of range, inputs not (N, K+1), labels not
            integers in [0, K] (on CUDA the range is an asynchronous device-side assertion).
    """
    if not torch.jit.is_scripting():
        return _softmax(inputs, labels, alpha, gamma, reduction, fused)
    return reference.softmax_loss("softmax_focal_loss", inputs, labels, alpha, gamma, reduction)


def _softmax(inputs: Tensor, labels: Any, alpha: Any, gamma: Any, reduction: str, fused: bool) -> Tensor:
    owner = "softmax_focal_loss"
    alpha, gamma = as_number(owner, "alpha", alpha), as_number(owner, "gamma", gamma)
    if not use_fused_path(fused, inputs) or not isinstance(labels, torch.Tensor):
        return reference.softmax_loss(owner, inputs, _as_labels(owner, labels), alpha, gamma, reduction)
    reference.check_reduction(owner, reduction)
    reference.check_hyperparameters(owner, "focal", alpha, gamma, 0.0)
    reference.check_softmax_inputs(owner, inputs)
    labels = reference.check_labels(owner, inputs, labels, inputs.shape[1] - 1).contiguous()
    x = inputs.to(reference.compute_dtype(inputs.dtype)).contiguous()
    loss = fused_loss("softmax_rows", x, labels, _prm(alpha, gamma, 0.0, x),
                      lambda v: reference.softmax_per_sample(v, labels, alpha, gamma), rows=True)
    return reference.reduce(loss, reduction)


def _as_labels(owner: str, labels: Any) -> Tensor:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{owner}: labels must be an integer tensor, got {type(labels).__name__}")
    return labels


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
    labels = reference.check_labels(owner, logits, _as_labels(owner, labels), logits.shape[1])
    x = logits.to(reference.compute_dtype(logits.dtype))
    if not use_fused_path(fused, x):
        return reference.sigmoid_per_anchor(kind, x, labels, alpha, gamma, beta)
    labels = labels.contiguous()
    return fused_loss(f"{kind}_rows", x.contiguous(), labels, _prm(alpha, gamma, beta, x),
                      lambda v: reference.sigmoid_per_anchor(kind, v, labels, alpha, gamma, beta), rows=True)
