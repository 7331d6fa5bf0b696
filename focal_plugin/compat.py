"""Every detectron2-version and environment difference the plugin works around, in one place.

Each workaround is decided by feature detection (never by version strings: upstream builds also
report ``detectron2.__version__ == "0.6"``), carries a one-line reason, and is applied once, on
``import focal_plugin``, only when needed. ``APPLIED`` lists what was applied in this process.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch

logger = logging.getLogger(__name__)

APPLIED: list[str] = []


class MissingCompiledOpError(RuntimeError):
    """Raised when code calls an op of detectron2's compiled extension, which is not installed."""


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: importable, but every op raises a clear error."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args: Any, **kwargs: Any) -> Any:
            raise MissingCompiledOpError(
                f"detectron2._C.{name} is unavailable: detectron2 was installed without its "
                "compiled extension (detectron2._C). RetinaNet/FocalRetinaNet need none of these "
                "ops; for this one, build detectron2 from source "
                "(https://github.com/facebookresearch/detectron2)."
            )

        missing.__name__ = name
        return missing


def has_compiled_ops() -> bool:
    """True when detectron2's compiled extension is really installed (not our stand-in)."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not isinstance(module, _MissingCompiledOps)
    return importlib.util.find_spec("detectron2._C") is not None


def _stub_missing_compiled_ops() -> None:
    # pb1-detectron2 ships no C++ sources: detectron2.layers imports `_C` at module level.
    if has_compiled_ops():
        return
    import detectron2

    stub = _MissingCompiledOps("detectron2._C", "stand-in installed by focal_plugin.compat")
    sys.modules["detectron2._C"] = stub
    detectron2._C = stub
    APPLIED.append("detectron2._C stand-in (compiled ops raise MissingCompiledOpError)")


def _pil_linear_alias() -> None:
    # detectron2 v0.6 uses PIL.Image.LINEAR as a default argument; Pillow >= 10 removed it.
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        APPLIED.append("PIL.Image.LINEAR = BILINEAR")


def _numpy_aliases() -> None:
    # detectron2 v0.6 uses np.bool/np.int/np.float, removed in numpy 1.24 (np.bool returned in 2.0).
    import numpy as np

    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if name not in np.__dict__:
            setattr(np, name, typ)
            APPLIED.append(f"numpy.{name} = {typ.__name__}")


def torch_load_defaults_to_weights_only() -> bool:
    """torch >= 2.6 defaults ``torch.load(weights_only=True)``."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6)


def load_trusted_checkpoint(f: Any) -> Any:
    """``torch.load`` of a checkpoint the user chose to load (full unpickling, mapped to CPU)."""
    if torch_load_defaults_to_weights_only():
        return torch.load(f, map_location=torch.device("cpu"), weights_only=False)
    return torch.load(f, map_location=torch.device("cpu"))


def _trusted_checkpoint_loading() -> None:
    # torch >= 2.6 loads with weights_only=True: detectron2 checkpoints with optimizer/scheduler
    # state and metadata (the --resume path) then fail to load.
    if not torch_load_defaults_to_weights_only():
        return
    from fvcore.common.checkpoint import Checkpointer

    if getattr(Checkpointer._load_file, "_focal_trusted", False):
        return

    def _load_file(self: Checkpointer, f: str) -> dict:
        with self.path_manager.open(f, "rb") as file:
            return load_trusted_checkpoint(file)

    _load_file._focal_trusted = True  # type: ignore[attr-defined]
    Checkpointer._load_file = _load_file
    APPLIED.append("fvcore Checkpointer loads trusted checkpoints with weights_only=False")


def _ddp_on_cpu() -> None:
    # detectron2's create_ddp_model always passes device_ids=[local_rank], which DDP rejects for
    # CPU modules: multi-process CPU (gloo) training needs device_ids=None.
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    if getattr(original, "_focal_cpu_aware", False):
        return

    def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any):
        param = next(model.parameters(), None)
        if param is not None and param.device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._focal_cpu_aware = True  # type: ignore[attr-defined]
    defaults.create_ddp_model = create_ddp_model
    import detectron2.engine as engine

    engine.create_ddp_model = create_ddp_model
    APPLIED.append("create_ddp_model passes device_ids=None for CPU models")


