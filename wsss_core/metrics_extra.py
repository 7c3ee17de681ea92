"""Metrics beyond the pixel confusion of label maps: multi-label classification AP, saliency-map
quality and boundary precision / recall / F.

Split out of :mod:`wsss_core.metrics`, which re-exports every public name here (so
``wsss_core.metrics.saliency_mae`` etc. keep working); the conventions are that module's.

Contents
--------
:func:`average_precision`, :func:`mean_average_precision`
    Multi-label classification quality (non-interpolated AP, as scikit-learn computes it).
:func:`saliency_mae`, :func:`saliency_f_measure`, :class:`SaliencyStats`
    Salient-object-detection measures for the saliency maps EPS consumes.
:func:`boundary_prf`, :func:`boundary_f_score`
    Boundary precision / recall / F within a pixel tolerance.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .metrics_common import IGNORE_INDEX, check_same_shape, nanmean, to_numpy

__all__ = [
    "average_precision",
    "mean_average_precision",
    "saliency_mae",
    "saliency_f_measure",
    "SaliencyStats",
    "boundary_prf",
    "boundary_f_score",
]


# --------------------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------------------
def average_precision(scores, targets) -> float:
    """Non-interpolated average precision of one class (scikit-learn's ``average_precision_score``).

    ``AP = Σ_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in decreasing order, where
    ``P_n`` / ``R_n`` are precision / recall of "score ≥ threshold_n".  Without ties this is the mean
    of the precision at the rank of each positive.  Tied scores form a single threshold (all tied
    items enter together), so the result does not depend on the input order - deterministic.

    Parameters
    ----------
    scores : (N,) float
        Classifier scores (any monotone scale: logits or probabilities).
    targets : (N,) {0, 1}
        Ground-truth presence.

    Returns
    -------
    float
        AP in [0, 1]; ``nan`` if there is no positive.

    Examples
    --------
    >>> average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])  # (1 + 2/3) / 2
    0.8333333333333333
    """
    s = to_numpy(scores).astype(np.float64).reshape(-1)
    y = to_numpy(targets).reshape(-1)
    check_same_shape(s, y, names=("scores", "targets"))
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("targets must be 0/1")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    if np.isnan(s).any():
        raise ValueError("scores contain nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # last index of each group of equal scores = one threshold
    ends = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def mean_average_precision(scores, targets) -> tuple[float, np.ndarray]:
    """Mean of per-class :func:`average_precision` over classes with at least one positive.

    Parameters
    ----------
    scores : (N, C) float
    targets : (N, C) {0, 1}
        Multi-hot image labels (foreground classes only, as the classifier predicts them).

    Returns
    -------
    map : float
        Mean AP over classes with a positive (``nan`` if none has one).
    ap : (C,) float64
        Per-class AP, ``nan`` for classes without positives.
    """
    s, y = to_numpy(scores), to_numpy(targets)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {s.shape}")
    check_same_shape(s, y, names=("scores", "targets"))
    ap = np.array([average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])], dtype=np.float64)
    return nanmean(ap), ap


# --------------------------------------------------------------------------------------------------
# saliency measures
# --------------------------------------------------------------------------------------------------
def _saliency_inputs(pred, gt_fg) -> tuple[np.ndarray, np.ndarray]:
    p = to_numpy(pred)
    g = to_numpy(gt_fg)
    check_same_shape(p, g, names=("pred", "gt_fg"))
    if p.dtype == np.uint8:
        p = p.astype(np.float64) / 255.0
    else:
        p = p.astype(np.float64)
        if p.size and (p.min() < 0 or p.max() > 1):
            raise ValueError("saliency pred must be uint8 (0..255) or float in [0, 1]")
    if g.dtype == np.bool_:
        gb = g
    elif np.issubdtype(g.dtype, np.integer):
        gb = g > 0
    else:
        gb = g >= 0.5
    return p, gb


def saliency_mae(pred, gt_fg) -> float:
    """Mean absolute error between a saliency map and a binary foreground mask.

    ``MAE = 1/(HW) Σ_x |S(x) - G(x)|`` (Perazzi et al., CVPR 2012), with ``S`` in [0, 1].

    Parameters
    ----------
    pred : (H, W) float in [0, 1] or uint8 in 0..255
        Saliency map.
    gt_fg : (H, W) bool / int (> 0 = foreground) / float (≥ 0.5 = foreground)
        Ground-truth salient (foreground) mask.
    """
    p, g = _saliency_inputs(pred, gt_fg)
    if p.size == 0:
        return float("nan")
    return float(np.abs(p - g).mean())


def _pr_curves(pred, gt_fg, thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of ``S ≥ τ_i``, ``τ_i = i / (T-1)``, ``i = 0..T-1``."""
    if thresholds < 2:
        raise ValueError("thresholds must be >= 2")
    p, g = _saliency_inputs(pred, gt_fg)
    levels = thresholds - 1
    # level q(x) = floor(S(x) * (T-1)) so that S ≥ i/(T-1)  <=>  q ≥ i  (small eps against round-off)
    q = np.clip(np.floor(p * levels + 1e-9), 0, levels).astype(np.int64)
    hist_fg = np.bincount(q[g], minlength=thresholds)
    hist_bg = np.bincount(q[~g], minlength=thresholds)
    tp = np.cumsum(hist_fg[::-1])[::-1].astype(np.float64)  # tp[i] = #{fg : q ≥ i}
    fp = np.cumsum(hist_bg[::-1])[::-1].astype(np.float64)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    n_fg = float(g.sum())
    recall = tp / n_fg if n_fg > 0 else np.zeros_like(tp)
    return precision, recall


