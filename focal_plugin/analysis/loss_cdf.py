"""Figure 4: cumulative distribution of the focal loss over positive and negative anchors.

The paper (§5.1, Fig. 4) takes a converged model, samples ~1e5 positive and ~1e7 negative anchors
(windows) from random images, computes FL for several gamma on those *same* predictions,
normalizes the positives' and the negatives' losses separately to sum to 1, sorts them
ascending, and plots the cumulative sum against the fraction of samples. Reported: the hardest
20% of positives carry about half the positive loss for every gamma; with gamma = 2 nearly all
the negatives' loss comes from a small fraction of samples.

Here:

- Anchors are labelled by the model's own parts: ``model.anchor_generator`` on the model's
  features and ``model.label_anchors`` (its ``anchor_matcher``); ignored anchors are dropped.
- The loss of a window is its classification loss as in training, summed over the K sigmoid
  outputs with targets one_hot(label) (``sigmoid_focal_loss``), or the one softmax term of a
  softmax model (``softmax_focal_loss``); no alpha weighting (alpha_t is constant within the
  positives and within the negatives, so it cancels in the separate normalization).
- Sampling is uniform without replacement over all windows streamed, positives and negatives
  separately (random priorities, the ``capacity`` largest kept: a reservoir). Per image only the
  windows that can still enter a reservoir are scored, and the reservoir is pruned whenever it
  doubles, so memory is O(capacity x gammas) whatever the number of images.
"""

from __future__ import annotations

import csv
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.layers import cat

from focal_plugin.io import atomic_write
from focal_plugin.losses import sigmoid_focal_loss, softmax_focal_loss

Tensor = torch.Tensor

#: the paper's gammas in Figure 4
FIG4_GAMMAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
#: the summary: share of the loss carried by the hardest fraction of the samples
POSITIVE_FRACTIONS: Tuple[float, ...] = (0.2,)
NEGATIVE_FRACTIONS: Tuple[float, ...] = (0.01, 0.1)
KINDS = ("positive", "negative")


