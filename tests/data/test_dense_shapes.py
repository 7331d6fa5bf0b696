"""focal_plugin.data: the dense_shapes generator, its on-disk cache and registration."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import focal_plugin.data as fdata
from focal_plugin.data import catalog, render, synthetic
from focal_plugin.data.synthetic import SyntheticConfig

TINY = SyntheticConfig(
    name="tiny", seed=1, num_train=8, num_val=4, image_size=(96, 96), num_classes=5, mean_objects=6.0,
    max_objects=12, empty_fraction=0.2, scale_range=(0.12, 0.5), mean_distractors=3.0,
    distractor_weights=(1.0, 1.0, 1.0, 1.0),
)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make(root: Path, config: SyntheticConfig = TINY, **kw) -> Path:
    return catalog.prepare_dataset(config, root, progress=False, **kw)


@pytest.fixture
def d2_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    return tmp_path / "d2"


@pytest.fixture
def tiny_registered(tmp_path):
    names = {split: f"focal_test_tiny_{split}" for split in ("train", "val")}
    for split, name in names.items():
        catalog.register_dense_shapes(name, TINY, split, root=tmp_path / "root")
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path, fmt):
    config = dataclasses.replace(TINY, image_format=fmt)
    a = _files(_make(tmp_path / "a", config, workers=1))
    b = _files(_make(tmp_path / "b", config, workers=3))  # threads do not change a byte
    assert a.keys() == b.keys() and len(a) == 8 + 4 + 2 + 1
    assert all(a[k] == b[k] for k in a)
    c = _files(_make(tmp_path / "c", dataclasses.replace(config, seed=2)))
    images = [k for k in a if k.endswith(fmt)]
    assert sum(a[k] != c[k] for k in images) == len(images)
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]


def test_fingerprint_tracks_parameters_not_name():
    assert dataclasses.replace(TINY, name="other").fingerprint() == TINY.fingerprint()
    assert dataclasses.replace(TINY, num_classes=6).fingerprint() != TINY.fingerprint()
    assert catalog.dataset_dir(TINY, "r").name == f"tiny-{TINY.fingerprint()}"
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig(num_classes=81)


# ------------------------------------------------------------------ COCO validity
def test_json_loads_in_pycocotools_and_boxes_are_tight_and_inside(tmp_path):
    from pycocotools.coco import COCO

    config = dataclasses.replace(TINY, num_train=40, empty_fraction=0.1)
    d = _make(tmp_path, config)
    coco = COCO(str(d / "annotations/instances_train.json"))
    assert len(coco.getImgIds()) == 40 and len(coco.getCatIds()) == config.num_classes
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == config.thing_classes()
    import cv2

    n_layout = n_anns = 0
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(str(d / "train" / img["file_name"]))
        assert pixels.shape[:2] == (img["height"], img["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        n_anns += len(anns)
        n_layout += len(synthetic.sample_layout(config, "train", img["id"] - 1).objects)
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and a["area"] == w * h
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            assert 1 <= a["category_id"] <= config.num_classes and a["iscrowd"] == 0
            assert a["visible_fraction"] >= config.min_visible_fraction
    assert 0.8 * n_layout <= n_anns <= n_layout  # occlusion drops only a few


def test_rendered_boxes_are_tight_on_visible_pixels():
    config = dataclasses.replace(TINY, mean_distractors=0.0, empty_fraction=0.0)
    for i in range(20):
        layout = synthetic.sample_layout(config, "val", i)
        _, anns = render.render_layout(config, layout, "val", i)
        top = layout.items[-1]  # drawn last: fully visible, never dropped, last annotation
        m = render.shape_mask(top.shape, top.w, top.h)
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        tight = [top.x + int(cols[0]), top.y + int(rows[0]), int(cols[-1] - cols[0] + 1),
                 int(rows[-1] - rows[0] + 1)]
        assert anns[-1]["bbox"] == tight and anns[-1]["visible_fraction"] == 1.0
        assert anns[-1]["category_id"] == top.class_id


# ------------------------------------------------------------------ documented distributions
def _layout_statistics(config: SyntheticConfig, split: str) -> dict:
    """Per-object class ids, scales (sqrt(w*h/(W*H))) and aspects, and per-image object counts,
    from layouts only (nothing is drawn)."""
    cls, scale, aspect, counts = [], [], [], []
    for i in range(config.num_images(split)):
        lay = synthetic.sample_layout(config, split, i)
        counts.append(len(lay.objects))
        for o in lay.objects:
            cls.append(o.class_id)
            scale.append(math.sqrt(o.w * o.h / (lay.width * lay.height)))
            aspect.append(o.w / o.h)
    return {"class_id": np.asarray(cls, np.int64), "scale": np.asarray(scale),
            "aspect": np.asarray(aspect), "objects_per_image": np.asarray(counts, np.int64)}


def test_class_frequencies_sizes_and_counts_follow_parameters():
    config = SyntheticConfig(
        num_train=3000, image_size=(256, 256), num_classes=10, class_zipf_exponent=1.0,
        mean_objects=4.0, max_objects=100, empty_fraction=0.1, scale_range=(0.05, 0.5), max_aspect=2.0,
    )
    s = _layout_statistics(config, "train")
    n = len(s["class_id"])
    freq = np.bincount(s["class_id"], minlength=10) / n
    p = config.class_probabilities()
    assert np.allclose(p, np.arange(1, 11) ** -1.0 / np.sum(np.arange(1, 11) ** -1.0))
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n))
    assert freq[0] / freq[-1] > 6  # Zipf(1): 10x in expectation

    # scale = sqrt(box area / image area) is log-uniform on scale_range (KS distance)
    u = np.sort((np.log(s["scale"]) - math.log(0.05)) / (math.log(0.5) - math.log(0.05)))
    assert u.min() > -0.03 and u.max() < 1.03  # boxes are whole pixels
    assert np.max(np.abs(u - (np.arange(1, n + 1) - 0.5) / n)) < 0.03
    side = s["scale"] * 256  # COCO's absolute ranges on 256 px images
    expected_small = math.log(32 / 12.8) / math.log(10)  # 0.398
    expected_large = math.log(128 / 96) / math.log(10)  # 0.125
    assert abs(np.mean(side < 32) - expected_small) < 0.03
    assert abs(np.mean(side > 96) - expected_large) < 0.03
    la = np.log(s["aspect"])
    assert abs(la.mean()) < 0.03 and la.max() < math.log(2) + 0.1 and la.min() > -math.log(2) - 0.1

    counts = s["objects_per_image"]
    assert abs(np.mean(counts == 0) - 0.1) < 0.02
    assert abs(counts[counts > 0].mean() - 4.0) < 0.15


# ------------------------------------------------------------------ cache integrity
def _corrupt_manifest(d):
    (d / catalog.MANIFEST).unlink()


def _delete_image(d):
    next((d / "val").iterdir()).unlink()


def _truncate_json(d):
    p = d / "annotations/instances_train.json"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _edit_json(d):  # same size: only the manifest's sha256 notices
    p = d / "annotations/instances_val.json"
    p.write_bytes(p.read_bytes().replace(b'"iscrowd":0', b'"iscrowd":1', 1))


@pytest.mark.parametrize("damage", [_corrupt_manifest, _delete_image, _truncate_json, _edit_json])
def test_corrupt_dataset_is_detected_and_regenerated(tmp_path, damage):
    d = _make(tmp_path)
    good = _files(d)
    damage(d)
    ok, reason = catalog.verify_dataset(d, TINY)
    assert not ok and reason
    assert _make(tmp_path) == d
    assert _files(d) == good
    assert not list(d.parent.glob(".tmp-*")) and not list(d.parent.glob(".trash-*"))


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = catalog.make_image

    def dying(*args):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(catalog, "make_image", dying)
    with pytest.raises(KeyboardInterrupt):
        _make(tmp_path, workers=1)
    final = catalog.dataset_dir(TINY, tmp_path)
    assert not final.exists()
    # a SIGKILLed run leaves its temp dir behind: ignored, then cleaned up by the next run
    stale = final.parent / f".tmp-{final.name}-99999"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "000000.jpg").write_bytes(b"partial")
    monkeypatch.setattr(catalog, "make_image", real)
    assert _make(tmp_path) == final and catalog.verify_dataset(final, TINY)[0]
    assert not stale.exists()


def test_concurrent_prepare_generates_once(tmp_path, monkeypatch):
    real = catalog.write_dataset
    calls = []

    def slow_write(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(catalog, "write_dataset", slow_write)
    out = []
    threads = [threading.Thread(target=lambda: out.append(_make(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 2 and out[0] == out[1]
    assert catalog.verify_dataset(out[0], TINY)[0]


def test_changed_parameters_get_their_own_directory(tmp_path):
    a = _make(tmp_path)
    b = _make(tmp_path, dataclasses.replace(TINY, num_train=9))
    assert a != b and catalog.verify_dataset(a, TINY)[0]


# ------------------------------------------------------------------ user files
@pytest.mark.parametrize("text", ['{"images": [', "[]", '{"images": 3, "annotations": []}'])
def test_malformed_user_json_fails_naming_the_file(tmp_path, text):
    bad = tmp_path / "my_annotations.json"
    bad.write_text(text)
    with pytest.raises(ValueError, match="my_annotations.json"):
        catalog.load_coco_dicts(bad, tmp_path)
    fdata.register_coco_json("focal_test_user_bad", bad, tmp_path)
    try:
        with pytest.raises(fdata.DatasetFormatError, match=str(bad)):
            DatasetCatalog.get("focal_test_user_bad")
    finally:
        DatasetCatalog.remove("focal_test_user_bad")
        MetadataCatalog.remove("focal_test_user_bad")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        catalog.load_coco_dicts(tmp_path / "missing.json", tmp_path)


# ------------------------------------------------------------------ registration
def test_dataset_catalog_get_returns_detectron2_dicts(tiny_registered):
    dicts = DatasetCatalog.get(tiny_registered["train"])
    assert len(dicts) == TINY.num_train
    assert sum(len(d["annotations"]) for d in dicts) > 0
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and d["height"] == d["width"] == 96
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= a["category_id"] < TINY.num_classes
    meta = MetadataCatalog.get(tiny_registered["val"])
    assert meta.thing_classes == TINY.thing_classes() and meta.evaluator_type == "coco"
    assert meta.thing_dataset_id_to_contiguous_id == {k + 1: k for k in range(TINY.num_classes)}
    assert (meta.preset, meta.split) == ("tiny", "val")


def test_coco_evaluator_converts_and_generates_on_first_use(tiny_registered, tmp_path):
    """Built before any load (no json_file in the metadata yet), detectron2's COCOEvaluator loads the
    registered dicts (generating the dataset first), which records the file; the ground truth
    scores AP 100."""
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    name = tiny_registered["val"]
    assert not MetadataCatalog.get(name).get("json_file") and not (tmp_path / "root").exists()
    evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "eval"), use_fast_impl=False)
    assert catalog.verify_dataset(catalog.dataset_dir(TINY, tmp_path / "root"), TINY)[0]
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        inst = Instances((d["height"], d["width"]), pred_boxes=Boxes(torch.tensor(boxes).reshape(-1, 4)),
                         scores=torch.ones(len(boxes)),
                         pred_classes=torch.tensor([a["category_id"] for a in d["annotations"]]).long())
        evaluator.process([d], [{"instances": inst}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
    assert MetadataCatalog.get(name).json_file == str(catalog.split_paths(TINY, "val", tmp_path / "root")[0])


def _noisy_predictions(dicts, seed=0):
    """Per record, the ground truth shifted by a few pixels with random scores and some wrong classes,
    plus as many random boxes: APs strictly between 0 and 100."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    outputs = []
    for d in dicts:
        gt = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                           for a in d["annotations"]]).reshape(-1, 4)
        noise = torch.rand(len(gt), 4, generator=g) * 8 - 4
        rand = torch.rand(len(gt), 2, generator=g) * 60
        boxes = torch.cat([gt + noise, torch.cat([rand, rand + 20], dim=1)])
        classes = torch.tensor([a["category_id"] for a in d["annotations"]] * 2).long()
        classes[torch.rand(len(classes), generator=g) < 0.2] = 0
        inst = Instances((d["height"], d["width"]), pred_boxes=Boxes(boxes),
                         scores=torch.rand(len(boxes), generator=g), pred_classes=classes)
        outputs.append({"instances": inst})
    return outputs


