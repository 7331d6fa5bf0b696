"""Fused path: each loss and its gradient computed together, in one pass over the logits.

A custom ``torch.autograd.Function`` runs a kernel that returns the loss (elementwise, summed, or
summed per anchor) *and* d(loss)/d(logits) at once; backward scales that saved gradient by the
incoming gradient. The kernels are plain torch code compiled by ``torch.compile`` (Inductor:
one vectorized, multi-threaded C++ loop on CPU; a Triton kernel on CUDA), with

* ``dynamic=True``, the hyperparameters passed as 0-d tensors and detached inputs, so one
  compilation per kernel and dtype serves every shape and every (gamma, alpha, beta) (a single
  row runs eagerly rather than compile a size-1 specialization);
* the labels read directly by the per-anchor kernels: no (M, K) one-hot tensor is formed, and the
  sum over classes happens in the same loop;
* an automatic eager fallback (the same kernel functions run op by op) where ``torch.compile``
  is unavailable or fails, logged once. It is not a switch: results are the same.

Higher-order gradients: the saved gradient is a number, not a graph. When a graph of the gradient
is asked for (``create_graph=True``, e.g. gradient penalties, Hessian-vector products), backward
recomputes the gradient from the reference formulas (``reference.py``) by autograd, which is
differentiable to any order. For that the Function keeps its input alive until backward.

The CUDA path (Triton) is checked against the CPU reference by a test that runs where a CUDA
device exists (it passed on an H200, torch 2.11: results/bench/gpu_h200/); CI has no GPU.

Closed forms (PAPER.md, Appendix B, extended to targets t in [0, 1] as in ``reference.py``),
with e = exp(-|x|), sigmoid(x) and sigmoid(-x) formed from e, alpha_t = t a_pos + (1 - t) a_neg:

* FL / CE (CE = FL with gamma = 0): ce = binary_cross_entropy_with_logits(x, t) (called as such:
  eager it is torch's op, and Inductor's decomposition gives the same bits on the CPU), so
  FL <= BCE elementwise as in ``reference.py``;
  log(1 - p_t) = -log1p(e) + log r (see ``reference.log_one_minus_pt``), m = (1 - p_t)^gamma,
  loss = alpha_t m ce,
  dloss/dx = alpha_t m [(1 - t) sigmoid(x) - t sigmoid(-x) + gamma ce (1 - 2t) (e / r) / (1 + e)]
  (for t in {0, 1}: alpha_t (1 - p_t)^gamma (gamma p_t log p_t + p_t - 1) dx_t/dx, Appendix B).
* FL*: w+ = gamma x + beta, w- = -gamma x + beta,
  loss = alpha_t [t softplus(-w+) + (1 - t) softplus(-w-)] / gamma,
  dloss/dx = alpha_t [-t sigmoid(-w+) + (1 - t) sigmoid(-w-)] (for t = 1: alpha_t (p*_t - 1)).
* softmax FL is the binary FL of z = x_label - logsumexp_{j != label} x_j (then p_t = sigmoid(z)
  exactly), with dz/dx_j = [j = label] - [j != label] softmax_{j != label}(x)_j.

No intermediate overflows for finite logits, and (1 - p_t)^gamma = exp(gamma log(1 - p_t)) has a
finite derivative for every gamma >= 0.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from focal_plugin.losses._common import log_once

Tensor = torch.Tensor

# ------------------------------------------------------------------------------ math
# prm = (alpha_t of positives, alpha_t of negatives, gamma, beta): 0-d tensors, compute dtype.


def _sigmoids(x: Tensor, e: Tensor) -> Tuple[Tensor, Tensor]:
    """(sigmoid(x), sigmoid(-x)) from e = exp(-|x|), each accurate to its last bit."""
    inv = 1.0 / (1.0 + e)
    pos = x >= 0
    er = e * inv
    return torch.where(pos, inv, er), torch.where(pos, er, inv)


def _focal_math(x: Tensor, t: Tensor, prm: Tuple[Tensor, ...], hard: bool) -> Tuple[Tensor, Tensor]:
    """Elementwise FL (CE for gamma = 0): (loss, dloss/dx). ``hard``: t in {0, 1} (labels)."""
    a = t * prm[0] + (1.0 - t) * prm[1]
    g = prm[2]
    ax = torch.abs(x)
    e = torch.exp(-ax)
    l1p = torch.log1p(e)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # bitwise torch's, eager too
    s = torch.where(x >= 0, 1.0 - t, t)  # weight of the larger of sigmoid(+-x) in 1 - p_t
    big = s > 0
    if hard:  # s in {0, 1}: r = 1 or e
        log_r = torch.where(big, 0.0, -ax)
        e_r = torch.where(big, e, 1.0)
    else:
        r = s + (1.0 - s) * e
        log_r = torch.where(big, torch.log(r), -ax)
        e_r = torch.where(big, e / r, 1.0)
    am = a * torch.exp(g * (log_r - l1p))  # alpha_t (1 - p_t)^gamma
    sig_p, sig_n = _sigmoids(x, e)
    dce = (1.0 - t) * sig_p - t * sig_n  # sigmoid(x) - t
    dlog_q = (1.0 - 2.0 * t) * e_r / (1.0 + e)  # d log(1 - p_t) / dx
    return am * ce, am * (dce + g * ce * dlog_q)


def _softplus_neg(w: Tensor) -> Tuple[Tensor, Tensor]:
    """(-log sigmoid(w), sigmoid(-w))."""
    e = torch.exp(-torch.abs(w))
    loss = torch.log1p(e) - torch.clamp(w, max=0.0)
    q = torch.where(w >= 0, e, torch.ones_like(e)) / (1.0 + e)
    return loss, q


def _star_math(x: Tensor, t: Tensor, prm: Tuple[Tensor, ...], hard: bool) -> Tuple[Tensor, Tensor]:
    """Elementwise FL*: (loss, dloss/dx). ``hard``: t in {0, 1}, one log-sigmoid per element."""
    a = t * prm[0] + (1.0 - t) * prm[1]
    g, b = prm[2], prm[3]
    if hard:
        sgn = 2.0 * t - 1.0
        loss, q = _softplus_neg(g * (x * sgn) + b)
        return a * loss / g, -a * q * sgn
    lp, qp = _softplus_neg(g * x + b)
    ln, qn = _softplus_neg(g * -x + b)
    return a * (t * lp + (1.0 - t) * ln) / g, a * ((1.0 - t) * qn - t * qp)


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
    # binary FL of z with target 1 (x = z, t = 1)
    loss, dz = _focal_math(z, torch.ones_like(z), (a, a, prm[2], prm[3]), True)
    grad = dz.unsqueeze(1) * torch.where(is_t, 1.0, -(ex / se))
    return loss, grad


# ------------------------------------------------------------------------------ kernels
# One def per kernel: torch.compile keeps its cache per code object, so distinct functions keep
# the variants (float32 / float64, CPU / CUDA) of one kernel well under the recompile limit.
# "elem"/"sum" kernels take targets in [0, 1]; "rows" kernels take (M,) labels (hard targets);
# "sum" kernels take sum_kernel_shape views and return float64 partial sums (see _total).
def sum_kernel_shape(x: Tensor) -> Tuple[int, ...]:
    """The view a "sum" kernel takes of ``x``: (R, C) rows of the last dimension on CUDA when
    there are several rows of several elements, else flat (-1,) (see _total; flat keeps the
    compiled variants to one per dtype and grad mode, and a (1, N) or (N, 1) input compiled)."""
    if x.device.type == "cuda" and x.dim() >= 2 and x.shape[-1] > 1 and x.numel() > x.shape[-1]:
        return (-1, x.shape[-1])
    return (-1,)


def _total(loss: Tensor) -> Tensor:
    """Loss of ``sum_kernel_shape`` -> float64 partial sums, added up by run_kernel (SUM_KERNELS).

    (R, C) on CUDA -> (R,) row sums: Triton's reduction of a dynamic shape to one number is tuned
    for the first size Inductor compiles (or finds in its on-disk cache), and one compiled at
    300 x 33 then ran 5x (200k x 80) to 17x (2M x 80) slower on an H200. Flat -> one total,
    shape (1,): on the CPU its C++ loop does not depend on that size and fuses with the gradient's
    loop (row sums would store two (R, C) intermediates); a flat CUDA input (1-D logits) keeps the
    first-size tuning. float64: a float32 running sum over millions of elements drifts by ~1e-6.
    """
    if loss.dim() == 1:
        return loss.sum(dtype=torch.float64).reshape(1)
    return loss.sum(dim=-1, dtype=torch.float64)


def focal_elem(x, t, prm):
    return _focal_math(x, t, prm, False)


def focal_elem_loss(x, t, prm):
    return _focal_math(x, t, prm, False)[0]


def focal_sum(x, t, prm):
    loss, grad = _focal_math(x, t, prm, False)
    return _total(loss), grad


def focal_sum_loss(x, t, prm):
    return _total(_focal_math(x, t, prm, False)[0])


def focal_rows(x, labels, prm):
    loss, grad = _focal_math(x, _label_targets(x, labels), prm, True)
    return loss.sum(dim=1), grad


def focal_rows_loss(x, labels, prm):
    return _focal_math(x, _label_targets(x, labels), prm, True)[0].sum(dim=1)


def star_elem(x, t, prm):
    return _star_math(x, t, prm, False)


def star_elem_loss(x, t, prm):
    return _star_math(x, t, prm, False)[0]


def star_sum(x, t, prm):
    loss, grad = _star_math(x, t, prm, False)
    return _total(loss), grad


def star_sum_loss(x, t, prm):
    return _total(_star_math(x, t, prm, False)[0])


def star_rows(x, labels, prm):
    loss, grad = _star_math(x, _label_targets(x, labels), prm, True)
    return loss.sum(dim=1), grad


def star_rows_loss(x, labels, prm):
    return _star_math(x, _label_targets(x, labels), prm, True)[0].sum(dim=1)


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

#: kernels returning partial sums that run_kernel adds up into the total
SUM_KERNELS = frozenset(n for n in KERNELS if n.endswith(("_sum", "_sum_loss")))
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
    if device.type not in _COMPILE_DEVICES or device.type in _broken:
        return "eager"
    return "compiled"


def _would_specialize(x: Tensor) -> bool:
    # torch.compile specializes sizes 0 and 1: a single row or element would cost a compilation
    # of its own for no speed (the number of classes may be 1: that one is compiled).
    return x.dim() == 0 or x.shape[0] <= 1


def run_kernel(name: str, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...]):
    """Run kernel ``name`` on (x, aux = targets or labels, prm = hyperparameters): compiled
    where possible, else eagerly (logged once). A "sum" kernel's partial sums are added up here
    (a 0-d total in x's dtype)."""
    out = _run_kernel(name, x, aux, prm)
    if name not in SUM_KERNELS:
        return out
    if isinstance(out, tuple):
        return (out[0].sum().to(x.dtype),) + tuple(out[1:])
    return out.sum().to(x.dtype)


def _run_kernel(name: str, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...]):
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

    if isinstance(parts[0], tuple):
        return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))
    return torch.cat(parts)


