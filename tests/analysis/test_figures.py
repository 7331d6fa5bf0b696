"""The paper's figures: loss curves (Fig. 1, 5, 6), loss CDFs (Fig. 4), speed vs accuracy (Fig. 2)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from focal_plugin.analysis import curves, loss_cdf, speed_accuracy
from focal_plugin.checkpoint import load_for_inference
from focal_plugin.losses import sigmoid_ce_loss, sigmoid_focal_loss, sigmoid_focal_loss_star

from helpers import make_batch, tiny_cfg

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------- Fig. 1, 5, 6
def test_fig1_curves_are_the_library_focal_loss_at_sampled_points():
    pt = np.array([0.05, 0.2, 0.5, 0.9, 0.99])
    data = curves.focal_loss_vs_pt(pt=pt)
    assert list(data) == [curves.gamma_label(g) for g in curves.FIG1_GAMMAS]
    x = torch.logit(torch.as_tensor(pt, dtype=torch.float64))
    for g in curves.FIG1_GAMMAS:
        xs, ys = data[curves.gamma_label(g)]
        np.testing.assert_array_equal(xs, pt)
        lib = sigmoid_focal_loss(x, torch.ones_like(x), alpha=-1, gamma=g, fused=False).numpy()
        np.testing.assert_allclose(ys, lib, rtol=1e-12)
        np.testing.assert_allclose(ys, -(1 - pt) ** g * np.log(pt), rtol=1e-9)  # eq. (4)
    with pytest.raises(ValueError, match="p_t must lie in"):
        curves.focal_loss_vs_pt(pt=np.array([0.0, 0.5]))


def test_fig1_gamma2_is_100x_less_than_ce_at_pt_09_and_about_1000x_at_0968():
    data = curves.focal_loss_vs_pt((0.0, 2.0), pt=np.array([0.9, 0.968]))
    ce, fl = data[curves.gamma_label(0.0)][1], data[curves.gamma_label(2.0)][1]
    assert ce[0] / fl[0] == pytest.approx(100.0, rel=1e-9)
    assert ce[1] / fl[1] == pytest.approx(1000.0, rel=0.03)


def test_fig5_curves_match_the_library_and_appendix_a():
    xt = np.linspace(-4, 4, 9)
    data = curves.losses_vs_xt(xt=xt)
    x = torch.as_tensor(xt, dtype=torch.float64)
    one = torch.ones_like(x)
    expected = {
        "CE": sigmoid_ce_loss(x, one, fused=False).numpy(),
        "FL, γ=2": sigmoid_focal_loss(x, one, alpha=-1, gamma=2, fused=False).numpy(),
        "FL*, γ=2, β=1": sigmoid_focal_loss_star(x, one, alpha=-1, gamma=2, beta=1, fused=False).numpy(),
        "FL*, γ=4, β=0": sigmoid_focal_loss_star(x, one, alpha=-1, gamma=4, beta=0, fused=False).numpy(),
    }
    assert list(data) == list(expected)
    for label, want in expected.items():
        np.testing.assert_allclose(data[label][1], want, rtol=1e-12)
    sig = 1 / (1 + np.exp(-xt))
    star = -np.log(1 / (1 + np.exp(-(2 * xt + 1)))) / 2  # Appendix A
    np.testing.assert_allclose(data["FL*, γ=2, β=1"][1], star, rtol=1e-9)
    np.testing.assert_allclose(data["CE"][1], -np.log(sig), rtol=1e-9)


def test_fig6_derivatives_are_autograd_and_match_appendix_b():
    xt = np.linspace(-4, 4, 17)
    d = curves.derivatives_vs_xt(xt=xt)
    p = 1 / (1 + np.exp(-xt))
    np.testing.assert_allclose(d["CE"][1], p - 1, rtol=1e-9, atol=1e-12)
    fl = (1 - p) ** 2 * (2 * p * np.log(p) + p - 1)
    np.testing.assert_allclose(d["FL, γ=2"][1], fl, rtol=1e-8, atol=1e-12)
    for label, gamma, beta in (("FL*, γ=2, β=1", 2, 1), ("FL*, γ=4, β=0", 4, 0)):
        p_star = 1 / (1 + np.exp(-(gamma * xt + beta)))
        np.testing.assert_allclose(d[label][1], p_star - 1, rtol=1e-8, atol=1e-12)


def test_plot_losses_tool_writes_each_figure_in_each_format(tmp_path):
    argv = ["--out-dir", str(tmp_path), "--formats", "png,svg", "--figures", "1,6"]
    assert _tool("plot_losses").main(argv) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["fig1_focal_loss_vs_pt.png", "fig1_focal_loss_vs_pt.svg",
                     "fig6_derivatives_vs_xt.png", "fig6_derivatives_vs_xt.svg"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown figure format"):
        curves.plot_fig5(str(tmp_path / "x"), ["jpg"])


# -------------------------------------------------------------------------------------- Fig. 4
def _assert_cdf(frac, cum):
    assert frac[0] == 0 and frac[-1] == 1 and cum[0] == 0 and cum[-1] == 1.0
    assert np.all(np.diff(cum) >= 0)


def test_cumulative_loss_equal_losses_give_the_diagonal_and_one_dominant_loss_a_step():
    frac, cum = loss_cdf.cumulative_loss(np.full(1000, 0.7), points=101)
    _assert_cdf(frac, cum)
    np.testing.assert_allclose(cum, frac, atol=1e-12)
    losses = np.full(1000, 1e-6)
    losses[123] = 50.0
    frac, cum = loss_cdf.cumulative_loss(losses, points=1001)
    _assert_cdf(frac, cum)
    assert cum[-2] < 1e-4  # flat at ~0 until the last sample, then the step to 1
    assert loss_cdf.hardest_share(losses, 0.001) == pytest.approx(1.0, abs=1e-4)
    assert loss_cdf.hardest_share(np.ones(100), 0.2) == pytest.approx(0.2)
    assert loss_cdf.hardest_share(np.zeros(5), 0.2) is None
    with pytest.raises(ValueError, match="no samples"):
        loss_cdf.cumulative_loss(np.zeros(0))


def _image(logit_pos: float, logit_neg: float, n_pos: int = 10, n_neg: int = 1000, k: int = 3):
    """Hand-built predictions of one image: positives of class 1 with logit ``logit_pos`` for
    their class, negatives with ``logit_neg`` for every class, 5 ignored anchors."""
    n = n_pos + n_neg + 5
    logits = torch.full((n, k), -8.0)
    labels = torch.full((n,), k)
    labels[:n_pos] = 1
    logits[:n_pos, 1] = logit_pos
    logits[n_pos:n_pos + n_neg] = logit_neg
    labels[n - 5:] = -1
    logits[n - 5:] = 30.0  # ignored: would dominate if counted
    return logits, labels


def test_loss_cdf_on_hand_built_predictions():
    acc = loss_cdf.LossCDF(num_classes=3)
    acc.update(*_image(logit_pos=0.5, logit_neg=-2.0))
    assert acc.seen("positive") == 10 and acc.seen("negative") == 1000
    for kind in loss_cdf.KINDS:  # equal losses -> the diagonal, for every gamma
        for i in range(len(acc.gammas)):
            frac, cum = acc.curve(kind, i, points=11)
            _assert_cdf(frac, cum)
            np.testing.assert_allclose(cum, frac, atol=1e-6)
    logits, labels = _image(logit_pos=0.5, logit_neg=-8.0)
    logits[20] = 6.0  # one hard negative
    acc = loss_cdf.LossCDF(num_classes=3)
    acc.update(logits, labels)
    s = {r["gamma"]: r for r in acc.summary()["gammas"]}
    assert s[2.0]["negative_loss_share_hardest_1pct"] > 0.999  # a step at the end
    assert s[0.0]["negative_loss_share_hardest_1pct"] > 0.9
    assert s[2.0]["positive_loss_share_hardest_20pct"] == pytest.approx(0.2, abs=1e-6)
    frac, cum = acc.curve("negative", acc.gammas.index(2.0), points=1001)
    _assert_cdf(frac, cum)
    assert cum[-2] < 1e-3
    # the losses are the library's: positives FL(x, class 1) + FL of the other classes at target 0
    x = logits[:10]
    t = torch.nn.functional.one_hot(labels[:10], 4)[:, :3].float()
    want = sigmoid_focal_loss(x, t, alpha=-1, gamma=2.0, fused=False).sum(1)
    got = acc.losses("positive")[:, acc.gammas.index(2.0)]
    torch.testing.assert_close(got.sort().values, want.sort().values)


def test_loss_cdf_softmax_predictions():
    k = 3
    logits = torch.zeros(6, k + 1)
    labels = torch.tensor([0, 1, 3, 3, 3, -1])
    acc = loss_cdf.LossCDF(gammas=(0.0, 2.0), num_classes=k, softmax=True)
    acc.update(logits, labels)
    assert acc.seen("positive") == 2 and acc.seen("negative") == 3
    np.testing.assert_allclose(acc.losses("negative")[:, 0].numpy(), math.log(4), rtol=1e-6)


def test_sampling_is_bounded_uniform_and_seeded():
    cap = 100
    acc = loss_cdf.LossCDF(gammas=(0.0,), num_classes=1, max_positives=5, max_negatives=cap, seed=3)
    res = acc._res["negative"]
    for img in range(50):  # each image's negatives carry a loss that names the image
        logits = torch.full((400, 1), -1.0 - img * 0.01)
        acc.update(logits, torch.ones(400, dtype=torch.long))
        assert res.rows.shape[0] <= 2 * cap
    assert acc.seen("negative") == 20_000 and acc.seen("positive") == 0
    sample = acc.losses("negative")[:, 0]
    assert sample.shape[0] == cap
    images = torch.round((-torch.log(torch.expm1(sample)) - 1.0) / 0.01)  # softplus^-1: the image index
    assert (images < 25).sum() > 25 and (images >= 25).sum() > 25  # drawn from the whole stream
    again = loss_cdf.LossCDF(gammas=(0.0,), num_classes=1, max_negatives=cap, seed=3)
    for img in range(50):
        again.update(torch.full((400, 1), -1.0 - img * 0.01), torch.ones(400, dtype=torch.long))
    torch.testing.assert_close(again.losses("negative").sort(0).values, acc.losses("negative").sort(0).values)


def test_collect_uses_the_models_anchors_and_matcher():
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    batch = make_batch(num_images=2, size=64)
    acc = loss_cdf.collect(model, batch, gammas=(0.0, 2.0), progress=False)
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image(batch).tensor)
        anchors = model.anchor_generator([feats[f] for f in model.head_in_features])
        labels, _ = model.label_anchors(anchors, [b["instances"] for b in batch])
    labels = torch.stack(labels)
    assert acc.images == 2
    assert acc.seen("positive") == int(((labels >= 0) & (labels < 3)).sum()) > 0
    assert acc.seen("negative") == int((labels == 3).sum())
    assert model.training is False


def test_mismatched_weights_are_refused_naming_both_files(tmp_path):
    weights = tmp_path / "three_classes.pth"
    torch.save({"model": build_model(tiny_cfg(num_classes=3)).state_dict()}, weights)
    config = str(tmp_path / "four_classes.yaml")
    with pytest.raises(ValueError) as e:
        load_for_inference(build_model(tiny_cfg(num_classes=4)), str(weights), config)
    assert str(weights) in str(e.value) and config in str(e.value) and "shapes differ" in str(e.value)
    load_for_inference(build_model(tiny_cfg(num_classes=3)), str(weights), config)  # matching: fine


def test_loss_cdf_tool_end_to_end(tmp_path):
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    name = "figures_test_tiny"
    dicts = []
    for i in range(3):
        path = str(tmp_path / f"{i}.png")
        cv2.imwrite(path, np.full((64, 64, 3), 40 * i, dtype=np.uint8))
        dicts.append({"file_name": path, "image_id": i, "height": 64, "width": 64,
                      "annotations": [{"bbox": [8, 8, 40, 44], "bbox_mode": BoxMode.XYXY_ABS,
                                       "category_id": i % 3}]})
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    try:
        cfg = tiny_cfg()
        cfg.DATASETS.TEST = (name,)
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
        config = tmp_path / "tiny.yaml"
        config.write_text(cfg.dump())
        weights = tmp_path / "w.pth"
        torch.save({"model": build_model(cfg).state_dict()}, weights)
        out = tmp_path / "out"
        tool = _tool("loss_cdf")
        assert tool.main(["--config-file", str(config), "--weights", str(weights), "--num-images", "2",
                          "--gammas", "0,2", "--out-dir", str(out)]) == 0
        summary = json.loads((out / "fig4_summary.json").read_text())
        assert summary["images"] == 2 and [r["gamma"] for r in summary["gammas"]] == [0.0, 2.0]
        rows = list(csv.DictReader((out / "fig4_loss_cdf.csv").open()))
        ends = [r for r in rows if r["fraction_of_samples"] == "1.0000"]
        assert {(r["kind"], r["gamma"]) for r in ends} == {(k, g) for k in loss_cdf.KINDS for g in ("0", "2")}
        assert all(float(r["cumulative_normalized_loss"]) == 1.0 for r in ends)
        assert (out / "fig4_loss_cdf.png").stat().st_size > 1000
        bad = tmp_path / "bad.yaml"
        cfg.MODEL.RETINANET.NUM_CLASSES = 5
        bad.write_text(cfg.dump())
        with pytest.raises(ValueError, match="do not match"):
            tool.main(["--config-file", str(bad), "--weights", str(weights), "--out-dir", str(out)])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# -------------------------------------------------------------------------------------- Fig. 2
def test_speed_accuracy_reads_reports_and_plain_csv(tmp_path):
    report = {"title": "Table 1e", "environment": {"scale": "mini", "devices": ["CPU x"]}, "table": [
        {"row": "r50_400", "settings": {"depth": 18, "scale": 224},
         "metrics": {"AP": {"ours": 40.0, "paper": 30.5}, "ms": {"ours": 20.0, "paper": 64}}},
        {"row": "r50_500", "settings": {"depth": 18, "scale": 256},
         "metrics": {"AP": {"ours": None}, "ms": {"ours": None}}},  # pending: left out
    ]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    points, info = speed_accuracy.read_points(str(path))
    assert points == [{"series": "R18", "label": "224", "AP": 40.0, "ms": 20.0}]
    assert info["scale"] == "mini"
    rcsv = tmp_path / "report.csv"
    rcsv.write_text("row,depth,scale,AP_ours,AP_std,ms_ours,ms_std\nr,34,320,41.5,,55.0,\n")
    want = [{"series": "R34", "label": "320", "AP": 41.5, "ms": 55.0}]
    assert speed_accuracy.read_points(str(rcsv))[0] == want
    plain = tmp_path / "plain.csv"
    plain.write_text("depth,scale,AP,ms_per_image\n50,600,34.0,90\n")
    assert speed_accuracy.read_points(str(plain))[0][0]["ms"] == 90.0
    (tmp_path / "bad.csv").write_text("depth,scale,AP\n50,600,34\n")
    with pytest.raises(ValueError, match="bad.csv"):
        speed_accuracy.read_points(str(tmp_path / "bad.csv"))
    assert len(speed_accuracy.paper_points()) == 10
    assert {"series": "R101", "label": "800", "AP": 37.8, "ms": 198.0} in speed_accuracy.paper_points()
    tool = _tool("plot_speed_accuracy")
    assert tool.main(["--report", str(path), "--out-dir", str(tmp_path / "f"), "--formats", "png,pdf"]) == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["fig2_speed_accuracy.pdf",
                                                                  "fig2_speed_accuracy.png"]
