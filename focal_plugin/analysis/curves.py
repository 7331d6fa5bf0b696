"""The loss curves of the paper's Figures 1, 5 and 6, computed with the library's loss functions.

Nothing here re-types a formula: every value is a call to :mod:`focal_plugin.losses`
(``sigmoid_ce_loss``, ``sigmoid_focal_loss``, ``sigmoid_focal_loss_star``) on a positive target
(y = 1, so x_t = x and p_t = sigmoid(x)), and every derivative is autograd through those calls.
No alpha weighting (alpha = -1), as in the figures. The calls take the library's reference
formulas (``fused=False``: the same values as the fused kernels, without compiling a kernel for a
one-off plot).

- Figure 1: FL(p_t) for gamma in {0, .5, 1, 2, 5} against p_t (gamma = 0 is CE).
- Figure 5: CE, FL (gamma = 2), FL* (gamma = 2, beta = 1) and FL* (gamma = 4, beta = 0) against x_t.
- Figure 6: their derivatives dL/dx against x_t.

Data functions return ``{label: (x, y)}`` float64 numpy arrays; ``plot_*`` draw them with
matplotlib (``Figure`` objects, no pyplot state) and write one file per requested format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from focal_plugin.io import write_figure_atomic
from focal_plugin.losses import sigmoid_ce_loss, sigmoid_focal_loss, sigmoid_focal_loss_star

Tensor = torch.Tensor
Curves = Dict[str, Tuple[np.ndarray, np.ndarray]]

#: Figure 1's focusing parameters
FIG1_GAMMAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class LossCurve:
    """One curve of Figures 5/6: a label and ``loss(x_t) -> per-element loss`` (targets 1)."""

    label: str
    loss: Callable[[Tensor], Tensor]


def _ones(x: Tensor) -> Tensor:
    return torch.ones_like(x)


#: Figure 5/6's losses, each a call to the library (alpha = -1: no weighting)
FIG5_LOSSES: Tuple[LossCurve, ...] = (
    LossCurve("CE", lambda x: sigmoid_ce_loss(x, _ones(x), alpha=-1, fused=False)),
    LossCurve("FL, γ=2", lambda x: sigmoid_focal_loss(x, _ones(x), alpha=-1, gamma=2.0, fused=False)),
    LossCurve("FL*, γ=2, β=1",
              lambda x: sigmoid_focal_loss_star(x, _ones(x), alpha=-1, gamma=2.0, beta=1.0, fused=False)),
    LossCurve("FL*, γ=4, β=0",
              lambda x: sigmoid_focal_loss_star(x, _ones(x), alpha=-1, gamma=4.0, beta=0.0, fused=False)),
)


def gamma_label(gamma: float) -> str:
    """Figure 1's legend entry: "γ = 0 (CE)", "γ = 0.5", ..."""
    return f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else "")


def focal_loss_vs_pt(gammas: Sequence[float] = FIG1_GAMMAS, pt: np.ndarray | None = None) -> Curves:
    """Figure 1: ``{gamma_label(g): (p_t, FL_g(p_t))}``, FL from ``sigmoid_focal_loss`` at the
    logit x = log(p_t / (1 - p_t)) with target 1 (alpha = -1).

    ``pt``: points in (0, 1); default 1000 points in [0.001, 0.999].
    """
    pt = np.linspace(1e-3, 1 - 1e-3, 1000) if pt is None else np.asarray(pt, dtype=np.float64)
    if pt.size and (pt.min() <= 0 or pt.max() >= 1):
        raise ValueError(f"p_t must lie in (0, 1), got values in [{pt.min()}, {pt.max()}]")
    x = torch.logit(torch.as_tensor(pt, dtype=torch.float64))
    return {gamma_label(g): (pt, _fl(x, g))
            for g in gammas}


def _fl(x: Tensor, gamma: float) -> np.ndarray:
    return sigmoid_focal_loss(x, _ones(x), alpha=-1, gamma=float(gamma), fused=False).numpy()


