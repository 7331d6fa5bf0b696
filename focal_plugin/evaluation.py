"""detectron2's ``COCOEvaluator`` with three repairs users hit through our tools.

* **A model that finds nothing scores 0, not None.** detectron2 reports NaN for every metric when
  there are no predictions; AP is 0.0 wherever the split has ground truth (and stays NaN —
  "undefined", written as null — only where it has none: no objects, or none in a size range).
* **``area`` repaired before anything runs.** pycocotools reads ``area`` of every ground-truth
  annotation at the very end of an evaluation (a bare ``KeyError: 'area'`` after the whole test
  set was inferred). A hand-made COCO file without it gets the area of its box, logged once
  with the file name and the count of repaired annotations.

* **A dataset without a COCO file is converted afresh, into the evaluator's own folder.**
  detectron2 stores the converted file's path in the process-wide metadata and reuses an existing
  file: a later evaluation of the name read a deleted folder's file, or ground truth the
  registered dicts no longer hold. Here the metadata is left as it was.

**Backend** (``backend``; ``cfg.TEST.COCO_EVAL_BACKEND``): ``"faster_coco_eval"`` runs the
faster-coco-eval package's ``COCOeval_faster`` (C++ matching and accumulation, a dependency of
the default install; same AP as pycocotools to 1e-4 in ``tests/test_evaluation.py``, ~7x
faster on 5k COCO-like images, ``benchmarks/bench_coco_eval.py``); ``"pycocotools"`` runs
detectron2's own path (pycocotools' ``COCOeval``, or detectron2's ``COCOeval_opt`` where its
compiled ops exist: ``use_fast_impl``); ``"auto"`` is the first when it is installed, else the
second. Nothing is patched process-wide: only this evaluator's evaluation step differs.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import math
import os
from typing import Dict, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.file_io import PathManager

from focal_plugin.data.catalog import coco_file

logger = logging.getLogger(__name__)

#: COCO's area ranges (pixels^2) of APs / APm / APl
AREA_RANGES = {"APs": (0, 32 ** 2), "APm": (32 ** 2, 96 ** 2), "APl": (96 ** 2, math.inf)}
#: values of ``backend`` / ``cfg.TEST.COCO_EVAL_BACKEND``
EVAL_BACKENDS = ("auto", "faster_coco_eval", "pycocotools")


def resolve_eval_backend(backend: str) -> str:
    """``"faster_coco_eval"`` or ``"pycocotools"`` for a value of :data:`EVAL_BACKENDS`
    (``"auto"``: the first when the faster-coco-eval package is installed). ``ValueError`` for an
    unknown value, or for ``"faster_coco_eval"`` when that package is missing."""
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"unknown COCO evaluation backend {backend!r}: "
                         f"expected one of {list(EVAL_BACKENDS)}")
    installed = importlib.util.find_spec("faster_coco_eval") is not None
    if backend == "auto":
        return "faster_coco_eval" if installed else "pycocotools"
    if backend == "faster_coco_eval" and not installed:
        raise ValueError("backend 'faster_coco_eval' needs the faster-coco-eval package "
                         "(pip install faster-coco-eval), or choose 'pycocotools'")
    return backend


class FocalCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` (bbox, segm) with the repairs and the backend choice described in the
    module docstring; ``backend`` is one of :data:`EVAL_BACKENDS`, other arguments mean the same
    as in ``COCOEvaluator``."""

    def __init__(self, dataset_name: str, *args, backend: str = "auto", **kwargs):
        self.backend = resolve_eval_backend(backend)
        meta = MetadataCatalog.get(dataset_name)
        output_dir = kwargs.get("output_dir", args[2] if len(args) > 2 else None)
        converted = coco_file(dataset_name) is None and bool(output_dir)
        if converted:
            # detectron2 would store its converted file's path in the process-wide metadata (every
            # later evaluator of the name then reads that file, even once its folder is deleted) and
            # reuse an existing file even if the registered dicts changed: convert afresh, and leave
            # the metadata as it was
            cache = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            convert_to_coco_json(dataset_name, cache, allow_cached=False)
            meta.json_file = cache
        try:
            super().__init__(dataset_name, *args, **kwargs)
        finally:
            if converted:
                del meta.json_file
        self._json_file = cache if converted else getattr(meta, "json_file", None)
        if self.backend == "faster_coco_eval" and self._tasks and not set(self._tasks) <= {"bbox", "segm"}:
            raise ValueError(f"backend 'faster_coco_eval' evaluates bbox and segm here, not {self._tasks}: "
                             "use backend 'pycocotools'")
        anns = self._coco_api.dataset.get("annotations", []) if self._do_evaluation else []
        missing = [a for a in anns if "area" not in a]
        for a in missing:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        if missing:
            self._coco_api.createIndex()
            logger.warning("%s (dataset '%s'): %d annotation(s) without 'area' got the area of their box",
                           self._json_file, dataset_name, len(missing))

    def _eval_predictions(self, predictions, img_ids=None):
        if self.backend != "faster_coco_eval":
            return super()._eval_predictions(predictions, img_ids)
        # detectron2 constructs pycocotools' COCOeval inside a module-level function, with no seam
        # short of patching that module for the whole process; so for this backend the steps of
        # COCOEvaluator._eval_predictions are repeated here: contiguous -> dataset category ids,
        # results file, then COCOeval_faster with the same parameters.
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for result in coco_results:
                if result["category_id"] not in reverse:
                    raise ValueError(f"a prediction has class {result['category_id']} but the dataset has "
                                     f"{len(reverse)} classes (0..{len(reverse) - 1})")
                result["category_id"] = reverse[result["category_id"]]
        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info("Saving results to %s", file_path)
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info("Evaluating predictions with faster-coco-eval's COCOeval_faster ...")
        for task in sorted(tasks):
            coco_eval = self._coco_eval_faster(coco_results, task, img_ids) if coco_results else None
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes"))

    def _coco_eval_faster(self, coco_results: List[dict], iou_type: str, img_ids=None):
        """faster-coco-eval's ``COCOeval_faster`` on detectron2's pycocotools ground truth; the same
        parameters as detectron2's ``_evaluate_predictions_on_coco``."""
        from faster_coco_eval import COCOeval_faster

        if iou_type == "segm":  # mask AP uses the mask area, as in detectron2
            coco_results = [{k: v for k, v in c.items() if k != "bbox"} for c in coco_results]
        coco_dt = self._coco_api.loadRes(coco_results)
        coco_eval = COCOeval_faster(self._coco_api, coco_dt, iou_type, print_function=self._logger.debug)
        coco_eval.params.maxDets = list(self._max_dets_per_image or [1, 10, 100])
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return coco_eval

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
