"""The fused path (one-pass loss + gradient kernels) against the reference formulas.

Stated tolerances (both paths compute in float32 for float32/float16/bfloat16 inputs, which are
cast to float32 first, and in float64 for float64 inputs):
* values and gradients: rtol 1e-5 in float32 (the loss (1 - p_t)^gamma (-log p_t) has condition
  number ~ gamma |log(1 - p_t)| in log(1 - p_t), whose float32 rounding alone is ~1e-6 relative
  for gamma = 5; observed differences are <= 5e-6), 1e-11 in float64; atol 1e-7 x the largest
  |gradient| for gradients and 1e-6 x |value| for reduced (summed / averaged) losses.
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from focal_plugin.losses import (
    _common,
    build_classification_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
    softmax_focal_loss,
)
from focal_plugin.losses import fused as fused_mod

from helpers import GAMMAS, paper_loss

ALPHAS = (-1.0, 0.25, 0.75)
REDUCTIONS = ("none", "sum", "mean")
IN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _logits(shape, dtype=torch.float32):
    x = torch.randn(shape) * 4
    flat = x.view(-1)
    extremes = torch.tensor([-100.0, -60.0, -20.0, -1e-4, 0.0, 1e-4, 20.0, 60.0, 100.0])
    flat[: extremes.numel()] = extremes
    return x.to(dtype)


def _close(a, b, *, f64=False, grad=False, soft=False):
    """``soft``: soft targets, whose gradient p - t cancels where p ~ t: absolute error up to
    ~2 ulp of 1 (2.4e-7 in float32) in any formula, hence that atol for their gradients."""
    assert a.dtype == b.dtype and a.shape == b.shape
    scale = b.abs().max().item() if b.numel() else 0.0
    if f64:
        rtol, atol = 1e-11, 1e-13 * scale
    elif grad:
        rtol, atol = 1e-5, 1e-7 * scale + (2.4e-7 if soft else 0.0)
    else:
        rtol, atol = 1e-5, 1e-6 * scale if b.dim() == 0 else 1e-30
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _both(fn, x):
    """(value, grad) of fused and reference calls fn(x, fused), with a random weight per output.

    For float16/bfloat16 inputs the gradient compared is the float32 one (w.r.t. x.float()); the
    gradient reaching the half-precision leaf is checked to be exactly that, rounded.
    """
    out = []
    w = None
    for fused in (True, False):
        xi = x.detach().clone().requires_grad_()
        half = x.dtype in (torch.float16, torch.bfloat16)
        xf = xi.float() if half else xi
        val = fn(xf, fused)
        if w is None:
            w = torch.rand(val.shape, dtype=val.dtype) if val.dim() else torch.tensor(1.0, dtype=val.dtype)
        if half:
            g_leaf, g = torch.autograd.grad((val * w).sum(), [xi, xf])
            assert g_leaf.dtype == x.dtype
            torch.testing.assert_close(g_leaf, g.to(x.dtype), rtol=0, atol=0)
        else:
            g, = torch.autograd.grad((val * w).sum(), xi)
        out.append((val.detach(), g))
    return out


@pytest.mark.parametrize("soft", (False, True))
@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_fused_equals_reference(gamma, soft):
    x0 = _logits((64, 33))
    t = (torch.rand(64, 33) < 0.2).float()
    if soft:  # soft targets, with some hard ones among them
        t = torch.where(torch.rand(64, 33) < 0.7, torch.rand(64, 33), t)
    for dtype in IN_DTYPES:
        x = x0.to(dtype)
        for alpha in ALPHAS:
            for red in REDUCTIONS:
                calls = [lambda v, f, a=alpha, r=red: sigmoid_focal_loss(v, t, a, gamma, r, fused=f)]
                if gamma == 0:
                    calls.append(lambda v, f, a=alpha, r=red: sigmoid_ce_loss(v, t, a, r, fused=f))
                else:
                    for beta in (0.0, 1.0, -2.0):
                        calls.append(
                            lambda v, f, a=alpha, r=red, b=beta: sigmoid_focal_loss_star(
                                v, t, a, gamma, r, b, fused=f)
                        )
                for call in calls:
                    (vf, gf), (vr, gr) = _both(call, x)
                    assert vf.dtype == torch.float32
                    assert torch.isfinite(vf).all() and torch.isfinite(gf).all()
                    _close(vf, vr)
                    _close(gf, gr, grad=True, soft=soft)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_per_anchor_and_softmax_fused_equal_reference(gamma):
    K, M = 9, 200
    labels = torch.randint(0, K + 1, (M,))
    labels[:20] = K
    for dtype in (torch.float32, torch.bfloat16):
        for alpha in ALPHAS:
            names = [("sigmoid_focal", {"gamma": gamma, "alpha": alpha}),
                     ("softmax_focal", {"gamma": gamma, "alpha": alpha})]
            if gamma == 0:
                names.append(("sigmoid_ce", {"alpha": alpha}))
            else:
                names.append(("sigmoid_focal_star", {"gamma": gamma, "beta": 1.0, "alpha": alpha}))
            for name, params in names:
                mods = {f: build_classification_loss(name, fused=f, **params) for f in (True, False)}
                x = _logits((M, mods[True].num_logits(K)), dtype)
                (vf, gf), (vr, gr) = _both(lambda v, f, mods=mods: mods[f](v, labels), x)
                assert vf.shape == (M,) and vf.dtype == torch.float32
                _close(vf, vr)
                _close(gf, gr, grad=True)


@pytest.mark.parametrize("gamma", (0.0, 0.2, 2.0, 5.0))
def test_float64_fused_equals_reference(gamma):
    x = _logits((40, 7), torch.float64)
    t = (torch.rand(40, 7) < 0.3).double()
    soft = torch.rand(40, 7, dtype=torch.float64)
    labels = torch.randint(0, 8, (40,))
    calls = [
        lambda v, f: sigmoid_focal_loss(v, t, 0.25, gamma, "none", fused=f),
        lambda v, f: sigmoid_focal_loss(v, t, 0.25, gamma, "sum", fused=f),
        lambda v, f: sigmoid_focal_loss_star(v, t, 0.25, max(gamma, 0.5), "none", 1.0, fused=f),
        lambda v, f: paper_loss("sigmoid_focal", gamma=gamma, fused=f)(v, labels),
        lambda v, f: sigmoid_focal_loss(v, soft, 0.25, gamma, "sum", fused=f),
        lambda v, f: sigmoid_focal_loss_star(v, soft, 0.25, max(gamma, 0.5), "none", 1.0, fused=f),
        lambda v, f: softmax_focal_loss(v, labels % 7, 0.25, gamma, fused=f),
    ]
    for call in calls:
        (vf, gf), (vr, gr) = _both(call, x)
        assert vf.dtype == torch.float64
        _close(vf, vr, f64=True)
        _close(gf, gr, f64=True)


def test_fused_is_the_default_and_compiled():
    assert fused_mod.kernel_mode(torch.device("cpu")) == "compiled"
    x = torch.randn(10, 4, requires_grad=True)
    out = sigmoid_focal_loss(x, torch.zeros(10, 4), reduction="sum")
    assert type(out.grad_fn).__name__ == "_FusedLossBackward"
    out = paper_loss("sigmoid_focal")(x, torch.zeros(10, dtype=torch.long))
    assert type(out.grad_fn).__name__ == "_FusedLossBackward"


def test_no_recompilation_for_new_hyperparameters_or_shapes():
    from torch._dynamo.utils import counters

    labels = torch.randint(0, 6, (50,))
    build_classification_loss("sigmoid_focal", gamma=2.0, alpha=0.25)(torch.randn(50, 5, requires_grad=True),
                                                                      labels).sum().backward()
    before = sum(counters["frames"].values())
    for gamma, alpha, m in ((0.5, 0.75, 70), (5.0, -1.0, 123), (0.0, 0.5, 31)):
        mod = build_classification_loss("sigmoid_focal", gamma=gamma, alpha=alpha)
        mod(torch.randn(m, 5, requires_grad=True), torch.randint(0, 6, (m,))).sum().backward()
        mod(torch.randn(m, 11, requires_grad=True), torch.randint(0, 12, (m,))).sum().backward()
    assert sum(counters["frames"].values()) == before


def test_no_grad_uses_loss_only_kernels():
    x = _logits((30, 6))
    t = (torch.rand(30, 6) < 0.3).float()
    labels = torch.randint(0, 7, (30,))
    mods = [paper_loss(n) for n in ("sigmoid_focal", "sigmoid_focal_star", "softmax_focal")]
    for fn in (
        lambda v: sigmoid_focal_loss(v, t),
        lambda v: sigmoid_focal_loss(v, t, reduction="sum"),
        lambda v: sigmoid_focal_loss_star(v, t, 0.25, 2.0, "none", 1.0),
        lambda v: sigmoid_focal_loss_star(v, t, 0.25, 2.0, "mean", 1.0),
        *[lambda v, m=m: m(v if not m.is_softmax else torch.cat([v, v[:, :1]], 1), labels) for m in mods],
    ):
        with_grad = fn(x.clone().requires_grad_())
        with torch.no_grad():
            no_grad = fn(x.clone().requires_grad_())
        assert no_grad.grad_fn is None
        _close(no_grad, with_grad.detach())
        _close(fn(x), with_grad.detach())  # x without requires_grad


def test_backward_twice_with_retain_graph():
    x = torch.randn(8, 3, requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.zeros(8, 3), reduction="sum") * 3
    g1, = torch.autograd.grad(loss, x, retain_graph=True)
    g2, = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g1, g2)


def _hessian_example(fused):
    """Issue 10's example: h = d(sum(g^2))/dx, g = dL/dx, L = FL(x, t, sum) + x^2 / 2."""
    x = torch.tensor([0.3, -1.2], requires_grad=True)
    t = torch.tensor([1.0, 0.0])
    loss = sigmoid_focal_loss(x, t, reduction="sum", fused=fused) + 0.5 * (x ** 2).sum()
    if fused:
        assert "_FusedLoss" in str(loss.grad_fn.next_functions)
    g, = torch.autograd.grad(loss, x, create_graph=True)
    h, = torch.autograd.grad((g ** 2).sum(), x)
    return h


