"""A campaign: what ``make reproduce-mini`` runs, and in what order, as data
(``configs/ablations/campaigns/*.yaml``; the format: ``configs/ablations/README.md``).

Every step is checked before the first one runs (spec files, row ids, tool files); finished cells
are kept, so running a campaign again continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

from focal_plugin.ablation.spec import ABLATIONS_DIR, SCALES, find_yaml, load_spec

CAMPAIGNS_DIR = os.path.join(ABLATIONS_DIR, "campaigns")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Step:
    spec: Optional[str] = None
    only: Optional[Tuple[str, ...]] = None
    tool: Optional[Tuple[str, ...]] = None

    def __str__(self) -> str:
        if self.tool:
            return " ".join(self.tool)
        return f"--spec {self.spec}" + (f" --only {' '.join(self.only)}" if self.only else "")


#: RunOptions a campaign file may set for every step (a protocol version: its base and folder)
CAMPAIGN_OPTIONS = ("scale", "output_dir", "base_config", "label", "seeds")


def load_campaign(name_or_path: str) -> Tuple[Dict[str, Any], List[Step]]:
    """``(options, steps)`` of a campaign file, ``options`` its :data:`CAMPAIGN_OPTIONS` (``scale``
    always); ``ValueError`` naming the file and step."""
    path = find_yaml(name_or_path, CAMPAIGNS_DIR, "campaign")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict) or set(raw) - {"steps", *CAMPAIGN_OPTIONS} or raw.get("scale") not in SCALES:
        raise ValueError(f"{path}: expected {{scale: one of {list(SCALES)}, steps: [...]}}, optionally "
                         f"{CAMPAIGN_OPTIONS[1:]}")
    steps = [_step(s, i, path) for i, s in enumerate(raw.get("steps") or [])]
    return {k: raw[k] for k in CAMPAIGN_OPTIONS if k in raw}, steps


def _step(raw: Any, i: int, path: str) -> Step:
    where = f"{path}: step #{i + 1}"
    keys = set(raw) if isinstance(raw, dict) else {"?"}
    if len({"spec", "tool"} & keys) != 1 or keys - {"spec", "only", "tool"}:
        raise ValueError(f"{where}: expected {{spec: NAME[, only: [ROW, ...]]}} or {{tool: [FILE, ARG ...]}}")
    if "tool" in raw:
        tool = tuple(str(x) for x in raw["tool"])
        if not tool or not os.path.isfile(os.path.join(_REPO, tool[0])):
            raise ValueError(f"{where}: tool {tool[:1]} is not a file of the repository")
        return Step(tool=tool)
    spec = load_spec(raw["spec"])
    only = tuple(raw.get("only") or ()) or None
    unknown = [r for r in only or () if r not in spec.row_ids]
    if unknown:
        raise ValueError(f"{where}: rows {unknown} are not rows of {spec.path}")
    return Step(spec=raw["spec"], only=only)


def run_tool(step: Step) -> int:
    return subprocess.call([sys.executable, *step.tool], cwd=_REPO)


def run_campaign(steps: List[Step], run_spec: Callable[[Step], int], log: Callable[[str], None] = print,
                 tool: Optional[Callable[[Step], int]] = run_tool) -> int:
    """Run ``steps`` in order (``run_spec(step)`` for a spec step, ``tool(step)`` for a tool, or
    only list it when ``tool`` is None); every step runs even if an earlier one had failed
    cells. Returns the worst exit status (2, a usage error or a folder in use, stops at once)."""
    worst = 0
    for i, step in enumerate(steps, 1):
        log(f"[campaign] step {i}/{len(steps)}: {step}")
        rc = run_spec(step) if step.spec else tool(step) if tool else 0
        if rc == 2:  # usage error, folder in use: the rest would meet it too
            return rc
        worst = max(worst, rc)
    return worst