def _f_from_pr(precision, recall, beta2: float) -> np.ndarray:
    num = (1 + beta2) * precision * recall
    den = beta2 * precision + recall
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def saliency_f_measure(pred, gt_fg, beta2: float = 0.3, thresholds: int = 256) -> tuple[float, float]:
    """F-measure curve of a saliency map over thresholds: ``(max F, mean F)``.

    ``F_β = (1 + β²) P R / (β² P + R)`` with ``β² = 0.3`` (Achanta et al., CVPR 2009), where ``P``,
    ``R`` are precision / recall of the binary map ``S ≥ τ`` for ``thresholds`` equally spaced
    ``τ ∈ {0, 1/(T-1), ..., 1}`` (the usual 256 levels of a uint8 map).  Precision of an empty
    prediction and recall of an empty ground truth count as 0.  Over a data set use
    :class:`SaliencyStats`, which averages the P and R curves over images before forming F (the
    common SOD-benchmark protocol).

    Parameters
    ----------
    pred : (H, W) float in [0, 1] or uint8
    gt_fg : (H, W) bool / int / float, see :func:`saliency_mae`
    beta2 : float, default 0.3
    thresholds : int, default 256

    Returns
    -------
    (float, float)
        Maximum and mean of the F curve.
    """
    precision, recall = _pr_curves(pred, gt_fg, thresholds)
    f = _f_from_pr(precision, recall, beta2)
    return float(f.max()), float(f.mean())


class SaliencyStats:
    """Accumulator for saliency quality over a data set: MAE, max F, mean F.

    MAE is the mean of per-image MAEs; the F curve is computed from the mean precision and mean
    recall curves over images (as PySODMetrics / the SOD benchmarks do).
    """

    def __init__(self, beta2: float = 0.3, thresholds: int = 256):
        self.beta2 = float(beta2)
        self.thresholds = int(thresholds)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mae_sum = 0.0
        self.precision_sum = np.zeros(self.thresholds, dtype=np.float64)
        self.recall_sum = np.zeros(self.thresholds, dtype=np.float64)

    def update(self, pred, gt_fg) -> "SaliencyStats":
        """Add one ``(H, W)`` saliency map and its foreground mask."""
        self.mae_sum += saliency_mae(pred, gt_fg)
        precision, recall = _pr_curves(pred, gt_fg, self.thresholds)
        self.precision_sum += precision
        self.recall_sum += recall
        self.n += 1
        return self

    def f_curve(self) -> np.ndarray:
        """``(thresholds,)`` F-measure per threshold from the mean P / R curves."""
        if self.n == 0:
            return np.full(self.thresholds, np.nan)
        return _f_from_pr(self.precision_sum / self.n, self.recall_sum / self.n, self.beta2)

    @property
    def value(self) -> dict:
        """``{"mae", "max_f", "mean_f", "n"}`` (``nan`` before any update)."""
        if self.n == 0:
            return {"mae": float("nan"), "max_f": float("nan"), "mean_f": float("nan"), "n": 0}
        f = self.f_curve()
        return {"mae": self.mae_sum / self.n, "max_f": float(f.max()), "mean_f": float(f.mean()), "n": self.n}


