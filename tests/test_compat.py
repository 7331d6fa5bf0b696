"""The environment works with a pure-Python detectron2 v0.6 (or an upstream build)."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

from focal_plugin import compat

from helpers import make_batch, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_detectron2_packages_import_after_plugin():
    for name in ("detectron2.data", "detectron2.engine", "detectron2.evaluation", "detectron2.modeling",
                 "detectron2.layers", "detectron2.checkpoint", "detectron2.utils.visualizer"):
        importlib.import_module(name)


def test_import_in_fresh_interpreter_then_detectron2():
    # a fresh process: nothing imported before focal_plugin
    code = ("import focal_plugin, detectron2.data, detectron2.engine, detectron2.evaluation, "
            "detectron2.modeling; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.skipif(compat.has_compiled_ops(), reason="detectron2 built with its compiled ops")
def test_missing_compiled_op_names_the_op():
    from detectron2 import _C
    from detectron2.layers import ROIAlignRotated

    with pytest.raises(compat.MissingCompiledOpError, match="deform_conv_forward"):
        _C.deform_conv_forward(torch.zeros(1))
    layer = ROIAlignRotated((2, 2), spatial_scale=1.0, sampling_ratio=0)
    with pytest.raises(compat.MissingCompiledOpError, match="roi_align_rotated_forward"):
        layer(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 2.0, 2.0, 2.0, 2.0, 0.0]]))


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('FOCAL_TEST_PWNED', '/tmp/focal_pwned')}",))


def test_importing_the_plugin_patches_no_checkpoint_loading():
    from fvcore.common.checkpoint import Checkpointer

    assert Checkpointer._load_file.__module__ == "fvcore.common.checkpoint"


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    from detectron2.modeling import build_model

    from focal_plugin.checkpoint import SafeCheckpointer, UntrustedCheckpointError

    flag = tmp_path / "pwned"
    monkeypatch.setenv("FOCAL_TEST_PWNED", str(flag))
    path = tmp_path / "evil.pth"
    model = build_model(tiny_cfg())
    torch.save({"model": model.state_dict(), "payload": _RunsCode()}, path)
    with pytest.raises(UntrustedCheckpointError, match="evil.pth"):
        SafeCheckpointer(model).load(str(path))
    assert not flag.exists()
    # our own checkpoints (model, optimizer, scheduler, iteration) load with weights_only=True
    from detectron2.solver import build_lr_scheduler, build_optimizer

    opt = build_optimizer(tiny_cfg(), model)
    SafeCheckpointer(model, save_dir=str(tmp_path), optimizer=opt,
                     scheduler=build_lr_scheduler(tiny_cfg(), opt)).save("ok", iteration=3)
    assert SafeCheckpointer(model, optimizer=opt).load(str(tmp_path / "ok.pth"))["iteration"] == 3


def test_pil_and_numpy_repairs_carried_by_the_installed_wheel():
    import numpy as np
    from detectron2.data import transforms as T

    out = T.ResizeTransform(8, 8, 4, 4).apply_image(np.zeros((8, 8, 3), dtype=np.uint8))
    assert out.shape == (4, 4, 3)


STOCK_CLIENT = """
import detectron2.modeling, detectron2.data, detectron2.evaluation, detectron2.engine
from detectron2 import model_zoo
from detectron2.structures import BitMasks
from detectron2.utils.collect_env import collect_env_info
import numpy as np, sys
assert 'focal_plugin' not in sys.modules
model_zoo.get_config_file('COCO-Detection/retinanet_R_50_FPN_1x.yaml')
BitMasks.from_polygon_masks([[np.array([0., 0., 4., 0., 4., 4.])]], 8, 8)
collect_env_info()
print('ok')
"""


@pytest.mark.skipif(compat.has_compiled_ops(), reason="detectron2 built with its compiled ops")
def test_stock_detectron2_works_without_the_plugin_in_a_fresh_interpreter():
    out = subprocess.run([sys.executable, "-c", STOCK_CLIENT], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_lazy_config_loads_in_a_stock_client():
    code = ("from detectron2.config import LazyConfig, instantiate\n"
            "cfg = LazyConfig.load('configs/lazy/focal_retinanet_R_50_FPN_600_90k.py')\n"
            "model = instantiate(cfg.model)\n"
            "print(type(model).__name__, model.num_classes)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("FocalRetinaNet 80")


def _train_step_and_infer(meta):
    from detectron2.modeling import build_model

    cfg = tiny_cfg(meta)
    model = build_model(cfg)
    model.train()
    from detectron2.utils.events import EventStorage

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage(0):
        losses = model(make_batch())
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(make_batch(num_images=1))
    assert "instances" in out[0]
    return model


def test_builtin_retinanet_trains_and_infers_on_cpu():
    _train_step_and_infer("RetinaNet")


def test_checkpoint_resume_roundtrip(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer

    cfg = tiny_cfg("RetinaNet")
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    ckpt = DetectionCheckpointer(model, save_dir=str(tmp_path), optimizer=opt, scheduler=sched)
    ckpt.save("model_0000004", iteration=4)
    model2 = build_model(cfg)
    opt2 = build_optimizer(cfg, model2)
    sched2 = build_lr_scheduler(cfg, opt2)
    ckpt2 = DetectionCheckpointer(model2, save_dir=str(tmp_path), optimizer=opt2, scheduler=sched2)
    assert ckpt2.has_checkpoint()
    extra = ckpt2.resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k


def _record_rank(out_dir):
    import torch.distributed as dist
    from detectron2.utils import comm

    t = torch.ones(1)
    dist.all_reduce(t)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}"), "w") as f:
        f.write(f"{comm.get_world_size()} {comm.get_local_rank()} {int(t.item())} {dist.get_backend()}")


def test_two_process_cpu_launch(tmp_path):
    compat.launch(_record_rank, 2, dist_url="auto", args=(str(tmp_path),))
    got = sorted(os.listdir(tmp_path))
    assert got == ["rank0", "rank1"]
    for i in range(2):
        world, local, reduced, backend = (tmp_path / f"rank{i}").read_text().split()
        assert (int(world), int(local), int(reduced), backend) == (2, i, 2, "gloo")


def test_collect_env_reports(capsys):
    out = subprocess.run([sys.executable, "-m", "focal_plugin.collect_env"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for word in ("torch", "torchvision", "detectron2", "compiled ops", "focal_plugin", "CUDA available"):
        assert word in out.stdout
