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

Where things are
----------------
This module holds :class:`TrainConfig` and :func:`train` (set-up, epoch loop, one step); the rest lives in
rooms of its own, every public name re-exported here (``engine.select_device``, ``engine.predict`` ...):

* :mod:`wsss_core.distributed` - devices, seeds, torchrun process groups, :func:`to_device`, :func:`unwrap`;
* :mod:`wsss_core.optim` - parameter groups, optimizer, LR schedule (:func:`lr_factor`), AMP set-up;
* :mod:`wsss_core.checkpoints` - ``last.pt``: save, resume and its checks, :func:`is_finished`,
  :func:`load_checkpoint_weights`;
* :mod:`wsss_core.history` - :class:`History`, the iteration / epoch records, the progress bar;
* :mod:`wsss_core.inference` - :func:`predict`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

# the rooms of the engine; their public names are re-exported (stages, notebooks and tests use engine.<name>)
from . import checkpoints
from .checkpoints import CHECKPOINT_NAME, CheckpointMismatchError, is_finished, load_checkpoint_weights
from .distributed import (
    DistInfo,
    all_reduce_mean,
    cleanup_distributed,
    get_dist_info,
    init_distributed,
    is_main_process,
    seed_everything,
    seed_worker,
    select_device,
    to_device,
    unwrap,
)
from .history import History, bar_end, bar_step, epoch_record, iter_record, logged_values, progress_bar
from .inference import predict
from .optim import amp_setup, build_optimizer, build_param_groups, build_scheduler, lr_factor

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


# --------------------------------------------------------------------------------------------------
# the configuration
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
            if isinstance(v, np.generic):  # accepted, stored as the Python number: same identity, picklable
                setattr(self, f.name, v.item())
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


# --------------------------------------------------------------------------------------------------
# what callbacks see
# --------------------------------------------------------------------------------------------------
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
# data and callbacks
# --------------------------------------------------------------------------------------------------
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
        worker_init_fn=seed_worker if cfg.num_workers > 0 else None,
        generator=generator,
    )
    return loader, sampler, generator


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
# the pieces of train(): set-up, one step, one epoch
# --------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """The objects of one :func:`train` call, built by :func:`_set_up` and shared by its pieces."""

    cfg: TrainConfig
    device: torch.device
    info: DistInfo
    amp_on: bool
    amp_dtype: torch.dtype | None
    model: nn.Module  # the plain module: what is saved, what eval_fn sees
    loader: DataLoader
    sampler: Any
    generator: torch.Generator
    iters_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ckpt_path: Path | None
    history: History = field(default_factory=History)  # the resumed one, once train() has looked
    ddp_model: nn.Module | None = None  # what step_fn gets: model, or its DDP wrapper (set by train())


def _set_up(model, dataset, cfg: TrainConfig, collate_fn, param_groups, sampler) -> _Run:
    """Device, process group, seeds, AMP, the model on its device, the DataLoader, optimizer, scheduler and
    scaler - in this order (the RNG draws of a run depend on it)."""
    device = select_device(cfg.device)
    info = init_distributed(backend="nccl" if device.type == "cuda" else "gloo")
    seed_everything(cfg.seed + info.rank, cfg.deterministic)
    amp_on, amp_dtype, use_scaler = amp_setup(cfg.amp, device)

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

    optimizer = build_optimizer(build_param_groups(model, cfg, param_groups), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_iters)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return _Run(
        cfg=cfg, device=device, info=info, amp_on=amp_on, amp_dtype=amp_dtype, model=model, loader=loader,
        sampler=sampler, generator=generator, iters_per_epoch=iters_per_epoch, optimizer=optimizer,
        scheduler=scheduler, scaler=scaler, ckpt_path=checkpoints.checkpoint_path(cfg),
    )


def _wrap_ddp(run: _Run) -> nn.Module:
    """``run.model`` in ``DistributedDataParallel`` under torchrun, else itself."""
    if not run.info.enabled:
        return run.model
    return nn.parallel.DistributedDataParallel(
        run.model,
        device_ids=[run.device.index] if run.device.type == "cuda" else None,
        find_unused_parameters=run.cfg.find_unused_parameters,
    )


