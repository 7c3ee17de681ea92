"""One evaluation for every pseudo-label maker and segmenter: label maps against a VOC-layout dataset.

:class:`LabelMapEvaluator` pools, over images,

* the confusion matrix → mIoU, per-class IoU, class-aware foreground precision / recall;
* where the dataset has ``part_mask`` (toy scenes): recall on discriminative-part pixels vs the rest
  of each object (``part_recall`` / ``body_recall``, the partial-coverage problem of CAMs);
* where it has ``context_mask`` and the context table (pairs of a class c and its context region k):
  EPS's confusion ratio m_{k,c}/t_c, and a *controlled* leak comparison. In the images that contain
  c, ``context_leak`` is the share of region-k pixels labelled c and ``background_leak`` the share
  of ordinary background pixels (not object, not any context) labelled c: same images, same class,
  same label maps, so the ratio of the two isolates what co-occurrence adds (a classifier that
  learned "water ⇒ boat" labels water as boat far more often than other background). Both are pooled
  over pairs (ratios of summed counts) and given per pair. ``background_fg_share`` is the share of
  all ordinary background labelled as *any* class, over all images (spill around every object).

The metric names are the ones notebooks write to ``metrics.json`` (prefixed by the method).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from .metrics import ConfusionMatrix, ConfusionRatio, RegionStats


class LabelMapEvaluator:
    """Accumulate label-map quality over images.

    Parameters
    ----------
    num_classes : foreground classes C (the matrix is (C+1)×(C+1)).
    context_pairs : ``{"boat/water": (class_index, context_id), ...}`` (toy scenes:
        :func:`wsss_core.data.toyscenes.context_pairs`); None skips the co-occurrence figures.
    class_names : names incl. background, for per-class tables.
    """

    def __init__(self, num_classes: int, context_pairs: Mapping[str, tuple[int, int]] | None = None,
                 class_names: Sequence[str] | None = None):
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.context_pairs = dict(context_pairs or {})
        self.cm = ConfusionMatrix(num_classes + 1)
        self.part = RegionStats()
        self.body = RegionStats()
        self.cr = ConfusionRatio()
        self.has_parts = False
        self.has_context = False
        # per pair: [context pixels labelled c, context pixels, ordinary bg labelled c, ordinary bg], images with c
        self.leak_counts = {name: np.zeros(4, np.int64) for name in self.context_pairs}
        self.n_images = 0

    def update(self, pred, gt, part_mask=None, context_mask=None) -> "LabelMapEvaluator":
        """Add one image: ``pred``, ``gt`` (H, W) int (gt 255 = ignore); ``part_mask`` (H, W) > 0 on
        part pixels; ``context_mask`` (H, W) context ids (0 = none)."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        self.cm.update(pred, gt)
        if part_mask is not None:
            part = np.asarray(part_mask) > 0
            self.part.update(pred, gt, part)
            self.body.update(pred, gt, ~part)
            self.has_parts = True
        if context_mask is not None and self.context_pairs:
            ctx = np.asarray(context_mask)
            self.cr.update(pred, gt, ctx, self.context_pairs)
            valid = gt != 255
            ordinary = (gt == 0) & (ctx == 0)
            for name, (c, k) in self.context_pairs.items():
                if not (gt == c).any():
                    continue
                region = (ctx == k) & valid & (gt != c)
                pc = pred == c
                self.leak_counts[name] += (int((region & pc).sum()), int(region.sum()),
                                           int((ordinary & pc).sum()), int(ordinary.sum()))
            self.has_context = True
        self.n_images += 1
        return self

    def update_from_sample(self, pred, raw: Mapping) -> "LabelMapEvaluator":
        """Add one image given the dataset's raw sample (``VOCLayoutDataset.get_raw``)."""
        return self.update(pred, raw["mask"], raw.get("part_mask"), raw.get("context_mask"))

    def summary(self) -> dict:
        """Flat dict: ``miou, fg_precision, fg_recall, pixel_acc, per_class_iou`` and where available
        ``part_recall, body_recall, context_leak, context_leak_per_pair, confusion_ratio,
        background_leak``. ``context_leak`` is the pooled share over all pairs' regions."""
        out = {
            "miou": self.cm.miou(),
            "fg_precision": self.cm.fg_precision(),
            "fg_recall": self.cm.fg_recall(),
            "pixel_acc": self.cm.pixel_accuracy(),
            "per_class_iou": self.cm.summary(self.class_names)["per_class_iou"],
            "n_images": self.n_images,
        }
        if self.has_parts:
            out["part_recall"] = self.part.value
            out["body_recall"] = self.body.value
        if self.has_context:
            tot = sum(self.leak_counts.values())
            out["context_leak"] = _div(tot[0], tot[1])
            out["background_leak"] = _div(tot[2], tot[3])
            out["context_leak_per_pair"] = {n: _div(v[0], v[1]) for n, v in self.leak_counts.items()}
            out["background_leak_per_pair"] = {n: _div(v[2], v[3]) for n, v in self.leak_counts.items()}
            out["confusion_ratio"] = self.cr.ratios()
            m, t = sum(self.cr.m.values()), sum(self.cr.t.values())
            out["confusion_ratio_pooled"] = _div(m, t)
            out["background_fg_share"] = self.cr.background_leak()
        return out


def _div(a, b) -> float:
    return float(a) / float(b) if b else math.nan


def evaluate_label_maps(preds: Iterable[np.ndarray], dataset, context_pairs=None, progress: bool = False,
                        desc: str = "evaluate") -> dict:
    """Evaluate label maps given in dataset order (``preds[i]`` for ``dataset.get_raw(i)``)."""
    from tqdm.auto import tqdm

    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    for i, pred in enumerate(tqdm(preds, total=len(dataset), desc=desc, disable=not progress)):
        ev.update_from_sample(pred, dataset.get_raw(i))
    return ev.summary()


def evaluate_label_dir(label_dir, dataset, context_pairs=None, progress: bool = False) -> dict:
    """Evaluate a folder of label PNGs (``<id>.png``, class indices, 255 = ignore) against ``dataset``'s
    true masks — the way every pseudo-label maker of this project is scored.

    Raises
    ------
    FileNotFoundError : an image of ``dataset`` has no ``<id>.png`` in ``label_dir`` (names the first).
    """
    from pathlib import Path

    from .data.palette import read_label_png

    label_dir = Path(label_dir)
    missing = [iid for iid in dataset.ids if not (label_dir / f"{iid}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{label_dir}: no label map for {len(missing)} of {len(dataset)} images "
                                f"(first: {missing[0]}.png)")
    preds = (read_label_png(label_dir / f"{iid}.png").astype(np.int64) for iid in dataset.ids)
    return evaluate_label_maps(preds, dataset, context_pairs, progress=progress, desc=f"score {label_dir.name}")
