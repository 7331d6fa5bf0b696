"""The ablation runner (focal_plugin.ablation, tools/ablate.py): specs, resumable runs, reports.

Runner logic is tested with a fake training function (no detectron2 training): in this process
(``workers=0``) or, for the process-level tests (SIGKILL, two runners, pinned workers, submitit's
local executor), as ``fake_trainer:train`` imported by the cell processes from a temporary
folder on PYTHONPATH. Real tiny trainings are in test_ablation_e2e.py (slow).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from focal_plugin.ablation import (
    LockHeld,
    PlanMismatch,
    Runner,
    SpecError,
    core_shares,
    list_specs,
    load_spec,
    twins,
)
from focal_plugin.ablation.cell import divergence_iteration
from focal_plugin.anchors import anchor_sizes
from focal_plugin.engine import setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATE = os.path.join(ROOT, "tools", "ablate.py")

# ------------------------------------------------------------------------------ fake training
FAKE_TRAINER = '''
import os, time

def train(config_file, opts, resume, num_gpus=1):
    """Pretends to train: AP = 100 * MODEL.FOCAL.ALPHA + SEED / 5; one 'checkpoint' per step."""
    o = dict(zip(opts[::2], opts[1::2]))
    out, seed = o["OUTPUT_DIR"], int(o["SEED"])
    iters = int(o.get("SOLVER.MAX_ITER", 6))
    delay = float(os.environ.get("FAKE_TRAIN_DELAY", "0"))
    # FAKE_TRAIN_GATE=row:path: that row's cells wait at iteration 3 until the file exists
    gate_row, _, gate = os.environ.get("FAKE_TRAIN_GATE", "").partition(":")
    ckpt = os.path.join(out, "last_checkpoint")
    # detectron2's pointer: model_{it:07d}.pth after iteration it (resume at it + 1), model_final.pth
    name = open(ckpt).read().strip() if resume and os.path.exists(ckpt) else ""
    start = iters if name == "model_final.pth" else int(name[6:13]) + 1 if name else 0
    with open(os.path.join(out, "calls.log"), "a") as f:
        f.write(f"{start}\\n")
    for it in range(start, iters):
        time.sleep(delay)
        while gate and gate_row in out.split(os.sep) and it >= 3 and not os.path.exists(gate):
            time.sleep(0.1)
        if o.get("MODEL.FOCAL.BIAS_INIT") == "zero" and it == 3:
            raise FloatingPointError(f"FocalRetinaNet: loss_cls = nan at iteration {it} (fake)")
        with open(ckpt + ".tmp", "w") as f:
            f.write(f"model_{it:07d}.pth")
        os.replace(ckpt + ".tmp", ckpt)
    with open(os.path.join(out, "model_final.pth"), "w") as f:  # as detectron2's trainer at the end
        f.write(f"weights of {out}")
    with open(ckpt, "w") as f:
        f.write("model_final.pth")
    ap = 100 * float(o.get("MODEL.FOCAL.ALPHA", 0.25)) + seed / 5
    return {"metrics": {"fake_val": {"bbox": {"AP": ap, "AP50": ap + 10, "AP75": ap - 1,
                                               "AP-cls0": 1.0}}},
            "iterations": iters - start, "max_iter": iters, "resumed_from_iter": start}
'''

TEST_SPEC = """\
title: "Test table: fake α sweep"
source: "fake"
columns: [α]
metrics: [AP, AP50, AP75]
scales:
  mini: {base: mini/smoke_tiny.yaml}
  paper: {base: paper/retinanet_R_50_FPN_600_90k.yaml}
rows:
  - {id: a25, settings: {α: ".25"}, overrides: {MODEL.FOCAL.ALPHA: 0.25},
     paper: {AP: 10.8, AP50: 16.0, AP75: 11.7}}
  - {id: a75, settings: {α: ".75"}, overrides: {MODEL.FOCAL.ALPHA: 0.75},
     paper: {AP: 31.1, AP50: 49.4, AP75: 33.0}}
  - {id: zero, settings: {α: "zero init"}, overrides: {MODEL.FOCAL.BIAS_INIT: zero}, paper_note: diverges}
claims:
  - {text: "α = .75 beats α = .25", type: better, row: a75, than: a25, metric: AP}
  - {text: "the best α is .75", type: best, row: a75, metric: AP}
  - {text: "zero init diverges", type: diverges, row: zero}
  - {text: "α = .25 trains", type: converges, row: a25}
