import os

import pytest
import torch

import focal_plugin  # noqa: F401  (applies compat, registers everything)

# Two cores: keep intra-op threads bounded so tests behave the same on laptops and CI.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
