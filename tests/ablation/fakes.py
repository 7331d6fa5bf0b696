"""Helpers of the ablation tests: a fake training function, a test spec, cell lookups.

Runner logic is tested with a fake training function (no detectron2 training): in this process
(``workers=0``) or, for the process-level tests (SIGKILL, two runners, pinned workers, submitit's
local executor), as ``fake_trainer:train`` imported by the cell processes from a temporary
folder on PYTHONPATH. Real tiny trainings are in ``tests/e2e/``.
"""

from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABLATE = os.path.join(ROOT, "tools", "ablate.py")

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
            "iterations": iters - start, "max_iter": iters, "resumed_from_iter": start,
            "weights": weights_record(o.get("MODEL.WEIGHTS"), seed)}


def weights_record(weights, seed):
    """The bytes a real cell records: the file given as MODEL.WEIGHTS, else a fake backbone per seed."""
    if weights and os.path.isfile(weights):
        import hashlib
        return {"uri": weights, "sha256": hashlib.sha256(open(weights, "rb").read()).hexdigest()}
    return {"uri": "focal-pretrained://fake@%d" % seed, "sha256": "%064d" % seed}
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


def cell_dir(runner, row, seed=0):
    """The folder of ``row``'s cell at ``seed``, as ``runner`` plans it."""
    return next(c.dir for c in runner.cells() if c.row.id == row and c.seed == seed)


def status_of(runner, row, seed=0):
    with open(os.path.join(cell_dir(runner, row, seed), "status.json")) as f:
        return json.load(f)


def calls_of(runner, row, seed=0):
    with open(os.path.join(cell_dir(runner, row, seed), "calls.log")) as f:
        return [int(x) for x in f.read().split()]


def make_runner(env, **options):
    """A runner of the test spec in ``env["out"]`` (in process with the fake trainer by default)."""
    from focal_plugin.ablation import Runner, RunOptions, load_spec

    options = {"output_dir": env["out"], "workers": 0, "train_fn": fake_train, "progress": False,
               "imbalance": False, **options}
    return Runner(load_spec(env["spec"]), RunOptions(**options), log=lambda m: None)


def md_rows(md):
    """The rows of every Markdown table in ``md`` as lists of stripped cells."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")]
            for line in md.splitlines() if line.startswith("|") and not line.startswith("|--")]
