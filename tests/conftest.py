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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One training run of ``configs/mini/smoke_tiny.yaml`` (4 iterations, checkpoints at 2 and 4)
    through ``train_net.py``'s main, shared by the tests that need a trained model:
    ``(OUTPUT_DIR, main's result)``. Read it only: a test that changes the run works on a copy."""
    from detectron2.engine import default_argument_parser

    from focal_plugin.engine import main

    root, out = tmp_path_factory.mktemp("smoke_datasets"), tmp_path_factory.mktemp("smoke_run")
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    try:
        config = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "mini", "smoke_tiny.yaml")
        result = main(default_argument_parser().parse_args(["--config-file", config, "OUTPUT_DIR", str(out)]))
    finally:
        if old is None:
            os.environ.pop("DETECTRON2_DATASETS")
        else:
            os.environ["DETECTRON2_DATASETS"] = old
    return out, result
