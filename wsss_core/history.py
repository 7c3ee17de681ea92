"""What a training run logs: the :class:`History` that :func:`wsss_core.engine.train` returns, the records
it is made of, and the per-epoch progress bar.

* :func:`logged_values` - the scalars a step function returned (``loss`` first, keys starting with ``_``
  left out), checked to be scalars and averaged over ranks under DDP;
* :func:`iter_record` - one record per iteration (epoch, global iteration, batch, learning rates, the
  step function's scalars);
* :func:`epoch_record` - one record per epoch (the scalars' epoch means, lr, seconds, ``end_iter`` and
  the metrics ``eval_fn`` returned, turned into plain Python values);
* :func:`progress_bar`, :func:`bar_step`, :func:`bar_end` - the tqdm bar of an epoch (``None`` when
  hidden: every function accepts it).

A :class:`History` goes into the checkpoint as ``History.to_dict()`` and comes back with
:meth:`History.from_dict` (:mod:`wsss_core.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .distributed import DistInfo, all_reduce_mean

__all__ = ["History", "logged_values", "iter_record", "epoch_record", "progress_bar", "bar_step", "bar_end"]


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
    """What a training run logged (returned by :func:`wsss_core.engine.train`).

    Attributes
    ----------
    iters : list of dict
        One record per iteration (:func:`iter_record`): ``epoch`` (0-based), ``iter`` (global, 0-based),
        ``batch`` (index in the epoch), ``lr`` (first parameter group; ``lr_g1``, ``lr_g2`` ... for the
        others), ``loss`` and every other scalar the step function returned - all averaged over ranks
        under DDP.
    epochs : list of dict
        One record per epoch (:func:`epoch_record`): ``epoch``, ``loss`` and the other scalars' epoch
        means, ``lr`` at the end, ``seconds``, ``end_iter`` (global iterations done), and the metrics
        ``eval_fn`` returned (a key clashing with these gets an ``eval_`` prefix).
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


def logged_values(out: Mapping, info: DistInfo) -> dict[str, float]:
    """``loss`` and the other logged scalars of ``step_fn``'s output (keys starting with ``_`` are not
    logged), averaged over ranks under DDP."""
    keys = ["loss"] + sorted(k for k in out if k != "loss" and not str(k).startswith("_"))
    values = [_scalar(out[k], k) for k in keys]
    if info.enabled:  # one collective: rank means of all logged values (and the NaN check)
        values = all_reduce_mean(torch.tensor(values, dtype=torch.float64)).tolist()
    return dict(zip(keys, values))


def iter_record(epoch: int, global_iter: int, batch: int, lrs: Sequence[float], logs: Mapping[str, float]) -> dict:
    """The record of one iteration: ``epoch``, ``iter``, ``batch``, ``lr`` (``lr_g1`` ... for the other
    parameter groups), then the logged scalars."""
    record = {"epoch": epoch, "iter": global_iter, "batch": batch, "lr": lrs[0]}
    for gi, lr in enumerate(lrs[1:], start=1):
        record[f"lr_g{gi}"] = lr
    record.update(logs)
    return record


def epoch_record(epoch: int, sums: Mapping[str, float], iters_per_epoch: int, lr: float, seconds: float,
                 metrics: Mapping[str, Any]) -> dict:
    """The record of one epoch: ``epoch``, the means of the logged scalars (``sums / iters_per_epoch``),
    ``lr`` at the end, ``seconds``, ``end_iter``, then ``eval_fn``'s ``metrics`` as plain values (a key
    clashing with the others gets an ``eval_`` prefix)."""
    record = {"epoch": epoch}
    record.update({k: v / iters_per_epoch for k, v in sums.items()})
    record["lr"] = lr
    record["seconds"] = seconds
    record["end_iter"] = (epoch + 1) * iters_per_epoch
    for k, v in metrics.items():
        k = str(k)
        record[f"eval_{k}" if k in record else k] = _plain(v, f"eval_fn()[{k!r}]")
    return record


def progress_bar(show: bool, total: int, desc: str):
    """A tqdm bar over an epoch's ``total`` iterations, or ``None`` when not ``show``."""
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True)


def bar_step(bar, mean_loss: float, lr: float) -> None:
    """Advance the bar by one iteration, showing the epoch's running mean loss and the lr."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)


def bar_end(bar, record: Mapping[str, Any]) -> None:
    """Show the epoch record (without its bookkeeping keys) on the bar and close it."""
    if bar is not None:
        bar.set_postfix(
            {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in record.items()
             if k not in ("epoch", "end_iter", "seconds", "lr")},
            refresh=True,
        )
        bar.close()
