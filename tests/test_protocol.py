"""The CPU mini protocol (issue 12): its datasets, configs and the synthetic-classification
backbone pre-training (recipe fingerprint, cache, ``focal-pretrained://`` URIs, determinism)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import focal_plugin  # noqa: F401
from focal_plugin import pretrain, protocol
from focal_plugin.data import SyntheticConfig
from focal_plugin.processes import cpu_name

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "mini" / "protocol"
PROTOCOL_CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("Base"))

TINY_SOURCE = SyntheticConfig(
    name="pretrain-test", seed=7, num_train=6, num_val=0, image_size=(64, 72), num_classes=4,
    mean_objects=2.0, max_objects=3, scale_range=(0.2, 0.5), mean_distractors=0.5, max_distractors=1,
)
TINY = pretrain.PretrainRecipe(name="tiny-test", source="tiny-test", crop_size=32, iterations=3,
                               batch_size=4, warmup_iters=1, val_fraction=0.25)


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("FOCAL_PLUGIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setitem(pretrain.SOURCES, "tiny-test", lambda: TINY_SOURCE)
    monkeypatch.setitem(pretrain.RECIPES, "tiny-test", TINY)
    return TINY


def test_datasets_registered():
    from detectron2.data import DatasetCatalog

    for name in protocol.DATASETS:
        assert name in DatasetCatalog.list()
    assert protocol.PROTOCOL_DATA.num_classes == 80
    assert protocol.PRETRAIN_SOURCE.seed != protocol.PROTOCOL_DATA.seed  # disjoint images
    # the same classes (the backbone learns the detection classes' appearance, never their boxes)
    assert protocol.PRETRAIN_SOURCE.thing_classes() == protocol.PROTOCOL_DATA.thing_classes()
    # pinned: recalibrating the detection data must not invalidate users' cached backbones
    assert protocol.PRETRAIN_SOURCE.fingerprint() == "bf528041dc85"


@pytest.mark.parametrize("name", PROTOCOL_CONFIGS)
def test_protocol_configs_load_with_explicit_anchors(name):
    from focal_plugin.anchors import anchor_sizes
    from focal_plugin.engine import setup_cfg

    text = (CONFIG_DIR / name).read_text() + (CONFIG_DIR / "Base-Protocol.yaml").read_text()
    assert "ANCHOR_SCALES_PER_OCTAVE" not in text and "ANCHOR_ASPECTS" not in text
    cfg = setup_cfg(str(CONFIG_DIR / name))
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":  # Table 2's two-stage row: 1 size per level
        want = [[16.0], [32.0], [64.0], [128.0], [256.0]]
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80 and cfg.MODEL.RPN.IN_FEATURES[0] == "p2"
    else:
        want = anchor_sizes(3, (16, 32, 64, 128, 256))
        assert cfg.MODEL.META_ARCHITECTURE == "FocalRetinaNet"
    got = [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    assert len(got) == len(want)
    assert all(g == pytest.approx(w, abs=1e-4) for g, w in zip(got, want))
    assert [list(r) for r in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS] == [[0.5, 1.0, 2.0]]
    assert cfg.MODEL.WEIGHTS == "focal-pretrained://proto-r18"
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 80
    assert not cfg.SOLVER.CLIP_GRADIENTS.ENABLED  # one recipe, the paper's: no clipping
    assert cfg.DATASETS.TRAIN == ("dense_shapes_proto_train",)


def test_recipe_fingerprint():
    r = pretrain.RECIPES["proto-r18"]
    assert r.fingerprint() == pretrain.RECIPES["proto-r18"].fingerprint()
    assert dataclasses.replace(r, name="other").fingerprint() == r.fingerprint()  # name excluded
    assert dataclasses.replace(r, iterations=r.iterations + 1).fingerprint() != r.fingerprint()
    assert r.fingerprint() in str(pretrain.weights_path(r))


def test_the_resnet34_recipe_builds_table_1e_resnet34_backbone():
    """proto-r34 is proto-r18 at depth 34 (its own cache folder), and builds detectron2's ResNet-34
    (BasicBlocks 3-4-6-3) with the keys and shapes of Table 1e's ResNet-34 rows (not trained here)."""
    from detectron2.modeling import build_backbone
    from detectron2.modeling.backbone.resnet import BasicBlock

    from focal_plugin.engine import setup_cfg
    from focal_plugin.pretrain.recipe import build_resnet

    r18, r34 = pretrain.RECIPES["proto-r18"], pretrain.get_recipe("proto-r34")
    assert dataclasses.replace(r34, name=r18.name, depth=18) == r18
    assert r34.fingerprint() != r18.fingerprint() and pretrain.weights_dir(r34) != pretrain.weights_dir(r18)
    resnet = build_resnet(r34, "FrozenBN", ["res5"])
    assert [len(stage) for stage in resnet.stages] == [3, 4, 6, 3]
    assert all(isinstance(block, BasicBlock) for stage in resnet.stages for block in stage)
    row = setup_cfg(str(CONFIG_DIR / "Base-Protocol.yaml"), ["MODEL.RESNETS.DEPTH", "34",
                                                              "MODEL.WEIGHTS", ""])
    detection = build_backbone(row).bottom_up  # what KEY_PREFIX ("backbone.bottom_up.") loads into
    assert {k: v.shape for k, v in resnet.state_dict().items()} == {
        k: v.shape for k, v in detection.state_dict().items()}


