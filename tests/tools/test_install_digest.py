"""The pinned sha256 of the detectron2 sdist is checked at install: a download whose
digest differs stops the install before anything is built or installed, and a cached file with
another digest is discarded, never used. No network: the download is replaced."""

import hashlib
import io
import os

import pytest

from helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _installer():
    return load_script(os.path.join(ROOT, "tools", "install_detectron2.py"), "install_detectron2")


@pytest.fixture
def installer(monkeypatch, tmp_path):
    inst = _installer()
    calls = {"downloads": 0, "built": [], "pip": []}

    def urlopen(url, timeout=None):
        calls["downloads"] += 1
        return io.BytesIO(b"a tampered or corrupted sdist")

    monkeypatch.setattr(inst.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(inst, "detectron2_present", lambda: None)  # as on a fresh machine
    monkeypatch.setattr(inst, "build_wheel", lambda *a, **k: calls["built"].append(a) or "x.whl")
    monkeypatch.setattr(inst.subprocess, "check_call", lambda cmd, *a, **k: calls["pip"].append(cmd))
    monkeypatch.setattr(inst.sys, "argv", ["install_detectron2.py", "--cache-dir", str(tmp_path)])
    return inst, calls


def test_an_sdist_with_another_sha256_stops_the_install(installer, tmp_path):
    inst, calls = installer
    digest = hashlib.sha256(b"a tampered or corrupted sdist").hexdigest()
    with pytest.raises(SystemExit, match=rf"sha256 mismatch .*got {digest}, expected {inst.SDIST_SHA256}"
                                         r"\. Refusing to install"):
        inst.main()
    assert calls["downloads"] == 1 and not calls["built"] and not calls["pip"]
    assert os.listdir(tmp_path) == []  # nothing cached, nothing half-written


def test_a_cached_sdist_with_another_sha256_is_discarded_not_used(installer, tmp_path):
    inst, calls = installer
    cached = tmp_path / inst.SDIST_NAME
    cached.write_bytes(b"left by an interrupted download")
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        inst.main()
    assert calls["downloads"] == 1 and not calls["built"] and not calls["pip"]
    assert not cached.exists()
