"""Ablation specs (focal_plugin.ablation.spec): parsing, errors, and the shipped specs against
the paper's tables and settings (PAPER.md)."""

from __future__ import annotations

import math
import os

import pytest
from fakes import TEST_SPEC

from focal_plugin.ablation import Runner, RunOptions, SpecError, list_specs, load_spec
from focal_plugin.anchors import anchor_sizes
from focal_plugin.engine import setup_cfg


# ----------------------------------------------------------------------------------- specs
@pytest.mark.parametrize("name", list_specs())
def test_shipped_specs_resolve_at_both_scales(name):
    spec = load_spec(name)
    assert spec.claims, f"{name}: every table states the paper's claims"
    # the paper's tables run at both scales; only the mini scans (not in the paper) are mini-only
    assert set(spec.scales) == ({"mini"} if name.endswith("_scan") else {"paper", "mini"})
    for scale in spec.scales:  # resolving merges every override into the row's config
        rows = spec.resolve(scale)
        assert [r.id for r in rows] == spec.row_ids


def _bad_spec(tmp_path, mutate):
    import yaml

    raw = yaml.safe_load(TEST_SPEC)
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return str(path)


@pytest.mark.parametrize("mutate, row, words", [
    (lambda r: r.update(colums=["x"]), None, "unknown key(s) ['colums']"),
    (lambda r: r["rows"][1].update(overide={}), "a75", "unknown key(s) ['overide']"),
    (lambda r: r["rows"][1]["overrides"].update({"MODEL.FOCAL.GAMA": 2.0}), "a75",
     "'MODEL.FOCAL.GAMA' is not a config key (base mini/smoke_tiny.yaml): cfg.MODEL.FOCAL.GAMA does not "
     "exist (config override); did you mean cfg.MODEL.FOCAL.GAMMA?"),
    (lambda r: r["rows"][0]["overrides"].update({"MODEL.FOCAL.GAMMA": "high"}), "a25", "MODEL.FOCAL.GAMMA"),
    (lambda r: r["rows"][0]["paper"].update(APs=1.0), "a25", "'APs', which is not one of the spec's metrics"),
    (lambda r: r["rows"][0]["settings"].update(γ="2"), "a25", "must name exactly the columns"),
    (lambda r: r["rows"].append(dict(r["rows"][0])), "a25", "duplicate row id"),
    (lambda r: r["claims"].append({"text": "x", "type": "better", "row": "a75", "than": "nope",
                                   "metric": "AP"}), None, "claim #5 refers to row 'nope'"),
    (lambda r: r["claims"].append({"text": "x", "type": "similar", "row": "a75", "to": "a25"}), None,
     "claim #5 (similar) is missing ['tol']"),
    (lambda r: r["claims"].append({"text": "x", "type": "better", "row": "a75", "than": "a25", "to": "a25"}),
     None, "unknown key(s) ['to'] in claim #5"),
    (lambda r: r["claims"].append({"text": "x", "type": "biggest", "row": "a75"}), None,
     "claim #5: unknown type 'biggest'"),
    (lambda r: r["rows"][0].update(seeds=0), "a25", "row.seeds = 0 is invalid"),
    (lambda r: r["scales"]["mini"].update(seeds=[2, 2]), None, "scales.mini.seeds = [2, 2] is invalid"),
    (lambda r: r["scales"]["mini"].update(base="mini/nope.yaml"), None,
     "base config 'mini/nope.yaml' not found"),
    (lambda r: r["rows"][0]["overrides"].update({"SEED": 3}), "a25", "set by the runner per cell"),
    (lambda r: r.update(timing={"images": 5, "warmup": 1}), None, "'timing' without the metric 'ms'"),
    (lambda r: r["claims"].append({"text": "x", "type": "better", "row": "a75", "than": "a25", "by": "big"}),
     None, "claim #5: by = 'big' is not a number"),
    (lambda r: r["metrics"].append("ms"), None, "metric 'ms' needs a 'timing"),
    (lambda r: r.update(metrics=[*r["metrics"], "ms"], timing={"images": 0, "warmup": 1}), None,
     "timing.images = 0 is invalid"),
])
def test_spec_errors_name_the_file_and_row(tmp_path, mutate, row, words):
    path = _bad_spec(tmp_path, mutate)
    with pytest.raises(SpecError) as info:
        load_spec(path).resolve("mini")
    message = str(info.value)
    assert message.startswith(path), message
    assert words in message, message
    if row is not None:
        assert f"row {row!r}" in message, message