def test_missing_weights_name_the_build_command(tiny_recipe):
    from detectron2.utils.file_io import PathManager

    with pytest.raises(FileNotFoundError, match="tools/pretrain_backbone.py --recipe tiny-test"):
        PathManager.get_local_path("focal-pretrained://tiny-test")


def test_pretraining_is_deterministic_and_cached(tiny_recipe, monkeypatch):
    from detectron2.utils.file_io import PathManager

    torch.set_num_threads(2)  # the recipe pins one thread itself
    state1, report1 = pretrain.train_classifier(tiny_recipe)
    assert torch.get_num_threads() == 2
    assert all(k.startswith(pretrain.KEY_PREFIX) for k in state1)
    assert report1["num_labels"] == TINY_SOURCE.num_classes + 1

    path = pretrain.build("tiny-test")
    assert path == pretrain.weights_path(tiny_recipe) and path.is_file()
    assert (path.parent / "RECIPE.json").is_file()
    raw = torch.load(pretrain.raw_weights_path(tiny_recipe))["model"]  # a second training: same bytes
    assert raw.keys() == state1.keys()
    assert all(torch.equal(raw[k], state1[k]) for k in state1)
    export = json.loads((path.parent / "RECIPE.json").read_text())["exports"][path.name]
    assert export["rms_exported"] == pytest.approx(pretrain.stage_rms(tiny_recipe, torch.load(path)["model"]))
    want = {k: tiny_recipe.feature_rms / v for k, v in export["rms_raw"].items()}
    assert export["scales"] == pytest.approx(want)
    assert PathManager.get_local_path("focal-pretrained://tiny-test") == str(path)

    def no_training(*args, **kwargs):
        raise AssertionError("cached weights must not be rebuilt")

    monkeypatch.setattr(pretrain.zoo, "train_classifier", no_training)  # what build() calls
    assert pretrain.build("tiny-test") == path


def test_weights_load_into_the_protocol_backbone(tiny_recipe):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from focal_plugin.engine import setup_cfg

    path = pretrain.build("tiny-test")
    cfg = setup_cfg(str(CONFIG_DIR / "Base-Protocol.yaml"), ["MODEL.WEIGHTS", "focal-pretrained://tiny-test"])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    saved = torch.load(path)["model"]
    got = model.state_dict()
    assert torch.equal(got["backbone.bottom_up.res5.1.conv2.norm.weight"],
                       saved["backbone.bottom_up.res5.1.conv2.norm.weight"])
    key = "backbone.bottom_up.res4.0.conv1.weight"
    assert torch.equal(got[key], saved[key])
    assert torch.equal(got["backbone.bottom_up.res5.1.conv2.norm.running_var"],
                       saved["backbone.bottom_up.res5.1.conv2.norm.running_var"])


def test_rescale_stages_is_an_exact_reparametrization():
    recipe = pretrain.RECIPES["proto-r18"]
    torch.manual_seed(0)
    net = pretrain.build_classifier(recipe, 3).resnet
    for m in net.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    state = {pretrain.KEY_PREFIX + k: v for k, v in net.state_dict().items()}
    scales = {"res3": 0.5, "res4": 3.0, "res5": 0.1}
    raw = pretrain.rescale.frozen_resnet(recipe, state)
    new = pretrain.rescale.frozen_resnet(recipe, pretrain.rescale_stages(state, scales))
    x = torch.randn(2, 3, 64, 80, dtype=torch.float64) * 50  # float64: exactness, not rounding
    a, b = raw.double()(x), new.double()(x)
    for k, s in scales.items():
        err = float((b[k] - s * a[k]).abs().max() / (s * a[k]).abs().max())
        assert err < 1e-3, (k, err)  # relative to the largest output; BN eps: ~5e-4 at s = .1



