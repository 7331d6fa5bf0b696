"""The imbalance scan — merged-class and sparse datasets, per-row imbalance in
ablation reports, the best claim's margin and the curve "FL minus the best α-CE" vs imbalance."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

import focal_plugin  # noqa: F401
from focal_plugin import protocol
from focal_plugin.data import SyntheticConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "mini" / "protocol"

SIXTEEN = SyntheticConfig(name="merge-test", seed=3, num_train=6, num_val=2, image_size=(96, 96),
                          num_classes=16, mean_objects=4.0, max_objects=6, scale_range=(0.15, 0.5))


@pytest.fixture
def sixteen(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from focal_plugin.data import register_dense_shapes, register_merged_classes

    names = ["focal_test_merge_src", "focal_test_merge_c8", "focal_test_merge_c4"]
    register_dense_shapes(names[0], SIXTEEN, "train", root=tmp_path)
    register_merged_classes(names[1], names[0], 8)
    register_merged_classes(names[2], names[0], 4)
    yield names
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def test_merged_classes_keep_images_and_boxes_and_fold_labels(sixteen):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    src, c8, _ = sixteen
    base, view = DatasetCatalog.get(src), DatasetCatalog.get(c8)
    assert [d["file_name"] for d in view] == [d["file_name"] for d in base]
    labels = [a["category_id"] for d in base for a in d["annotations"]]
    assert max(labels) >= 8, "the test data must use classes the view folds"
    for b, v in zip(base, view):
        assert [a["bbox"] for a in v["annotations"]] == [a["bbox"] for a in b["annotations"]]
        folded = [a["category_id"] % 8 for a in b["annotations"]]
        assert [a["category_id"] for a in v["annotations"]] == folded
    assert DatasetCatalog.get(src)[0]["annotations"] == base[0]["annotations"], "the source is not modified"
    classes, merged = MetadataCatalog.get(src).thing_classes, MetadataCatalog.get(c8).thing_classes
    assert merged[3] == f"{classes[3]}|{classes[11]}" and len(merged) == 8
    assert MetadataCatalog.get(c8).thing_dataset_id_to_contiguous_id == {k + 1: k for k in range(8)}


def test_merged_classes_scale_the_negatives_per_positive_exactly(sixteen):
    """Same anchors and positives; binary negatives = (anchors - ignored) x classes - positives."""
    from focal_plugin.analysis.imbalance import imbalance_stats
    from focal_plugin.engine import setup_cfg

    cfg = setup_cfg(str(CONFIG_DIR / "fl_default.yaml"), ["MODEL.WEIGHTS", ""], freeze=False)
    stats = {n: imbalance_stats(cfg, n, max_images=0, with_coco=False) for n in sixteen}
    pos = {n: s["positive_anchors_per_image"] for n, s in stats.items()}
    assert len(set(pos.values())) == 1 and pos[sixteen[0]] > 0
    total = {n: (s["negatives_per_positive"] + 1) * s["positive_anchors_per_image"] for n, s in stats.items()}
    assert total[sixteen[0]] / total[sixteen[1]] == pytest.approx(2.0, rel=1e-9)
    assert total[sixteen[0]] / total[sixteen[2]] == pytest.approx(4.0, rel=1e-9)
    assert [stats[n]["num_classes"] for n in sixteen] == [16, 8, 4]


def test_merged_classes_errors_name_the_dataset(sixteen):
    from focal_plugin.data import register_merged_classes

    with pytest.raises(KeyError, match="no_such_source"):
        register_merged_classes("focal_test_bad", "no_such_source", 4)
    for bad in (0, 16, 17, 2.5):
        with pytest.raises(ValueError, match="focal_test_bad.*num_classes"):
            register_merged_classes("focal_test_bad", sixteen[0], bad)


def test_scan_datasets_are_the_protocol_with_one_lever_changed():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    changed = {f.name for f in dataclasses.fields(protocol.PROTOCOL_DATA)
               if getattr(protocol.PROTOCOL_DATA, f.name) != getattr(protocol.SPARSE_DATA, f.name)}
    assert changed == {"name", "mean_objects"}
    assert protocol.SPARSE_DATA.mean_objects < protocol.PROTOCOL_DATA.mean_objects
    for c in protocol.MERGED_CLASS_COUNTS:
        assert c % 8 == 0, "a multiple of 8 keeps each class's shape"
        for split in ("train", "val"):
            name = f"dense_shapes_proto_c{c}_{split}"
            assert name in DatasetCatalog.list()
            meta = MetadataCatalog.get(name)
            assert meta.merged_from == f"dense_shapes_proto_{split}" and len(meta.thing_classes) == c


SCAN_SPEC = """\
title: "test scan"
source: "none"
columns: [data, loss]
metrics: [AP]
scales:
  mini: {base: mini/protocol/fl_default.yaml, overrides: {MODEL.WEIGHTS: ""}}
