"""focal_plugin.predict / tools/predict.py: inputs as evaluation feeds them, the dataset's ids,
unreadable inputs skipped and listed, results kept."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model

from focal_plugin.engine import setup_cfg
from focal_plugin.predict import Predictor, predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "mini", "smoke_tiny.yaml")
CATEGORY_IDS = [1, 3, 7, 20, 44, 90]


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    """A user COCO file with non-contiguous category ids and 3 colourful images."""
    root = tmp_path_factory.mktemp("user_coco")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(3):
        img = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
        img[:, :, 0] = 255  # a strongly coloured channel: BGR and RGB differ
        cv2.imwrite(str(root / f"im{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": 72, "width": 96})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[i],
                            "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0})
    cats = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                               "categories": cats}))
    return root


def _cfg(tmp_path, dataset, fmt="BGR"):
    cfg = setup_cfg(SMOKE, ["MODEL.RETINANET.NUM_CLASSES", "6", "DATASETS.TEST", f"('{dataset}',)",
                            "INPUT.FORMAT", fmt, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"], freeze=False)
    weights = tmp_path / "w.pth"
    if not weights.exists():
        DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("w")
    cfg.MODEL.WEIGHTS = str(weights)
    return cfg


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_predictor_feeds_what_the_evaluation_loader_feeds(coco_set, tmp_path, fmt):
    name = f"focal_test_colour_{fmt}"
    register_coco_instances(name, {}, str(coco_set / "ann.json"), str(coco_set))
    cfg = _cfg(tmp_path, name, fmt)
    loader = build_detection_test_loader(cfg, name)
    from_loader = next(iter(loader))[0]
    ours = Predictor(cfg).inputs(from_loader["file_name"])
    assert torch.equal(ours["image"], from_loader["image"])
    # and the colour order really differs between the formats on this image
    other = DatasetMapper(cfg, is_train=False)({"file_name": from_loader["file_name"]})["image"]
    assert torch.equal(other, ours["image"])


def test_detections_use_the_datasets_category_ids(coco_set, tmp_path):
    name = "focal_test_ids_fresh"  # registered, never loaded: no id mapping in the metadata yet
    register_coco_instances(name, {}, str(coco_set / "ann.json"), str(coco_set))
    assert not MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", None)
    cfg = _cfg(tmp_path, name)
    summary = predict(cfg, [str(coco_set)], str(tmp_path / "out"), score_thresh=0.5)
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert records and summary["category_ids"] == "dataset"
    assert {r["category_id"] for r in records} <= set(CATEGORY_IDS)
    assert 90 in {r["category_id"] for r in records} or len({r["category_id"] for r in records}) < 6
    assert all(r["category_name"] == f"c{r['category_id']}" for r in records)
    by_file = {f"im{i}.png": i + 1 for i in range(3)}  # the COCO file's image ids, not positions
    assert all(r["image_id"] == by_file[r["file_name"]] for r in records)
    assert summary["image_ids"].startswith("dataset for 3 of 3 inputs")
    DatasetCatalog.remove(name)


def test_ids_that_cannot_be_the_datasets_are_left_out_and_the_summary_says_why(coco_set, tmp_path):
    name = "focal_test_ids_elsewhere"
    register_coco_instances(name, {}, str(coco_set / "ann.json"), str(coco_set))
    cfg = _cfg(tmp_path, name)
    other = tmp_path / "other"
    other.mkdir()
    (other / "im0.png").write_bytes((coco_set / "im0.png").read_bytes())  # not the dataset's file
    summary = predict(cfg, [str(other), str(coco_set / "im1.png")], str(tmp_path / "out"), score_thresh=0.5)
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    ids = {os.path.basename(r["file_name"]): r.get("image_id", "absent") for r in records}
    assert ids == {"im0.png": "absent", "im1.png": 2}
    assert summary["image_ids"].startswith("dataset for 1 of 2 inputs")

    DatasetCatalog.remove(name)  # the config names a dataset this process does not know
    cfg.DATASETS.TEST = (name,)
    summary = predict(cfg, [str(coco_set)], str(tmp_path / "out2"), score_thresh=0.5)
    records = json.loads((tmp_path / "out2" / "detections.json").read_text())
    assert records and all("category_id" not in r and "image_id" not in r and "class_index" in r
                           for r in records)
    assert summary["category_ids"] == f"none: dataset '{name}' is not registered in this process"


def test_unreadable_input_is_skipped_listed_and_results_kept(coco_set, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((coco_set / "im0.png").read_bytes())
    (folder / "zzz.jpg").write_text("not an image")
    name = "focal_test_skip"
    register_coco_instances(name, {}, str(coco_set / "ann.json"), str(coco_set))
    cfg = _cfg(tmp_path, name)
    summary = predict(cfg, [str(folder)], str(tmp_path / "out"), score_thresh=0.5)
    assert summary["images"] == 1 and [os.path.basename(s["file"]) for s in summary["skipped"]] == ["zzz.jpg"]
    assert "zzz.jpg" in summary["skipped"][0]["reason"]
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(records) == summary["detections"] > 0
    assert {r["file_name"] for r in records} == {"a.png"}
    assert (tmp_path / "out" / "a.png").is_file()


def test_two_inputs_never_share_an_output_and_no_output_overwrites_an_input(coco_set, tmp_path):
    from focal_plugin.predict import list_images, output_names

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "frame_0001.png").write_bytes((coco_set / "im0.png").read_bytes())
    files = list_images([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a" / "frame_0001.png")])
    assert len(files) == 2  # a file named twice (itself and its folder) is predicted once
    names = output_names(files, str(tmp_path / "out"))
    assert sorted(os.path.relpath(n, tmp_path / "out") for n in names.values()) == [
        os.path.join("a", "frame_0001.png"), os.path.join("b", "frame_0001.png")]
    with pytest.raises(ValueError, match="would overwrite the input"):
        output_names([str(tmp_path / "a" / "frame_0001.png")], str(tmp_path / "a"))
    name = "focal_test_collide"
    register_coco_instances(name, {}, str(coco_set / "ann.json"), str(coco_set))
    summary = predict(_cfg(tmp_path, name), [str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"),
                      score_thresh=0.5)
    assert len(summary["pictures"]) == 2 and len(set(summary["pictures"])) == 2
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert {r["file_name"] for r in records} <= {os.path.join("a", "frame_0001.png"),
                                                 os.path.join("b", "frame_0001.png")}
    with pytest.raises(ValueError, match="would overwrite"):  # refused before anything is written
        predict(_cfg(tmp_path, name), [str(tmp_path / "a")], str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path / "a")) == ["frame_0001.png"]
    DatasetCatalog.remove(name)
