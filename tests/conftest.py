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


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A private ``DETECTRON2_DATASETS`` for one test module (synthetic data generated there)."""
    root = tmp_path_factory.mktemp("datasets")
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if old is None:
        os.environ.pop("DETECTRON2_DATASETS")
    else:
        os.environ["DETECTRON2_DATASETS"] = old