"""


def fake_train(config_file, opts, resume, num_gpus=1):
    namespace: dict = {}
    exec(FAKE_TRAINER, namespace)  # noqa: S102  (the same code the cell processes import)
    return namespace["train"](config_file, opts, resume, num_gpus)


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """A folder with fake_trainer.py on PYTHONPATH (for cell processes) and a test spec."""
    mod = tmp_path / "fakepath"
    mod.mkdir()
    (mod / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mod), ROOT, os.environ.get("PYTHONPATH", "")]))
    spec = tmp_path / "fake_table.yaml"
    spec.write_text(TEST_SPEC)
    return {"spec": str(spec), "out": str(tmp_path / "out"), "tmp": tmp_path}


def _status(out, row, seed=0, spec="fake_table"):
    with open(os.path.join(out, spec, "mini", row, f"seed{seed}", "status.json")) as f:
        return json.load(f)


def _calls(out, row, seed=0, spec="fake_table"):
    with open(os.path.join(out, spec, "mini", row, f"seed{seed}", "calls.log")) as f:
        return [int(x) for x in f.read().split()]


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
     "claim #5 (similar) is missing ['metric', 'tol']"),
    (lambda r: r["scales"]["mini"].update(base="mini/nope.yaml"), None,
     "base config 'mini/nope.yaml' not found"),
    (lambda r: r["rows"][0]["overrides"].update({"SEED": 3}), "a25", "set by the runner per cell"),
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


def test_command_line_override_errors_are_named(fake_env):
    spec = load_spec(fake_env["spec"])
    with pytest.raises(SpecError, match="command-line override"):
        spec.resolve("mini", extra_opts=["SOLVER.NOPE", "1"])


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
    runner = Runner(spec, "paper", str(tmp_path))
    rows = runner.all_rows
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert [str(row.settings[c]) for c in spec.columns] == want[:k], row.id
        assert [row.paper[m] for m in spec.metrics] == [float(x) for x in want[k:]], row.id
    text = runner.dry_run()
    cell_lines = [line for line in text.splitlines() if line.startswith("[")]
    assert [line.split()[2] for line in cell_lines] == [f"{r.id}/seed0" for r in rows]
    assert text.count("python train_net.py --config-file") == len(rows)
    assert not os.path.exists(tmp_path / name), "a dry run writes nothing"


def test_other_specs_hold_the_papers_numbers():
    init = {r.id: r for r in Runner(load_spec("init"), "paper", "/nonexistent").all_rows}
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


# -------------------------------------------------------------------------- runs (in process)
def test_ablate_command_of_a_start_event():
    from focal_plugin.ablation.history import ablate_command

    old = {"launcher": "local", "workers": 2, "seeds": 1, "only": None, "extra_opts": [], "label": None}
    want = "python tools/ablate.py --spec init --scale mini --workers 2"
    assert ablate_command(old, "init", "mini") == want
    new = {**old, "spec": "table1b", "scale": "paper", "seeds": 3, "only": ["gamma_0", "gamma_2.0"],
           "launcher": "submitit", "gpus_per_cell": 8, "output_dir": "out dir", "reuse": False,
           "extra_opts": ["SOLVER.MAX_ITER", 20], "keep_checkpoints": True, "imbalance": False,
           "submitit_cluster": "slurm", "submitit_params": {"timeout_min": 60}, "export": "results/paper",
           "train_fn": "my.mod:train"}
    assert ablate_command(new, "x", "mini") == (
        "python tools/ablate.py --spec table1b --scale paper --seeds 3 --only gamma_0 gamma_2.0 "
        "--launcher submitit --workers 2 --gpus-per-cell 8 --output-dir 'out dir' --no-reuse "
        "--train-fn my.mod:train --keep-checkpoints --no-imbalance --submitit-cluster slurm "
        "--submitit-param timeout_min=60 --export results/paper SOLVER.MAX_ITER 20")
    # in Markdown: one table cell whatever the label holds
    from focal_plugin.ablation.render import _md_code

    cell = _md_code(ablate_command({**old, "label": "my `x` | y\nz"}, "init", "mini"))
    assert "\n" not in cell and "\\|" in cell and cell.startswith("`` ") and cell.endswith(" ``")


def test_run_report_divergence_and_no_rerun(fake_env):
    spec = load_spec(fake_env["spec"])
    runner = Runner(spec, "mini", fake_env["out"], seeds=2, workers=0, train_fn=fake_train, progress=False,
                    imbalance=False, log=lambda m: None)
    summary = runner.run()
    assert summary["states"] == {"a25/seed0": "done", "a25/seed1": "done", "a75/seed0": "done",
                                 "a75/seed1": "done", "zero/seed0": "diverged", "zero/seed1": "diverged"}
    st = _status(fake_env["out"], "zero")
    assert st["diverged_at"] == 3 and "iteration 3" in st["error"]
    assert _status(fake_env["out"], "a75", 1)["metrics"]["AP"] == pytest.approx(75.2)
    assert "AP-cls0" not in _status(fake_env["out"], "a75", 1)["metrics"]

    md = open(summary["report"]["md"]).read()
    # the table: settings | ours (mean ± std, best in bold) | paper (best in bold) | Δ
    assert "| α | AP | AP50 | AP75 | AP (paper) | AP50 (paper) | AP75 (paper) | ΔAP | ΔAP50 | ΔAP75 |" in md
    assert "| .75 | **75.1 ± 0.1** | **85.1 ± 0.1** | **74.1 ± 0.1** | **31.1** | **49.4** | **33.0** | " \
           "+44.0 | +35.7 | +41.1 |" in md
    assert "| .25 | 25.1 ± 0.1 | 35.1 ± 0.1 | 24.1 ± 0.1 | 10.8 | 16.0 | 11.7 | +14.3 | +19.1 | +12.4 |" in md
    assert "| zero init | diverged at iteration 3, 3 | " in md and "| diverges |" in md
    verdicts = {c["claim"]: c["verdict"] for c in json.load(open(summary["report"]["json"]))["claims"]}
    assert verdicts == {"α = .75 beats α = .25": "reproduced", "the best α is .75": "reproduced",
                        "zero init diverges": "reproduced", "α = .25 trains": "reproduced"}
    assert ("| α = .75 beats α = .25 | 31.1 vs 10.8 (Δ +20.3) | AP 75.1 ± 0.1 vs 25.1 ± 0.1 "
            "(Δ +50.00, noise ±0.28) | **reproduced** |") in md
    assert "## Environment" in md and "| a25/seed1 | done |" in md
    assert "| local (workers 0) | 6 of 6 | 2 diverged, 4 done |" in md  # the runner's invocations
    # ... with the equivalent command (a spec file outside the shipped ones: by its path)
    spec_shown = os.path.relpath(fake_env["spec"])
    spec_shown = fake_env["spec"] if spec_shown.startswith("..") else spec_shown
    out_shown = os.path.relpath(fake_env["out"])
    out_shown = fake_env["out"] if out_shown.startswith("..") else out_shown
    assert (f"`` python tools/ablate.py --spec {spec_shown} --scale mini --seeds 2 --workers 0 "
            f"--output-dir {out_shown} --train-fn fake_train --no-imbalance ``") in md
    csv_lines = open(summary["report"]["csv"]).read().splitlines()
    assert csv_lines[0].startswith("row,α,AP_ours,AP_std,AP_n,AP_paper,AP_delta,")
    assert csv_lines[2].startswith("a75,.75,75.100,0.141,2,31.100,44.000,")

    # a second run keeps every finished cell, diverged ones included
    again = Runner(spec, "mini", fake_env["out"], seeds=2, workers=0, train_fn=fake_train, progress=False,
                   imbalance=False, log=lambda m: None).run()
    assert again["skipped"] == 6 and again["ran"] == 0
    assert _calls(fake_env["out"], "a25") == [0] and _calls(fake_env["out"], "zero") == [0]
    md = open(again["report"]["md"]).read()  # the no-op run is counted, not listed
    assert md.count("| local (workers 0) |") == 1
    assert "1 more invocation(s) found every cell finished and changed nothing" in md
    assert len(json.load(open(again["report"]["json"]))["environment"]["invocations"]) == 2


def test_identical_cell_of_another_spec_is_reused_not_retrained(fake_env):
    """Table 3's FL row = Table 1b's γ = 2 row: the second spec takes the finished cell's result
    (overrides compared as a mapping: spec-level then row-level equals row-level in any order);
    another seed or another value trains."""
    kw = dict(workers=0, train_fn=fake_train, progress=False, imbalance=False, log=lambda m: None)
    spec_level = fake_env["tmp"] / "table_b.yaml"  # GAMMA 2 for every row, set by the spec
    spec_level.write_text(TEST_SPEC.replace("fake α sweep", "b").replace(
        "rows:", "overrides: {MODEL.FOCAL.GAMMA: 2.0}\nrows:"))
    first = Runner(load_spec(str(spec_level)), "mini", fake_env["out"], seeds=2, **kw).run()
    assert first["states"]["a75/seed1"] == "done"
    row_level = fake_env["tmp"] / "table_3.yaml"  # the same settings, written per row, other order
    row_level.write_text(TEST_SPEC.replace("fake α sweep", "3").replace(
        "overrides: {MODEL.FOCAL.ALPHA: 0.75}", "overrides: {MODEL.FOCAL.GAMMA: 2.0, MODEL.FOCAL.ALPHA: 0.75}"
    ).replace("overrides: {MODEL.FOCAL.ALPHA: 0.25}",
              "overrides: {MODEL.FOCAL.ALPHA: 0.25, MODEL.FOCAL.GAMMA: 1.0}"))
    logs = []
    second = Runner(load_spec(str(row_level)), "mini", fake_env["out"], seeds=3, only=["a25", "a75"],
                    **{**kw, "log": logs.append}).run()
    reused = {c for c in second["states"]
              if "reused_from" in _status(fake_env["out"], *c.split("/seed"), spec="table_3")}
    assert reused == {"a75/seed0", "a75/seed1"}  # a75/seed2 has no twin; a25 has GAMMA 1, not 2
    assert second["ran"] == 4 and second["skipped"] == 2
    st = _status(fake_env["out"], "a75", 1, spec="table_3")
    assert st["reused_from"] == os.path.join("table_b", "mini", "a75", "seed1")
    assert st["metrics"] == _status(fake_env["out"], "a75", 1, spec="table_b")["metrics"]
    assert not os.path.exists(os.path.join(fake_env["out"], "table_3", "mini", "a75", "seed1", "calls.log"))
    assert _calls(fake_env["out"], "a75", 2, spec="table_3") == [0]
    assert _calls(fake_env["out"], "a25", 0, spec="table_3") == [0]
    assert any("a75/seed1: identical to the finished cell" in m for m in logs)
    md = open(second["report"]["md"]).read()  # the report counts it and names where it came from
    assert f"| a75/seed1 | done (result of {os.path.join('table_b', 'mini', 'a75', 'seed1')}) |" in md
    # reuse=False (--no-reuse) trains a cell even when a twin exists
    same = fake_env["tmp"] / "table_c.yaml"
    same.write_text(spec_level.read_text())
    forced = Runner(load_spec(str(same)), "mini", fake_env["out"], only=["a25"], reuse=False, **kw).run()
    assert forced["ran"] == 1 and _calls(fake_env["out"], "a25", 0, spec="table_c") == [0]


def test_export_copies_each_finished_cell_as_it_lands_and_the_report(fake_env):
    """--export DIR: a finished cell's small files reach DIR/<spec>/<row>/seed<k> before the next
    cell starts (so a cut run loses nothing committed); the report follows; nothing else is copied."""
    export = os.path.join(fake_env["tmp"], "results")
    seen_at_finish = {}

    report_at_finish = {}

    def log(msg):  # the runner logs "[state] <cell>" right after a cell finishes
        if msg.startswith("[done]") or msg.startswith("[diverged]"):
            cell = msg.split()[1]
            seen_at_finish[cell] = sorted(os.listdir(os.path.join(export, "fake_table", cell)))
            with open(os.path.join(export, "fake_table", "report.json")) as f:
                report_at_finish[cell] = {e["row"]: e["seeds_finished"] for e in json.load(f)["table"]}
            with open(os.path.join(export, "fake_table", "report.md")) as f:  # this runner: at work
                text = f.read()
            assert "| running |" in text and "killed" not in text

    runner = Runner(load_spec(fake_env["spec"]), "mini", fake_env["out"], seeds=2, workers=0,
                    train_fn=fake_train, progress=False, imbalance=False, log=log, export_dir=export)
    summary = runner.run()
    assert set(seen_at_finish) == set(summary["states"])  # every cell, diverged ones included
    # the exported report already counts each cell when it finishes (not only at the end of the run)
    finished = {}
    for cell in seen_at_finish:  # in the order they finished
        row = cell.split("/")[0]
        finished[row] = finished.get(row, 0) + 1
        assert report_at_finish[cell][row] == finished[row], (cell, report_at_finish[cell])
    for cell, files in seen_at_finish.items():
        assert {"cell.json", "status.json"} <= set(files) and "calls.log" not in files, (cell, files)
        src = os.path.join(fake_env["out"], "fake_table", "mini", cell, "status.json")
        assert open(os.path.join(export, "fake_table", cell, "status.json")).read() == open(src).read()
    for name in ("report.md", "report.csv", "report.json", "runs.jsonl"):
        assert open(os.path.join(export, "fake_table", name)).read() == \
            open(os.path.join(summary["run_dir"], name)).read()
    # --report --export (any --seeds) exports every finished seed on disk
    again = os.path.join(fake_env["tmp"], "again")
    Runner(load_spec(fake_env["spec"]), "mini", fake_env["out"], progress=False, imbalance=False,
           export_dir=again).report()
    assert os.path.isfile(os.path.join(again, "fake_table", "a75", "seed1", "status.json"))
    # an unfinished cell is not exported
    from focal_plugin.ablation.export import export_cell

    cell_dir = os.path.join(fake_env["out"], "fake_table", "mini", "a25", "seed0")
    status = json.load(open(os.path.join(cell_dir, "status.json")))
    with open(os.path.join(cell_dir, "status.json"), "w") as f:
        json.dump({**status, "state": "running"}, f)
    other = os.path.join(fake_env["tmp"], "other")
    assert export_cell(cell_dir, summary["run_dir"], other, "fake_table") == []


def test_export_copies_only_what_changed(fake_env):
    """The report after each cell re-exports every finished cell: unchanged files are not rewritten
    (same inode, no write), a changed one is."""
    from focal_plugin.ablation.export import export_cell

    export = os.path.join(fake_env["tmp"], "results")
    summary = Runner(load_spec(fake_env["spec"]), "mini", fake_env["out"], only=["a25"], workers=0,
                     train_fn=fake_train, progress=False, imbalance=False, export_dir=export,
                     log=lambda m: None).run()
    src = os.path.join(summary["run_dir"], "a25", "seed0")
    dst = os.path.join(export, "fake_table", "a25", "seed0")
    inodes = {n: os.stat(os.path.join(dst, n)).st_ino for n in os.listdir(dst)}
    assert export_cell(src, summary["run_dir"], export, "fake_table") == []
    assert {n: os.stat(os.path.join(dst, n)).st_ino for n in os.listdir(dst)} == inodes
    status = json.load(open(os.path.join(src, "status.json")))
    with open(os.path.join(src, "status.json"), "w") as f:
        json.dump({**status, "note": "changed"}, f)
    assert export_cell(src, summary["run_dir"], export, "fake_table") == [os.path.join(dst, "status.json")]
    assert json.load(open(os.path.join(dst, "status.json")))["note"] == "changed"
    # same size, same mtime, other bytes (a status rewritten within one mtime tick): still copied
    path, st = os.path.join(src, "status.json"), os.stat(os.path.join(src, "status.json"))
    with open(path, "w") as f:
        json.dump({**status, "note": "CHANGED"}, f)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert export_cell(src, summary["run_dir"], export, "fake_table") == [os.path.join(dst, "status.json")]
    assert json.load(open(os.path.join(dst, "status.json")))["note"] == "CHANGED"


def test_a_corrupt_exported_file_never_stops_a_run_and_is_named(fake_env):
    """An exported cell.json left unparseable (a merge conflict in results/) makes that cell's
    export fail with the file's name in the log; the cells still train and the report is written."""
    from focal_plugin.ablation.files import CorruptJSON, read_json

    export = os.path.join(fake_env["tmp"], "results")
    kw = dict(workers=0, train_fn=fake_train, progress=False, imbalance=False, export_dir=export)
    Runner(load_spec(fake_env["spec"]), "mini", fake_env["out"], only=["a25"], log=lambda m: None, **kw).run()
    exported = os.path.join(export, "fake_table", "a25", "seed0", "cell.json")
    with open(exported, "w") as f:
        f.write("<<<<<<< HEAD\n")
    with pytest.raises(CorruptJSON, match="cell.json: not valid JSON"):
        read_json(exported)
    logs = []
    summary = Runner(load_spec(fake_env["spec"]), "mini", os.path.join(fake_env["tmp"], "out2"),
                     only=["a25", "a75"], log=logs.append, **kw).run()
    assert set(summary["states"].values()) == {"done"} and os.path.isfile(summary["report"]["md"])
    assert any("export to" in m and exported in m and "not valid JSON" in m for m in logs), logs
    assert os.path.isfile(os.path.join(export, "fake_table", "a75", "seed0", "status.json"))
    with open(exported, "w") as f:
        f.write("[1, 2]")
    with pytest.raises(CorruptJSON, match="expected a JSON object, found list"):
        read_json(exported)


