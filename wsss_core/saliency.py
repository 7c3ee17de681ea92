"""Saliency maps for EPS (Lee et al., CVPR 2021): where they come from, how good they are, and the
map-selection rule that turns a classifier's C + 1 maps into a predicted saliency map.

Sources
-------
A saliency source is a folder of grey PNGs, one per image (``<root>/<folder>/<id>.png``, 0..255;
RGB maps are averaged over channels, as EPS's loader does), read by
:class:`wsss_core.data.voc.VOCLayoutDataset` with ``saliency_dir=<folder>``:

* toy scenes: ``Saliency/`` — a "pretrained detector" stand-in (blurred, misses ≈ 8 % of the objects,
  fires on ≈ 30 % of the distractors) — and ``SaliencyUnsupervised/`` (OpenCV's spectral residual);
* PASCAL VOC: any folder the user provides (EPS used PFAN maps, ``SALImages/``).

:func:`find_saliency_dirs` lists them, :func:`saliency_quality` measures one against the true
foreground (MAE and F-measure, the salient-object-detection measures), :func:`saliency_error_masks`
splits its errors into *missed objects* and *false alarms*, and :func:`saliency_by_region` says how
salient each kind of region is (toy scenes: badges, bodies, water, rails, other background) — what the
saliency loss will teach the classifier about it.

Map selection (the heart of EPS's saliency loss)
-----------------------------------------------
With ``P = softmax(maps)`` over the C + 1 channels (background last), the classes of the image label
are split into those whose map is matched against the saliency map as *foreground* and those folded
into the *background* (:func:`select_maps`), then (:func:`predicted_saliency`)

    M_fg = Σ_{c ∈ fg} P_c ,   M_bg = P_{C+1} + Σ_{c ∈ bg} P_c ,   Ŝ = λ M_fg + (1 − λ)(1 − M_bg).

The three strategies of the paper (Sec. 3 / ablation on map selection — recalled from the paper,
**not checked against its PDF**; the official code implements only the adaptive one):

* ``"naive"`` — every class of the label is foreground;
* ``"predefined"`` — a fixed list of classes that saliency detectors usually miss (the paper's
  examples are indoor classes such as sofa, chair and dining table) is always background;
* ``"adaptive"`` (the official code, ``eps.py: get_eps_loss``) — class c is foreground in *this* image
  iff its overlap ratio with the saliency map exceeds τ (:func:`overlap_ratio`; τ = 0.4 in
  ``script/voc12_eps.sh``, argparse default 0.5).

Shapes: probabilities ``(B, C + 1, h, w)``; saliency ``(B, 1, h, w)`` or ``(B, h, w)`` in [0, 1];
labels ``(B, C)`` multi-hot; selections ``(B, C)`` bool.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SELECTION_STRATEGIES",
    "OVERLAP_EPS",
    "find_saliency_dirs",
    "foreground_mask",
    "saliency_quality",
    "saliency_error_masks",
    "region_masks",
    "saliency_by_region",
    "resize_saliency",
    "overlap_ratio",
    "select_maps",
    "predicted_saliency",
]

SELECTION_STRATEGIES = ("adaptive", "naive", "predefined")
"""The map-selection strategies of EPS (see the module docstring)."""

OVERLAP_EPS = 1e-4
"""Added per pixel to the denominator of the overlap ratio (official ``get_eps_loss``)."""


# --------------------------------------------------------------------------------------------------
# sources and their quality
# --------------------------------------------------------------------------------------------------
def find_saliency_dirs(root: str | os.PathLike) -> dict[str, Path]:
    """Folders of ``root`` (a VOC-layout tree) that hold saliency maps: every sub-folder whose name
    contains "sal" (case-insensitive) and that holds at least one ``.png``.

    Returns
    -------
    dict
        ``{folder name: path}``, sorted by name (toy scenes: ``Saliency``, ``SaliencyUnsupervised``).
    """
    from .data.voc import resolve_voc_root

    root = resolve_voc_root(root)
    out = {}
    for p in sorted(root.iterdir()):
        if p.is_dir() and "sal" in p.name.lower() and next(p.glob("*.png"), None) is not None:
            out[p.name] = p
    return out


def foreground_mask(gt) -> np.ndarray:
    """True foreground of a label map: ``(gt > 0) & (gt != 255)`` → (H, W) bool."""
    gt = np.asarray(gt)
    return (gt > 0) & (gt != 255)


def saliency_quality(root: str | os.PathLike, split: str | Sequence[str], saliency_dir: str,
                     mask_dir: str = "SegmentationClass", max_images: int | None = None,
                     threshold: float = 0.5, progress: bool = False) -> dict:
    """How good is a saliency source? MAE and F-measure against the true foreground.

    Pixels labelled 255 (ignore: VOC's object outlines) are left out. The F-measure
    ``F_β = (1 + β²) P R / (β² P + R)``, ``β² = 0.3`` (Achanta et al. 2009), is computed from the mean
    precision and recall curves over images (:class:`wsss_core.metrics.SaliencyStats`).

    Parameters
    ----------
    root : a VOC-layout tree
    split : split name or list of ids
    saliency_dir : folder of grey PNGs under ``root``
    mask_dir : ground-truth class masks
    max_images : score only the first ``max_images`` images
    threshold : for ``precision_at``/``recall_at``/``iou_at``: the binary map ``S ≥ threshold``
        (EPS's overlap test binarises at 0.5)

    Returns
    -------
    dict
        ``mae, max_f, mean_f, n`` and, for ``S ≥ threshold`` pooled over pixels,
        ``precision_at, recall_at, iou_at``, ``threshold``.
    """
    from tqdm.auto import tqdm

    from .data.voc import VOCLayoutDataset
    from .metrics import SaliencyStats

    ds = VOCLayoutDataset(root, split, mask_dir=mask_dir, instance_dir=None, saliency_dir=saliency_dir,
                          extra_dirs=None, annotation_dir=None)
    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    stats = SaliencyStats()
    tp = fp = fn = 0
    for i in tqdm(range(n), desc=f"saliency {saliency_dir}", disable=not progress):
        raw = ds.get_raw(i)
        gt = np.asarray(raw["mask"])
        valid = gt != 255
        fg = foreground_mask(gt)[valid]
        sal = np.clip(np.asarray(raw["saliency"], np.float64)[valid], 0.0, 1.0)
        stats.update(sal, fg)
        pos = sal >= threshold
        tp += int((pos & fg).sum())
        fp += int((pos & ~fg).sum())
        fn += int((~pos & fg).sum())
    v = stats.value
    div = lambda a, b: float(a) / b if b else float("nan")  # noqa: E731
    return {"mae": v["mae"], "max_f": v["max_f"], "mean_f": v["mean_f"], "n": v["n"], "threshold": float(threshold),
            "precision_at": div(tp, tp + fp), "recall_at": div(tp, tp + fn), "iou_at": div(tp, tp + fp + fn)}


def saliency_error_masks(saliency, gt, threshold: float = 0.5, near: float = 3.0) -> dict[str, np.ndarray]:
    """Where a saliency map is wrong, split by kind (all ``(H, W)`` bool, ignore pixels excluded).

    * ``missed`` — true foreground with ``S < threshold`` (an object the detector missed, or its
      under-segmented parts);
    * ``false_far`` — true background with ``S ≥ threshold`` more than ``near`` px from every object
      (a salient *distractor*);
    * ``false_near`` — the same within ``near`` px of an object (the detector's blurred outline).
    """
    import cv2

    sal = np.asarray(saliency, np.float32)
    gt = np.asarray(gt)
    if sal.shape != gt.shape:
        raise ValueError(f"saliency {sal.shape} and gt {gt.shape} differ in shape")
    valid = gt != 255
    fg = foreground_mask(gt)
    pos = sal >= threshold
    not_obj = (gt == 0).astype(np.uint8)  # distance from object and ignore (outline) pixels
    if not_obj.all():  # no object at all: every false alarm is far
        dist = np.full(gt.shape, np.inf, np.float32)
    else:
        dist = cv2.distanceTransform(not_obj, cv2.DIST_L2, 5)
    false = pos & (gt == 0)
    return {"missed": fg & ~pos & valid, "false_far": false & (dist > near), "false_near": false & (dist <= near)}


def region_masks(gt, part_mask=None, context_mask=None, context_regions: Mapping[str, int] | None = None
                 ) -> dict[str, np.ndarray]:
    """Split an image into the regions :func:`saliency_by_region` scores (all ``(H, W)`` bool, disjoint,
    ignore pixels (255) in none).

    * with ``part_mask``: ``"part"`` (object pixels of the discriminative part, ``part_mask > 0``) and
      ``"body"`` (the rest of the objects); without: ``"object"``;
    * ``context_regions`` ``{name: id}`` with ``context_mask``: ``name`` = *background* pixels
      (``gt == 0``) with ``context_mask == id`` (toy scenes: water 1, rails 2);
    * ``"other background"``: the remaining background.
    """
    gt = np.asarray(gt)
    obj = foreground_mask(gt)
    out: dict[str, np.ndarray] = {}
    if part_mask is not None:
        part = np.asarray(part_mask) > 0
        if part.shape != gt.shape:
            raise ValueError(f"part_mask {part.shape} and gt {gt.shape} differ in shape")
        out["part"], out["body"] = obj & part, obj & ~part
    else:
        out["object"] = obj
    other = gt == 0
    if context_regions:
        if context_mask is None:
            raise ValueError("context_regions needs a context_mask")
        ctx = np.asarray(context_mask)
        if ctx.shape != gt.shape:
            raise ValueError(f"context_mask {ctx.shape} and gt {gt.shape} differ in shape")
        for name, cid in context_regions.items():
            out[name] = (gt == 0) & (ctx == int(cid))
            other &= ~out[name]
    out["other background"] = other
    return out


def saliency_by_region(root: str | os.PathLike, split: str | Sequence[str], saliency_dir: str,
                       mask_dir: str = "SegmentationClass", context_pairs: Mapping[str, tuple] | None = None,
                       threshold: float = 0.5, max_images: int | None = None, progress: bool = False) -> dict:
    """How salient is each kind of region? The saliency loss pulls the predicted saliency Ŝ towards S
    everywhere, so a region with low S is taught to be background, one with high S to be an object.

    Regions (:func:`region_masks`): with the toy scenes' ``PartMask/`` the objects are split into
    ``"part"`` (the class badges) and ``"body"``; with ``ContextMask/`` and ``context_pairs``
    (``{"boat/water": (class id, context id), ...}``, :attr:`wsss_core.profiles.DataSpec.context_pairs`)
    the background is split into the named context regions (``"water"``, ``"rails"``: the part of each
    pair's name after the slash) and ``"other background"``.

    Returns
    -------
    dict
        ``{region: {"mean": mean S, "salient": share of pixels with S ≥ threshold, "pixels": n}}``,
        pooled over the images (regions without pixels: NaN).
    """
    from tqdm.auto import tqdm

    from .data.voc import VOCLayoutDataset

    ds = VOCLayoutDataset(root, split, mask_dir=mask_dir, instance_dir=None, saliency_dir=saliency_dir,
                          extra_dirs="auto", annotation_dir=None)
    regions = {}
    for pair, (_cls, cid) in (context_pairs or {}).items():
        regions[pair.split("/", 1)[-1]] = int(cid)
    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    acc: dict[str, list] = {}
    for i in tqdm(range(n), desc=f"saliency by region ({saliency_dir})", disable=not progress):
        raw = ds.get_raw(i)
        sal = np.asarray(raw["saliency"], np.float64)
        ctx = raw.get("context_mask")
        masks = region_masks(raw["mask"], raw.get("part_mask"), ctx, regions if ctx is not None else None)
        for name, m in masks.items():
            a = acc.setdefault(name, [0.0, 0, 0])
            a[0] += float(sal[m].sum())
            a[1] += int((sal[m] >= threshold).sum())
            a[2] += int(m.sum())
    return {name: {"mean": a[0] / a[2] if a[2] else float("nan"), "salient": a[1] / a[2] if a[2] else float("nan"),
                   "pixels": a[2]} for name, a in acc.items()}


# --------------------------------------------------------------------------------------------------
# the map-selection rule (training time, differentiable where it has to be)
# --------------------------------------------------------------------------------------------------
def _float(t: torch.Tensor) -> torch.Tensor:
    """float32 for half / integer inputs, float64 kept (the maths of EPS in full precision)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _as_b1hw(saliency: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(saliency)
    if s.ndim == 3:
        s = s[:, None]
    if s.ndim != 4 or s.shape[1] != 1:
        raise ValueError(f"saliency must be (B, H, W) or (B, 1, H, W), got shape {tuple(s.shape)}")
    return s


def resize_saliency(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Saliency ``(B, H, W)`` / ``(B, 1, H, W)`` → ``(B, 1, h, w)`` float at the maps' size, by
    **nearest-neighbour** interpolation (``F.interpolate``'s default mode, as the official
    ``get_eps_loss`` calls it)."""
    s = _float(_as_b1hw(saliency))
    if tuple(s.shape[-2:]) == tuple(size):
        return s
    return F.interpolate(s, size=tuple(size), mode="nearest")


def overlap_ratio(fg_probs: torch.Tensor, saliency: torch.Tensor, eps: float = OVERLAP_EPS) -> torch.Tensor:
    """EPS's overlap ratio of each class map with the saliency map (official ``get_eps_loss``).

    ``O_c = Σ_x ⌊P_c(x)⌉ ⌊S(x)⌉ / Σ_x (⌊P_c(x)⌉ + ε)``

    with ⌊·⌉ = ``torch.round`` (round half to even: a value is 1 iff it is *above* 0.5; exactly 0.5
    rounds to 0) and ε = 1e-4 added per pixel, so a class with no pixel above 0.5 gets O_c = 0. The
    ratio is the share of the class's confident pixels that are salient: the *precision* of the
    class map against the saliency map, not an IoU. No gradient flows through it.

    Parameters
    ----------
    fg_probs : (B, C, h, w) float in [0, 1] — softmax probabilities of the foreground channels
    saliency : (B, 1, h, w) or (B, h, w) in [0, 1], at the same (h, w)

    Returns
    -------
    (B, C) float
    """
    p = torch.round(_float(fg_probs.detach()))
    s = torch.round(_float(_as_b1hw(saliency).detach())).to(p.dtype)
    if p.ndim != 4 or p.shape[0] != s.shape[0] or p.shape[-2:] != s.shape[-2:]:
        raise ValueError(f"fg_probs {tuple(p.shape)} and saliency {tuple(s.shape)} must be (B, C, h, w) and "
                         "(B, 1, h, w) of the same batch and size")
    return (p * s).flatten(2).sum(-1) / (p + eps).flatten(2).sum(-1)


def select_maps(label: torch.Tensor, overlap: torch.Tensor | None = None, tau: float = 0.4,
                strategy: str = "adaptive", predefined: Iterable[int] | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which present classes count as foreground and which are folded into the background.

    Parameters
    ----------
    label : (B, C) multi-hot image labels
    overlap : (B, C) overlap ratios (:func:`overlap_ratio`); needed for ``"adaptive"``
    tau : adaptive rule: foreground iff ``O_c > tau`` (strict, as the official ``iou_saliency > tau``)
    strategy : ``"adaptive"`` | ``"naive"`` | ``"predefined"``
    predefined : for ``"predefined"``: the 0-based foreground channel indices (class c → c − 1) always
        treated as background, or a (C,) bool mask

    Returns
    -------
    fg, bg : (B, C) bool, disjoint, ``fg | bg == label``; absent classes are in neither.
    """
    lab = torch.as_tensor(label).bool()
    if lab.ndim != 2:
        raise ValueError(f"label must be (B, C), got shape {tuple(lab.shape)}")
    if strategy == "naive":
        fg = lab.clone()
    elif strategy == "adaptive":
        if overlap is None:
            raise ValueError("the adaptive strategy needs the overlap ratios")
        if tuple(overlap.shape) != tuple(lab.shape):
            raise ValueError(f"overlap {tuple(overlap.shape)} and label {tuple(lab.shape)} differ in shape")
        fg = lab & (overlap.to(lab.device) > tau)
    elif strategy == "predefined":
        C = lab.shape[1]
        if predefined is None:
            raise ValueError("the predefined strategy needs the list of background classes (predefined=...)")
        pre = torch.as_tensor(predefined, device=lab.device)
        if pre.dtype != torch.bool:
            idx = pre.long().reshape(-1)
            if idx.numel() and (idx.min() < 0 or idx.max() >= C):
                raise ValueError(f"predefined channel indices must lie in 0..{C - 1}, got {idx.tolist()}")
            pre = torch.zeros(C, dtype=torch.bool, device=lab.device)
            pre[idx] = True
        if pre.shape != (C,):
            raise ValueError(f"predefined mask must have shape ({C},), got {tuple(pre.shape)}")
        fg = lab & ~pre[None]
    else:
        raise ValueError(f"unknown map-selection strategy {strategy!r}; choose one of {SELECTION_STRATEGIES}")
    return fg, lab & ~fg


def predicted_saliency(probs: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, lam: float = 0.5
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EPS's saliency map predicted from the class maps.

    ``M_fg = Σ_{c ∈ fg} P_c``, ``M_bg = P_{C+1} + Σ_{c ∈ bg} P_c`` and
    ``Ŝ = λ M_fg + (1 − λ)(1 − M_bg)`` (λ = 0.5 in the official code). Since the C + 1 probabilities
    sum to 1, ``1 − M_bg = M_fg + Σ_{c absent} P_c``: absent classes count half (with λ = ½).

    Parameters
    ----------
    probs : (B, C + 1, h, w) softmax probabilities, background last
    fg, bg : (B, C) bool selections (:func:`select_maps`)
    lam : λ in [0, 1]

    Returns
    -------
    s_hat, m_fg, m_bg : (B, 1, h, w) each (differentiable in ``probs``)
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (B, C + 1, h, w), got shape {tuple(probs.shape)}")
    B, K = probs.shape[:2]
    C = K - 1
    if tuple(fg.shape) != (B, C) or tuple(bg.shape) != (B, C):
        raise ValueError(f"fg/bg selections must be ({B}, {C}) for probs of shape {tuple(probs.shape)}")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    fg_w = fg.to(probs.dtype)[:, :, None, None]
    bg_w = bg.to(probs.dtype)[:, :, None, None]
    m_fg = (probs[:, :C] * fg_w).sum(1, keepdim=True)
    m_bg = probs[:, C:] + (probs[:, :C] * bg_w).sum(1, keepdim=True)
    s_hat = lam * m_fg + (1.0 - lam) * (1.0 - m_bg)
    return s_hat, m_fg, m_bg
