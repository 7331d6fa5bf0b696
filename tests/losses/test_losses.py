"""The loss library against PAPER.md: values, Appendix B gradients, gradcheck,
agreement with fvcore / torchvision / F.cross_entropy, numerics, module and registry contract.

Tolerances: float64 checks of formulas are exact to 1e-12 relative; float32 results are compared
at 1e-6 relative where the other side is itself accurate (see ``test_matches_fvcore``)."""

import functools
import math

import fvcore.nn
import pytest
import torch
import torch.nn.functional as F
import torchvision.ops

from focal_plugin.losses import (
    LOSS_REGISTRY,
    ClassificationLoss,
    build_classification_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
    softmax_focal_loss,
)

from helpers import GAMMAS, paper_loss

PATHS = (True, False)  # fused, reference
F64 = torch.float64


def _binary(shape, p=0.3, dtype=torch.float32):
    return (torch.rand(shape) < p).to(dtype)


def _naive_fl(x, t, alpha, gamma):
    """-alpha_t (1 - p_t)^gamma log p_t written literally (float64, moderate logits only)."""
    p = torch.sigmoid(x)
    p_t = torch.where(t == 1, p, 1 - p)
    loss = -((1 - p_t) ** gamma) * torch.log(p_t)
    if alpha >= 0:
        loss = loss * _alpha_t(t, alpha)
    return loss


def _alpha_t(t, alpha):
    return alpha * t + (1 - alpha) * (1 - t)


def _truth_fl(x, t, alpha, gamma):
    """The focal loss in float64 with log p_t = -log1p(exp(-x_t)) and 1 - p_t = sigmoid(-x_t),
    accurate (unlike 1 - sigmoid(x_t)) for every logit."""
    x, t = x.double(), t.double()
    x_t = torch.where(t == 1, x, -x)
    loss = torch.sigmoid(-x_t) ** gamma * torch.log1p(torch.exp(-x_t))
    return loss * _alpha_t(t, alpha) if alpha >= 0 else loss


