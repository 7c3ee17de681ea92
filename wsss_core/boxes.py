"""Boxes as weak labels: GrabCut pseudo-labels, filling rates, filled boxes, box index maps.

Box-supervised methods start from one *pseudo ground truth* per training image made from its boxes
(SDI, Khoreva et al. CVPR 2017; BCM, Song et al. CVPR 2019; Box2Seg, Kulharia et al. ECCV 2020):

* **filled boxes** (:func:`filled_box_labels`): every pixel of a box gets the box's class — the
  crudest label; it over-estimates every object that does not fill its box;
* **GrabCut** (:func:`grabcut_box`, :func:`grabcut_labels`; Rother et al., SIGGRAPH 2004): one
  OpenCV GrabCut per box, initialised from the rectangle (``GC_INIT_WITH_RECT``: outside = sure
  background, inside = probable foreground), 5 iterations; foreground = ``GC_FGD ∪ GC_PR_FGD``. It
  both **under-estimates** (an object whose colours resemble the background around it is dropped)
  and **over-estimates** (background inside the box that looks like the object is kept);
* the **filling rate** of a box (:func:`filling_rates`; BCM's term): the share of the box that is
  object, here measured on the GrabCut output — what Box2Seg uses to regularise its attention.

Label assembly (the convention of the SDI re-implementation ``philferriere/tfwss`` and of SDI itself
— see ``reference/algorithms.md`` §5.1): every box is segmented on its own; the masks are pasted
with their class ids **largest box first, so smaller boxes win where boxes overlap**; only foreground
pixels are pasted, so a small box's background does not erase a larger box's foreground; pixels
outside every box are background. Boxes thinner than ``min_box_side`` px or smaller than
``min_box_area`` px² are taken as filled rectangles (GrabCut cannot model them; tfwss uses area < 9).
A box covering the whole image leaves GrabCut no sure-background sample: its rectangle is shrunk by
``whole_image_margin`` px per side (tfwss: 3). If OpenCV still fails, the filled box is used and the
failure is counted.

Our additions, each a switch that is off unless stated:

* ``roi_margin``: run GrabCut on a crop around the box (the box grown by this share of its size,
  at least 8 px) instead of the whole image — the colour models then describe the *local*
  background, and a large photo is much faster. Measured in notebook 04 (§7).
* ``min_fill``: if GrabCut keeps less than this share of a box, it has collapsed (typically on a
  camouflaged object) and the filled box is used instead (DESIGN.md's feasibility probe: 0.20).

Conventions (see :mod:`wsss_core`): images ``(H, W, 3) uint8`` RGB; boxes ``(K, 4)`` float XYXY,
0-based, ``x2``/``y2`` exclusive (the datasets' convention); labels ``(K,)`` int class indices
``1..C``; label maps ``(H, W) uint8`` with 0 = background.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from .atomic import atomic_write_json

__all__ = [
    "GrabCutConfig",
    "box_pixels",
    "grabcut_box",
    "grabcut_labels",
    "filled_box_labels",
    "paste_masks",
    "box_index_map",
    "filling_rates",
    "region_filling_rates",
    "grabcut_errors",
    "GrabCutStats",
    "make_grabcut_labels",
    "load_grabcut_manifest",
    "read_object_flags",
]

IGNORE = 255


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
@dataclass
class GrabCutConfig:
    """How GrabCut pseudo-labels are made (every field changes the labels; cached by fingerprint).

    Attributes
    ----------
    iterations : int
        GrabCut iterations (``cv2.grabCut(..., iterCount)``; tfwss / SDI: 5).
    min_box_side, min_box_area : int
        Boxes with a side below ``min_box_side`` px or an area below ``min_box_area`` px² are
        used as filled rectangles (tfwss: area < 9).
    whole_image_margin : int
        A rectangle that leaves fewer than ``min_background`` pixels outside it is shrunk by this many
        pixels per side before GrabCut (tfwss: 3 px for a box covering the whole image).
    min_background : int
        The fewest sure-background pixels GrabCut is given (its background colour model is a
        5-component GMM fitted by k-means; it needs samples).
    roi_margin : float or None
        None: GrabCut sees the whole image (plain OpenCV use). A float: it sees a crop, the box grown
        by ``roi_margin × box size`` on each side (at least ``roi_min_pad`` px), so the background
        colour model is local.
    roi_min_pad : int
        Minimum growth of the crop, in px, per side.
    min_fill : float
        If GrabCut keeps less than this share of the box, the filled box replaces it (0 = never).
    seed : int
        ``cv2.setRNGSeed(seed)`` before every box: OpenCV's k-means (GMM initialisation) draws from
        a global RNG, so without it the labels change from run to run.
    """

    iterations: int = 5
    min_box_side: int = 3
    min_box_area: int = 9
    whole_image_margin: int = 3
    min_background: int = 64
    roi_margin: float | None = None
    roi_min_pad: int = 8
    min_fill: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0.0 <= self.min_fill < 1.0:
            raise ValueError(f"min_fill must lie in [0, 1), got {self.min_fill}")
        if self.roi_margin is not None and self.roi_margin < 0:
            raise ValueError(f"roi_margin must be >= 0 or None, got {self.roi_margin}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """8 hex digits identifying the configuration (for cache folders)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------------------------------
