"""OHEM sampler (paper Table 1d): hand-built cases plus a brute-force reference."""

import pytest
import torch
from torchvision.ops import box_iou

from focal_plugin.modeling.ohem import ohem_loss, ohem_select

K = 3  # classes; label K = background, -1 = ignored
BG = K
IGN = -1


def _disjoint_boxes(n, size=10.0, gap=100.0):
    """n boxes on a line, far apart: no NMS interaction."""
    x = torch.arange(n, dtype=torch.float32) * gap
    return torch.stack([x, torch.zeros(n), x + size, torch.full((n,), size)], dim=1)


def _one(losses, boxes, labels):
    """Single-image inputs as (1, R) / (1, R, 4) tensors."""
    return (
        torch.as_tensor(losses, dtype=torch.float32)[None],
        torch.as_tensor(boxes, dtype=torch.float32)[None],
        torch.as_tensor(labels, dtype=torch.long)[None],
    )


def _sel(losses, boxes, labels, B, thr, p=-1.0, **kw):
    return ohem_select(*_one(losses, boxes, labels), K, B, thr, p, **kw)[0]


# ----------------------------------------------------------------------------------------------
# Brute-force reference: per image, literal greedy NMS over all candidates in rank order.
def _reference(losses, boxes, labels, B, thr, p=-1.0, topk=None):
    N, R = losses.shape
    out = torch.zeros(N, R, dtype=torch.bool)
    quota = None if p == -1.0 else int(p * B)
    for i in range(N):
        cand = [r for r in range(R) if labels[i, r] >= 0]
        cand.sort(key=lambda r: (-float(losses[i, r]), r))
        if topk is not None:
            cand = cand[:topk]
        if not cand:
            continue
        iou = box_iou(boxes[i, cand].double(), boxes[i, cand].double())
        suppressed = torch.zeros(len(cand), dtype=torch.bool)
        surv = []
        for a in range(len(cand)):  # literal greedy NMS in rank order
            if not suppressed[a]:
                surv.append(cand[a])
                suppressed |= iou[a] > thr
        if quota is None:
            picked = surv[:B]
        else:
            pos = [r for r in surv if labels[i, r] < K][:quota]
            neg = [r for r in surv if labels[i, r] == K][: B - len(pos)]
            picked = pos + neg
        out[i, picked] = True
    return out


def _clustered_case(N, R, n_clusters, pos_rate=0.05, ign_rate=0.1, seed=0, jitter=8.0, size=(20, 60),
                    easy_pos=False):
    """Boxes jittered around a few centers (heavy overlap, few NMS survivors), random labels.

    ``easy_pos``: positives get the lowest losses (they rank below every negative).
    """
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(N, n_clusters, 2, generator=g) * 400
    which = torch.randint(0, n_clusters, (N, R), generator=g)
    c = torch.gather(centers, 1, which[..., None].expand(N, R, 2))
    wh = size[0] + (size[1] - size[0]) * torch.rand(N, R, 2, generator=g)
    c = c + jitter * torch.randn(N, R, 2, generator=g)
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=-1)
    u = torch.rand(N, R, generator=g)
    labels = torch.full((N, R), BG, dtype=torch.long)
    labels[u < pos_rate] = torch.randint(0, K, (N, R), generator=g)[u < pos_rate]
    labels[(u >= pos_rate) & (u < pos_rate + ign_rate)] = IGN
    losses = torch.rand(N, R, generator=g) * 5
    if easy_pos:
        losses = torch.where(labels.ge(0) & labels.lt(K), losses * 0.01, losses + 1.0)
    return losses, boxes, labels


def _cat(*cases):
    return tuple(torch.cat(t) for t in zip(*cases))


# ----------------------------------------------------------------------------------------------
def test_nms_removes_duplicate_above_threshold_keeps_below():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 12], [500, 500, 510, 510]]  # IoU(0, 1) = 100/120 = 0.833
    losses, labels = [5.0, 4.0, 1.0], [BG, BG, BG]
    m = _sel(losses, boxes, labels, B=2, thr=0.7)
    assert m.tolist() == [True, False, True]  # duplicate suppressed, the next one takes its place
    m = _sel(losses, boxes, labels, B=2, thr=0.9)
    assert m.tolist() == [True, True, False]  # below the threshold: both high-loss anchors kept
    # Positives and negatives suppress each other (class-agnostic NMS).
    m = _sel(losses, boxes, [0, BG, 1], B=2, thr=0.5)
    assert m.tolist() == [True, False, True]


