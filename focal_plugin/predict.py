"""Run a trained model on image files: pictures with boxes drawn and COCO-format detections.

One prediction loop (:class:`Predictor`) serves ``tools/predict.py`` and the demo. It feeds the
model exactly what the evaluation loader feeds it: detectron2's test-time ``DatasetMapper``
(``read_image`` in ``INPUT.FORMAT``, EXIF orientation, ``ResizeShortestEdge``), so the colour order
and size are those of evaluation whatever ``INPUT.FORMAT`` is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from focal_plugin.checkpoint import load_for_inference
from focal_plugin.io import atomic_write

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str]) -> List[str]:
    """Image files named by ``inputs`` (files or folders); errors name the missing path."""
    files: List[str] = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    seen: set = set()  # a file named twice (itself and its folder) is predicted once
    return [f for f in files if not (os.path.realpath(f) in seen or seen.add(os.path.realpath(f)))]


def output_names(files: Sequence[str], output_dir: str) -> Dict[str, str]:
    """Input file -> its picture in ``output_dir``: its path below the inputs' common folder, so
    two inputs never share an output (``a/x.jpg`` and ``b/x.jpg`` -> ``out/a/x.jpg``, ``out/b/x.jpg``).
    Raises ``ValueError`` naming both files when an output would overwrite an input."""
    if not files:
        return {}
    real = [os.path.realpath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(r) for r in real])
    out = {f: os.path.join(output_dir, os.path.relpath(r, root)) for f, r in zip(files, real)}
    inputs = set(real)
    for f, o in out.items():
        if os.path.realpath(o) in inputs:
            raise ValueError(f"--output {output_dir}: the picture of {f} would overwrite the input "
                             f"{os.path.realpath(o)}; choose an output folder outside the inputs")
    return out


@dataclasses.dataclass
class DatasetIds:
    """The ids of the dataset results are written for (``DATASETS.TEST[0]``, else
    ``DATASETS.TRAIN[0]``): ``category`` maps the model's class index to the dataset's category
    id (None when it cannot be known; ``why`` says why), ``images`` an image file's absolute path
    to the dataset's image id."""

    metadata: Any
    category: Optional[List[int]]
    images: Dict[str, Any]
    why: Optional[str] = None


def dataset_ids(cfg: CfgNode) -> DatasetIds:
    """:class:`DatasetIds` of ``cfg``'s dataset. detectron2 puts the category-id mapping into the
    metadata only when the dataset is loaded, so a registered dataset is loaded. A registered
    dataset without a mapping uses the contiguous indices as its ids; an unregistered one, or
    none named, has ids nobody can know here (``category`` None)."""
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        return DatasetIds(MetadataCatalog.get("__focal_plugin_no_dataset"), None, {},
                          "no dataset is named (DATASETS.TEST and DATASETS.TRAIN are empty)")
    name = names[0]
    metadata = MetadataCatalog.get(name)
    if name not in DatasetCatalog.list():
        return DatasetIds(metadata, None, {}, f"dataset '{name}' is not registered in this process")
    records = DatasetCatalog.get(name)  # loading a COCO json sets the mapping
    images = {os.path.abspath(r["file_name"]): r["image_id"] for r in records if "image_id" in r}
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:  # the dataset's own ids are the contiguous indices
        return DatasetIds(metadata, list(range(len(metadata.get("thing_classes", []) or []))) or None,
                          images, None if metadata.get("thing_classes", None) else
                          f"dataset '{name}' has no thing_classes in its metadata")
    to_dataset = {v: k for k, v in mapping.items()}
    return DatasetIds(metadata, [to_dataset[i] for i in range(len(to_dataset))], images)


class Predictor:
    """``cfg.MODEL.WEIGHTS`` in eval mode, fed through the test ``DatasetMapper``.

    ``predictor(file_name) -> (RGB uint8 image as read, Instances on the CPU)``; an unreadable
    file raises ``OSError``/``ValueError`` naming it.
    """

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        load_for_inference(self.model, cfg.MODEL.WEIGHTS, f"config MODEL.META_ARCHITECTURE "
                           f"{cfg.MODEL.META_ARCHITECTURE} (cfg.MODEL.WEIGHTS)")
        self.mapper = DatasetMapper(self.cfg, is_train=False)

    def inputs(self, file_name: str) -> Dict[str, Any]:
        """The model input of one file, exactly as the evaluation loader builds it."""
        try:
            return self.mapper({"file_name": file_name})
        except Exception as e:  # PIL's errors do not always say which file
            raise OSError(f"cannot read image file {file_name}: {type(e).__name__}: {e}") from e

    @torch.no_grad()
    def __call__(self, file_name: str) -> Tuple[np.ndarray, Instances]:
        inputs = self.inputs(file_name)
        instances = self.model([inputs])[0]["instances"].to("cpu")
        rgb = convert_image_to_rgb(read_image(file_name, format=self.cfg.INPUT.FORMAT), self.cfg.INPUT.FORMAT)
        return rgb, instances


