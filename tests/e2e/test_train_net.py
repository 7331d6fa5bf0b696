"""train_net.py / focal_plugin.engine end to end on the tiny synthetic set (CPU, seconds)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser

from focal_plugin import engine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "mini", "smoke_tiny.yaml")


def _train_net_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net", os.path.join(ROOT, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _train_net_module()


def run_main(*argv):
    args = default_argument_parser().parse_args(["--config-file", SMOKE, *argv])
    return train_net.main(args)


def _ap(result):
    return result["metrics"]["dense_shapes_tiny_val"]["bbox"]


def test_train_net_main_is_the_engines():
    assert train_net.main is engine.main  # so the shared smoke_run trains through train_net.py's main


def test_train_eval_only_and_resume(data_root, tmp_path, smoke_run):
    out = str(tmp_path / "run")
    shutil.copytree(smoke_run[0], out)
    result = smoke_run[1]
    assert result["iterations"] == 4 and result["resumed_from_iter"] == 0
    assert set(_ap(result)) >= {"AP", "AP50", "AP75"}
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["metrics"] == result["metrics"]

    final = os.path.join(out, "model_final.pth")
    evaluated = run_main("--eval-only", "OUTPUT_DIR", out, "MODEL.WEIGHTS", final)
    assert _ap(evaluated)["AP"] == pytest.approx(_ap(result)["AP"], abs=1e-6)

    resumed = run_main("--resume", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "6")
    assert resumed["resumed_from_iter"] == 4 and resumed["iterations"] == 2


@pytest.mark.parametrize("fraction", ["-1.0", "0.25"])
def test_ohem_variants_train_and_evaluate(data_root, tmp_path, fraction):
    result = run_main("OUTPUT_DIR", str(tmp_path), "MODEL.FOCAL.OHEM.ENABLED", "True",
                      "MODEL.FOCAL.OHEM.BATCH_SIZE_PER_IMAGE", "32",
                      "MODEL.FOCAL.OHEM.POSITIVE_FRACTION", fraction,
                      "MODEL.FOCAL.LOSS", "sigmoid_ce", "MODEL.FOCAL.ALPHA", "-1.0")
    assert "AP" in _ap(result)


def test_wrong_class_count_names_the_key(data_root, tmp_path):
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        run_main("OUTPUT_DIR", str(tmp_path), "MODEL.RETINANET.NUM_CLASSES", "5")


def test_bad_config_file_and_key_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        engine.setup_cfg(str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="cfg.MODEL.FOCAL.GAMMA = -2.0"):  # before any dataset loads
        engine.setup_cfg(SMOKE, ["MODEL.FOCAL.GAMMA", "-2.0"])


class _PoisonAfter(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            with torch.no_grad():
                self.trainer.model.head.cls_score.bias.fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_root, tmp_path):
    cfg = engine.setup_cfg(SMOKE, ["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "8",
                                   "SOLVER.CHECKPOINT_PERIOD", "2"])
    trainer = engine.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([_PoisonAfter(3)])  # after the checkpointer saved model_0000003
    with pytest.raises(FloatingPointError, match=r"loss_cls .*iteration 4"):
        trainer.train()
    last = (tmp_path / "last_checkpoint").read_text().strip()
    assert last == "model_0000003.pth"
    assert not (tmp_path / "model_final.pth").exists()
    state = torch.load(tmp_path / last, map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _run_cli(data_root, out_dir, num_gpus, max_iter, *opts):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root))
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", SMOKE, "--num-gpus", str(num_gpus),
         "OUTPUT_DIR", str(out_dir), "SOLVER.MAX_ITER", str(max_iter), *opts],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out_dir / "results.json").read_text())
    assert "AP" in result["metrics"]["dense_shapes_tiny_val"]["bbox"]
    return proc, result


def test_cli_single_process_rescales_reference_world_size(data_root, tmp_path):
    # a schedule written for 2 workers, run on 1: detectron2 halves batch and lr, doubles iterations
    proc, result = _run_cli(data_root, tmp_path, 1, 2, "SOLVER.REFERENCE_WORLD_SIZE", "2")
    assert result["world_size"] == 1 and result["max_iter"] == 4
    log = proc.stderr + proc.stdout
    assert "Effective schedule: 1 worker(s) x 2 image(s) = batch 2, base lr 0.01, 4 iterations" in log


@pytest.mark.slow
def test_cli_two_cpu_processes(data_root, tmp_path):
    _, result = _run_cli(data_root, tmp_path, 2, 4)
    assert result["world_size"] == 2


def test_demo_and_predict_on_tiny_set(data_root, tmp_path):
    from focal_plugin import demo
    from focal_plugin.data import split_paths
    from focal_plugin.predict import predict

    out = tmp_path / "demo"
    result = demo.main(["--config-file", SMOKE, "OUTPUT_DIR", str(out)])
    assert "AP50" in result["metrics"]["dense_shapes_tiny_val"]["bbox"]
    picture = out / "predictions_vs_gt.png"
    assert picture.is_file() and picture.stat().st_size > 1000
    assert json.loads((out / "demo_summary.json").read_text())["iterations"] == 4

    cfg = engine.setup_cfg(SMOKE, ["MODEL.WEIGHTS", str(out / "model_final.pth"),
                                   "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    image_root = split_paths("tiny", "val")[1]
    summary = predict(cfg, [str(image_root)], str(tmp_path / "pred"), score_thresh=0.0, max_pictures=2)
    assert summary["images"] == 12 and len(summary["pictures"]) == 2
    records = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(records) == summary["detections"] > 0
    assert {"image_id", "file_name", "category_id", "bbox", "score"} <= set(records[0])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predict(cfg, [str(tmp_path / "missing.jpg")], str(tmp_path / "pred2"))


def test_the_python_api_sets_the_run_up_as_the_command_line_does(data_root, tmp_path):
    """engine.train seeds with SEED, logs to log.txt and saves config.yaml as train_net.py does:
    two runs of one config from Python, with the global RNGs disturbed in between, train the same
    bits."""
    import random

    import numpy as np

    weights = []
    for i, run in enumerate(("a", "b")):
        torch.manual_seed(100 + i)
        random.seed(100 + i)
        np.random.seed(100 + i)
        out = tmp_path / run
        engine.train(engine.setup_cfg(SMOKE, ["SEED", "7", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"]))
        assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
        weights.append(torch.load(out / "model_final.pth", map_location="cpu")["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_evaluation_refuses_weights_that_only_partly_fit(data_root, tmp_path, smoke_run):
    """A checkpoint trained with another head (NUM_CONVS 1 vs 2) would give a partly random model."""
    final = os.path.join(smoke_run[0], "model_final.pth")
    cfg = engine.setup_cfg(SMOKE, ["OUTPUT_DIR", str(tmp_path), "MODEL.RETINANET.NUM_CONVS", "2"])
    with pytest.raises(ValueError, match="do not match the model") as info:
        engine.evaluate(cfg, weights=final)
    assert final in str(info.value) and "missing from the weights" in str(info.value)
    assert not os.path.exists(os.path.join(str(tmp_path), "results.json"))  # no metrics written
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        engine.evaluate(cfg, weights=str(tmp_path / "nope.pth"))
