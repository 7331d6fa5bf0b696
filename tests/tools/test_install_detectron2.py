"""tools/install_detectron2.py: the pure-Python wheel it builds from the sdist (no network)."""

import base64
import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _installer():
    return load_script(os.path.join(ROOT, "tools", "install_detectron2.py"), "install_detectron2")


def _fake_sdist() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in {
            "pb1-detectron2-0.6/setup.py": "raise SystemExit('never run')",
            "pb1-detectron2-0.6/detectron2/__init__.py": "__version__ = '0.6'\n",
            "pb1-detectron2-0.6/detectron2/layers/__init__.py": "",
            "pb1-detectron2-0.6/detectron2/model_zoo/configs/Base-RetinaNet.yaml": "MODEL: {}\n",
            "pb1-detectron2-0.6/detectron2/__pycache__/x.cpython-311.pyc": "junk",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_wheel_has_python_tree_metadata_and_valid_record(tmp_path):
    inst = _installer()
    wheel = inst.build_wheel(_fake_sdist(), str(tmp_path))
    assert os.path.basename(wheel) == "pb1_detectron2-0.6-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "detectron2/__init__.py" in names
        assert "detectron2/model_zoo/configs/Base-RetinaNet.yaml" in names
        assert "setup.py" not in names and not any("__pycache__" in n for n in names)
        meta = zf.read("pb1_detectron2-0.6.dist-info/METADATA").decode()
        assert "Requires-Dist: fvcore>=0.1.5,<0.1.6" in meta and "black" not in meta
        record = zf.read("pb1_detectron2-0.6.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.split(",")
            if name.endswith("RECORD"):
                continue
            data = zf.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data), name


def test_detectron2_is_detected_when_importable():
    assert _installer().detectron2_present() is not None


def test_the_detectron2_of_this_environment_passes_the_smoke_test():
    assert _installer().smoke_test() is None


def _fake_detectron2(root, model_zoo_source: str) -> dict:
    """A PYTHONPATH holding a detectron2 whose model_zoo runs ``model_zoo_source``."""
    pkg = root / "detectron2"
    for sub in ("data", "engine", "evaluation", "modeling", "config"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("def get_cfg(): pass\n" if sub == "config" else "")
    (pkg / "__init__.py").write_text("")
    (pkg / "model_zoo.py").write_text(model_zoo_source)
    return {**os.environ, "PYTHONPATH": str(root)}


def test_a_broken_detectron2_is_reported_with_its_error(tmp_path, monkeypatch):
    inst = _installer()
    env = _fake_detectron2(tmp_path, "import pkg_resources_gone_for_this_test\n")
    real_run = inst.subprocess.run
    monkeypatch.setattr(inst.subprocess, "run", lambda *a, **k: real_run(*a, **k, env=env))
    assert inst.smoke_test() == "ModuleNotFoundError: No module named 'pkg_resources_gone_for_this_test'"


def test_a_kept_detectron2_without_pkg_resources_gets_setuptools_below_81(monkeypatch):
    inst = _installer()
    errors = iter(["ModuleNotFoundError: No module named 'pkg_resources'", None])
    installed = []
    monkeypatch.setattr(inst, "smoke_test", lambda python=None: next(errors))
    monkeypatch.setattr(inst.subprocess, "check_call", lambda cmd: installed.append(cmd[-1]))
    inst.ensure_working("/src/detectron2")
    assert installed == ["setuptools<81"]


def test_a_detectron2_that_stays_broken_stops_the_set_up_naming_the_error(monkeypatch):
    inst = _installer()
    installed = []
    error = "ModuleNotFoundError: No module named 'pkg_resources'"
    monkeypatch.setattr(inst, "smoke_test", lambda python=None: error)
    monkeypatch.setattr(inst.subprocess, "check_call", lambda cmd: installed.append(cmd[-1]))
    expected = r"(?s)/src/detectron2 does not work here: .*pkg_resources.*uninstall"
    with pytest.raises(SystemExit, match=expected):
        inst.ensure_working("/src/detectron2")
    assert installed == ["setuptools<81"]  # one try, no loop
    monkeypatch.setattr(inst, "smoke_test", lambda python=None: "ImportError: cannot import name 'X'")
    with pytest.raises(SystemExit, match="cannot import name 'X'"):
        inst.ensure_working("/src/detectron2")
    assert installed == ["setuptools<81"]  # no repair for an unknown error
