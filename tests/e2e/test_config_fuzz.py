"""Config fuzzing over ``MODEL.FOCAL``: any values, any combination, from the command
line (strings through ``setup_cfg``) or assigned in Python, either build a model that trains one
step with a finite loss and finite weights, or raise ``ValueError`` naming a key that was
changed. Never another exception type, never a NaN at step 1. Tiny models (``tiny_cfg``), CPU."""

from __future__ import annotations

import math
import re
from typing import Any, Dict

import pytest
import torch
from detectron2.modeling import build_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from focal_plugin import engine
from focal_plugin.checkpoint import first_non_finite
from focal_plugin.losses import LOSS_REGISTRY

from helpers import make_batch, tiny_cfg

LOSSES = sorted(name for name, _ in LOSS_REGISTRY)
WRONG = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.lists(st.integers(), max_size=2))
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
SOME_FLOAT = st.one_of(ANY_FLOAT, st.floats(-2, 5), st.integers(-3, 5), WRONG)
PROB = st.one_of(st.floats(1e-6, 0.5), st.sampled_from([0.0, 1.0, -0.1, 1.5]), ANY_FLOAT, WRONG)

#: key (under MODEL.FOCAL) -> strategy of values; wrong types, out of range and non-finite included
FIELDS: Dict[str, Any] = {
    "LOSS": st.one_of(st.sampled_from(LOSSES), st.sampled_from(["focal", "", "SIGMOID_FOCAL"]), WRONG),
    "GAMMA": st.one_of(st.sampled_from([0.0, 0.5, 2.0, 5.0]), SOME_FLOAT),
    "ALPHA": st.one_of(st.sampled_from([-1.0, 0.25, 0.75, 1.0]), SOME_FLOAT),
    "BETA": st.one_of(st.sampled_from([-1.0, 0.0, 1.0]), SOME_FLOAT),
    "PRIOR_PROB": PROB,
    "BIAS_INIT": st.one_of(st.sampled_from(["prior", "zero", "Prior", "normal"]), WRONG),
    "NORMALIZER": st.one_of(st.sampled_from(["num_pos", "ema", "batch"]), WRONG),
    "FUSED_LOSS": st.one_of(st.booleans(), WRONG, st.integers(0, 1)),
    "ALLOW_LOW_QUALITY_MATCHES": st.one_of(st.booleans(), WRONG, st.integers(0, 1)),
    "OHEM.ENABLED": st.one_of(st.booleans(), st.booleans(), WRONG),
    "OHEM.BATCH_SIZE_PER_IMAGE": st.one_of(st.integers(-2, 64), st.sampled_from([10 ** 9]), SOME_FLOAT),
    "OHEM.NMS_THRESH": st.one_of(st.floats(0.0, 1.0), SOME_FLOAT),
    "OHEM.POSITIVE_FRACTION": st.one_of(st.sampled_from([-1.0, 0.25, 0.5]), SOME_FLOAT),
    "OHEM.PRE_NMS_TOPK": st.one_of(st.integers(-1, 300), st.sampled_from([0, 8192]), SOME_FLOAT),
}
UNKNOWN = st.sampled_from(["GAMA", "ALPHA_T", "OHEM.BATCH_SIZE", "LOSS_TYPE", "ohem.enabled"])


def _changes(unknown_keys: bool = False) -> st.SearchStrategy:
    known = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), min_size=1, max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys}))
    if not unknown_keys:  # assigning an unknown name in Python adds a key: yacs' behaviour, not ours
        return known
    unknown = st.dictionaries(UNKNOWN, st.floats(0, 1), max_size=1)
    return st.tuples(known, unknown).map(lambda t: {**t[0], **t[1]})


@pytest.fixture(scope="module", autouse=True)
def _eager_fused_kernels():
    """The fused loss kernels run op by op here (the same functions and results as compiled, see
    ``focal_plugin.losses.fused``; compiled paths are tested in test_fused_loss.py): compiling
    every kernel variant the fuzzing reaches would cost most of this file's CPU time."""
    from focal_plugin.losses import fused

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "_COMPILE_DEVICES", (), raising=False)
        yield


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "tiny.yaml"
    path.write_text(_fuzz_cfg().dump())
    return str(path)


