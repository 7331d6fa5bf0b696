"""The runner (focal_plugin.ablation.runner, .cell, .report) with the fake trainer, in process."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from fakes import ROOT, calls_of, cell_dir, fake_train, make_runner, md_rows, status_of

from focal_plugin.ablation import LockHeld, PlanMismatch, Runner, RunOptions, SpecError, State, load_spec
from focal_plugin.ablation.cell import LOCK_FILE, prune_checkpoints
from focal_plugin.engine import divergence_iteration
from focal_plugin.locks import FileLock


def test_run_report_divergence_and_no_rerun(fake_env):
    runner = make_runner(fake_env, seeds=[0, 1, 2])  # 3 seeds: what a verdict needs
    summary = runner.run()
    expected = {"a25": "done", "a75": "done", "zero": "diverged"}
    assert summary["states"] == {f"{row}/seed{i}": state for row, state in expected.items() for i in range(3)}
    assert all(isinstance(s, State) for s in summary["states"].values())
    st = status_of(runner, "zero")
    assert st["diverged_at"] == 3 and "iteration 3" in st["error"]
    assert status_of(runner, "a75", 1)["metrics"]["AP"] == pytest.approx(75.2)
    assert "AP-cls0" not in status_of(runner, "a75", 1)["metrics"]

    md = open(summary["report"]["md"]).read()
    # the table: settings | ours (mean ± std, best in bold) | paper (best in bold) | Δ
    rows = md_rows(md)
    assert ["α", "AP", "AP50", "AP75", "AP (paper)", "AP50 (paper)", "AP75 (paper)", "ΔAP", "ΔAP50",
            "ΔAP75"] in rows
    assert [".75", "**75.2 ± 0.2**", "**85.2 ± 0.2**", "**74.2 ± 0.2**", "**31.1**", "**49.4**", "**33.0**",
            "+44.1", "+35.8", "+41.2"] in rows
    assert ["zero init", *["diverged at iteration 3, 3, 3"] * 3, *["diverges"] * 3, "—", "—", "—"] in rows
    verdicts = {c["claim"]: c["verdict"] for c in json.load(open(summary["report"]["json"]))["claims"]}
    assert verdicts == {"α = .75 beats α = .25": "reproduced", "the best α is .75": "reproduced",
                        "zero init diverges": "reproduced", "α = .25 trains": "reproduced"}
    assert "AP 75.2 ± 0.2 vs 25.2 ± 0.2 (Δ +50.00, 95% CI [+49.55, +50.45], p " in md
    # every cell: its folder, state and the train_net.py command that trains it
    assert ["a25/seed1", runner.cells()[1].key, "done"] == next(r for r in rows if r[0] == "a25/seed1")[:3]
    assert json.load(open(summary["report"]["json"]))["environment"]["cells"][0]["command"].startswith(
        "python train_net.py --config-file ")
    # the weights every cell started from, by their bytes (a backbone per seed here)
    assert "- Weights: focal-pretrained://fake@0 sha256 0000000000000000; focal-pretrained://fake@1 " in md
    # supplementary: the claimed row minus its rival seed by seed (the fake AP differs by 50 at every seed)
    claims = {c["claim"]: c for c in json.load(open(summary["report"]["json"]))["claims"]}
    pair = claims["α = .75 beats α = .25"]["paired"]
    assert pair["vs"] == "a25" and pair["n"] == 3 and pair["diff"] == pytest.approx(50.0)
    assert "paired by seed (supplementary)" in md and "a75 − a25: Δ +50.00, 95% CI [+50.00, +50.00]" in md
    csv_lines = open(summary["report"]["csv"]).read().splitlines()
    assert csv_lines[0].startswith("row,α,AP_ours,AP_std,AP_n,AP_paper,AP_delta,")
    assert csv_lines[2].startswith("a75,.75,75.200,0.200,3,31.100,44.100,")

    again = make_runner(fake_env, seeds=[0, 1, 2]).run()  # finished cells, diverged ones too, are kept
    assert again["skipped"] == 9 and again["ran"] == 0
    assert calls_of(runner, "a25") == [0] and calls_of(runner, "zero") == [0]
    md = open(again["report"]["md"]).read()
    assert "1 more invocation(s) found every cell finished" in md
    assert len(json.load(open(again["report"]["json"]))["environment"]["invocations"]) == 2


def test_the_run_record_holds_the_command_as_typed_and_every_option(fake_env):
    runner = Runner(load_spec(fake_env["spec"]), RunOptions(output_dir=fake_env["out"], workers=0,
                    train_fn=fake_train, progress=False, imbalance=False, label="x"), log=lambda m: None,
                    argv=["tools/ablate.py", "--spec", "my spec.yaml", "--label", "x"])
    runner.run()
    start = [json.loads(x) for x in open(os.path.join(runner.run_dir, "runs.jsonl"))][0]
    assert start["argv"] == ["tools/ablate.py", "--spec", "my spec.yaml", "--label", "x"]
    assert set(start["options"]) == {f for f in RunOptions.__dataclass_fields__}
    assert start["options"]["train_fn"] == "fake_train" and start["options"]["label"] == "x"
    md = open(os.path.join(runner.run_dir, "report.md")).read()
    assert "`` tools/ablate.py --spec 'my spec.yaml' --label x ``" in md and "> **x**" in md


def test_seeds_belong_to_the_spec_and_a_row_may_override_them(fake_env, tmp_path):
    text = open(fake_env["spec"]).read().replace('source: "fake"', 'source: "fake"\nseeds: 2')
    text = text.replace("{id: a75, ", "{id: a75, seeds: [4], ")
    (tmp_path / "seeded.yaml").write_text(text)
    runner = Runner(load_spec(str(tmp_path / "seeded.yaml")),
                    RunOptions(output_dir=fake_env["out"], workers=0, train_fn=fake_train))
    assert [c.id for c in runner.cells()] == [
        "a25/seed0",
        "a25/seed1",
        "a75/seed4",
        "zero/seed0",
        "zero/seed1",
    ]
    forced = Runner(
        runner.spec, RunOptions(output_dir=fake_env["out"], seeds=[7], train_fn=fake_train, workers=0)
    )
    assert [c.id for c in forced.cells()] == ["a25/seed7", "a75/seed7", "zero/seed7"]
    for bad in ("0", "[1, 1]", "[-1]", "true"):
        (tmp_path / "bad.yaml").write_text(text.replace("seeds: 2", f"seeds: {bad}"))
        with pytest.raises(SpecError, match=r"seeds = .* is invalid"):
            load_spec(str(tmp_path / "bad.yaml"))


def test_one_config_is_one_cell_whatever_spec_or_route_reaches_it(fake_env, tmp_path):
    """Table 3's FL row is Table 1b's γ = 2 row: one folder, trained once; reached through a
    spec-level override instead of a row override, or with a value at its default written out."""
    first = make_runner(fake_env, only=["a75"])
    first.run()
    other = tmp_path / "other.yaml"
    other.write_text(
        open(fake_env["spec"])
        .read()
        .replace(
            '{id: a75, settings: {α: ".75"}, overrides: {MODEL.FOCAL.ALPHA: 0.75}',
            '{id: b75, settings: {α: ".75"}, overrides: {MODEL.FOCAL.ALPHA: 0.75, MODEL.FOCAL.GAMMA: 2.0}',
        )
        .replace("row: a75", "row: b75")
    )
    second = Runner(
        load_spec(str(other)),
        RunOptions(
            output_dir=fake_env["out"],
            workers=0,
            train_fn=fake_train,
            only=["b75"],
            progress=False,
            imbalance=False,
        ),
    )
    assert cell_dir(second, "b75") == cell_dir(first, "a75")  # GAMMA 2.0 is the default: same config
    summary = second.run()
    assert summary["ran"] == 0 and summary["states"] == {"b75/seed0": "done"}
    assert calls_of(first, "a75") == [0]  # trained once
    report = json.load(open(summary["report"]["json"]))
    assert next(e for e in report["table"] if e["row"] == "b75")["metrics"]["AP"]["ours"] == pytest.approx(
        75.0
    )
    # another value is another cell
    third = make_runner(fake_env, only=["a75"], opts=["SOLVER.MAX_ITER", "9"])
    assert cell_dir(third, "a75") != cell_dir(first, "a75")


def test_one_seed_is_inconclusive_rows_not_run_say_so(fake_env):
    runner = make_runner(fake_env, only=["a25", "a75"])
    runner.run()
    report = json.load(open(runner.report()["json"]))
    verdicts = {c["claim"]: c["verdict"] for c in report["claims"]}
    assert verdicts["α = .75 beats α = .25"] == "inconclusive"  # one seed: noise unknown
    assert verdicts["zero init diverges"] == "no data"
    zero = next(e for e in report["table"] if e["row"] == "zero")
    assert zero["metrics"]["AP"]["ours_text"] == "not run"


def test_interrupted_cell_resumes_failed_cell_retries_other_definition_refused(fake_env):
    calls = {"n": 0}

    def flaky(config_file, opts, resume, num_gpus=1):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk full (fake)")
        return fake_train(config_file, opts, resume, num_gpus)

    runner = make_runner(fake_env, only=["a25"], train_fn=flaky)
    assert runner.run()["states"] == {"a25/seed0": "failed"}
    assert "disk full" in status_of(runner, "a25")["error"]
    cell = cell_dir(runner, "a25")  # as if killed at iteration 4 of a retry
    with open(os.path.join(cell, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")
    st = {**status_of(runner, "a25"), "state": "running"}
    json.dump(st, open(os.path.join(cell, "status.json"), "w"))
    assert "[interrupted" in runner.dry_run()

    def state_in_report():
        return next(r for r in md_rows(open(runner.report()["md"]).read()) if r[0] == "a25/seed0")[2]

    assert state_in_report() == "interrupted"
    holder = FileLock(os.path.join(cell, LOCK_FILE)).acquire()  # "running" while a process holds it
    try:
        assert state_in_report() == "running"
    finally:
        holder.release()
    assert runner.run()["states"] == {"a25/seed0": "done"}
    st = status_of(runner, "a25")
    assert st["resumed"] and st["resumed_from_iter"] == 4 and st["attempts"] == 2
    definition = json.load(open(os.path.join(cell, "cell.json")))  # a folder edited by hand
    json.dump({**definition, "seed": 5}, open(os.path.join(cell, "cell.json"), "w"))
    with pytest.raises(PlanMismatch, match=r"a25/seed0 .*: seed differ"):
        runner.run()


def test_settings_the_runner_sets_are_refused_not_replaced(fake_env):
    """A trailing ``SEED 5`` would be replaced by each cell's seed: refused, naming what works."""
    for key in ("SEED", "OUTPUT_DIR"):
        with pytest.raises(SpecError, match=f"{key} is set by the runner per cell"):
            make_runner(fake_env, opts=[key, "5"])
    with pytest.raises(SpecError, match="command-line override 'SOLVER.NOPE' is not a config key"):
        make_runner(fake_env, opts=["SOLVER.NOPE", "1"])
    with pytest.raises(SpecError, match="KEY VALUE pairs"):
        make_runner(fake_env, opts=["SOLVER.MAX_ITER"])
    with pytest.raises(ValueError, match="cfg.MODEL.RPN.NMS_THRESH = 0.5 has no effect on FocalRetinaNet"):
        make_runner(fake_env, opts=["MODEL.RPN.NMS_THRESH", "0.5"]).run()  # a setting without effect
    assert not os.path.exists(os.path.join(fake_env["out"], "cells"))


