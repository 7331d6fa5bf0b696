"""Faults replayed from users' bug reports: each example's right value, and
other members of its kind. Tiny synthetic set, CPU, seconds each."""

import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model

from focal_plugin import engine
from focal_plugin.checkpoint import SafeCheckpointer, first_non_finite

from helpers import tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "mini", "smoke_tiny.yaml")


pytestmark = pytest.mark.usefixtures("data_root")  # conftest: a private DETECTRON2_DATASETS


def _cfg(tmp_path, *opts):
    return engine.setup_cfg(SMOKE, ["OUTPUT_DIR", str(tmp_path), *opts])


# ---------------------------------------------------------------- 10.4 poisoned checkpoints
def test_diverged_run_never_checkpoints_non_finite_state(tmp_path):
    cfg = _cfg(tmp_path, "SOLVER.BASE_LR", "1e9", "SOLVER.WARMUP_ITERS", "0",
               "SOLVER.CLIP_GRADIENTS.ENABLED", "False", "SOLVER.STEPS", "()",
               "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_ITER", "6")
    with pytest.raises(FloatingPointError, match=r"NaN|not finite|iteration"):
        engine.train(cfg)
    last = tmp_path / "last_checkpoint"
    if last.exists():  # whatever last_checkpoint names is finite and loadable
        state = torch.load(tmp_path / last.read_text().strip(), map_location="cpu", weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        resumed = _cfg(tmp_path, "SOLVER.MAX_ITER", "6")
        trainer = engine.Trainer(resumed)
        trainer.resume_or_load(resume=True)  # loads without error
    assert not (tmp_path / "model_final.pth").exists()


@pytest.mark.parametrize("what", ["parameter", "buffer"])
def test_checkpointer_refuses_non_finite_parameters_and_buffers(tmp_path, what):
    model = build_model(tiny_cfg())
    ckpt = SafeCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("good", iteration=1)
    name = "head.cls_score.bias" if what == "parameter" else "backbone.bottom_up.stem.conv1.norm.running_var"
    with torch.no_grad():
        dict(model.state_dict(keep_vars=True))[name].view(-1)[0] = float("inf")
    assert first_non_finite(model) == name
    with pytest.raises(FloatingPointError, match=rf"{name}.*iteration 2"):
        ckpt.save("bad", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "good.pth"
    assert not (tmp_path / "bad.pth").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


# ---------------------------------------------------------------- 10.5 AP when nothing is found
def test_ap_is_zero_not_none_when_the_model_finds_nothing(tmp_path):
    cfg = _cfg(tmp_path, "MODEL.RETINANET.SCORE_THRESH_TEST", "1.0")
    result = engine.evaluate(cfg, weights="")
    bbox = result["metrics"]["dense_shapes_tiny_val"]["bbox"]
    for key in ("AP", "AP50", "AP75"):
        assert bbox[key] == 0.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["dense_shapes_tiny_val"]["bbox"]["AP"] == 0.0
    # undefined only where there is no ground truth of that size
    assert all(v == 0.0 or v is None for v in bbox.values())


def test_evaluators_of_one_dataset_never_share_a_converted_file(tmp_path):
    """detectron2's COCOEvaluator stores its converted COCO file in the process-wide metadata and
    reuses an existing one: a later evaluation then read a deleted folder's file (FileNotFoundError)
    or ground truth the registered dicts no longer hold. Ours converts afresh into its own folder
    and leaves the metadata as it was."""
    import shutil

    from focal_plugin.evaluation import FocalCOCOEvaluator

    name = "focal_test_conversion"
    dicts = [{"file_name": f"{i}.png", "image_id": i, "height": 64, "width": 64,
              "annotations": [{"bbox": [4.0, 4.0, 20.0, 20.0], "bbox_mode": 1, "category_id": 0}]}
             for i in range(3)]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a"], thing_dataset_id_to_contiguous_id={1: 0})
    try:
        first = FocalCOCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "a"))
        assert len(first._coco_api.getImgIds()) == 3
        assert not hasattr(MetadataCatalog.get(name), "json_file")  # the metadata is left as it was
        shutil.rmtree(tmp_path / "a")  # the first run's folder is gone
        dicts.pop()  # and the registered data changed
        second = FocalCOCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "b"))
        assert len(second._coco_api.getImgIds()) == 2
        again = FocalCOCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "b"))  # same folder
        assert len(again._coco_api.getImgIds()) == 2
        dicts.pop()
        assert len(FocalCOCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "b"))
                   ._coco_api.getImgIds()) == 1  # a file in its own folder is not reused either
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------- user COCO datasets
def _user_coco(root, num_categories=3, with_area=True, name="user"):
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 96, "width": 96})
        ann = {"id": i + 1, "image_id": i + 1, "category_id": (i % num_categories) + 1,
               "bbox": [10.0, 12.0, 40.0, 30.0], "iscrowd": 0}
        if with_area:
            ann["area"] = 1200.0
        anns.append(ann)
    cats = [{"id": c + 1, "name": f"k{c}"} for c in range(num_categories)]
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.mark.parametrize("num_classes", [2, 4])
def test_class_count_of_a_user_coco_file_checked_before_training(tmp_path, num_classes):
    name = f"focal_faults_user3_{num_classes}"
    json_file = _user_coco(tmp_path / "data")
    register_coco_instances(name, {}, str(json_file), str(tmp_path / "data"))
    cfg = _cfg(tmp_path / "out", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
               "MODEL.RETINANET.NUM_CLASSES", str(num_classes))
    with pytest.raises(ValueError, match=rf"'{name}' has 3 classes.*NUM_CLASSES = {num_classes}"):
        engine.train(cfg)
    assert not (tmp_path / "out" / "model_final.pth").exists()
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        engine.evaluate(cfg, weights="")
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_coco_file_without_area_evaluates(tmp_path):
    name = "focal_faults_no_area"
    json_file = _user_coco(tmp_path / "data", with_area=False, name="noarea")
    register_coco_instances(name, {}, str(json_file), str(tmp_path / "data"))
    cfg = _cfg(tmp_path / "out", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
               "MODEL.RETINANET.NUM_CLASSES", "3", "SOLVER.MAX_ITER", "2")
    result = engine.train(cfg)
    assert math.isfinite(result["metrics"][name]["bbox"]["AP"])
    assert (tmp_path / "out" / "results.json").is_file()