def _set(cfg, key: str, value: Any) -> None:
    node = cfg.MODEL.FOCAL
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def _fuzz_cfg():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 5  # MODEL.FOCAL acts on the head: a frozen ResNet halves the step
    return cfg


def _train_one_step(cfg) -> float:
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(make_batch(size=32))
    total = sum(losses.values())
    assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses  # never NaN at step 1
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    bad = first_non_finite(model)
    assert bad is None, f"non-finite state after step 1: {bad}"
    return float(total.detach())


def _check_outcome(build, changes: Dict[str, Any]) -> str:
    """'trained' or 'refused'; anything else fails the test."""
    try:
        cfg = build()
        _train_one_step(cfg)
        return "trained"
    except ValueError as e:
        named = [k for k in changes if re.search(rf"MODEL\.FOCAL\.{re.escape(k)}(?![\w.])", str(e))]
        coupled = "MODEL.RETINANET.NUM_CLASSES" in str(e) and "PRIOR_PROB" in changes  # softmax K*pi >= 1
        assert named or coupled, f"ValueError names none of the changed keys {sorted(changes)}: {e}"
        return "refused"


SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(changes=_changes())
@example(changes={"LOSS": "softmax_focal", "OHEM.ENABLED": True})
@example(changes={"LOSS": "sigmoid_focal_star", "GAMMA": 0.0})
@example(changes={"GAMMA": float("nan")})
@example(changes={"ALPHA": float("-inf")})
@example(changes={"PRIOR_PROB": 1e-300, "LOSS": "softmax_focal"})
@example(changes={"PRIOR_PROB": 1e-300})
@example(changes={"GAMMA": 1e30})
@example(changes={"OHEM.ENABLED": True, "OHEM.BATCH_SIZE_PER_IMAGE": 1, "OHEM.POSITIVE_FRACTION": 0.25})
def test_focal_values_assigned_in_python_train_or_name_the_key(changes):
    def build():
        cfg = _fuzz_cfg()
        for key, value in changes.items():
            _set(cfg, key, value)
        return cfg

    _check_outcome(build, changes)


@SETTINGS
@given(changes=_changes(unknown_keys=True))
@example(changes={"GAMA": 0.5})
@example(changes={"GAMMA": float("inf"), "LOSS": "sigmoid_focal"})
@example(changes={"LOSS": "softmax_focal", "OHEM.ENABLED": True, "PRIOR_PROB": 0.4})
def test_focal_values_from_the_command_line_train_or_name_the_key(tiny_yaml, changes):
    opts = []
    for key, value in changes.items():
        opts += [f"MODEL.FOCAL.{key}", repr(value) if not isinstance(value, str) else value]
    _check_outcome(lambda: engine.setup_cfg(tiny_yaml, opts), changes)


# Found by this fuzzing and fixed where the rules live (losses, init, modeling):
# unhashable names crashed a registry lookup; a subnormal prior gave a -inf bias; FL*'s gamma/beta
# and FL's gamma beyond float32 gave an inf/NaN loss or NaN gradients at step 1.
@pytest.mark.parametrize("changes", [
    {"LOSS": ["sigmoid_focal"]},
    {"BIAS_INIT": ["prior"]},
    {"PRIOR_PROB": 2.2e-311},
    {"LOSS": "sigmoid_focal_star", "GAMMA": 0.25, "BETA": -1e300},
    {"LOSS": "sigmoid_focal_star", "GAMMA": 1e-40},
    {"LOSS": "sigmoid_focal_star", "GAMMA": 1e300},
    {"GAMMA": 1e39},
    {"LOSS": "softmax_focal", "GAMMA": 1e38},
], ids=["list-loss", "list-bias-init", "subnormal-prior", "fl-star-beta", "fl-star-tiny-gamma",
        "fl-star-huge-gamma", "fl-huge-gamma", "softmax-fl-huge-gamma"])
def test_values_found_by_the_fuzzing_are_refused_naming_the_key(changes):
    def build():
        cfg = _fuzz_cfg()
        for key, value in changes.items():
            _set(cfg, key, value)
        return cfg

    assert _check_outcome(build, changes) == "refused"