def _collect_env_without_compiled_ops() -> None:
    # detectron2's collect_env_info (logged by default_setup) calls _C.get_compiler_version()
    # whenever `import detectron2._C` succeeds, which our stand-in makes it do.
    if has_compiled_ops():
        return
    from detectron2.engine import defaults
    from detectron2.utils import collect_env as d2_collect_env

    def collect_env_info() -> str:
        from focal_plugin.collect_env import format_env_info

        return format_env_info()

    d2_collect_env.collect_env_info = collect_env_info
    defaults.collect_env_info = collect_env_info
    APPLIED.append("detectron2 collect_env_info reports without compiled ops")


def _pkg_resources_stand_in() -> None:
    # detectron2.model_zoo imports pkg_resources (for resource_filename), which setuptools >= 81
    # no longer ships: model_zoo.get_config / get_config_file would fail to import.
    if importlib.util.find_spec("pkg_resources") is not None:
        return
    from importlib import resources

    module = types.ModuleType("pkg_resources", "stand-in installed by focal_plugin.compat")

    def resource_filename(package: str, resource: str) -> str:
        return str(resources.files(package).joinpath(resource))

    module.resource_filename = resource_filename  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = module
    APPLIED.append("pkg_resources.resource_filename stand-in (setuptools >= 81)")


def gn_norm(num_groups: int = 32) -> Callable[[int], torch.nn.Module]:
    """A GroupNorm factory usable as ``norm`` of detectron2's RetinaNetHead on every version.

    v0.6's head probes ``get_norm(norm, 1)``, which with "GN" builds GroupNorm(32, 1) and crashes;
    this factory falls back to one group when the channel count is not divisible.
    """

    def make(channels: int) -> torch.nn.Module:
        groups = num_groups if channels % num_groups == 0 else 1
        return torch.nn.GroupNorm(groups, channels)

    return make


# ------------------------------------------------------------------ multi-process launch
def _find_free_port() -> int:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _setup_local_group(num_workers_per_machine: int, num_machines: int, machine_rank: int) -> None:
    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):  # upstream
        comm.create_local_process_group(num_workers_per_machine)
        return
    for i in range(num_machines):  # v0.6 keeps the local group in a module global
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = torch.distributed.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_workers_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence,
    timeout: timedelta,
) -> None:
    import torch.distributed as dist

    apply()
    global_rank = machine_rank * num_workers_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank,
        timeout=timeout,
    )
    num_machines = world_size // num_workers_per_machine
    _setup_local_group(num_workers_per_machine, num_machines, machine_rank)
    from detectron2.utils import comm

    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(
    main_func: Callable,
    num_workers_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence = (),
    timeout: timedelta = timedelta(minutes=30),
) -> None:
    """detectron2's ``launch``, also on machines without CUDA.

    With CUDA this is detectron2's own launch (NCCL). Without it, v0.6's launch asserts CUDA,
    so workers are spawned here with the gloo backend ("--num-gpus N" then means N processes).
    """
    world_size = num_machines * num_workers_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if torch.cuda.is_available():
        from detectron2.engine import launch as d2_launch

        d2_launch(main_func, num_workers_per_machine, num_machines, machine_rank, dist_url,
                  args=tuple(args), timeout=timeout)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' is not supported for multi-machine jobs")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    import torch.multiprocessing as mp

    mp.start_processes(
        _cpu_worker,
        nprocs=num_workers_per_machine,
        args=(main_func, world_size, num_workers_per_machine, machine_rank, dist_url,
              tuple(args), timeout),
        daemon=False,
        start_method="spawn",
    )


_applied_once = False


def apply() -> None:
    """Apply every needed workaround (idempotent). Called by ``import focal_plugin``."""
    global _applied_once
    if _applied_once:
        return
    _stub_missing_compiled_ops()
    _pkg_resources_stand_in()
    _pil_linear_alias()
    _numpy_aliases()
    _trusted_checkpoint_loading()
    _ddp_on_cpu()
    _collect_env_without_compiled_ops()
    _applied_once = True
    if APPLIED:
        logger.debug("focal_plugin.compat applied: %s", "; ".join(APPLIED))
