"""Input checks and NaN-safe arithmetic shared by the metric modules (:mod:`wsss_core.metrics`,
:mod:`wsss_core.metrics_extra`).

Kept apart so that :mod:`wsss_core.metrics_extra` needs nothing from :mod:`wsss_core.metrics` (which
re-exports it): no import cycle.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["IGNORE_INDEX", "to_numpy", "check_same_shape", "check_integer", "safe_div", "nanmean"]

IGNORE_INDEX = 255


def to_numpy(x) -> np.ndarray:
    """Return ``x`` as a numpy array (tensors are detached and copied to the CPU)."""
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_same_shape(*arrays, names: Sequence[str]) -> None:
    shapes = [tuple(a.shape) for a in arrays]
    if any(s != shapes[0] for s in shapes[1:]):
        desc = ", ".join(f"{n}{s}" for n, s in zip(names, shapes))
        raise ValueError(f"shape mismatch: {desc}")


def check_integer(a, name: str) -> None:
    dtype = a.dtype
    if torch.is_tensor(a):
        ok = not (dtype.is_floating_point or dtype.is_complex)
    else:
        ok = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)
    if not ok:
        raise TypeError(f"{name} must hold integer labels, got dtype {dtype}")


def safe_div(num, den):
    """Elementwise ``num / den`` with ``nan`` where ``den == 0`` (float64)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out if out.ndim else float(out)


def nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or np.all(np.isnan(x)):
        return float("nan")
    return float(np.nanmean(x))