def test_weights_not_on_this_machine_stop_the_run_before_any_cell(fake_env, monkeypatch):
    """A backbone not built yet (or a missing file) is one message naming each URI, its cells and
    the build command; no cell starts or is marked failed, and a later run after the build goes on."""
    monkeypatch.setenv("FOCAL_PLUGIN_CACHE", str(fake_env["tmp"] / "empty_cache"))
    runner = make_runner(fake_env, seeds=[0, 1], only=["a25"],
                         opts=["MODEL.WEIGHTS", "focal-pretrained://proto-r18@{SEED}"])
    with pytest.raises(FileNotFoundError) as info:
        runner.run()
    text = str(info.value)
    assert "focal-pretrained://proto-r18@0: needed by 1 cell(s) (a25/seed0)" in text
    assert "focal-pretrained://proto-r18@1" in text and "--recipe proto-r18 --seeds 0 1" in text
    assert not any(os.path.exists(os.path.join(c.dir, "status.json")) for c in runner.cells())

    missing = str(fake_env["tmp"] / "nope.pth")
    with pytest.raises(FileNotFoundError, match=f"{missing}: needed by 2 cell"):
        make_runner(fake_env, seeds=[0, 1], only=["a25"], opts=["MODEL.WEIGHTS", missing]).run()
    open(missing, "w").close()
    summary = make_runner(fake_env, seeds=[0, 1], only=["a25"], opts=["MODEL.WEIGHTS", missing]).run()
    assert set(summary["states"].values()) == {State.DONE}


