"""The checkpoints of :func:`wsss_core.engine.train`: ``checkpoint_dir/last.pt``, written after every epoch
and read back to resume a run, to return a finished one at once, or to reuse its weights.

* :func:`save` - gathers every rank's RNG states, then rank 0 writes the checkpoint atomically (a
  temporary file renamed over ``last.pt``: a killed run leaves the previous checkpoint, never half of
  one);
* :func:`resume` - checks that the checkpoint was written by the same run (:class:`CheckpointMismatchError`
  otherwise) and restores model, optimizer, scheduler, scaler, :class:`~wsss_core.history.History` and RNG
  states;
* :func:`is_finished`, :func:`load_checkpoint_weights` - reuse of a checkpoint outside ``train``.

The resume policy (which configuration fields may differ, what a mismatch says) is described in
:mod:`wsss_core.engine`'s docstring; the fields a checkpoint may differ in are
:data:`wsss_core.stages.store.RESUME_TOLERATED_FIELDS`.

Contents of ``last.pt`` (format ``version`` 1): ``model``, ``optimizer``, ``scheduler`` and ``scaler``
state dicts, ``epoch`` (the last one completed, 0-based), ``finished``, ``history``
(``History.to_dict()``), ``cfg`` (``TrainConfig.to_dict()``), ``world_size`` and ``rng`` (one entry per
rank).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .atomic import atomic_path
from .distributed import DistInfo, barrier, unwrap
from .history import History
from .stages import store

if TYPE_CHECKING:
    from .engine import TrainConfig

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointMismatchError",
    "checkpoint_path",
    "resume",
    "save",
    "is_finished",
    "load_checkpoint_weights",
]

CHECKPOINT_NAME = "last.pt"
_CHECKPOINT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """``checkpoint_dir`` holds a run made with a different configuration."""


def checkpoint_path(cfg: TrainConfig) -> Path | None:
    """``cfg.checkpoint_dir / last.pt``, or ``None`` without a ``checkpoint_dir``."""
    return Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None


# --------------------------------------------------------------------------------------------------
# RNG states and files
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# resume and save (called by train)
# --------------------------------------------------------------------------------------------------
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


def _check_compatible(ckpt: Mapping, path: Path, cfg: TrainConfig, info: DistInfo) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``ckpt`` was written by this run: same configuration
    (tolerated fields apart), same number of processes, same format version."""
    diffs = _config_diff(ckpt.get("cfg", {}), cfg)
    if ckpt.get("world_size", 1) != info.world_size:
        diffs.append(f"world_size: {ckpt.get('world_size', 1)} (checkpoint) != {info.world_size} (now)")
    if ckpt.get("version", 1) != _CHECKPOINT_VERSION:
        diffs.insert(0, f"checkpoint format version: {ckpt.get('version', 1)!r} (checkpoint) != "
                        f"{_CHECKPOINT_VERSION} (this engine)")
    if diffs:  # one line: the file, what differs, what to do
        raise CheckpointMismatchError(
            f"{cfg.desc}: {path} was written by a run with a different configuration: "
            + "; ".join(diffs)
            + f". Delete {cfg.checkpoint_dir}, choose another checkpoint_dir, or pass "
            "resume=False to start afresh (the checkpoint will be overwritten)."
        )


def resume(path: Path | None, cfg: TrainConfig, info: DistInfo, *, model: nn.Module, optimizer, scheduler,
           scaler) -> tuple[History, int]:
    """Continue from ``path`` when ``cfg.resume`` and the file exists: ``(history, start_epoch)``.

    Every rank looks for the file, then waits for the others (so that rank 0 writes no new checkpoint
    while another rank still looks). When found and compatible (:func:`_check_compatible`), the
    model, optimizer, scheduler and scaler states are loaded into the given objects, this rank's RNG
    states are restored, and the stored history and the epoch after the last completed one are
    returned - ``start_epoch >= cfg.epochs`` for a finished run. Otherwise ``(History(), 0)``.
    """
    found = bool(cfg.resume and path is not None and path.is_file())
    barrier(info)  # every rank has looked for the checkpoint before rank 0 may write one
    if not found:
        return History(), 0
    ckpt = _load(path)
    _check_compatible(ckpt, path, cfg, info)
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
    return history, start_epoch


def save(path: Path, cfg: TrainConfig, info: DistInfo, *, model: nn.Module, optimizer, scheduler, scaler,
         history: History, epoch: int) -> None:
    """Write the checkpoint after ``epoch`` (0-based) to ``path``.

    A collective under DDP: every rank contributes its RNG states; rank 0 alone writes, atomically.
    ``model`` is the plain module (no ``module.`` prefix in the state dict).
    """
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
            path,
        )


# --------------------------------------------------------------------------------------------------
# reuse
# --------------------------------------------------------------------------------------------------
def is_finished(checkpoint_dir) -> bool:
    """Whether ``checkpoint_dir`` holds a finished training (``last.pt`` with ``finished``):
    :func:`~wsss_core.engine.train` would reload it instead of training. A missing or unreadable file is
    not finished (``train`` says why)."""
    p = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not p.is_file():
        return False
    try:
        return bool(torch.load(p, map_location="cpu", weights_only=False).get("finished"))
    except Exception:  # noqa: BLE001 - a broken file is retrained
        return False


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load weights into ``model`` from a :func:`~wsss_core.engine.train` checkpoint or a bare
    ``state_dict`` file.

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
