"""Fused path: each loss and its gradient computed together, in one pass over the logits.

A custom ``torch.autograd.Function`` runs a kernel that returns the loss (elementwise, summed, or
summed per anchor) *and* d(loss)/d(logits) at once; backward only scales that saved gradient by
the incoming gradient. The kernels are plain torch code compiled by ``torch.compile`` (Inductor:
one vectorized, multi-threaded C++ loop on CPU; a Triton kernel on CUDA), with

* ``dynamic=True``, the hyperparameters passed as 0-d tensors and detached inputs, so one
  compilation per kernel and dtype serves every shape and every (gamma, alpha, beta) (a single
  row runs eagerly rather than compile a size-1 specialization);
* the labels read directly by the per-anchor kernels: no (M, K) one-hot tensor is formed, and the
  sum over classes happens in the same loop;
* an eager fallback (the same kernel functions run op by op) when compilation is unavailable or
  fails, logged once; ``FOCAL_PLUGIN_COMPILE=0`` selects it explicitly.

Only the CPU kernels are verified by this repository's tests; the CUDA path uses the same
Inductor compilation (Triton) but has not been run on a GPU here.

Closed forms (PAPER.md, Appendix B), with z = x_t = (2y - 1) x, p_t = sigmoid(z), alpha_t:

* FL / CE (CE = FL with gamma = 0):
  loss = -alpha_t (1 - p_t)^gamma log p_t,
  dloss/dz = alpha_t (1 - p_t)^gamma (gamma p_t log p_t + p_t - 1), dloss/dx = (2y - 1) dloss/dz.
* FL*: w = gamma z + beta, loss = -alpha_t log sigmoid(w) / gamma, dloss/dz = -alpha_t sigmoid(-w)
  (= alpha_t (p*_t - 1)).
* softmax FL is the binary FL of z = x_label - logsumexp_{j != label} x_j (then p_t = sigmoid(z)
  exactly), with dz/dx_j = [j = label] - [j != label] softmax_{j != label}(x)_j.

Every quantity is formed from e = exp(-|z|) and log1p(e), so no intermediate overflows, and
(1 - p_t)^gamma = exp(gamma log(1 - p_t)) has a finite derivative for every gamma >= 0.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Tuple

import torch
from torch.autograd.function import once_differentiable

from focal_plugin.losses._common import compile_enabled, log_once

Tensor = torch.Tensor

# ------------------------------------------------------------------------------ math
# prm = (alpha_t of positives, alpha_t of negatives, gamma, beta): 0-d tensors, compute dtype.


def _focal_z(z: Tensor, a: Tensor, g: Tensor) -> Tuple[Tensor, Tensor]:
    """Binary FL of z = x_t with weight a = alpha_t: (loss, dloss/dz)."""
    e = torch.exp(-torch.abs(z))
    l1p = torch.log1p(e)
    log_pt = torch.clamp(z, max=0.0) - l1p  # log sigmoid(z)
    log_1m_pt = -torch.clamp(z, min=0.0) - l1p  # log sigmoid(-z)
    mod = torch.exp(g * log_1m_pt)  # (1 - p_t)^gamma
    r = 1.0 / (1.0 + e)
    pos = z >= 0
    er = e * r
    p_t = torch.where(pos, r, er)
    q_t = torch.where(pos, er, r)  # 1 - p_t
    am = a * mod
    return -am * log_pt, am * (g * p_t * log_pt - q_t)


def _star_z(z: Tensor, a: Tensor, g: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Binary FL* of z = x_t with weight a = alpha_t: (loss, dloss/dz)."""
    w = g * z + b
    e = torch.exp(-torch.abs(w))
    log_pw = torch.clamp(w, max=0.0) - torch.log1p(e)  # log sigmoid(w)
    q_w = torch.where(w >= 0, e, torch.ones_like(e)) / (1.0 + e)  # sigmoid(-w)
    return -a * log_pw / g, -a * q_w