def test_a_recipe_at_another_seed_is_its_own_backbone():
    r18 = pretrain.RECIPES["proto-r18"]
    assert pretrain.get_recipe("proto-r18@0") == r18  # seed 0 is the recipe itself: the same file
    at2 = pretrain.get_recipe("proto-r18@2")
    assert at2.seed == 2 and at2.name == r18.name and at2.fingerprint() != r18.fingerprint()
    assert pretrain.weights_dir(at2) != pretrain.weights_dir(r18)
    with pytest.raises(ValueError, match="seed after '@' must be an integer"):
        pretrain.get_recipe("proto-r18@x")
    with pytest.raises(KeyError, match="unknown pre-training recipe 'nope'"):
        pretrain.get_recipe("nope@1")


def test_weights_follow_the_run_seed_and_results_record_their_checksum(tiny_recipe):
    import hashlib

    from focal_plugin.checkpoint import weights_record
    from focal_plugin.engine import setup_cfg

    base = str(CONFIG_DIR.parent / "protocol_v3" / "Base-Protocol.yaml")
    assert setup_cfg(base, ["SEED", "2"]).MODEL.WEIGHTS == "focal-pretrained://proto-r18@2"
    with pytest.raises(ValueError, match=r"names the run's seed, but cfg.SEED = -1"):
        setup_cfg(base, ["SEED", "-1"])
    path = pretrain.build("tiny-test@1")
    assert path != pretrain.weights_path(tiny_recipe)  # another seed, another backbone
    record = weights_record("focal-pretrained://tiny-test@1")
    assert record == {"uri": "focal-pretrained://tiny-test@1",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    report = json.loads((path.parent / "RECIPE.json").read_text())
    assert report["exports"][path.name]["sha256"] == record["sha256"]
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["cpu"] == cpu_name()  # AMD and Intel CPUs of one capability give other bytes
    assert weights_record("") is None


def test_protocol_v3_is_v2_with_the_fast_path_and_a_backbone_per_seed():
    from focal_plugin.engine import setup_cfg
    from focal_plugin.modeling.feature_cache import frozen_problems

    v2 = setup_cfg(str(CONFIG_DIR / "fl_default.yaml"), ["SEED", "1"])
    v3 = setup_cfg(str(CONFIG_DIR.parent / "protocol_v3" / "fl_default.yaml"), ["SEED", "1"])
    changed = {k for k in _flat(v3) if _flat(v3)[k] != _flat(v2).get(k)}
    assert changed == {"MODEL.WEIGHTS", "MODEL.BACKBONE.FEATURE_CACHE_MB", "SOLVER.AMP.ENABLED", "OUTPUT_DIR"}
    from detectron2.modeling import build_model

    model = build_model(setup_cfg(str(CONFIG_DIR.parent / "protocol_v3" / "fl_default.yaml"),
                                  ["MODEL.WEIGHTS", ""]))
    assert frozen_problems(model.backbone.bottom_up) == []  # the cache's condition holds


def _flat(node, prefix=""):
    if isinstance(node, dict):
        return {k2: v2 for k, v in node.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: node}


def test_the_pretrain_tool_records_backbones_and_checks_them(tiny_recipe, tmp_path, capsys):
    from helpers import load_script

    tool = load_script(Path(__file__).resolve().parents[1] / "tools" / "pretrain_backbone.py", "pretrain_tl")
    record = tmp_path / "backbones.json"
    assert tool.main(["--recipe", "tiny-test", "--seeds", "0", "1", "--record", str(record)]) == 0
    entries = json.loads(record.read_text())
    assert sorted(entries) == ["tiny-test@0", "tiny-test@1"]
    assert entries["tiny-test@1"]["sha256"] == pretrain.file_sha256(pretrain.weights_path(
        pretrain.get_recipe("tiny-test@1")))
    assert tool.main(["--check", str(record)]) == 0
    assert capsys.readouterr().out.count("the same bytes") == 2
    assert entries["tiny-test@1"]["cpu"] == cpu_name()
    # as if recorded on another CPU model of the same capability (AMD vs Intel AVX-512)
    entries["tiny-test@1"].update(sha256="0" * 64, cpu="Other CPU")
    record.write_text(json.dumps(entries))
    assert tool.main(["--check", str(record)]) == 1
    assert f"tiny-test@1: other bytes (this CPU: {cpu_name()}, " in (out := capsys.readouterr().out)
    assert "recorded: Other CPU, " in out
