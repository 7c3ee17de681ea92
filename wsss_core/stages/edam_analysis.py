"""Analysis of the EDAM stage: what notebook ``03_edam`` and its study measure on a trained model and
its DA masks, split out of :mod:`wsss_core.stages.edam`, which re-exports every public name here
(``stage.sweep_curves`` etc. keep working).

* :func:`pair_accuracy` — logit-sign accuracy and BCE on (validation) pairs;
* :func:`sweep_curves`, :func:`recall_at_precision`, :func:`map_medians` — constant-background
  pseudo-labels over a range of thresholds, recall at a fixed precision, median map values on objects
  and background (for CAMs and DA masks alike);
* :data:`ATTENTION_REGIONS`, :func:`region_fractions`, :func:`attention_report` — where the trained
  cross-image attention of the shared class looks;
* :func:`salient_and_active_labels` — pseudo-labels that need both the saliency map and the masks
  (notebook ``03_edam`` §9; the stage's own rule is :func:`wsss_core.stages.edam.saliency_override`).

Nothing here imports the stage module at run time (no import cycle; its types appear in annotations only).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .. import engine
from ..cams import load_cams
from ..data.voc import collate_samples
from ..models.edam import EDAMNet, edam_loss, group_targets

if TYPE_CHECKING:
    from .edam import EDAMPairDataset


# ------------------------------------------------------------------------------------------------
# the trained model on pairs
# ------------------------------------------------------------------------------------------------

def pair_accuracy(model: EDAMNet, pairs: EDAMPairDataset, max_pairs: int = 256, batch_size: int = 16) -> dict:
    """Logit-sign accuracy and BCE of the model on the first ``max_pairs`` pairs of ``pairs``' current
    epoch (whatever transforms ``pairs`` has). ``{"acc", "loss", "n_pairs"}``."""
    sub = torch.utils.data.Subset(pairs, range(min(max_pairs, len(pairs))))

    def fn(m, batch, dev):
        idx = batch["class_idx"].to(dev)
        t = group_targets(batch["label"].to(dev), idx)
        lo = m(batch["image"].to(dev), idx).float()
        return ((lo > 0) == (t > 0.5)).float().sum().item(), edam_loss(lo, t).item() * t.numel(), t.numel()

    out = engine.predict(model, sub, fn, batch_size=batch_size, collate_fn=collate_samples, progress=False,
                         shard=False)
    n = sum(o[2] for o in out)
    return {"acc": sum(o[0] for o in out) / n, "loss": sum(o[1] for o in out) / n, "n_pairs": len(sub)}


# ------------------------------------------------------------------------------------------------
# threshold sweeps and map statistics (CAMs or DA masks)
# ------------------------------------------------------------------------------------------------

def sweep_curves(mask_dir, dataset, thresholds: Sequence[float], progress: bool = False) -> dict:
    """Quality of constant-background pseudo-labels at every threshold, in one pass over the maps
    (CAMs or DA masks in ``mask_dir``; the rule of :func:`wsss_core.cams.cams_to_labels`).

    Returns ``{"thresholds", "miou", "fg_precision", "fg_recall", "part_recall", "body_recall"}``,
    arrays over ``thresholds`` (part/body recall: ``nan`` without part masks). Comparing two
    methods' recall *at the same precision* removes the effect of where each one's best threshold
    happens to fall.
    """
    from tqdm.auto import tqdm

    from ..cams import miou_from_confusion, threshold_sweep

    th = np.asarray(thresholds, np.float32)
    C = dataset.num_classes
    mats = np.zeros((th.size, C + 1, C + 1), np.int64)
    hits = {"part": np.zeros(th.size, np.int64), "body": np.zeros(th.size, np.int64)}
    totals = {"part": 0, "body": 0}
    for i in tqdm(range(len(dataset)), desc="sweep", disable=not progress):
        raw = dataset.get_raw(i)
        maps, label = load_cams(Path(mask_dir) / f"{raw['id']}.npz")
        gt = raw["mask"]
        mats += threshold_sweep([(maps, label, gt)], C, th)
        if "part_mask" not in raw:
            continue
        lab = label.astype(bool)
        masked = np.where(lab[:, None, None], maps, -1.0)
        mx, arg = masked.max(0), masked.argmax(0) + 1
        obj = (gt >= 1) & (gt != 255)
        part = raw["part_mask"] > 0
        for name, region in (("part", obj & part), ("body", obj & ~part)):
            totals[name] += int(region.sum())
            v = np.sort(mx[region & (arg == gt)]) if lab.any() else np.zeros(0)
            hits[name] += v.size - np.searchsorted(v, th, side="right")   # #(v > t)
    tp = np.array([np.diag(m)[1:].sum() for m in mats], np.float64)
    pred_fg = mats[:, :, 1:].sum((1, 2)).astype(np.float64)
    true_fg = mats[:, 1:, :].sum((1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"thresholds": th.astype(np.float64), "miou": miou_from_confusion(mats),
               "fg_precision": np.where(pred_fg > 0, tp / pred_fg, np.nan),
               "fg_recall": np.where(true_fg > 0, tp / true_fg, np.nan)}
        for name in ("part", "body"):
            out[f"{name}_recall"] = hits[name] / totals[name] if totals[name] else np.full(th.size, np.nan)
    return out


def recall_at_precision(curves: dict, precision: float, key: str = "fg_recall") -> float:
    """Linear interpolation of ``curves[key]`` (e.g. ``"fg_recall"``, ``"body_recall"``) at the given
    foreground precision along a :func:`sweep_curves` result; ``nan`` outside the curve's range."""
    p, r = np.asarray(curves["fg_precision"]), np.asarray(curves[key])
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    if p.size == 0 or precision < p.min() or precision > p.max():
        return math.nan
    order = np.argsort(p)
    return float(np.interp(precision, p[order], r[order]))