# --------------------------------------------------------------------------------------------------
# boundary F-score
# --------------------------------------------------------------------------------------------------
def _boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a binary mask: mask pixels with a 4-neighbour outside it.

    The image border does not count as a boundary (the mask is extended by replication).
    """
    import cv2

    m = mask.astype(np.uint8)
    kernel = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)
    eroded = cv2.erode(m, kernel, borderType=cv2.BORDER_REPLICATE)
    return (m > 0) & (eroded == 0)


def _distance_to(points: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest ``True`` pixel of ``points``."""
    import cv2

    if not points.any():
        return np.full(points.shape, np.inf, dtype=np.float32)
    src = np.where(points, 0, 1).astype(np.uint8)
    return cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def boundary_prf(
    pred,
    gt,
    tolerance: float = 2,
    classes: Iterable[int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[float, float, float]:
    """Boundary precision, recall and F-score within a pixel tolerance.

    For each class ``c`` the boundary ``B(c)`` of its binary mask is taken (mask pixels with a
    4-neighbour outside; the image border is not a boundary).  A predicted boundary pixel is
    correct if a ground-truth boundary pixel of the *same class* lies within ``tolerance``
    (Euclidean, via :func:`cv2.distanceTransform`), and vice versa for recall (the boundary measure
    of Csurka et al., BMVC 2013 / DAVIS's ``F``):

        ``P = Σ_c |{x ∈ B_pred(c) : d(x, B_gt(c)) ≤ tol}| / Σ_c |B_pred(c)|``,
        ``R = Σ_c |{x ∈ B_gt(c) : d(x, B_pred(c)) ≤ tol}| / Σ_c |B_gt(c)|``,
        ``F = 2PR / (P + R)``.

    Predicted boundary pixels lying on ``gt == ignore_index`` are not counted.

    Parameters
    ----------
    pred, gt : (H, W) bool (binary: class 1 = True) or int label maps
    tolerance : float, default 2
        Matching distance in pixels.
    classes : iterable of int, optional
        Classes to evaluate; default: every label ``≥ 1`` other than ``ignore_index`` in either map
        (background boundaries would only double-count the objects').

    Returns
    -------
    (precision, recall, f) : tuple of float
        With no boundary in either map the maps agree trivially: ``(1, 1, 1)``.  If only one map
        has boundaries, the undefined side counts as 0 and ``F = 0``.
    """
    p, g = to_numpy(pred), to_numpy(gt)
    check_same_shape(p, g, names=("pred", "gt"))
    if p.ndim != 2:
        raise ValueError(f"boundary_prf expects (H, W) maps, got shape {p.shape}")
    p = p.astype(np.int64)
    g = g.astype(np.int64)
    if classes is None:
        labels = np.union1d(np.unique(p), np.unique(g))
        classes = [int(c) for c in labels if c >= 1 and c != ignore_index]
    valid = g != ignore_index
    n_pred = n_pred_ok = n_gt = n_gt_ok = 0
    for c in classes:
        bp = _boundary(p == c) & valid
        bg = _boundary(g == c)
        if not bp.any() and not bg.any():
            continue
        n_pred += int(bp.sum())
        n_gt += int(bg.sum())
        if bp.any():
            n_pred_ok += int((_distance_to(bg)[bp] <= tolerance).sum())
        if bg.any():
            n_gt_ok += int((_distance_to(bp)[bg] <= tolerance).sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    precision = n_pred_ok / n_pred if n_pred else 0.0
    recall = n_gt_ok / n_gt if n_gt else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f)


def boundary_f_score(pred, gt, tolerance: float = 2, **kwargs) -> float:
    """Boundary F-score; see :func:`boundary_prf` (same arguments), returns ``F`` only."""
    return boundary_prf(pred, gt, tolerance, **kwargs)[2]
