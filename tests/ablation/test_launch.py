"""Cells in worker processes (focal_plugin.ablation.launch) and the command line (tools/ablate.py):
fixed CPU shares, SIGKILL and resume, a second runner refused, submitit, campaigns."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from fakes import ABLATE, calls_of, cell_dir, make_runner, status_of

from focal_plugin.ablation.campaign import Step, load_campaign, run_campaign
from focal_plugin.ablation.report import RUNNER_LOCK, invocations
from focal_plugin.ablation.runner import RunOptions
from focal_plugin.locks import FileLock


def _ablate(fake_env, *args):
    cmd = [sys.executable, ABLATE, "--spec", fake_env["spec"], "--output-dir", fake_env["out"],
           "--train-fn", "fake_trainer:train", "--no-progress", "--no-imbalance", *args]
    return subprocess.Popen(cmd, cwd=str(fake_env["tmp"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _runner(fake_env, **kw):
    return make_runner(fake_env, train_fn="fake_trainer:train", workers=1, **kw)


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
        with open(f"/proc/{pid}/stat") as f:  # a zombie is dead for our purpose
            return f.read().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_two_workers_run_cells_in_pinned_processes_with_one_thread_each(fake_env):
    proc = _ablate(fake_env, "--workers", "2", "--only", "a25", "a75")
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    runner = _runner(fake_env, only=["a25", "a75"])
    devices = [status_of(runner, r)["device"] for r in ("a25", "a75")]
    assert all(d["torch_threads"] == 1 and len(d["cpus"]) == 1 for d in devices)
    assert "threads 1" in open(os.path.join(cell_dir(runner, "a25"), "run.log")).read()
    start = json.loads(open(os.path.join(runner.run_dir, "runs.jsonl")).readline())
    assert start["argv"][:3] == ["tools/ablate.py", "--spec", fake_env["spec"]]  # as typed


@pytest.mark.slow
def test_sigkill_mid_cell_then_resume_and_second_runner_refused(fake_env, monkeypatch, request):
    """Kill the runner (SIGKILL) while it trains the second cell: the first cell is kept, the
    second resumes from its checkpoint; meanwhile a second runner on the folder is refused."""
    gate = fake_env["tmp"] / "release"
    gated = _runner(fake_env, opts=["SOLVER.MAX_ITER", "12"]).cells()[1].key  # a75's folder
    monkeypatch.setenv("FAKE_TRAIN_GATE", f"{gated}:{gate}")
    runner = _ablate(fake_env, "--only", "a25", "a75", "--workers", "1", "SOLVER.MAX_ITER", "12")

    def cleanup():  # a failed assertion must not leave a runner waiting at the gate forever
        gate.write_text("")
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=60)

    request.addfinalizer(cleanup)
    planned = _runner(fake_env, only=["a25", "a75"], opts=["SOLVER.MAX_ITER", "12"])
    b_ckpt = os.path.join(cell_dir(planned, "a75"), "last_checkpoint")
    _wait_for(lambda: os.path.exists(b_ckpt) and open(b_ckpt).read() == "model_0000002.pth", 300,
              "the 2nd cell's checkpoint")
    other = _ablate(fake_env, "--only", "a25", "a75", "SOLVER.MAX_ITER", "12")
    text, _ = other.communicate(timeout=300)
    assert other.returncode == 2
    assert f"pid {runner.pid} on host" in text and "in use by another process" in text
    cell_pid = status_of(planned, "a75")["pid"]
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=60)
    _wait_for(lambda: not _alive(cell_pid), 60, "the cell process to die with its runner")
    assert status_of(planned, "a25")["state"] == "done" and status_of(planned, "a75")["state"] == "running"
    killed_at = int(open(b_ckpt).read()[6:13]) + 1
    gate.write_text("")
    again = _ablate(fake_env, "--only", "a25", "a75", "--workers", "2", "SOLVER.MAX_ITER", "12")
    text, _ = again.communicate(timeout=300)
    assert again.returncode == 0, text
    assert "1 finished cell(s) kept, 1 to run" in text
    assert calls_of(planned, "a25") == [0] and calls_of(planned, "a75") == [0, killed_at]
    st = status_of(planned, "a75")
    assert st["state"] == "done" and st["resumed_from_iter"] == killed_at and st["attempts"] == 2


@pytest.mark.slow
def test_submitit_local_executor_one_job_per_cell(fake_env):
    pytest.importorskip("submitit")
    proc = _ablate(fake_env, "--launcher", "submitit", "--submitit-cluster", "local",
                   "--submitit-param", "timeout_min=10")
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    assert "submitted 3 job(s) to local" in text
    runner = _runner(fake_env)
    assert status_of(runner, "a75")["state"] == "done" and status_of(runner, "zero")["diverged_at"] == 3
    job = json.load(open(os.path.join(cell_dir(runner, "a25"), "submitit.json")))
    assert job["cluster"] == "local" and job["job_id"]


def test_report_tells_a_runner_at_work_from_a_killed_one(tmp_path):
    host, pid = socket.gethostname(), os.getpid()
    history = [{"event": "start", "host": host, "pid": pid - 1, "time": "t0", "argv": ["a"]},  # killed
               {"event": "start", "host": host, "pid": pid, "time": "t1", "argv": ["b"]}]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history) + '{"cut by a kill')
    assert [r["running"] for r in invocations(str(tmp_path))] == [False, False]
    lock = FileLock(os.path.join(tmp_path, RUNNER_LOCK)).acquire()
    try:
        assert [r["running"] for r in invocations(str(tmp_path))] == [False, True]
        with open(tmp_path / "runs.jsonl", "a") as f:
            f.write("\n" + json.dumps({"event": "end", "host": host, "pid": pid, "time": "t2",
                                       "states": {"done": 1}}) + "\n")
        runs = invocations(str(tmp_path))
        assert [(r["running"], r["ended"]) for r in runs] == [(False, None), (False, "t2")]
        assert [r["command"] for r in runs] == ["a", "b"]
    finally:
        lock.release()


def _cli():
    sys.path.insert(0, os.path.dirname(ABLATE))
    try:
        import ablate
    finally:
        sys.path.pop(0)
    return ablate


def test_cli_flags_are_the_run_options(capsys, tmp_path):
    ablate = _cli()
    parser = ablate.build_parser()
    flags = {a.dest for a in parser._actions}
    assert set(RunOptions.__dataclass_fields__) <= flags  # one flag per option, from the dataclass
    args = ablate.parse_args(["--spec", "x", "--no-imbalance", "--keep-checkpoints", "--seeds", "0", "3",
                              "--only", "a", "b", "SOLVER.MAX_ITER", "3"])
    assert args.only == ["a", "b"]
    options = ablate.options_of(args)
    assert (options.imbalance, options.keep_checkpoints, options.seeds, options.opts) == \
        (False, True, [0, 3], ["SOLVER.MAX_ITER", "3"])
    dry = ["--spec", "table1b", "--scale", "paper", "--dry-run", "--output-dir", str(tmp_path)]
    assert ablate.main(dry) == 0
    out = capsys.readouterr().out
    assert out.count("[pending") == 11 and "MODEL.FOCAL.GAMMA 0.1" in out  # gamma_0 and 2.0: 3 seeds
    assert ablate.main(["--list"]) == 0 and "table1e" in capsys.readouterr().out
    assert ablate.main(["--spec", "table1b", "--only", "gamma_9", "--dry-run"]) == 2
    assert "unknown row(s) ['gamma_9']" in capsys.readouterr().err
    assert ablate.main(["--spec", "table1b", "--dry-run", "SEED", "5"]) == 2
    assert "SEED is set by the runner per cell" in capsys.readouterr().err


def test_the_mini_campaign_lists_valid_steps_and_runs_them_in_order(tmp_path):
    options, steps = load_campaign("mini")
    scale = options["scale"]
    assert scale == "mini" and steps[0] == Step(spec="init")
    assert any(s.tool and s.tool[0] == "tools/imbalance_scan.py" for s in steps)
    seen = []
    assert run_campaign(steps[:3], lambda s: seen.append(s.spec) or 0, log=lambda m: None, tool=None) == 0
    assert seen == [s.spec for s in steps[:3] if s.spec]
    assert (
        run_campaign([Step(spec="a"), Step(spec="b")], lambda s: seen.append(s.spec) or 2, log=lambda m: None)
        == 2
        and seen[-1] == "a"
    )  # a usage error stops the campaign
    bad = tmp_path / "bad.yaml"
    for text, words in (
        ("scale: mini\nsteps: [{spec: table1b, only: [gamma_9]}]", r"rows \['gamma_9'\] are not rows of"),
        ("scale: mini\nsteps: [{tool: [tools/nope.py]}]", "not a file of the repository"),
        ("scale: huge\nsteps: []", r"expected \{scale"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            load_campaign(str(bad))


def test_a_campaign_sets_options_for_every_step_and_a_clashing_flag_is_refused(capsys):
    ablate = _cli()
    options, steps = load_campaign("mini_v3")
    assert options == {"scale": "mini", "base_config": "mini/protocol_v3/Base-Protocol.yaml",
                       "output_dir": "results/mini/v3", "seeds": [0, 1, 2], "label": options["label"]}
    assert steps[0].spec == "schedule_scan"
    assert ablate.main(["--campaign", "mini_v3", "--output-dir", "/tmp/elsewhere", "--dry-run"]) == 2
    assert "--output-dir /tmp/elsewhere (the campaign sets results/mini/v3)" in capsys.readouterr().err
