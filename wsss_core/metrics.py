"""Evaluation metrics for weakly supervised semantic segmentation.

Everything here is deterministic and accumulate-friendly: each metric has an accumulator that is
updated image by image (or batch by batch) and read at the end, so that a whole validation set is
never held in memory.

Conventions (see :mod:`wsss_core`): label maps are integer arrays ``(H, W)`` (any equal shape works),
``0`` = background, ``1..C`` = foreground classes, ``255`` = ignore.  Inputs may be numpy arrays or
torch tensors on any device.

Contents
--------
Here (label-map measures):

:class:`ConfusionMatrix`
    The segmentation workhorse (torchvision-references contract): mIoU, per-class IoU, pixel accuracy,
    precision / recall, class-aware foreground precision / recall; ``reduce_from_all_processes`` for DDP.
:func:`miou`
    One-call mIoU over iterables of label maps.
:class:`RegionStats`, :func:`region_recall`
    Recall restricted to a region (e.g. "discriminative part" vs "body" pixels of CAM pseudo-labels).
:class:`ConfusionRatio`, :func:`background_leak`
    EPS's confusion ratio ``m_{k,c} / t_c`` (Lee et al., CVPR 2021) and the share of a context region
    (water, rails) that is labelled as its co-occurring class.

In :mod:`wsss_core.metrics_extra` (re-exported here, so ``wsss_core.metrics.<name>`` keeps working):

:func:`average_precision`, :func:`mean_average_precision`
    Multi-label classification quality (non-interpolated AP, as scikit-learn computes it).
:func:`saliency_mae`, :func:`saliency_f_measure`, :class:`SaliencyStats`
    Salient-object-detection measures for the saliency maps EPS consumes.
:func:`boundary_prf`, :func:`boundary_f_score`
    Boundary precision / recall / F within a pixel tolerance.

The shared input checks and NaN-safe arithmetic live in :mod:`wsss_core.metrics_common`.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from .metrics_common import IGNORE_INDEX, check_integer, check_same_shape, nanmean, safe_div, to_numpy
# AP, saliency and boundary measures live in metrics_extra; re-exported so that every
# ``wsss_core.metrics.<name>`` (lessons, tests, grading paths) keeps naming the same object
from .metrics_extra import (SaliencyStats, average_precision, boundary_f_score,  # noqa: F401
                            boundary_prf, mean_average_precision, saliency_f_measure, saliency_mae)

__all__ = [
    "ConfusionMatrix",
    "miou",
    "region_recall",
    "RegionStats",
    "ConfusionRatio",
    "background_leak",
    "average_precision",
    "mean_average_precision",
    "saliency_mae",
    "saliency_f_measure",
    "SaliencyStats",
    "boundary_prf",
    "boundary_f_score",
]


# --------------------------------------------------------------------------------------------------
# confusion matrix
# --------------------------------------------------------------------------------------------------
class ConfusionMatrix:
    """Pixel confusion matrix over ``num_classes`` labels (background included).

    ``mat[i, j]`` counts pixels whose ground truth is ``i`` and prediction is ``j`` (rows = ground
    truth, columns = prediction), accumulated over every :meth:`update` call.  Pixels whose target is
    ``ignore_index`` are skipped, whatever their prediction.

    With ``M = mat``, ``TP_c = M[c, c]``, ``G_c = Σ_j M[c, j]`` (row sum) and ``P_c = Σ_i M[i, c]``
    (column sum):

    * ``IoU_c = TP_c / (G_c + P_c - TP_c)`` (Jaccard index; ``nan`` if ``c`` is in neither gt nor
      prediction), ``mIoU = nanmean_c IoU_c`` - the PASCAL VOC segmentation measure;
    * ``precision_c = TP_c / P_c``, ``recall_c = TP_c / G_c``;
    * ``pixel_accuracy = Σ_c TP_c / Σ M``;
    * class-aware foreground precision / recall ``Σ_{c≥1} TP_c / Σ_{c≥1} P_c`` and
      ``Σ_{c≥1} TP_c / Σ_{c≥1} G_c`` - how much of what is labelled as an object is the right object,
      and how much of the objects is found with the right class (used to compare pseudo-labels:
      CAMs are precise but incomplete, AffinityNet trades precision for recall).

    Parameters
    ----------
    num_classes : int
        Number of labels *including* background (21 for PASCAL VOC).
    ignore_index : int, default 255
        Target value to skip.

    Examples
    --------
    >>> cm = ConfusionMatrix(3)
    >>> cm.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 255]]))
    >>> cm.mat.tolist()
    [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    # -- accumulation ------------------------------------------------------------------------------
    def update(self, pred, target) -> "ConfusionMatrix":
        """Add one prediction / ground-truth pair.

        Parameters
        ----------
        pred, target : array_like or torch.Tensor, integer, any equal shape (e.g. ``(H, W)`` or
            ``(B, H, W)``)
            Predicted and ground-truth labels.  Tensors are counted on their own device with
            :func:`torch.bincount`; numpy arrays with :func:`numpy.bincount`.

        Raises
        ------
        ValueError
            If shapes differ, or a prediction (at a non-ignored pixel) or a target (other than
            ``ignore_index``) lies outside ``0..num_classes-1``; the message names the value.
        TypeError
            If either input holds floating-point values.

        Returns
        -------
        ConfusionMatrix
            ``self``, so that calls can be chained.
        """
        n = self.num_classes
        if torch.is_tensor(pred) or torch.is_tensor(target):
            device = pred.device if torch.is_tensor(pred) else target.device
            p = pred if torch.is_tensor(pred) else torch.as_tensor(np.asarray(pred), device=device)
            t = target if torch.is_tensor(target) else torch.as_tensor(np.asarray(target), device=device)
            check_same_shape(p, t, names=("pred", "target"))
            check_integer(p, "pred")
            check_integer(t, "target")
            p = p.to(device).reshape(-1).long()
            t = t.to(device).reshape(-1).long()
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            self._check_range(p, "pred")
            self._check_range(t, "target")
            counts = torch.bincount(t * n + p, minlength=n * n).reshape(n, n)
            counts = counts.cpu().numpy().astype(np.int64)
        else:
            p, t = np.asarray(pred), np.asarray(target)
            check_same_shape(p, t, names=("pred", "target"))
            check_integer(p, "pred")
            check_integer(t, "target")
            p = p.reshape(-1).astype(np.int64)
            t = t.reshape(-1).astype(np.int64)
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            self._check_range(p, "pred")
            self._check_range(t, "target")
            counts = np.bincount(t * n + p, minlength=n * n).reshape(n, n).astype(np.int64)
        self.mat += counts
        return self

    def _check_range(self, x, name: str) -> None:
        bad = (x < 0) | (x >= self.num_classes)
        if bool(bad.any()):
            value = int(x[bad][0])
            where = " at a pixel whose target is not ignored" if name == "pred" else ""
            raise ValueError(
                f"{name} value {value}{where} is outside 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
            )

    def reset(self) -> None:
        """Zero the matrix."""
        self.mat[...] = 0

    def reduce_from_all_processes(self) -> "ConfusionMatrix":
        """Sum the matrices of all ranks in place (``all_reduce`` SUM); a no-op without DDP.

        Every rank must call it (it is a collective).  With the NCCL backend the reduction runs on
        the current CUDA device.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.from_numpy(self.mat.copy()).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.mat = t.cpu().numpy().astype(np.int64)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix (same ``num_classes``) into this one, in place."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"cannot merge {type(other).__name__} into ConfusionMatrix")
        if other.num_classes != self.num_classes:
            raise ValueError(f"num_classes differ: {self.num_classes} vs {other.num_classes}")
        self.mat += other.mat
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.mat = self.mat.copy()
        return out.merge(other)

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return self.merge(other)

    # -- measures ----------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.mat.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU ``TP / (G + P - TP)``, ``(num_classes,)`` float64, ``nan`` for absent classes."""
        tp = np.diag(self.mat)
        return safe_div(tp, self.mat.sum(1) + self.mat.sum(0) - tp)

    def miou(self) -> float:
        """Mean IoU over the classes present in ground truth or prediction (``nanmean``)."""
        return nanmean(self.iou())

    def pixel_accuracy(self) -> float:
        """``Σ_c TP_c / Σ M`` (``nan`` on an empty matrix)."""
        return float(safe_div(np.trace(self.mat), self.mat.sum()))

    def precision(self) -> np.ndarray:
        """Per-class precision ``TP_c / P_c`` (column sums), ``nan`` where never predicted."""
        return safe_div(np.diag(self.mat), self.mat.sum(0))

    def recall(self) -> np.ndarray:
        """Per-class recall ``TP_c / G_c`` (row sums), ``nan`` where absent from the ground truth."""
        return safe_div(np.diag(self.mat), self.mat.sum(1))

    def fg_precision(self) -> float:
        """Class-aware foreground precision ``Σ_{c≥1} TP_c / Σ_{c≥1} P_c``."""
        return float(safe_div(np.diag(self.mat)[1:].sum(), self.mat.sum(0)[1:].sum()))

    def fg_recall(self) -> float:
        """Class-aware foreground recall ``Σ_{c≥1} TP_c / Σ_{c≥1} G_c``."""
        return float(safe_div(np.diag(self.mat)[1:].sum(), self.mat.sum(1)[1:].sum()))

    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(i) for i in range(self.num_classes)]
        names = list(class_names)
        if len(names) != self.num_classes:
            raise ValueError(f"expected {self.num_classes} class names, got {len(names)}")
        return [str(n) for n in names]

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        """All headline numbers as plain Python floats (``nan`` where undefined).

        Returns
        -------
        dict
            ``{"miou", "pixel_acc", "fg_precision", "fg_recall", "per_class_iou": {name: iou}}``;
            names default to ``"0", "1", ...``.
        """
        names = self._names(class_names)
        return {
            "miou": self.miou(),
            "pixel_acc": self.pixel_accuracy(),
            "fg_precision": self.fg_precision(),
            "fg_recall": self.fg_recall(),
            "per_class_iou": {n: float(v) for n, v in zip(names, self.iou())},
        }

    def to_markdown(self, class_names: Sequence[str] | None = None, digits: int = 3) -> str:
        """A per-class Markdown table (IoU, precision, recall, gt pixels) with a mean row."""

        def fmt(v):
            return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

        names = self._names(class_names)
        iou, prec, rec = self.iou(), self.precision(), self.recall()
        gt = self.mat.sum(1)
        lines = ["| class | IoU | precision | recall | gt pixels |", "|---|---:|---:|---:|---:|"]
        for i, name in enumerate(names):
            lines.append(
                f"| {name} | {fmt(float(iou[i]))} | {fmt(float(prec[i]))} | {fmt(float(rec[i]))} "
                f"| {int(gt[i])} |"
            )
        lines.append(
            f"| **mean** | **{fmt(self.miou())}** | {fmt(nanmean(prec))} | {fmt(nanmean(rec))} "
            f"| {int(gt.sum())} |"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total}, "
            f"miou={self.miou():.4f})"
        )