@pytest.mark.parametrize("fused", (True, False))
def test_second_derivative_issue_example(fused):
    h = _hessian_example(fused)
    torch.testing.assert_close(h, torch.tensor([0.5422, -2.4827]), rtol=0, atol=1e-4)
    # finite differences of g, in float64
    def grad_at(v):
        v = v.clone().requires_grad_()
        loss = sigmoid_focal_loss(v, torch.tensor([1.0, 0.0], dtype=v.dtype), reduction="sum", fused=False)
        return torch.autograd.grad(loss + 0.5 * (v ** 2).sum(), v)[0]
    x0 = torch.tensor([0.3, -1.2], dtype=torch.float64)
    g0, eps = grad_at(x0), 1e-6
    # d(sum g^2)/dx_i = sum_j 2 g_j dg_j/dx_i
    fd = torch.stack([(grad_at(x0 + eps * e) - grad_at(x0 - eps * e)) / (2 * eps) for e in torch.eye(2,
                     dtype=torch.float64)])
    torch.testing.assert_close(h.double(), 2 * fd @ g0, rtol=1e-5, atol=1e-6)


def _every_kernel(t, soft, labels, fused):
    """(kernel name, fn(x (6, 4) float64)) for every fused kernel (elem / sum / rows of focal, CE,
    FL*; softmax rows), each through the public function or module that runs it."""
    return [
        ("focal_elem", lambda v: sigmoid_focal_loss(v, t, 0.25, 2.0, "none", fused)),
        ("focal_elem soft", lambda v: sigmoid_focal_loss(v, soft, 0.25, 0.5, "none", fused)),
        ("focal_sum", lambda v: sigmoid_focal_loss(v, t, 0.25, 2.0, "sum", fused)),
        ("focal_sum mean soft", lambda v: sigmoid_focal_loss(v, soft, -1, 1.0, "mean", fused)),
        ("star_elem", lambda v: sigmoid_focal_loss_star(v, t, 0.25, 2.0, "none", 1.0, fused)),
        ("star_elem soft", lambda v: sigmoid_focal_loss_star(v, soft, 0.25, 4.0, "none", 0.0, fused)),
        ("star_sum", lambda v: sigmoid_focal_loss_star(v, soft, 0.25, 2.0, "sum", 1.0, fused)),
        ("focal_rows", lambda v: paper_loss("sigmoid_focal", fused=fused)(v, labels)),
        ("focal_rows CE", lambda v: paper_loss("sigmoid_ce", alpha=0.25, fused=fused)(v, labels)),
        ("star_rows", lambda v: paper_loss("sigmoid_focal_star", fused=fused)(v, labels)),
        ("softmax_rows", lambda v: paper_loss("softmax_focal", fused=fused)(v, labels % 4)),
        ("softmax_rows sum", lambda v: softmax_focal_loss(v, labels % 4, 0.25, 0.5, "sum", fused)),
    ]