def test_weights_with_other_bytes_than_the_finished_cells_stop_the_run(fake_env):
    """Another build of the same MODEL.WEIGHTS (a backbone trained on another CPU, a replaced file)
    is refused before any cell starts, naming the file and both digests; --other-weights runs on
    and the report then lists both digests; the recorded bytes run as before."""
    import hashlib

    from focal_plugin.ablation.runner import WeightsMismatch

    weights = fake_env["tmp"] / "backbone.pth"
    weights.write_bytes(b"build A")
    opts = ["MODEL.WEIGHTS", str(weights)]
    first = make_runner(fake_env, seeds=[0], only=["a25"], opts=opts).run()
    assert set(first["states"].values()) == {State.DONE}
    weights.write_bytes(b"build B")
    runner = make_runner(fake_env, seeds=[0, 1], only=["a25"], opts=opts)
    with pytest.raises(WeightsMismatch) as info:
        runner.run()
    digest = {k: hashlib.sha256(v).hexdigest()[:16] for k, v in (("A", b"build A"), ("B", b"build B"))}
    text = str(info.value)
    assert f"{weights}: here {digest['B']}, finished cells started from {digest['A']} (1 cell(s)" in text
    assert "--other-weights" in text and "no cell started" in text
    assert not os.path.exists(os.path.join(runner.cells()[1].dir, "status.json"))

    summary = make_runner(fake_env, seeds=[0, 1], only=["a25"], opts=opts, other_weights=True).run()
    assert set(summary["states"].values()) == {State.DONE}
    md = open(summary["report"]["md"]).read()
    assert digest["A"] in md and digest["B"] in md  # the mix is in the report
    weights.write_bytes(b"build A")  # a digest some finished cell recorded: no refusal
    make_runner(fake_env, seeds=[0, 1, 2], only=["a25"], opts=opts).run()