# ------------------------------------------------------------------------------ values (PAPER.md)
@pytest.mark.parametrize("fused", PATHS)
def test_fl_vs_ce_at_pt_090_is_exactly_100x(fused):
    # p_t = 0.9 for a positive (x = log 9) and for a negative (x = -log 9)
    x = torch.tensor([math.log(9.0), -math.log(9.0)], dtype=F64)
    t = torch.tensor([1.0, 0.0], dtype=F64)
    ce = sigmoid_ce_loss(x, t, fused=fused)
    fl = sigmoid_focal_loss(x, t, -1, 2.0, fused=fused)
    torch.testing.assert_close(ce, torch.full((2,), -math.log(0.9), dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(ce / fl, torch.full((2,), 100.0, dtype=F64), rtol=1e-12, atol=0)
    # and about 1000x at p_t ~ 0.968 (1 / 0.032^2 = 977)
    x2 = torch.tensor([math.log(0.968 / 0.032)], dtype=F64)
    ratio = sigmoid_ce_loss(x2, torch.ones(1, dtype=F64), fused=fused) / sigmoid_focal_loss(
        x2, torch.ones(1, dtype=F64), -1, 2.0, fused=fused
    )
    assert 950 < ratio.item() < 1050


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("alpha", (-1.0, 0.1, 0.25, 0.75, 0.999))
def test_gamma_zero_is_alpha_balanced_ce(fused, alpha):
    x = torch.randn(50, 7, dtype=F64) * 4
    t = _binary((50, 7), dtype=F64)
    fl0 = sigmoid_focal_loss(x, t, alpha, 0.0, fused=fused)
    ce = sigmoid_ce_loss(x, t, alpha, fused=fused)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    alpha_t = _alpha_t(t, alpha) if alpha >= 0 else torch.ones_like(t)
    # 1e-9: torch's BCE uses log(exp(.) + exp(.)) where we use log1p, ~1e-10 apart on tiny losses
    torch.testing.assert_close(fl0, alpha_t * bce, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(ce, alpha_t * bce, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(fl0, ce, rtol=1e-14, atol=0)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_fl_equals_formula(fused, gamma):
    x = torch.linspace(-12, 12, 97, dtype=F64).repeat(2)
    t = torch.cat([torch.ones(97, dtype=F64), torch.zeros(97, dtype=F64)])
    for alpha in (-1.0, 0.25, 0.75):
        got = sigmoid_focal_loss(x, t, alpha, gamma, fused=fused)
        torch.testing.assert_close(got, _naive_fl(x, t, alpha, gamma), rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma,beta", [(2.0, 1.0), (4.0, 0.0), (1.0, 0.0), (0.5, -2.0), (3.0, 5.0)])
def test_fl_star_equals_formula(fused, gamma, beta):
    # |gamma x_t + beta| <= 12, where the literal -log(sigmoid(.)) is itself accurate to 1e-10
    x = torch.linspace(-1, 1, 81, dtype=F64).repeat(2) * (12 - abs(beta)) / gamma
    t = torch.cat([torch.ones(81, dtype=F64), torch.zeros(81, dtype=F64)])
    x_t = torch.where(t == 1, x, -x)
    naive = -torch.log(torch.sigmoid(gamma * x_t + beta)) / gamma
    got = sigmoid_focal_loss_star(x, t, -1, gamma, "none", beta, fused=fused)
    torch.testing.assert_close(got, naive, rtol=1e-10, atol=1e-300)
    got_a = sigmoid_focal_loss_star(x, t, 0.25, gamma, "none", beta, fused=fused)
    torch.testing.assert_close(got_a, naive * _alpha_t(t, 0.25), rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma", (1.0, 2.0, 4.0))
@pytest.mark.parametrize("alpha", (-1.0, 0.25))
def test_fl_star_beta0_matches_fvcore(fused, gamma, alpha):
    x = torch.randn(300, 9) * 3
    t = _binary((300, 9))
    for red in ("none", "sum", "mean"):
        ours = sigmoid_focal_loss_star(x, t, alpha, gamma, red, fused=fused)
        theirs = fvcore.nn.sigmoid_focal_loss_star(x, t, alpha, gamma, red)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ fvcore / torchvision
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.5, 0.5)])
def test_matches_fvcore(fused, gamma, alpha):
    """1e-6 relative. fvcore forms 1 - p_t in float32, which loses relative precision as p_t -> 1
    (its own error reaches 1e-5 at |x| ~ 4 and 10% at |x| ~ 12); elementwise we therefore compare
    on |x| <= 1.5, where fvcore is accurate to ~5e-7, and the summed loss on wide logits."""
    x = (torch.rand(2000, 80) * 3 - 1.5).requires_grad_()
    t = _binary((2000, 80), p=0.1)
    ours = sigmoid_focal_loss(x, t, alpha, gamma, fused=fused)
    theirs = fvcore.nn.sigmoid_focal_loss(x, t, alpha, gamma)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_theirs, = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-7)

    xw = (torch.randn(2000, 80) * 4).requires_grad_()
    for red in ("sum", "mean"):
        ours = sigmoid_focal_loss(xw, t, alpha, gamma, red, fused=fused)
        theirs = fvcore.nn.sigmoid_focal_loss(xw, t, alpha, gamma, red)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
        g_ours, = torch.autograd.grad(ours, xw)
        g_theirs, = torch.autograd.grad(theirs, xw)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-6 * g_theirs.abs().max().item())


@pytest.mark.parametrize("fused", PATHS)
def test_more_accurate_than_fvcore_and_matches_float64(fused):
    """The CE factor is torch's BCE-with-logits (as in fvcore and torchvision); the modulating
    factor alpha_t (1 - p_t)^gamma is accurate to 3e-6 relative everywhere (torchvision's test
    "correct ratio", on wide logits), where fvcore's 1 - p_t cancels (error > 1e-2). Where BCE
    itself is accurate (no cancellation: positives, and negatives with x >= 0) the loss is."""
    x = torch.randn(20000) * 6
    t = _binary(20000)
    truth = _truth_fl(x, t, 0.25, 2.0)
    ok = truth > 1e-30  # float32's normal range (the smallest losses here are ~1e-80)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").double()
    xd, td = x.double(), t.double()
    ratio_truth = torch.where(td == 1, torch.sigmoid(-xd), torch.sigmoid(xd)) ** 2 * _alpha_t(td, 0.25)
    ok_ratio = ok & (bce > 0)
    ours = sigmoid_focal_loss(x, t, fused=fused).double()
    assert ((ours / bce - ratio_truth).abs()[ok_ratio] / ratio_truth[ok_ratio]).max() < 3e-6
    theirs = fvcore.nn.sigmoid_focal_loss(x, t, 0.25, 2.0).double()
    assert ((theirs / bce - ratio_truth).abs()[ok_ratio] / ratio_truth[ok_ratio]).max() > 1e-2
    ok_ce = ok & ((t == 1) | (x >= 0))
    assert ((ours - truth).abs()[ok_ce] / truth[ok_ce]).max() < 3e-6
    assert ((theirs - truth).abs()[ok_ce] / truth[ok_ce]).max() > 1e-2  # fvcore's 1 - p_t cancels


@pytest.mark.parametrize("fused", PATHS)
def test_matches_torchvision_and_defaults(fused):
    x = torch.rand(500, 20) * 3 - 1.5
    t = _binary((500, 20))
    # same positional order and defaults as torchvision (alpha=0.25, gamma=2, reduction="none")
    torch.testing.assert_close(
        sigmoid_focal_loss(x, t, fused=fused), torchvision.ops.sigmoid_focal_loss(x, t), rtol=1e-6, atol=0
    )
    for red in ("sum", "mean"):
        torch.testing.assert_close(
            sigmoid_focal_loss(x, t, 0.25, 2, red, fused=fused),
            torchvision.ops.sigmoid_focal_loss(x, t, 0.25, 2, red), rtol=1e-6, atol=0,
        )


@pytest.mark.parametrize("fused", PATHS)
def test_reductions(fused):
    x = torch.randn(40, 6)
    t = _binary((40, 6))
    for fn in (
        lambda r: sigmoid_focal_loss(x, t, 0.25, 2.0, r, fused=fused),
        lambda r: sigmoid_ce_loss(x, t, 0.25, r, fused=fused),
        lambda r: sigmoid_focal_loss_star(x, t, 0.25, 2.0, r, 1.0, fused=fused),
    ):
        none = fn("none")
        assert none.shape == x.shape
        torch.testing.assert_close(fn("sum"), none.sum(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fn("mean"), none.mean(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="Invalid reduction"):
        sigmoid_focal_loss(x, t, reduction="avg")


# ------------------------------------------------------------------------------ softmax
@pytest.mark.parametrize("fused", PATHS)
def test_softmax_gamma0_is_cross_entropy(fused):
    x = torch.randn(300, 11, dtype=F64) * 3
    labels = torch.randint(0, 11, (300,))
    for red in ("none", "sum", "mean"):
        torch.testing.assert_close(
            softmax_focal_loss(x, labels, -1, 0.0, red, fused=fused),
            F.cross_entropy(x, labels, reduction=red), rtol=1e-12, atol=1e-12,
        )


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_softmax_equals_formula(fused, gamma):
    x = torch.randn(200, 6, dtype=F64) * 3
    labels = torch.randint(0, 6, (200,))
    p_t = torch.softmax(x, 1).gather(1, labels[:, None]).squeeze(1)
    for alpha in (-1.0, 0.1, 0.25, 0.75):
        naive = -((1 - p_t) ** gamma) * torch.log(p_t)
        if alpha >= 0:  # foreground = label < K = 5, background last
            naive = naive * _alpha_t((labels < 5).to(F64), alpha)
        torch.testing.assert_close(
            softmax_focal_loss(x, labels, alpha, gamma, fused=fused), naive, rtol=1e-10, atol=1e-300
        )


def test_softmax_input_checks():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        softmax_focal_loss(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels"):
        softmax_focal_loss(x, torch.tensor([0.0, 1, 2, 0]))
    with pytest.raises(ValueError, match="labels"):
        softmax_focal_loss(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="inputs"):
        softmax_focal_loss(torch.randn(4, 1), torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------ gradients
def _closed_forms(x, t, gamma, beta):
    """Appendix B with y in {-1, +1} (no alpha)."""
    y = 2 * t - 1
    p_t = torch.sigmoid(y * x)
    dce = y * (p_t - 1)
    dfl = y * (1 - p_t) ** gamma * (gamma * p_t * torch.log(p_t) + p_t - 1)
    pstar = torch.sigmoid(gamma * y * x + beta)
    dstar = y * (pstar - 1)
    return dce, dfl, dstar


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma", (0.5, 1.0, 2.0, 5.0))
def test_gradients_equal_appendix_b(fused, gamma):
    beta = 1.0
    x = torch.linspace(-8, 8, 65, dtype=F64).repeat(2).requires_grad_()
    t = torch.cat([torch.ones(65, dtype=F64), torch.zeros(65, dtype=F64)])
    dce, dfl, dstar = _closed_forms(x.detach(), t, gamma, beta)
    g, = torch.autograd.grad(sigmoid_ce_loss(x, t, fused=fused).sum(), x)
    torch.testing.assert_close(g, dce, rtol=1e-10, atol=1e-15)
    g, = torch.autograd.grad(sigmoid_focal_loss(x, t, -1, gamma, fused=fused).sum(), x)
    torch.testing.assert_close(g, dfl, rtol=1e-10, atol=1e-15)
    g, = torch.autograd.grad(sigmoid_focal_loss_star(x, t, -1, gamma, "sum", beta, fused=fused), x)
    torch.testing.assert_close(g, dstar, rtol=1e-10, atol=1e-15)
    # alpha_t scales the gradient
    g, = torch.autograd.grad(sigmoid_focal_loss(x, t, 0.25, gamma, fused=fused).sum(), x)
    torch.testing.assert_close(g, dfl * _alpha_t(t, 0.25), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("fused", PATHS)
def test_gradcheck_float64(fused):
    x = (torch.randn(5, 4, dtype=F64) * 3).requires_grad_()
    t = _binary((5, 4), p=0.4, dtype=F64)
    labels = torch.tensor([0, 4, 2, 4, 1])  # K = 4 sigmoid classes (label 4 = background)
    checks = []
    for red in ("none", "sum", "mean"):
        checks += [
            lambda v, r=red: sigmoid_focal_loss(v, t, 0.25, 2.0, r, fused=fused),
            lambda v, r=red: sigmoid_focal_loss(v, t, 0.5, 0.2, r, fused=fused),
            lambda v, r=red: sigmoid_ce_loss(v, t, 0.75, r, fused=fused),
            lambda v, r=red: sigmoid_focal_loss_star(v, t, 0.25, 2.0, r, 1.0, fused=fused),
        ]
    for name, params in (
        ("sigmoid_focal", {"gamma": 0.5, "alpha": 0.25}),
        ("sigmoid_ce", {"alpha": 0.25}),
        ("sigmoid_focal_star", {"gamma": 4.0, "beta": 0.0, "alpha": 0.25}),
    ):
        mod = build_classification_loss(name, fused=fused, **params)
        checks.append(lambda v, m=mod: m(v, labels))
    soft = build_classification_loss("softmax_focal", gamma=2.0, alpha=0.25, fused=fused)
    checks.append(lambda v: soft(v, torch.tensor([0, 3, 2, 3, 1])))
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


# ------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_finite_at_extreme_logits(fused, gamma):
    """Logits +-100 (p_t -> 1 and p_t -> 0) give finite loss and gradient for every gamma."""
    vals = torch.tensor([-100.0, -50.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 50.0, 100.0])
    x = vals.repeat(2)
    t = torch.cat([torch.ones(9), torch.zeros(9)])
    labels = torch.tensor([0, 1, 2, 3])
    for dtype in (torch.float32, F64, torch.float16, torch.bfloat16):
        xd = x.to(dtype).requires_grad_()
        losses = [
            sigmoid_focal_loss(xd, t, 0.25, gamma, fused=fused),
            sigmoid_ce_loss(xd, t, 0.25, fused=fused),
            sigmoid_focal_loss_star(xd, t, 0.25, max(gamma, 0.1), "none", 1.0, fused=fused),
        ]
        for loss in losses:
            g, = torch.autograd.grad(loss.sum(), xd)
            assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (dtype, loss, g)
        xs = (vals[:8].reshape(4, 2).to(dtype) * torch.tensor([1.0, -1.0]).to(dtype)).requires_grad_()
        for lab in (labels, torch.tensor([1, 0, 1, 0])):
            loss = softmax_focal_loss(xs, lab % 2, 0.25, gamma, fused=fused)
            g, = torch.autograd.grad(loss.sum(), xs)
            assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (dtype, loss, g)


@pytest.mark.parametrize("fused", PATHS)
def test_half_inputs_computed_and_returned_in_float32(fused):
    x32 = torch.randn(64, 10) * 4
    t = _binary((64, 10))
    for dtype in (torch.float16, torch.bfloat16):
        x = x32.to(dtype).requires_grad_()
        loss = sigmoid_focal_loss(x, t, fused=fused)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, sigmoid_focal_loss(x.detach().float(), t, fused=fused))
        loss.sum().backward()
        assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert sigmoid_focal_loss(x32.double(), t, fused=fused).dtype == F64


@pytest.mark.parametrize("fused", PATHS)
def test_autocast_bf16_logits(fused):
    lin = torch.nn.Linear(8, 5)
    feats = torch.randn(32, 8)
    labels = torch.randint(0, 6, (32,))
    loss_mod = paper_loss("sigmoid_focal", fused=fused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(feats)
        assert logits.dtype == torch.bfloat16
        per_anchor = loss_mod(logits, labels)
        t = F.one_hot(labels, 6)[:, :5]
        elem = sigmoid_focal_loss(logits, t)
    assert per_anchor.dtype == torch.float32 and elem.dtype == torch.float32
    torch.testing.assert_close(per_anchor, elem.sum(1), rtol=1e-6, atol=1e-6)
    per_anchor.sum().backward()
    assert torch.isfinite(lin.weight.grad).all()


# ------------------------------------------------------------------------------ modules, registry
EXPECTED = {
    "sigmoid_ce": (("alpha",), False),
    "sigmoid_focal": (("gamma", "alpha"), False),
    "sigmoid_focal_star": (("gamma", "beta", "alpha"), False),
    "softmax_focal": (("gamma", "alpha"), True),
}


def test_registry_contents_and_attributes():
    assert sorted(k for k, _ in LOSS_REGISTRY) == sorted(EXPECTED)
    for name, (hyper, is_softmax) in EXPECTED.items():
        cls = LOSS_REGISTRY.get(name)
        assert issubclass(cls, ClassificationLoss) and issubclass(cls, torch.nn.Module)
        assert cls.hyperparameters == hyper and cls.is_softmax is is_softmax
        mod = paper_loss(name)
        assert mod.num_logits(80) == (81 if is_softmax else 80)
        assert all(h in repr(mod) for h in hyper)


def test_modules_have_no_default_hyperparameters():
    """One set of defaults per loss: the modules take every hyperparameter explicitly (the config
    holds the paper's); building without one names what is missing and the config keys."""
    import inspect

    for name, (hyper, _) in EXPECTED.items():
        cls = LOSS_REGISTRY.get(name)
        params = inspect.signature(cls.__init__).parameters
        assert all(params[h].default is inspect.Parameter.empty for h in hyper), name
        with pytest.raises(ValueError, match="needs hyperparameter") as e:
            build_classification_loss(name)
        assert all(h in str(e.value) and f"MODEL.FOCAL.{h.upper()}" in str(e.value) for h in hyper)
    mod = paper_loss("sigmoid_focal_star")  # Table 3's FL* row, as the config passes it
    assert (mod.gamma, mod.beta, mod.alpha) == (2.0, 1.0, 0.25)


def test_registry_reimport_is_safe():
    import importlib

    import focal_plugin.losses.modules as modules

    importlib.reload(modules)
    assert "sigmoid_focal" in modules.LOSS_REGISTRY


def test_unknown_name_and_param():
    with pytest.raises(ValueError) as e:
        build_classification_loss("focal")
    for name in EXPECTED:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="beta") as e:
        build_classification_loss("sigmoid_focal", gamma=2.0, alpha=0.25, beta=1.0)
    assert "gamma" in str(e.value) and "alpha" in str(e.value)


INVALID = [
    ("sigmoid_focal", "gamma", -0.5), ("sigmoid_focal", "gamma", float("nan")),
    ("sigmoid_focal", "gamma", float("inf")), ("sigmoid_focal", "gamma", "2"),
    ("sigmoid_focal", "alpha", 1.5), ("sigmoid_focal", "alpha", float("nan")),
    ("sigmoid_ce", "alpha", 2.0), ("softmax_focal", "gamma", -1.0), ("softmax_focal", "alpha", 1.01),
    ("sigmoid_focal_star", "gamma", 0.0), ("sigmoid_focal_star", "gamma", -1.0),
    ("sigmoid_focal_star", "beta", float("inf")), ("sigmoid_focal_star", "beta", float("nan")),
    ("sigmoid_focal_star", "alpha", 3.0), ("sigmoid_focal", "fused", "yes"),
]


@pytest.mark.parametrize("name,param,value", INVALID)
def test_invalid_hyperparameters_name_the_parameter(name, param, value):
    with pytest.raises(ValueError, match=param) as e:
        paper_loss(name, **{param: value})
    if param != "fused":
        assert repr(value) in str(e.value) or str(value) in str(e.value)
        assert "expected" in str(e.value)


@pytest.mark.parametrize(
    "call,param",
    [
        (lambda x, t: sigmoid_focal_loss(x, t, 0.25, -1.0), "gamma"),
        (lambda x, t: sigmoid_focal_loss(x, t, 1.2, 2.0), "alpha"),
        (lambda x, t: sigmoid_ce_loss(x, t, 7), "alpha"),
        (lambda x, t: sigmoid_focal_loss_star(x, t, -1, 0.0), "gamma"),
        (lambda x, t: sigmoid_focal_loss_star(x, t, -1, 1.0, "none", float("nan")), "beta"),
        (lambda x, t: softmax_focal_loss(x, t.long(), 0.25, -2.0), "gamma"),
    ],
)
def test_invalid_functional_arguments(call, param):
    with pytest.raises(ValueError, match=param):
        call(torch.randn(4, 3), torch.zeros(4, 3).long()[:, 0] if param == "never" else torch.zeros(4, 3))


def test_alpha_negative_disables_weighting():
    x = torch.randn(30, 4)
    t = _binary((30, 4))
    for a in (-1, -0.5, -100.0):
        torch.testing.assert_close(sigmoid_focal_loss(x, t, a, 2.0), sigmoid_focal_loss(x, t, -1, 2.0))


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", ["sigmoid_ce", "sigmoid_focal", "sigmoid_focal_star"])
def test_module_per_anchor_equals_functional_on_one_hot(fused, name):
    K, M = 7, 120
    mod = paper_loss(name, fused=fused)
    x = (torch.randn(M, K) * 3).requires_grad_()
    labels = torch.randint(0, K + 1, (M,))
    labels[:3] = K  # some background anchors: all-zero targets
    t = F.one_hot(labels, K + 1)[:, :K].float()
    func = {
        "sigmoid_ce": lambda: sigmoid_ce_loss(x, t, mod.alpha, fused=fused),
        "sigmoid_focal": lambda: sigmoid_focal_loss(x, t, mod.alpha, mod.gamma, fused=fused),
        "sigmoid_focal_star": lambda: sigmoid_focal_loss_star(x, t, mod.alpha, mod.gamma, "none", mod.beta,
                                                              fused=fused),
    }[name]()
    per_anchor = mod(x, labels)
    assert per_anchor.shape == (M,) and per_anchor.dtype == torch.float32
    torch.testing.assert_close(per_anchor, func.sum(1), rtol=1e-6, atol=1e-6)
    w = torch.rand(M)
    g1, = torch.autograd.grad((per_anchor * w).sum(), x)
    g2, = torch.autograd.grad((func.sum(1) * w).sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-7)
    assert mod(x.double(), labels).dtype == F64
    torch.testing.assert_close(mod.scores(x), torch.sigmoid(x))


@pytest.mark.parametrize("fused", PATHS)
def test_softmax_module(fused):
    K, M = 5, 50
    mod = build_classification_loss("softmax_focal", gamma=2.0, alpha=0.25, fused=fused)
    x = torch.randn(M, K + 1, requires_grad=True)
    labels = torch.randint(0, K + 1, (M,))
    out = mod(x, labels)
    assert out.shape == (M,) and out.dtype == torch.float32
    torch.testing.assert_close(out, softmax_focal_loss(x, labels, 0.25, 2.0, fused=fused))
    scores = mod.scores(x)
    assert scores.shape == (M, K)
    torch.testing.assert_close(scores, torch.softmax(x, 1)[:, :K])


def test_module_label_checks():
    mod = paper_loss("sigmoid_focal")
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        mod(x, torch.tensor([0, 1, 4, 3]))  # 4 > K = 3
    with pytest.raises(ValueError, match="labels"):
        mod(x, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="logits"):
        mod(x.view(-1), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_classes"):
        mod.num_logits(0)
    empty = mod(torch.randn(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)


def test_one_switch_fused_argument(monkeypatch):
    """``fused`` is the one switch: False never touches the fused kernels, True (the default)
    always does; the environment variables of earlier versions change nothing."""
    from focal_plugin.losses import fused as fused_mod

    calls = []
    real = fused_mod.run_kernel
    monkeypatch.setattr(fused_mod, "run_kernel", lambda *a: calls.append(a[0]) or real(*a))
    x = torch.randn(6, 3, requires_grad=True)
    t = _binary((6, 3))
    labels = torch.tensor([0, 1, 2, 3, 3, 0])
    mods = [paper_loss(n) for n in EXPECTED]

    def everything(fused=True):
        sigmoid_focal_loss(x, t, fused=fused).sum().backward()
        sigmoid_focal_loss_star(x, t, fused=fused).sum().backward()
        softmax_focal_loss(x, labels % 3, fused=fused).sum().backward()
        for m in mods:
            m.fused = fused
            xm = torch.randn(6, m.num_logits(3), requires_grad=True)
            m(xm, labels).sum().backward()

    everything(fused=False)
    assert calls == []
    monkeypatch.setenv("FOCAL_PLUGIN_REFERENCE_LOSS", "1")
    monkeypatch.setenv("FOCAL_PLUGIN_COMPILE", "0")
    everything(fused=True)
    assert len(calls) == 3 + len(mods)  # the default is the fused path, whatever the environment
    assert fused_mod.kernel_mode(x.device) == "compiled"


# ------------------------------------------------------------------------------ target contract
SIGMOID_FUNCS = {
    "sigmoid_focal_loss": lambda x, t, fused, r="none": sigmoid_focal_loss(x, t, 0.25, 2.0, r, fused),
    "sigmoid_focal_loss_star": lambda x, t, fused, r="none": sigmoid_focal_loss_star(x, t, 0.25, 2.0, r, 1.0,
                                                                                    fused),
    "sigmoid_ce_loss": lambda x, t, fused, r="none": sigmoid_ce_loss(x, t, 0.25, r, fused),
}


@pytest.mark.parametrize("fused", PATHS)
def test_soft_targets_issue_examples(fused):
    # x = [-5, 5], t = .5: torchvision's gradient, not a loss flat in x
    x = torch.tensor([-5.0, 5.0], requires_grad=True)
    g, = torch.autograd.grad(sigmoid_focal_loss(x, torch.tensor([0.5, 0.5]), fused=fused).sum(), x)
    torch.testing.assert_close(g, torch.tensor([-0.0617, 0.0617]), rtol=0, atol=1e-4)
    g_tv, = torch.autograd.grad(torchvision.ops.sigmoid_focal_loss(x, torch.tensor([0.5, 0.5])).sum(), x)
    torch.testing.assert_close(g, g_tv, rtol=1e-5, atol=1e-7)
    # x = 2, t = .3: 0.650 without alpha, as fvcore and torchvision
    two, t3 = torch.tensor([2.0]), torch.tensor([0.3])
    ours = sigmoid_focal_loss(two, t3, -1, 2.0, fused=fused)
    torch.testing.assert_close(ours, torch.tensor([0.6497]), rtol=0, atol=1e-4)
    torch.testing.assert_close(ours, fvcore.nn.sigmoid_focal_loss(two, t3), rtol=1e-6, atol=0)
    torch.testing.assert_close(ours, torchvision.ops.sigmoid_focal_loss(two, t3, -1), rtol=1e-6, atol=0)


def _soft_truth(x, t, alpha, gamma):
    """torchvision's formula in float64 (accurate for |x| <= 12)."""
    x, t = x.double(), t.double()
    p = torch.sigmoid(x)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    loss = ce * (1 - (p * t + (1 - p) * (1 - t))) ** gamma
    return loss * _alpha_t(t, alpha) if alpha >= 0 else loss


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_soft_targets_general_formula(fused, gamma):
    x = (torch.rand(300, 7, dtype=F64) * 24 - 12).requires_grad_()
    t = torch.rand(300, 7, dtype=F64)
    t[:, 0], t[:, 1] = 0.0, 1.0  # hard targets in the same call
    for alpha in (-1.0, 0.25, 0.75):
        for red in ("none", "sum", "mean"):
            got = sigmoid_focal_loss(x, t, alpha, gamma, red, fused=fused)
            want = _soft_truth(x, t, alpha, gamma)
            want = want.sum() if red == "sum" else want.mean() if red == "mean" else want
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-300)
    # gradients against torchvision's formula, float64, moderate logits
    xm = (torch.rand(300, 7, dtype=F64) * 6 - 3).requires_grad_()
    g, = torch.autograd.grad(sigmoid_focal_loss(xm, t, 0.25, gamma, "sum", fused=fused), xm)
    g_tv, = torch.autograd.grad(torchvision.ops.sigmoid_focal_loss(xm, t, 0.25, gamma, "sum"), xm)
    torch.testing.assert_close(g, g_tv, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fused", PATHS)
def test_soft_targets_float32_match_torchvision(fused):
    x = (torch.rand(2000, 20) * 3 - 1.5).requires_grad_()
    t = torch.rand(2000, 20)
    for alpha, gamma in ((0.25, 2.0), (-1.0, 0.5), (0.75, 0.0)):
        ours = sigmoid_focal_loss(x, t, alpha, gamma, fused=fused)
        theirs = torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
        g1, = torch.autograd.grad(ours.sum(), x)
        g2, = torch.autograd.grad(theirs.sum(), x)
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", PATHS)
def test_fl_star_soft_targets(fused):
    """FL* with soft targets: t FL*(x) + (1 - t) FL*(-x), linear in t; fvcore's for t in {0, 1};
    binary_cross_entropy_with_logits at gamma = 1, beta = 0; not flat at t = .5."""
    x = (torch.rand(400, dtype=F64) * 20 - 10).requires_grad_()
    t = torch.rand(400, dtype=F64)
    for gamma, beta, alpha in ((2.0, 1.0, 0.25), (4.0, 0.0, -1.0), (0.5, -2.0, 0.75)):
        soft = sigmoid_focal_loss_star(x, t, alpha, gamma, "none", beta, fused=fused)
        pos = sigmoid_focal_loss_star(x, torch.ones_like(t), -1, gamma, "none", beta, fused=fused)
        neg = sigmoid_focal_loss_star(x, torch.zeros_like(t), -1, gamma, "none", beta, fused=fused)
        want = (t * pos + (1 - t) * neg) * (_alpha_t(t, alpha) if alpha >= 0 else 1.0)
        torch.testing.assert_close(soft, want, rtol=1e-12, atol=1e-300)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss_star(x, t, fused=fused), bce, rtol=1e-12, atol=1e-15)
    g, = torch.autograd.grad(sigmoid_focal_loss_star(x, torch.full_like(t, 0.5), fused=fused).sum(), x)
    assert (g.abs() > 0).any()
    hard = _binary(400, dtype=F64)
    for gamma in (1.0, 2.0):  # fvcore computes in float32
        torch.testing.assert_close(
            sigmoid_focal_loss_star(x.float(), hard.float(), 0.25, gamma, fused=fused),
            fvcore.nn.sigmoid_focal_loss_star(x.float(), hard.float(), 0.25, gamma), rtol=1e-6, atol=1e-7)


BAD_TARGETS = [
    (torch.tensor([[0.0, 2.0, 1.0]]), "2.0"),
    (torch.tensor([[-0.1, 0.5, 1.0]]), "-0.1"),
    (torch.tensor([[0.0, float("nan"), 1.0]]), "nan"),
    (torch.tensor([2.0, 0.0, 1.0]), "2.0"),  # broadcast over the rows of (4, 3) logits
    (torch.tensor([[3.0]]), "3.0"),  # broadcast to every element
    (torch.tensor([[0, 2, 1]]), "2.0"),  # integer targets
]


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", sorted(SIGMOID_FUNCS))
@pytest.mark.parametrize("targets,shown", BAD_TARGETS)
def test_targets_outside_unit_interval_raise(fused, name, targets, shown):
    x = torch.randn(4, 3, requires_grad=True)
    for red in ("none", "sum"):
        with pytest.raises(ValueError, match=rf"{name}: targets must lie in \[0, 1\]") as e:
            SIGMOID_FUNCS[name](x, targets, fused, red)
        assert shown in str(e.value)


@pytest.mark.parametrize("fused", PATHS)
def test_targets_in_range_of_any_dtype_and_shape(fused):
    x = torch.randn(4, 3)
    for t in (torch.tensor([[0, 1, 1]]), torch.tensor([True, False, True]), torch.full((4, 3), 0.5),
              torch.tensor(1.0), torch.zeros(2, 4, 3)):
        for fn in SIGMOID_FUNCS.values():
            out = fn(x, t, fused)
            want = fn(*torch.broadcast_tensors(x, t.float()), False)
            torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-7)


def test_target_check_off_cpu_uses_async_assert(monkeypatch):
    """Off the CPU the range check is torch._assert_async: no host sync (no .item()/float())."""
    from focal_plugin.losses import reference

    seen = []
    # one aminmax pass, then a 0-d condition (not four elementwise passes over the targets)
    monkeypatch.setattr(torch, "_assert_async",
                        lambda cond, msg: seen.append((cond.device.type, tuple(cond.shape), msg)))
    reference.check_targets("sigmoid_focal_loss", torch.empty(5, device="meta"))
    reference.check_labels("SigmoidFocalLoss", torch.empty(5, 3, device="meta"),
                           torch.zeros(5, dtype=torch.long, device="meta"), 3)
    assert seen == [("meta", (), "sigmoid_focal_loss: targets must lie in [0, 1]"),
                    ("meta", (), "SigmoidFocalLoss: labels must lie in [0, 3] (3 = background)")]


# ------------------------------------------------------------------------------ drop-in compatibility
def _defaults(fn):
    import inspect

    return [(p.name, None if p.default is inspect.Parameter.empty else p.default)
            for p in inspect.signature(fn).parameters.values()]


def test_signatures_and_defaults_mirror_one_library_each():
    # sigmoid_focal_loss: torchvision's arguments and defaults (fvcore's differs: alpha = -1)
    assert _defaults(sigmoid_focal_loss)[:5] == _defaults(torchvision.ops.sigmoid_focal_loss)
    assert _defaults(sigmoid_focal_loss)[5:] == [("fused", True)]
    # sigmoid_focal_loss_star: fvcore's, then beta and fused
    assert _defaults(sigmoid_focal_loss_star)[:5] == _defaults(fvcore.nn.sigmoid_focal_loss_star)
    assert _defaults(sigmoid_focal_loss_star)[5:] == [("beta", 0.0), ("fused", True)]
    # sigmoid_ce_loss: the focal loss's arguments without gamma, alpha off (plain BCE-with-logits)
    assert _defaults(sigmoid_ce_loss) == [("inputs", None), ("targets", None), ("alpha", -1),
                                          ("reduction", "none"), ("fused", True)]
    half = torch.tensor([0.5]), torch.tensor([1.0])
    for fused in PATHS:
        # the issue's example: 0.01689 as torchvision (fvcore's alpha = -1 gives 0.06757)
        ours = sigmoid_focal_loss(*half, fused=fused)
        torch.testing.assert_close(ours, torchvision.ops.sigmoid_focal_loss(*half), rtol=1e-6, atol=0)
        torch.testing.assert_close(ours, torch.tensor([0.01689]), rtol=0, atol=1e-5)
        torch.testing.assert_close(sigmoid_focal_loss(*half, -1, fused=fused),
                                   fvcore.nn.sigmoid_focal_loss(*half), rtol=1e-6, atol=0)
        torch.testing.assert_close(sigmoid_focal_loss(*half, -1, fused=fused), torch.tensor([0.06757]),
                                   rtol=0, atol=1e-5)
        x, t = torch.randn(50, 4), _binary((50, 4))
        torch.testing.assert_close(sigmoid_focal_loss_star(x, t, fused=fused),
                                   fvcore.nn.sigmoid_focal_loss_star(x, t), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fused", PATHS)
def test_gamma_zero_is_bitwise_bce_and_fl_below_bce(fused):
    """Peers' tests: FL <= BCE elementwise, FL == BCE at gamma = 0 (here bitwise), on many random
    inputs (wide and extreme logits, hard and soft targets), float32 and float64."""
    x = torch.cat([torch.randn(20000) * 8, torch.linspace(-100, 100, 2001),
                   torch.logit(torch.rand(5000) * 0.2), torch.logit(0.8 + torch.rand(5000) * 0.2)])
    x[0] = -2.20557094  # the issue's example: 0.104528904 (BCE), not 0.104529008
    for t in (_binary(x.shape, p=0.4), torch.rand(x.shape)):
        t[0] = 0.0
        for dtype in (torch.float32, F64):
            xd, td = x.to(dtype), t.to(dtype)
            bce = F.binary_cross_entropy_with_logits(xd, td, reduction="none")
            for red in ("none", "sum", "mean"):
                want = F.binary_cross_entropy_with_logits(xd, td, reduction=red)
                assert torch.equal(sigmoid_focal_loss(xd, td, -1, 0.0, red, fused=fused), want)
                assert torch.equal(sigmoid_focal_loss(xd, td, -1.0, 0, red, fused=fused), want)
                assert torch.equal(sigmoid_ce_loss(xd, td, reduction=red, fused=fused), want)
            assert torch.equal(sigmoid_focal_loss(xd, td, 0.25, 0.0, fused=fused), _alpha_t(td, 0.25) * bce)
            for gamma in (1e-3, 0.1, 0.5, 1.0, 2.0, 5.0):
                for alpha in (-1.0, 0.0, 0.25, 0.58, 1.0):
                    fl = sigmoid_focal_loss(xd, td, alpha, gamma, fused=fused)
                    assert (fl <= bce).all(), (dtype, gamma, alpha)
    got = sigmoid_focal_loss(torch.tensor([-2.20557094]), torch.tensor([0.0]), -1, 0, fused=fused)
    assert got.item() == F.binary_cross_entropy_with_logits(torch.tensor([-2.20557094]), torch.tensor([0.0]))
    assert f"{got.item():.9f}" == "0.104528904"
    # and the gradient is BCE's (to rounding: "mean" is BCE's "none" then .mean())
    xg = x[:2000].clone().requires_grad_()
    g1, = torch.autograd.grad(sigmoid_focal_loss(xg, t[:2000], -1, 0, "mean", fused=fused), xg)
    g2, = torch.autograd.grad(F.binary_cross_entropy_with_logits(xg, t[:2000]), xg)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("fused", PATHS)
def test_invalid_reduction_says_invalid(fused):
    """ValueError containing "Invalid", as torchvision's, for every function."""
    x, t = torch.randn(4, 3), _binary((4, 3))
    calls = [lambda r, fn=fn: fn(x, t, fused, r) for fn in SIGMOID_FUNCS.values()]
    calls.append(lambda r: softmax_focal_loss(x, torch.tensor([0, 1, 2, 0]), 0.25, 2.0, r, fused))
    for call in calls:
        for bad in ("xyz", "avg", "Sum", ""):
            with pytest.raises(ValueError, match="Invalid reduction"):
                call(bad)
    with pytest.raises(ValueError, match="Invalid"):
        torchvision.ops.sigmoid_focal_loss(x, t, 0.25, 2, "xyz")


@pytest.mark.parametrize("alpha", (1.5, 2.0, float("nan")))
def test_invalid_alpha_raises_value_error_like_torchvision(alpha):
    x, t = torch.randn(4, 3), _binary((4, 3))
    with pytest.raises(ValueError, match="Invalid alpha"):
        torchvision.ops.sigmoid_focal_loss(x, t, alpha)
    for fused in PATHS:
        with pytest.raises(ValueError, match="Invalid alpha"):
            sigmoid_focal_loss(x, t, alpha, fused=fused)


def test_torchscript_compiles_every_function():
    """torch.jit.script works as for fvcore's and torchvision's functions; the scripted function
    runs the reference formulas and gives the eager (fused) values, fvcore's, and our errors."""
    x = torch.rand(300, 9) * 3 - 1.5
    t = _binary((300, 9))
    soft = torch.rand(300, 9)
    labels = torch.randint(0, 9, (300,))
    scripted = {f.__name__: torch.jit.script(f) for f in
                (sigmoid_focal_loss, sigmoid_focal_loss_star, sigmoid_ce_loss, softmax_focal_loss)}
    fl, star, ce, sm = (scripted[n] for n in ("sigmoid_focal_loss", "sigmoid_focal_loss_star",
                                               "sigmoid_ce_loss", "softmax_focal_loss"))
    close = functools.partial(torch.testing.assert_close, rtol=1e-6, atol=1e-7)
    for red in ("none", "sum", "mean"):
        for alpha, gamma in ((0.25, 2.0), (-1.0, 0.5), (0.75, 0.0)):
            got = fl(x, t, alpha, gamma, red)
            close(got, fvcore.nn.sigmoid_focal_loss(x, t, alpha, gamma, red))
            close(got, fvcore.nn.sigmoid_focal_loss_jit(x, t, alpha, gamma, red))
            close(got, torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma, red))
            close(got, sigmoid_focal_loss(x, t, alpha, gamma, red))
            close(fl(x, soft, alpha, gamma, red), sigmoid_focal_loss(x, soft, alpha, gamma, red))
        for alpha, gamma in ((-1.0, 1.0), (0.25, 2.0)):
            want = fvcore.nn.sigmoid_focal_loss_star_jit(x, t, alpha, gamma, red)
            close(star(x, t, alpha, gamma, red), want)
        close(star(x, t, 0.25, 2.0, red, 1.0), sigmoid_focal_loss_star(x, t, 0.25, 2.0, red, 1.0))
        assert torch.equal(ce(x, soft, -1.0, red), F.binary_cross_entropy_with_logits(x, soft, reduction=red))
        close(sm(x, labels, 0.25, 2.0, red), softmax_focal_loss(x, labels, 0.25, 2.0, red))
    close(fl(x, t), torchvision.ops.sigmoid_focal_loss(x, t))  # same defaults
    with pytest.raises(Exception, match="Invalid reduction"):
        fl(x, t, 0.25, 2.0, "xyz")
    with pytest.raises(Exception, match=r"sigmoid_focal_loss: targets must lie in \[0, 1\]"):
        fl(x, t * 2)
    with pytest.raises(Exception, match="Invalid gamma"):
        star(x, t, -1.0, 0.0)


def test_log_one_minus_pt_forms_agree_and_stay_finite():
    """reference.log_one_minus_pt: the general (soft-target) form equals the hard-target form
    log sigmoid(-x_t) for t in {0, 1}; losses built on either agree for all finite logits (beyond
    the underflow of 1 - p_t, where the general form clamps, the loss is below the smallest
    number anyway); derivatives in x and in t are finite everywhere."""
    from focal_plugin.losses import reference

    for dtype, big in ((F64, 800.0), (torch.float32, 100.0)):
        rtol = 1e-12 if dtype == F64 else 1e-6
        x = torch.linspace(-30, 30, 601, dtype=dtype).repeat(2)
        t = torch.cat([torch.ones(601, dtype=dtype), torch.zeros(601, dtype=dtype)])
        torch.testing.assert_close(reference.log_one_minus_pt(x, t), reference.log_one_minus_pt(x, t, True),
                                   rtol=rtol, atol=0)
        x = torch.cat([x, torch.tensor([-big, big, -big, big, 0.0, 0.0], dtype=dtype)]).requires_grad_()
        t = torch.cat([t, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype)])
        for gamma in (0.1, 2.0):
            losses = [reference.sigmoid_elementwise("focal", x, t, 0.25, gamma, 0.0, hard)
                      for hard in (False, True)]
            torch.testing.assert_close(losses[0], losses[1], rtol=rtol, atol=0)
            grads = [torch.autograd.grad(v.sum(), x)[0] for v in losses]
            torch.testing.assert_close(grads[0], grads[1], rtol=rtol, atol=1e-300)
        ts = torch.rand(x.shape, dtype=dtype).requires_grad_()
        out = reference.log_one_minus_pt(x, ts)
        gx, gt = torch.autograd.grad(out.sum(), [x, ts])
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gt).all()


def test_soft_targets_that_require_grad_are_checked_without_a_warning():
    """Targets from a teacher model may require grad: the range check reads them detached (it
    warned "Converting a tensor with requires_grad=True to a scalar" on every call), and the loss
    still passes gradients to them."""
    import warnings

    logits, targets = torch.randn(6, 3, requires_grad=True), torch.rand(6, 3, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sigmoid_focal_loss(logits, targets, reduction="sum").backward()
    assert targets.grad is not None and torch.isfinite(targets.grad).all()
    with pytest.raises(ValueError, match="targets must lie in"):
        sigmoid_focal_loss(logits, (targets * 2).detach().requires_grad_(), reduction="sum")
