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


def _two_decimals(md_file):
    """A report's row means ± sds with two decimals (its report.json), as the READMEs quote them."""
    data = json.load(open(md_file[:-3] + ".json")) if os.path.isfile(md_file[:-3] + ".json") else {}
    if not isinstance(data, dict):  # a curve's points
        return ""
    out = []
    for entry in data.get("table", []):
        for m in entry.get("metrics", {}).values():
            if m.get("ours") is not None and m.get("std") is not None:
                out.append(f"{m['ours']:.2f} ± {m['std']:.2f}")
    return " ".join(out)


def test_the_readme_claim_tables_quote_the_committed_reports():
    """Every "mean ± sd" and every interval in a claim-table row of the README and of
    results/mini/README.md appears in the committed report (or curve) files the row links."""
    import re

    for doc in (os.path.join(ROOT, "README.md"), os.path.join(RESULTS, "README.md")):
        base = os.path.dirname(doc)
        checked = 0
        for line in open(doc, encoding="utf-8"):
            links = re.findall(r"\]\(((?:\.\./)*(?:results/mini/)?[\w./-]+\.md)(?:#[\w-]+)?\)", line)
            files = [os.path.normpath(os.path.join(base, f)) for f in links]
            files = [f for f in files if f.startswith(RESULTS) and os.path.basename(f) != "README.md"]
            if not line.startswith("|") or not files:
                continue
            # signs as the reports print them: "-" for "−", intervals with or without "+"
            text = "".join(open(f, encoding="utf-8").read() + _two_decimals(f) for f in files)
            text = text.replace("−", "-").replace("+", "")
            row = line.replace("−", "-").replace("\\*", "*").replace("+", "")
            for quoted in (re.findall(r"\d+\.\d+ ± \d+\.\d+", row)
                           + re.findall(r"\[-?\d+\.\d+, -?\d+\.\d+\]", row)):
                assert quoted in text, (os.path.relpath(doc, ROOT), quoted,
                                        [os.path.relpath(f, ROOT) for f in files])
                checked += 1
        assert checked > 0, doc
