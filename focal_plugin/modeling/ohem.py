"""Online hard example mining (OHEM) for a one-stage detector: the baseline of Table 1d.

The paper compares focal loss against OHEM adapted to a dense detector: every example is scored
by its loss, non-maximum suppression (NMS) is applied, and the minibatch is built from the
highest-loss examples (batch size and NMS threshold tunable); "OHEM 1:3" additionally enforces
1 positive : 3 negatives in the minibatch after NMS (the SSD variant). No maintained library
offers this for a one-stage head (mmdetection's OHEM samples RoIs without NMS; torchvision's SSD
mining has no NMS), hence this module.

Two functions, both pure:

- :func:`ohem_select` picks, per image, the anchors whose classification loss is used
  (a boolean mask, computed entirely under ``torch.no_grad``);
- :func:`ohem_loss` sums the per-anchor losses (with grad) of the picked anchors.

Design decisions (see :func:`ohem_select` for the exact semantics):

- **Class-agnostic NMS, one NMS per image.** Examples are anchors, not (anchor, class) pairs:
  an anchor's score is its CE loss summed over the K classes, so there is exactly one box per
  anchor and NMS runs over all of an image's non-ignored anchors regardless of their label
  (positives and negatives suppress each other: OHEM ranks all examples together). Images
  never interact: ``torchvision.ops.batched_nms`` with the image index as the group runs the
  whole batch in one call.
- **Deterministic order.** Anchors are ranked by loss, ties broken by the lower anchor index
  (distinct int64 keys, one ``torch.topk``); NMS is fed the rank, not the loss, so its internal
  sort reproduces that order exactly.
- **Pre-NMS top-k, exact within the cap.** Greedy NMS decides whether the anchor of rank r
  survives from the anchors ranked above r alone; hence NMS over an image's k highest-loss
  anchors yields exactly the full survivor set restricted to those k. The function starts with a
  small prefix and grows it (x4) only for images where the prefix cannot yet prove the answer
  (too few survivors / positives / negatives in it while more anchors remain), up to
  ``pre_nms_topk``. The result is therefore *identical* to running the procedure on each image's
  ``pre_nms_topk`` highest-loss non-ignored anchors, and identical to running it on all anchors
  when ``pre_nms_topk=None``. The default cap (8192 per image) only matters when even 8192
  highest-loss anchors do not contain enough survivors, which in practice means "OHEM 1:3" with
  fewer positives than the quota, some of them easy: positives ranked below the 8192nd anchor are
  then not picked (the negatives fill their places). Exact NMS over ~117k anchors (a 600 px
  image) costs 10-50 s per image on a 2-core CPU and a ~1.7 GB suppression mask per image on a
  GPU, which is why the cap exists; on the CPU NMS over 1024 / 8192 boxes costs ~4 / ~230 ms.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torchvision.ops import batched_nms

__all__ = ["DEFAULT_PRE_NMS_TOPK", "check_ohem_args", "ohem_select", "ohem_select_unchecked", "ohem_loss"]

#: Default cap on the number of highest-loss non-ignored anchors per image that NMS sees.
DEFAULT_PRE_NMS_TOPK = 8192
# First prefix tried: max(_INITIAL_FACTOR * B, _INITIAL_MIN), grown by _GROWTH when needed.
_INITIAL_FACTOR = 4
_INITIAL_MIN = 1024
_GROWTH = 4


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_ohem_args(num_classes, batch_size_per_image, nms_thresh, positive_fraction, pre_nms_topk) -> None:
    """The OHEM hyperparameters' rules (see :func:`ohem_select`); ``ValueError`` naming the first
    bad one. Checked once, when a sampler is built, never per iteration."""
    if not _is_int(batch_size_per_image) or batch_size_per_image <= 0:
        raise ValueError(f"batch_size_per_image must be a positive int, got {batch_size_per_image!r}")
    if not _is_real(nms_thresh) or not (0.0 < float(nms_thresh) <= 1.0):
        raise ValueError(f"nms_thresh must be a number in (0, 1], got {nms_thresh!r}")
    if not _is_real(positive_fraction) or not (
        float(positive_fraction) == -1.0 or 0.0 < float(positive_fraction) <= 1.0
    ):
        raise ValueError(
            f"positive_fraction must be -1 (no ratio) or a number in (0, 1], got {positive_fraction!r}"
        )
    if not _is_int(num_classes) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if pre_nms_topk is not None and (not _is_int(pre_nms_topk) or pre_nms_topk < batch_size_per_image):
        raise ValueError(
            f"pre_nms_topk must be None or an int >= batch_size_per_image ({batch_size_per_image}), "
            f"got {pre_nms_topk!r}"
        )


def _check_tensors(anchor_losses, pred_boxes, gt_labels, num_classes) -> None:
    if not isinstance(anchor_losses, torch.Tensor) or anchor_losses.dim() != 2:
        shape = getattr(anchor_losses, "shape", None)
        raise ValueError(f"anchor_losses must be an (N, R) tensor, got {shape}")
    if not anchor_losses.is_floating_point():
        raise ValueError(f"anchor_losses must be floating point, got {anchor_losses.dtype}")
    N, R = anchor_losses.shape
    if not isinstance(pred_boxes, torch.Tensor) or tuple(pred_boxes.shape) != (N, R, 4):
        shape = getattr(pred_boxes, "shape", None)
        raise ValueError(f"pred_boxes must be an (N, R, 4) = ({N}, {R}, 4) tensor, got {shape}")
    if not isinstance(gt_labels, torch.Tensor) or tuple(gt_labels.shape) != (N, R):
        shape = getattr(gt_labels, "shape", None)
        raise ValueError(f"gt_labels must be an (N, R) = ({N}, {R}) tensor, got {shape}")
    if gt_labels.is_floating_point() or gt_labels.dtype == torch.bool or gt_labels.is_complex():
        raise ValueError(f"gt_labels must be an integer tensor, got {gt_labels.dtype}")
    if pred_boxes.device != anchor_losses.device or gt_labels.device != anchor_losses.device:
        raise ValueError(
            "anchor_losses, pred_boxes and gt_labels must be on one device, got "
            f"{anchor_losses.device}, {pred_boxes.device}, {gt_labels.device}"
        )
    if gt_labels.numel():
        lo, hi = (int(v) for v in gt_labels.aminmax())
    if gt_labels.numel() and (lo < -1 or hi > num_classes):
        raise ValueError(
            f"gt_labels must lie in [-1, num_classes={num_classes}] (-1 ignored, {num_classes} background)"
        )


def _rank_key(losses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N, R) int64 keys, all distinct: larger key = higher rank = (higher loss, then lower index).

    The float32 loss is mapped to an order-preserving int32 (IEEE-754 bits, negative values
    flipped), shifted into the high 32 bits; the low 32 bits hold ``2**32 - 1 - index``. Unique
    keys make ``torch.topk`` well defined under ties and let it replace a full stable sort
    (~10x cheaper on CPU at R = 120k).
    """
    # `+ 0.0` turns -0.0 (e.g. -log(1)) into +0.0 so that equal losses have equal bits.
    loss = (losses.detach().float() + 0.0).masked_fill(~valid, float("-inf"))
    bits = loss.view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    index = torch.arange(loss.shape[1], device=loss.device, dtype=torch.int64)
    return (bits << 32) | (0xFFFFFFFF - index)


