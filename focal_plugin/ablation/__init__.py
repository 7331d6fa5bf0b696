"""The paper's ablation tables as runnable specs: loading, running (local / submitit), reports.

``tools/ablate.py`` is the command line; specs live in ``configs/ablations/``.
"""

from focal_plugin.ablation.files import LockHeld
from focal_plugin.ablation.report import build_report, write_reports
from focal_plugin.ablation.runner import CellPlan, PlanMismatch, Runner, core_shares
from focal_plugin.ablation.spec import Claim, RowPlan, Spec, SpecError, list_specs, load_spec

__all__ = ["Claim", "CellPlan", "LockHeld", "PlanMismatch", "RowPlan", "Runner", "Spec", "SpecError",
           "build_report", "core_shares", "list_specs", "load_spec", "write_reports"]