def test_a_report_that_fails_between_cells_never_stops_the_run(fake_env, monkeypatch):
    import focal_plugin.ablation.report as report_mod

    real, calls, logged = report_mod.write_reports, [], []

    def flaky(*args, **kwargs):  # the first rewrite (after the first cell) fails
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(report_mod, "write_reports", flaky)
    summary = Runner(load_spec(fake_env["spec"]), "mini", fake_env["out"], workers=0, train_fn=fake_train,
                     progress=False, imbalance=False, log=logged.append).run()
    assert summary["ran"] == len(summary["states"]) > 1  # every cell still ran
    assert len(calls) == summary["ran"] + 1  # after each cell and at the end
    assert any("report could not be rewritten (OSError: disk full)" in m for m in logged)
    assert os.path.isfile(summary["report"]["md"])


def test_a_timed_table_is_reported_at_the_end_only(fake_env, monkeypatch):
    """Cells of a timed table (ms/img) may be timing inference in parallel: no report is built
    between them (its CPU load would reach their timings), only at the end."""
    import focal_plugin.ablation.report as report_mod

    real, calls = report_mod.write_reports, []
    monkeypatch.setattr(report_mod, "write_reports", lambda *a, **k: calls.append(1) or real(*a, **k))
    summary = Runner(_timed_spec(fake_env), "mini", fake_env["out"], only=["a25", "a75"], workers=0,
                     train_fn=fake_train, progress=False, imbalance=False, log=lambda m: None).run()
    assert summary["ran"] == 2 and len(calls) == 1