def map_medians(map_dirs: dict, dataset) -> dict:
    """Median map value of each image's own classes on their object pixels and on background pixels,
    for several folders of maps (CAMs, DA masks): ``{name: (on objects, on background)}``. A mask that
    "covers more of the object" and one that "covers more of everything" differ in the second number."""
    vals = {n: ([], []) for n in map_dirs}
    for i in range(len(dataset)):
        raw = dataset.get_raw(i)
        for name, folder in map_dirs.items():
            maps, label = load_cams(Path(folder) / f"{raw['id']}.npz")
            for c in np.flatnonzero(label):
                vals[name][0].append(maps[c][raw["mask"] == c + 1])
                vals[name][1].append(maps[c][raw["mask"] == 0])
    return {n: tuple(float(np.median(np.concatenate(v))) if v else math.nan for v in vv) for n, vv in vals.items()}


# ------------------------------------------------------------------------------------------------
# where the cross-image attention looks
# ------------------------------------------------------------------------------------------------

ATTENTION_REGIONS = {"badge": "badges of class c", "body": "rest of the class-c objects (bodies)",
                     "other_objects": "objects of other classes", "other": "everything else (background, distractors)"}
"""The regions of image 2 in :func:`attention_report`."""


def region_fractions(raw: dict, c: int, h: int, w: int) -> dict:
    """Share of each of an ``h × w`` token grid's cells covered by the class-``c`` badges, the rest of
    the class-``c`` objects, other classes' objects and anything else (keys of :data:`ATTENTION_REGIONS`),
    each flattened to ``(h·w,)``; ``c`` is 0-based."""
    import cv2

    H, W = raw["mask"].shape
    badge = (raw["part_mask"] == c + 1) if "part_mask" in raw else np.zeros((H, W), bool)
    obj = (raw["mask"] == c + 1) & ~badge
    others = (raw["mask"] >= 1) & (raw["mask"] != 255) & (raw["mask"] != c + 1)
    pool = lambda m: cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA).reshape(-1)  # noqa: E731
    fb, fo, fx = pool(badge), pool(obj), pool(others)
    return {"badge": fb, "body": fo, "other_objects": fx, "other": 1.0 - fb - fo - fx}


@torch.no_grad()
def attention_report(model: EDAMNet, pairs: EDAMPairDataset, dataset, max_pairs: int = 200, n_examples: int = 3,
                     class_names: Sequence[str] | None = None) -> dict:
    """Where the trained cross-image attention of the shared class looks, over the first ``max_pairs``
    pairs of ``pairs`` (evaluation view; ``dataset`` gives the raw images, masks and part masks of the
    same split).

    For each pair sharing class ``c``, the query is image 1's token where ``m_c`` is largest; its
    attention (Eq. 4, averaged over heads) over image 2's tokens is split into the regions of
    :data:`ATTENTION_REGIONS` (:func:`region_fractions`).

    Returns
    -------
    dict: ``n_pairs``; ``cross_share`` (mean share of all tokens' attention given to the other image;
    0.5 would be uniform); ``regions`` ``{region: (share of the query's attention on image 2, share of
    image 2's tokens)}``; ``lift`` ``{"body", "other_objects"}`` (attention per unit of area, over pairs
    whose image 2 has other classes' objects too; > 1 = more than its size); ``examples`` (rows of
    images for :func:`wsss_core.viz.image_grid`) and ``titles``.
    """
    import cv2

    from .. import viz
    from ..models.edam import cross_image_share

    names = list(class_names) if class_names is not None else [str(k) for k in range(1000)]
    dev = next(model.parameters()).device
    model.eval()
    mass, area = {r: [] for r in ATTENTION_REGIONS}, {r: [] for r in ATTENTION_REGIONS}
    has_others, cross, rows, titles, shown = [], [], [], [], set()
    grid = lambda v, h, w: v.reshape(h, w).cpu().numpy()  # noqa: E731
    for k in range(min(len(pairs), int(max_pairs))):
        it = pairs[k]
        ia, ib, c = (int(v) for v in pairs.pairs[k])
        _, att = model(it["image"][None].to(dev), it["class_idx"][None].to(dev), return_attention=True)
        mk = model.masks(it["image"].to(dev))[:, c]                       # (2, h, w)
        h, w = mk.shape[-2:]
        Aw = att[c][0].mean(0)                                            # (2hw, 2hw), heads averaged
        cross.append(cross_image_share(Aw, h * w).mean().item())
        q = int(mk[0].flatten().argmax())
        rb = dataset.get_raw(ib)
        fr = region_fractions(rb, c, h, w)
        to_b = Aw[q, h * w:].cpu().numpy()
        for r in mass:
            mass[r].append(float((to_b * fr[r]).sum() / max(to_b.sum(), 1e-12)))
            area[r].append(float(fr[r].mean()))
        has_others.append(bool(fr["other_objects"].sum() > 0))
        if len(rows) < n_examples and c not in shown and k % 3 == 0:
            shown.add(c)
            ra = dataset.get_raw(ia)
            qy, qx = divmod(q, w)
            img_a = ra["image"].copy()
            cv2.drawMarker(img_a, (int((qx + 0.5) * img_a.shape[1] / w), int((qy + 0.5) * img_a.shape[0] / h)), (255, 255, 255),
                           cv2.MARKER_TILTED_CROSS, 9, 2)
            row_a, row_b = Aw[q, : h * w], Aw[q, h * w:]
            rows.append([img_a, viz.heatmap(ra["image"], grid(mk[0], h, w)), viz.heatmap(ra["image"], grid(row_a / row_a.max(), h, w)),
                         viz.outline(viz.heatmap(rb["image"], grid(row_b / row_b.max(), h, w)), rb["mask"] == c + 1),
                         viz.heatmap(rb["image"], grid(mk[1], h, w))])
            titles.append([f"image 1 ({names[c + 1]}), query ×", "m_c, image 1", "attention → image 1",
                           f"attention → image 2 (class outlined)\n{float(row_b.sum()):.0%} of the query's total", "m_c, image 2"])
    ho = np.asarray(has_others, bool)
    lift = {r: float(np.sum(np.asarray(mass[r])[ho]) / max(np.sum(np.asarray(area[r])[ho]), 1e-12)) if ho.any() else math.nan
            for r in ("body", "other_objects")}
    return {"n_pairs": len(cross), "cross_share": float(np.mean(cross)) if cross else math.nan,
            "regions": {r: (float(np.mean(mass[r])), float(np.mean(area[r]))) for r in mass}, "lift": lift,
            "n_pairs_with_others": int(ho.sum()), "examples": rows, "titles": titles}


# ------------------------------------------------------------------------------------------------
# pseudo-labels that need both cues (notebook 03 §9)
# ------------------------------------------------------------------------------------------------

def salient_and_active_labels(masks, label, saliency, theta: float, sal_theta: float = 0.2) -> np.ndarray:
    """Pseudo-labels that need both cues (notebook ``03_edam`` §9; a variant of Eqs. 9 and 10): a pixel
    is the present class with the largest mask if its 8-bit saliency is above ``sal_theta · 100``
    (Eq. 10's foreground) **and** that mask is above ``theta`` (Eq. 9's foreground); otherwise
    background. Unlike :func:`~wsss_core.stages.edam.saliency_override` the masks can veto a salient
    pixel (a distractor the detector fires on) and can never add a non-salient one.

    Parameters
    ----------
    masks : (C, H, W) float in [0, 1] (max-normalised; absent classes are ignored).
    label : (C,) multi-hot.
    saliency : (H, W) float in [0, 1] (an 8-bit PNG / 255; its 8-bit value is ``round(255·S)``) or uint8.
    theta : the constant background of Eq. 9 (ties → background).
    sal_theta : ϑ of Eq. 10 (official 0.2 ⇒ salient above 20 of 255).

    Returns
    -------
    (H, W) int64 in 0..C (ties between classes → the lower class index).
    """
    from ..cams import cams_to_labels

    m = np.asarray(masks, np.float32)
    sal = np.asarray(saliency)
    if m.ndim != 3 or sal.shape != m.shape[1:] or np.shape(label) != (m.shape[0],):
        raise ValueError(f"masks (C, H, W) {m.shape}, label (C,) {np.shape(label)} and saliency (H, W) {sal.shape} disagree")
    sal255 = sal.astype(np.float64) if sal.dtype == np.uint8 else np.rint(np.clip(sal, 0, 1) * 255.0)
    labels = cams_to_labels(m, np.asarray(label), threshold=float(theta))
    return np.where(sal255 > sal_theta * 100.0, labels, 0).astype(np.int64)
