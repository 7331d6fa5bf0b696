"""Every shipped config states the real anchors in detectron2's own keys: swapping
META_ARCHITECTURE to detectron2's RetinaNet builds the same anchors and head parameter shapes, and
a FocalRetinaNet state_dict loads into it strictly. Configs ship inside the package."""

import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.backbone import build_backbone
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from focal_plugin import compat
from focal_plugin.configs import CONFIG_ROOT, get_config_file
from focal_plugin.engine import setup_cfg

YAMLS = sorted(os.path.relpath(p, CONFIG_ROOT)
               for p in glob.glob(os.path.join(CONFIG_ROOT, "**", "*.yaml"), recursive=True))
# detectron2 configs (ablations/ holds the runner's table specs, tested in test_ablation.py)
CONFIGS = [y for y in YAMLS if not y.startswith("ablations/")]


def _cpu(cfg):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_configs_found():
    assert "Base-FocalRetinaNet.yaml" in YAMLS and "mini/demo_focal_R18_dense_shapes.yaml" in YAMLS
    assert len(YAMLS) >= 20


_built = {}


@pytest.mark.parametrize("name", CONFIGS)
def test_stock_retinanet_reads_the_same_anchors_and_head(name):
    cfg = _cpu(setup_cfg(get_config_file(name), freeze=False))
    if cfg.MODEL.META_ARCHITECTURE != "FocalRetinaNet":
        pytest.skip(f"{name} is not a FocalRetinaNet config")
    key = cfg.MODEL.dump()  # configs that differ only outside MODEL build the same model
    if key in _built:
        return
    backbone = build_backbone(cfg)
    shapes = [backbone.output_shape()[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
    ours = build_model(cfg)
    stock_anchors = build_anchor_generator(cfg, shapes)
    assert ours.anchor_generator.num_cell_anchors == stock_anchors.num_cell_anchors
    for a, b in zip(ours.anchor_generator.cell_anchors, stock_anchors.cell_anchors):
        torch.testing.assert_close(a, b)
    if cfg.MODEL.FOCAL.LOSS == "softmax_focal":  # K+1 logits: a head detectron2 does not have
        assert ours.head.cls_score.out_channels == stock_anchors.num_cell_anchors[0] * (
            cfg.MODEL.RETINANET.NUM_CLASSES + 1)
    else:
        args = RetinaNetHead.from_config(cfg, shapes)
        if args["norm"] == "GN":  # what upstream builds; v0.6's own head crashes on "GN"
            args["norm"] = compat.gn_norm()
        stock_head = RetinaNetHead(**args)
        stock_head.load_state_dict(ours.head.state_dict(), strict=True)
    _built[key] = True


def test_focal_state_dict_loads_strictly_into_stock_retinanet():
    cfg = _cpu(setup_cfg(get_config_file("paper/retinanet_R_50_FPN_600_90k.yaml"), freeze=False))
    ours = build_model(cfg)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    stock = build_model(cfg)
    assert type(stock).__name__ == "RetinaNet"
    stock.load_state_dict(ours.state_dict(), strict=True)


def test_get_config_file_errors_name_the_path():
    assert get_config_file("configs/mini/smoke_tiny.yaml") == get_config_file("mini/smoke_tiny.yaml")
    with pytest.raises(FileNotFoundError, match="mini/nope.yaml"):
        get_config_file("mini/nope.yaml")


def test_wheel_ships_the_configs_and_an_installed_copy_finds_them(tmp_path):
    import subprocess
    import sys
    import zipfile

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", root, "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "dist" / "focal_plugin-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in YAMLS:
        assert f"focal_plugin/configs/{rel}" in names, rel
    assert "focal_plugin/configs/lazy/focal_retinanet_R_50_FPN_600_90k.py" in names
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           wheel], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-3000:]
    code = ("import focal_plugin\n"
            "from focal_plugin.demo import DEFAULT_CONFIG\n"
            "from focal_plugin.configs import resolve_config_file\n"
            "from focal_plugin.engine import setup_cfg\n"
            "path = resolve_config_file(DEFAULT_CONFIG)\n"
            "setup_cfg(path)\n"
            "print(focal_plugin.__file__)\n"
            "print(path)\n")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    plugin_file, config_path = out.stdout.strip().splitlines()[-2:]
    assert plugin_file.startswith(str(target)) and config_path.startswith(str(target))
