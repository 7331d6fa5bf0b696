"""Faults in a user's COCO dataset, registered with ``focal_plugin.data.register_coco_json``:
each is either an error naming the file and the image or annotation id, or a documented skip with
a logged count, never a silent wrong result. CPU, small images; one short training run."""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from focal_plugin import engine
from focal_plugin.data import register_coco_json
from focal_plugin.data.catalog import load_coco_dicts

from helpers import captured

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "mini", "smoke_tiny.yaml")
SIZE = 96


pytestmark = pytest.mark.usefixtures("data_root")  # conftest: a private DETECTRON2_DATASETS


def user_coco(root, num_images: int = 6) -> Dict[str, Any]:
    """A valid COCO dict with its images written under ``root``: 3 categories, 2 boxes per image."""
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(num_images):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": SIZE, "width": SIZE})
        for j in range(2):
            anns.append({"id": 2 * i + j + 1, "image_id": i + 1, "category_id": (i + j) % 3 + 1,
                         "bbox": [10.0 + 30 * j, 12.0, 40.0, 30.0], "area": 1200.0, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c + 1, "name": f"k{c}"} for c in range(3)]}


def write(root, coco: Dict[str, Any], name: str = "user.json"):
    path = root / name
    path.write_text(json.dumps(coco))
    return path



@contextlib.contextmanager
def registered(name: str, json_file, image_root) -> Iterator[str]:
    register_coco_json(name, json_file, image_root)
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------- errors naming the file and the id
def _missing_file(coco, root):
    os.remove(root / coco["images"][2]["file_name"])


def _duplicate_image_id(coco, root):
    coco["images"][4]["id"] = coco["images"][1]["id"]


def _unknown_category(coco, root):
    coco["annotations"][6]["category_id"] = 9


def _empty_annotations(coco, root):
    coco["annotations"] = []


ERRORS: Dict[str, Any] = {
    "missing image file": (_missing_file, FileNotFoundError,
                           r"1 of 6 image files are missing.*image id 3: 2\.png"),
    # ValueError (DatasetFormatError's base): test_data.py reloads the catalog module, which makes
    # a new DatasetFormatError class; the class name is checked below
    "duplicate image id": (_duplicate_image_id, ValueError,
                           r"image id 2 appears more than once \('1\.png' and '4\.png'\)"),
    "unknown category id": (_unknown_category, ValueError,
                            r"annotation id 7 \(image id 4\) has category_id 9.*\[1, 2, 3\]"),
    "empty annotation list": (_empty_annotations, ValueError, r"6 images but no annotations"),
}


@pytest.mark.parametrize("fault", sorted(ERRORS))
def test_a_faulty_user_file_fails_naming_the_file_and_the_id(tmp_path, fault):
    mutate, error, pattern = ERRORS[fault]
    coco = user_coco(tmp_path / "images")
    mutate(coco, tmp_path / "images")
    json_file = write(tmp_path, coco)
    with pytest.raises(error, match=pattern) as info:
        load_coco_dicts(json_file, tmp_path / "images", "focal_rel_direct")
    assert str(json_file) in str(info.value)
    assert error is FileNotFoundError or type(info.value).__name__ == "DatasetFormatError"
    # and through training: refused before the model is built or anything is written
    with registered(f"focal_rel_{fault.replace(' ', '_')}", json_file, tmp_path / "images") as name:
        cfg = engine.setup_cfg(SMOKE, ["OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TRAIN", f"('{name}',)",
                                       "DATASETS.TEST", "()", "MODEL.RETINANET.NUM_CLASSES", "3"])
        with pytest.raises(error, match=pattern):
            engine.train(cfg)
    assert not (tmp_path / "out" / "last_checkpoint").exists()


# ---------------------------------------------------------------- documented skips with a count
BOX_FAULTS: Dict[str, Callable[[List[float]], List[float]]] = {
    "zero width": lambda b: [b[0], b[1], 0.0, b[3]],
    "zero height": lambda b: [b[0], b[1], b[2], 0.0],
    "negative width": lambda b: [b[0], b[1], -5.0, b[3]],
    "negative height": lambda b: [b[0], b[1], b[2], -5.0],
    "non-finite": lambda b: [b[0], float("nan"), b[2], b[3]],
    "right of the image": lambda b: [SIZE + 3.0, b[1], b[2], b[3]],
    "below the image": lambda b: [b[0], SIZE, b[2], b[3]],
    "left of the image": lambda b: [-60.0, b[1], 50.0, b[3]],
}


