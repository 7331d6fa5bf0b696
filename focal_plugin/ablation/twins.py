"""Cells shared between specs: a cell that another spec has already run is not trained again.

Two cells of the same output folder and scale are *twins* when they train the same detectron2
config (resolved: base file and overrides merged onto the defaults, ``OUTPUT_DIR`` aside; for a
finished cell, the ``config.yaml`` it really trained with), with the same seed, GPU count and
training function, e.g. Table 3's FL row and Table 1b's γ = 2 row, or Table 1e's R-50 600 px row
and Table 1b's γ = 2 row, which reach the same config from different base files. Then:

- same timing too (or none): the cell takes the twin's result; its ``status.json`` says
  ``reused_from`` and nothing runs;
- only the timing differs (Tables 1e and 2 time inference, the other tables do not): the twin's
  final checkpoint is copied into the cell, which then "resumes" at its last iteration: no
  training step runs, the model is evaluated and timed on this cell's device, and
  ``status.json`` says ``trained_by``. A copy, never a link: detectron2 rewrites
  ``model_final.pth`` at the end of training, which must not touch the twin's file.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
from typing import Any, Callable, Dict, Optional, Tuple

from focal_plugin.ablation import cell as cell_mod
from focal_plugin.ablation.files import now_iso, read_json, write_json_atomic, write_text_atomic

FINAL_CHECKPOINT = "model_final.pth"
LAST_CHECKPOINT = "last_checkpoint"  # detectron2's pointer to the checkpoint to resume from


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


@functools.lru_cache(maxsize=1024)
def _resolved(config_file: str, opts: Tuple[str, ...], mtime: float) -> Optional[str]:
    """The merged config as canonical JSON (``OUTPUT_DIR`` and ``SEED`` left out); None when it
    does not load (such a cell is nobody's twin)."""
    from focal_plugin.engine import setup_cfg

    try:
        cfg = _plain(setup_cfg(config_file, list(opts), freeze=False))
    except Exception:  # noqa: BLE001 (an old cell with a config this code no longer accepts)
        return None
    cfg.pop("OUTPUT_DIR", None)
    cfg.pop("SEED", None)
    return json.dumps(cfg, sort_keys=True)


def identity(definition: Dict[str, Any], timing: bool = True, cell_dir: Optional[str] = None) -> tuple:
    """What decides a cell's result (``timing=False``: its training only). With ``cell_dir``,
    the config the cell saved when it trained (``config.yaml``) if there is one."""
    saved = os.path.join(cell_dir, "config.yaml") if cell_dir else ""
    if saved and os.path.isfile(saved):
        config = _resolved(saved, (), os.path.getmtime(saved))
    else:
        base = definition.get("base") or ""
        config = _resolved(base, tuple(definition.get("opts") or ()),
                           os.path.getmtime(base) if os.path.isfile(base) else 0.0)
    trainer = definition.get("trainer", definition.get("train_fn"))  # older cells: train_fn only
    out = (config, definition.get("seed"), definition.get("num_gpus"), trainer)
    return out + (json.dumps(definition.get("timing"), sort_keys=True),) if timing else out


def find_twin(output_dir: str, scale: str, run_dir: str, definition: Dict[str, Any]
              ) -> Tuple[Optional[str], bool]:
    """``(twin folder, exact)``: a finished cell of another run folder of ``output_dir`` whose
    result ``definition``'s cell can take (``exact``: timing included), preferring an exact
    twin; a cell that itself reused another's result is never a twin. ``(None, False)`` if none."""
    pattern = os.path.join(glob.escape(output_dir), "*", glob.escape(scale), "*",
                           f"seed{definition.get('seed')}", cell_mod.CELL_FILE)
    mine = identity(definition)
    if mine[0] is None:
        return None, False
    trained = None
    for path in sorted(glob.glob(pattern)):
        twin_dir = os.path.dirname(path)
        if os.path.dirname(os.path.dirname(twin_dir)) == run_dir:
            continue
        status = cell_mod.read_status(twin_dir)
        if status.get("state") not in cell_mod.FINISHED or status.get("reused_from"):
            continue
        other = identity(read_json(path) or {}, cell_dir=twin_dir)
        if other[0] is None:
            continue
        if other == mine or (other[:-1] == mine[:-1] and status.get("state") == "diverged"):
            return twin_dir, True  # (the same training diverges again, however it is timed)
        if (trained is None and status.get("state") == "done" and not status.get("trained_by")
                and other[:-1] == mine[:-1]  # all but the timing
                and os.path.isfile(os.path.join(twin_dir, FINAL_CHECKPOINT))
                and os.path.isfile(os.path.join(twin_dir, LAST_CHECKPOINT))):
            trained = twin_dir
    return trained, False


def take_result(cell_dir: str, twin_dir: str, output_dir: str) -> str:
    """Record the exact twin's result as the cell's (only ``status.json`` is written)."""
    rel = os.path.relpath(twin_dir, output_dir)
    write_json_atomic(os.path.join(cell_dir, cell_mod.STATUS_FILE),
                      {**cell_mod.read_status(twin_dir), "reused_from": rel, "reused_at": now_iso()})
    return rel


def take_weights(cell_dir: str, twin_dir: str, output_dir: str) -> str:
    """Copy the twin's final checkpoint (and detectron2's pointer to it) into the cell, so that
    the cell's run evaluates and times the twin's model without training. The status is written
    first and the pointer last: a copy cut short is never resumed, and a resumed copy is always
    recorded as the twin's (``trained_by``)."""
    rel = os.path.relpath(twin_dir, output_dir)
    os.makedirs(cell_dir, exist_ok=True)
    write_json_atomic(os.path.join(cell_dir, cell_mod.STATUS_FILE),
                      {"state": "pending", "trained_by": rel, "weights_copied_at": now_iso()})
    tmp = os.path.join(cell_dir, f".tmp-{FINAL_CHECKPOINT}")
    shutil.copyfile(os.path.join(twin_dir, FINAL_CHECKPOINT), tmp)
    os.replace(tmp, os.path.join(cell_dir, FINAL_CHECKPOINT))
    # our own pointer, not a copy of the twin's: it names the file just copied, whatever the
    # twin's pointed to
    write_text_atomic(os.path.join(cell_dir, LAST_CHECKPOINT), FINAL_CHECKPOINT)
    return rel


def forget_weights(cell_dir: str) -> bool:
    """Undo :func:`take_weights` on an unfinished cell (``--no-reuse``: it trains itself); True if
    there was something to undo."""
    status = cell_mod.read_status(cell_dir)
    if not status.get("trained_by") or status.get("state") in cell_mod.FINISHED:
        return False
    for name in (LAST_CHECKPOINT, FINAL_CHECKPOINT):  # the pointer first
        path = os.path.join(cell_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    write_json_atomic(os.path.join(cell_dir, cell_mod.STATUS_FILE),
                      {k: v for k, v in status.items() if k not in ("trained_by", "weights_copied_at")})
    return True


def planned_twin(cell_dir: str, definition: Dict[str, Any], output_dir: str, scale: str, run_dir: str
                 ) -> Tuple[Optional[str], bool]:
    """What :func:`reuse` will do for this unfinished cell: ``(twin, exact)`` as
    :func:`find_twin`, except that a cell with a checkpoint of its own resumes it rather than
    taking a twin's weights (``(None, False)``)."""
    twin_dir, exact = find_twin(output_dir, scale, run_dir, definition)
    if twin_dir and not exact and os.path.isfile(os.path.join(cell_dir, LAST_CHECKPOINT)):
        return None, False
    return twin_dir, exact


def reuse(cell_dir: str, definition: Dict[str, Any], output_dir: str, scale: str, run_dir: str,
          log: Callable[[str], None], cell_id: str) -> bool:
    """Give an unfinished cell its twin's result (True) or its twin's weights (False: the cell
    still runs, without training). A cell with a checkpoint of its own keeps it (resumes it)
    rather than taking a twin's weights."""
    twin_dir, exact = planned_twin(cell_dir, definition, output_dir, scale, run_dir)
    if twin_dir is None:
        return False
    if exact:
        rel = take_result(cell_dir, twin_dir, output_dir)
        log(f"[ablate] {cell_id}: identical to the finished cell {rel}; its result is reused")
        return True
    rel = take_weights(cell_dir, twin_dir, output_dir)
    log(f"[ablate] {cell_id}: trained as the finished cell {rel} (only the timing differs); "
        "its final weights are evaluated and timed here")
    return False


def clear_cache() -> None:
    """Forget the resolved configs (a runner calls it when it starts: base files may have changed,
    including ``_BASE_`` parents the cache key does not see)."""
    _resolved.cache_clear()


__all__ = ["clear_cache", "find_twin", "forget_weights", "identity", "planned_twin", "reuse", "take_result",
           "take_weights"]
