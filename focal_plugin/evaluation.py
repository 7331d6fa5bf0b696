"""detectron2's ``COCOEvaluator`` with two repairs users hit through our tools.

* **A model that finds nothing scores 0, not None.** detectron2 reports NaN for every metric when
  there are no predictions; AP is 0.0 wherever the split has ground truth (and stays NaN —
  "undefined", written as null — only where it has none: no objects, or none in a size range).
* **``area`` repaired before anything runs.** pycocotools reads ``area`` of every ground-truth
  annotation at the very end of an evaluation (a bare ``KeyError: 'area'`` after the whole test
  set was inferred). A hand-made COCO file without it gets the area of its box, logged once
  with the file name and the count of repaired annotations.

Uses faster pycocotools paths only where detectron2's compiled ops exist (``use_fast_impl``).
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional

from detectron2.evaluation import COCOEvaluator

logger = logging.getLogger(__name__)

#: COCO's area ranges (pixels^2) of APs / APm / APl
AREA_RANGES = {"APs": (0, 32 ** 2), "APm": (32 ** 2, 96 ** 2), "APl": (96 ** 2, math.inf)}


class FocalCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` (bbox) with the repairs described in the module docstring."""

    def __init__(self, dataset_name: str, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        anns = self._coco_api.dataset.get("annotations", []) if self._do_evaluation else []
        missing = [a for a in anns if "area" not in a]
        for a in missing:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        if missing:
            self._coco_api.createIndex()
            logger.warning("%s (dataset '%s'): %d annotation(s) without 'area' got the area of their box",
                           self._metadata.json_file, dataset_name, len(missing))

    def _gt_areas(self) -> List[float]:
        return [a["area"] for a in self._coco_api.dataset.get("annotations", []) if not a.get("iscrowd", 0)]

    def _derive_coco_results(self, coco_eval, iou_type, class_names: Optional[List[str]] = None) -> Dict:
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is not None:
            return results
        areas = self._gt_areas()
        for metric in results:
            lo, hi = AREA_RANGES.get(metric, (0, math.inf))
            if any(lo <= a < hi for a in areas):
                results[metric] = 0.0
        return results