def _select_on_prefix(
    idx: torch.Tensor,        # (P, k) anchor indices of the P images' k highest-ranked anchors
    rows: torch.Tensor,       # (P,) image indices
    valid: torch.Tensor,      # (N, R) bool, non-ignored
    is_pos: torch.Tensor,     # (N, R) bool, foreground
    n_valid: torch.Tensor,    # (N,) non-ignored anchors per image
    n_pos: torch.Tensor,      # (N,) positives per image
    pred_boxes: torch.Tensor,
    B: int,
    nms_thresh: float,
    num_pos_quota: Optional[int],
):
    """OHEM on each image's prefix; returns (chosen (P, k) bool, exact (P,) bool).

    ``exact[i]`` is True when the choice for image i provably equals the choice on any longer
    prefix (in particular on all of its anchors).
    """
    P, k = idx.shape
    device = idx.device
    valid_k = torch.gather(valid[rows], 1, idx)
    pos_k = torch.gather(is_pos[rows], 1, idx) & valid_k
    neg_k = valid_k & ~pos_k

    flat = valid_k.reshape(-1).nonzero().squeeze(1)  # positions in the (P, k) grid
    boxes = pred_boxes[rows[:, None], idx].reshape(-1, 4)[flat].float()
    # Score = reversed rank: distinct per image, so NMS visits anchors exactly in our order.
    rank_score = torch.arange(k, 0, -1, device=device, dtype=torch.float32)
    scores = rank_score.expand(P, k).reshape(-1)[flat]
    group = torch.arange(P, device=device)[:, None].expand(P, k).reshape(-1)[flat]
    keep = batched_nms(boxes, scores, group, float(nms_thresh))
    surv = torch.zeros(P * k, dtype=torch.bool, device=device)
    surv[flat[keep]] = True
    surv = surv.view(P, k)

    prefix_covers_all = valid_k.sum(1) == n_valid[rows]
    if num_pos_quota is None:  # original OHEM: the B highest-loss survivors
        chosen = surv & (surv.cumsum(1) <= B)
        exact = prefix_covers_all | (surv.sum(1) >= B)
        return chosen, exact

    # OHEM 1:3: at most `quota` highest-loss positive survivors, negatives fill up to B.
    pos_s = surv & pos_k
    neg_s = surv & neg_k
    pos_chosen = pos_s & (pos_s.cumsum(1) <= num_pos_quota)
    neg_budget = B - pos_chosen.sum(1)
    neg_chosen = neg_s & (neg_s.cumsum(1) <= neg_budget[:, None])
    n_pos_k = pos_k.sum(1)
    n_neg_k = neg_k.sum(1)
    pos_exact = (pos_s.sum(1) >= num_pos_quota) | (n_pos_k == n_pos[rows])
    neg_exact = (neg_s.sum(1) >= neg_budget) | (n_neg_k == (n_valid - n_pos)[rows])
    return pos_chosen | neg_chosen, pos_exact & neg_exact


