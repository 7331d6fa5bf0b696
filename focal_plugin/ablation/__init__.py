"""The paper's ablation tables as runnable specs: loading, running (local / submitit), reports.

``tools/ablate.py`` is the command line; specs live in ``configs/ablations/``.
"""

from focal_plugin.ablation.cell import State
from focal_plugin.ablation.report import build_report, write_reports
from focal_plugin.ablation.runner import Cell, PlanMismatch, Runner, RunOptions
from focal_plugin.ablation.spec import RowPlan, Spec, SpecError, list_specs, load_spec
from focal_plugin.analysis.claims import Claim
from focal_plugin.locks import LockHeld

__all__ = ["Cell", "Claim", "LockHeld", "PlanMismatch", "RowPlan", "RunOptions", "Runner", "Spec",
           "SpecError", "State", "build_report", "list_specs", "load_spec", "write_reports"]
