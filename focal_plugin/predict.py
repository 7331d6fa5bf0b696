"""Run a trained model on image files: pictures with boxes drawn and COCO-format detections."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

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
    return files


def _metadata(cfg: CfgNode):
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0]) if names else MetadataCatalog.get("__unused")


def instances_to_coco(instances, image_id: Any, file_name: str, metadata) -> List[Dict[str, Any]]:
    """Detections of one image as COCO result records (bbox XYWH, dataset category ids)."""
    boxes = instances.pred_boxes.tensor.numpy().copy()
    boxes[:, 2:] -= boxes[:, :2]
    to_dataset_id = {v: k for k, v in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
    classes = metadata.get("thing_classes", None)
    out = []
    for box, score, cls in zip(boxes.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()):
        rec = {
            "image_id": image_id,
            "file_name": file_name,
            "category_id": to_dataset_id.get(cls, cls),
            "bbox": [round(v, 2) for v in box],
            "score": round(score, 5),
        }
        if classes is not None and cls < len(classes):
            rec["category_name"] = classes[cls]
        out.append(rec)
    return out


def predict(
    cfg: CfgNode,
    inputs: Sequence[str],
    output_dir: str,
    score_thresh: float = 0.3,
    max_pictures: int | None = None,
) -> Dict[str, Any]:
    """Detect objects in ``inputs`` with ``cfg.MODEL.WEIGHTS``.

    Writes ``output_dir/<image name>`` (boxes scoring >= ``score_thresh`` drawn) and
    ``output_dir/detections.json`` (all detections, COCO result format). Returns a summary dict.
    """
    files = list_images(inputs)
    os.makedirs(output_dir, exist_ok=True)
    predictor = DefaultPredictor(cfg)
    metadata = _metadata(cfg)
    records: List[Dict[str, Any]] = []
    pictures = []
    for i, path in enumerate(files):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image file {path}")
        if cfg.INPUT.FORMAT == "RGB":
            image = image[:, :, ::-1]
        instances = predictor(image)["instances"].to("cpu")
        records.extend(instances_to_coco(instances, i, os.path.basename(path), metadata))
        if max_pictures is None or len(pictures) < max_pictures:
            rgb = image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1]
            vis = Visualizer(np.ascontiguousarray(rgb), metadata)
            drawn = vis.draw_instance_predictions(instances[instances.scores >= score_thresh])
            out_path = os.path.join(output_dir, os.path.basename(path))
            cv2.imwrite(out_path, drawn.get_image()[:, :, ::-1])
            pictures.append(out_path)
    json_path = os.path.join(output_dir, "detections.json")
    with open(json_path, "w") as f:
        json.dump(records, f)
    return {"images": len(files), "detections": len(records), "json": json_path, "pictures": pictures}
