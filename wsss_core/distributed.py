"""Devices, seeds and process groups: what :func:`wsss_core.engine.train` and :func:`~wsss_core.engine.predict`
need to know about where they run.

* :func:`select_device` picks CUDA / MPS / CPU (``cuda:LOCAL_RANK`` under torchrun), :func:`to_device` moves a
  batch there;
* :func:`seed_everything` seeds Python, numpy and torch (and switches deterministic algorithms),
  :func:`seed_worker` seeds DataLoader workers;
* :func:`init_distributed` starts the process group from torchrun's environment variables,
  :func:`get_dist_info` / :func:`is_main_process` say where this process stands, :func:`barrier`,
  :func:`all_reduce_mean` and :func:`comm_device` are the collectives' helpers, :func:`cleanup_distributed`
  ends the group, :func:`unwrap` takes a model out of its DDP / ``torch.compile`` wrapper.

Everything here is re-exported by :mod:`wsss_core.engine` (``engine.select_device`` ...), the names the
stages and notebooks use.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "select_device",
    "seed_everything",
    "seed_worker",
    "DistInfo",
    "get_dist_info",
    "is_main_process",
    "init_distributed",
    "cleanup_distributed",
    "unwrap",
    "comm_device",
    "all_reduce_mean",
    "barrier",
    "to_device",
]


# --------------------------------------------------------------------------------------------------
# device and seeds
# --------------------------------------------------------------------------------------------------
def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return int(value)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """Pick the compute device.

    Parameters
    ----------
    device : {"auto", "cuda", "cuda:N", "mps", "cpu"} or torch.device, default "auto"
        ``"auto"`` takes CUDA if available, then Apple MPS, else the CPU.  Under torchrun
        (``WORLD_SIZE > 1``) a bare ``"cuda"`` (or ``"auto"`` on a CUDA machine) means
        ``cuda:LOCAL_RANK``.  Explicit strings are honoured.

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        If CUDA or MPS is asked for but not available (or the CUDA index does not exist).
    """
    if device is None:
        device = "auto"
    spec = str(device).strip().lower()
    world = _env_int("WORLD_SIZE", 1) or 1
    local_rank = _env_int("LOCAL_RANK", 0) or 0
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} was requested but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}; no usable GPU or "
                "driver). Use device='auto' or device='cpu'."
            )
        dev = torch.device(spec)
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {dev} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    if spec == "mps":
        if not _mps_available():
            raise RuntimeError("device='mps' was requested but torch.backends.mps.is_available() is False")
        return torch.device("mps")
    return torch.device(spec)


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and all CUDA devices).

    Parameters
    ----------
    seed : int
    deterministic : bool, default False
        Sets ``torch.use_deterministic_algorithms(deterministic, warn_only=True)``,
        ``cudnn.deterministic = deterministic`` and ``cudnn.benchmark = False``; with ``True`` it
        also sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (needed by deterministic cuBLAS) when unset.
        Deterministic kernels are slower; ops without one warn instead of failing.

    Returns
    -------
    int
        ``seed``.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # (only when the setting changes: the first call costs seconds, it imports torch's compiler stack)
    if bool(deterministic) != torch.are_deterministic_algorithms_enabled() or (
        deterministic and not torch.is_deterministic_algorithms_warn_only_enabled()
    ):
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False
    return seed


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


# --------------------------------------------------------------------------------------------------
# distributed
# --------------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    """Where this process stands in a (possibly trivial) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main: bool = True
    enabled: bool = False


def get_dist_info() -> DistInfo:
    """The current process group's :class:`DistInfo` (a single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistInfo(
            rank=rank,
            world_size=dist.get_world_size(),
            local_rank=_env_int("LOCAL_RANK", rank) or 0,
            is_main=rank == 0,
            enabled=dist.get_world_size() > 1,
        )
    return DistInfo()


def is_main_process() -> bool:
    """Rank 0 of the process group — or, before the group is started (``train`` starts it), of the
    ``torchrun`` launch (``RANK``); True for a single process. For "one writer" file output."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return (_env_int("RANK", 0) or 0) == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Initialise ``torch.distributed`` from torchrun's environment variables.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (as set by
    ``torchrun`` / ``python -m torch.distributed.run``).  Does nothing when ``WORLD_SIZE`` is unset or
    1, or when a process group already exists.

    Parameters
    ----------
    backend : str, optional
        Default: ``"nccl"`` when CUDA is available, else ``"gloo"``.  With NCCL the current CUDA
        device is set to ``LOCAL_RANK``.

    Returns
    -------
    DistInfo
    """
    if dist.is_available() and dist.is_initialized():
        return get_dist_info()
    world = _env_int("WORLD_SIZE", 1) or 1
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with "
            "`torchrun --nproc_per_node N script.py` (or unset WORLD_SIZE for one process)"
        )
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, is_main=rank == 0, enabled=True)


def cleanup_distributed() -> None:
    """Destroy the process group if one exists (call once, at the end of a torchrun script).

    Every rank waits for the others first: rank 0 hosts the rendezvous store, and a rank that tears its
    group down while another is still in a collective makes gloo abort ("terminate called without an
    active exception", seen in CI).
    """
    if dist.is_available() and dist.is_initialized():
        barrier(get_dist_info())
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def comm_device() -> torch.device:
    """Where a collective's tensors must be: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value):
    """Mean of ``value`` over all ranks (identity without a process group).

    Parameters
    ----------
    value : float or torch.Tensor
        Every rank must call this with the same type and shape (it is a collective).

    Returns
    -------
    float or torch.Tensor
        Same kind as the input (a new tensor on the input's device).
    """
    info = get_dist_info()
    if torch.is_tensor(value):
        if not info.enabled:
            return value
        t = value.detach().clone()
        if not t.is_floating_point():
            t = t.double()
        orig = t.device
        t = t.to(comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / info.world_size).to(orig)
    value = float(value)
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing without a process group; under NCCL on the current CUDA device)."""
    if info.enabled:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# --------------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------------
def to_device(batch, device: torch.device | str, non_blocking: bool = True):
    """Recursively move the tensors of a batch to ``device``.

    Dicts (and other mappings), lists, tuples and namedtuples are rebuilt with the same type;
    anything that is not a tensor (strings, ids, numpy arrays) is returned unchanged.
    ``non_blocking`` only has an effect for pinned CPU memory going to CUDA.
    """
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        items = {k: to_device(v, device, non_blocking) for k, v in batch.items()}
        try:
            return type(batch)(items)
        except TypeError:
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch
