"""Analysis of the AffinityNet + random-walk stage against the ground truth (never used for training):
what notebook ``02_affinitynet_random_walk`` and its study measure, split out of
:mod:`wsss_core.stages.affinity`, which re-exports every public name here (``stage.affinity_quality``
etc. keep working).

* :func:`affinity_label_report` — how good the confident fg / bg / neutral affinity labels are;
* :func:`object_report` — per-object recall of several label makers, with the toy scenes' object flags;
* :data:`PAIR_KINDS`, :func:`same_region_pairs`, :func:`oracle_affinities`, :func:`affinity_quality`,
  :func:`pair_label_accuracy` — pairs on the affinity grid against the true instance map: the
  affinities a perfect AffinityNet would give, how well learned ones separate same-region from
  different-region pairs (ROC-AUC, mean affinity per kind of pair), how often the label pairs are right.

Nothing here imports the stage module (no import cycle); it works on label maps, datasets and
affinity callables.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..affinity import downsample_labels, offset_slices, pair_labels, pair_offsets
from ..data.palette import read_label_png


# ------------------------------------------------------------------------------------------------
# affinity labels and objects
# ------------------------------------------------------------------------------------------------

def affinity_label_report(label_dir, dataset, progress: bool = False) -> dict:
    """How good the affinity labels are, against the ground truth (which the method never sees).

    Returns shares of all non-ignored pixels labelled ``fg`` / ``bg`` / ``neutral``;
    ``fg_precision`` (confident-foreground pixels whose true class is that class),
    ``bg_precision`` (confident-background pixels that are truly background), ``fg_coverage`` /
    ``bg_coverage`` (share of the true foreground / background that got a confident label), and
    ``fg_coverage_body`` (the same for object pixels off the badges, where toy scenes have
    ``part_mask``).
    """
    from tqdm.auto import tqdm

    n = dict(fg=0, bg=0, neutral=0, fg_ok=0, bg_ok=0, gt_fg=0, gt_bg=0, gt_fg_hit=0, gt_bg_hit=0, body=0, body_hit=0)
    for i, iid in enumerate(tqdm(dataset.ids, desc="score affinity labels", disable=not progress)):
        raw = dataset.get_raw(i)
        lab = read_label_png(Path(label_dir) / f"{iid}.png").astype(np.int64)
        gt = raw["mask"].astype(np.int64)
        valid = gt != 255
        fg, bg, neu = valid & (lab > 0) & (lab < 255), valid & (lab == 0), valid & (lab == 255)
        n["fg"] += int(fg.sum())
        n["bg"] += int(bg.sum())
        n["neutral"] += int(neu.sum())
        n["fg_ok"] += int((fg & (lab == gt)).sum())
        n["bg_ok"] += int((bg & (gt == 0)).sum())
        gfg, gbg = valid & (gt > 0), valid & (gt == 0)
        n["gt_fg"] += int(gfg.sum())
        n["gt_bg"] += int(gbg.sum())
        n["gt_fg_hit"] += int((gfg & (lab == gt)).sum())
        n["gt_bg_hit"] += int((gbg & (lab == 0)).sum())
        if "part_mask" in raw:
            body = gfg & (raw["part_mask"] == 0)
            n["body"] += int(body.sum())
            n["body_hit"] += int((body & (lab == gt)).sum())
    tot = max(n["fg"] + n["bg"] + n["neutral"], 1)

    def d(a, b):
        return a / b if b else float("nan")

    out = {"share_fg": n["fg"] / tot, "share_bg": n["bg"] / tot, "share_neutral": n["neutral"] / tot,
           "fg_precision": d(n["fg_ok"], n["fg"]), "bg_precision": d(n["bg_ok"], n["bg"]),
           "fg_coverage": d(n["gt_fg_hit"], n["gt_fg"]), "bg_coverage": d(n["gt_bg_hit"], n["gt_bg"])}
    if n["body"]:
        out["fg_coverage_body"] = d(n["body_hit"], n["body"])
    return out


def object_report(label_maps: dict, dataset, progress: bool = False) -> list[dict]:
    """Per-object recall of several label makers, with the toy scenes' object flags.

    Parameters
    ----------
    label_maps : ``{name: callable(i) -> (H, W) label map}`` (e.g. CAM and random-walk labels).
    dataset : a VOC-layout dataset with instance masks (``SegmentationObject/``) and XML annotations;
        the toy scenes' XML also flags objects as ``camouflaged``, ``nonconvex``, ``truncated``.

    Returns
    -------
    list of dict, one per object: ``image`` (index), ``id``, ``object`` (instance id), ``cls``,
    ``pixels``, the flags, ``touching`` (another object's pixels within 2 px), and for every name
    ``recall_<name>`` (share of the object's pixels given its class).
    """
    import xml.etree.ElementTree as ET

    import cv2
    from tqdm.auto import tqdm

    rows = []
    ann = Path(dataset.root) / "Annotations"
    for i in tqdm(range(len(dataset)), desc="objects", disable=not progress):
        raw = dataset.get_raw(i)
        inst, sem = raw.get("instance_mask"), raw.get("mask")
        if inst is None or sem is None:
            raise ValueError("object_report needs instance masks (SegmentationObject/) and class masks")
        flags = []
        xml = ann / f"{raw['id']}.xml"
        if xml.is_file():
            for o in ET.parse(xml).getroot().findall("object"):
                flags.append({k: o.findtext(k) == "1" for k in ("camouflaged", "nonconvex", "truncated")})
        preds = {n: np.asarray(f(i)) for n, f in label_maps.items()}
        ids = [k for k in np.unique(inst) if 0 < k < 255]
        for k in ids:
            m = inst == k
            cls = int(np.bincount(sem[m][sem[m] < 255].astype(np.int64), minlength=1).argmax()) if (sem[m] < 255).any() else 0
            if cls == 0:
                continue
            near = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            others = (inst > 0) & (inst < 255) & ~m
            row = {"image": i, "id": raw["id"], "object": int(k), "cls": cls, "pixels": int(m.sum()),
                   "touching": bool((near & others).any()),
                   **(flags[k - 1] if k - 1 < len(flags) else {"camouflaged": False, "nonconvex": False, "truncated": False})}
            for n, p in preds.items():
                row[f"recall_{n}"] = float((p[m] == cls).mean())
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# pairs on the affinity grid, against the true instance map
# ------------------------------------------------------------------------------------------------

PAIR_KINDS = ("bg-bg", "body-body", "badge-body", "object-background", "object-object")
"""Kinds of pairs in :func:`affinity_quality`: both ends background; both ends in one object, off its
badge; one end on the badge, the other in the same object; across an object's edge to the background;
between two different objects."""


def same_region_pairs(instance_grid, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(same, valid)``, each (K, h, w) bool: whether the two ends of each forward pair lie in the same
    region of an instance map on the grid (0 = background is one region; 255 = ignore → not valid)."""
    g = torch.as_tensor(np.asarray(instance_grid)).long()
    if g.dim() != 2:
        raise ValueError(f"instance_grid must be (h, w), got shape {tuple(g.shape)}")
    h, w = g.shape
    offs = pair_offsets(radius)
    same = torch.zeros(len(offs), h, w, dtype=torch.bool)
    valid = torch.zeros(len(offs), h, w, dtype=torch.bool)
    for k, (dy, dx) in enumerate(offs):
        sy, ty = offset_slices(dy, h)
        sx, tx = offset_slices(dx, w)
        a, b = g[sy, sx], g[ty, tx]
        same[k, sy, sx] = a == b
        valid[k, sy, sx] = (a != 255) & (b != 255)
    return same, valid


def oracle_affinities(instance_mask, stride: int, radius: int) -> torch.Tensor:
    """The affinities a perfect AffinityNet would give: 1 inside one region of the true instance map
    (background = one region), 0 across regions, 0 outside the grid; (K, ⌈H/s⌉, ⌈W/s⌉) float32.
    A teaching device (what the walk could do) — it uses the ground truth."""
    inst = np.asarray(instance_mask).astype(np.int64)
    same, valid = same_region_pairs(downsample_labels(inst, stride), radius)
    return (same & valid).float()


def _roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def affinity_quality(affinity_fn, gt_dataset, indices, stride: int, radius: int, beta: float = 8.0,
                     progress: bool = False) -> dict:
    """How well affinities separate "same region" from "different region" pairs, against the truth.

    Parameters
    ----------
    affinity_fn : callable ``i -> (K, h, w)`` affinities of image ``i`` (e.g. AffinityNet's).
    gt_dataset : VOC-layout dataset with ``instance_mask``, ``mask`` and (toy scenes) ``part_mask``
        in :meth:`get_raw`.
    indices : images to use.
    stride, radius : of the affinities; beta : the walk's β (for the ``mean_a^beta`` column).

    Returns
    -------
    dict: ``auc`` (ROC-AUC of the affinity as a same-region detector over every in-grid pair),
    and for each of :data:`PAIR_KINDS` ``{"n", "mean_a", "mean_a^beta"}``.
    """
    from tqdm.auto import tqdm

    ys, As, kinds = [], [], []
    for i in tqdm(list(indices), desc="affinity vs truth", disable=not progress):
        raw = gt_dataset.get_raw(i)
        if "instance_mask" not in raw:
            raise ValueError("affinity_quality needs instance masks (a dataset with SegmentationObject/)")
        aff = torch.as_tensor(affinity_fn(i)).float().cpu()
        inst = downsample_labels(raw["instance_mask"].astype(np.int64), stride)
        part = downsample_labels(raw["part_mask"].astype(np.int64), stride) if "part_mask" in raw else np.zeros_like(inst)
        same, valid = same_region_pairs(inst, radius)
        h, w = inst.shape
        if tuple(aff.shape[1:]) != (h, w):
            raise ValueError(f"affinity grid {tuple(aff.shape[1:])} ≠ label grid {(h, w)}")
        g, p = torch.as_tensor(inst), torch.as_tensor(part) > 0
        for k, (dy, dx) in enumerate(pair_offsets(radius)):
            sy, ty = offset_slices(dy, h)
            sx, tx = offset_slices(dx, w)
            a, b = g[sy, sx], g[ty, tx]
            ao, bo = (a > 0) & (a != 255), (b > 0) & (b != 255)
            kind = torch.full(a.shape, 3)                                     # object-background
            kind[~ao & ~bo] = 0
            kind[ao & bo & (a == b)] = 1
            kind[ao & bo & (a == b) & (p[sy, sx] | p[ty, tx])] = 2
            kind[ao & bo & (a != b)] = 4
            v = valid[k, sy, sx]
            ys.append(same[k, sy, sx][v].numpy())
            As.append(aff[k, sy, sx][v].numpy())
            kinds.append(kind[v].numpy())
    y, a, kd = np.concatenate(ys), np.concatenate(As), np.concatenate(kinds)
    out = {"auc": _roc_auc(y, a), "beta": float(beta)}
    for j, name in enumerate(PAIR_KINDS):
        sel = kd == j
        out[name] = {"n": int(sel.sum()), "mean_a": float(a[sel].mean()) if sel.any() else float("nan"),
                     "mean_a^beta": float((a[sel] ** beta).mean()) if sel.any() else float("nan")}
    return out


def pair_label_accuracy(label_fn, gt_dataset, indices, stride: int, radius: int) -> dict:
    """How often the affinity labels' pairs are right: a background- or foreground-positive pair should
    join two pixels of one true region, a negative pair two different regions (background = one region).

    Parameters
    ----------
    label_fn : callable ``i -> (H, W)`` affinity-label map (0 / c / 255) of image ``i``.
    gt_dataset : dataset with ``instance_mask`` in :meth:`get_raw`.

    Returns
    -------
    dict: ``{"bg_pos", "fg_pos", "neg"}`` → ``{"n", "accuracy"}``.
    """
    ok = {k: [0, 0] for k in ("bg_pos", "fg_pos", "neg")}
    for i in indices:
        raw = gt_dataset.get_raw(i)
        same, valid = same_region_pairs(downsample_labels(raw["instance_mask"].astype(np.int64), stride), radius)
        grid = torch.as_tensor(downsample_labels(np.asarray(label_fn(i)).astype(np.int64), stride))
        for key, m, want in zip(ok, pair_labels(grid, radius), (True, True, False)):
            sel = m & valid
            ok[key][0] += int((same[sel] == want).sum())
            ok[key][1] += int(sel.sum())
    return {k: {"n": n, "accuracy": (c / n) if n else float("nan")} for k, (c, n) in ok.items()}