@pytest.mark.parametrize("eager", (False, True))
def test_gradgradcheck_every_fused_kernel(monkeypatch, eager):
    """Second derivatives through every fused kernel are exact (gradgradcheck, float64), compiled
    and eager: backward with create_graph=True differentiates the reference formulas."""
    if eager:
        monkeypatch.setattr(fused_mod, "_broken", {"cpu"})
    x = (torch.randn(6, 4, dtype=torch.float64) * 3).requires_grad_()
    t = (torch.rand(6, 4) < 0.4).double()
    soft = torch.rand(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 4, 1, 3])
    for name, fn in _every_kernel(t, soft, labels, True):
        out = fn(x)
        assert "_FusedLoss" in str(out.grad_fn) + str(out.grad_fn.next_functions), name
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6), name
        assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-5), name
        # and the fused second derivative is the reference path's
        w = torch.rand_like(x)
        hs = []
        for fused_fn in (fn, dict(_every_kernel(t, soft, labels, False))[name]):
            g, = torch.autograd.grad(fused_fn(x).sum(), x, create_graph=True)
            hs.append(torch.autograd.grad((g * w).sum(), x)[0])
        torch.testing.assert_close(hs[0], hs[1], rtol=1e-12, atol=1e-14)


def test_first_order_gradient_still_from_the_kernel(monkeypatch):
    """Without create_graph the saved kernel gradient is used: the reference is not evaluated."""
    from focal_plugin.losses import reference

    calls = []
    monkeypatch.setattr(reference, "sigmoid_elementwise", lambda *a: calls.append(1))
    x = torch.randn(5, 4, requires_grad=True)
    sigmoid_focal_loss(x, torch.zeros(5, 4), reduction="sum").backward()
    assert calls == [] and x.grad is not None