def _sigmoid_z(kind: str, x: Tensor, t: Tensor, prm: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
    """Elementwise (loss, dloss/dx) of the sigmoid family for {0, 1} targets t."""
    s = 2.0 * t - 1.0
    z = x * s
    a = prm[1] + t * (prm[0] - prm[1])
    if kind == "focal":
        loss, dz = _focal_z(z, a, prm[2])
    else:
        loss, dz = _star_z(z, a, prm[2], prm[3])
    return loss, dz * s


def _label_targets(x: Tensor, labels: Tensor) -> Tensor:
    cols = torch.arange(x.shape[1], device=x.device)
    return (labels.unsqueeze(1) == cols).to(x.dtype)


def _softmax_math(x: Tensor, labels: Tensor, prm: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
    """Per-sample softmax FL of (N, K+1) logits (background last): ((N,) loss, (N, K+1) grad)."""
    cols = torch.arange(x.shape[1], device=x.device)
    is_t = labels.unsqueeze(1) == cols
    others = torch.where(is_t, float("-inf"), x)
    m = torch.amax(others, dim=1, keepdim=True)
    ex = torch.exp(others - m)
    se = torch.sum(ex, dim=1, keepdim=True)
    x_t = torch.sum(torch.where(is_t, x, 0.0), dim=1)
    z = x_t - (m + torch.log(se)).squeeze(1)
    a = torch.where(labels < x.shape[1] - 1, prm[0], prm[1])
    loss, dz = _focal_z(z, a, prm[2])
    grad = dz.unsqueeze(1) * torch.where(is_t, 1.0, -(ex / se))
    return loss, grad


# ------------------------------------------------------------------------------ kernels
# One def per kernel: torch.compile keeps its cache per code object, so distinct functions keep
# the variants (float32 / float64, CPU / CUDA) of one kernel well under the recompile limit.
def focal_elem(x, t, prm):
    return _sigmoid_z("focal", x, t, prm)


def focal_elem_loss(x, t, prm):
    return _sigmoid_z("focal", x, t, prm)[0]


def _total(loss: Tensor) -> Tensor:
    # Accumulate in float64: a float32 running sum over millions of elements (Inductor's
    # vectorized accumulators) drifts by ~1e-6 relative; torch.sum's cascade does not.
    return loss.sum(dtype=torch.float64).to(loss.dtype)


def focal_sum(x, t, prm):
    loss, grad = _sigmoid_z("focal", x, t, prm)
    return _total(loss), grad


def focal_sum_loss(x, t, prm):
    return _total(_sigmoid_z("focal", x, t, prm)[0])


def focal_rows(x, labels, prm):
    loss, grad = _sigmoid_z("focal", x, _label_targets(x, labels), prm)
    return loss.sum(dim=1), grad


def focal_rows_loss(x, labels, prm):
    return _sigmoid_z("focal", x, _label_targets(x, labels), prm)[0].sum(dim=1)


def star_elem(x, t, prm):
    return _sigmoid_z("star", x, t, prm)


def star_elem_loss(x, t, prm):
    return _sigmoid_z("star", x, t, prm)[0]


def star_sum(x, t, prm):
    loss, grad = _sigmoid_z("star", x, t, prm)
    return _total(loss), grad


def star_sum_loss(x, t, prm):
    return _total(_sigmoid_z("star", x, t, prm)[0])


def star_rows(x, labels, prm):
    loss, grad = _sigmoid_z("star", x, _label_targets(x, labels), prm)
    return loss.sum(dim=1), grad


def star_rows_loss(x, labels, prm):
    return _sigmoid_z("star", x, _label_targets(x, labels), prm)[0].sum(dim=1)


def softmax_rows(x, labels, prm):
    return _softmax_math(x, labels, prm)


def softmax_rows_loss(x, labels, prm):
    return _softmax_math(x, labels, prm)[0]


KERNELS: Dict[str, Callable] = {
    f.__name__: f
    for f in (
        focal_elem, focal_elem_loss, focal_sum, focal_sum_loss, focal_rows, focal_rows_loss,
        star_elem, star_elem_loss, star_sum, star_sum_loss, star_rows, star_rows_loss,
        softmax_rows, softmax_rows_loss,
    )
}

_COMPILE_DEVICES = ("cpu", "cuda")
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # not a compile failure
_compiled: Dict[str, Callable] = {}
_broken: set = set()


def compiled_kernel(name: str) -> Callable:
    """The ``torch.compile``'d kernel ``name`` (created on first use; compiles on first call)."""
    fn = _compiled.get(name)
    if fn is None:
        fn = torch.compile(KERNELS[name], dynamic=True, fullgraph=True)
        _compiled[name] = fn
    return fn


def kernel_mode(device: torch.device) -> str:
    """"compiled" or "eager": how the fused kernels run on ``device`` in this process now."""
    if not compile_enabled() or device.type not in _COMPILE_DEVICES or device.type in _broken:
        return "eager"
    return "compiled"


def _would_specialize(x: Tensor) -> bool:
    # torch.compile specializes sizes 0 and 1: a single row or element would cost a compilation
    # of its own for no speed (the number of classes may be 1: that one is compiled).
    return x.dim() == 0 or x.shape[0] <= 1


def run_kernel(name: str, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...]):
    """Run kernel ``name`` on (x, aux = targets or labels, prm = hyperparameters): compiled
    where possible, else eagerly (logged once)."""
    # Detached inputs: the kernels differentiate nothing, and one requires_grad/view state means
    # one compiled graph per kernel and dtype.
    args = (x.detach(), aux.detach(), prm)
    device = x.device
    if kernel_mode(device) == "compiled" and not _would_specialize(x):
        try:
            # no_grad: the kernels return gradients themselves (and one grad mode = one graph);
            # autocast off: they compute in x's dtype (float32/float64).
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                return compiled_kernel(name)(*args)
        except _OOM:
            raise
        except Exception as exc:  # no C++ compiler / Triton, or an Inductor failure
            _broken.add(device.type)
            log_once(
                ("compile-failed", device.type),
                logging.WARNING,
                "focal_plugin.losses: torch.compile of the fused loss kernels failed on %s (%s: %s); "
                "running the same fused kernels eagerly (slower, same results).",
                device.type, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
            )
    elif not compile_enabled():
        log_once("compile-disabled", logging.INFO,
                 "focal_plugin.losses: FOCAL_PLUGIN_COMPILE=0, fused loss kernels run eagerly.")
    with torch.no_grad():
        if device.type in _COMPILE_DEVICES:
            with torch.autocast(device.type, enabled=False):
                return run_eager(name, *args)
        return run_eager(name, *args)


#: elements per chunk of the eager kernels: their ~30 temporaries then stay in cache.
EAGER_CHUNK = 1 << 17


def run_eager(name: str, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...]):
    """Kernel ``name`` run op by op, over chunks of rows so temporaries stay small."""
    fn = KERNELS[name]
    row = max(1, x[0].numel()) if x.dim() > 0 and x.shape[0] > 0 else 1
    step = max(1, EAGER_CHUNK // row)
    if x.dim() == 0 or x.shape[0] <= step:
        return fn(x, aux, prm)
    parts = [fn(x[i:i + step], aux[i:i + step], prm) for i in range(0, x.shape[0], step)]

    def combine(chunks):
        if chunks[0].dim() == 0:  # a "sum" kernel's total
            return torch.stack(chunks).sum()
        return torch.cat(chunks)

    if isinstance(parts[0], tuple):
        return tuple(combine([p[k] for p in parts]) for k in range(len(parts[0])))
    return combine(parts)


# ------------------------------------------------------------------------------ autograd
class _FusedLoss(torch.autograd.Function):
    """Loss from a kernel that also returns d(loss)/d(x); backward scales that gradient.

    ``rows``: the loss is (M,) per-row sums of an (M, K) gradient; the incoming gradient is
    broadcast over the K columns. Not twice differentiable (use the reference path for that).
    """

    @staticmethod
    def forward(ctx, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...], name: str, rows: bool) -> Tensor:
        loss, grad = run_kernel(name, x, aux, prm)
        ctx.save_for_backward(grad)
        ctx.rows = rows
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        if ctx.rows:
            grad_out = grad_out.unsqueeze(1)
        return grad_out * grad, None, None, None, None


def fused_loss(name: str, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...], *, rows: bool = False) -> Tensor:
    """Loss of kernel ``name`` on (x, aux = targets or labels), differentiable w.r.t. x.

    Without a gradient to compute (no_grad, or x not requiring grad) the loss-only variant of the
    kernel runs and nothing is saved.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _FusedLoss.apply(x, aux, prm, name, rows)
    return run_kernel(name + "_loss", x, aux, prm)


_prm_cache: Dict[tuple, Tuple[Tensor, ...]] = {}


def params_tensor(values: Tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tuple[Tensor, ...]:
    """The kernels' hyperparameters (alpha_t of positives, of negatives, gamma, beta) as 0-d
    tensors, cached per (values, dtype, device): new values reuse the compiled kernels, and 0-d
    tensors carry no size a symbolic shape could be confused with."""
    key = (values, dtype, device, torch.is_inference_mode_enabled())
    prm = _prm_cache.get(key)
    if prm is None:
        if len(_prm_cache) > 256:
            _prm_cache.clear()
        prm = tuple(torch.tensor(v, dtype=dtype, device=device) for v in values)
        _prm_cache[key] = prm
    return prm
