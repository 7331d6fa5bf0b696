#!/usr/bin/env python
"""Provide detectron2 in the current Python environment, using only PyPI.

Rule (see README and ../shared/DETECTRON2_NOTES.md):
  * an importable detectron2 (e.g. built from upstream sources) is kept as it is;
  * otherwise PyPI's ``pb1-detectron2==0.6`` sdist (upstream v0.6's Python tree, no C++ sources)
    is downloaded, its sha256 verified, and installed as a pure-Python wheel built here, with
    its runtime dependencies and the repairs below (``REPAIRS``), so that plain
    ``import detectron2.modeling`` / ``detectron2.model_zoo`` work in this environment without
    importing focal_plugin first. A wheel built by an older version of this script is replaced.

The repairs, each for one reason:
  * ``detectron2/_C.py``: a stand-in for the compiled extension the sdist cannot build
    (``detectron2.layers`` imports it at module level); every op raises
    ``MissingCompiledOpError`` naming the op; RetinaNet needs none of them.
  * ``PIL.Image.LINEAR`` -> ``BILINEAR``: Pillow >= 10 removed the alias v0.6 uses.
  * bare ``np.bool``/``np.int``/``np.float`` -> builtins: removed in numpy >= 1.24.
  * ``model_zoo`` without ``pkg_resources``: setuptools >= 81 no longer ships it.

Either way the detectron2 left in the environment is then checked (``SMOKE``: the modules
focal_plugin uses and a model-zoo config, in a fresh interpreter). A kept detectron2 gets the one
environment repair a source build needs, ``setuptools<81`` when its ``model_zoo`` imports the
``pkg_resources`` that setuptools >= 81 dropped; its files are never edited. A detectron2 that still
does not work stops the set-up with the error and what to do.

Only the standard library is used, so this runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/" + SDIST_NAME
)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DIST_NAME = "pb1_detectron2"
VERSION = "0.6"
#: Bumped whenever the repairs change: an installed wheel with another value is rebuilt.
REPAIRS_VERSION = "1"
REPAIRS_MARKER = "_focal_plugin_repairs.txt"

C_STAND_IN = '''"""Stand-in for detectron2's compiled extension (written by focal_plugin's installer).

This detectron2 was installed from its Python sources only. Importing this module works (as
detectron2.layers needs); calling any compiled op raises MissingCompiledOpError naming it.
"""

STAND_IN = True


class MissingCompiledOpError(RuntimeError):
    """A compiled detectron2 op was called, but detectron2 was installed without them."""


def get_compiler_version():
    return "none (pure-Python detectron2: no compiled ops)"


def get_cuda_version():
    return "none (pure-Python detectron2: no compiled ops)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise MissingCompiledOpError(
            f"detectron2._C.{name} is unavailable: detectron2 was installed without its compiled "
            "extension. RetinaNet/FocalRetinaNet need none of these ops; for this one, build "
            "detectron2 from source (https://github.com/facebookresearch/detectron2)."
        )

    missing.__name__ = name
    return missing
'''

PKG_RESOURCES_SHIM = (
    "import importlib.resources as _resources\n\n\n"
    "class pkg_resources:  # focal_plugin installer: setuptools >= 81 has no pkg_resources\n"
    "    @staticmethod\n"
    "    def resource_filename(package, resource):\n"
    "        return str(_resources.files(package).joinpath(resource))\n"
)
#: Run in a fresh interpreter: what focal_plugin imports from detectron2, and a model-zoo config
#: (model_zoo resolves its files with pkg_resources in every detectron2 release so far).
SMOKE = (
    "import detectron2.data, detectron2.engine, detectron2.evaluation, detectron2.modeling\n"
    "from detectron2 import model_zoo\n"
    "from detectron2.config import get_cfg\n"
    "get_cfg().merge_from_file(model_zoo.get_config_file('COCO-Detection/retinanet_R_50_FPN_1x.yaml'))\n"
)
#: An error of the smoke test -> (the repair's pip requirement, its one-line reason).
ENV_REPAIRS = {
    "No module named 'pkg_resources'": (
        "setuptools<81",
        "detectron2.model_zoo imports pkg_resources, which setuptools >= 81 no longer ships",
    ),
}
# The sdist's install_requires, minus what only packaging/caffe2 export/formatting needs
# (future, pydot, black==21.4b2 — black is imported lazily by LazyConfig.save only).
RUNTIME_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]


def detectron2_present() -> str | None:
    """Location of an importable detectron2, or None."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def built_by_older_installer(where: str) -> bool:
    """True when the detectron2 at ``where`` is a wheel of this script with other repairs."""
    from importlib import metadata

    try:
        wheel = metadata.distribution("pb1-detectron2").read_text("WHEEL") or ""
    except metadata.PackageNotFoundError:
        return False
    if "Generator: focal_plugin" not in wheel:
        return False
    marker = os.path.join(where, REPAIRS_MARKER)
    if not os.path.isfile(marker):
        return True
    with open(marker) as f:
        return f.read().strip() != REPAIRS_VERSION