def _step(run: _Run, step_fn, batch, epoch: int, b: int, global_iter: int, bar) -> tuple[Mapping, dict, list]:
    """One optimisation step on ``batch``: ``step_fn`` under autocast, the logged values (a non-finite
    loss stops the run before any update), backward through the scaler, optional gradient clipping,
    optimizer and scheduler steps. Returns ``(step_fn's output, logged values, lrs used)``."""
    cfg, optimizer, scaler = run.cfg, run.optimizer, run.scaler
    lrs = [g["lr"] for g in optimizer.param_groups]
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_on):
        out = step_fn(run.ddp_model, batch, run.device)
    if not isinstance(out, Mapping) or "loss" not in out:
        raise TypeError(f"{cfg.desc}: step_fn must return a dict with a 'loss' entry")
    loss = out["loss"]
    if not torch.is_tensor(loss) or loss.numel() != 1:
        raise TypeError(f"{cfg.desc}: step_fn's 'loss' must be a scalar tensor")
    logs = logged_values(out, run.info)
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
        torch.nn.utils.clip_grad_norm_(run.ddp_model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    run.scheduler.step()
    return out, logs, lrs


def _epoch_steps(run: _Run, state: TrainState, step_fn, callbacks: list, epoch: int, bar) -> dict[str, float]:
    """The steps of one epoch, each logged in the history, ``on_iter_end`` after each; returns the sums
    of the logged values."""
    sums: dict[str, float] = {}
    data_iter = iter(run.loader)
    for b in range(run.iters_per_epoch):
        batch = next(data_iter)
        global_iter = epoch * run.iters_per_epoch + b
        out, logs, lrs = _step(run, step_fn, batch, epoch, b, global_iter, bar)
        run.history.iters.append(iter_record(epoch, global_iter, b, lrs, logs))
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        state.iteration = global_iter
        state.outputs = dict(out)
        _callback(callbacks, "on_iter_end", state)
        bar_step(bar, sums["loss"] / (b + 1), lrs[0])
    del data_iter
    return sums


def _epoch(run: _Run, state: TrainState, step_fn, eval_fn, callbacks: list, epoch: int) -> None:
    """One epoch: the data order of ``(seed, epoch)``, ``on_epoch_start``, the steps, the epoch record
    (with ``eval_fn``'s metrics), the checkpoint, then ``on_epoch_end``."""
    cfg = run.cfg
    state.epoch = epoch
    run.ddp_model.train()
    run.generator.manual_seed(_data_seed(cfg.seed, epoch))
    if hasattr(run.sampler, "set_epoch"):
        run.sampler.set_epoch(epoch)
    _callback(callbacks, "on_epoch_start", state)
    bar = progress_bar(cfg.progress and run.info.is_main, run.iters_per_epoch,
                       f"{cfg.desc} {epoch + 1}/{cfg.epochs}")
    t0 = time.perf_counter()
    sums = _epoch_steps(run, state, step_fn, callbacks, epoch, bar)

    lr, seconds = run.history.iters[-1]["lr"], time.perf_counter() - t0
    metrics = (eval_fn(run.model, epoch) or {}) if eval_fn is not None else {}
    record = epoch_record(epoch, sums, run.iters_per_epoch, lr, seconds, metrics)
    run.history.epochs.append(record)
    bar_end(bar, record)

    if run.ckpt_path is not None:
        checkpoints.save(run.ckpt_path, cfg, run.info, model=run.model, optimizer=run.optimizer,
                         scheduler=run.scheduler, scaler=run.scaler, history=run.history, epoch=epoch)
    _callback(callbacks, "on_epoch_end", state)


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

    run = _set_up(model, dataset, cfg, collate_fn, param_groups, sampler)
    run.history, start_epoch = checkpoints.resume(
        run.ckpt_path, cfg, run.info,
        model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler,
    )
    if start_epoch >= cfg.epochs:  # a finished run: its weights are in model now
        return run.history

    run.ddp_model = _wrap_ddp(run)
    state = TrainState(
        model=run.ddp_model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler, cfg=cfg,
        device=run.device, dist=run.info, history=run.history, iters_per_epoch=run.iters_per_epoch,
    )
    _callback(callbacks, "on_train_start", state)
    for epoch in range(start_epoch, cfg.epochs):
        _epoch(run, state, step_fn, eval_fn, callbacks, epoch)
    _callback(callbacks, "on_train_end", state)
    return run.history