def test_non_contiguous_and_broadcast_inputs():
    x = _logits((12, 20)).t()  # (20, 12), non-contiguous
    t = (torch.rand(20, 12) < 0.3).float()
    (vf, gf), (vr, gr) = _both(lambda v, f: sigmoid_focal_loss(v, t, fused=f), x)
    _close(vf, vr)
    _close(gf, gr, grad=True)
    row_t = (torch.rand(12) < 0.5).float()  # broadcast over rows
    (vf, gf), (vr, gr) = _both(lambda v, f: sigmoid_focal_loss(v, row_t, 0.25, 2.0, "sum", fused=f), x)
    _close(vf, vr)
    _close(gf, gr, grad=True)
    # targets that require grad fall back to the reference path (which differentiates them)
    tt = t.clone().requires_grad_()
    sigmoid_focal_loss(x, tt).sum().backward()
    assert tt.grad is not None


@pytest.mark.parametrize("chunk", (7, 1 << 17))
def test_eager_fallback_equals_compiled(monkeypatch, chunk):
    """The automatic eager fallback (after a failed compilation) runs the same kernels op by op,
    in chunks of rows, with the same results."""
    monkeypatch.setattr(fused_mod, "EAGER_CHUNK", chunk)
    x = _logits((50, 9))
    t = (torch.rand(50, 9) < 0.3).float()
    labels = torch.randint(0, 10, (50,))
    calls = [
        lambda v: sigmoid_focal_loss(v, t, 0.25, 0.5),
        lambda v: sigmoid_focal_loss(v, t, 0.25, 2.0, "sum"),
        lambda v: sigmoid_focal_loss_star(v, t, 0.25, 2.0, "mean", 1.0),
        lambda v: paper_loss("sigmoid_focal")(v, labels),
        lambda v: paper_loss("sigmoid_focal_star")(v, labels),
        lambda v: softmax_focal_loss(v, labels % 9, 0.25, 2.0),
    ]
    results = {}
    for mode in ("compiled", "eager"):
        monkeypatch.setattr(fused_mod, "_broken", {"cpu"} if mode == "eager" else set())
        assert fused_mod.kernel_mode(x.device) == mode
        outs = []
        for c in calls:
            xi = x.clone().requires_grad_()
            v = c(xi)
            g, = torch.autograd.grad(v.sum(), xi)
            outs.append((v.detach(), g))
        results[mode] = outs
    for (vc, gc), (ve, ge) in zip(results["compiled"], results["eager"]):
        _close(ve, vc)
        _close(ge, gc, grad=True)