def window_losses(logits: Tensor, labels: Tensor, gammas: Sequence[float], softmax: bool = False) -> Tensor:
    """(M, C) logits, (M,) labels in [0, K] (K = background) -> (M, len(gammas)) float32 loss per
    window for each gamma, without alpha weighting.

    Sigmoid (C = K): ``sigmoid_focal_loss`` summed over the K outputs, targets one_hot(label)[:K].
    Softmax (C = K + 1, ``softmax=True``): ``softmax_focal_loss`` of the label.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"window_losses: expected (M, C) logits and (M,) labels, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        return logits.new_zeros((0, len(gammas)), dtype=torch.float32)
    x = logits.float()
    if softmax:
        cols = [softmax_focal_loss(x, labels.long(), alpha=-1, gamma=float(g), fused=False) for g in gammas]
    else:
        k = x.shape[1]
        targets = torch.nn.functional.one_hot(labels.long(), k + 1)[:, :k].to(x.dtype)
        cols = [sigmoid_focal_loss(x, targets, alpha=-1, gamma=float(g), fused=False).sum(dim=1)
                for g in gammas]
    return torch.stack(cols, dim=1).float()


class _Reservoir:
    """Uniform sample without replacement of at most ``capacity`` rows from a stream: each row gets
    a random priority and the ``capacity`` highest are kept. Holds at most 2 x capacity rows
    (pruned when it doubles); a row whose priority is below the floor of the last prune can never
    be kept, so it is not scored at all."""

    def __init__(self, capacity: int, width: int):
        self.capacity, self.seen = capacity, 0
        self.keys = torch.empty(0, dtype=torch.float64)
        self.rows = torch.empty((0, width))
        self._floor = -math.inf

    def candidates(self, n: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """Priorities for ``n`` new rows; (indices of those worth scoring, their priorities)."""
        self.seen += n
        if n == 0:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.float64)
        keys = torch.rand(n, generator=generator, dtype=torch.float64)
        idx = torch.nonzero(keys > self._floor).flatten()
        if idx.numel() > self.capacity:
            idx = idx[torch.topk(keys[idx], self.capacity).indices]
        return idx, keys[idx]

    def add(self, keys: Tensor, rows: Tensor) -> None:
        self.keys = torch.cat([self.keys, keys])
        self.rows = torch.cat([self.rows, rows.float().cpu()])
        if self.keys.numel() > 2 * self.capacity:
            self._prune()

    def _prune(self) -> None:
        if self.keys.numel() > self.capacity:
            keep = torch.topk(self.keys, self.capacity).indices
            self.keys, self.rows = self.keys[keep], self.rows[keep]
            self._floor = float(self.keys.min())

    def sample(self) -> Tensor:
        """The kept rows (at most ``capacity``)."""
        self._prune()
        return self.rows


class LossCDF:
    """Accumulates Figure 4's samples over a stream of images.

    ``update(logits, labels)`` takes one image's (R, C) logits and (R,) anchor labels (-1 ignored,
    K background, else the class), as ``model.label_anchors`` gives them; ``losses(kind)`` returns
    the sampled (n, len(gammas)) losses; ``curve``/``summary`` the figure's data.
    """

    def __init__(self, gammas: Sequence[float] = FIG4_GAMMAS, num_classes: int | None = None,
                 max_positives: int = 100_000, max_negatives: int = 1_000_000, softmax: bool = False,
                 seed: int = 0):
        if not gammas:
            raise ValueError("LossCDF: give at least one gamma")
        if any(g < 0 for g in gammas):
            raise ValueError(f"LossCDF: gammas must be >= 0, got {list(gammas)}")
        if max_positives < 1 or max_negatives < 1:
            raise ValueError(f"LossCDF: max_positives and max_negatives must be >= 1, got "
                             f"{max_positives} and {max_negatives}")
        self.gammas = tuple(float(g) for g in gammas)
        self.num_classes = num_classes
        self.softmax = softmax
        self.images = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._res = {"positive": _Reservoir(max_positives, len(self.gammas)),
                     "negative": _Reservoir(max_negatives, len(self.gammas))}

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add one image: (R, C) logits and (R,) labels in {-1, 0, ..., K}."""
        k = self.num_classes
        if k is None:
            k = logits.shape[1] - 1 if self.softmax else logits.shape[1]
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"LossCDF.update: {tuple(logits.shape)} logits but {tuple(labels.shape)} labels")
        self.images += 1
        for kind, mask in (("positive", (labels >= 0) & (labels < k)), ("negative", labels == k)):
            where = torch.nonzero(mask).flatten().cpu()
            res = self._res[kind]
            idx, keys = res.candidates(where.numel(), self._generator)
            if idx.numel():
                sel = where[idx].to(logits.device)
                res.add(keys, window_losses(logits[sel], labels[sel], self.gammas, self.softmax))

    def seen(self, kind: str) -> int:
        """Windows of ``kind`` streamed so far (sampled or not)."""
        return self._res[kind].seen

    def losses(self, kind: str) -> Tensor:
        """(n, len(gammas)) sampled losses of ``kind`` ("positive" | "negative")."""
        return self._res[kind].sample()

    def curve(self, kind: str, gamma_index: int, points: int = 1001) -> Tuple[np.ndarray, np.ndarray]:
        """Normalized cumulative loss of ``kind`` for gamma ``gammas[gamma_index]``."""
        return cumulative_loss(self.losses(kind)[:, gamma_index], points)

    def summary(self) -> Dict[str, Any]:
        """Per gamma: share of the loss carried by the hardest 20% of positives and the hardest
        1% / 10% of negatives; plus sample counts."""
        pos, neg = self.losses("positive"), self.losses("negative")
        per_gamma = []
        for i, g in enumerate(self.gammas):
            row: Dict[str, Any] = {"gamma": g}
            for f in POSITIVE_FRACTIONS:
                row[f"positive_loss_share_hardest_{_pct(f)}"] = hardest_share(pos[:, i], f)
            for f in NEGATIVE_FRACTIONS:
                row[f"negative_loss_share_hardest_{_pct(f)}"] = hardest_share(neg[:, i], f)
            per_gamma.append(row)
        return {"images": self.images, "positives_seen": self.seen("positive"),
                "negatives_seen": self.seen("negative"), "positives_sampled": int(pos.shape[0]),
                "negatives_sampled": int(neg.shape[0]), "gammas": per_gamma}


def _pct(f: float) -> str:
    return f"{f * 100:g}pct"


