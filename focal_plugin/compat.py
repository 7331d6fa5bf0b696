"""Every detectron2-version difference the plugin works around at run time, in one place.

The ground floor of the package: it imports nothing of focal_plugin. Repairs of the installed
detectron2 itself (a stand-in for the compiled extension, Pillow/numpy/setuptools removals) are
made where the environment is made, by ``tools/install_detectron2.py``, so plain detectron2
works without this package. What remains here is decided by feature detection (never by version
strings: upstream builds also report ``__version__ == "0.6"``) and carries a one-line reason.
``APPLIED`` lists the process-wide ones applied in this process.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch

logger = logging.getLogger(__name__)

APPLIED: list[str] = []


def _compiled_ops_module() -> Any:
    try:
        from detectron2 import _C
    except ImportError:
        return None
    return _C


def has_compiled_ops() -> bool:
    """True when detectron2's compiled extension is really installed (not the installer's
    pure-Python stand-in, see tools/install_detectron2.py)."""
    module = _compiled_ops_module()
    return module is not None and not getattr(module, "STAND_IN", False)


#: What calling an op of the stand-in raises (RuntimeError where detectron2 is compiled).
MissingCompiledOpError = getattr(_compiled_ops_module(), "MissingCompiledOpError", RuntimeError)


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


@contextlib.contextmanager
def ddp_without_device_ids_on_cpu() -> Iterator[None]:
    """Within this block, detectron2's ``create_ddp_model`` passes ``device_ids=None`` for CPU
    models (it always passes ``[local_rank]``, which DDP rejects for CPU modules, so
    multi-process CPU training fails). Scoped to the block: used around ``DefaultTrainer``'s
    construction only."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model

    def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any):
        param = next(model.parameters(), None)
        if param is not None and param.device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, fp16_compression=fp16_compression, **kwargs)

    defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        defaults.create_ddp_model = original


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
        from detectron2.engine.launch import _find_free_port  # detectron2's own helper

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
    """Apply the process-wide workarounds still needed (idempotent). Called by ``import focal_plugin``."""
    global _applied_once
    if _applied_once:
        return
    _trusted_checkpoint_loading()
    _applied_once = True
    if APPLIED:
        logger.debug("focal_plugin.compat applied: %s", "; ".join(APPLIED))