def _xt(xt: np.ndarray | None) -> np.ndarray:
    return np.linspace(-5.0, 5.0, 1001) if xt is None else np.asarray(xt, dtype=np.float64)


def losses_vs_xt(losses: Sequence[LossCurve] = FIG5_LOSSES, xt: np.ndarray | None = None) -> Curves:
    """Figure 5: ``{label: (x_t, loss(x_t))}``; default x_t: 1001 points in [-5, 5]."""
    xt = _xt(xt)
    x = torch.as_tensor(xt, dtype=torch.float64)
    return {c.label: (xt, c.loss(x).detach().numpy()) for c in losses}


def derivatives_vs_xt(losses: Sequence[LossCurve] = FIG5_LOSSES, xt: np.ndarray | None = None) -> Curves:
    """Figure 6: ``{label: (x_t, dloss/dx (x_t))}`` by autograd through the library's losses."""
    xt = _xt(xt)
    out: Curves = {}
    for c in losses:
        x = torch.as_tensor(xt, dtype=torch.float64).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(c.loss(x).sum(), x)
        out[c.label] = (xt, grad.numpy())
    return out


# ------------------------------------------------------------------------------------ plotting
def save_figure(fig, path_stem: str, formats: Sequence[str] = ("png",), dpi: int = 120) -> List[str]:
    """Write ``fig`` to ``path_stem.<fmt>`` for each format (png, svg, pdf); returns the paths."""
    known = {"png", "svg", "pdf"}
    bad = [f for f in formats if f not in known]
    if bad:
        raise ValueError(f"unknown figure format(s) {bad}: expected some of {sorted(known)}")
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    paths = []
    for fmt in formats:
        path = f"{path_stem}.{fmt}"
        write_figure_atomic(fig, path, dpi=dpi, bbox_inches="tight", metadata=_metadata(fmt))
        paths.append(path)
    return paths


def _metadata(fmt: str) -> Dict[str, str | None]:
    # no creation dates: the committed files change only when the curves do
    return {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]


def _figure(width: float = 5.5, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def _draw(ax, curves: Curves) -> None:
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, linewidth=1.8)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")


def plot_fig1(path_stem: str, formats: Sequence[str] = ("png",),
              gammas: Sequence[float] = FIG1_GAMMAS) -> List[str]:
    """Figure 1: loss vs probability of the ground-truth class, one curve per gamma."""
    fig, ax = _figure()
    _draw(ax, focal_loss_vs_pt(gammas))
    ax.set(xlim=(0, 1), ylim=(0, 5), xlabel="probability of ground truth class $p_t$", ylabel="loss",
           title="Fig. 1: focal loss $-(1-p_t)^\\gamma \\log p_t$")
    ax.annotate("well-classified examples", xy=(0.8, 0.35), xytext=(0.45, 1.6), fontsize=8,
                arrowprops={"arrowstyle": "->", "linewidth": 0.8})
    return save_figure(fig, path_stem, formats)


def plot_fig5(path_stem: str, formats: Sequence[str] = ("png",)) -> List[str]:
    """Figure 5: CE, FL and FL* vs x_t."""
    fig, ax = _figure()
    _draw(ax, losses_vs_xt())
    ax.set(xlim=(-5, 5), ylim=(0, 5), xlabel="$x_t$", ylabel="loss",
           title="Fig. 5: focal loss variants vs $x_t = yx$")
    return save_figure(fig, path_stem, formats)


def plot_fig6(path_stem: str, formats: Sequence[str] = ("png",)) -> List[str]:
    """Figure 6: derivatives of CE, FL and FL* with respect to x, vs x_t (autograd)."""
    fig, ax = _figure()
    _draw(ax, derivatives_vs_xt())
    ax.set(xlim=(-5, 5), ylim=(-1.2, 0.05), xlabel="$x_t$", ylabel="$dL/dx$ (y = 1)",
           title="Fig. 6: derivatives of the losses w.r.t. $x$")
    return save_figure(fig, path_stem, formats)
