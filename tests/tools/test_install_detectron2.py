"""tools/install_detectron2.py: the pure-Python wheel it builds from the sdist (no network)."""

import base64
import hashlib
import io
import os
import tarfile
import zipfile

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