def draw(rgb: np.ndarray, instances: Instances, metadata, score_thresh: float,
         scale: float = 1.0) -> np.ndarray:
    """RGB picture of the detections scoring at least ``score_thresh``."""
    vis = Visualizer(np.ascontiguousarray(rgb), metadata, scale=scale)
    return vis.draw_instance_predictions(instances[instances.scores >= score_thresh]).get_image()


def predict(
    cfg: CfgNode,
    inputs: Sequence[str],
    output_dir: str,
    score_thresh: float = 0.3,
    max_pictures: int | None = None,
) -> Dict[str, Any]:
    """Detect objects in ``inputs`` (files and folders) with ``cfg.MODEL.WEIGHTS``.

    Writes ``output_dir/<image path below the inputs' common folder>`` (:func:`output_names`;
    boxes scoring >= ``score_thresh`` drawn) and
    ``output_dir/detections.json``: COCO result records (XYWH boxes, the dataset's category and
    image ids, see :func:`dataset_ids`) plus ``file_name``/``category_name``; where an id cannot be
    the dataset's it is left out (``class_index`` instead of ``category_id``; no ``image_id`` for
    an input that is not an image of the dataset) and the summary says why. An unreadable input is
    skipped and listed (``skipped`` in the summary, with the reason); ``detections.json`` is
    written even when a later image fails, with everything computed before. Returns a summary.
    """
    import cv2

    files = list_images(inputs)
    names = output_names(files, output_dir)  # refused before anything is written
    os.makedirs(output_dir, exist_ok=True)
    predictor = Predictor(cfg)
    ids = dataset_ids(cfg)
    if ids.why:
        logger.warning("detections.json: no category ids (%s): each record has the model's class_index "
                       "instead of a category_id", ids.why)
    metadata, classes = ids.metadata, ids.metadata.get("thing_classes", None)
    records: List[Dict[str, Any]] = []
    pictures: List[str] = []
    skipped: List[Dict[str, str]] = []
    with_image_id = 0
    json_path = os.path.join(output_dir, "detections.json")
    try:
        for path, rgb, instances in _predict_files(predictor, files, skipped):
            image_id = ids.images.get(os.path.abspath(path))
            with_image_id += image_id is not None
            for rec in instances_to_coco_json(instances, image_id):
                cls = rec.pop("category_id")
                if image_id is None:
                    del rec["image_id"]  # not an image of the dataset: file_name names it
                rec.update({"category_id": ids.category[cls]} if ids.category else {"class_index": cls})
                rec["file_name"] = os.path.relpath(names[path], output_dir)  # unique, as its picture
                if classes is not None and cls < len(classes):
                    rec["category_name"] = classes[cls]
                records.append(rec)
            if max_pictures is None or len(pictures) < max_pictures:
                out_path = names[path]
                picture = draw(rgb, instances, metadata, score_thresh)[:, :, ::-1]
                data = cv2.imencode(os.path.splitext(out_path)[1], picture)[1].tobytes()
                atomic_write(out_path, lambda f, data=data: f.write(data), binary=True)
                pictures.append(out_path)
    finally:
        atomic_write(json_path, lambda f: json.dump(records, f))  # never lose what was computed
    for s in skipped:
        logger.warning("skipped unreadable input %s (%s)", s["file"], s["reason"])
    done = len(files) - len(skipped)
    return {
        "images": done, "detections": len(records), "json": json_path,
        "pictures": pictures, "skipped": skipped,
        "category_ids": "dataset" if ids.category else f"none: {ids.why}",
        "image_ids": f"dataset for {with_image_id} of {done} inputs (the others are not images of the "
                     "dataset: their records have file_name only)",
    }


def _predict_files(predictor: Predictor, files: Sequence[str],
                   skipped: List[Dict[str, str]]) -> Iterator[Tuple[str, np.ndarray, Instances]]:
    for path in files:
        try:
            rgb, instances = predictor(path)
        except OSError as e:
            skipped.append({"file": path, "reason": str(e)})
            continue
        yield path, rgb, instances