def test_eager_fallback_gradcheck(monkeypatch):
    monkeypatch.setattr(fused_mod, "_broken", {"cpu"})
    monkeypatch.setattr(fused_mod, "EAGER_CHUNK", 8)
    x = (torch.randn(6, 4, dtype=torch.float64) * 3).requires_grad_()
    t = (torch.rand(6, 4) < 0.4).double()
    labels = torch.tensor([0, 4, 2, 4, 1, 3])
    for fn in (
        lambda v: sigmoid_focal_loss(v, t, 0.25, 0.5),
        lambda v: sigmoid_focal_loss_star(v, t, 0.25, 2.0, "sum", 1.0),
        lambda v: paper_loss("sigmoid_focal")(v, labels),
        lambda v: softmax_focal_loss(v, labels % 4),
    ):
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_compile_failure_falls_back_eagerly_and_logs_once(monkeypatch, caplog):
    def broken(name):
        def fail(*args):
            raise RuntimeError("no C++ compiler here")

        return fail

    monkeypatch.setattr(fused_mod, "compiled_kernel", broken)
    monkeypatch.setattr(fused_mod, "_broken", set())
    monkeypatch.setattr(_common, "_logged", set())
    x = _logits((20, 5))
    t = (torch.rand(20, 5) < 0.3).float()
    with caplog.at_level(logging.WARNING, logger="focal_plugin.losses"):
        for _ in range(3):
            (vf, gf), (vr, gr) = _both(lambda v, f: sigmoid_focal_loss(v, t, fused=f), x)
            _close(vf, vr)
            _close(gf, gr, grad=True)
    warnings = [r for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler here" in warnings[0].getMessage()
    assert fused_mod.kernel_mode(torch.device("cpu")) == "eager"


def test_per_anchor_never_builds_one_hot(monkeypatch):
    """The fused per-anchor path reads labels directly (F.one_hot is only used by the reference)."""
    def no_one_hot(*a, **k):
        raise AssertionError("one-hot targets built on the fused path")

    monkeypatch.setattr(F, "one_hot", no_one_hot)
    x = torch.randn(30, 4, requires_grad=True)
    paper_loss("sigmoid_focal")(x, torch.randint(0, 5, (30,))).sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0, 5.0))
def test_cuda_compiled_kernels_equal_cpu_reference(gamma):
    """The Triton kernels (Inductor on CUDA) against the reference formulas run on the CPU."""
    x = _logits((300, 33))
    t = (torch.rand(300, 33) < 0.2).float()
    soft = torch.where(torch.rand(300, 33) < 0.7, torch.rand(300, 33), t)
    labels = torch.randint(0, 34, (300,))
    star_gamma = max(gamma, 0.5)
    calls = [
        lambda v, f, d: sigmoid_focal_loss(v, t.to(d), 0.25, gamma, "none", fused=f),
        lambda v, f, d: sigmoid_focal_loss(v, soft.to(d), 0.25, gamma, "sum", fused=f),
        lambda v, f, d: sigmoid_focal_loss_star(v, t.to(d), 0.25, star_gamma, "none", 1.0, fused=f),
        lambda v, f, d: paper_loss("sigmoid_focal", gamma=gamma, fused=f)(v, labels.to(d)),
        lambda v, f, d: paper_loss("sigmoid_focal_star", gamma=star_gamma, fused=f)(v, labels.to(d)),
        lambda v, f, d: softmax_focal_loss(v, labels.to(d) % 33, 0.25, gamma, fused=f),
    ]
    for call in calls:
        xr = x.clone().requires_grad_()
        vr = call(xr, False, "cpu")
        gr, = torch.autograd.grad(vr.sum(), xr)
        xc = x.cuda().requires_grad_()
        vc = call(xc, True, "cuda")
        gc, = torch.autograd.grad(vc.sum(), xc)
        assert vc.device.type == "cuda"
        _close(vc.detach().cpu(), vr.detach())
        _close(gc.cpu(), gr, grad=True)
    assert fused_mod.kernel_mode(torch.device("cuda")) == "compiled"