def test_nms_threshold_is_strict_and_one_disables_nms():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 20]]  # IoU exactly 0.5
    assert _sel([2.0, 1.0], boxes, [BG, BG], B=2, thr=0.5).tolist() == [True, True]
    assert _sel([2.0, 1.0], boxes, [BG, BG], B=2, thr=0.49).tolist() == [True, False]
    same = [[0, 0, 10, 10]] * 2
    assert _sel([2.0, 1.0], same, [BG, BG], B=2, thr=1.0).tolist() == [True, True]


def test_exactly_b_highest_loss_kept_when_enough_candidates():
    R, B = 50, 10
    losses = torch.randperm(R).float()
    m = _sel(losses, _disjoint_boxes(R), [BG] * R, B=B, thr=0.5)
    assert int(m.sum()) == B
    assert set(m.nonzero().squeeze(1).tolist()) == set(losses.topk(B).indices.tolist())


def test_one_to_three_ratio_caps_positives_and_negatives_fill():
    B, R = 8, 30
    labels = [0, 1, 2, 0, 1] + [BG] * (R - 5)
    losses = torch.cat([torch.tensor([10.0, 9, 8, 7, 6]), torch.rand(R - 5)])  # positives hardest
    m = _sel(losses, _disjoint_boxes(R), labels, B=B, thr=0.5, p=0.25)
    lab = torch.tensor(labels)
    assert int(m.sum()) == B
    assert int((m & (lab < K)).sum()) == B // 4 == 2
    assert m[:2].all() and not m[2:5].any()  # the two highest-loss positives
    negs = torch.arange(5, R)[losses[5:].topk(B - 2).indices]
    assert set(m.nonzero().squeeze(1).tolist()) == {0, 1, *negs.tolist()}
    # Without the ratio the same input takes all 5 positives.
    m = _sel(losses, _disjoint_boxes(R), labels, B=B, thr=0.5)
    assert int((m & (lab < K)).sum()) == 5


