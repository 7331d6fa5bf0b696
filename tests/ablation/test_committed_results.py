"""The committed mini results (results/mini/): every report rebuilt from the committed cells gives
the committed numbers and verdicts, and every committed cell is reached by a spec."""

from __future__ import annotations

import glob
import json
import os

import pytest
from fakes import ROOT

from focal_plugin.ablation import Runner, RunOptions, build_report, load_spec

RESULTS = os.path.join(ROOT, "results", "mini")
REPORTS = sorted(glob.glob(os.path.join(RESULTS, "*", "report.json")))


def _runner(spec):
    return Runner(load_spec(spec), RunOptions(output_dir=RESULTS))


@pytest.mark.parametrize("path", REPORTS, ids=[os.path.basename(os.path.dirname(p)) for p in REPORTS])
def test_a_rebuilt_report_has_the_committed_numbers_and_verdicts(path):
    committed = json.load(open(path))
    rebuilt = build_report(_runner(committed["spec"]), with_imbalance=False)
    assert [e["row"] for e in rebuilt["table"]] == [e["row"] for e in committed["table"]]
    for new, old in zip(rebuilt["table"], committed["table"]):
        for m in committed["metrics"]:
            assert new["metrics"][m]["ours_text"] == old["metrics"][m]["ours_text"], (new["row"], m)
            assert new["metrics"][m]["ours"] == pytest.approx(old["metrics"][m]["ours"], abs=1e-12)
    assert [(c["claim"], c["verdict"], c.get("margin")) for c in rebuilt["claims"]] == \
        [(c["claim"], c["verdict"], c.get("margin")) for c in committed["claims"]]


def test_every_committed_cell_belongs_to_a_spec_and_holds_its_key():
    reached = {c.key for p in REPORTS for c in _runner(json.load(open(p))["spec"]).cells()}
    on_disk = {os.path.basename(d) for d in glob.glob(os.path.join(RESULTS, "cells", "*"))}
    assert on_disk and on_disk <= reached, sorted(on_disk - reached)
    for key in on_disk:
        cell = json.load(open(os.path.join(RESULTS, "cells", key, "cell.json")))
        assert cell["key"] == key
