"""Reference formulas and argument checks of the sigmoid and softmax losses, differentiated by
autograd, all TorchScript-compatible: ``torch.jit.script`` of a public function compiles these.

They define what the fused kernels (``fused.py``) must reproduce, they are the path taken with
``fused=False`` (and under TorchScript, tracing and an outer ``torch.compile``), and they give
the fused path its second derivatives.

Notation (PAPER.md): x logit, t in [0, 1] the target, p = sigmoid(x),
p_t = p t + (1 - p)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t) (no weighting when alpha < 0).
For t in {0, 1} this is the paper's p_t with x_t = (2t - 1) x; for soft targets (label smoothing,
quality targets) it is the general form torchvision and fvcore use:

    CE  = binary_cross_entropy_with_logits(x, t)  = -t log p - (1 - t) log(1 - p)
    FL  = alpha_t CE (1 - p_t)^gamma,  1 - p_t = t sigmoid(-x) + (1 - t) sigmoid(x)
    FL* = alpha_t [t l*(x) + (1 - t) l*(-x)],  l*(v) = -log sigmoid(gamma v + beta) / gamma

FL* is linear in t (the expected FL* of a target drawn with probability t): it equals fvcore's
FL* for t in {0, 1} and the CE above for gamma = 1, beta = 0. (fvcore's x_t = (2t - 1) x makes the
loss flat in x at t = 0.5 and leaves label-smoothed targets without a finite minimiser.)

(1 - p_t)^gamma is evaluated as exp(gamma log(1 - p_t)) with log(1 - p_t) formed in log space
(``log_one_minus_pt``), so it is accurate, does not underflow for gamma < 1, and has a finite
derivative for every finite logit. CE is torch's own ``binary_cross_entropy_with_logits``, so
gamma = 0 (and alpha < 0) gives exactly its value, and FL <= CE holds elementwise.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ------------------------------------------------------------------------------ checks
def check_reduction(owner: str, reduction: str) -> None:
    """ValueError (with "Invalid", as torchvision's) unless reduction is none | mean | sum."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{owner}: Invalid reduction = '{reduction}': expected one of 'none', 'mean', 'sum'")


def check_hyperparameters(owner: str, kind: str, alpha: float, gamma: float, beta: float) -> None:
    """alpha <= 1 (negative disables alpha-weighting); 0 <= gamma <= 1000 (FL*: 0.001 <= gamma,
    |beta| <= 1e6). Raises ValueError naming the parameter, its value and the allowed range.

    The upper limits are float32's: beyond gamma = 1000, (1 - p_t)^gamma is 0 for every example
    (nothing is learnt) and gamma itself overflows near 3.4e38; FL*'s -log sigmoid(.) / gamma
    overflows for smaller gamma or larger |beta| (config fuzzing found NaN losses at step 1).
    Literal numbers, not module constants: this function is compiled by TorchScript."""
    if not alpha <= 1.0:  # also NaN
        raise ValueError(f"{owner}: Invalid alpha = {alpha}: expected a number in [0, 1], "
                         "or negative to disable alpha-weighting")
    if kind == "star":
        if not (0.001 <= gamma <= 1000.0):
            raise ValueError(f"{owner}: Invalid gamma = {gamma}: expected a number in "
                             "[0.001, 1000] (FL* overflows float32 beyond)")
        if not (-1e6 <= beta <= 1e6):
            raise ValueError(f"{owner}: Invalid beta = {beta}: expected a number in "
                             "[-1e6, 1e6] (FL* overflows float32 beyond)")
    elif not (0.0 <= gamma <= 1000.0):
        raise ValueError(f"{owner}: Invalid gamma = {gamma}: expected a number in [0, 1000] "
                         "(beyond, (1 - p_t)^gamma vanishes in float32)")


def _check_range(values: Tensor, lo: float, hi: float, message: str) -> None:
    """Raise ValueError(``message`` + the range found) unless every value lies in [lo, hi] (NaN
    fails). One ``aminmax`` pass on every device; on the CPU its two numbers are read, elsewhere a
    ``torch._assert_async`` on them (no host sync; the error surfaces at the next synchronisation)."""
    if values.numel() == 0:
        return
    v_lo, v_hi = torch.aminmax(values.detach())  # a check: no graph, no "requires_grad to scalar" warning
    if values.device.type != "cpu":
        torch._assert_async((v_lo >= lo).logical_and(v_hi <= hi), message)
    elif values.is_floating_point():
        lo_f, hi_f = float(v_lo), float(v_hi)
        if not (lo_f >= lo and hi_f <= hi):  # also NaN
            raise ValueError(f"{message}, got values in [{lo_f}, {hi_f}]")
    else:
        lo_i, hi_i = int(v_lo), int(v_hi)
        if lo_i < lo or hi_i > hi:
            raise ValueError(f"{message}, got values in [{lo_i}, {hi_i}]")


def check_targets(owner: str, t: Tensor) -> None:
    """Targets must lie in [0, 1] (ValueError on the CPU, ``_assert_async`` elsewhere)."""
    _check_range(t, 0.0, 1.0, f"{owner}: targets must lie in [0, 1]")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32, ints) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare_sigmoid(owner: str, inputs: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """(x, t) in the compute dtype, targets checked to lie in [0, 1] (before broadcasting, so each
    value is read once), then both broadcast to one shape."""
    x = inputs.to(compute_dtype(inputs.dtype))
    t = targets.to(device=x.device, dtype=x.dtype)
    check_targets(owner, t)
    if t.shape != x.shape:
        x, t = torch.broadcast_tensors(x, t)
    return x, t


def check_labels(owner: str, logits: Tensor, labels: Tensor, max_label: int) -> Tensor:
    """Integer (M,) labels in [0, max_label] (ValueError on the CPU, ``_assert_async`` elsewhere)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{owner}: labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{owner}: labels must have shape ({logits.shape[0]},) to match logits "
                         f"{list(logits.shape)}, got {list(labels.shape)}")
    labels = labels.to(device=logits.device, dtype=torch.long)
    _check_range(labels, 0.0, float(max_label),
                 f"{owner}: labels must lie in [0, {max_label}] ({max_label} = background)")
    return labels


def reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


# ------------------------------------------------------------------------------ formulas
def alpha_weight(t: Tensor, alpha: float) -> Tensor:
    """alpha_t = alpha t + (1 - alpha)(1 - t), written as torchvision writes it."""
    return alpha * t + (1 - alpha) * (1 - t)


def log_one_minus_pt(x: Tensor, t: Tensor, hard: bool = False) -> Tensor:
    """log(1 - p_t) = log(t sigmoid(-x) + (1 - t) sigmoid(x)), without forming p_t.

    ``hard`` (t in {0, 1}, e.g. targets from labels): log sigmoid(-x_t), x_t = (2t - 1) x.
    Otherwise, with e = exp(-|x|): 1 - p_t = sigmoid(|x|) r, r = s + (1 - s) e, where s is the
    weight of the larger of sigmoid(x), sigmoid(-x) (1 - t for x >= 0, t otherwise); so
    log(1 - p_t) = -log1p(e) + log r, the same value for t in {0, 1}. r is clamped at the smallest
    normal number, reached only by a hard target's easy side beyond |x| ~ 87 (float32) / 708
    (float64), where loss and gradient are below that number anyway: derivatives stay finite for
    every finite logit.
    """
    if hard:
        return F.logsigmoid(x * (1 - 2 * t))
    pos = x >= 0
    e = torch.exp(-torch.where(pos, x, -x))  # |x|, with the x >= 0 side's derivative at 0
    s = torch.where(pos, 1 - t, t)
    r = s + (1 - s) * e
    tiny = 2.2250738585072014e-308 if r.dtype == torch.float64 else 1.1754943508222875e-38  # finfo.tiny
    return torch.log(r.clamp_min(tiny)) - torch.log1p(e)


def sigmoid_elementwise(kind: str, x: Tensor, t: Tensor, alpha: float, gamma: float, beta: float,
                        hard: bool = False) -> Tensor:
    """Elementwise FL / CE (kind "focal"; gamma = 0 is CE) or FL* (kind "star"), t in [0, 1];
    ``hard``: t in {0, 1} is known (labels), which allows cheaper forms of the same values."""
    if kind == "focal":
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if gamma != 0:
            loss = loss * torch.exp(gamma * log_one_minus_pt(x, t, hard))
    elif kind == "star":
        if hard:
            loss = -F.logsigmoid(gamma * (x * (2 * t - 1)) + beta) / gamma
        else:
            pos = -F.logsigmoid(gamma * x + beta)
            neg = -F.logsigmoid(gamma * -x + beta)
            loss = (t * pos + (1 - t) * neg) / gamma
    else:
        raise ValueError(f"unknown sigmoid loss kind '{kind}'; expected 'focal' or 'star'")
    if alpha >= 0:
        loss = alpha_weight(t, alpha) * loss
    return loss


def sigmoid_loss(owner: str, kind: str, inputs: Tensor, targets: Tensor, alpha: float, gamma: float,
                 beta: float, reduction: str) -> Tensor:
    """A public sigmoid loss on the reference path: every check, then the formula, then the
    reduction. What ``torch.jit.script`` of a public function compiles."""
    check_reduction(owner, reduction)
    check_hyperparameters(owner, kind, alpha, gamma, beta)
    x, t = prepare_sigmoid(owner, inputs, targets)
    return reduce(sigmoid_elementwise(kind, x, t, alpha, gamma, beta), reduction)


def one_hot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(M,) labels in [0, K] (K = background) -> (M, K) {0, 1} targets; background is all zeros."""
    return F.one_hot(labels, num_classes + 1)[:, :num_classes].to(dtype)


def sigmoid_per_anchor(kind: str, x: Tensor, labels: Tensor, alpha: float, gamma: float,
                       beta: float) -> Tensor:
    """(M, K) logits, (M,) labels in [0, K] -> (M,) loss summed over the K classes."""
    t = one_hot_targets(labels, x.shape[1], x.dtype)
    return sigmoid_elementwise(kind, x, t, alpha, gamma, beta, True).sum(dim=1)


def softmax_per_sample(x: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
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


def softmax_loss(owner: str, inputs: Tensor, labels: Tensor, alpha: float, gamma: float,
                 reduction: str) -> Tensor:
    """The public softmax focal loss on the reference path (checks, formula, reduction)."""
    check_reduction(owner, reduction)
    check_hyperparameters(owner, "focal", alpha, gamma, 0.0)
    check_softmax_inputs(owner, inputs)
    labels = check_labels(owner, inputs, labels, inputs.shape[1] - 1)
    x = inputs.to(compute_dtype(inputs.dtype))
    return reduce(softmax_per_sample(x, labels, alpha, gamma), reduction)


def check_softmax_inputs(owner: str, inputs: Tensor) -> None:
    if inputs.dim() != 2 or inputs.shape[1] < 2:
        raise ValueError(f"{owner}: inputs must be (N, K+1) logits with K >= 1, got {list(inputs.shape)}")