def test_export_never_stops_a_run_never_mixes_cells_and_leaves_nothing_stale(fake_env):
    from focal_plugin.ablation.export import ExportConflict, export_cell

    kw = dict(workers=0, train_fn=fake_train, progress=False, imbalance=False)
    spec = load_spec(fake_env["spec"])
    blocker = os.path.join(fake_env["tmp"], "a_file")
    open(blocker, "w").close()
    with pytest.raises(ValueError, match="--export .*a_file"):  # refused before any training
        Runner(spec, "mini", fake_env["out"], export_dir=os.path.join(blocker, "sub"), **kw)
    export = os.path.join(fake_env["tmp"], "results")
    Runner(spec, "mini", fake_env["out"], only=["a25"], export_dir=export, log=lambda m: None, **kw).run()
    exported = os.path.join(export, "fake_table", "a25", "seed0")
    open(os.path.join(exported, "results.json"), "w").write("{}")  # as if an earlier attempt had one
    src = os.path.join(fake_env["out"], "fake_table", "mini", "a25", "seed0")
    assert not os.path.exists(os.path.join(src, "results.json"))
    export_cell(src, os.path.dirname(os.path.dirname(src)), export, "fake_table")
    assert not os.path.exists(os.path.join(exported, "results.json"))  # stale file removed
    # the same spec with other overrides, in another output folder, exported to the same place
    other = fake_env["tmp"] / "fake_table.yaml"
    other.write_text(TEST_SPEC.replace("{MODEL.FOCAL.ALPHA: 0.25}", "{MODEL.FOCAL.ALPHA: 0.3}"))
    logs = []
    summary = Runner(load_spec(str(other)), "mini", os.path.join(fake_env["tmp"], "out2"), only=["a25"],
                     export_dir=export, log=logs.append, **kw).run()
    assert summary["states"]["a25/seed0"] == "done"  # the run finished and reported
    assert any("export to" in m and "another cell" in m for m in logs)
    cell = json.load(open(os.path.join(exported, "cell.json")))
    assert "0.25" in json.dumps(cell["opts"]) and "0.3" not in json.dumps(cell["opts"])  # kept
    with pytest.raises(ExportConflict, match="another cell"):
        export_cell(os.path.join(fake_env["tmp"], "out2", "fake_table", "mini", "a25", "seed0"),
                    os.path.join(fake_env["tmp"], "out2", "fake_table", "mini"), export, "fake_table")


@pytest.mark.parametrize("scale", ["mini", "paper"])
def test_shipped_specs_share_their_common_cells(scale, tmp_path):
    """The rows the paper reports twice are one cell each: Table 3's CE = Table 1a's α = .75 =
    Table 1b's γ = 0, Table 3's FL = Table 1b's γ = 2 (so the runner reuses them)."""
    def identity(spec, row, timing=True):
        runner = Runner(load_spec(spec), scale, str(tmp_path), only=[row], progress=False, imbalance=False)
        return twins.identity(runner.definition(runner.plan()[0]), timing)

    assert identity("table3", "ce") == identity("table1a", "alpha_.75") == identity("table1b", "gamma_0")
    assert identity("table3", "fl") == identity("table1b", "gamma_2.0")
    # timed rows (Tables 1e and 2) train like an untimed row: they take its weights, then are timed
    assert identity("table1b", "gamma_2.0") != identity("table1b", "gamma_0")
    if scale == "paper":
        assert identity("table1e", "r50_600") != identity("table1b", "gamma_2.0")
        assert identity("table1e", "r50_600", False) == identity("table1b", "gamma_2.0", False)
        assert identity("table1e", "r101_600", False) == identity("table1d", "fl", False)
    else:
        assert identity("table2_headline", "retinanet", False) == identity("table1b", "gamma_2.0", False)
    assert identity("table3", "fl") != identity("table3", "ce")


def _timed_spec(fake_env, name="timed"):
    path = fake_env["tmp"] / f"{name}.yaml"
    path.write_text(TEST_SPEC.replace("fake α sweep", name).replace(
        "metrics: [AP, AP50, AP75]", "metrics: [AP, AP50, AP75, ms]\ntiming: {images: 5, warmup: 1}"))
    return load_spec(str(path))