@pytest.mark.parametrize("B", [4, 8, 128, 256, 512])
def test_ratio_holds_for_paper_batch_sizes(B):
    losses, boxes, labels = _clustered_case(2, 3000, 400, pos_rate=0.5, seed=B)
    m = ohem_select(losses, boxes, labels, K, B, 0.5, 0.25)
    pos = m & (labels >= 0) & (labels < K)
    assert (pos.sum(1) <= B // 4).all()
    assert (m.sum(1) <= B).all()


def test_fewer_positives_than_quota_take_all_and_fill_with_negatives():
    B, R = 8, 20
    labels = [0] + [BG] * (R - 1)
    losses = torch.rand(R)
    m = _sel(losses, _disjoint_boxes(R), labels, B=B, thr=0.5, p=0.25)
    assert m[0] and int(m.sum()) == B  # the one positive + 7 negatives


def test_fewer_candidates_than_b_take_all_survivors():
    # 5 disjoint anchors, one ignored: 4 candidates < B.
    m = _sel([1.0, 2, 3, 4, 5], _disjoint_boxes(5), [BG, 0, IGN, BG, BG], B=10, thr=0.5)
    assert m.tolist() == [True, True, False, True, True]
    # Same with the ratio: only 1 positive, only 3 negatives, nothing to fill with.
    m = _sel([1.0, 2, 3, 4, 5], _disjoint_boxes(5), [BG, 0, IGN, BG, BG], B=10, thr=0.5, p=0.25)
    assert m.tolist() == [True, True, False, True, True]
    # Enough anchors but NMS leaves fewer than B survivors.
    same = [[0, 0, 10, 10]] * 6
    m = _sel(torch.arange(6.0), same, [BG] * 6, B=4, thr=0.5)
    assert m.tolist() == [False] * 5 + [True]
    # Missing negatives are not replaced by extra positives (the positive share is a cap).
    m = _sel([5.0, 4, 3, 2, 1], _disjoint_boxes(5), [0, 1, 2, 0, BG], B=8, thr=0.5, p=0.25)
    assert m.tolist() == [True, True, False, False, True]


def test_zero_positives():
    R, B = 40, 16
    losses = torch.rand(R)
    for p in (-1.0, 0.25):
        m = _sel(losses, _disjoint_boxes(R), [BG] * R, B=B, thr=0.5, p=p)
        assert int(m.sum()) == B
        assert set(m.nonzero().squeeze(1).tolist()) == set(losses.topk(B).indices.tolist())


def test_image_without_candidates():
    m = _sel([9.0, 8.0], _disjoint_boxes(2), [IGN, IGN], B=4, thr=0.5, p=0.25)
    assert not m.any()


def test_ignored_never_selected_and_never_suppress():
    # Ignored anchor 0 has by far the highest loss and overlaps anchor 1 perfectly.
    boxes = [[0, 0, 10, 10], [0, 0, 10, 10], [100, 0, 110, 10]]
    for p in (-1.0, 0.25, 1.0):
        m = _sel([100.0, 1.0, 0.5], boxes, [IGN, 0, BG], B=4, thr=0.5, p=p)  # quota >= 1
        assert m.tolist() == [False, True, True]
        m = _sel([100.0, 1.0, 0.5], boxes, [IGN, BG, BG], B=4, thr=0.5, p=p)
        assert m.tolist() == [False, True, True]


def test_batch_images_are_independent():
    boxes = _disjoint_boxes(6)
    boxes[1] = boxes[0] + torch.tensor([0.0, 0, 0, 1])  # duplicate of anchor 0 inside the image
    losses0 = torch.tensor([6.0, 5, 4, 3, 2, 1])
    losses1 = torch.tensor([1.0, 5.5, 3, 4, 9, 6])
    labels0 = torch.tensor([BG, BG, 0, BG, BG, BG])
    labels1 = torch.tensor([BG, 1, BG, BG, IGN, BG])
    batch = ohem_select(
        torch.stack([losses0, losses1]), torch.stack([boxes, boxes]), torch.stack([labels0, labels1]),
        K, 3, 0.5,
    )
    alone0 = ohem_select(losses0[None], boxes[None], labels0[None], K, 3, 0.5)[0]
    alone1 = ohem_select(losses1[None], boxes[None], labels1[None], K, 3, 0.5)[0]
    assert torch.equal(batch[0], alone0) and torch.equal(batch[1], alone1)
    # Identical boxes across images do not suppress each other: anchor 0 kept in image 0 and
    # anchor 1 (anchor 0's duplicate, higher loss in image 1) kept in image 1.
    assert alone0.tolist() == [True, False, True, True, False, False]
    assert alone1.tolist() == [False, True, False, True, False, True]


def test_ties_broken_by_anchor_index():
    m = _sel([1.0] * 6, _disjoint_boxes(6), [BG] * 6, B=3, thr=0.5)
    assert m.tolist() == [True, True, True, False, False, False]
    m = _sel([0.0, -0.0, 0.0, -0.0], _disjoint_boxes(4), [BG] * 4, B=2, thr=0.5)  # -0.0 == 0.0
    assert m.tolist() == [True, True, False, False]


@pytest.mark.parametrize("p", [-1.0, 0.25])
@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_matches_brute_force_reference_exact(p, thr):
    # R > the initial prefix (1024) and clustered boxes: exercises the prefix growth.
    losses, boxes, labels = _clustered_case(2, 2500, 60, seed=int(thr * 10) + int(p > 0))
    got = ohem_select(losses, boxes, labels, K, 128, thr, p, pre_nms_topk=None)
    assert torch.equal(got, _reference(losses, boxes, labels, 128, thr, p))


@pytest.mark.parametrize("p", [-1.0, 0.25])
def test_small_cap_is_exactly_the_procedure_on_the_top_k(p):
    # Cap below the first prefix: NMS sees only each image's 600 highest-loss candidates.
    losses, boxes, labels = _clustered_case(2, 2500, 40, seed=3, easy_pos=True)
    got = ohem_select(losses, boxes, labels, K, 64, 0.5, p, pre_nms_topk=600)
    assert torch.equal(got, _reference(losses, boxes, labels, 64, 0.5, p, topk=600))
    if p > 0:  # the easy positives lie below the cap: none picked, negatives fill
        assert not (got & (labels >= 0) & (labels < K)).any() and (got.sum(1) == 64).all()


# Cases where the first prefix (max(4 B, 1024) anchors) cannot prove the answer, so the prefix
# grows: few NMS survivors overall, one image of two needing it, easy positives ranked last.
_GROWTH_CASES = {
    "few_survivors": lambda: _clustered_case(2, 3000, 30, jitter=1.0, size=(40, 42), seed=11),
    "one_image_grows": lambda: _cat(
        _clustered_case(1, 3000, 2000, seed=12), _clustered_case(1, 3000, 30, jitter=1.0, size=(40, 42))
    ),
    "easy_positives": lambda: _clustered_case(2, 3000, 600, pos_rate=0.01, seed=13, easy_pos=True),
}


@pytest.mark.parametrize("p", [-1.0, 0.25])
@pytest.mark.parametrize("case", sorted(_GROWTH_CASES))
@pytest.mark.parametrize("topk", [None, 2000])
def test_prefix_growth_matches_reference(case, p, topk, monkeypatch):
    import focal_plugin.modeling.ohem as ohem_mod

    sizes = []
    orig = ohem_mod._select_on_prefix

    def spy(idx, *args):
        sizes.append(tuple(idx.shape))
        return orig(idx, *args)

    monkeypatch.setattr(ohem_mod, "_select_on_prefix", spy)
    losses, boxes, labels = _GROWTH_CASES[case]()
    B = 128
    got = ohem_select(losses, boxes, labels, K, B, 0.5, p, pre_nms_topk=topk)
    assert torch.equal(got, _reference(losses, boxes, labels, B, 0.5, p, topk=topk))
    if case != "easy_positives" or p > 0:  # easy positives only matter with the ratio
        assert len(sizes) > 1, sizes  # the growth path was exercised
    if case == "one_image_grows":
        assert sizes[1][0] == 1  # only the image that needed it was redone


def test_gradients_flow_only_through_kept_anchors():
    N, R = 2, 40
    logits = torch.randn(N, R, K, requires_grad=True)
    labels = torch.randint(0, K + 1, (N, R))
    labels[:, :3] = IGN
    target = torch.nn.functional.one_hot(labels.clamp(min=0), K + 1)[..., :K].float()
    per_elem = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    boxes = _disjoint_boxes(R).expand(N, R, 4)
    mask = ohem_select(per_elem.sum(-1).detach(), boxes, labels, K, 8, 0.5, 0.25)
    assert (mask.sum(1) == 8).all()
    loss = ohem_loss(per_elem, mask)  # (N, R, K) accepted, summed over classes
    assert torch.allclose(loss, per_elem.sum(-1)[mask].sum())
    loss.backward()
    g = logits.grad.abs().sum(-1)
    assert (g[~mask] == 0).all()
    assert (g[mask] > 0).all()


def test_ohem_loss_ignores_nonfinite_unselected():
    x = torch.tensor([[1.0, float("inf"), 2.0]], requires_grad=True)
    loss = ohem_loss(x, torch.tensor([[True, False, True]]))
    loss.backward()
    assert loss.item() == 3.0 and x.grad.tolist() == [[1.0, 0.0, 1.0]]


def test_ohem_select_builds_no_graph():
    losses, boxes, labels = _clustered_case(2, 300, 10, seed=1)
    losses.requires_grad_(True)
    boxes.requires_grad_(True)
    with torch.enable_grad():
        m = ohem_select(losses, boxes, labels, K, 16, 0.5, 0.25)
    assert m.dtype == torch.bool and m.shape == (2, 300)
    assert not m.requires_grad and m.grad_fn is None
    assert m.device == losses.device


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(batch_size_per_image=0), "batch_size_per_image"),
        (dict(batch_size_per_image=-4), "batch_size_per_image"),
        (dict(batch_size_per_image=2.5), "batch_size_per_image"),
        (dict(batch_size_per_image=True), "batch_size_per_image"),
        (dict(nms_thresh=0.0), "nms_thresh"),
        (dict(nms_thresh=1.2), "nms_thresh"),
        (dict(nms_thresh=-0.5), "nms_thresh"),
        (dict(positive_fraction=0.0), "positive_fraction"),
        (dict(positive_fraction=1.5), "positive_fraction"),
        (dict(positive_fraction=-0.5), "positive_fraction"),
        (dict(num_classes=0), "num_classes"),
        (dict(pre_nms_topk=4), "pre_nms_topk"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs, name):
    losses, boxes, labels = _clustered_case(1, 20, 3)
    args = dict(num_classes=K, batch_size_per_image=8, nms_thresh=0.5, positive_fraction=-1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        ohem_select(losses, boxes, labels, **args)


def test_invalid_inputs_raise():
    losses, boxes, labels = _clustered_case(1, 20, 3)
    with pytest.raises(ValueError, match="gt_labels"):
        ohem_select(losses, boxes, labels.clone().fill_(K + 1), K, 8, 0.5)
    with pytest.raises(ValueError, match="gt_labels"):
        ohem_select(losses, boxes, labels.float(), K, 8, 0.5)
    with pytest.raises(ValueError, match="pred_boxes"):
        ohem_select(losses, boxes[..., :3], labels, K, 8, 0.5)
    with pytest.raises(ValueError, match="mask"):
        ohem_loss(losses, torch.ones(1, 20, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for p in (-1.0, 0.25):
        losses, boxes, labels = _clustered_case(2, 5000, 80, seed=7)
        cpu = ohem_select(losses, boxes, labels, K, 128, 0.5, p)
        gpu = ohem_select(losses.cuda(), boxes.cuda(), labels.cuda(), K, 128, 0.5, p)
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu(), cpu)