def test_missing_test_images_are_reported_before_training(tmp_path):
    name = "focal_faults_missing_image"
    json_file = _user_coco(tmp_path / "data", name="missing")
    (tmp_path / "data" / "2.png").unlink()
    register_coco_instances(name, {}, str(json_file), str(tmp_path / "data"))
    cfg = _cfg(tmp_path / "out", "DATASETS.TEST", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "3",
               "DATASETS.TRAIN", f"('{name}',)")
    with pytest.raises(FileNotFoundError, match=rf"'{name}': 1 image.*2\.png"):
        engine.train(cfg)
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_a_late_failure_still_writes_what_was_computed(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(engine.Trainer, "test", classmethod(boom))
    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "2")
    with pytest.raises(RuntimeError, match="exploded"):
        engine.train(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "evaluation exploded" in saved["error"] and saved["iterations"] == 2
    assert (tmp_path / "model_final.pth").is_file()


# ---------------------------------------------------------------- 10.7 resume with a new lr
def test_resume_logs_the_lr_really_in_effect(tmp_path, caplog):
    flat = ["SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()"]
    engine.train(_cfg(tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.01", *flat))
    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.BASE_LR", "0.001", *flat)
    import logging

    with caplog.at_level(logging.INFO, logger="focal_plugin"):
        engine.train(cfg, resume=True)
    text = caplog.text
    assert "base lr 0.01," in text and "SOLVER.BASE_LR = 0.001 is NOT in effect" in text
    lrs = [json.loads(line).get("lr") for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [x for x in lrs if x is not None][-1] == pytest.approx(0.01)


# ---------------------------------------------------------------- 10.9 / 16.3 keys without effect
@pytest.mark.parametrize("key,value,instead", [
    ("MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0.5", "MODEL.FOCAL.GAMMA"),
    ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75", "MODEL.FOCAL.ALPHA"),
    ("MODEL.RETINANET.PRIOR_PROB", "0.1", "MODEL.FOCAL.PRIOR_PROB"),
    ("MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.3", "MODEL.RETINANET.NMS_THRESH_TEST"),
])
def test_superseded_detectron2_keys_are_refused_naming_the_key_that_works(key, value, instead):
    with pytest.raises(ValueError, match=rf"cfg\.{key} = .*no effect.*cfg\.{instead}"):
        engine.setup_cfg(SMOKE, [key, value])
    if key.startswith("MODEL.RETINANET."):  # detectron2's RetinaNet does read them
        engine.setup_cfg(SMOKE, [key, value, "MODEL.META_ARCHITECTURE", "RetinaNet"])


def test_test_time_augmentation_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED"):
        engine.setup_cfg(SMOKE, ["TEST.AUG.ENABLED", "True"])


# ---------------------------------------------------------------- 16.6 configurations that cannot work
@pytest.mark.parametrize("ims,world", [(1, 1), (2, 2), (3, 2)])
def test_one_image_per_worker_with_a_bn_head_is_refused(ims, world):
    cfg = engine.setup_cfg(SMOKE, ["SOLVER.IMS_PER_BATCH", str(ims)])
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.NORM.*IMS_PER_BATCH"):
        engine.check_batch_norm_batch(cfg, world)
    ok = engine.setup_cfg(SMOKE, ["SOLVER.IMS_PER_BATCH", str(ims), "MODEL.RETINANET.NORM", "GN"])
    engine.check_batch_norm_batch(ok, world)


@pytest.mark.parametrize("opts, world, refused, words", [
    # a synchronized BN in one process sees what BN sees: one image, P7 1x1 at 96 px
    (["MODEL.RETINANET.NORM", "SyncBN"], 1, True, "SyncBN in one process pools nothing more than BN"),
    (["MODEL.RETINANET.NORM", "naiveSyncBN"], 1, True, "pools nothing more"),
    # ... over two workers it pools both images
    (["MODEL.RETINANET.NORM", "SyncBN", "SOLVER.IMS_PER_BATCH", "2"], 2, False, ""),
    (["SOLVER.IMS_PER_BATCH", "2"], 2, True, "or 'SyncBN'"),  # BN over two workers: advise SyncBN
    # large images: P7 of 800 px is 7x7, so even one image gives BN 49 values per channel
    (["INPUT.MIN_SIZE_TRAIN", "(800,)"], 1, False, ""),
    # the FPN's and the trainable backbone's BN are checked too (res5 of 32 px: 1 cell)
    (["MODEL.RETINANET.NORM", "GN", "MODEL.FPN.NORM", "BN", "INPUT.MIN_SIZE_TRAIN", "(32,)"], 1, True,
     "MODEL.FPN.NORM"),
    (["MODEL.RETINANET.NORM", "GN", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
      "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "64"], 1, True, "MODEL.RESNETS.NORM"),
    (["MODEL.RETINANET.NORM", "GN", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "5",
      "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "64"], 1, False, ""),  # frozen: FrozenBN
])
def test_every_batch_statistics_norm_is_checked_on_what_it_sees(opts, world, refused, words):
    cfg = engine.setup_cfg(SMOKE, ["SOLVER.IMS_PER_BATCH", "1", *opts])
    if not refused:
        engine.check_batch_norm_batch(cfg, world)
        return
    with pytest.raises(ValueError, match="1 value per channel") as info:
        engine.check_batch_norm_batch(cfg, world)
    assert words in str(info.value)


def test_backbone_levels_with_different_channels_are_refused():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY, Backbone

    @BACKBONE_REGISTRY.register()
    class FocalTestUnevenBackbone(Backbone):
        def __init__(self, cfg, input_shape):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return {}

        def output_shape(self):
            return {f"p{i}": ShapeSpec(channels=8 * (i - 2), stride=2 ** i) for i in range(3, 8)}

    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "FocalTestUnevenBackbone"
    cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    with pytest.raises(ValueError, match=r"BACKBONE.NAME.*channel"):
        build_model(cfg)


# ---------------------------------------------------------------- 16.4 coupled LazyConfig fields
@pytest.mark.parametrize("change", ["softmax_loss", "head_classes"])
def test_coupled_lazy_config_fields_are_checked_at_build(change):
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "lazy", "focal_retinanet_R_50_FPN_600_90k.py"))
    if change == "softmax_loss":
        cfg.model.classification_loss.name = "softmax_focal"
    else:
        cfg.model.head.num_classes = 6
    with pytest.raises(ValueError, match=r"head.*(softmax|num_classes)"):
        instantiate(cfg.model)