def test_twin_edge_cases_never_record_a_wrong_result(fake_env, monkeypatch):
    """A finished cell keeps the definition it ran with (a later run with other GPUs or another
    trainer does not relabel it); another trainer's cells are nobody's twins; a diverged twin
    gives its result to a timed cell; a copy cut short is redone; --no-reuse undoes a copy and
    trains; a cell running in another process is left alone; glob characters in the folder."""
    from focal_plugin.ablation import cell as cell_mod
    from focal_plugin.ablation.files import FileLock

    monkeypatch.setattr(cell_mod, "_time_cell", lambda cfg, opts, timing: {"ms": 1.0, **timing})
    out = str(fake_env["tmp"] / "runs[1]")  # glob characters in the output folder
    kw = dict(workers=0, progress=False, imbalance=False, log=lambda m: None)
    spec = load_spec(fake_env["spec"])
    Runner(spec, "mini", out, only=["a75", "zero"], train_fn=fake_train, **kw).run()
    Runner(spec, "mini", out, only=["a75"], train_fn=fake_train, gpus_per_cell=2, **kw).run()  # nothing runs
    definition = json.load(open(os.path.join(out, "fake_table", "mini", "a75", "seed0", "cell.json")))
    assert definition["num_gpus"] == 1

    def other(name, **extra):
        return Runner(_timed_spec(fake_env, name), "mini", out, only=["a75"],
                      **{**kw, "train_fn": fake_train, **extra})

    assert "takes the weights of" in other("t1").dry_run()
    assert "takes the" not in other("t2", gpus_per_cell=2).dry_run()  # 2 processes: another training

    def named_fake(*a, **k):
        return fake_train(*a, **k)

    assert "takes the" not in other("t3", train_fn=named_fake).dry_run()  # another trainer
    # a diverged twin: the timed cell diverges too, without training again
    zero = Runner(_timed_spec(fake_env, "t4"), "mini", out, only=["zero"], train_fn=fake_train, **kw).run()
    st = _status(out, "zero", spec="t4")
    assert zero["ran"] == 0 and st["state"] == "diverged" and st["reused_from"]
    # killed while copying: status written, pointer not yet -> the next run copies again
    cell = os.path.join(out, "t5", "mini", "a75", "seed0")
    twin = os.path.join(out, "fake_table", "mini", "a75", "seed0")
    twins.take_weights(cell, twin, out)
    os.remove(os.path.join(cell, "last_checkpoint"))
    other("t5").run()
    st = _status(out, "a75", spec="t5")
    assert _calls(out, "a75", spec="t5") == [6] and st["trained_by"] and st["iterations"] == 0
    # the copy's pointer names the copied final weights, whatever the twin's pointer says
    with open(os.path.join(twin, "last_checkpoint")) as f:
        pointer = f.read()
    with open(os.path.join(twin, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    cell = os.path.join(out, "t8", "mini", "a75", "seed0")
    twins.take_weights(cell, twin, out)
    with open(os.path.join(cell, "last_checkpoint")) as f:
        assert f.read() == "model_final.pth"
    with open(os.path.join(twin, "last_checkpoint"), "w") as f:
        f.write(pointer)
    # copied, then the cell failed: --no-reuse removes the copy and trains from scratch
    cell = os.path.join(out, "t6", "mini", "a75", "seed0")
    twins.take_weights(cell, twin, out)
    json.dump({"state": "failed", "trained_by": "x", "error": "timing failed"},
              open(os.path.join(cell, "status.json"), "w"))
    other("t6", reuse=False).run()
    st = _status(out, "a75", spec="t6")
    assert _calls(out, "a75", spec="t6") == [0] and "trained_by" not in st and st["iterations"] == 6
    # a cell another process runs is not touched (its status stays; the run reports it busy)
    cell = os.path.join(out, "t7", "mini", "a75", "seed0")
    os.makedirs(cell)
    json.dump({"state": "running"}, open(os.path.join(cell, "status.json"), "w"))
    holder = FileLock(os.path.join(cell, cell_mod.LOCK_FILE))
    holder.acquire()
    try:
        assert "takes the" not in other("t7").dry_run()
        other("t7").run()
        assert _status(out, "a75", spec="t7") == {"state": "running"}
        assert not os.path.exists(os.path.join(cell, "last_checkpoint"))
    finally:
        holder.release()


def test_twins_compare_the_config_a_cell_really_trained_with(fake_env):
    """A finished cell's saved config.yaml decides: a base file edited since it ran (here its
    saved lr differs) makes it nobody's twin; the same values reached through other overrides do."""
    kw = dict(workers=0, train_fn=fake_train, progress=False, imbalance=False, log=lambda m: None)
    spec = load_spec(fake_env["spec"])
    Runner(spec, "mini", fake_env["out"], seeds=2, only=["a75"], **kw).run()
    cfg = setup_cfg(spec.resolve("mini")[1].base, ["MODEL.FOCAL.ALPHA", "0.75"], freeze=False)
    for seed, lr in ((0, cfg.SOLVER.BASE_LR), (1, cfg.SOLVER.BASE_LR * 2)):
        cfg.SOLVER.BASE_LR = lr
        saved = os.path.join(fake_env["out"], "fake_table", "mini", "a75", f"seed{seed}", "config.yaml")
        with open(saved, "w") as f:
            f.write(cfg.dump())
    other = fake_env["tmp"] / "other.yaml"  # ALPHA .75 through the spec, GAMMA 2 (the default) per row
    other.write_text(TEST_SPEC.replace("fake α sweep", "other")
                     .replace("rows:", "overrides: {MODEL.FOCAL.ALPHA: 0.75}\nrows:")
                     .replace("{MODEL.FOCAL.ALPHA: 0.75}}", "{MODEL.FOCAL.GAMMA: 2.0}}"))
    out = Runner(load_spec(str(other)), "mini", fake_env["out"], seeds=2, only=["a75"], **kw).run()
    assert _status(fake_env["out"], "a75", 0, spec="other")["reused_from"]
    assert "reused_from" not in _status(fake_env["out"], "a75", 1, spec="other")  # trained with lr x 2
    assert out["ran"] == 1


def test_timed_cell_takes_the_weights_of_its_untimed_twin_and_only_evaluates(fake_env, monkeypatch):
    """Table 2's RetinaNet row = Table 1b's γ = 2 row but timed: the twin's final checkpoint is
    copied (not linked), the cell resumes at the last iteration (no training step), is evaluated
    and timed here; an exact twin still wins, and a cell with its own checkpoint keeps it."""
    from focal_plugin.ablation import cell as cell_mod

    monkeypatch.setattr(cell_mod, "_time_cell", lambda cfg, opts, timing: {"ms": 12.5, **timing})
    kw = dict(workers=0, train_fn=fake_train, progress=False, imbalance=False)
    Runner(load_spec(fake_env["spec"]), "mini", fake_env["out"], only=["a25", "a75"], **kw,
           log=lambda m: None).run()
    twin = os.path.join(fake_env["out"], "fake_table", "mini", "a75", "seed0")
    timed = fake_env["tmp"] / "timed.yaml"
    timed.write_text(TEST_SPEC.replace("fake α sweep", "timed").replace(
        "metrics: [AP, AP50, AP75]", "metrics: [AP, AP50, AP75, ms]\ntiming: {images: 5, warmup: 1}"))
    # a25 already has a checkpoint of its own (an interrupted attempt): it resumes that one
    own = os.path.join(fake_env["out"], "timed", "mini", "a25", "seed0")
    os.makedirs(own)
    with open(os.path.join(own, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")  # resumes at iteration 4
    logs = []
    plan = Runner(load_spec(str(timed)), "mini", fake_env["out"], only=["a25", "a75"], **kw).dry_run()
    assert f"takes the weights of {os.path.join('fake_table', 'mini', 'a75', 'seed0')} (evaluated" in plan
    assert "a25/seed0" in plan and "weights of " + os.path.join("fake_table", "mini", "a25") not in plan
    out = Runner(load_spec(str(timed)), "mini", fake_env["out"], only=["a25", "a75"], **kw,
                 log=logs.append).run()
    assert out["states"] == {"a25/seed0": "done", "a75/seed0": "done"}
    st = _status(fake_env["out"], "a75", spec="timed")
    assert st["trained_by"] == os.path.join("fake_table", "mini", "a75", "seed0")
    assert _calls(fake_env["out"], "a75", spec="timed") == [6]  # resumed at the end: no step trained
    assert st["iterations"] == 0 and st["metrics"]["ms"] == 12.5
    assert st["metrics"]["AP"] == _status(fake_env["out"], "a75")["metrics"]["AP"]
    copied = os.path.join(fake_env["out"], "timed", "mini", "a75", "seed0", "model_final.pth")
    # the trainer rewrites model_final.pth at its end (detectron2 does): the twin's file is untouched
    assert open(os.path.join(twin, "model_final.pth")).read() == f"weights of {twin}"
    assert not os.path.samefile(copied, os.path.join(twin, "model_final.pth"))  # a copy, not a link
    assert any("a75/seed0: trained as the finished cell" in m for m in logs)
    assert "trained_by" not in _status(fake_env["out"], "a25", spec="timed")
    assert _calls(fake_env["out"], "a25", spec="timed") == [4]
    md = open(out["report"]["md"]).read()
    assert f"| a75/seed0 | done (weights of {os.path.join('fake_table', 'mini', 'a75', 'seed0')}) |" in md
    # the timed cell is an exact twin for a spec timed the same way: its result (and ms) is taken
    third = fake_env["tmp"] / "third.yaml"
    third.write_text(timed.read_text().replace('"Test table: timed"', '"Test table: third"'))
    again = Runner(load_spec(str(third)), "mini", fake_env["out"], only=["a75"], **kw,
                   log=lambda m: None).run()
    assert again["ran"] == 0 and _status(fake_env["out"], "a75", spec="third")["reused_from"] == os.path.join(
        "timed", "mini", "a75", "seed0")
    # an exact twin (same timing) is preferred: its result is taken, nothing runs
    fourth = fake_env["tmp"] / "fourth.yaml"
    fourth.write_text(TEST_SPEC.replace("fake α sweep", "fourth"))
    last = Runner(load_spec(str(fourth)), "mini", fake_env["out"], only=["a75"], **kw,
                  log=lambda m: None).run()
    assert last["ran"] == 0 and "reused_from" in _status(fake_env["out"], "a75", spec="fourth")
    fifth = fake_env["tmp"] / "fifth.yaml"
    fifth.write_text(TEST_SPEC.replace("fake α sweep", "fifth"))
    plan = Runner(load_spec(str(fifth)), "mini", fake_env["out"], only=["a75"], **kw).dry_run()
    assert f"takes the result of {os.path.join('fake_table', 'mini', 'a75', 'seed0')}\n" in plan
    assert "takes the" not in Runner(load_spec(str(fifth)), "mini", fake_env["out"], only=["a75"], **kw,
                                     reuse=False).dry_run()


def test_one_seed_is_inconclusive_and_report_rebuilds(fake_env):
    spec = load_spec(fake_env["spec"])
    runner = Runner(spec, "mini", fake_env["out"], only=["a25", "a75"], workers=0, train_fn=fake_train,
                    progress=False, imbalance=False, log=lambda m: None)
    runner.run()
    report = json.load(open(runner.report()["json"]))
    verdicts = {c["claim"]: c["verdict"] for c in report["claims"]}
    assert verdicts["α = .75 beats α = .25"] == "inconclusive"  # one seed: noise unknown
    assert verdicts["zero init diverges"] == "no data"
    zero = next(e for e in report["table"] if e["row"] == "zero")
    assert zero["metrics"]["AP"]["ours_text"] == "not run"


def test_interrupted_cell_resumes_failed_cell_retries_changed_plan_refused(fake_env):
    spec = load_spec(fake_env["spec"])
    calls = {"n": 0}

    def flaky(config_file, opts, resume, num_gpus=1):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk full (fake)")
        return fake_train(config_file, opts, resume, num_gpus)

    kw = dict(only=["a25"], workers=0, progress=False, imbalance=False, log=lambda m: None)
    first = Runner(spec, "mini", fake_env["out"], train_fn=flaky, **kw).run()
    assert first["states"] == {"a25/seed0": "failed"}
    assert "disk full" in _status(fake_env["out"], "a25")["error"]
    # pretend the process was killed at iteration 4 of a retry: state running, checkpoint 4
    cell = os.path.join(fake_env["out"], "fake_table", "mini", "a25", "seed0")
    with open(os.path.join(cell, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")  # resumes at iteration 4
    st = _status(fake_env["out"], "a25")
    st["state"] = "running"
    json.dump(st, open(os.path.join(cell, "status.json"), "w"))
    runner = Runner(spec, "mini", fake_env["out"], train_fn=flaky, **kw)
    assert "[interrupted" in runner.dry_run()
    # the report says so too (its process is gone: nobody holds the cell's lock) ...
    assert "| a25/seed0 | interrupted |" in open(runner.report()["md"]).read()
    from focal_plugin.ablation.cell import LOCK_FILE
    from focal_plugin.ablation.files import FileLock

    holder = FileLock(os.path.join(cell, LOCK_FILE)).acquire()  # ... and "running" while it runs
    try:
        assert "| a25/seed0 | running |" in open(runner.report()["md"]).read()
    finally:
        holder.release()
    second = runner.run()
    assert second["states"] == {"a25/seed0": "done"}
    st = _status(fake_env["out"], "a25")
    assert st["resumed"] and st["resumed_from_iter"] == 4 and st["attempts"] == 2
    # the same folder with other settings is refused, naming the cell and the change
    with pytest.raises(PlanMismatch, match=r"a25/seed0: opts"):
        Runner(spec, "mini", fake_env["out"], train_fn=flaky, extra_opts=["SOLVER.MAX_ITER", "9"], **kw).run()


def test_commit_is_dirty_only_with_uncommitted_code(tmp_path):
    """A cell records the commit it ran; results and docs updated by the runs themselves
    (--export results/mini) do not make it "+dirty", an edited module or config does."""
    from focal_plugin.ablation.cell import _git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for rel in ("focal_plugin/configs/a.yaml", "results/mini/report.md", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = _git_commit(str(tmp_path))
    assert len(clean) == 12 and "+" not in clean
    (tmp_path / "results/mini/report.md").write_text("y\n")
    (tmp_path / "README.md").write_text("y\n")
    assert _git_commit(str(tmp_path)) == clean
    (tmp_path / "focal_plugin/configs/a.yaml").write_text("y\n")
    assert _git_commit(str(tmp_path)) == clean + "+dirty"


def test_divergence_message_parsing():
    assert divergence_iteration(FloatingPointError("loss_cls = nan at iteration 17 (...)")) == 17
    assert divergence_iteration(FloatingPointError("Loss became infinite or NaN at iteration=88!")) == 88
    spawned = RuntimeError("ProcessRaisedException: ... FloatingPointError: x at iteration 5")
    assert divergence_iteration(spawned) == 5
    assert divergence_iteration(FloatingPointError("no iteration stated")) == -1
    assert divergence_iteration(RuntimeError("CUDA out of memory")) is None


def _fake_pool(monkeypatch, tmp_path, durations, workers=2, lend=True, slow_finish=None):
    """run_pool over fake cells that sleep; returns (cpus each cell started on, offers by cell).
    ``slow_finish``: seconds ``on_finished`` takes per cell (the runner exports results there)."""
    import focal_plugin.ablation.launch as launch_mod

    started = {}

    def fake_spawn(cell_dir, cpus, gpus, share_token=None):
        started[os.path.basename(cell_dir)] = list(cpus)
        assert (share_token is not None) == lend
        time.sleep(durations[os.path.basename(cell_dir)])
        return {"state": "done"}

    monkeypatch.setattr(launch_mod, "spawn_cell", fake_spawn)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    dirs = []
    for name in durations:
        (tmp_path / name).mkdir()
        dirs.append(str(tmp_path / name))
    done = []

    def finished(i, status):
        time.sleep((slow_finish or {}).get(os.path.basename(dirs[i]), 0.0))
        done.append(i)

    launch_mod.run_pool(dirs, workers, finished, lend_cpus=lend, cpus=[0, 1])
    assert sorted(done) == list(range(len(dirs)))
    offers = {n: json.loads((tmp_path / n / "cpus.json").read_text())["cpus"]
              for n in durations if (tmp_path / n / "cpus.json").exists()}
    return started, offers


def test_pool_lends_idle_cpus_to_the_last_running_cell(monkeypatch, tmp_path):
    # a (short) and b (long) start on one CPU each; c follows a; when c ends nothing is left to
    # start, so its CPU goes to b — not while c was still queued (a's end)
    started, offers = _fake_pool(monkeypatch, tmp_path, {"a": 0.05, "b": 1.0, "c": 0.05})
    assert started["a"] != started["b"] and len(started["a"]) == len(started["b"]) == 1
    assert offers == {"b": [0, 1]}


def test_the_last_cell_takes_the_cpus_of_workers_already_idle(monkeypatch, tmp_path):
    # a ends first but its result takes a while to record (export): b ends meanwhile, while c has
    # not started, so b has no one to lend to then; c, the last cell, must get b's CPU — at its
    # start if b's worker is idle by then, else by b's offer (whichever thread takes the lock first)
    started, offers = _fake_pool(monkeypatch, tmp_path, {"a": 0.05, "b": 0.1, "c": 0.3},
                                 slow_finish={"a": 0.4})
    assert (started["c"], offers) in [([0, 1], {}), ([0], {"c": [0, 1]}), ([1], {"c": [0, 1]})]


def test_pool_keeps_thread_counts_when_cells_are_timed(monkeypatch, tmp_path):
    started, offers = _fake_pool(monkeypatch, tmp_path, {"a": 0.05, "b": 0.5, "c": 0.05}, lend=False)
    assert offers == {} and all(len(c) == 1 for c in started.values())
    started, _ = _fake_pool(monkeypatch, tmp_path, {"x": 0.01}, lend=False)
    assert started == {"x": [0]}  # timed: one cell of two workers keeps one worker's share


def test_pool_gives_a_lone_cell_every_cpu(monkeypatch, tmp_path):
    started, offers = _fake_pool(monkeypatch, tmp_path, {"x": 0.01})
    assert started == {"x": [0, 1]} and offers == {}


def test_cpu_share_hook_takes_its_own_pools_offers_once(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import focal_plugin.ablation.cell as cell_module
    from focal_plugin.ablation.launch import offer_cpus

    pins = []
    monkeypatch.setattr(cell_module, "pin_to", lambda cpus: pins.append(list(cpus)))
    monkeypatch.setitem(cell_module.CPU_SHARE, "lent", [])
    hook = cell_module.cpu_share_hook(str(tmp_path), "tok", period=20)
    hook.trainer = SimpleNamespace(iter=19)
    hook.after_step()  # no offer yet
    offer_cpus(str(tmp_path), [0], "an-earlier-killed-run")
    hook.after_step()
    assert pins == [], "an offer of another pool (a stale file) is ignored"
    offer_cpus(str(tmp_path), [0], "tok")
    hook.trainer.iter = 18  # not a multiple of the period: not read
    hook.after_step()
    assert pins == []
    hook.trainer.iter = 39
    hook.after_step()
    hook.after_step()  # the same offer is applied once
    assert pins == [[0]] and cell_module.CPU_SHARE["lent"] == [{"iteration": 40, "cpus": [0]}]
    offer_cpus(str(tmp_path), sorted(os.sched_getaffinity(0)), "tok")
    os.utime(tmp_path / "cpus.json", ns=(1, 1))  # a new mtime even within the clock's resolution
    hook.after_step()
    assert pins == [[0]], "an offer equal to the current affinity changes nothing"


def test_cpu_share_hook_survives_an_offer_it_cannot_take(monkeypatch, tmp_path, caplog):
    from types import SimpleNamespace

    import focal_plugin.ablation.cell as cell_module
    from focal_plugin.ablation.launch import offer_cpus

    monkeypatch.setitem(cell_module.CPU_SHARE, "lent", [])
    before = os.sched_getaffinity(0)
    hook = cell_module.cpu_share_hook(str(tmp_path), "tok", period=1)
    hook.trainer = SimpleNamespace(iter=0)
    offer_cpus(str(tmp_path), [4096], "tok")  # no such CPU on this machine
    with caplog.at_level("WARNING"):
        hook.after_step()  # logged, not raised: lending is an optimisation
    assert "could not take the CPUs [4096]" in caplog.text
    assert os.sched_getaffinity(0) == before and cell_module.CPU_SHARE["lent"] == []


@pytest.mark.parametrize("kwargs, timed, lend", [
    ({}, False, True),
    ({}, True, False),  # timed rows keep equal thread counts
    ({"train_fn": "fake_trainer:train"}, False, False),  # a custom trainer has no cpu_share_hook
    ({"gpus_per_cell": 2}, False, False),  # several processes per cell (gloo on CPU)
])
def test_runner_lends_cpus_only_where_a_cell_can_take_them(fake_env, monkeypatch, kwargs, timed, lend):
    import dataclasses as dc

    import focal_plugin.ablation.runner as runner_mod

    seen = []

    def fake_pool(dirs, workers, on_finished, lend_cpus=True, cpus=None):
        seen.append(lend_cpus)
        raise KeyboardInterrupt  # stop here: only the decision matters

    monkeypatch.setattr(runner_mod, "run_pool", fake_pool)
    spec = load_spec(fake_env["spec"])
    if timed:
        spec = dc.replace(spec, timing={"images": 2, "warmup": 1})
    runner = Runner(spec, "mini", fake_env["out"], workers=2, progress=False, imbalance=False,
                    log=lambda m: None, **kwargs)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert seen == [lend]


def test_core_shares():
    assert core_shares(2, [0, 1]) == [[0], [1]]
    assert core_shares(1, [0, 1]) == [[0, 1]]
    assert core_shares(3, [4, 5, 6, 7, 8, 9]) == [[4, 5], [6, 7], [8, 9]]
    assert core_shares(3, [0, 1]) == [[0], [1], [0]]


def test_cli_dry_run_list_and_errors(capsys, tmp_path):
    sys.path.insert(0, os.path.dirname(ABLATE))
    try:
        import ablate
    finally:
        sys.path.pop(0)
    assert ablate.main(["--spec", "table1b", "--scale", "paper", "--dry-run",
                        "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("[pending") == 7 and "MODEL.FOCAL.GAMMA 0.1" in out
    args = ablate.parse_args(["--spec", "table1b", "--only", "gamma_0", "gamma_2.0", "SOLVER.MAX_ITER", "3"])
    assert args.only == ["gamma_0", "gamma_2.0"] and args.opts == ["SOLVER.MAX_ITER", "3"]
    assert ablate.main(["--list"]) == 0
    assert "table1e" in capsys.readouterr().out
    assert ablate.main(["--spec", "table1b", "--only", "gamma_9", "--dry-run"]) == 2
    assert "unknown row(s) ['gamma_9']" in capsys.readouterr().err


# ------------------------------------------------------------------- processes (fake trainer)
def _ablate(fake_env, *args, **popen):
    cmd = [sys.executable, ABLATE, "--spec", fake_env["spec"], "--output-dir", fake_env["out"],
           "--train-fn", "fake_trainer:train", "--no-progress", "--no-imbalance", *args]
    return subprocess.Popen(cmd, cwd=str(fake_env["tmp"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_sigkill_mid_cell_then_resume_and_second_runner_refused(fake_env, monkeypatch, request):
    """Kill the runner (SIGKILL) while it trains the second cell: the first cell is kept, the
    second resumes from its checkpoint; meanwhile a second runner on the folder is refused."""
    gate = fake_env["tmp"] / "release"
    monkeypatch.setenv("FAKE_TRAIN_GATE", f"a75:{gate}")  # a75 waits at iteration 3 until released
    out = fake_env["out"]
    runner = _ablate(fake_env, "--only", "a25", "a75", "--workers", "1", "SOLVER.MAX_ITER", "12")

    def cleanup():  # a failed assertion must not leave a runner waiting at the gate forever
        gate.write_text("")
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=60)

    request.addfinalizer(cleanup)
    b_ckpt = os.path.join(out, "fake_table", "mini", "a75", "seed0", "last_checkpoint")
    _wait_for(lambda: os.path.exists(b_ckpt) and open(b_ckpt).read() == "model_0000002.pth", 300,
              "the 2nd cell's checkpoint")

    # a second runner on the same folder is refused, naming the first one
    other = _ablate(fake_env, "--only", "a25", "a75", "SOLVER.MAX_ITER", "12")
    text, _ = other.communicate(timeout=300)
    assert other.returncode == 2
    assert f"pid {runner.pid} on host" in text and "in use by another process" in text

    cell_pid = _status(out, "a75")["pid"]
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=60)
    _wait_for(lambda: not _alive(cell_pid), 60, "the cell process to die with its runner")
    assert _status(out, "a25")["state"] == "done" and _status(out, "a75")["state"] == "running"
    killed_at = int(open(b_ckpt).read()[6:13]) + 1  # the iteration it resumes at
    assert killed_at == 3
    gate.write_text("")

    again = _ablate(fake_env, "--only", "a25", "a75", "--workers", "2", "SOLVER.MAX_ITER", "12")
    text, _ = again.communicate(timeout=300)
    assert again.returncode == 0, text
    assert "1 finished cell(s) kept, 1 to run" in text
    assert _calls(out, "a25") == [0]  # never rerun
    assert _calls(out, "a75") == [0, killed_at]  # continued from its checkpoint
    st = _status(out, "a75")
    assert st["state"] == "done" and st["resumed_from_iter"] == killed_at and st["attempts"] == 2
    # a custom trainer (--train-fn) cannot take lent CPUs: each cell keeps one worker's share
    assert len(st["device"]["cpus"]) == len(core_shares(2)[0]) and st["device"]["torch_threads"] == len(
        st["device"]["cpus"])


@pytest.mark.slow
def test_submitit_local_executor(fake_env):
    pytest.importorskip("submitit")
    proc = _ablate(fake_env, "--launcher", "submitit", "--submitit-cluster", "local", "--seeds", "1",
                   "--submitit-param", "timeout_min=10")
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    assert "submitted 3 job(s) to local" in text
    assert _status(fake_env["out"], "a75")["state"] == "done"
    assert _status(fake_env["out"], "zero")["diverged_at"] == 3
    cell = os.path.join(fake_env["out"], "fake_table", "mini", "a25", "seed0")
    job = json.load(open(os.path.join(cell, "submitit.json")))
    assert job["cluster"] == "local" and job["job_id"]


def test_submitit_debug_executor(fake_env):
    pytest.importorskip("submitit")
    spec = load_spec(fake_env["spec"])
    summary = Runner(spec, "mini", fake_env["out"], launcher="submitit", submitit_cluster="debug",
                     train_fn=fake_train, progress=False, imbalance=False, poll_s=0.01,
                     log=lambda m: None).run()
    assert summary["states"] == {"a25/seed0": "done", "a75/seed0": "done", "zero/seed0": "diverged"}


def test_lock_names_the_holder(tmp_path):
    from focal_plugin.ablation.files import FileLock

    held = FileLock(str(tmp_path / ".runner.lock"), what="run folder X").acquire()
    try:
        with pytest.raises(LockHeld) as info:
            FileLock(str(tmp_path / ".runner.lock"), what="run folder X").acquire()
        assert str(info.value).startswith("run folder X is in use by another process: pid "
                                          f"{os.getpid()} on host ")
    finally:
        held.release()
    FileLock(str(tmp_path / ".runner.lock")).acquire().release()  # free again once released


def test_runner_refuses_a_folder_in_use(fake_env):
    from focal_plugin.ablation.files import FileLock

    spec = load_spec(fake_env["spec"])
    runner = Runner(spec, "mini", fake_env["out"], workers=0, train_fn=fake_train, progress=False,
                    imbalance=False, log=lambda m: None)
    os.makedirs(runner.run_dir)
    held = FileLock(os.path.join(runner.run_dir, ".runner.lock")).acquire()
    try:
        with pytest.raises(LockHeld) as info:
            runner.run()
        assert f"pid {os.getpid()}" in str(info.value) and runner.run_dir in str(info.value)
    finally:
        held.release()
    assert not os.path.exists(os.path.join(runner.run_dir, "a25")), "nothing was run"



def test_prune_checkpoints_keeps_the_final_model(tmp_path):
    from focal_plugin.ablation.cell import prune_checkpoints

    for name in ("model_0000002.pth", "model_0000005.pth", "last_checkpoint", "metrics.json"):
        (tmp_path / name).write_text("x")
    assert prune_checkpoints(str(tmp_path)) == []  # no final model (diverged or unfinished): keep all
    (tmp_path / "model_final.pth").write_text("x")
    assert prune_checkpoints(str(tmp_path)) == ["model_0000002.pth", "model_0000005.pth"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["last_checkpoint", "metrics.json", "model_final.pth"]


def test_report_tells_a_runner_at_work_from_a_killed_one(tmp_path):
    """A start without an end in runs.jsonl is "running" while that runner holds the run folder's
    lock, and "killed or crashed" once the lock is free (or held by another runner)."""
    import socket

    from focal_plugin.ablation.files import FileLock
    from focal_plugin.ablation.history import RUNNER_LOCK, invocations, live_runner

    host, pid = socket.gethostname(), os.getpid()
    history = [{"event": "start", "host": host, "pid": pid - 1, "time": "t0"},  # an earlier, killed runner
               {"event": "start", "host": host, "pid": pid, "time": "t1"}]
    assert live_runner(str(tmp_path)) is None
    nobody = live_runner(str(tmp_path))
    assert [r["running"] for r in invocations(history, "s", "mini", nobody)] == [False, False]
    lock = FileLock(os.path.join(tmp_path, RUNNER_LOCK)).acquire()
    try:
        live = live_runner(str(tmp_path))
        assert live == (host, pid)
        assert [r["running"] for r in invocations(history, "s", "mini", live)] == [False, True]
        ended = history + [{"event": "end", "host": host, "pid": pid, "states": {"done": 1}}]
        assert [r["running"] for r in invocations(ended, "s", "mini", live)] == [False, False]
        # a reused pid (containers): the killed earlier runner with the same (host, pid) is neither
        # running nor given the live runner's end
        reused = [{"event": "start", "host": host, "pid": pid, "time": "t0"}, *history[1:]]
        assert [r["running"] for r in invocations(reused, "s", "mini", live)] == [False, True]
        done = reused + [{"event": "end", "host": host, "pid": pid, "time": "t2", "states": {"done": 3}}]
        assert [(r["ended"], r["states"]) for r in invocations(done, "s", "mini", live)] == \
            [(None, None), ("t2", {"done": 3})]
    finally:
        lock.release()


def test_lock_probes_never_refuse_a_real_acquire_and_never_crash(tmp_path, monkeypatch):
    """is_held() takes the lock for an instant: an acquire landing then retries instead of failing;
    a lock file that cannot be opened counts as held (cannot tell), one that is gone as free."""
    import threading

    from focal_plugin.ablation.files import FileLock, LockHeld

    path = str(tmp_path / ".cell.lock")
    open(path, "w").close()
    stop, refused = threading.Event(), []

    def probe():
        while not stop.is_set():
            FileLock(path).is_held()

    t = threading.Thread(target=probe)
    t.start()
    try:
        for _ in range(300):
            try:
                FileLock(path).acquire().release()
            except LockHeld:
                refused.append(1)
    finally:
        stop.set()
        t.join()
    assert not refused
    held = FileLock(path).acquire()
    try:
        with pytest.raises(LockHeld):  # a real holder is still refused (after the retries)
            FileLock(path).acquire()
    finally:
        held.release()
    assert not FileLock(str(tmp_path / "gone.lock")).is_held()
    import focal_plugin.ablation.files as files_mod

    real_open = os.open

    def denied(p, *args, **kwargs):  # as for a teammate's lock file without read permission
        if p == path:
            raise PermissionError(13, "Permission denied", p)
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(files_mod.os, "open", denied)
    assert FileLock(path).is_held()