# single boxes
# --------------------------------------------------------------------------------------------------
def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return image


def box_pixels(box, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer pixel extent ``(x1, y1, x2, y2)`` of a float box, clipped to ``shape = (H, W)``.

    ``x1 = floor(x1)``, ``x2 = ceil(x2)`` (0-based, exclusive), so a box always covers every pixel it
    touches; a box with no pixel inside the image raises ``ValueError``.
    """
    h, w = int(shape[0]), int(shape[1])
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.all(np.isfinite(b)):
        raise ValueError(f"a box is 4 finite numbers (x1, y1, x2, y2), got {box!r}")
    x1, y1 = max(0, int(np.floor(b[0]))), max(0, int(np.floor(b[1])))
    x2, y2 = min(w, int(np.ceil(b[2]))), min(h, int(np.ceil(b[3])))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {tuple(float(v) for v in b)} covers no pixel of an image of {w}x{h} (WxH)")
    return x1, y1, x2, y2


def grabcut_box(image, box, cfg: GrabCutConfig | None = None) -> tuple[np.ndarray, str]:
    """GrabCut of one box.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    box : 4 floats, XYXY 0-based exclusive
    cfg : GrabCutConfig, optional

    Returns
    -------
    mask : (H, W) bool
        The object's pixels; always inside the box (outside the rectangle GrabCut is told
        "sure background").
    how : str
        ``"grabcut"``; ``"tiny"`` (filled: the box is too small); ``"collapsed"`` (filled: GrabCut
        kept less than ``cfg.min_fill`` of the box); ``"failed"`` (filled: OpenCV raised).
    """
    cfg = cfg or GrabCutConfig()
    image = _check_image(image)
    H, W = image.shape[:2]
    x1, y1, x2, y2 = box_pixels(box, (H, W))
    out = np.zeros((H, W), bool)
    bw, bh = x2 - x1, y2 - y1
    if bw < cfg.min_box_side or bh < cfg.min_box_side or bw * bh < cfg.min_box_area:
        out[y1:y2, x1:x2] = True
        return out, "tiny"
    # the crop GrabCut works on: the whole image, or the box grown by roi_margin
    if cfg.roi_margin is None:
        cx1, cy1, cx2, cy2 = 0, 0, W, H
    else:
        px = max(cfg.roi_min_pad, int(round(cfg.roi_margin * bw)))
        py = max(cfg.roi_min_pad, int(round(cfg.roi_margin * bh)))
        cx1, cy1, cx2, cy2 = max(0, x1 - px), max(0, y1 - py), min(W, x2 + px), min(H, y2 + py)
    crop = np.ascontiguousarray(image[cy1:cy2, cx1:cx2, ::-1])  # OpenCV wants BGR
    rx1, ry1, rx2, ry2 = x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1
    ch, cw = crop.shape[:2]
    if ch * cw - (rx2 - rx1) * (ry2 - ry1) < cfg.min_background:
        # (almost) no sure background around the rectangle: shrink it (tfwss: 3 px per side)
        m = cfg.whole_image_margin
        rx1, ry1 = rx1 + m, ry1 + m
        rx2, ry2 = rx2 - m, ry2 - m
        if rx2 - rx1 < cfg.min_box_side or ry2 - ry1 < cfg.min_box_side:
            out[y1:y2, x1:x2] = True
            return out, "tiny"
    gc = np.zeros((ch, cw), np.uint8)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(int(cfg.seed))
    try:
        cv2.grabCut(crop, gc, (int(rx1), int(ry1), int(rx2 - rx1), int(ry2 - ry1)), bgd, fgd,
                    int(cfg.iterations), cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        out[y1:y2, x1:x2] = True
        return out, "failed"
    fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    out[cy1:cy2, cx1:cx2] = fg
    out[:y1] = False  # GrabCut never labels sure background as object; make it exact
    out[y2:] = False
    out[:, :x1] = False
    out[:, x2:] = False
    if cfg.min_fill > 0 and out[y1:y2, x1:x2].mean() < cfg.min_fill:
        out[y1:y2, x1:x2] = True
        return out, "collapsed"
    return out, "grabcut"


# --------------------------------------------------------------------------------------------------
# assembling label maps
# --------------------------------------------------------------------------------------------------
def _as_boxes(boxes, labels) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lab = np.asarray(labels).reshape(-1)
    if len(b) != len(lab):
        raise ValueError(f"{len(b)} boxes but {len(lab)} labels")
    if lab.size and (lab.min() < 1 or lab.max() > 254):
        raise ValueError(f"box labels must be class indices 1..254 (0 is background), got {lab.tolist()}")
    return b, lab.astype(np.int64)


def _areas(boxes: np.ndarray, shape) -> np.ndarray:
    out = []
    for b in boxes:
        x1, y1, x2, y2 = box_pixels(b, shape)
        out.append((x2 - x1) * (y2 - y1))
    return np.asarray(out, np.int64)


def paste_masks(masks: Sequence[np.ndarray], boxes, labels, shape: tuple[int, int]) -> np.ndarray:
    """Paste per-box object masks into one label map: largest box first, smaller boxes win.

    Parameters
    ----------
    masks : K arrays (H, W) bool
        Each box's object pixels.
    boxes : (K, 4) float XYXY (for the areas that set the order)
    labels : (K,) int in 1..254
    shape : (H, W)

    Returns
    -------
    (H, W) uint8
        0 where no mask is set; otherwise the class of the smallest box whose mask covers the pixel
        (ties in area: the later box wins). Only foreground is pasted, so a small box's background does
        not erase a larger box's object.
    """
    b, lab = _as_boxes(boxes, labels)
    if len(masks) != len(b):
        raise ValueError(f"{len(masks)} masks but {len(b)} boxes")
    out = np.zeros(tuple(shape), np.uint8)
    # stable order: by area descending; equal areas keep file order (the later one pasted last wins)
    order = sorted(range(len(b)), key=lambda k: -_areas(b[k:k + 1], shape)[0])
    for k in order:
        m = np.asarray(masks[k], bool)
        if m.shape != tuple(shape):
            raise ValueError(f"mask {k} has shape {m.shape}, expected {tuple(shape)}")
        out[m] = lab[k]
    return out


def filled_box_labels(boxes, labels, shape: tuple[int, int]) -> np.ndarray:
    """Boxes filled with their class ("box as mask"); smaller boxes win on overlap.

    Returns
    -------
    (H, W) uint8
    """
    b, lab = _as_boxes(boxes, labels)
    masks = []
    for box in b:
        x1, y1, x2, y2 = box_pixels(box, shape)
        m = np.zeros(tuple(shape), bool)
        m[y1:y2, x1:x2] = True
        masks.append(m)
    return paste_masks(masks, b, lab, shape)


def grabcut_labels(image, boxes, labels, cfg: GrabCutConfig | None = None, return_details: bool = False):
    """GrabCut pseudo-label of one image: one GrabCut per box, pasted (smaller boxes win).

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    boxes : (K, 4) float XYXY 0-based exclusive
    labels : (K,) int in 1..C
    cfg : GrabCutConfig, optional
    return_details : bool
        Also return the per-box masks, filling rates and how each box was handled.

    Returns
    -------
    label : (H, W) uint8
        0 = background (outside every box, or inside a box but not object), c = class.
    details : dict, only with ``return_details``
        ``masks`` (K, H, W) bool, ``fill`` (K,) float32 (:func:`filling_rates` of the masks),
        ``how`` list of K str (see :func:`grabcut_box`).
    """
    cfg = cfg or GrabCutConfig()
    image = _check_image(image)
    b, lab = _as_boxes(boxes, labels)
    shape = image.shape[:2]
    masks, how = [], []
    for box in b:
        m, h = grabcut_box(image, box, cfg)
        masks.append(m)
        how.append(h)
    label = paste_masks(masks, b, lab, shape)
    if not return_details:
        return label
    stack = np.stack(masks) if masks else np.zeros((0, *shape), bool)
    return label, {"masks": stack, "fill": filling_rates(stack, b), "how": how}


def box_index_map(boxes, shape: tuple[int, int]) -> np.ndarray:
    """For every pixel, the index of the smallest box that contains it.

    Parameters
    ----------
    boxes : (K, 4) float XYXY
    shape : (H, W)

    Returns
    -------
    (H, W) int64
        ``k`` in ``0..K-1``, or ``-1`` outside every box. Ties in area go to the later box (as in
        :func:`paste_masks`).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.full(tuple(shape), -1, np.int64)
    order = sorted(range(len(b)), key=lambda k: -_areas(b[k:k + 1], shape)[0])
    for k in order:
        x1, y1, x2, y2 = box_pixels(b[k], shape)
        out[y1:y2, x1:x2] = k
    return out