def cumulative_loss(losses: Tensor | np.ndarray, points: int = 1001) -> Tuple[np.ndarray, np.ndarray]:
    """Figure 4's curve: losses sorted ascending, cumulative sum normalized to 1, at ``points``
    fractions of the samples in [0, 1] (the exact value after round(f * n) samples).

    Monotone, 0 at 0 and 1.0 at 1. Raises ValueError for no samples, negative or non-finite
    losses, or a zero total.
    """
    x = np.sort(np.asarray(losses, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("cumulative_loss: no samples")
    if not np.isfinite(x).all() or x[0] < 0:
        raise ValueError("cumulative_loss: losses must be finite and >= 0")
    total = x.sum()
    if total <= 0:
        raise ValueError("cumulative_loss: the losses sum to 0")
    cum = np.concatenate([[0.0], np.cumsum(x) / total])
    cum[-1] = 1.0
    frac = np.linspace(0.0, 1.0, points)
    return frac, cum[np.rint(frac * x.size).astype(np.int64)]


def hardest_share(losses: Tensor | np.ndarray, fraction: float) -> Optional[float]:
    """Share of the total loss carried by the hardest ``fraction`` of the samples
    (the round(fraction * n) largest, at least one); None without samples or loss."""
    x = np.asarray(losses, dtype=np.float64).ravel()
    total = x.sum()
    if x.size == 0 or total <= 0:
        return None
    k = min(x.size, max(1, int(round(fraction * x.size))))
    return float(np.sort(x)[-k:].sum() / total)


# ----------------------------------------------------------------------------- model stream
@torch.no_grad()
def image_predictions(model, inputs: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
    """One mapped image (``DatasetMapper`` output with ``instances``) through ``model``: its
    (R, C) logits and the (R,) labels of the model's anchor generator + matcher."""
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, _ = model._transpose_dense_predictions(model.head(features), [model.num_logits, 4])
    anchors = model.anchor_generator(features)
    labels, _ = model.label_anchors(anchors, [inputs["instances"].to(model.device)])
    labels, empty = labels[0], getattr(model, "empty_classes", 0)
    if empty:  # background is the loss's last class, after the empty ones (MODEL.FOCAL.EMPTY_CLASSES)
        labels = torch.where(labels == model.num_classes, model.num_classes + empty, labels)
    return cat(logits, dim=1)[0], labels


def collect(model, inputs: Iterable[Dict[str, Any]], gammas: Sequence[float] = FIG4_GAMMAS,
            max_positives: int = 100_000, max_negatives: int = 1_000_000, seed: int = 0,
            progress: bool = True, total: int | None = None) -> LossCDF:
    """Stream mapped images through ``model`` (in eval mode) into a :class:`LossCDF`, with a
    progress bar over images."""
    from tqdm import tqdm

    softmax = bool(getattr(getattr(model, "classification_loss", None), "is_softmax", False))
    classes = model.num_classes + getattr(model, "empty_classes", 0)  # background's label
    acc = LossCDF(gammas, classes, max_positives, max_negatives, softmax, seed)
    was_training = model.training
    model.eval()
    try:
        for item in tqdm(inputs, total=total, desc="Fig. 4 losses", unit="img", disable=not progress):
            acc.update(*image_predictions(model, item))
    finally:
        model.train(was_training)
    return acc


# ---------------------------------------------------------------------------------- outputs
def write_csv(acc: LossCDF, path: str, points: int = 1001) -> None:
    """Curves as rows ``kind, gamma, fraction_of_samples, cumulative_normalized_loss``."""
    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(["kind", "gamma", "fraction_of_samples", "cumulative_normalized_loss"])
        for kind in KINDS:
            if acc.losses(kind).shape[0] == 0:
                continue
            for i, g in enumerate(acc.gammas):
                frac, cum = acc.curve(kind, i, points)
                w.writerows((kind, f"{g:g}", f"{a:.4f}", f"{b:.6g}") for a, b in zip(frac, cum))

    atomic_write(path, write)  # the folder is created


def format_summary(summary: Dict[str, Any]) -> str:
    """The summary as a small text table."""
    def pct(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = [f"{summary['images']} images; positives {summary['positives_sampled']:,} sampled of "
             f"{summary['positives_seen']:,}; negatives {summary['negatives_sampled']:,} sampled of "
             f"{summary['negatives_seen']:,}",
             "gamma | hardest 20% of positives | hardest 1% of negatives | hardest 10% of negatives"]
    for r in summary["gammas"]:
        lines.append(f"{r['gamma']:>5g} | {pct(r['positive_loss_share_hardest_20pct']):>24} | "
                     f"{pct(r['negative_loss_share_hardest_1pct']):>23} | "
                     f"{pct(r['negative_loss_share_hardest_10pct']):>24}")
    return "\n".join(lines)


def plot_cdf(acc: LossCDF, path_stem: str, formats: Sequence[str] = ("png",), title: str = "",
             points: int = 1001) -> List[str]:
    """Figure 4's two panels (positives, negatives), one curve per gamma."""
    from matplotlib.figure import Figure

    from focal_plugin.analysis.curves import save_figure

    fig = Figure(figsize=(10, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, KINDS):
        n = acc.losses(kind).shape[0]
        if n:
            for i, g in enumerate(acc.gammas):
                ax.plot(*acc.curve(kind, i, points), label=f"γ = {g:g}", linewidth=1.8)
            ax.legend(loc="upper left")
        else:
            ax.text(0.5, 0.5, f"no {kind} anchors", ha="center", va="center")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"fraction of {kind} samples",
               ylabel="cumulative normalized loss",
               title=f"{kind} samples ({n:,} of {acc.seen(kind):,})")
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path_stem, formats)