rows:
  - {id: src_fl, settings: {data: src, loss: FL}, overrides: {DATASETS.TRAIN: [focal_test_merge_src]}}
  - {id: src_ce, settings: {data: src, loss: CE}, overrides: {DATASETS.TRAIN: [focal_test_merge_src],
     MODEL.FOCAL.LOSS: sigmoid_ce, MODEL.FOCAL.ALPHA: 0.75}}
  - {id: c8_fl, settings: {data: c8, loss: FL}, overrides: {DATASETS.TRAIN: [focal_test_merge_c8]}}
  - {id: c8_ce, settings: {data: c8, loss: CE}, overrides: {DATASETS.TRAIN: [focal_test_merge_c8],
     MODEL.FOCAL.LOSS: sigmoid_ce, MODEL.FOCAL.ALPHA: 0.75}}
claims:
  - {text: "FL beats CE on src", type: best, row: src_fl, rows: [src_fl, src_ce], metric: AP}
  - {text: "FL beats CE on c8", type: best, row: c8_fl, rows: [c8_fl, c8_ce], metric: AP}
"""


def _runner(spec, out):
    from focal_plugin.ablation import Runner, RunOptions

    return Runner(spec, RunOptions(output_dir=str(out), seeds=[0, 1, 2]))


def _finish(cell_dir, ap):
    """A finished cell as the runner leaves it (definition + status with metrics)."""
    d = Path(cell_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cell.json").write_text(json.dumps({"seed": 0}))
    (d / "status.json").write_text(json.dumps({"state": "done", "metrics": {"AP": ap}}))


def test_report_measures_each_rows_data_and_the_curve_reads_the_margins(sixteen, tmp_path):
    from focal_plugin.ablation.render import to_csv, to_markdown
    from focal_plugin.ablation.report import build_report
    from focal_plugin.ablation.spec import load_spec
    from focal_plugin.analysis.imbalance_scan import gap_points, write_outputs

    path = tmp_path / "scan.yaml"
    path.write_text(SCAN_SPEC)
    spec = load_spec(str(path))
    runner = _runner(spec, tmp_path / "run")
    aps = {"src_fl": (9.0, 9.2, 9.4), "src_ce": (4.0, 4.5, 5.0), "c8_fl": (6.0, 6.1, 6.2),
           "c8_ce": (7.0, 7.1, 7.2)}
    for c in runner.cells():
        _finish(c.dir, aps[c.row.id][c.seed])
    report = build_report(runner)
    by_row = report["imbalance"]["by_row"]
    assert by_row["src_fl"] == by_row["src_ce"] != by_row["c8_fl"] == by_row["c8_ce"]
    src, c8 = by_row["src_fl"]["negatives_per_positive"], by_row["c8_fl"]["negatives_per_positive"]
    ratio = (src + 1) / (c8 + 1)
    assert ratio == pytest.approx(2.0)  # 16 vs 8 classes, same anchors and positives
    md = to_markdown(report)
    n = by_row["src_fl"]["images"]  # the images really measured, not a number typed in a note
    assert n and f"negatives / positive (measured, {n} train images)" in md
    assert "(paper)" not in md  # no paper numbers: no Δ
    npp = f"{by_row['src_fl']['negatives_per_positive']:,.0f}"
    assert re.search(rf"\| src +\| FL +\| {npp} +\|", md), md
    assert to_csv(report).splitlines()[0].startswith("row,data,loss,negatives_per_positive,AP_ours")
    points = gap_points(report)  # sorted by imbalance: c8 (fewer classes) first
    assert [(p["row"], p["rival"]) for p in points] == [("c8_fl", "c8_ce"), ("src_fl", "src_ce")]
    assert points[0]["gap"] == pytest.approx(6.1 - 7.1) and points[1]["gap"] == pytest.approx(9.2 - 4.5)
    assert [p["verdict"] for p in points] == ["not reproduced", "reproduced"]
    paths = write_outputs(points, str(tmp_path / "gap"), "t")
    assert all(Path(p).stat().st_size > 0 for p in paths)
    assert "| c8_fl" not in Path(paths[0]).read_text() and "FL beats CE on c8 | c8_ce | -1.00 AP" in Path(
        paths[0]).read_text()
    # one data setting for every row: no per-row figures, the table keeps its columns
    path.write_text(SCAN_SPEC.split("  - {id: c8_fl")[0] + "claims:\n" + SCAN_SPEC.split("claims:\n")[1]
                    .split("  - {text: \"FL beats CE on c8")[0])
    spec = load_spec(str(path))
    same = build_report(_runner(spec, tmp_path / "run"))
    assert "by_row" not in same["imbalance"] and "measured" not in to_markdown(same)


def test_gap_points_needs_imbalance_figures():
    from focal_plugin.analysis.imbalance_scan import gap_points

    best = {"claim": "c", "type": "best", "row": "a", "metric": "AP", "verdict": "no data"}
    with pytest.raises(ValueError, match="scan.*no imbalance figures.*--no-imbalance"):
        gap_points({"spec": "scan", "imbalance": {"available": False, "reason": "not computed"},
                    "claims": [best]})


@pytest.mark.parametrize("report, match", [
    ({}, "not an ablation report"), ([1, 2], "not an ablation report"),
    ({"spec": "table3", "claims": [{"claim": "c", "type": "better", "row": "fl"}]},
     "'table3' has no claim of type 'best'"),
])
def test_gap_points_refuse_what_gives_no_point(report, match):
    from focal_plugin.analysis.imbalance_scan import gap_points

    with pytest.raises(ValueError, match=match):
        gap_points(report)


def _scan_report(claims, table=()):
    return {"spec": "s", "imbalance": {"available": True, "ours": {"negatives_per_positive": 10.0},
                                       "by_row": {"hi": {"negatives_per_positive": 50000.0},
                                                  "lo": {"negatives_per_positive": 2000.0}}},
            "table": list(table), "claims": claims}


def _claim(row, **margin):
    return {"claim": f"at {row}", "type": "best", "row": row, "metric": "AP", "verdict": "no data",
            "margin": {"rival": "r", "diff": 1.0, "noise": None, "relation": "one seed", "diverged": None,
                       **margin}}


def test_gap_points_say_when_rivals_are_pending_or_seeds_diverged(tmp_path):
    """A gap measured while rivals have not run is against the finished ones only (a pending rival
    may be stronger): said in the table and the CSV, drawn hollow; partial divergences and seeds
    without a value are named; a 'lower wins' claim is marked; small x values keep their digits."""
    from focal_plugin.analysis.imbalance_scan import gap_points, to_markdown, write_outputs

    table = [{"row": "lo", "seeds_finished": 3, "diverged_at": [120, 80], "AP": {"n": 1}},
             {"row": "hi", "seeds_finished": 2, "diverged_at": [], "AP": {"n": 1}}]
    rep = _scan_report([_claim("lo", pending=["c", "d"]), _claim("hi", lower_wins=True)], table)
    points = gap_points(rep)
    assert [p["pending"] for p in points] == [["c", "d"], []]
    md = to_markdown(points, "t")
    assert "+1.00 AP (2 of 3 seeds diverged; vs finished rivals only: 2 pending (c, d))" in md
    assert "+1.00 AP (lower wins) (1 seed(s) without AP)" in md
    paths = write_outputs(points, str(tmp_path / "gap"), "t")
    assert "c;d" in open(paths[1]).read()
    rep["table"], rep["columns"] = [{"row": "lo", "settings": {"alpha": 0.1}},
                                    {"row": "hi", "settings": {"alpha": 0.75}}], ["alpha"]
    md = to_markdown(gap_points(rep, "alpha"), "t", "alpha")
    assert "| 0.1 | at lo |" in md and "| 0.75 | at hi |" in md


def test_gap_plot_draws_diverged_sides_at_the_edges(tmp_path, monkeypatch):
    """'Every rival diverged' (the row won outright) is the clearest outcome a level can have: it is
    drawn (at the top edge), and 'the row diverged' at the bottom, not dropped for lack of a gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from focal_plugin.analysis.imbalance_scan import gap_points, write_outputs

    rep = _scan_report([_claim("hi", diff=None, diverged="rivals", rival=None),
                        _claim("lo", diff=None, diverged="row")])
    seen = {}

    def grab(fig):
        ax = fig.axes[0]
        seen["marks"] = {(line.get_marker(), tuple(line.get_xdata())) for line in ax.get_lines()}
        seen["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]

    monkeypatch.setattr(plt, "close", grab)
    write_outputs(gap_points(rep), str(tmp_path / "gap"), "t")
    assert ("^", (50000.0,)) in seen["marks"] and ("v", (2000.0,)) in seen["marks"]
    assert "every rival diverged" in seen["legend"] and "the row diverged" in seen["legend"]


def test_tool_errors_name_the_report_and_create_the_output_folder(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("imbalance_scan_tool", os.path.join(
        os.path.dirname(__file__), "..", "..", "tools", "imbalance_scan.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    bad = tmp_path / "report.json"
    bad.write_text('{"claims": [')
    assert tool.main(["--report", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    bad.write_text(json.dumps(_scan_report([_claim("hi")])))
    out = tmp_path / "new" / "folder" / "gap"
    assert tool.main(["--report", str(tmp_path), "--out", str(out)]) == 0  # a run folder works too
    assert (tmp_path / "new" / "folder" / "gap.png").is_file()


def test_scan_spec_rows_at_80_classes_are_table_1s_cells():
    """The scan's 80-class rows train exactly what Tables 1a/1b's cells trained (their results are reused)."""
    from focal_plugin.ablation.identity import resolved_identity
    from focal_plugin.ablation.spec import load_spec

    scan = {r.id: r for r in load_spec("imbalance_scan").resolve("mini")}
    assert set(load_spec("imbalance_scan").scales) == {"mini"}
    t1a = {r.id: r for r in load_spec("table1a").resolve("mini")}
    t1b = {r.id: r for r in load_spec("table1b").resolve("mini")}

    def ident(row):
        return resolved_identity(row.base, row.opts, 0)

    for ours, theirs in [("c80_fl", t1b["gamma_2.0"]), ("c80_ace_.75", t1b["gamma_0"]),
                         ("c80_ace_.90", t1a["alpha_.90"]), ("c80_ace_.99", t1a["alpha_.99"])]:
        assert ident(scan[ours]) == ident(theirs), ours
    assert ident(scan["c8_fl"]) != ident(t1b["gamma_2.0"]) != ident(scan["sparse_fl"])


def test_gap_points_refuse_reports_without_claim_rows():
    from focal_plugin.analysis.imbalance_scan import gap_points

    old = {"spec": "table1a", "imbalance": {"available": True, "ours": {"negatives_per_positive": 1.0}},
           "claims": [{"claim": "x", "type": "best", "verdict": "inconclusive", "ours": "a AP 1.0"}]}
    with pytest.raises(ValueError, match="predates claim rows.*--spec table1a --report"):
        gap_points(old)


def test_gap_points_render_diverged_sides():
    from focal_plugin.analysis.imbalance_scan import gap_points, to_markdown

    rep = {"spec": "s", "imbalance": {"available": True, "ours": {"negatives_per_positive": 10.0}},
           "claims": [{"claim": "c", "type": "best", "row": "a", "metric": "AP", "verdict": "not reproduced",
                       "margin": {"rival": "b", "diff": None, "noise": None, "relation": "worse",
                                  "diverged": "row"}}]}
    md = to_markdown(gap_points(rep), "t")
    assert "| c | b | the row diverged | — | not reproduced |" in md


def test_report_imbalance_isolates_a_failing_row_and_follows_the_data(sixteen, tmp_path, monkeypatch):
    from focal_plugin.ablation import report as report_mod
    from focal_plugin.ablation.spec import load_spec
    from focal_plugin.data import register_dense_shapes

    path = tmp_path / "scan.yaml"
    path.write_text(SCAN_SPEC.replace("DATASETS.TRAIN: [focal_test_merge_c8]}}",
                                      "DATASETS.TRAIN: [focal_test_no_such_data]}}", 1))
    spec = load_spec(str(path))
    imb = report_mod.imbalance(_runner(spec, tmp_path))
    assert imb["available"] and "focal_test_no_such_data" in imb["by_row"]["c8_fl"]["error"]
    assert imb["by_row"]["c8_ce"]["negatives_per_positive"] > 0
    assert imb["by_row"]["src_fl"] == imb["by_row"]["src_ce"]
    calls = []
    import focal_plugin.analysis.imbalance as imb_mod  # imported by imbalance() when it runs

    orig = imb_mod.imbalance_stats
    monkeypatch.setattr(imb_mod, "imbalance_stats", lambda *a, **k: calls.append(a[1]) or orig(*a, **k))
    report_mod.imbalance(_runner(spec, tmp_path))
    assert calls == ["focal_test_no_such_data"], "measured settings come from the cache"
    # the same dataset name with other content (another generator fingerprint) is measured again
    register_dense_shapes("focal_test_merge_src", dataclasses.replace(SIXTEEN, seed=4), "train",
                          root=tmp_path / "other")
    calls.clear()
    report_mod.imbalance(_runner(spec, tmp_path))
    assert sorted(set(calls)) == ["focal_test_merge_c8", "focal_test_merge_src", "focal_test_no_such_data"]


def test_gap_points_against_a_settings_column():
    """The schedule scan: x = the claimed row's `iterations` setting, sorted; a bad column is named."""
    from focal_plugin.analysis.imbalance_scan import gap_points, to_markdown

    def claim(row, diff):
        return {"claim": f"at {row}", "type": "best", "row": row, "metric": "AP", "verdict": "inconclusive",
                "margin": {"rival": row + "_ce", "diff": diff, "noise": 0.5, "relation": "within",
                           "diverged": None}}

    rep = {"spec": "schedule_scan", "columns": ["iterations", "loss"],
           "imbalance": {"available": False, "reason": "not computed"},
           "table": [{"row": "b", "settings": {"iterations": 6000}},
                     {"row": "a", "settings": {"iterations": "1500"}}],
           "claims": [claim("b", -1.0), claim("a", 2.0)]}
    points = gap_points(rep, "iterations")
    assert [(p["row"], p["x"], p["gap"]) for p in points] == [("a", 1500.0, 2.0), ("b", 6000.0, -1.0)]
    assert "| iterations | claim |" in to_markdown(points, "t", "iterations")
    with pytest.raises(ValueError, match="no column 'lr'"):
        gap_points(rep, "lr")
    rep["table"][0]["settings"]["iterations"] = "long"
    with pytest.raises(ValueError, match="row 'b'.*'long' is not a number"):
        gap_points(rep, "iterations")


def test_schedule_scan_shares_the_protocols_cells_and_scales_the_schedule():
    from focal_plugin.ablation.identity import resolved_identity
    from focal_plugin.ablation.spec import load_spec
    from focal_plugin.engine import setup_cfg

    rows = {r.id: r for r in load_spec("schedule_scan").resolve("mini")}
    t1a = {r.id: r for r in load_spec("table1a").resolve("mini")}

    def ident(row):
        return resolved_identity(row.base, row.opts, 0)

    assert ident(rows["it3000_ace_.90"]) == ident(t1a["alpha_.90"])
    base = setup_cfg(rows["it3000_fl"].base, list(rows["it3000_fl"].opts)).SOLVER
    assert {r for r in rows if r.startswith("it3000")} == {"it3000_fl", "it3000_ace_.75", "it3000_ace_.90",
                                                           "it3000_ace_.99"}
    for n in (6000, 12000):
        s = setup_cfg(rows[f"it{n}_fl"].base, list(rows[f"it{n}_fl"].opts)).SOLVER
        f = n / base.MAX_ITER
        assert s.MAX_ITER == n and s.CHECKPOINT_PERIOD == base.CHECKPOINT_PERIOD
        assert all(abs(x - b * f) <= 1 for x, b in zip(s.STEPS, base.STEPS))  # the same fractions
        assert abs(s.WARMUP_ITERS - 500 / 90000 * n) <= 0.5  # Detectron's 500 of 90k, scaled


def test_coco_reference_line_comes_from_the_report():
    from focal_plugin.analysis.imbalance_scan import coco_reference_line

    assert coco_reference_line({"imbalance": {"coco": {"negatives_per_positive": 56365.3}}}) == {
        "x": 56365.3, "label": "COCO at 600 px (56,365)"}
    assert coco_reference_line({"imbalance": {"available": False}}) is None


@pytest.mark.parametrize("xs", [(2216.0, 4434.0, 11086.0, 22173.0, 41597.0), (0.4, 0.6, 1.4)])
def test_gap_plot_shows_every_level_run_or_not(tmp_path, monkeypatch, xs):
    """The plot's x ticks are the scan's levels, all in view (levels not yet run and the reference
    line included) and all distinct in their labels, whatever the scale of the x column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from focal_plugin.analysis.imbalance_scan import write_outputs

    points = [{"claim": f"c{i}", "row": f"r{i}", "rival": "q", "x": x, "negatives_per_positive": x,
               "metric": "AP", "gap": (-1.0 if i == 0 else None), "noise": None, "diverged": None,
               "verdict": "v"} for i, x in enumerate(xs)]
    seen = {}

    def grab(fig):  # instead of closing: read the drawn axis
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        seen["labels"] = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
        seen["lim"] = (lo, hi)

    monkeypatch.setattr(plt, "close", grab)
    reference = {"x": xs[-1] * 1.4, "label": "ref"}
    write_outputs(points, str(tmp_path / "gap"), "t", reference=reference)
    assert len(set(seen["labels"])) == len(xs) and "" not in seen["labels"], seen
    assert seen["lim"][0] < xs[0] and seen["lim"][1] > reference["x"]
