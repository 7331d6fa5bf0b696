"""A run folder's history (``runs.jsonl``: one start and one end event per runner invocation)
read back as the invocations behind a report, each with its equivalent ``tools/ablate.py``
command."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any, Dict, List, Optional, Tuple

from focal_plugin.ablation.files import FileLock

#: the run folder's lock, held by the runner working in it (``files.FileLock``: names its holder)
RUNNER_LOCK = ".runner.lock"


def read_history(run_dir: str) -> List[Dict[str, Any]]:
    """The events of ``RUN_DIR/runs.jsonl`` (a line cut by a kill is skipped)."""
    path = os.path.join(run_dir, "runs.jsonl")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a kill: skip it
                continue
    return out


def ablate_command(start: Dict[str, Any], spec: str, scale: str) -> str:
    """The ``tools/ablate.py`` command equivalent to a runner start event of ``runs.jsonl``
    (events written before the runner recorded spec, scale and output folder fall back to the
    report's spec and scale, and omit the folder)."""
    parts = ["python", "tools/ablate.py", "--spec", start.get("spec") or spec,
             "--scale", start.get("scale") or scale]
    if (start.get("seeds") or 1) != 1:
        parts += ["--seeds", str(start["seeds"])]
    if start.get("only"):
        parts += ["--only", *start["only"]]
    if start.get("launcher", "local") != "local":
        parts += ["--launcher", start["launcher"]]
    if start.get("workers") is not None:
        parts += ["--workers", str(start["workers"])]
    if (start.get("gpus_per_cell") or 1) != 1:
        parts += ["--gpus-per-cell", str(start["gpus_per_cell"])]
    if start.get("output_dir"):
        parts += ["--output-dir", start["output_dir"]]
    if start.get("base_config"):
        parts += ["--base-config", start["base_config"]]
    if start.get("label"):
        parts += ["--label", start["label"]]
    if start.get("reuse") is False:
        parts.append("--no-reuse")
    if start.get("train_fn"):  # a callable (tests, in-process runs) is named, not importable
        parts += ["--train-fn", start["train_fn"]]
    if start.get("keep_checkpoints"):
        parts.append("--keep-checkpoints")
    if start.get("imbalance") is False:
        parts.append("--no-imbalance")
    if start.get("submitit_cluster"):
        parts += ["--submitit-cluster", start["submitit_cluster"]]
    for key, value in sorted((start.get("submitit_params") or {}).items()):
        parts += ["--submitit-param", f"{key}={value}"]
    if start.get("export"):
        parts += ["--export", start["export"]]
    return shlex.join(parts + [str(o) for o in start.get("extra_opts") or []])


def live_runner(run_dir: str) -> Optional[Tuple[str, int]]:
    """(host, pid) of the runner working in ``run_dir`` now, or None."""
    lock = FileLock(os.path.join(run_dir, RUNNER_LOCK))
    holder = lock.holder() if lock.is_held() else None
    return (holder.get("host"), holder.get("pid")) if holder else None


def invocations(history: List[Dict[str, Any]], spec: str, scale: str,
                live: Optional[Tuple[str, int]] = None) -> List[Dict[str, Any]]:
    """One entry per runner start: when, how (the equivalent command), how many cells, and how it
    ended (an interrupted runner — killed, crashed — left a start without an end; ``running``
    tells it from the runner still at work, ``live`` = :func:`live_runner`)."""
    # runners in one folder take turns (its lock): a start's end, if any, is the very next event,
    # and only the last start can be at work, whatever pids a container reuses
    out = []
    last = max((i for i, h in enumerate(history) if h.get("event") == "start"), default=-1)
    for i, h in enumerate(history):
        if h.get("event") != "start":
            continue
        who = (h.get("host"), h.get("pid"))
        nxt = history[i + 1] if i + 1 < len(history) else {}
        end = nxt if nxt.get("event") == "end" and (nxt.get("host"), nxt.get("pid")) == who else None
        out.append({"started": h.get("time"), "host": h.get("host"), "pid": h.get("pid"),
                    "launcher": h.get("launcher"), "workers": h.get("workers"), "to_run": h.get("to_run"),
                    "reused": h.get("reused"),
                    "cells": h.get("cells"), "ended": end.get("time") if end else None,
                    "states": end.get("states") if end else None,
                    "running": not end and i == last and live == who,
                    "command": ablate_command(h, spec, scale)})
    return out


__all__ = ["RUNNER_LOCK", "ablate_command", "invocations", "live_runner", "read_history"]
