"""Every detectron2-version difference the plugin works around at run time, in one place.

The ground floor of the package: it imports nothing of focal_plugin. Repairs of the installed
detectron2 itself (a stand-in for the compiled extension, Pillow/numpy/setuptools removals) are
made where the environment is made, by ``tools/install_detectron2.py``, so plain detectron2
works without this package. What remains here is decided by feature detection (never by version
strings: upstream builds also report ``__version__ == "0.6"``) and carries a one-line reason.
Nothing here patches anything process-wide on import: each repair is a function or a scoped
context that our code calls where it needs it.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch

logger = logging.getLogger(__name__)



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
    except BaseException:
        # When one worker fails, the others fail too (a peer closed) or are terminated; torch
        # reports one of them, not necessarily the first. Each worker's own error is shown here.
        import sys
        import traceback

        sys.stderr.write(f"[worker rank {global_rank}] failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        raise
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