def miou(
    preds: Iterable, targets: Iterable, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> float:
    """Mean IoU of paired label maps (one :class:`ConfusionMatrix` over all of them).

    Parameters
    ----------
    preds, targets : iterables of integer arrays / tensors
        Paired label maps; each pair must have equal shapes (pairs may differ from each other).
    num_classes : int
        Number of labels including background.
    ignore_index : int, default 255

    Returns
    -------
    float
        The dataset mIoU (pixels pooled over all images, as in the VOC benchmark - not a mean of
        per-image mIoUs).
    """
    cm = ConfusionMatrix(num_classes, ignore_index)
    n_pairs = 0
    for p, t in zip(preds, targets, strict=True):
        cm.update(p, t)
        n_pairs += 1
    if n_pairs == 0:
        raise ValueError("miou() got no label maps")
    return cm.miou()


# --------------------------------------------------------------------------------------------------
# region recall (part vs body)
# --------------------------------------------------------------------------------------------------
def _region_counts(pred, gt, region_mask, ignore_index: int) -> tuple[int, int]:
    p, g, r = to_numpy(pred), to_numpy(gt), to_numpy(region_mask).astype(bool)
    check_same_shape(p, g, r, names=("pred", "gt", "region_mask"))
    den = r & (g >= 1) & (g != ignore_index)
    num = den & (p == g)
    return int(num.sum()), int(den.sum())


def region_recall(pred, gt, region_mask, ignore_index: int = IGNORE_INDEX) -> float:
    """Class-aware recall of foreground pixels inside a region.

    ``recall = |{x ∈ R : gt(x) ≥ 1, pred(x) = gt(x)}| / |{x ∈ R : gt(x) ≥ 1}|`` (``gt = ignore``
    excluded).  With ``R`` = the objects' small discriminative parts vs their bodies this shows the
    partial-coverage problem of CAMs (parts recalled ≈ 1, bodies ≈ 0.5).

    Parameters
    ----------
    pred, gt : (H, W) int
        Predicted and ground-truth labels.
    region_mask : (H, W) bool
        The region ``R``.

    Returns
    -------
    float
        The recall, ``nan`` if the region holds no foreground pixel.
    """
    num, den = _region_counts(pred, gt, region_mask, ignore_index)
    return float(safe_div(num, den))


class RegionStats:
    """Accumulator of :func:`region_recall` over images (pixels pooled, not per-image means).

    Attributes
    ----------
    num, den : int
        Correctly labelled / all foreground pixels inside the regions seen so far.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = int(ignore_index)
        self.num = 0
        self.den = 0

    def update(self, pred, gt, region_mask) -> "RegionStats":
        """Add one image; shapes ``(H, W)`` (any equal shape)."""
        num, den = _region_counts(pred, gt, region_mask, self.ignore_index)
        self.num += num
        self.den += den
        return self

    @property
    def value(self) -> float:
        """Pooled recall ``num / den`` (``nan`` if ``den == 0``)."""
        return float(safe_div(self.num, self.den))

    def reset(self) -> None:
        self.num = self.den = 0

    def __repr__(self) -> str:
        return f"RegionStats(num={self.num}, den={self.den}, value={self.value:.4f})"


# --------------------------------------------------------------------------------------------------
# EPS confusion ratio
# --------------------------------------------------------------------------------------------------
def _bg_leak_counts(pred, gt, context_mask, ignore_index: int) -> tuple[int, int]:
    p, g, k = to_numpy(pred), to_numpy(gt), to_numpy(context_mask)
    check_same_shape(p, g, k, names=("pred", "gt", "context_mask"))
    region = (g == 0) & (k == 0)
    fg = (p >= 1) & (p != ignore_index)
    return int((region & fg).sum()), int(region.sum())


def background_leak(pred, gt, context_mask, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of *ordinary* background pixels labelled as any foreground class.

    ``|{x : gt(x) = 0, k(x) = 0, pred(x) ∈ 1..C}| / |{x : gt(x) = 0, k(x) = 0}|`` - the baseline
    to compare a context region's :meth:`ConfusionRatio.leak` against.

    Parameters
    ----------
    pred, gt : (H, W) int
    context_mask : (H, W) int
        Region ids, ``0`` = no context region.

    Returns
    -------
    float
        ``nan`` if there is no ordinary background pixel.
    """
    num, den = _bg_leak_counts(pred, gt, context_mask, ignore_index)
    return float(safe_div(num, den))


class ConfusionRatio:
    """EPS's confusion ratio between a target class and its co-occurring context.

    Lee et al., "Railroad is not a Train: Saliency as Pseudo-pixel Supervision for Weakly Supervised
    Semantic Segmentation", CVPR 2021, Sec. 5: for a target class ``c`` and a coincident (context)
    class ``k``,

        ``confusion ratio = m_{k,c} / t_c``

    where ``m_{k,c}`` is the number of pixels of context ``k`` mis-classified as ``c`` and ``t_c`` is
    the number of true-positive pixels of ``c`` (``pred = c`` and ``gt = c``).  Lower is better.

    Here ``m_{k,c}`` counts pixels with ``context_mask == k``, ``gt ∉ {c, ignore}`` and
    ``pred == c``; when the context map covers only background (as PASCAL-CONTEXT's water / railroad
    regions do) this is exactly "pixels of region ``k`` predicted as ``c``".  Pixels of region ``k``
    whose ground truth *is* ``c`` (a context map drawn under the object) are correct, not confused,
    and are not counted.  The pooled counts over all images are kept, so the ratio is a ratio of
    sums, as in the paper.

    :meth:`leak` is ``m_{k,c} / |k|`` with ``|k|`` the same region's counted pixels: the share of
    the context labelled as its class (compare with :meth:`background_leak`, the same share for
    ordinary background, context id 0).

    Parameters
    ----------
    ignore_index : int, default 255

    Examples
    --------
    >>> cr = ConfusionRatio()
    >>> cr.update(pred, gt, context, {"boat/water": (4, 1), "train/rails": (6, 2)})  # doctest: +SKIP
    >>> cr.ratios()  # doctest: +SKIP
    {'boat/water': 0.6, 'train/rails': nan}
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = int(ignore_index)
        self.pairs: dict[str, tuple[int, int]] = {}
        self.m: dict[str, int] = {}
        self.t: dict[str, int] = {}
        self.region: dict[str, int] = {}
        self.bg_num = 0
        self.bg_den = 0

    def update(self, pred, gt, context_mask, pairs: Mapping[str, tuple[int, int]]) -> "ConfusionRatio":
        """Add one image.

        Parameters
        ----------
        pred, gt : (H, W) int
            Predicted and ground-truth labels.
        context_mask : (H, W) int
            Context-region id per pixel, ``0`` = none.
        pairs : dict
            ``{name: (c, k)}`` - target class index ``c`` (in label space, ``1..C``) and context id
            ``k``.  A name's pair must not change between calls.
        """
        p, g, k = to_numpy(pred), to_numpy(gt), to_numpy(context_mask)
        check_same_shape(p, g, k, names=("pred", "gt", "context_mask"))
        valid = g != self.ignore_index
        for name, (c, kid) in pairs.items():
            c, kid = int(c), int(kid)
            if name in self.pairs and self.pairs[name] != (c, kid):
                raise ValueError(f"pair {name!r} was {self.pairs[name]}, now {(c, kid)}")
            self.pairs[name] = (c, kid)
            region = (k == kid) & valid & (g != c)
            pred_c = p == c
            self.m[name] = self.m.get(name, 0) + int((region & pred_c).sum())
            self.t[name] = self.t.get(name, 0) + int((pred_c & (g == c)).sum())
            self.region[name] = self.region.get(name, 0) + int(region.sum())
        num, den = _bg_leak_counts(p, g, k, self.ignore_index)
        self.bg_num += num
        self.bg_den += den
        return self

    def ratios(self) -> dict[str, float]:
        """``{name: m_{k,c} / t_c}`` (``nan`` if ``t_c == 0``)."""
        return {n: float(safe_div(self.m[n], self.t[n])) for n in self.pairs}

    def leak(self) -> dict[str, float]:
        """``{name: m_{k,c} / |region k|}`` (``nan`` if the region never occurred)."""
        return {n: float(safe_div(self.m[n], self.region[n])) for n in self.pairs}

    def background_leak(self) -> float:
        """Pooled :func:`background_leak` over the images seen."""
        return float(safe_div(self.bg_num, self.bg_den))

    def summary(self) -> dict:
        """``{"confusion_ratio": {...}, "context_leak": {...}, "background_leak": float}``."""
        return {
            "confusion_ratio": self.ratios(),
            "context_leak": self.leak(),
            "background_leak": self.background_leak(),
        }

    def reset(self) -> None:
        self.__init__(self.ignore_index)