def test_sum_kernels_reduce_rows_and_the_total_is_added_up_outside():
    """The compiled "sum" kernels return float64 partial sums that run_kernel adds up: one on the
    CPU, one per row elsewhere (Inductor tunes a dynamic-shape reduction to a single number for
    the first size it compiles, which made the total 5-17x slower on a GPU at sizes far from that
    first one, results/bench/gpu_h200)."""
    x = _logits((50 * 7,))
    t = (torch.rand(50 * 7) < 0.3).float()
    prm = fused_mod.params_tensor((0.25, 0.75, 2.0, 1.0), torch.float32, x.device)
    assert fused_mod.sum_kernel_shape(x.view(50, 7)) == (-1,)  # the CPU: flat, one total
    for name in ("focal_sum", "focal_sum_loss", "star_sum", "star_sum_loss"):
        assert name in fused_mod.SUM_KERNELS
        out = fused_mod.compiled_kernel(name)(x, t, prm)
        partial = out[0] if isinstance(out, tuple) else out
        assert partial.shape == (1,) and partial.dtype == torch.float64
        if torch.cuda.is_available():
            xc = x.cuda().view(50, 7)
            assert fused_mod.sum_kernel_shape(xc) == (-1, 7)
            cuda = fused_mod.compiled_kernel(name)(xc, t.cuda().view(50, 7), tuple(p.cuda() for p in prm))
            assert (cuda[0] if isinstance(cuda, tuple) else cuda).shape == (50,)
        total = fused_mod.run_kernel(name, x, t, prm)
        total = total[0] if isinstance(total, tuple) else total
        assert total.shape == () and total.dtype == torch.float32
        torch.testing.assert_close(total, partial.sum().float())
    assert not {n for n in fused_mod.KERNELS if n not in fused_mod.SUM_KERNELS and "sum" in n}
    # 1-D, (1, N), (N, 1) and 3-D inputs reach the same total as the reference
    for shape in ((40,), (1, 40), (40, 1), (3, 5, 7)):
        x = _logits(shape)
        t = (torch.rand(shape) < 0.3).float()
        for red in ("sum", "mean"):
            torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.25, 2.0, red),
                                       sigmoid_focal_loss(x, t, 0.25, 2.0, red, fused=False))


def test_sum_and_mean_of_many_shapes_stay_within_the_recompile_limit(caplog):
    """Sum/mean over 1-D, square, (1, N), (N, 1) and 2-D inputs, float32/float64, with and without
    grad: one flat view per call on the CPU, so the kernels never reach torch.compile's
    recompile limit (which would turn the fused path eager for the whole process)."""
    import itertools

    shapes = ((7, 7), (50, 7), (40,), (20, 6), (1, 33), (33, 1), (3, 4, 5), (9, 9))
    for (shape, dtype, grad), red in itertools.product(
            itertools.product(shapes, (torch.float32, torch.float64), (False, True)), ("sum", "mean")):
        x = _logits(shape, dtype).requires_grad_(grad)
        t = (torch.rand(shape) < 0.3).to(dtype)
        out = sigmoid_focal_loss(x, t, 0.25, 2.0, red)
        if grad:
            out.backward()
    assert fused_mod.kernel_mode(torch.device("cpu")) == "compiled"
    assert "failed" not in caplog.text
