"""One training loop for every stage of the project.

The CAM classifier, AffinityNet, EDAM, EPS, Box2Seg and the DeepLab-style segmenter all train through
:func:`train`; what differs between them is only a *step function* (forward + loss for one batch), the
data set and a :class:`TrainConfig`.  The loop follows the torchvision-references training contract
(``references/segmentation/train.py``): device selection, seeding and deterministic algorithms,
torchrun environment variables and ``DistributedDataParallel``, AMP with a ``GradScaler``, poly LR with
warm-up, a checkpoint dict holding model / optimizer / scheduler / scaler, saving on the main process
only, and ``resume``.

Minimal use::

    from wsss_core.engine import TrainConfig, train, to_device

    def step(model, batch, device):
        images, labels = to_device(batch, device)
        logits = model(images)
        loss = F.multilabel_soft_margin_loss(logits, labels)
        return {"loss": loss, "acc": ((logits > 0) == (labels > 0.5)).float().mean()}

    history = train(model, step, dataset, TrainConfig(epochs=20, lr=1e-3, checkpoint_dir="runs/cam"))
    history.plot()

Run the same script with ``torchrun --nproc_per_node N script.py`` and it trains data-parallel:
:func:`train` reads torchrun's environment variables and sets everything up.

Resume policy
-------------
With ``checkpoint_dir`` set, ``checkpoint_dir/last.pt`` is written atomically after every epoch (by
rank 0 only).  When ``resume=True`` and that file exists, training continues after the last completed
epoch and is bit-for-bit the run that was interrupted (RNG states, optimizer, scheduler and scaler are
restored; data order is a function of ``(seed, epoch)``).  If the stored run already finished, the
trained weights are loaded into ``model`` and the stored :class:`History` is returned at once - so a
notebook re-runs its training cells in seconds.

A checkpoint written under a *different* configuration is **not** silently reused or overwritten:
:func:`train` raises :class:`CheckpointMismatchError` listing the fields that differ, and tells the user
to delete the folder, pick another ``checkpoint_dir`` or pass ``resume=False`` (which starts afresh and
overwrites).  Every field that changes the optimisation trajectory counts, ``epochs`` included (the LR
schedule spans all epochs, so "the same run, but longer" is a different run), as does the number of
processes.  Fields that do not change the result are free to differ: ``progress``, ``desc``,
``num_workers``, ``checkpoint_dir``, ``resume``, ``device``, ``amp``, ``deterministic`` and
``find_unused_parameters`` (so a run may be resumed on another machine).  A checkpoint of another
format version (``version`` in ``last.pt``) is refused the same way.  The message is one line: the
file, every field that differs, what to do.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .atomic import atomic_path
from .stages import store

__all__ = [
    "select_device",
    "seed_everything",
    "DistInfo",
    "init_distributed",
    "get_dist_info",
    "cleanup_distributed",
    "unwrap",
    "all_reduce_mean",
    "to_device",
    "TrainConfig",
    "History",
    "TrainState",
    "CheckpointMismatchError",
    "train",
    "load_checkpoint_weights",
    "is_finished",
    "predict",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "last.pt"
_CHECKPOINT_VERSION = 1


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


def _seed_worker(worker_id: int) -> None:
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
        _barrier(get_dist_info())
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


def _comm_device() -> torch.device:
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
        t = t.to(_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / info.world_size).to(orig)
    value = float(value)
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def _barrier(info: DistInfo) -> None:
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


# --------------------------------------------------------------------------------------------------
# config and history
# --------------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


# a TrainConfig field annotated "int", "float" or "bool" (optionally "| None") is checked by its annotation
_TYPE_CHECKS = {"int": ("an int", _is_int), "float": ("a number", _is_real), "bool": ("a bool", _is_bool)}


@dataclass
class TrainConfig:
    """Everything that defines a training run (one per stage; profiles are presets of it).

    Attributes
    ----------
    epochs : int
        Passes over the data.
    batch_size : int
        Batch size **per process** (torchvision convention): the global batch under torchrun is
        ``batch_size × WORLD_SIZE``.
    lr : float
        Base learning rate; a parameter group's lr is ``lr × lr_mult × schedule factor``.
    weight_decay : float
        Default weight decay (a parameter group may override it).
    optimizer : {"sgd", "adam", "adamw"}
        ``sgd`` uses ``momentum`` (no Nesterov); ``adam``'s weight decay is L2 (coupled), ``adamw``'s
        decoupled.
    momentum : float
        SGD momentum.
    schedule : {"onecycle", "poly", "cosine", "constant"}
        Stepped every iteration over ``T = epochs × iterations per epoch``:
        ``poly`` ``(1 - t/T)^poly_power`` (DeepLab), ``cosine`` ``½(1 + cos(π t/T))``, ``constant`` 1,
        ``onecycle`` :class:`torch.optim.lr_scheduler.OneCycleLR` with its defaults (peak ``lr`` at 30 %
        of ``T``, start ``lr/25``, end ``lr/25e4``, cosine annealing, momentum / Adam β1 cycled
        0.95 → 0.85 → 0.95; not cycled for SGD with ``momentum=0``).
    poly_power : float
        Exponent of the poly schedule.
    warmup_iters : int
        Linear warm-up from ``0.1×`` to ``1×`` over the first ``warmup_iters`` iterations, multiplied
        into ``poly`` / ``cosine`` / ``constant``.  Must be 0 with ``onecycle`` (it warms up itself).
    amp : bool or {"auto", "fp16", "bf16"}
        Mixed precision.  ``"auto"``: fp16 autocast + ``GradScaler`` on CUDA, off elsewhere.
        ``True``: fp16 + scaler on CUDA, bfloat16 autocast (no scaler) on CPU / MPS.
        ``"fp16"`` / ``"bf16"`` force the dtype (the scaler is used for CUDA fp16 only).
    device : str
        See :func:`select_device`.
    num_workers : int
        DataLoader worker processes (0 = load in the main process; safest in notebooks).
    seed : int
        Seeds the global RNGs (``seed + rank``) and the data order (a function of seed and epoch).
    deterministic : bool
        See :func:`seed_everything`.
    checkpoint_dir : str or None
        Where ``last.pt`` goes; ``None`` = no checkpoints, no resume.
    resume : bool
        Continue from ``checkpoint_dir/last.pt`` if it exists (see the module docstring for the
        policy on mismatching configurations).
    grad_clip : float or None
        Clip the global gradient norm (after unscaling).
    progress : bool
        Show a tqdm bar per epoch (rank 0 only).
    drop_last : bool
        Drop the last incomplete batch (and, under DDP, the samples that do not divide evenly).
    shuffle : bool
        Shuffle the data every epoch.
    max_iters_per_epoch : int or None
        Cap the iterations per epoch (smoke runs).
    find_unused_parameters : bool
        Passed to ``DistributedDataParallel``.
    desc : str
        Progress-bar label and error-message prefix.

    A field of the wrong type (``epochs="3"``, ``lr="0.1"``) raises ``TypeError`` naming the field, at
    construction (also through :meth:`from_dict` and :meth:`replace`); numpy numbers are accepted.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "onecycle"
    poly_power: float = 0.9
    warmup_iters: int = 0
    amp: bool | str = "auto"
    device: str = "auto"
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = False
    checkpoint_dir: str | None = None
    resume: bool = True
    grad_clip: float | None = None
    progress: bool = True
    drop_last: bool = True
    shuffle: bool = True
    max_iters_per_epoch: int | None = None
    find_unused_parameters: bool = False
    desc: str = "train"

    def __post_init__(self) -> None:
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        for f in dataclasses.fields(self):
            base, _, rest = str(f.type).partition(" | ")
            if base not in _TYPE_CHECKS or rest not in ("", "None"):
                continue  # str fields, and amp (bool | str), are checked where they are used
            kind, ok = _TYPE_CHECKS[base]
            v = getattr(self, f.name)
            if not (ok(v) or (v is None and rest == "None")):
                raise TypeError(f"TrainConfig.{f.name} must be {kind}{' or None' if rest else ''}, "
                                f"got {v!r} ({type(v).__name__})")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("onecycle", "poly", "cosine", "constant"):
            raise ValueError(
                f"schedule must be 'onecycle', 'poly', 'cosine' or 'constant', got {self.schedule!r}"
            )
        if isinstance(self.amp, str) and self.amp not in ("auto", "fp16", "bf16"):
            raise ValueError(f"amp must be a bool or 'auto', 'fp16', 'bf16', got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.warmup_iters < 0:
            raise ValueError("warmup_iters must be >= 0")
        if self.schedule == "onecycle" and self.warmup_iters > 0:
            raise ValueError(
                "warmup_iters must be 0 with schedule='onecycle' (one-cycle warms up by itself); "
                "use schedule='poly' or 'cosine' with a warm-up"
            )
        if self.max_iters_per_epoch is not None and self.max_iters_per_epoch < 1:
            raise ValueError("max_iters_per_epoch must be >= 1 or None")

    def to_dict(self) -> dict:
        """A plain dict of the fields (JSON-friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys raise ``ValueError`` (catches typos in presets)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**dict(d))

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)




class CheckpointMismatchError(ValueError):
    """``checkpoint_dir`` holds a run made with a different configuration."""


def _plain(value, where: str):
    """Convert tensors / numpy values to Python builtins; reject other objects."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise TypeError(
        f"{where}: cannot store a {type(value).__name__} in the history; return numbers, strings, "
        "lists or dicts of them"
    )