def fetch_sdist(cache_dir: str) -> bytes:
    path = os.path.join(cache_dir, SDIST_NAME)
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() == SDIST_SHA256:
            return data
        os.remove(path)  # a corrupt or foreign cached file: fetch again
    data = b""
    for attempt in range(1, 4):  # a flaky network should not fail a fresh set-up
        print(f"[install_detectron2] downloading {SDIST_URL} (attempt {attempt})", flush=True)
        try:
            with urllib.request.urlopen(SDIST_URL, timeout=180) as r:
                data = r.read()
            break
        except OSError as e:
            if attempt == 3:
                raise SystemExit(
                    f"[install_detectron2] cannot download {SDIST_URL}: {e}. Put the file at "
                    f"{path} (sha256 {SDIST_SHA256}) and run again."
                ) from e
            time.sleep(5 * attempt)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"[install_detectron2] sha256 mismatch for {SDIST_NAME}: got {digest}, "
            f"expected {SDIST_SHA256}. Refusing to install."
        )
    # its own atomic writer, not focal_plugin.io's: this runs before focal_plugin is importable
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic: never leave a half-written cache file
    return data


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repair_sources(files: dict[str, bytes]) -> dict[str, bytes]:
    """Apply the repairs listed in the module docstring to the ``detectron2/`` tree (in place)."""
    import re

    for name, data in list(files.items()):
        if not name.endswith(".py"):
            continue
        text = data.decode("utf-8")
        new = re.sub(r"\bnp\.(bool|int|float)\b(?![_\d])", r"\1", text)
        new = new.replace("Image.LINEAR", "Image.BILINEAR")
        if name == "detectron2/model_zoo/model_zoo.py":
            new = new.replace("import pkg_resources\n", PKG_RESOURCES_SHIM, 1)
        if new != text:
            files[name] = new.encode("utf-8")
    files.setdefault("detectron2/_C.py", C_STAND_IN.encode())
    files[f"detectron2/{REPAIRS_MARKER}"] = REPAIRS_VERSION.encode()
    return files


def build_wheel(sdist: bytes, out_dir: str) -> str:
    """Repackage the sdist's pure-Python ``detectron2/`` tree as a py3-none-any wheel."""
    prefix = "pb1-detectron2-0.6/"
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix + "detectron2/"):
                continue
            rel = member.name[len(prefix):]
            if "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            files[rel] = tar.extractfile(member).read()
    if "detectron2/__init__.py" not in files:
        raise SystemExit("[install_detectron2] the sdist has no detectron2/__init__.py")
    repair_sources(files)

    dist_info = f"{DIST_NAME}-{VERSION}.dist-info"
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            "Name: pb1-detectron2",
            f"Version: {VERSION}",
            "Summary: detectron2 v0.6 Python tree (no compiled extension), "
            "repackaged by focal_plugin's tools/install_detectron2.py",
            "Home-page: https://github.com/facebookresearch/detectron2",
            "License: Apache-2.0",
            "Requires-Python: >=3.6",
            *[f"Requires-Dist: {r}" for r in RUNTIME_REQUIRES],
            "",
        ]
    )
    wheel_meta = "Wheel-Version: 1.0\nGenerator: focal_plugin\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist_info}/METADATA"] = metadata.encode()
    files[f"{dist_info}/WHEEL"] = wheel_meta.encode()
    files[f"{dist_info}/top_level.txt"] = b"detectron2\n"
    record = [_record_line(n, d) for n, d in sorted(files.items())]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()

    wheel_path = os.path.join(out_dir, f"{DIST_NAME}-{VERSION}-py3-none-any.whl")
    with zipfile.ZipFile(wheel_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(files.items()):
            zf.writestr(name, data)
    return wheel_path


def smoke_test(python: str = sys.executable) -> str | None:
    """None when the detectron2 seen by ``python`` passes ``SMOKE``, else its error's last line."""
    run = subprocess.run([python, "-c", SMOKE], capture_output=True, text=True)
    if run.returncode == 0:
        return None
    lines = run.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {run.returncode}"


def ensure_working(where: str, python: str = sys.executable) -> None:
    """Apply the ``ENV_REPAIRS`` the smoke test asks for; SystemExit if detectron2 still fails."""
    error = smoke_test(python)
    tried = set()
    while error is not None:
        repair = next((r for msg, r in ENV_REPAIRS.items() if msg in error and msg not in tried), None)
        if repair is None:
            raise SystemExit(
                f"[install_detectron2] the detectron2 at {where} does not work here: {error}\n"
                f"(checked with: {python} -c {SMOKE!r}). Repair it, or remove it "
                f"(`{python} -m pip uninstall detectron2`) and run this installer again to get "
                "detectron2 v0.6's Python tree."
            )
        tried.update(msg for msg, r in ENV_REPAIRS.items() if r == repair)
        requirement, reason = repair
        print(f"[install_detectron2] installing {requirement!r}: {reason}", flush=True)
        subprocess.check_call([python, "-m", "pip", "install", "--quiet", requirement])
        error = smoke_test(python)
    print(f"[install_detectron2] detectron2 at {where} works (model_zoo, modeling, engine, evaluation)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "focal_plugin"),
        help="where the verified sdist is cached",
    )
    args = parser.parse_args()

    where = detectron2_present()
    if where and not args.force:
        if not built_by_older_installer(where):
            print(f"[install_detectron2] keeping the detectron2 found at {where}")
            ensure_working(where)
            return 0
        print(f"[install_detectron2] {where} was built by an older installer: rebuilding it")
        args.force = True
    sdist = fetch_sdist(args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(sdist, tmp)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", wheel]
        if args.force:
            cmd.insert(4, "--force-reinstall")
        print("[install_detectron2] " + " ".join(cmd[2:]), flush=True)
        subprocess.check_call(cmd)
    print("[install_detectron2] installed pb1-detectron2 0.6 (pure Python, no detectron2._C)")
    ensure_working(detectron2_present() or "site-packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
