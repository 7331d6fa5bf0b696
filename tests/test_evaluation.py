"""COCO evaluation backends: faster-coco-eval agrees with pycocotools; the key is checked once."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from focal_plugin import engine
from focal_plugin.evaluation import FocalCOCOEvaluator, resolve_eval_backend

pytest.importorskip("faster_coco_eval")

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _bench():
    path = ROOT / "benchmarks" / "bench_coco_eval.py"
    spec = importlib.util.spec_from_file_location("bench_coco_eval", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_coco_eval", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def coco_fixture(tmp_path):
    """40 COCO-like images (the benchmark's generator), 6 classes, small/medium/large and crowd
    boxes, ~30 detections per image; registered as a dataset with a json_file."""
    bench = _bench()
    gt, dets = bench.coco_like(40, dets_per_image=30, num_classes=6, seed=3)
    assert {a["iscrowd"] for a in gt["annotations"]} == {0, 1}
    name = bench.register(gt, str(tmp_path), "perf_eval_fixture")
    yield bench, name, gt, dets
    MetadataCatalog.remove(name)


def test_faster_coco_eval_agrees_with_pycocotools(coco_fixture):
    bench, name, gt, dets = coco_fixture
    _, slow = bench.evaluate(name, "pycocotools", dets)
    _, fast = bench.evaluate(name, "faster_coco_eval", dets)
    for m in METRICS:
        assert math.isfinite(slow[m]) and slow[m] > 0, m
        assert fast[m] == pytest.approx(slow[m], abs=1e-4), m
    per_class = [k for k in slow if k.startswith("AP-")]
    assert len(per_class) == 6
    for k in per_class:
        assert fast[k] == pytest.approx(slow[k], abs=1e-4, nan_ok=True), k


def test_faster_backend_through_process_and_evaluate(coco_fixture, tmp_path):
    """The public path (process -> evaluate, results file written), perfect detections: AP 100;
    no detections at all: AP 0 (the repair holds for this backend too)."""
    _, name, gt, _ = coco_fixture
    for backend in ("faster_coco_eval", "pycocotools"):
        ev = FocalCOCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path / backend),
                                use_fast_impl=False, backend=backend)
        ev.reset()
        for img in gt["images"]:
            anns = [a for a in gt["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
            xywh = [a["bbox"] for a in anns]
            xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in xywh]).reshape(-1, 4)
            inst = Instances((img["height"], img["width"]), pred_boxes=Boxes(xyxy),
                             scores=torch.ones(len(anns)),
                             pred_classes=torch.tensor([a["category_id"] for a in anns], dtype=torch.long))
            ev.process([{"image_id": img["id"]}], [{"instances": inst}])
        assert ev.evaluate()["bbox"]["AP"] == pytest.approx(100.0), backend
        saved = json.loads((tmp_path / backend / "coco_instances_results.json").read_text())
        assert len(saved) == sum(1 for a in gt["annotations"] if not a["iscrowd"])
        ev.reset()
        for img in gt["images"]:
            empty = Instances((img["height"], img["width"]), pred_boxes=Boxes(torch.zeros(0, 4)),
                              scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.long))
            ev.process([{"image_id": img["id"]}], [{"instances": empty}])
        assert ev.evaluate()["bbox"]["AP"] == 0.0, backend


def test_backend_resolution_and_errors(monkeypatch):
    assert resolve_eval_backend("auto") == "faster_coco_eval"
    assert resolve_eval_backend("pycocotools") == "pycocotools"
    with pytest.raises(ValueError, match="expected one of"):
        resolve_eval_backend("fast")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "faster_coco_eval" else real(n, *a))
    assert resolve_eval_backend("auto") == "pycocotools"  # the fallback
    with pytest.raises(ValueError, match="pip install faster-coco-eval"):
        resolve_eval_backend("faster_coco_eval")


def test_config_key_checked_once_at_setup():
    cfg = engine.get_focal_cfg()
    assert cfg.TEST.COCO_EVAL_BACKEND == "auto"
    with pytest.raises(ValueError, match=r"cfg.TEST.COCO_EVAL_BACKEND = 'faster'.*expected one of"):
        engine.setup_cfg(opts=["TEST.COCO_EVAL_BACKEND", "faster"])
    cfg = engine.setup_cfg(opts=["TEST.COCO_EVAL_BACKEND", "pycocotools"])
    assert cfg.TEST.COCO_EVAL_BACKEND == "pycocotools"


def test_build_evaluator_uses_the_key(coco_fixture, tmp_path):
    _, name, _, _ = coco_fixture
    for value, expected in (("auto", "faster_coco_eval"), ("pycocotools", "pycocotools")):
        cfg = engine.setup_cfg(opts=["TEST.COCO_EVAL_BACKEND", value, "OUTPUT_DIR", str(tmp_path)])
        assert engine.Trainer.build_evaluator(cfg, name).backend == expected