@dataclass
class History:
    """What a training run logged.

    Attributes
    ----------
    iters : list of dict
        One record per iteration: ``epoch`` (0-based), ``iter`` (global, 0-based), ``batch`` (index in
        the epoch), ``lr`` (first parameter group; ``lr_g1``, ``lr_g2`` ... for the others), ``loss``
        and every other scalar the step function returned - all averaged over ranks under DDP.
    epochs : list of dict
        One record per epoch: ``epoch``, ``loss`` and the other scalars' epoch means, ``lr`` at the
        end, ``seconds``, ``end_iter`` (global iterations done), and the metrics ``eval_fn`` returned
        (a key clashing with these gets an ``eval_`` prefix).
    """

    iters: list = field(default_factory=list)
    epochs: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"iters": [dict(r) for r in self.iters], "epochs": [dict(r) for r in self.epochs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "History":
        return cls(iters=[dict(r) for r in d.get("iters", [])], epochs=[dict(r) for r in d.get("epochs", [])])

    def __len__(self) -> int:
        return len(self.epochs)

    def last(self, key: str):
        """The latest value of ``key``: from the epoch records if there, else the iteration records."""
        for records in (self.epochs, self.iters):
            for r in reversed(records):
                if key in r:
                    return r[key]
        raise KeyError(f"{key!r} was never logged")

    def series(self, key: str, level: str = "iters") -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` arrays of ``key`` per iteration (``x = iter``) or per epoch (``x = end_iter``)."""
        records = self.iters if level == "iters" else self.epochs
        xkey = "iter" if level == "iters" else "end_iter"
        pairs = [(r[xkey], r[key]) for r in records if key in r and isinstance(r[key], (int, float))]
        if not pairs:
            return np.zeros(0), np.zeros(0)
        x, y = zip(*pairs)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def plot(self, ax=None, keys: Sequence[str] = ("loss",), smooth: float | None = None):
        """Plot logged values against the iteration.

        For each key: the raw per-iteration values (faint), an exponential moving average
        (``smooth`` = EMA weight of the new value; default ``min(1, 20 / n_iters)``), and the epoch
        values as markers at the end of each epoch (epoch means, or ``eval_fn`` metrics, which exist
        only per epoch).

        Returns
        -------
        matplotlib.axes.Axes
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        if isinstance(keys, str):
            keys = (keys,)
        for i, key in enumerate(keys):
            color = f"C{i}"
            x, y = self.series(key, "iters")
            if x.size:
                ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
                a = smooth if smooth is not None else min(1.0, 20.0 / x.size)
                ema = np.empty_like(y)
                acc = y[0]
                for j, v in enumerate(y):
                    acc = a * v + (1 - a) * acc if j else v
                    ema[j] = acc
                ax.plot(x, ema, color=color, lw=1.5, label=f"{key} (smoothed)")
            ex, ey = self.series(key, "epochs")
            if ex.size:
                ax.plot(ex, ey, "o-" if not x.size else "o", color=color, ms=4,
                        label=f"{key} (epoch)" if x.size else key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        return ax


@dataclass
class TrainState:
    """What callbacks see (attributes are live objects, not copies)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    cfg: TrainConfig
    device: torch.device
    dist: DistInfo
    history: History
    epoch: int = 0
    iteration: int = 0
    iters_per_epoch: int = 0
    outputs: dict | None = None


# --------------------------------------------------------------------------------------------------
# building blocks of train()
# --------------------------------------------------------------------------------------------------
def _amp_setup(amp, device: torch.device) -> tuple[bool, torch.dtype | None, bool]:
    """``(enabled, dtype, use_scaler)`` for the autocast context."""
    if amp == "auto":
        amp = device.type == "cuda"
    if amp is False:
        return False, None, False
    if amp is True:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    elif amp == "fp16":
        dtype = torch.float16
    elif amp == "bf16":
        dtype = torch.bfloat16
    else:
        raise ValueError(f"bad amp value {amp!r}")
    return True, dtype, (device.type == "cuda" and dtype == torch.float16)


def _build_param_groups(model: nn.Module, cfg: TrainConfig, param_groups) -> list[dict]:
    if param_groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params}]
    else:
        groups = [dict(g) for g in param_groups(model)]
    out = []
    seen = set()
    for i, g in enumerate(groups):
        if "params" not in g:
            raise ValueError(f"param_groups()[{i}] has no 'params'")
        params = [p for p in g["params"] if p.requires_grad]
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter appears in more than one group (group {i})")
            seen.add(id(p))
        if not params:
            continue
        mult = float(g.pop("lr_mult", 1.0))
        g["params"] = params
        g["lr_mult"] = mult
        g["lr"] = cfg.lr * mult
        g.setdefault("weight_decay", cfg.weight_decay)
        out.append(g)
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def _build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, it: int, total: int) -> float:
    """The LambdaLR factor at (0-based) iteration ``it`` of ``total`` for ``poly`` / ``cosine`` /
    ``constant`` schedules, warm-up included: ``lr(it) = base_lr × lr_mult × lr_factor(cfg, it, total)``.
    """
    t = min(it, total) / max(total, 1)
    if cfg.schedule == "poly":
        f = (1.0 - t) ** cfg.poly_power
    elif cfg.schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif cfg.schedule == "constant":
        f = 1.0
    else:
        raise ValueError(f"lr_factor() does not cover schedule {cfg.schedule!r}")
    if cfg.warmup_iters and it < cfg.warmup_iters:
        f *= 0.1 + 0.9 * it / cfg.warmup_iters
    return f


def _build_scheduler(optimizer, cfg: TrainConfig, total: int):
    if cfg.schedule == "onecycle":
        cycle = not (cfg.optimizer == "sgd" and cfg.momentum == 0)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            cycle_momentum=cycle,
        )

    def factor(it: int) -> float:  # a plain function: LambdaLR does not pickle it (state = counters)
        return lr_factor(cfg, it, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _data_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


def _build_loader(dataset, cfg: TrainConfig, info: DistInfo, device, collate_fn, sampler):
    generator = torch.Generator()
    generator.manual_seed(_data_seed(cfg.seed, 0))
    if sampler is None:
        if info.enabled:
            sampler = DistributedSampler(
                dataset,
                num_replicas=info.world_size,
                rank=info.rank,
                shuffle=cfg.shuffle,
                seed=cfg.seed,
                drop_last=cfg.drop_last,
            )
        elif cfg.shuffle:
            sampler = RandomSampler(dataset, generator=generator)
        else:
            sampler = SequentialSampler(dataset)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        drop_last=cfg.drop_last,
        worker_init_fn=_seed_worker if cfg.num_workers > 0 else None,
        generator=generator,
    )
    return loader, sampler, generator


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (atomic)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _config_diff(stored: Mapping, cfg: TrainConfig) -> list[str]:
    current = cfg.to_dict()
    diffs = []
    for key in sorted(set(stored) | set(current)):
        if key in store.RESUME_TOLERATED_FIELDS:  # fields a checkpoint may differ in from the run resuming it
            continue
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if a != b:
            diffs.append(f"{key}: {a!r} (checkpoint) != {b!r} (now)")
    return diffs


def _scalar(value, key: str) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise TypeError(
                f"step_fn returned {key!r} with shape {tuple(value.shape)}; logged values must be "
                "scalars (prefix the key with '_' to pass it to callbacks without logging)"
            )
        return float(value.detach().float().item())
    if isinstance(value, (int, float, np.number, np.bool_)):
        return float(value)
    raise TypeError(
        f"step_fn returned {key!r} of type {type(value).__name__}; logged values must be scalars "
        "(prefix the key with '_' to pass it to callbacks without logging)"
    )


_HOOKS = ("on_train_start", "on_epoch_start", "on_iter_end", "on_epoch_end", "on_train_end")


def _callback(callbacks, name: str, state: TrainState) -> None:
    for cb in callbacks:
        if any(hasattr(cb, h) for h in _HOOKS):
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(state)
        elif name == "on_epoch_end":
            cb(state)


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------
def train(
    model: nn.Module,
    step_fn: Callable[[nn.Module, Any, torch.device], Mapping[str, Any]],
    dataset: Dataset,
    cfg: TrainConfig | Mapping[str, Any] | None = None,
    *,
    collate_fn: Callable | None = None,
    param_groups: Callable[[nn.Module], Iterable[dict]] | None = None,
    eval_fn: Callable[[nn.Module, int], Mapping[str, Any]] | None = None,
    sampler: Sampler | None = None,
    callbacks: Sequence[Any] | None = None,
) -> History:
    """Train ``model`` in place and return its :class:`History`.

    Parameters
    ----------
    model : nn.Module
        Moved to the selected device; wrapped in ``DistributedDataParallel`` under torchrun.
    step_fn : callable ``(model, batch, device) -> dict``
        Forward pass and loss for one batch, run under autocast.  It must move the batch itself
        (:func:`to_device`) and call ``model(...)`` (the DDP wrapper - go through its ``forward`` so
        that gradients are synchronised; use :func:`unwrap` only to read attributes).  Returns
        ``{"loss": scalar tensor, **other_scalars}``; other floats / 0-d tensors are logged, keys
        starting with ``_`` are passed to callbacks (``state.outputs``) but not logged.
    dataset : Dataset
        Map-style data set; the DataLoader is built here (``cfg.batch_size`` per process).
    cfg : TrainConfig or dict, optional
    collate_fn : callable, optional
        Passed to the DataLoader.
    param_groups : callable ``(model) -> list of dict``, optional
        Parameter groups with ``"params"`` and optionally ``"lr_mult"`` (× ``cfg.lr``; PSA / IRN use
        1×, 2×, 10×, 20×) and ``"weight_decay"``; default one group of all trainable parameters.
    eval_fn : callable ``(model, epoch) -> dict``, optional
        Called on every rank after each epoch with the unwrapped model (it may reduce across ranks
        itself, e.g. with :meth:`wsss_core.metrics.ConfusionMatrix.reduce_from_all_processes`); the
        returned numbers are stored in the epoch's history record.  It should put the model in eval
        mode itself; the next epoch puts it back in train mode.
    sampler : Sampler, optional
        Replaces the default sampler (``shuffle`` is then ignored; ``set_epoch`` is called if present).
    callbacks : list, optional
        Objects with any of ``on_train_start``, ``on_epoch_start``, ``on_iter_end``, ``on_epoch_end``,
        ``on_train_end`` methods taking a :class:`TrainState`; a plain callable is called at epoch
        end.  ``on_epoch_end`` runs after the checkpoint is written.

    Returns
    -------
    History

    Raises
    ------
    FloatingPointError
        A non-finite loss (names the epoch and iteration); raised on every rank together.
    CheckpointMismatchError
        ``checkpoint_dir/last.pt`` was written with a different configuration (see the module
        docstring).

    Notes
    -----
    * Global RNGs are seeded with ``cfg.seed + rank``; the data order depends only on
      ``(cfg.seed, epoch)`` (a reseeded ``torch.Generator``, or ``DistributedSampler.set_epoch``),
      so a resumed run replays the uninterrupted one exactly.  Seed before building the model to make
      its initialisation reproducible too.
    * Under torchrun the process group is initialised here (gloo on CPU, NCCL on CUDA) and left
      open for later evaluation; call :func:`cleanup_distributed` at the end of the script.
    """
    if cfg is None:
        cfg = TrainConfig()
    elif isinstance(cfg, Mapping):
        cfg = TrainConfig.from_dict(cfg)
    callbacks = list(callbacks or [])

    device = select_device(cfg.device)
    info = init_distributed(backend="nccl" if device.type == "cuda" else "gloo")
    seed_everything(cfg.seed + info.rank, cfg.deterministic)
    amp_on, amp_dtype, use_scaler = _amp_setup(cfg.amp, device)

    model = unwrap(model)
    model.to(device)

    loader, sampler, generator = _build_loader(dataset, cfg, info, device, collate_fn, sampler)
    n_batches = len(loader)
    if n_batches == 0:
        raise ValueError(
            f"{cfg.desc}: the DataLoader yields no batch (dataset of {len(dataset)} samples, "
            f"batch_size={cfg.batch_size} per process, world_size={info.world_size}, "
            f"drop_last={cfg.drop_last})"
        )
    iters_per_epoch = min(n_batches, cfg.max_iters_per_epoch or n_batches)
    total_iters = cfg.epochs * iters_per_epoch

    optimizer = _build_optimizer(_build_param_groups(model, cfg, param_groups), cfg)
    scheduler = _build_scheduler(optimizer, cfg, total_iters)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    history = History()
    start_epoch = 0

    ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None
    found = bool(cfg.resume and ckpt_path is not None and ckpt_path.is_file())
    _barrier(info)  # every rank has looked for the checkpoint before rank 0 may write one
    if found:
        ckpt = _load(ckpt_path)
        diffs = _config_diff(ckpt.get("cfg", {}), cfg)
        if ckpt.get("world_size", 1) != info.world_size:
            diffs.append(f"world_size: {ckpt.get('world_size', 1)} (checkpoint) != {info.world_size} (now)")
        if ckpt.get("version", 1) != _CHECKPOINT_VERSION:
            diffs.insert(0, f"checkpoint format version: {ckpt.get('version', 1)!r} (checkpoint) != "
                            f"{_CHECKPOINT_VERSION} (this engine)")
        if diffs:  # one line: the file, what differs, what to do
            raise CheckpointMismatchError(
                f"{cfg.desc}: {ckpt_path} was written by a run with a different configuration: "
                + "; ".join(diffs)
                + f". Delete {cfg.checkpoint_dir}, choose another checkpoint_dir, or pass "
                "resume=False to start afresh (the checkpoint will be overwritten)."
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        history = History.from_dict(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        rng = ckpt.get("rng") or []
        if len(rng) == info.world_size:
            _set_rng_state(rng[info.rank])
        del ckpt
        if start_epoch >= cfg.epochs:
            return history

    ddp_model: nn.Module = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )

    state = TrainState(
        model=ddp_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, cfg=cfg,
        device=device, dist=info, history=history, iters_per_epoch=iters_per_epoch,
    )
    _callback(callbacks, "on_train_start", state)
    show = cfg.progress and info.is_main
    if show:
        from tqdm.auto import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        state.epoch = epoch
        ddp_model.train()
        generator.manual_seed(_data_seed(cfg.seed, epoch))
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        _callback(callbacks, "on_epoch_start", state)
        bar = (
            tqdm(total=iters_per_epoch, desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}", leave=True)
            if show
            else None
        )
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        data_iter = iter(loader)
        for b in range(iters_per_epoch):
            batch = next(data_iter)
            global_iter = epoch * iters_per_epoch + b
            lrs = [g["lr"] for g in optimizer.param_groups]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_on):
                out = step_fn(ddp_model, batch, device)
            if not isinstance(out, Mapping) or "loss" not in out:
                raise TypeError(f"{cfg.desc}: step_fn must return a dict with a 'loss' entry")
            loss = out["loss"]
            if not torch.is_tensor(loss) or loss.numel() != 1:
                raise TypeError(f"{cfg.desc}: step_fn's 'loss' must be a scalar tensor")
            keys = ["loss"] + sorted(k for k in out if k != "loss" and not str(k).startswith("_"))
            values = [_scalar(out[k], k) for k in keys]
            if info.enabled:  # one collective: rank means of all logged values (and the NaN check)
                t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                values = (t / info.world_size).tolist()
            logs = dict(zip(keys, values))
            if not math.isfinite(logs["loss"]):
                if bar is not None:
                    bar.close()
                raise FloatingPointError(
                    f"{cfg.desc}: non-finite loss ({logs['loss']}) at epoch {epoch} (0-based), "
                    f"iteration {b} of the epoch (global iteration {global_iter}); lower the lr, set "
                    "grad_clip, or check the inputs / labels (and amp)"
                )
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            record = {"epoch": epoch, "iter": global_iter, "batch": b, "lr": lrs[0]}
            for gi, lr in enumerate(lrs[1:], start=1):
                record[f"lr_g{gi}"] = lr
            record.update(logs)
            history.iters.append(record)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            state.iteration = global_iter
            state.outputs = dict(out)
            _callback(callbacks, "on_iter_end", state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / (b + 1):.4f}", lr=f"{lrs[0]:.2e}", refresh=False)
        del data_iter

        epoch_rec = {"epoch": epoch}
        epoch_rec.update({k: v / iters_per_epoch for k, v in sums.items()})
        epoch_rec["lr"] = history.iters[-1]["lr"]
        epoch_rec["seconds"] = time.perf_counter() - t0
        epoch_rec["end_iter"] = (epoch + 1) * iters_per_epoch
        if eval_fn is not None:
            metrics = eval_fn(model, epoch) or {}
            for k, v in metrics.items():
                k = str(k)
                epoch_rec[f"eval_{k}" if k in epoch_rec else k] = _plain(v, f"eval_fn()[{k!r}]")
        history.epochs.append(epoch_rec)
        if bar is not None:
            bar.set_postfix(
                {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in epoch_rec.items()
                 if k not in ("epoch", "end_iter", "seconds", "lr")},
                refresh=True,
            )
            bar.close()

        if ckpt_path is not None:
            rng = _rng_state()
            if info.enabled:
                gathered: list = [None] * info.world_size
                dist.all_gather_object(gathered, rng)
            else:
                gathered = [rng]
            if info.is_main:
                _atomic_save(
                    {
                        "version": _CHECKPOINT_VERSION,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                        "finished": epoch + 1 >= cfg.epochs,
                        "history": history.to_dict(),
                        "cfg": cfg.to_dict(),
                        "world_size": info.world_size,
                        "rng": gathered,
                    },
                    ckpt_path,
                )
        _callback(callbacks, "on_epoch_end", state)

    _callback(callbacks, "on_train_end", state)
    return history


# --------------------------------------------------------------------------------------------------
# reuse and inference
# --------------------------------------------------------------------------------------------------
def is_finished(checkpoint_dir) -> bool:
    """Whether ``checkpoint_dir`` holds a finished training (``last.pt`` with ``finished``): :func:`train`
    would reload it instead of training. A missing or unreadable file is not finished (``train`` says why)."""
    p = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not p.is_file():
        return False
    try:
        return bool(torch.load(p, map_location="cpu", weights_only=False).get("finished"))
    except Exception:  # noqa: BLE001 - a broken file is retrained
        return False


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load weights into ``model`` from a :func:`train` checkpoint or a bare ``state_dict`` file.

    A ``"model"`` entry is used when present; a ``module.`` prefix (saved from a DDP model) is
    stripped.  Loaded on the CPU with ``weights_only=True``, then copied into ``model``'s tensors.

    Returns
    -------
    nn.Module
        ``model`` (the unwrapped module), for chaining.
    """
    obj = _load(path)
    state = obj["model"] if isinstance(obj, Mapping) and "model" in obj else obj
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds no state_dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    target = unwrap(model)
    target.load_state_dict(state, strict=strict)
    return target


class _ShardSampler(Sampler):
    """Indices ``rank, rank + W, rank + 2W, ...`` - every sample exactly once over all ranks."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    fn: Callable[[nn.Module, Any, torch.device], Any],
    batch_size: int = 16,
    device: str | torch.device | None = None,
    collate_fn: Callable | None = None,
    progress: bool = True,
    num_workers: int = 0,
    desc: str = "predict",
    shard: bool = True,
) -> list:
    """Run ``fn(model, batch, device)`` over a data set in order, without gradients, in eval mode.

    Parameters
    ----------
    model : nn.Module
        Put in eval mode for the call (its previous mode is restored afterwards).
    dataset : Dataset
    fn : callable ``(model, batch, device) -> Any``
        Moves the batch (:func:`to_device`) and returns whatever is wanted (predictions, metrics
        updates, ...).
    batch_size : int, default 16
    device : str or torch.device, optional
        ``None``: the device the model's parameters are on.  Otherwise :func:`select_device` and the
        model is moved there.
    collate_fn : callable, optional
    progress : bool, default True
        tqdm bar (main rank only).
    num_workers : int, default 0
    shard : bool, default True
        Under torchrun, split the data across ranks (every rank must call). ``False``: the calling
        rank processes the whole data set (evaluation done on rank 0 only).

    Returns
    -------
    list
        One ``fn`` result per batch.  Single process: in data-set order.  Under torchrun each rank
        processes only its share - samples ``rank, rank + W, ...`` (no padding duplicates, unlike
        ``DistributedSampler``) - and returns only its own results; reduce metrics across ranks
        (e.g. :meth:`ConfusionMatrix.reduce_from_all_processes`) or gather them yourself.
    """
    model = unwrap(model)
    if device is None:
        device = _model_device(model)
    else:
        device = select_device(device)
        model.to(device)
    info = get_dist_info()
    sampler = _ShardSampler(len(dataset), info.rank, info.world_size) if info.enabled and shard else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        drop_last=False,
        # an own generator: a DataLoader otherwise draws its base seed from the global RNG, so that an
        # evaluation between epochs would change the training run's augmentation and dropout draws
        generator=torch.Generator().manual_seed(0),
    )
    was_training = model.training
    model.eval()
    results = []
    try:
        iterator = loader
        if progress and info.is_main:
            from tqdm.auto import tqdm

            iterator = tqdm(loader, desc=desc, leave=False)
        for batch in iterator:
            results.append(fn(model, batch, device))
    finally:
        model.train(was_training)
    return results