def ohem_select(anchor_losses: torch.Tensor, pred_boxes: torch.Tensor, gt_labels: torch.Tensor,
                num_classes: int, batch_size_per_image: int, nms_thresh: float,
                positive_fraction: float = -1.0, *,
                pre_nms_topk: Optional[int] = DEFAULT_PRE_NMS_TOPK) -> torch.Tensor:
    """Pick, per image, the anchors whose classification loss enters the OHEM minibatch.

    Args:
        anchor_losses: (N, R) float, each anchor's classification CE loss summed over the K
            classes. Only used for ranking (read under ``no_grad``); values at ignored anchors
            are irrelevant.
        pred_boxes: (N, R, 4) the anchors' decoded predicted boxes, XYXY (cast to float32
            for NMS).
        gt_labels: (N, R) integer: -1 ignored (IoU in [0.4, 0.5)), 0..K-1 foreground class,
            K background.
        num_classes: K.
        batch_size_per_image: B, the OHEM minibatch size per image (128/256/512 in the paper).
        nms_thresh: IoU threshold of the NMS (.5 or .7 in the paper); an anchor is suppressed
            when its IoU with a higher-loss surviving anchor is strictly greater.
        positive_fraction: -1 for the original OHEM (no ratio); p in (0, 1] keeps at most
            ``int(p * B)`` positives (detectron2's rounding), 0.25 being "OHEM 1:3".
        pre_nms_topk: keyword-only. NMS considers only each image's ``pre_nms_topk``
            highest-loss non-ignored anchors (``None``: all of them, exact but slow for ~100k
            anchors). Must be >= B. See "Exactness" below.

    Procedure, independently per image:

    1. Candidates: the non-ignored anchors (label != -1), ranked by loss, ties broken by the
       lower anchor index. Ignored anchors are never selected, whatever their loss, and never
       suppress anything.
    2. Greedy class-agnostic NMS over the candidates' predicted boxes in that order.
    3. Without ratio: the B first survivors (all survivors if fewer than B).
       With ratio: the ``q = int(p * B)`` first positive survivors (all positive survivors if
       fewer), then the ``B - #positives taken`` first negative survivors (all if fewer). The
       positive share is a cap, never a target: missing positives are replaced by negatives,
       missing negatives are not replaced by positives.

    Exactness: the output equals this procedure run on each image's ``pre_nms_topk``
    highest-ranked candidates (all candidates when ``None``). It is moreover identical to the
    all-candidate result for every image whose capped prefix already holds B survivors
    (no ratio), or ``q`` positive survivors (or every positive) and enough negative survivors
    (or every negative) with ratio, because greedy NMS decides the survival of the anchor of
    rank r from higher-ranked anchors only. Internally the prefix starts at
    ``max(4 B, 1024)`` and grows x4 only for images where it cannot yet prove the answer, which
    keeps the common case cheap (NMS over ~1-2k boxes per image).

    Whole function runs under ``torch.no_grad()``: it builds no autograd graph, and the mask is
    returned on the inputs' device.

    Returns:
        (N, R) bool mask of the selected anchors (at most B per image).
    """
    check_ohem_args(num_classes, batch_size_per_image, nms_thresh, positive_fraction, pre_nms_topk)
    _check_tensors(anchor_losses, pred_boxes, gt_labels, num_classes)
    return ohem_select_unchecked(
        anchor_losses, pred_boxes, gt_labels, num_classes, batch_size_per_image, nms_thresh,
        positive_fraction, pre_nms_topk,
    )


