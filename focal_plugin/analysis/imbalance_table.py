"""The class imbalance of a table's training configs, each data setting measured once and cached.

What an ablation report shows next to COCO's (Sec. 3.3: ~100k anchors per image, a few positive):
for the table's base config and for every row whose data, anchors, test size or matching differ.
A setting is identified by :func:`data_key`; its figures are kept in a JSON cache (committed with
the report) so rebuilding a report measures only settings not seen before.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Sequence, Tuple

from focal_plugin.io import read_json, write_json_atomic

#: training images measured per data setting (as configs/mini/README.md quotes the figures)
IMBALANCE_IMAGES = 500

#: the figures of one setting: (label, key, format)
FIGURES = (("anchors / image", "anchors_per_image", "{:,.0f}"),
           ("classes K", "num_classes", "{:d}"),
           ("positive anchors / image", "positive_anchors_per_image", "{:,.1f}"),
           ("anchors x classes per positive anchor", "anchor_classes_per_positive", "{:,.0f}"),
           ("binary negatives per positive", "negatives_per_positive", "{:,.0f}"))


def _dataset_identity(name: str) -> Dict[str, Any]:
    """What a registered dataset's content depends on, as far as its metadata says: the generator
    fingerprint (synthetic data), else the annotation file and its mtime; the classes; a merged
    view's source."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    out: Dict[str, Any] = {"classes": list(meta.get("thing_classes") or []),
                           "fingerprint": meta.get("fingerprint")}
    # a merged view's file is written from its source's on load: the source identifies it
    if not out["fingerprint"] and not meta.get("merged_from") and meta.get("json_file") \
            and os.path.isfile(meta.json_file):
        out.update(json_file=meta.json_file, json_mtime=os.path.getmtime(meta.json_file))
    if meta.get("merged_from"):
        out["from"] = _dataset_identity(meta.merged_from)
    return out


def data_key(cfg) -> str:
    """What the imbalance depends on: training data, anchors, test-time size and matching."""
    r, a = cfg.MODEL.RETINANET, cfg.MODEL.ANCHOR_GENERATOR
    empty = {"empty_classes": cfg.MODEL.FOCAL.EMPTY_CLASSES} if cfg.MODEL.FOCAL.EMPTY_CLASSES else {}
    return json.dumps({**empty, "dataset": cfg.DATASETS.TRAIN[0],
                       "data": _dataset_identity(cfg.DATASETS.TRAIN[0]),
                       "backbone": cfg.MODEL.BACKBONE.NAME, "features": list(r.IN_FEATURES), "sizes": a.SIZES,
                       "ratios": a.ASPECT_RATIOS, "offset": a.OFFSET,
                       "input": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
                       "match": [r.IOU_THRESHOLDS, r.IOU_LABELS, cfg.MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES]},
                      sort_keys=True, default=list)  # (keys of settings without empty classes unchanged)


def summary(stats: Dict[str, Any]) -> Dict[str, Any]:
    """:data:`FIGURES` of an :func:`~focal_plugin.analysis.imbalance.imbalance_stats` result."""
    pos = stats.get("positive_anchors_per_image") or 0.0
    anchors, k = stats.get("anchors_per_image"), stats.get("num_classes")
    return {"dataset": stats.get("dataset"), "anchors_per_image": anchors, "num_classes": k,
            "positive_anchors_per_image": pos,
            "anchor_classes_per_positive": anchors * k / pos if pos and anchors and k else None,
            "negatives_per_positive": stats.get("negatives_per_positive"),
            "images": stats.get("num_images_used")}


def table_imbalance(table: Tuple[str, Sequence[str]], rows: Mapping[str, Tuple[str, Sequence[str]]],
                    cache: str) -> Dict[str, Any]:
    """``{"available": True, "ours", "coco"[, "by_row"]}`` for the table's ``(config_file, opts)``
    and each row's; ``by_row`` only when the rows differ. A row that cannot be measured gets
    ``{"error"}``; when the table's data is missing (COCO at paper scale), ``{"available": False,
    "reason"}``. ``cache``: the JSON file of measured settings (a damaged one is recomputed)."""
    from focal_plugin.analysis.imbalance import coco_reference, imbalance_stats
    from focal_plugin.engine import setup_cfg

    try:
        cached = read_json(cache) or {}
    except ValueError:
        cached = {}
    computed = dict(cached.get("computed") or {}) if cached.get("images") == IMBALANCE_IMAGES else {}

    def measured(config_file: str, opts: Sequence[str]) -> Dict[str, Any]:
        cfg = setup_cfg(config_file, list(opts))
        k = data_key(cfg)
        if k not in computed:
            computed[k] = summary(imbalance_stats(cfg, cfg.DATASETS.TRAIN[0], max_images=IMBALANCE_IMAGES,
                                                  with_coco=False))
        return computed[k]

    try:
        ours, coco = measured(*table), summary(coco_reference())
    except Exception as e:  # missing dataset (COCO at paper scale), etc.
        return {"available": False, "reason": f"{type(e).__name__}: {e}"[:500]}
    by_row: Dict[str, Any] = {}
    for row, config in rows.items():  # a row whose data cannot be measured does not hide the others'
        try:
            by_row[row] = measured(*config)
        except Exception as e:
            by_row[row] = {"error": f"{type(e).__name__}: {e}"[:500]}
    write_json_atomic(cache, {"images": IMBALANCE_IMAGES, "computed": computed})
    out = {"available": True, "ours": ours, "coco": coco}
    if len({json.dumps(v, sort_keys=True) for v in by_row.values()}) > 1:
        out["by_row"] = by_row
    return out


__all__ = ["FIGURES", "IMBALANCE_IMAGES", "data_key", "summary", "table_imbalance"]