@pytest.mark.parametrize("fault", sorted(BOX_FAULTS))
def test_a_box_that_cannot_be_trained_on_is_skipped_and_counted(tmp_path, fault):
    coco = user_coco(tmp_path / "images")
    ann = coco["annotations"][4]
    ann["bbox"] = BOX_FAULTS[fault](ann["bbox"])
    json_file = write(tmp_path, coco)
    with captured("focal_plugin") as log:
        dicts = load_coco_dicts(json_file, tmp_path / "images", "focal_rel_boxes")
    kept = sum(len(d["annotations"]) for d in dicts)
    assert kept == len(coco["annotations"]) - 1
    image = next(d for d in dicts if d["image_id"] == ann["image_id"])
    assert len(image["annotations"]) == 1 and all("id" not in a for d in dicts for a in d["annotations"])
    outside = "image" in fault
    expected = (f"skipped 1 of 12 annotations .* {0 if outside else 1} with zero, negative or non-finite "
                f"width/height, {1 if outside else 0} entirely outside their image .*annotation ids \\[5\\]")
    assert any(str(json_file) in m and re.search(expected, m) for m in log), log


def test_a_box_partly_outside_is_kept_and_clipped_by_detectron2(tmp_path):
    coco = user_coco(tmp_path / "images")
    coco["annotations"][0]["bbox"] = [70.0, 80.0, 60.0, 40.0]  # crosses the right and bottom edges
    json_file = write(tmp_path, coco)
    with captured("focal_plugin") as log:
        dicts = load_coco_dicts(json_file, tmp_path / "images", "focal_rel_partly")
    assert sum(len(d["annotations"]) for d in dicts) == 12 and not log
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    clipped = utils.transform_instance_annotations(dict(dicts[0]["annotations"][0]), T.TransformList([]),
                                                   (SIZE, SIZE))  # what DatasetMapper does
    assert list(clipped["bbox"]) == [70.0, 80.0, SIZE, SIZE]


def test_unreadable_training_images_are_skipped_and_counted(tmp_path):
    coco = user_coco(tmp_path / "images")
    data = (tmp_path / "images" / "1.png").read_bytes()
    (tmp_path / "images" / "1.png").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "images" / "2.png").write_bytes(b"not an image at all")
    coco["annotations"][10]["bbox"] = [10.0, 12.0, 0.0, 30.0]  # and one skipped box
    json_file = write(tmp_path, coco)
    with registered("focal_rel_unreadable_train", json_file, tmp_path / "images") as name, \
            captured("focal_plugin") as log:
        cfg = engine.setup_cfg(SMOKE, ["OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TRAIN", f"('{name}',)",
                                       "DATASETS.TEST", "()", "MODEL.RETINANET.NUM_CLASSES", "3",
                                       "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100"])
        result = engine.train(cfg)
    assert result["iterations"] == 2 and (tmp_path / "out" / "model_final.pth").is_file()
    skips = [m for m in log if m.startswith("skipped unreadable training image")]
    named = {m.split(" (image id ")[1].split(")")[0] for m in skips}
    assert named == {"2", "3"}, skips  # both files named with their image ids, nothing else
    assert skips[-1].split("; ")[-1].startswith(f"{len(skips)} skipped so far")
    assert any("skipped 1 of 12 annotations" in m for m in log)


def test_the_training_loader_keeps_no_list_of_records_alive(tmp_path):
    """The unreadable-image fallback draws from detectron2's serialized dataset (one buffer shared
    by the loader workers), not from a list of record dicts that would live in every worker."""
    from detectron2.data.common import DatasetFromList

    coco = user_coco(tmp_path / "images")
    json_file = write(tmp_path, coco)
    with registered("focal_rel_serialized", json_file, tmp_path / "images") as name:
        cfg = engine.setup_cfg(SMOKE, ["DATASETS.TRAIN", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "3"])
        loader = engine.Trainer.build_train_loader(cfg)
    mapped = loader.dataset
    while not hasattr(mapped, "_map_func"):  # grouped by aspect ratio -> iterable -> MapDataset
        mapped = mapped.dataset
    mapper = getattr(mapped._map_func, "_obj", mapped._map_func)
    assert isinstance(mapper, engine.SkipUnreadableImages)
    assert isinstance(mapper.dataset, DatasetFromList) and mapper.dataset._serialize
    assert mapper.dataset is mapped._dataset  # the one buffer, shared by loader and fallback
    assert len(mapper.dataset) == len(coco["images"])
    record = mapper._rng.choice(mapper.dataset)  # the fallback's draw: a fresh dict from the buffer
    assert isinstance(record, dict) and record["file_name"].startswith(str(tmp_path / "images"))


def test_an_unreadable_test_image_stops_evaluation_naming_file_and_id(tmp_path):
    coco = user_coco(tmp_path / "images", num_images=3)
    data = (tmp_path / "images" / "2.png").read_bytes()
    (tmp_path / "images" / "2.png").write_bytes(data[: len(data) // 3])
    json_file = write(tmp_path, coco)
    with registered("focal_rel_unreadable_test", json_file, tmp_path / "images") as name:
        cfg = engine.setup_cfg(SMOKE, ["OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", f"('{name}',)",
                                       "DATASETS.TRAIN", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "3"])
        with pytest.raises(OSError, match=r"cannot read test image .*2\.png \(image id 3\)"):
            engine.evaluate(cfg, weights="")