def ohem_select_unchecked(
    anchor_losses: torch.Tensor,
    pred_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    num_classes: int,
    batch_size_per_image: int,
    nms_thresh: float,
    positive_fraction: float,
    pre_nms_topk: Optional[int],
) -> torch.Tensor:
    """:func:`ohem_select` without its argument checks (no host sync): for callers that checked
    the hyperparameters once (:func:`check_ohem_args`) and produce well-formed tensors."""
    B = int(batch_size_per_image)
    quota = None if float(positive_fraction) == -1.0 else int(float(positive_fraction) * B)
    with torch.no_grad():
        N, R = anchor_losses.shape
        device = anchor_losses.device
        mask = torch.zeros((N, R), dtype=torch.bool, device=device)
        if N == 0 or R == 0:
            return mask
        valid = gt_labels >= 0
        is_pos = valid & (gt_labels < num_classes)
        n_valid = valid.sum(1)
        n_pos = is_pos.sum(1)
        cap = R if pre_nms_topk is None else min(int(pre_nms_topk), R)
        # Each image's `cap` highest-ranked anchors, in rank order (ignored ones rank last and
        # are masked out again through `valid`).
        order = torch.topk(_rank_key(anchor_losses, valid), cap, dim=1, sorted=True).indices
        k = min(cap, max(_INITIAL_FACTOR * B, _INITIAL_MIN))
        rows = torch.arange(N, device=device)
        while rows.numel():
            idx = order[rows, :k]
            chosen, exact = _select_on_prefix(
                idx, rows, valid, is_pos, n_valid, n_pos, pred_boxes, B, nms_thresh, quota
            )
            if k >= cap:  # the capped prefix is the definition: accept every image
                exact = torch.ones_like(exact)
            done = exact.nonzero().squeeze(1)
            if done.numel():
                mask[rows[done]] = torch.zeros(
                    (done.numel(), R), dtype=torch.bool, device=device
                ).scatter_(1, idx[done], chosen[done])
            rows = rows[~exact]
            k = min(cap, k * _GROWTH)
        return mask


def ohem_loss(per_anchor_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the selected anchors' classification losses (a scalar, with grad).

    ``per_anchor_loss`` is (N, R) (already summed over classes) or (N, R, K) (per class; summed
    here); ``mask`` is :func:`ohem_select`'s (N, R) output. Unselected anchors are indexed away
    rather than multiplied by zero, so a non-finite loss on an unselected anchor cannot turn the
    sum into NaN, and only selected anchors receive gradient. Normalization (the paper normalizes
    by the number of positive anchors, as for its other runs) is left to the caller.
    """
    if per_anchor_loss.dim() not in (2, 3):
        raise ValueError(f"per_anchor_loss must be (N, R) or (N, R, K), got {tuple(per_anchor_loss.shape)}")
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(per_anchor_loss.shape[:2]):
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(per_anchor_loss.shape[:2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    return per_anchor_loss[mask].sum()