def test_a_timed_table_times_each_cell_once_on_its_final_weights(fake_env, tmp_path, monkeypatch):
    import focal_plugin.analysis.inference_timing as timing

    timed = []

    def fake_measure(cfg, weights, images, warmup):
        timed.append(weights)
        return {"ms": 12.5, "images": images, "warmup": warmup, "device": "cpu", "threads": 1}

    monkeypatch.setattr(timing, "measure_ms_per_image", fake_measure)
    untimed = make_runner(fake_env, only=["a25"])
    untimed.run()  # trained by an untimed table first
    text = (
        open(fake_env["spec"])
        .read()
        .replace("metrics: [AP, AP50, AP75]", "metrics: [AP, AP50, AP75, ms]\ntiming: {images: 3, warmup: 1}")
    )
    (tmp_path / "timed.yaml").write_text(text.replace("metric: AP}", "metric: AP}"))
    runner = Runner(
        load_spec(str(tmp_path / "timed.yaml")),
        RunOptions(
            output_dir=fake_env["out"],
            workers=0,
            train_fn=fake_train,
            only=["a25"],
            progress=False,
            imbalance=False,
        ),
    )
    assert cell_dir(runner, "a25") == cell_dir(untimed, "a25")  # a timed row and a trained row: one cell
    summary = runner.run()
    assert summary["ran"] == 1 and calls_of(runner, "a25") == [0]  # timed, not retrained
    assert timed == [os.path.join(cell_dir(runner, "a25"), "model_final.pth")]
    assert json.load(open(os.path.join(cell_dir(runner, "a25"), "timing.json")))["ms"] == 12.5
    row = json.load(open(summary["report"]["json"]))["table"][0]
    assert row["metrics"]["ms"]["ours"] == 12.5
    assert runner.run()["ran"] == 0 and len(timed) == 1  # timed once
    os.remove(os.path.join(cell_dir(runner, "a25"), "model_final.pth"))
    os.remove(os.path.join(cell_dir(runner, "a25"), "timing.json"))
    runner.run()  # weights not here (a fresh clone): said, not faked
    assert "is missing" in json.load(open(os.path.join(cell_dir(runner, "a25"), "timing.json")))["error"]


def test_a_report_that_fails_between_cells_never_stops_the_run(fake_env, monkeypatch):
    import focal_plugin.ablation.report as report_mod

    real, calls = report_mod.write_reports, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full (fake)")
        return real(*args, **kwargs)

    monkeypatch.setattr(report_mod, "write_reports", flaky)
    summary = make_runner(fake_env).run()
    assert set(summary["states"].values()) == {State.DONE, State.DIVERGED}