def filling_rates(masks, boxes) -> np.ndarray:
    """Filling rate of each box: the share of its pixels that its mask marks as object.

    ``ρ_k = |mask_k ∩ box_k| / |box_k|`` (BCM's filling rate, measured on one mask per box).

    Parameters
    ----------
    masks : (K, H, W) bool
    boxes : (K, 4) float XYXY

    Returns
    -------
    (K,) float32 in [0, 1]
    """
    masks = np.asarray(masks, bool)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if masks.ndim != 3 or len(masks) != len(b):
        raise ValueError(f"masks must be (K, H, W) with K = {len(b)} boxes, got shape {masks.shape}")
    out = np.zeros(len(b), np.float32)
    for k, box in enumerate(b):
        x1, y1, x2, y2 = box_pixels(box, masks.shape[1:])
        out[k] = masks[k, y1:y2, x1:x2].mean()
    return out


def region_filling_rates(label, box_map, box_labels) -> np.ndarray:
    """Filling rate of each box on its *own* pixels (those whose smallest box it is).

    ``ρ_k = |{x : B(x) = k, Y(x) = c_k}| / |{x : B(x) = k}|`` with ``B`` the
    :func:`box_index_map` and ``Y`` a label map (GrabCut's, a filled box's, a mask's). This is the
    share the Box2Seg filling-rate constraint compares the attention with (:mod:`wsss_core.losses_box2seg`):
    both are taken over the same pixels, so nested boxes do not count pixels twice.

    Parameters
    ----------
    label : (H, W) int label map (255 = ignore, not counted)
    box_map : (H, W) int, ``-1`` outside boxes
    box_labels : (K,) int

    Returns
    -------
    (K,) float32; NaN for a box with no own valid pixel.
    """
    label = np.asarray(label)
    box_map = np.asarray(box_map)
    lab = np.asarray(box_labels).reshape(-1)
    out = np.full(len(lab), np.nan, np.float32)
    valid = label != IGNORE
    for k, c in enumerate(lab):
        own = (box_map == k) & valid
        n = int(own.sum())
        if n:
            out[k] = float((label[own] == c).sum()) / n
    return out


