"""Run a trained model on image files: pictures with boxes drawn and COCO-format detections.

One prediction loop (:class:`Predictor`) serves ``tools/predict.py`` and the demo. It feeds the
model exactly what the evaluation loader feeds it: detectron2's test-time ``DatasetMapper``
(``read_image`` in ``INPUT.FORMAT``, EXIF orientation, ``ResizeShortestEdge``), so the colour order
and size are those of evaluation whatever ``INPUT.FORMAT`` is.
"""

from __future__ import annotations

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


def dataset_category_ids(cfg: CfgNode) -> Tuple[Any, Optional[List[int]]]:
    """(metadata, contiguous index -> dataset category id) of the dataset results are written for
    (``DATASETS.TEST[0]``, else ``DATASETS.TRAIN[0]``).

    detectron2 puts the id mapping into the metadata only when the dataset is loaded, so an
    unknown mapping is obtained by loading the dataset. ``None`` when the dataset has no ids
    other than the contiguous indices (or no dataset is named): the ids written are then the
    model's class indices, and callers say so.
    """
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        return MetadataCatalog.get("__focal_plugin_no_dataset"), None
    name = names[0]
    metadata = MetadataCatalog.get(name)
    if not metadata.get("thing_dataset_id_to_contiguous_id") and name in DatasetCatalog.list():
        DatasetCatalog.get(name)  # loading a COCO json sets the mapping
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:
        return metadata, None
    to_dataset = {v: k for k, v in mapping.items()}
    return metadata, [to_dataset[i] for i in range(len(to_dataset))]


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
    ``output_dir/detections.json``: COCO result records (XYWH boxes, the dataset's category ids,
    see :func:`dataset_category_ids`) plus ``file_name``/``category_name``. An unreadable input is
    skipped and listed (``skipped`` in the summary, with the reason); ``detections.json`` is
    written even when a later image fails, with everything computed before. Returns a summary.
    """
    import cv2

    files = list_images(inputs)
    names = output_names(files, output_dir)  # refused before anything is written
    os.makedirs(output_dir, exist_ok=True)
    predictor = Predictor(cfg)
    metadata, to_dataset_id = dataset_category_ids(cfg)
    classes = metadata.get("thing_classes", None)
    records: List[Dict[str, Any]] = []
    pictures: List[str] = []
    skipped: List[Dict[str, str]] = []
    json_path = os.path.join(output_dir, "detections.json")
    try:
        for image_id, (path, rgb, instances) in enumerate(_predict_files(predictor, files, skipped)):
            for rec in instances_to_coco_json(instances, image_id):
                cls = rec["category_id"]
                rec["category_id"] = to_dataset_id[cls] if to_dataset_id else cls
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
    return {
        "images": len(files) - len(skipped), "detections": len(records), "json": json_path,
        "pictures": pictures, "skipped": skipped,
        "category_ids": "dataset" if to_dataset_id else "model class indices (the dataset has no other ids)",
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
