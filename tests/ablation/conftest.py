"""The ablation tests' fixture: a folder with the fake trainer on PYTHONPATH and a test spec."""

from __future__ import annotations

import os

import pytest
from fakes import FAKE_TRAINER, ROOT, TEST_SPEC


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """A folder with fake_trainer.py on PYTHONPATH (for cell processes) and a test spec."""
    mod = tmp_path / "fakepath"
    mod.mkdir()
    (mod / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mod), ROOT, os.environ.get("PYTHONPATH", "")]))
    spec = tmp_path / "fake_table.yaml"
    spec.write_text(TEST_SPEC)
    return {"spec": str(spec), "out": str(tmp_path / "out"), "tmp": tmp_path}