# The paper's tables as PAPER.md states them (settings columns, then the metrics in spec order).
PAPER_TABLES = {
    "table1a": """
| .10 | 0.0 | 0.0 | 0.0 |
| .25 | 10.8 | 16.0 | 11.7 |
| .50 | 30.2 | 46.7 | 32.8 |
| .75 | 31.1 | 49.4 | 33.0 |
| .90 | 30.8 | 49.7 | 32.3 |
| .99 | 28.7 | 47.4 | 29.9 |
| .999 | 25.1 | 41.7 | 26.1 |""",
    "table1b": """
| 0 | .75 | 31.1 | 49.4 | 33.0 |
| 0.1 | .75 | 31.4 | 49.9 | 33.1 |
| 0.2 | .75 | 31.9 | 50.7 | 33.4 |
| 0.5 | .50 | 32.9 | 51.7 | 35.2 |
| 1.0 | .25 | 33.7 | 52.0 | 36.2 |
| 2.0 | .25 | 34.0 | 52.5 | 36.5 |
| 5.0 | .25 | 32.2 | 49.6 | 34.8 |""",
    "table1c": """
| 1 | 1 | 30.3 | 49.0 | 31.8 |
| 2 | 1 | 31.9 | 50.0 | 34.0 |
| 3 | 1 | 31.8 | 49.4 | 33.7 |
| 1 | 3 | 32.4 | 52.3 | 33.9 |
| 2 | 3 | 34.2 | 53.1 | 36.5 |
| 3 | 3 | 34.0 | 52.5 | 36.5 |
| 4 | 3 | 33.8 | 52.1 | 36.2 |""",
    "table1d": """
| OHEM | 128 | .7 | 31.1 | 47.2 | 33.2 |
| OHEM | 256 | .7 | 31.8 | 48.8 | 33.9 |
| OHEM | 512 | .7 | 30.6 | 47.0 | 32.6 |
| OHEM | 128 | .5 | 32.8 | 50.3 | 35.1 |
| OHEM | 256 | .5 | 31.0 | 47.4 | 33.0 |
| OHEM | 512 | .5 | 27.6 | 42.0 | 29.2 |
| OHEM 1:3 | 128 | .5 | 31.1 | 47.2 | 33.2 |
| OHEM 1:3 | 256 | .5 | 28.3 | 42.4 | 30.3 |
| OHEM 1:3 | 512 | .5 | 24.0 | 35.5 | 25.8 |
| FL | n/a | n/a | 36.0 | 54.9 | 38.7 |""",
    "table1e": """
| 50 | 400 | 30.5 | 47.8 | 32.7 | 11.2 | 33.8 | 46.1 | 64 |
| 50 | 500 | 32.5 | 50.9 | 34.8 | 13.9 | 35.8 | 46.7 | 72 |
| 50 | 600 | 34.3 | 53.2 | 36.9 | 16.2 | 37.4 | 47.4 | 98 |
| 50 | 700 | 35.1 | 54.2 | 37.7 | 18.0 | 39.3 | 46.4 | 121 |
| 50 | 800 | 35.7 | 55.0 | 38.5 | 18.9 | 38.9 | 46.3 | 153 |
| 101 | 400 | 31.9 | 49.5 | 34.1 | 11.6 | 35.8 | 48.5 | 81 |
| 101 | 500 | 34.4 | 53.1 | 36.8 | 14.7 | 38.5 | 49.1 | 90 |
| 101 | 600 | 36.0 | 55.2 | 38.7 | 17.4 | 39.6 | 49.7 | 122 |
| 101 | 700 | 37.1 | 56.6 | 39.8 | 19.1 | 40.6 | 49.4 | 154 |
| 101 | 800 | 37.8 | 57.5 | 40.8 | 20.2 | 41.1 | 49.2 | 198 |""",
    "table3": """
| CE | – | – | 31.1 | 49.4 | 33.0 |
| FL | 2.0 | – | 34.0 | 52.5 | 36.5 |
| FL* | 2.0 | 1.0 | 33.8 | 52.7 | 36.3 |
| FL* | 4.0 | 0.0 | 33.9 | 51.8 | 36.4 |""",
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_dry_run_lists_exactly_the_papers_rows(name, tmp_path):
    spec = load_spec(name)
    expected = [[c.strip() for c in line.strip().strip("|").split("|")]
                for line in PAPER_TABLES[name].strip().splitlines()]
    k = len(spec.columns)
    runner = Runner(spec, RunOptions(scale="paper", output_dir=str(tmp_path)))
    rows = runner.all_rows
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert [str(row.settings[c]) for c in spec.columns] == want[:k], row.id
        assert [row.paper[m] for m in spec.metrics] == [float(x) for x in want[k:]], row.id
    text = runner.dry_run()
    cell_lines = [line for line in text.splitlines() if line.startswith("[")]
    assert [line.split()[2] for line in cell_lines] == [f"{r.id}/seed{s}" for r in rows for s in r.seeds]
    assert text.count("python train_net.py --config-file") == len(cell_lines)
    assert not os.listdir(tmp_path), "a dry run writes nothing"


def test_other_specs_hold_the_papers_numbers():
    runner = Runner(load_spec("init"), RunOptions(scale="paper", output_dir="/nonexistent"))
    init = {r.id: r for r in runner.all_rows}
    assert init["ce_prior"].paper["AP"] == 30.2 and init["ce_zero"].paper_note == "diverges"
    fig7 = {r.id: r for r in load_spec("fig7_focal_star").resolve("paper")}
    assert fig7["g2_b1"].paper == {"AP": 33.8, "AP50": 52.7, "AP75": 36.3}
    assert fig7["g4_b0"].paper == {"AP": 33.9, "AP50": 51.8, "AP75": 36.4}
    assert fig7["fl"].paper["AP"] == 34.0
    head = {r.id: r for r in load_spec("table2_headline").resolve("paper")}
    assert [head["retinanet"].paper[m] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == \
        [39.1, 59.1, 42.3, 21.8, 42.7, 50.2]


# ------------------------------------------------------------- paper-scale settings (PAPER.md)
R50_600 = {
    "MODEL.META_ARCHITECTURE": "FocalRetinaNet",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "MODEL.RESNETS.OUT_FEATURES": ["res3", "res4", "res5"],
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.RETINANET.IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
    "MODEL.RETINANET.NUM_CONVS": 4,
    "MODEL.RETINANET.NUM_CLASSES": 80,
    "MODEL.RETINANET.IOU_THRESHOLDS": [0.4, 0.5],
    "MODEL.RETINANET.IOU_LABELS": [0, -1, 1],
    "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA": 0.11,
    "MODEL.RETINANET.SCORE_THRESH_TEST": 0.05,
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST": 1000,
    "MODEL.RETINANET.NMS_THRESH_TEST": 0.5,
    "MODEL.ANCHOR_GENERATOR.SIZES": anchor_sizes(3, (32, 64, 128, 256, 512)),
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.FOCAL.LOSS": "sigmoid_focal",
    "MODEL.FOCAL.GAMMA": 2.0,
    "MODEL.FOCAL.ALPHA": 0.25,
    "MODEL.FOCAL.PRIOR_PROB": 0.01,
    "MODEL.FOCAL.BIAS_INIT": "prior",
    "MODEL.FOCAL.NORMALIZER": "num_pos",
    "MODEL.FOCAL.OHEM.ENABLED": False,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.REFERENCE_WORLD_SIZE": 8,
    "SOLVER.BASE_LR": 0.01,
    "SOLVER.STEPS": [60000, 80000],
    "SOLVER.MAX_ITER": 90000,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.MOMENTUM": 0.9,
    "INPUT.MIN_SIZE_TRAIN": [600],
    "INPUT.MIN_SIZE_TEST": 600,
    "INPUT.RANDOM_FLIP": "horizontal",
    "DATASETS.TRAIN": ["coco_2017_train"],
    "DATASETS.TEST": ["coco_2017_val"],
}
R101 = {"MODEL.RESNETS.DEPTH": 101, "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-101.pkl"}
OHEM = {"MODEL.FOCAL.LOSS": "sigmoid_ce", "MODEL.FOCAL.ALPHA": -1.0, "MODEL.FOCAL.OHEM.ENABLED": True}


def _paper_rows():
    """Per (spec, row): PAPER.md's settings for that row (key -> value)."""
    out = {}
    for a in ("10", "25", "50", "75", "90", "99", "999"):
        out["table1a", f"alpha_.{a}"] = {"MODEL.FOCAL.LOSS": "sigmoid_ce",
                                         "MODEL.FOCAL.ALPHA": float("." + a)}
    for g, a in (("0", .75), ("0.1", .75), ("0.2", .75), ("0.5", .5), ("1.0", .25), ("2.0", .25),
                 ("5.0", .25)):
        out["table1b", f"gamma_{g}"] = {"MODEL.FOCAL.GAMMA": float(g), "MODEL.FOCAL.ALPHA": a}
    # γ = 0 is α-balanced CE: the CE loss itself (Table 1a's α = .75 row, the same cell)
    out["table1b", "gamma_0"] = dict(out["table1a", "alpha_.75"])
    for sc, ar in ((1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3), (4, 3)):
        out["table1c", f"sc{sc}_ar{ar}"] = {
            "MODEL.ANCHOR_GENERATOR.SIZES": [[b * 2 ** (k / sc) for k in range(sc)]
                                             for b in (32, 64, 128, 256, 512)],
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[1.0]] if ar == 1 else [[0.5, 1.0, 2.0]]}
    for b, t, frac, rid in [(b, t, -1.0, f"ohem_{b}_nms{t}") for t in (7, 5) for b in (128, 256, 512)] + \
            [(b, 5, 0.25, f"ohem13_{b}_nms5") for b in (128, 256, 512)]:
        out["table1d", rid] = {**R101, **OHEM, "MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE": b,
                               "MODEL.FOCAL.OHEM.NMS_THRESH": t / 10,
                               "MODEL.FOCAL.OHEM.POSITIVE_FRACTION": frac}
    out["table1d", "fl"] = dict(R101)
    for d in (50, 101):
        for s in (400, 500, 600, 700, 800):
            row = {"MODEL.RESNETS.DEPTH": d, "INPUT.MIN_SIZE_TRAIN": [s], "INPUT.MIN_SIZE_TEST": s,
                   "MODEL.WEIGHTS": f"detectron2://ImageNetPretrained/MSRA/R-{d}.pkl"}
            out["table1e", f"r{d}_{s}"] = row
    out["table3", "ce"] = {"MODEL.FOCAL.LOSS": "sigmoid_ce", "MODEL.FOCAL.ALPHA": 0.75}
    out["table3", "fl"] = {}
    out["table3", "flstar_g2_b1"] = {"MODEL.FOCAL.LOSS": "sigmoid_focal_star", "MODEL.FOCAL.GAMMA": 2.0,
                                     "MODEL.FOCAL.BETA": 1.0}
    out["table3", "flstar_g4_b0"] = {"MODEL.FOCAL.LOSS": "sigmoid_focal_star", "MODEL.FOCAL.GAMMA": 4.0,
                                     "MODEL.FOCAL.BETA": 0.0}
    out["init", "ce_prior"] = {"MODEL.FOCAL.LOSS": "sigmoid_ce", "MODEL.FOCAL.ALPHA": -1.0}
    out["init", "ce_zero"] = {"MODEL.FOCAL.LOSS": "sigmoid_ce", "MODEL.FOCAL.ALPHA": -1.0,
                              "MODEL.FOCAL.BIAS_INIT": "zero"}
    for g in (1.0, 2.0, 3.0, 4.0):
        for b in (-1.0, 0.0, 1.0, 2.0):
            out["fig7_focal_star", f"g{g:g}_b{b:g}"] = {"MODEL.FOCAL.LOSS": "sigmoid_focal_star",
                                                        "MODEL.FOCAL.GAMMA": g, "MODEL.FOCAL.BETA": b}
    out["fig7_focal_star", "fl"] = {}
    return out


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        return numbers and math.isclose(a, b, rel_tol=1e-6)
    return a == b


@pytest.mark.parametrize("name", ["table1a", "table1b", "table1c", "table1d", "table1e", "table3", "init",
                                  "fig7_focal_star"])
def test_paper_scale_configs_equal_the_papers_settings(name):
    expected = {rid: row for (spec, rid), row in _paper_rows().items() if spec == name}
    rows = load_spec(name).resolve("paper")
    assert sorted(r.id for r in rows) == sorted(expected)
    for r in rows:
        cfg = setup_cfg(r.base, list(r.opts))
        want = {**R50_600, **expected[r.id]}
        bad = {k: (_get(cfg, k), v) for k, v in want.items() if not _same(_get(cfg, k), v)}
        assert not bad, f"{name}/{r.id}: config != PAPER.md: {bad}"


@pytest.mark.parametrize("scale", ["paper", "mini"])
def test_headline_configs_share_backbone_scale_and_schedule(scale):
    rows = {r.id: setup_cfg(r.base, list(r.opts)) for r in load_spec("table2_headline").resolve(scale)}
    retina, frcnn = rows["retinanet"], rows["faster_rcnn"]
    assert retina.MODEL.META_ARCHITECTURE == "FocalRetinaNet"
    assert frcnn.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    if scale == "paper":  # Table 2: RetinaNet-101-800, scale jitter, 1.5x longer than the 90k schedule
        assert retina.MODEL.RESNETS.DEPTH == 101 and retina.INPUT.MIN_SIZE_TEST == 800
        assert max(retina.INPUT.MIN_SIZE_TRAIN) == 800 and len(retina.INPUT.MIN_SIZE_TRAIN) > 1
        assert retina.SOLVER.MAX_ITER == 1.5 * 90000 and retina.SOLVER.IMS_PER_BATCH == 16
    else:  # the mini protocol's RetinaNet (its Table 1 cells) against Faster R-CNN on the same footing
        assert retina.DATASETS.TRAIN == ("dense_shapes_proto_train",)
        assert retina.MODEL.FOCAL.LOSS == "sigmoid_focal" and retina.MODEL.FOCAL.GAMMA == 2.0
        assert retina.SOLVER.BASE_LR == frcnn.SOLVER.BASE_LR  # one recipe (paper: each its own lr)
    for key in ("MODEL.RESNETS.DEPTH", "MODEL.WEIGHTS", "MODEL.RESNETS.NORM", "MODEL.BACKBONE.FREEZE_AT",
                "MODEL.FPN.OUT_CHANNELS", "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
                "INPUT.MAX_SIZE_TEST",
                "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.IMS_PER_BATCH",
                "SOLVER.CLIP_GRADIENTS.ENABLED", "DATASETS.TRAIN", "DATASETS.TEST"):
        assert _get(retina, key) == _get(frcnn, key), key


