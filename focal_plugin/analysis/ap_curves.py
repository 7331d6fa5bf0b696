"""AP vs iteration curves of the mini protocol's models: from a run trained with
``TEST.EVAL_PERIOD`` (its ``metrics.json``), or from the checkpoints a run saved (each evaluated),
written as one CSV and one PNG.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from focal_plugin.io import atomic_write, read_jsonl, write_figure_atomic, write_json_atomic

#: next to each cached evaluation: what it evaluated (config and weights), so that a cache made with
#: other test settings, another test set or retrained weights is evaluated again instead of reused
CACHE_KEY_FILE = "curve_key.json"


def _losses_by_iteration(metrics_json) -> list:
    """``[(iteration + 1, {"loss_cls", "total_loss"})]`` of detectron2's ``metrics.json``, in order."""
    return [(m["iteration"] + 1, {"loss_cls": m["loss_cls"], "total_loss": m.get("total_loss")})
            for m in read_jsonl(metrics_json) if "loss_cls" in m]


def _loss_at(losses: list, it: int) -> dict:
    """The logged losses at or before iteration ``it`` (detectron2's 20-iteration median)."""
    before = [v for i, v in losses if i <= it]
    return before[-1] if before else {"loss_cls": None, "total_loss": None}


def ap_curve(output_dir) -> list:
    """AP vs iteration of a run trained with ``TEST.EVAL_PERIOD`` (from its ``metrics.json``;
    ``output_dir`` may also be the ``metrics.json`` itself): ``[{"iter", "AP", "AP50", "AP75",
    "loss_cls", "total_loss"}]``, losses from the nearest logged iteration at or before each
    evaluation (detectron2's 20-iteration median)."""
    metrics = str(output_dir)
    if not metrics.endswith(".json"):
        metrics = os.path.join(metrics, "metrics.json")
    if not os.path.isfile(metrics):
        raise FileNotFoundError(f"{metrics}: no detectron2 metrics.json (a run's OUTPUT_DIR holds one)")
    max_iter = None
    results = os.path.join(os.path.dirname(metrics), "results.json")
    if os.path.exists(results):  # the final evaluation is logged at max_iter, not max_iter - 1
        with open(results) as f:
            max_iter = json.load(f).get("max_iter")
    losses, rows = _losses_by_iteration(metrics), []
    if max_iter is None and losses:  # no results.json: the last logged training iteration
        max_iter = losses[-1][0]
    for m in read_jsonl(metrics):
        if "bbox/AP" in m:
            it = m["iteration"] + 1
            it = min(it, max_iter) if max_iter else it
            rows.append({"iter": it, "AP": m["bbox/AP"], "AP50": m["bbox/AP50"], "AP75": m["bbox/AP75"],
                         **_loss_at(losses, m["iteration"] + 1)})
    if not rows:
        raise ValueError(f"{metrics}: no bbox/AP entry (the run evaluated neither during training, "
                         "TEST.EVAL_PERIOD 0, nor at its end): use --checkpoints on its saved checkpoints")
    return rows


def _cache_key(cfg, weights: str) -> dict:
    """What one evaluation depends on: the whole config but its output folder, and the weights file."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = ""
    st = os.stat(weights)
    return {"config_sha256": hashlib.sha256(cfg.dump().encode()).hexdigest(),
            "weights": os.path.basename(weights), "weights_bytes": st.st_size,
            "weights_mtime_ns": st.st_mtime_ns}


def checkpoint_curve(checkpoint_dir, config_file, opts=()) -> list:
    """AP vs iteration from a run's saved checkpoints (``model_NNNNNNN.pth`` after iteration N + 1,
    ``model_final.pth`` after ``SOLVER.MAX_ITER``), each evaluated on the config's
    ``DATASETS.TEST`` with the config's test settings; rows as :func:`ap_curve` (losses from
    ``checkpoint_dir/metrics.json`` when there is one). Evaluation outputs go to
    ``checkpoint_dir/eval_<iteration>/``; an iteration evaluated before with the same config and the
    same checkpoint file (``curve_key.json``) is read from there, any other is evaluated again."""
    from focal_plugin.engine import evaluate, setup_cfg

    cfg = setup_cfg(config_file, list(opts))
    found = {}
    for name in os.listdir(checkpoint_dir):
        m = re.fullmatch(r"model_(\d+)\.pth", name)
        if m:
            found[int(m.group(1)) + 1] = name
        elif name == "model_final.pth":
            found[cfg.SOLVER.MAX_ITER] = name
    if not found:
        raise FileNotFoundError(f"no model_*.pth checkpoint in {checkpoint_dir}")
    metrics = os.path.join(checkpoint_dir, "metrics.json")
    losses = _losses_by_iteration(metrics) if os.path.exists(metrics) else []
    rows = []
    for it in sorted(found):
        out, weights = os.path.join(checkpoint_dir, f"eval_{it}"), os.path.join(checkpoint_dir, found[it])
        key, res = _cache_key(cfg, weights), _cached(out)
        if res is None or res[0] != key or cfg.DATASETS.TEST[0] not in res[1].get("metrics", {}):
            res = (key, evaluate(setup_cfg(config_file, [*opts, "OUTPUT_DIR", out]), weights=weights))
            write_json_atomic(os.path.join(out, CACHE_KEY_FILE), key, indent=1)
        bbox = res[1]["metrics"][cfg.DATASETS.TEST[0]]["bbox"]
        rows.append({"iter": it, "AP": bbox["AP"], "AP50": bbox["AP50"], "AP75": bbox["AP75"],
                     **_loss_at(losses, it)})
    return rows


def _cached(out: str):
    """``(key, results)`` of an earlier evaluation in ``out``, or None (none, or unreadable)."""
    try:
        with open(os.path.join(out, CACHE_KEY_FILE)) as f, open(os.path.join(out, "results.json")) as g:
            return json.load(f), json.load(g)
    except (OSError, ValueError):
        return None


def write_curves(runs: dict, csv_path, png_path=None, title: str = "", ylabel: str = "COCO AP") -> None:
    """``runs``: label -> output dir of a ``TEST.EVAL_PERIOD`` run (:func:`ap_curve`) or a list of
    rows (:func:`checkpoint_curve`). One CSV (label, iter, AP, AP50, AP75, losses) and a PNG."""
    import csv

    curves = {label: list(d) if isinstance(d, list) else ap_curve(d) for label, d in runs.items()}
    def write_csv(f) -> None:
        w = csv.writer(f)
        w.writerow(["run", "iter", "AP", "AP50", "AP75", "loss_cls", "total_loss"])
        w.writerows([label, r["iter"], r["AP"], r["AP50"], r["AP75"], r["loss_cls"], r["total_loss"]]
                    for label, rows in curves.items() for r in rows)

    atomic_write(csv_path, write_csv)
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rows in curves.items():
            (line,) = ax.plot([r["iter"] for r in rows], [r["AP"] for r in rows], marker="o",
                              label=f"{label} AP")
            ax.plot([r["iter"] for r in rows], [r["AP50"] for r in rows], ls="--", alpha=0.6,
                    color=line.get_color(), label=f"{label} AP50")
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        write_figure_atomic(fig, png_path, dpi=110)
        plt.close(fig)


__all__ = ["ap_curve", "checkpoint_curve", "write_curves"]
