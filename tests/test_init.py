"""Initializers (§3.3, §4.1): prior bias, its softmax equivalent, zero, normal(0.01); validation."""

import math

import pytest
import torch

from focal_plugin.init import INITIALIZER_REGISTRY, build_initializer, prior_bias


def _conv(out_channels, bias=True):
    return torch.nn.Conv2d(8, out_channels, 3, padding=1, bias=bias)


def test_registry_names():
    assert {"prior", "zero", "normal"} <= {k for k, _ in INITIALIZER_REGISTRY}


def test_prior_bias_value():
    assert prior_bias(0.01) == -math.log(99)
    assert abs(prior_bias(0.01) - (-4.59512)) < 1e-5
    assert prior_bias(0.5) == 0.0
    for pi in (1e-4, 0.01, 0.3, 0.9):
        assert abs(1 / (1 + math.exp(-prior_bias(pi))) - pi) < 1e-12


@pytest.mark.parametrize("pi", (0.0, 1.0, -0.1, 1.5, float("nan"), "0.01", True))
def test_prior_bias_rejects_invalid(pi):
    with pytest.raises(ValueError, match="pi"):
        prior_bias(pi)


def test_prior_sigmoid_sets_bias_only():
    conv = _conv(9 * 80)
    w = conv.weight.detach().clone()
    build_initializer("prior", prior_prob=0.01, num_classes=80, softmax=False)(conv)
    assert torch.all(conv.bias == torch.tensor(-math.log(99), dtype=torch.float32))
    assert torch.equal(conv.weight, w)
    # every class of every anchor starts with probability pi
    out = torch.sigmoid(conv(torch.zeros(1, 8, 4, 4)))
    torch.testing.assert_close(out, torch.full_like(out, 0.01), rtol=1e-5, atol=0)


@pytest.mark.parametrize("K,A,pi", [(80, 9, 0.01), (3, 2, 0.2), (1, 1, 0.01)])
def test_prior_softmax_gives_pi_per_foreground_class(K, A, pi):
    conv = _conv(A * (K + 1))
    w = conv.weight.detach().clone()
    build_initializer("prior", prior_prob=pi, num_classes=K, softmax=True)(conv)
    assert torch.equal(conv.weight, w)
    logits = conv(torch.zeros(2, 8, 3, 3))  # zero input: logits = bias
    probs = torch.softmax(logits.permute(0, 2, 3, 1).reshape(-1, A, K + 1).double(), dim=-1)
    torch.testing.assert_close(probs[..., :K], torch.full_like(probs[..., :K], pi), rtol=1e-6, atol=0)
    torch.testing.assert_close(probs[..., K], torch.full_like(probs[..., K], 1 - K * pi), rtol=1e-6, atol=0)
    bias = conv.bias.view(A, K + 1)
    assert torch.all(bias[:, K] == 0)
    torch.testing.assert_close(bias[:, :K], torch.full((A, K), math.log(pi / (1 - K * pi))))


def test_prior_softmax_errors():
    with pytest.raises(ValueError, match="prior_prob.*num_classes|num_classes.*prior_prob"):
        build_initializer("prior", prior_prob=0.02, num_classes=80, softmax=True)
    with pytest.raises(ValueError, match="num_classes"):
        build_initializer("prior", prior_prob=0.01, softmax=True)
    with pytest.raises(ValueError, match="num_classes"):
        build_initializer("prior", prior_prob=0.01, num_classes=3, softmax=True)(_conv(9))  # 9 % 4 != 0
    with pytest.raises(ValueError, match="bias"):
        build_initializer("prior", prior_prob=0.01)(_conv(3, bias=False))


@pytest.mark.parametrize(
    "name,params,param",
    [
        ("prior", {"prior_prob": 0.0}, "prior_prob"),
        ("prior", {"prior_prob": 1.0}, "prior_prob"),
        ("prior", {"prior_prob": -0.5}, "prior_prob"),
        ("prior", {"prior_prob": float("nan")}, "prior_prob"),
        ("prior", {"prior_prob": None}, "prior_prob"),
        ("prior", {"num_classes": 0}, "num_classes"),
        ("prior", {"num_classes": 2.5}, "num_classes"),
        ("prior", {"softmax": "yes"}, "softmax"),
        ("zero", {"prior_prob": 2.0}, "prior_prob"),
        ("normal", {"sigma": 0.0}, "sigma"),
        ("normal", {"sigma": -0.01}, "sigma"),
        ("normal", {"sigma": float("inf")}, "sigma"),
        ("normal", {"std": 0.01}, "std"),
        ("zero", {"value": 1.0}, "value"),
    ],
)
def test_invalid_params_name_the_parameter(name, params, param):
    with pytest.raises(ValueError, match=param):
        build_initializer(name, **params)


def test_unknown_initializer_lists_names():
    with pytest.raises(ValueError) as e:
        build_initializer("xavier")
    for name in ("prior", "zero", "normal"):
        assert name in str(e.value)


def test_zero_accepts_the_bias_context():
    conv = _conv(12)
    w = conv.weight.detach().clone()
    build_initializer("zero", prior_prob=0.01, num_classes=3, softmax=True)(conv)
    assert torch.all(conv.bias == 0) and torch.equal(conv.weight, w)
    build_initializer("zero")(_conv(3, bias=False))  # nothing to do, no error


def test_normal_std_and_zero_bias():
    conv = torch.nn.Conv2d(256, 256, 3)
    init = build_initializer("normal", sigma=0.01)
    init(conv)
    assert torch.all(conv.bias == 0)
    std = conv.weight.std().item()
    assert abs(std - 0.01) < 0.0002  # 590k samples: the standard error of std is ~1e-5
    assert abs(conv.weight.mean().item()) < 1e-4
    # the head calls every initializer with the same context keywords
    build_initializer("normal", sigma=0.05, prior_prob=0.01, num_classes=80, softmax=False)(conv)
    assert abs(conv.weight.std().item() - 0.05) < 0.001
    assert "sigma=0.05" in repr(build_initializer("normal", sigma=0.05))


@pytest.mark.parametrize("name", ["zero", "normal"])
def test_a_prior_the_initializer_does_not_set_is_refused(name):
    """Accepting the bias-init context must not hide a pi that would have no effect."""
    build_initializer(name, prior_prob=0.01)  # the default: what a head passes to every initializer
    with pytest.raises(ValueError, match=rf"initializer '{name}': prior_prob = 0.05 has no effect.*'prior'"):
        build_initializer(name, prior_prob=0.05)
    build_initializer("prior", prior_prob=0.05)
