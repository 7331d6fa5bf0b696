"""Copy a run's small result files (not checkpoints, logs or event files) to a folder kept in git.

``EXPORT/<spec>/<row>/seed<k>/`` receives each finished cell's ``EXPORT_CELL_FILES`` as soon as
the cell finishes, and ``EXPORT/<spec>/`` the run's report and history when they are written, so
a long run can be committed cell by cell and nothing is lost when it is cut short
(``tools/ablate.py --export results/mini``). An exported cell is replaced only by the same cell
(same scale, row, seed, base config and overrides): another one raises :class:`ExportConflict`
rather than mix two settings in one folder; files the new copy lacks are removed, not left stale.
"""

from __future__ import annotations

import os
import shutil
from typing import List

from focal_plugin.ablation import cell as cell_mod
from focal_plugin.ablation.files import read_json

#: what a cell leaves that is worth keeping: its definition, outcome, evaluation, training curve, config
EXPORT_CELL_FILES = (cell_mod.CELL_FILE, cell_mod.STATUS_FILE, "results.json", "metrics.json", "config.yaml")
#: what the run folder holds that is worth keeping
EXPORT_RUN_FILES = ("report.md", "report.csv", "report.json", "runs.jsonl")


#: what makes two cells the same cell (cell.json keys)
IDENTITY_KEYS = ("spec", "scale", "row", "seed", "base_name", "opts")


class ExportConflict(RuntimeError):
    """The export folder holds another cell or another scale's report at that place."""


def _same_bytes(a: str, b: str) -> bool:
    """Whether ``b`` exists with ``a``'s bytes (read each time: filecmp caches by size and mtime,
    and a cell's status can change within one mtime tick)."""
    if not os.path.isfile(b) or os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def _copy(src_dir: str, dst_dir: str, names) -> List[str]:
    copied = []
    for name in names:
        src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
        if not os.path.isfile(src):
            if os.path.isfile(dst):  # from an earlier attempt: stale now
                os.remove(dst)
            continue
        if _same_bytes(src, dst):
            continue  # unchanged (a report after each cell re-exports every cell: copy only what changed)
        os.makedirs(dst_dir, exist_ok=True)
        tmp = os.path.join(dst_dir, f".{name}.tmp.{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # a reader never sees half a file
        copied.append(dst)
    return copied


def export_cell(cell_dir: str, run_dir: str, export_dir: str, spec_name: str) -> List[str]:
    """Copy one cell's small files if it is finished (done or diverged); returns the files written
    (a file whose exported copy has the same bytes is left as it is).

    ``cell_dir`` lies under ``run_dir``; its path relative to it (``<row>/seed<k>``) is kept.
    """
    status = read_json(os.path.join(cell_dir, cell_mod.STATUS_FILE)) or {}
    if status.get("state") not in cell_mod.FINISHED:
        return []
    rel = os.path.relpath(cell_dir, run_dir)
    dst = os.path.join(export_dir, spec_name, rel)
    ours = read_json(os.path.join(cell_dir, cell_mod.CELL_FILE)) or {}
    theirs = read_json(os.path.join(dst, cell_mod.CELL_FILE))
    if theirs is not None and any(theirs.get(k) != ours.get(k) for k in IDENTITY_KEYS):
        diff = {k: (theirs.get(k), ours.get(k)) for k in IDENTITY_KEYS if theirs.get(k) != ours.get(k)}
        raise ExportConflict(f"{dst} holds another cell (exported vs this one: {diff}); move it away "
                             "or export elsewhere")
    return _copy(cell_dir, dst, EXPORT_CELL_FILES)


def export_run(run_dir: str, export_dir: str, spec_name: str) -> List[str]:
    """Copy the run's report and history files to ``export_dir/<spec_name>/``."""
    dst = os.path.join(export_dir, spec_name)
    scale = ((read_json(os.path.join(run_dir, "report.json")) or {}).get("environment") or {}).get("scale")
    theirs = ((read_json(os.path.join(dst, "report.json")) or {}).get("environment") or {}).get("scale")
    if theirs is not None and scale is not None and theirs != scale:
        raise ExportConflict(f"{dst} holds the report of scale {theirs!r}, this run is {scale!r}: "
                             "export each scale to its own folder (e.g. results/mini, results/paper)")
    return _copy(run_dir, dst, EXPORT_RUN_FILES)
