"""``python -m focal_plugin.collect_env``: what a bug report needs first."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from typing import Any, Dict, Optional

from tabulate import tabulate

from focal_plugin.processes import cpu_name

CODE_PATHS = ("focal_plugin", "tools", "train_net.py", "setup.py")


def git_commit(repo: Optional[str] = None) -> str:
    """This checkout's commit, "+dirty" with uncommitted changes to :data:`CODE_PATHS` (not to
    the results/ and docs that runs themselves update)."""
    repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--",
                                *CODE_PATHS], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown (not a git checkout)"


def describe_device(num_gpus: int = 1) -> Dict[str, Any]:
    """The device a run is on (host, CPU model and the CPUs this process may use, torch threads,
    GPUs): what an ablation cell records in its ``status.json``."""
    import torch

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    info: Dict[str, Any] = {"host": socket.gethostname(), "cpu": cpu_name(), "cpus": cpus,
                            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = min(max(num_gpus, 1), torch.cuda.device_count())
    return info


def collect_env_info() -> list[tuple[str, str]]:
    """Versions, locations and capabilities of the environment, as (name, value) rows."""
    import numpy as np
    import torch
    import torchvision

    import focal_plugin
    from focal_plugin import compat

    rows: list[tuple[str, str]] = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("platform", platform.platform()),
        ("CPU", f"{cpu_name()} ({os.cpu_count()} cores)"),
        ("numpy", np.__version__),
        ("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("torchvision", f"{torchvision.__version__} @ {os.path.dirname(torchvision.__file__)}"),
    ]
    try:
        import detectron2

        rows.append(("detectron2", f"{detectron2.__version__} @ {os.path.dirname(detectron2.__file__)}"))
    except ImportError as e:  # the report must still print what it can
        rows.append(("detectron2", f"not importable: {e}"))
    rows.append(("detectron2 compiled ops (_C)", "yes" if compat.has_compiled_ops() else
                 "no (pure-Python install; ops needing _C raise MissingCompiledOpError)"))
    marker = os.path.join(os.path.dirname(detectron2.__file__), "_focal_plugin_repairs.txt")
    rows.append(("detectron2 repaired by tools/install_detectron2.py",
                 f"yes (repairs v{open(marker).read().strip()})" if os.path.isfile(marker) else "no"))
    for name in ("fvcore", "pycocotools", "cv2", "faster_coco_eval", "submitit"):
        try:
            module = __import__(name)
            rows.append((name, str(getattr(module, "__version__", "installed"))))
        except ImportError:
            rows.append((name, "not installed"))
    cuda = torch.cuda.is_available()
    rows.append(("CUDA available", str(cuda)))
    if cuda:
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
        rows.append(("CUDA (torch build)", str(torch.version.cuda)))
    rows.append(("torch threads", str(torch.get_num_threads())))
    rows.append(("distributed backends", ", ".join(
        b for b, ok in (("gloo", torch.distributed.is_gloo_available()),
                        ("nccl", torch.distributed.is_nccl_available())) if ok)))
    rows.append(("DETECTRON2_DATASETS", os.environ.get("DETECTRON2_DATASETS", "(unset: ./datasets)")))
    rows.append(("focal_plugin commit", git_commit()))
    rows.append(("focal_plugin", f"{focal_plugin.__version__} @ {os.path.dirname(focal_plugin.__file__)}"))
    return rows


def format_env_info() -> str:
    """The report as a table."""
    return tabulate(collect_env_info(), tablefmt="simple")


def main() -> None:
    print(format_env_info())


if __name__ == "__main__":
    main()