# --------------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------------
def grabcut_errors(pred, gt, boxes=None) -> dict:
    """Over- and under-estimation of a pseudo-label against the truth, as pixel counts.

    Parameters
    ----------
    pred, gt : (H, W) int label maps (gt 255 = ignore; those pixels are not counted)
    boxes : (K, 4), optional
        With boxes, the background pixels *inside* boxes are counted too (the pixels a filled box
        would take).

    Returns
    -------
    dict of int
        ``object`` (true object pixels), ``missed`` (object pixels not given their class:
        under-estimation), ``background`` (true background pixels), ``taken`` (background pixels
        given a class: over-estimation), ``wrong_class`` (object pixels given another class),
        ``errors`` (all wrong pixels), ``valid`` (all scored pixels), ``box_background``
        (background pixels inside some box).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    valid = gt != IGNORE
    obj = valid & (gt > 0)
    bg = valid & (gt == 0)
    out = {
        "object": int(obj.sum()),
        "missed": int((obj & (pred != gt)).sum()),
        "wrong_class": int((obj & (pred != gt) & (pred > 0) & (pred != IGNORE)).sum()),
        "background": int(bg.sum()),
        "taken": int((bg & (pred > 0) & (pred != IGNORE)).sum()),
        "errors": int((valid & (pred != gt)).sum()),
        "valid": int(valid.sum()),
    }
    if boxes is not None:
        inside = box_index_map(boxes, gt.shape) >= 0 if len(np.asarray(boxes).reshape(-1, 4)) else np.zeros(gt.shape, bool)
        out["box_background"] = int((bg & inside).sum())
    return out


class GrabCutStats:
    """Pool :func:`grabcut_errors` over images (and per object category).

    ``update(pred, gt, boxes, key=None)``; ``summary()`` → ``miss_rate`` (missed / object pixels:
    under-estimation), ``take_rate`` (taken / background pixels inside boxes: over-estimation),
    ``take_share`` (taken / object pixels: how much extra), ``error_rate`` (pooled wrong / valid
    pixels) and ``mean_image_error`` (mean over images of wrong / valid pixels: the GrabCut
    benchmark's error rate).
    """

    _KEYS = ("object", "missed", "wrong_class", "background", "taken", "errors", "valid", "box_background")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self._KEYS, 0)
        self.image_errors: list[float] = []

    def update(self, pred, gt, boxes=None) -> "GrabCutStats":
        e = grabcut_errors(pred, gt, boxes)
        for k in self._KEYS:
            self.counts[k] += e.get(k, 0)
        if e["valid"]:
            self.image_errors.append(e["errors"] / e["valid"])
        return self

    def summary(self) -> dict:
        c = self.counts

        def div(a, b):
            return float(a) / float(b) if b else float("nan")

        return {
            "miss_rate": div(c["missed"], c["object"]),
            "take_rate": div(c["taken"], c["box_background"]),
            "take_share": div(c["taken"], c["object"]),
            "error_rate": div(c["errors"], c["valid"]),
            "mean_image_error": float(np.mean(self.image_errors)) if self.image_errors else float("nan"),
            "n_images": len(self.image_errors),
            **{k: int(v) for k, v in c.items()},
        }


def read_object_flags(xml_path, tags: Iterable[str] = ("camouflaged", "nonconvex", "truncated")) -> list[dict]:
    """Integer flags of each ``<object>`` of a VOC XML, in file order (``{tag: 0/1}``; absent = 0).

    The toy scenes write ``<camouflaged>`` and ``<nonconvex>`` (and VOC's ``<truncated>``); the
    dataset reader ignores them, notebook 04 uses them for per-category GrabCut figures.
    """
    root = ET.parse(str(xml_path)).getroot()
    out = []
    for obj in root.findall("object"):
        d = {}
        for t in tags:
            txt = obj.findtext(t)
            try:
                d[t] = int(float(txt)) if txt is not None and txt.strip() else 0
            except ValueError:
                raise ValueError(f"{xml_path}: <{t}>{txt}</{t}> is not a number") from None
        out.append(d)
    return out


# --------------------------------------------------------------------------------------------------
# a whole split, in parallel, cached on disk
# --------------------------------------------------------------------------------------------------
MANIFEST = "grabcut.json"


def _one_image(args) -> tuple[str, np.ndarray, list[float], list[str], float]:
    iid, image, boxes, labels, cfg_dict = args
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    label, det = grabcut_labels(image, boxes, labels, GrabCutConfig(**cfg_dict), return_details=True)
    return iid, label, det["fill"].tolist(), det["how"], time.perf_counter() - t0


def _load_for_grabcut(dataset, i: int):
    raw = dataset.get_raw(i)
    return raw["id"], raw["image"], raw["boxes"], raw["box_labels"]


def load_grabcut_manifest(out_dir) -> dict | None:
    """The manifest :func:`make_grabcut_labels` wrote in ``out_dir`` (None if absent)."""
    p = Path(out_dir) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def make_grabcut_labels(dataset, out_dir, cfg: GrabCutConfig | None = None, workers: int | None = None,
                        progress: bool = True, overwrite: bool = False) -> dict:
    """GrabCut pseudo-labels of every image of a VOC-layout dataset, in parallel, cached on disk.

    Writes ``out_dir/<id>.png`` (VOC palette label maps) and ``out_dir/grabcut.json`` (the config,
    its fingerprint, the ids, every box's filling rate and handling, the time taken). A second call
    with the same config and ids reads the manifest and returns at once; anything else is redone.

    Parameters
    ----------
    dataset : VOCLayoutDataset
        Needs images and boxes (XML, or instance + class masks); ``get_raw(i)`` is used.
    out_dir : path
    cfg : GrabCutConfig, optional
    workers : int, optional
        Processes (default: ``os.cpu_count()``, at most the number of images); 0 or 1 = in this
        process.
    progress : bool
        tqdm bar over images.
    overwrite : bool
        Redo even if a matching manifest exists.

    Returns
    -------
    dict
        The manifest: ``config``, ``fingerprint``, ``ids``, ``fill`` ({id: [ρ per box]}), ``how``
        ({id: [str per box]}), ``how_counts``, ``seconds`` (wall time), ``images_per_second``,
        ``workers``.
    """
    from tqdm.auto import tqdm

    from .data.palette import write_label_png

    cfg = cfg or GrabCutConfig()
    out_dir = Path(out_dir)
    ids = list(dataset.ids)
    old = load_grabcut_manifest(out_dir)
    if (not overwrite and old is not None and old.get("fingerprint") == cfg.fingerprint() and old.get("ids") == ids
            and all((out_dir / f"{i}.png").is_file() for i in ids)):
        return old
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the marker goes first: a killed remake is never reused
    n = len(ids)
    if workers is None:
        workers = min(os.cpu_count() or 1, max(1, n))
    fill: dict[str, list[float]] = {}
    how: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="GrabCut", disable=not progress)
    cfg_dict = cfg.to_dict()

    def jobs():
        for i in range(n):
            iid, image, boxes, labels = _load_for_grabcut(dataset, i)
            yield iid, image, boxes, labels, cfg_dict

    def store(res):
        iid, label, f, h, _sec = res
        write_label_png(out_dir / f"{iid}.png", label)
        fill[iid], how[iid] = f, h
        bar.update(1)

    try:
        if workers <= 1:
            n_threads = cv2.getNumThreads()
            try:
                for job in jobs():
                    store(_one_image(job))
            finally:
                cv2.setNumThreads(n_threads)
        else:
            # "spawn": a fork of a process with threads (a Jupyter kernel, torch's thread pools) can deadlock
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
                for res in ex.map(_one_image, jobs(), chunksize=max(1, min(16, n // (4 * workers) or 1))):
                    store(res)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for hs in how.values():
        for h in hs:
            counts[h] = counts.get(h, 0) + 1
    man = {"config": cfg.to_dict(), "fingerprint": cfg.fingerprint(), "ids": ids, "fill": fill, "how": how,
           "how_counts": counts, "seconds": seconds, "images_per_second": n / seconds if seconds > 0 else None,
           "workers": workers}
    atomic_write_json(out_dir / MANIFEST, man, indent=None)  # written last: the folder's completion marker
    return man