def _evaluate(evaluator, dicts, outputs):
    evaluator.reset()
    for d, out in zip(dicts, outputs):
        evaluator.process([d], [out])
    return evaluator.evaluate()["bbox"]


def test_loading_records_the_coco_file_so_detectron2s_evaluator_needs_no_output_dir(d2_root, monkeypatch):
    """As detectron2's tools/lazyconfig_train_net.py does: the test loader loads the dicts, then a
    plain COCOEvaluator (no output_dir) is built; it reads the dataset's own COCO file."""
    from detectron2.evaluation import COCOEvaluator

    name = "focal_test_tiny_json_val"
    catalog.register_dense_shapes(name, TINY, "val")
    try:
        assert MetadataCatalog.get(name).get("json_file") is None  # registration reads no disk
        dicts = DatasetCatalog.get(name)
        json_file, image_root = catalog.split_paths(TINY, "val")
        meta = MetadataCatalog.get(name)
        assert (meta.json_file, meta.image_root) == (str(json_file), str(image_root))
        assert json_file.is_file() and str(json_file).startswith(str(d2_root))
        ap = _evaluate(COCOEvaluator(name, tasks=("bbox",), use_fast_impl=False), dicts,
                       _noisy_predictions(dicts))["AP"]
        assert 0 < ap < 100
        # the root is the one of the load: another $DETECTRON2_DATASETS, another file
        monkeypatch.setenv("DETECTRON2_DATASETS", str(d2_root / "other"))
        DatasetCatalog.get(name)
        assert MetadataCatalog.get(name).json_file == str(catalog.split_paths(TINY, "val")[0])
        assert MetadataCatalog.get(name).json_file.startswith(str(d2_root / "other"))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_evaluating_against_the_coco_file_gives_the_same_metrics_as_converting_the_dicts(d2_root, tmp_path):
    """The evaluation our cells did before the file was recorded (the dicts converted to COCO) and
    the one they do now (the generator's own file) agree to the last digit, merged views included."""
    from focal_plugin.evaluation import FocalCOCOEvaluator

    names = ["focal_test_tiny_eq_val", "focal_test_tiny_eq_c2_val"]
    catalog.register_dense_shapes(names[0], TINY, "val")
    catalog.register_merged_classes(names[1], names[0], 2)
    try:
        for name in names:
            dicts = DatasetCatalog.get(name)
            outputs = _noisy_predictions(dicts, seed=len(name))
            plain = f"{name}_from_dicts"  # the same dicts, registered with no file behind them
            DatasetCatalog.register(plain, lambda d=dicts: d)
            MetadataCatalog.get(plain).set(**{k: v for k, v in MetadataCatalog.get(name).as_dict().items()
                                              if k not in ("name", "json_file", "image_root")})
            try:
                from_file = FocalCOCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / name))
                converted = FocalCOCOEvaluator(plain, tasks=("bbox",), output_dir=str(tmp_path / plain))
                assert from_file._json_file == MetadataCatalog.get(name).json_file
                assert converted._json_file.startswith(str(tmp_path / plain))
                a, b = _evaluate(from_file, dicts, outputs), _evaluate(converted, dicts, outputs)
                np.testing.assert_equal(a, b)  # to the last digit (NaN where a size range is empty)
                assert 0 < a["AP"] < 100
            finally:
                DatasetCatalog.remove(plain)
                MetadataCatalog.remove(plain)
        merged_file = Path(MetadataCatalog.get(names[1]).json_file)
        assert merged_file.name == "instances_val_c2.json"
        assert merged_file.parent == catalog.split_paths(TINY, "val")[0].parent
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_builtin_names_are_registered_lazily(d2_root):
    assert len(MetadataCatalog.get("dense_shapes_train").thing_classes) == 6
    assert len(MetadataCatalog.get("dense_shapes_repro_train").thing_classes) == 80
    assert MetadataCatalog.get("dense_shapes_repro_val").preset == "repro"
    assert str(fdata.split_paths("demo", "train")[0]).startswith(str(d2_root))
    assert not catalog.verify_dataset(fdata.dataset_dir("demo"), fdata.PRESETS["demo"])[0]
    assert set(fdata.BUILTIN_DATASETS) <= set(DatasetCatalog.list())
    assert not d2_root.exists()  # nothing generated by registration or by reading metadata


def test_registration_is_idempotent_and_protects_foreign_names(d2_root):
    catalog.register_all()
    catalog.register_all()
    importlib.reload(catalog)
    importlib.reload(fdata)
    for name in fdata.BUILTIN_DATASETS:
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).get("registered_by") == catalog._MARKER
    assert not d2_root.exists()
    DatasetCatalog.register("focal_test_foreign", lambda: [])
    try:
        with pytest.raises(ValueError, match="already registered"):
            fdata.register_dense_shapes("focal_test_foreign", TINY, "train")
    finally:
        DatasetCatalog.remove("focal_test_foreign")