def test_one_output_folder_per_scale(fake_env):
    make_runner(fake_env, only=["a25"]).run()
    with pytest.raises(ValueError, match="holds runs of scale 'mini'"):
        make_runner(fake_env, only=["a25"], scale="paper").run()


def test_runner_refuses_a_folder_in_use(fake_env):
    runner = make_runner(fake_env)
    os.makedirs(runner.run_dir)
    held = FileLock(os.path.join(runner.run_dir, ".runner.lock")).acquire()
    try:
        with pytest.raises(LockHeld) as info:
            runner.run()
        assert f"pid {os.getpid()}" in str(info.value) and runner.run_dir in str(info.value)
    finally:
        held.release()
    assert not os.path.exists(os.path.join(fake_env["out"], "cells")), "nothing was run"


def test_options_are_checked_before_anything_runs():
    for bad, words in (
        ({"workers": -1}, "workers = -1"),
        ({"threads": 0}, "threads = 0"),
        ({"submitit_param": ["x"]}, "expected KEY=VALUE"),
        ({"train_fn": fake_train, "workers": 2}, "callable train_fn"),
    ):
        with pytest.raises(ValueError, match=words):
            RunOptions(**bad)


def test_submitit_debug_executor(fake_env):
    pytest.importorskip("submitit")
    summary = make_runner(fake_env, workers=1, launcher="submitit", submitit_cluster="debug").run()
    assert summary["states"] == {"a25/seed0": "done", "a75/seed0": "done", "zero/seed0": "diverged"}


def test_prune_checkpoints_keeps_the_final_model(tmp_path):
    for name in ("model_0000002.pth", "model_0000005.pth", "last_checkpoint", "metrics.json"):
        (tmp_path / name).write_text("x")
    assert prune_checkpoints(str(tmp_path)) == []  # no final model (diverged or unfinished): keep all
    (tmp_path / "model_final.pth").write_text("x")
    assert prune_checkpoints(str(tmp_path)) == ["model_0000002.pth", "model_0000005.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint",
        "metrics.json",
        "model_final.pth",
    ]


def test_divergence_message_parsing():
    assert divergence_iteration(FloatingPointError("loss_cls = nan at iteration 17 (...)")) == 17
    assert divergence_iteration(FloatingPointError("Loss became infinite or NaN at iteration=88!")) == 88
    spawned = RuntimeError("ProcessRaisedException: ... FloatingPointError: x at iteration 5")
    assert divergence_iteration(spawned) == 5
    assert divergence_iteration(FloatingPointError("no iteration stated")) == -1
    assert divergence_iteration(RuntimeError("CUDA out of memory")) is None


def test_metrics_are_the_first_test_datasets_by_name_whatever_the_order():
    from focal_plugin.ablation.cell import pick_metrics

    result = {"metrics": {"a_val": {"bbox": {"AP": 1.0}}, "b_val": {"bbox": {"AP": 2.0}}}}  # sorted keys
    assert pick_metrics(result, "b_val") == {"AP": 2.0}
    assert pick_metrics(result) == {"AP": 1.0}


def test_results_read_back_keep_the_test_datasets_order(tmp_path):
    """results.json is written with sorted keys; a multi-process run reads it back: the metrics
    come back in DATASETS.TEST's order, as one process returns them."""
    from focal_plugin.engine import read_results, setup_cfg
    from focal_plugin.io import write_json_atomic

    smoke = os.path.join(ROOT, "configs", "mini", "smoke_tiny.yaml")
    cfg = setup_cfg(smoke, ["OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "('z_val', 'a_val')"])
    assert read_results(cfg) is None
    metrics = {"z_val": {"bbox": {"AP": 3.0}}, "a_val": {"bbox": {"AP": 1.0}}}
    write_json_atomic(tmp_path / "results.json", {"metrics": metrics, "iterations": 4})
    assert list(json.load(open(tmp_path / "results.json"))["metrics"]) == ["a_val", "z_val"]  # sorted
    back = read_results(cfg)
    assert list(back["metrics"]) == ["z_val", "a_val"] and back["metrics"] == metrics


def test_commit_is_dirty_only_with_uncommitted_code(tmp_path):
    from focal_plugin.collect_env import git_commit as _git_commit

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
    assert _git_commit(str(tmp_path)) == clean
    (tmp_path / "focal_plugin/configs/a.yaml").write_text("y\n")
    assert _git_commit(str(tmp_path)) == clean + "+dirty"