# ------------------------------------------------------------------------------ autograd
class _FusedLoss(torch.autograd.Function):
    """Loss from a kernel that also returns d(loss)/d(x); backward scales that gradient.

    ``rows``: the loss is (M,) per-row sums of an (M, K) gradient; the incoming gradient is
    broadcast over the K columns. ``reference``: x -> the same loss by the reference formulas,
    differentiated by autograd when backward must itself be differentiable (create_graph=True).
    """

    @staticmethod
    def forward(ctx, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...], name: str, rows: bool,
                reference: Callable[[Tensor], Tensor]) -> Tensor:
        loss, grad = run_kernel(name, x, aux, prm)
        ctx.save_for_backward(x, grad)
        ctx.rows = rows
        ctx.reference = reference
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient must itself have a graph
            g = torch.autograd.grad(ctx.reference(x), x, grad_out, create_graph=True)[0]
        else:
            g = (grad_out.unsqueeze(1) if ctx.rows else grad_out) * grad
        return g, None, None, None, None, None


def fused_loss(name: str, x: Tensor, aux: Tensor, prm: Tuple[Tensor, ...],
               reference: Callable[[Tensor], Tensor], *, rows: bool = False) -> Tensor:
    """Loss of kernel ``name`` on (x, aux = targets or labels), differentiable w.r.t. x (to any
    order: higher orders through ``reference``, the same loss as a function of x).

    Without a gradient to compute (no_grad, or x not requiring grad) the loss-only variant of the
    kernel runs and nothing is saved.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _FusedLoss.apply(x, aux, prm, name, rows, reference)
    return run_kernel(name + "_loss", x, aux, prm)


@functools.lru_cache(maxsize=256)
def params_tensor(values: Tuple[float, ...], dtype: torch.dtype, device: torch.device,
                  inference: bool = False) -> Tuple[Tensor, ...]:
    """The kernels' hyperparameters (alpha_t of positives, of negatives, gamma, beta) as 0-d
    tensors, cached per (values, dtype, device, inference mode): no host-to-device copy per call
    on accelerators, new values reuse the compiled kernels, and 0-d tensors carry no size a
    symbolic shape could be confused with."""
    return tuple(torch.tensor(v, dtype=dtype, device=device) for v in values)
