"""Toy scenes: a procedurally generated dataset that *shows* the problems WSSS papers solve.

Every image is drawn deterministically from ``(seed, index)`` with OpenCV and written once in the
PASCAL VOC layout, so the same reader serves toy data and real VOC::

    <root>/JPEGImages/<id>.jpg                 RGB image
    <root>/SegmentationClass/<id>.png          class indices (palette PNG), 255 = ignore border
    <root>/SegmentationObject/<id>.png         instance indices 1..K (XML order), 255 border
    <root>/Annotations/<id>.xml                tight boxes (VOC: 1-based, inclusive)
    <root>/ImageSets/Segmentation/{train,val}.txt
    <root>/Saliency/<id>.png                   "pretrained detector" stand-in (grey, 0..255)
    <root>/SaliencyUnsupervised/<id>.png       OpenCV static saliency (spectral residual)
    <root>/PartMask/<id>.png                   class index on discriminative-part pixels, else 0
    <root>/ContextMask/<id>.png                context-region id (1 water, 2 rails), else 0
    <root>/class_names.txt, <root>/toyscenes.json (config, context table, statistics)

What each ingredient is for:

* **Parts vs bodies.** Every object is a large *body* whose look (shape, colour, texture) is drawn
  from one distribution shared by all classes, carrying a small class-specific *badge* (the
  discriminative part, 9-14 px). Image labels can be predicted from badges alone, so CAMs light up
  badges and miss bodies — the partial-coverage problem AffinityNet and EDAM attack.
* **Co-occurring context.** Boats usually float on a water band and trains usually stand on a
  rails band (``p_context_with_class``), while either band also appears without its class
  (``p_context_without_class``): a classifier learns "water ⇒ boat" and its CAM leaks onto
  water — the problem EPS attacks (measured with EPS's confusion ratio).
* **Clutter.** Several objects at varied scale with occlusion, *distractor* bodies that carry
  no badge (background in the ground truth), textured backgrounds; some bodies are non-convex
  and some are *camouflaged* (their colour is taken from the background beneath), so GrabCut
  from boxes both under- and over-estimates objects — the problem Box2Seg attacks.
* **Photo-like boxes (opt-in).** The embedded profiles' bodies fill ≈ 0.77 of their boxes, so GrabCut
  mostly *misses* object (camouflage) and takes little box background (3 % of object pixels, vs
  16-25 % on the GrabCut benchmark and the Weizmann horses). ``p_legged`` draws animal-like bodies —
  a torso on thin legs, sometimes a neck and head — with background between the legs, and
  ``p_shadow`` a dark body-tinted shadow at their foot: GrabCut then takes background as on photos
  (notebook 04 §7.6). Both default to 0, which leaves the embedded profiles' pixels unchanged.
* **Saliency.** A parameterised stand-in for an off-the-shelf salient-object detector
  (blurred, misses objects with ``sal_p_miss``, fires on distractors with
  ``sal_p_distractor``) and OpenCV's unsupervised spectral-residual saliency; their quality
  against the true foreground is stored in ``toyscenes.json``.

Build it with ``python -m wsss_core.data.toyscenes --out data/toy/tutorial --profile tutorial``
or :func:`ensure_toyscenes` (regenerates only if the stored config differs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .palette import write_gray_png, write_label_png

GENERATOR_VERSION = 6
"""Bump on every change that alters the pixels or files: cached trees of another version are regenerated."""

CLASS_NAMES = ["background", "boat", "train", "bird", "cat", "car", "person"]
"""Index 0 is background; 1..6 are the toy foreground classes (named after VOC classes)."""

CONTEXTS = {
    # context id: (name, class index it co-occurs with)
    1: ("water", 1),
    2: ("rails", 2),
}
"""Context regions and the class each one co-occurs with (EPS's boat/water and train/railroad)."""

# Badge look per class: (shape, RGB colour). Fully saturated, with a dark rim; no body or
# background texture uses these shapes, so a classifier can only learn them from the badges.
BADGES = {
    1: ("triangle", (235, 30, 30)),
    2: ("square_ring", (250, 220, 0)),
    3: ("ring", (0, 220, 235)),
    4: ("plus", (230, 0, 230)),
    5: ("diamond", (255, 130, 0)),
    6: ("x", (40, 230, 40)),
}


@dataclass
class ToySceneConfig:
    """Everything that determines the dataset; stored in ``toyscenes.json`` for caching."""

    n_train: int = 1000
    n_val: int = 500
    image_size: int = 96
    seed: int = 0
    # objects
    n_objects_probs: tuple = (0.45, 0.35, 0.20)  # P(1), P(2), P(3) labelled objects
    n_distractors_probs: tuple = (0.45, 0.40, 0.15)  # P(0), P(1), P(2) distractor bodies
    body_size: tuple = (34, 66)  # body diameter range in px at image_size 96 (scaled otherwise)
    badge_size: tuple = (9, 14)  # px at image_size 96
    badge_colour: str = "random"  # "random": any badge colour, the shape tells the class; "class": per-class colour
    p_nonconvex: float = 0.5
    p_camouflage: float = 0.15
    min_visible: float = 0.45  # an object must keep this share of its body visible
    # photo-like boxes (opt-in; 0 = off, the embedded profiles' pixels are unchanged)
    p_legged: float = 0.0  # P(a body is a torso on thin legs: it fills about half of its box)
    p_shadow: float = 0.0  # P(a body casts a dark, body-tinted shadow on the ground at its foot)
    # context
    p_context_with_class: float = 0.95
    p_context_without_class: float = 0.03
    context_height: tuple = (0.12, 0.2)  # band height as a share of the image height
    # saliency stand-in ("pretrained detector")
    sal_blur_sigma: float = 1.5
    sal_p_miss: float = 0.08
    sal_p_distractor: float = 0.3
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        for name in ("p_nonconvex", "p_camouflage", "p_legged", "p_shadow"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ToySceneConfig.{name} must be a probability in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in _LATE_FIELDS:  # added after datasets were cached: omitted at their default
            if d[name] == defaults[name]:
                del d[name]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ToySceneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kw)


_LATE_FIELDS = ("p_legged", "p_shadow")
"""Config fields added after version 6 trees were cached: at their dataclass default they are left out of
``to_dict`` (and so out of every cache key and fingerprint built from it)."""


PROFILES = {
    "smoke": dict(n_train=64, n_val=32),
    "tutorial": dict(n_train=1000, n_val=500),
}
"""Dataset size per notebook profile (the ``paper`` profile uses PASCAL VOC instead)."""


def config_for_profile(profile: str, **overrides) -> ToySceneConfig:
    if profile not in PROFILES:
        raise ValueError(f"unknown toy-scenes profile {profile!r}; choose one of {sorted(PROFILES)}")
    return ToySceneConfig(**{**PROFILES[profile], **overrides})


# --------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    px = np.uint8([[[int(h * 179) % 180, int(s * 255), int(v * 255)]]])
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of shape (size, size, channels)."""
    g = rng.uniform(-1, 1, size=(cells, cells, channels)).astype(np.float32)
    out = cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """Textured, muted background: one or two regions, colour noise and a faint texture."""
    img = np.empty((S, S, 3), np.float32)
    top = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.45), rng.uniform(0.45, 0.85))
    img[:] = top
    if rng.random() < 0.5:  # a second region ("ground") below a wavy horizon
        bottom = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.45), rng.uniform(0.35, 0.8))
        xs = np.arange(S)
        horizon = S * rng.uniform(0.3, 0.7) + 4 * np.sin(xs / S * 2 * np.pi * rng.uniform(0.5, 2) + rng.uniform(0, 6))
        rows = np.arange(S)[:, None]
        img[rows > horizon[None, :]] = bottom
    img += 28 * _smooth_noise(rng, S, int(rng.integers(3, 7)), 3)
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    if kind == 1:  # faint diagonal stripes
        period = rng.uniform(5, 10)
        ang = rng.uniform(0, np.pi)
        img += 10 * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)[..., None]
    elif kind == 2:  # soft blotches
        img += 22 * _smooth_noise(rng, S, int(rng.integers(8, 14)), 1)
    elif kind == 3:  # gradient
        img += (yy / S - 0.5)[..., None] * rng.uniform(-40, 40)
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)  # sensor noise
    return img


def _water(rng: np.random.Generator, S: int, h: int) -> np.ndarray:
    base = _hsv_to_rgb(rng.uniform(0.53, 0.62), rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.75))
    band = np.empty((h, S, 3), np.float32)
    band[:] = base
    yy, xx = np.mgrid[0:h, 0:S].astype(np.float32)
    period = rng.uniform(4, 7)
    waves = np.sin(2 * np.pi * (yy / period + 0.15 * np.sin(xx / rng.uniform(6, 12) + rng.uniform(0, 6))))
    band += (22 * np.clip(waves, 0, 1) ** 2)[..., None]
    band += 10 * _smooth_noise(rng, max(S, h), 4, 3)[:h, :S]
    return band


def _rails(rng: np.random.Generator, S: int, h: int) -> np.ndarray:
    ballast = _hsv_to_rgb(rng.uniform(0.05, 0.12), rng.uniform(0.15, 0.35), rng.uniform(0.45, 0.65))
    band = np.empty((h, S, 3), np.float32)
    band[:] = ballast
    band += rng.normal(0, 12, size=(h, S, 1)).astype(np.float32)  # gravel
    sleeper = np.array([95, 60, 35], np.float32) * rng.uniform(0.8, 1.2)
    period = int(rng.integers(6, 10))
    offset = int(rng.integers(0, period))
    w = max(2, period // 3)
    for x0 in range(-offset, S, period):
        band[max(0, h // 6): h - max(0, h // 6), max(0, x0): max(0, x0 + w)] = sleeper
    steel = np.array([70, 70, 78], np.float32)
    for frac in (0.3, 0.7):
        y = int(h * frac)
        band[max(0, y - 1): y + 1] = steel
        band[y + 1: y + 2] = steel + 60  # shiny edge
    return band


def _body_polygon(rng: np.random.Generator, cx: float, cy: float, r: float, nonconvex: bool) -> np.ndarray:
    """A closed body outline, ``(N, 2)`` float (x, y). Convex: ellipse / rounded box;
    non-convex: a lobed blob, a crescent-like bite or an L/T-shape."""
    kind = rng.integers(0, 3)
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    ang = rng.uniform(0, np.pi)
    if not nonconvex:
        ax, ay = r, r * rng.uniform(0.55, 1.0)
        if kind == 2:  # superellipse ≈ rounded box
            p = 4.0
            x = ax * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2 / p)
            y = ay * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** (2 / p)
        else:
            x, y = ax * np.cos(t), ay * np.sin(t)
    else:
        if kind == 0:  # lobed blob: r(θ) = r (1 + Σ a_k sin(kθ + φ_k))
            rad = np.ones_like(t)
            for k in (2, 3, 5):
                rad += rng.uniform(0.08, 0.22) * np.sin(k * t + rng.uniform(0, 2 * np.pi))
            rad *= r / rad.max()
            x, y = rad * np.cos(t), rad * np.sin(t)
        elif kind == 1:  # ellipse with a circular bite taken out (crescent-ish)
            ax, ay = r, r * rng.uniform(0.7, 1.0)
            x, y = ax * np.cos(t), ay * np.sin(t)
            bx, by, br = r * 0.9, 0.0, r * rng.uniform(0.45, 0.65)
            d = np.hypot(x - bx, y - by)
            inside = d < br
            # push bitten points to the bite circle's boundary
            x = np.where(inside, bx + (x - bx) / np.maximum(d, 1e-6) * br, x)
            y = np.where(inside, by + (y - by) / np.maximum(d, 1e-6) * br, y)
        else:  # L-shape
            a, b = r, r * rng.uniform(0.35, 0.55)
            pts = np.array([[-a, -a], [-a + 2 * b, -a], [-a + 2 * b, a - 2 * b], [a, a - 2 * b], [a, a], [-a, a]], np.float64)
            x, y = pts[:, 0], pts[:, 1]
    c, s = np.cos(ang), np.sin(ang)
    xr, yr = c * x - s * y, s * x + c * y
    return np.stack([xr + cx, yr + cy], axis=1)


def _legged_mask(rng: np.random.Generator, cx: float, cy: float, r: float, S: int) -> np.ndarray:
    """A torso on 2-4 thin legs, sometimes with a neck and head: an animal-like body that fills only
    about half of its box (the Weizmann horses: ≈ 1 background pixel per object pixel inside the box),
    with background between the legs and under the neck — the box background GrabCut takes on photos.
    ``(S, S)`` bool."""
    m = np.zeros((S, S), np.uint8)
    ty = cy - 0.25 * r
    th = r * rng.uniform(0.5, 0.6)  # torso half-height: room for a badge
    cv2.ellipse(m, (int(round(cx * 4)), int(round(ty * 4))), (int(round(r * 4)), int(round(th * 4))),
                float(rng.uniform(-8, 8)), 0, 360, 1, -1, shift=2)
    n_legs = int(rng.integers(2, 5))
    w = max(2, int(round(r * rng.uniform(0.14, 0.22))))
    foot = cy + r * rng.uniform(0.8, 1.0)
    for x in np.linspace(-0.72, 0.72, n_legs) * r + cx + rng.uniform(-0.06, 0.06, n_legs) * r:
        cv2.line(m, (int(round(x)), int(round(ty))), (int(round(x + rng.uniform(-0.15, 0.15) * r)), int(round(foot))), 1, w)
    if rng.random() < 0.5:  # neck and head on one side
        side = 1 if rng.random() < 0.5 else -1
        nx, ny = cx + side * 0.75 * r, ty - 0.3 * th
        hx, hy = cx + side * r * rng.uniform(1.0, 1.15), ty - r * rng.uniform(0.7, 0.9)
        cv2.line(m, (int(round(nx)), int(round(ny))), (int(round(hx)), int(round(hy))), 1, max(2, int(round(r * 0.28))))
        cv2.circle(m, (int(round(hx)), int(round(hy))), max(2, int(round(r * rng.uniform(0.2, 0.28)))), 1, -1)
    return m.astype(bool)


def _shadow_mask(rng: np.random.Generator, body: np.ndarray, r: float) -> np.ndarray:
    """A flat ellipse at the foot of ``body`` (its lowest rows), ``(S, S)`` bool, body pixels excluded."""
    ys, xs = np.nonzero(body)
    low = ys >= ys.max() - max(2, int(0.2 * (ys.max() - ys.min())))
    m = np.zeros(body.shape, np.uint8)
    half_w = max(3.0, 0.5 * (xs.max() - xs.min()) * rng.uniform(0.8, 1.1))
    cv2.ellipse(m, (int(round(xs[low].mean() * 4 + rng.uniform(-0.2, 0.2) * half_w * 4)), int(round(ys.max() * 4))),
                (int(round(half_w * 4)), int(round(r * rng.uniform(0.2, 0.35) * 4))), 0, 0, 360, 1, -1, shift=2)
    return m.astype(bool) & ~body


def _fill(poly: np.ndarray, S: int) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    cv2.fillPoly(m, [np.round(poly * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    return m.astype(bool)


def _badge_mask(shape: str, cx: int, cy: int, size: int, S: int) -> np.ndarray:
    """The badge footprint (filled with its colour; a 1-px dark rim is drawn around it)."""
    m = np.zeros((S, S), np.uint8)
    h = size / 2.0
    if shape == "triangle":
        pts = np.array([[cx, cy - h], [cx - h, cy + h * 0.8], [cx + h, cy + h * 0.8]])
        cv2.fillPoly(m, [np.round(pts * 4).astype(np.int32)], 1, shift=2)
    elif shape == "square_ring":
        cv2.rectangle(m, (int(cx - h), int(cy - h)), (int(cx + h), int(cy + h)), 1, -1)
        q = max(1, int(h * 0.45))
        cv2.rectangle(m, (cx - q, cy - q), (cx + q, cy + q), 0, -1)
    elif shape == "ring":
        cv2.circle(m, (cx, cy), int(round(h)), 1, -1)
        cv2.circle(m, (cx, cy), max(1, int(round(h * 0.45))), 0, -1)
    elif shape == "plus":
        w = max(1, int(round(size / 6)))
        cv2.rectangle(m, (int(cx - h), cy - w), (int(cx + h), cy + w), 1, -1)
        cv2.rectangle(m, (cx - w, int(cy - h)), (cx + w, int(cy + h)), 1, -1)
    elif shape == "diamond":
        pts = np.array([[cx, cy - h], [cx + h, cy], [cx, cy + h], [cx - h, cy]])
        cv2.fillPoly(m, [np.round(pts * 4).astype(np.int32)], 1, shift=2)
    elif shape == "x":
        w = max(2, int(round(size / 4)))
        cv2.line(m, (int(cx - h), int(cy - h)), (int(cx + h), int(cy + h)), 1, w)
        cv2.line(m, (int(cx - h), int(cy + h)), (int(cx + h), int(cy - h)), 1, w)
    else:  # pragma: no cover
        raise ValueError(shape)
    return m.astype(bool)


# --------------------------------------------------------------------------------------------
# one scene
# --------------------------------------------------------------------------------------------

@dataclass
class Scene:
    """One generated scene, all arrays ``(S, S)`` unless noted."""

    image: np.ndarray  # (S, S, 3) uint8
    cls: np.ndarray  # uint8 class index, 255 border
    inst: np.ndarray  # uint8 instance index 1..K, 255 border
    part: np.ndarray  # uint8 class index on badge pixels
    context: np.ndarray  # uint8 context id on visible context pixels
    saliency: np.ndarray  # float32 [0,1] detector stand-in
    saliency_unsup: np.ndarray  # float32 [0,1] OpenCV spectral residual
    objects: list = field(default_factory=list)  # dicts: cls, box (x1,y1,x2,y2) 0-based excl, camo, nonconvex


def _ignore_border(inst: np.ndarray) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood holds more than one instance id (VOC's 'void' outline)."""
    k = np.ones((3, 3), np.uint8)
    return cv2.dilate(inst, k) != cv2.erode(inst, k)


def render_scene(cfg: ToySceneConfig, index: int) -> Scene:
    """Draw scene ``index`` of the dataset defined by ``cfg`` (deterministic in (seed, index)).

    A draw in which a labelled body ends up too occluded to carry a visible badge is redrawn with
    the next sub-seed, so that every image holds at least one labelled object (as every VOC image
    does), the context bands follow the classes actually present, and the object-count and
    co-occurrence probabilities are the configured ones.
    """
    for attempt in range(100):
        scene = _render(cfg, np.random.default_rng([cfg.seed, index, GENERATOR_VERSION, attempt]))
        if scene is not None:
            return scene
    raise RuntimeError(f"scene {index}: no valid draw after 100 attempts; check the config")  # pragma: no cover


def _render(cfg: ToySceneConfig, rng: np.random.Generator) -> Scene | None:
    """One draw; None if a labelled body could not be placed or could not show its badge."""
    S = cfg.image_size
    k = S / 96.0
    img = _background(rng, S)
    context = np.zeros((S, S), np.uint8)

    n_obj = int(rng.choice(len(cfg.n_objects_probs), p=cfg.n_objects_probs)) + 1
    n_dis = int(rng.choice(len(cfg.n_distractors_probs), p=cfg.n_distractors_probs))
    classes = rng.integers(1, len(CLASS_NAMES), size=n_obj).tolist()

    # context bands (water for boats, rails for trains), probabilistic
    bands = {}
    free_top = S
    for cid, (_, ccls) in CONTEXTS.items():
        p = cfg.p_context_with_class if ccls in classes else cfg.p_context_without_class
        if rng.random() < p:
            h = int(round(S * rng.uniform(*cfg.context_height)))
            y1 = free_top
            y0 = y1 - h
            if y0 < S * 0.25:
                continue
            band = _water(rng, S, h) if cid == 1 else _rails(rng, S, h)
            img[y0:y1] = band
            context[y0:y1] = cid
            bands[cid] = (y0, y1)
            free_top = y0 - int(rng.integers(0, int(6 * k) + 1))
    bg_img = img.copy()

    # bodies: labelled objects and distractors, in random depth order
    items = [(c, False) for c in classes] + [(0, True) for _ in range(n_dis)]
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    bodies = []  # (cls, distractor, full mask, camo, nonconvex)
    occupied = np.zeros((S, S), np.int32)  # depth index + 1 of the topmost body
    for depth, (c, dis) in enumerate(items):
        for _attempt in range(12):
            r = rng.uniform(*cfg.body_size) * k / 2
            nonconvex = rng.random() < cfg.p_nonconvex
            legged = cfg.p_legged > 0 and rng.random() < cfg.p_legged  # no draw when off: same pixels
            nonconvex = nonconvex or legged
            cx = rng.uniform(r * 0.6, S - r * 0.6)
            band = bands.get(next((cid for cid, (_, cc) in CONTEXTS.items() if cc == c), -1))
            if band is not None and not dis:  # sit on the band: body bottom in the band
                cy = band[0] + rng.uniform(-0.5, 0.1) * r
            else:
                cy = rng.uniform(r * 0.6, S - r * 0.6)
            m = _legged_mask(rng, cx, cy, r, S) if legged else _fill(_body_polygon(rng, cx, cy, r, nonconvex), S)
            if m.sum() < 30:
                continue
            # do not bury an earlier body: each earlier one must stay mostly visible
            covered_ok = True
            for j, (_, _, mj, _, _) in enumerate(bodies):
                vis_j = (occupied == j + 1) & ~m
                if vis_j.sum() < cfg.min_visible * mj.sum():
                    covered_ok = False
                    break
            if covered_ok:
                break
        else:
            if not dis:
                return None  # a labelled object found no place: redraw the scene
            continue
        camo = rng.random() < cfg.p_camouflage
        if camo:  # colour copied from the background beneath the body
            colour = bg_img[m].mean(axis=0) + rng.normal(0, 6, 3)
        else:
            colour = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.65), rng.uniform(0.35, 0.9))
        if cfg.p_shadow > 0 and rng.random() < cfg.p_shadow:  # on the ground (and earlier shadows) only
            sh = _shadow_mask(rng, m, r) & (occupied == 0)
            img[sh] = 0.45 * img[sh] + 0.3 * colour[None, :]
        # shared body look: flat colour, soft shading, faint mottling
        ys, xs = np.nonzero(m)
        shade = 1.0 + 0.18 * ((xs.mean() - xs) + (ys.mean() - ys)) / (2 * r)
        mott = 8 * _smooth_noise(rng, S, 6, 1)[ys, xs, 0]
        img[ys, xs] = colour[None, :] * shade[:, None] + mott[:, None]
        occupied[m] = len(bodies) + 1
        bodies.append((0 if dis else c, dis, m, camo, nonconvex))

    # visible extents, badges on visible, interior pixels of labelled bodies
    inst = np.zeros((S, S), np.uint8)
    cls = np.zeros((S, S), np.uint8)
    part = np.zeros((S, S), np.uint8)
    objects = []
    for j, (c, dis, m, camo, nonconvex) in enumerate(bodies):
        vis = occupied == j + 1
        if dis:
            continue
        bsize = int(round(rng.uniform(*cfg.badge_size) * k))
        # distance to the body's edge *or the image border*, so that badges are never cut off
        dist = cv2.distanceTransform(np.pad(vis.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        # corners of the x / square-ring / triangle badges reach ≈1.45× the half-size
        cand = np.argwhere(dist >= 1.45 * bsize / 2 + 1.5)
        if len(cand) == 0 or vis.sum() < cfg.min_visible * m.sum():
            return None  # no room for a visible badge: redraw the scene
        by, bx = cand[rng.integers(len(cand))]
        shape, colour = BADGES[c]
        if cfg.badge_colour == "random":  # class identity is carried by the shape alone
            colour = BADGES[int(rng.integers(1, len(BADGES) + 1))][1]
        bm = _badge_mask(shape, int(bx), int(by), bsize, S) & vis
        rim = cv2.dilate(bm.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~bm & vis
        img[rim] = (20, 20, 20)
        img[bm] = np.array(colour, np.float32) * rng.uniform(0.9, 1.0)
        k_id = len(objects) + 1
        inst[vis] = k_id
        cls[vis] = c
        part[bm] = c
        ys, xs = np.nonzero(vis)
        objects.append(dict(cls=int(c), box=[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                            camouflaged=bool(camo), nonconvex=bool(nonconvex),
                            truncated=bool(xs.min() == 0 or ys.min() == 0 or xs.max() == S - 1 or ys.max() == S - 1)))
    context[inst > 0] = 0
    for j, (c, dis, m, _, _) in enumerate(bodies):  # distractors also hide context
        if dis:
            context[occupied == j + 1] = 0

    image = np.clip(img, 0, 255).astype(np.uint8)
    border = _ignore_border(inst)
    cls_out = cls.copy()
    cls_out[border] = 255
    inst_out = inst.copy()
    inst_out[border] = 255

    # saliency: detector stand-in (blurred, misses objects, fires on distractors)
    sal = np.zeros((S, S), np.float32)
    for o_idx in range(len(objects)):
        if rng.random() >= cfg.sal_p_miss:
            sal[inst == o_idx + 1] = rng.uniform(0.75, 1.0)
    for j, (c, dis, m, _, _) in enumerate(bodies):
        if dis and rng.random() < cfg.sal_p_distractor:
            sal[occupied == j + 1] = np.maximum(sal[occupied == j + 1], rng.uniform(0.5, 0.9))
    if cfg.sal_blur_sigma > 0:
        sal = cv2.GaussianBlur(sal, (0, 0), cfg.sal_blur_sigma * k)
    sal = np.clip(sal + rng.normal(0, 0.02, sal.shape).astype(np.float32), 0, 1)
    return Scene(image=image, cls=cls_out, inst=inst_out, part=part, context=context,
                 saliency=sal, saliency_unsup=opencv_saliency(image), objects=objects)


def opencv_saliency(image: np.ndarray) -> np.ndarray:
    """OpenCV's unsupervised static saliency (spectral residual, Hou & Zhang 2007).

    ``image``: (H, W, 3) uint8 RGB → (H, W) float32 in [0, 1], min-max normalised per image.
    """
    sr = cv2.saliency.StaticSaliencySpectralResidual_create()
    ok, m = sr.computeSaliency(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        return np.zeros(image.shape[:2], np.float32)
    m = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 2.0)
    lo, hi = float(m.min()), float(m.max())
    return ((m - lo) / (hi - lo + 1e-8)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# writing the VOC tree
# --------------------------------------------------------------------------------------------

def _xml(image_id: str, S: int, objects: list) -> str:
    objs = []
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        objs.append(
            "\t<object>\n"
            f"\t\t<name>{CLASS_NAMES[o['cls']]}</name>\n"
            "\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(o['truncated'])}</truncated>\n"
            f"\t\t<camouflaged>{int(o['camouflaged'])}</camouflaged>\n"
            f"\t\t<nonconvex>{int(o['nonconvex'])}</nonconvex>\n"
            "\t\t<difficult>0</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
            f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n"
            "\t</object>\n"
        )
    return (
        "<annotation>\n\t<folder>VOC2012</folder>\n"
        f"\t<filename>{image_id}.jpg</filename>\n"
        "\t<source>\n\t\t<database>wsss-lab toy scenes</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{S}</width>\n\t\t<height>{S}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>1</segmented>\n" + "".join(objs) + "</annotation>\n"
    )


def image_id(index: int) -> str:
    return f"toy_{index:06d}"


def _write_one(args) -> dict:
    cfg_dict, index, root = args
    cfg = ToySceneConfig.from_dict(cfg_dict)
    sc = render_scene(cfg, index)
    iid = image_id(index)
    root = Path(root)
    # 4:4:4 chroma: the default 4:2:0 subsampling smears the small saturated badges on 96-px images
    cv2.imwrite(str(root / "JPEGImages" / f"{iid}.jpg"), cv2.cvtColor(sc.image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality,
                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    write_label_png(root / "SegmentationClass" / f"{iid}.png", sc.cls)
    write_label_png(root / "SegmentationObject" / f"{iid}.png", sc.inst)
    write_label_png(root / "PartMask" / f"{iid}.png", sc.part)
    write_label_png(root / "ContextMask" / f"{iid}.png", sc.context)
    write_gray_png(root / "Saliency" / f"{iid}.png", sc.saliency)
    write_gray_png(root / "SaliencyUnsupervised" / f"{iid}.png", sc.saliency_unsup)
    (root / "Annotations" / f"{iid}.xml").write_text(_xml(iid, cfg.image_size, sc.objects))
    fg = (sc.cls > 0) & (sc.cls != 255)
    valid = sc.cls != 255
    return dict(
        index=index,
        classes=sorted({o["cls"] for o in sc.objects}),
        n_objects=len(sc.objects),
        n_camouflaged=sum(o["camouflaged"] for o in sc.objects),
        contexts=[int(c) for c in np.unique(sc.context) if c > 0],
        fg_pixels=int(fg.sum()),
        part_pixels=int((sc.part > 0).sum()),
        valid_pixels=int(valid.sum()),
        sal_abs_err=float(np.abs(sc.saliency - fg)[valid].sum()),
        sal_unsup_abs_err=float(np.abs(sc.saliency_unsup - fg)[valid].sum()),
    )


def _summarise(rows: list, n_train: int) -> dict:
    n_cls = len(CLASS_NAMES) - 1
    train = [r for r in rows if r["index"] < n_train]
    stats = {"n_images": len(rows)}
    counts = np.zeros(n_cls, int)
    for r in train:
        for c in r["classes"]:
            counts[c - 1] += 1
    stats["train_images_per_class"] = {CLASS_NAMES[c + 1]: int(counts[c]) for c in range(n_cls)}
    co = {}
    for cid, (name, ccls) in CONTEXTS.items():
        with_c = [r for r in train if ccls in r["classes"]]
        without = [r for r in train if ccls not in r["classes"]]
        co[name] = {
            "class": CLASS_NAMES[ccls],
            "p_context_given_class": float(np.mean([cid in r["contexts"] for r in with_c])) if with_c else None,
            "p_context_given_no_class": float(np.mean([cid in r["contexts"] for r in without])) if without else None,
        }
    stats["co_occurrence"] = co
    n_obj = sum(r["n_objects"] for r in rows)
    stats["objects_per_image"] = n_obj / max(1, len(rows))
    stats["camouflaged_share"] = sum(r["n_camouflaged"] for r in rows) / max(1, n_obj)
    stats["part_share_of_foreground"] = sum(r["part_pixels"] for r in rows) / max(1, sum(r["fg_pixels"] for r in rows))
    stats["foreground_share"] = sum(r["fg_pixels"] for r in rows) / max(1, sum(r["valid_pixels"] for r in rows))
    npx = max(1, sum(r["valid_pixels"] for r in rows))
    stats["saliency_mae"] = sum(r["sal_abs_err"] for r in rows) / npx
    stats["saliency_unsupervised_mae"] = sum(r["sal_unsup_abs_err"] for r in rows) / npx
    return stats


MANIFEST = "toyscenes.json"
_SUBDIRS = ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations", "PartMask",
            "ContextMask", "Saliency", "SaliencyUnsupervised", "ImageSets/Segmentation")


def generate(root: str | os.PathLike, cfg: ToySceneConfig, workers: int | None = None,
             progress: bool = True) -> dict:
    """Write the whole dataset under ``root`` (overwriting it) and return the manifest dict."""
    from tqdm.auto import tqdm

    root = Path(root)
    if (root / MANIFEST).exists() or (root / "JPEGImages").exists():
        for sub in _SUBDIRS + ("ImageSets",):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / MANIFEST).unlink(missing_ok=True)
    for sub in _SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    n = cfg.n_train + cfg.n_val
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    jobs = [(cfg.to_dict(), i, str(root)) for i in range(n)]
    t0 = time.perf_counter()
    if workers > 1 and n >= 200:
        with ProcessPoolExecutor(workers) as ex:
            rows = list(tqdm(ex.map(_write_one, jobs, chunksize=32), total=n, desc="toy scenes",
                             disable=not progress))
    else:
        rows = [_write_one(j) for j in tqdm(jobs, desc="toy scenes", disable=not progress)]
    secs = time.perf_counter() - t0
    ids = [image_id(i) for i in range(n)]
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(ids[: cfg.n_train]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[cfg.n_train:]) + "\n")
    (root / "class_names.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "config": cfg.to_dict(),
        "class_names": CLASS_NAMES,
        "contexts": {str(cid): {"name": name, "class": ccls} for cid, (name, ccls) in CONTEXTS.items()},
        "badges": {CLASS_NAMES[c]: {"shape": s, "rgb": list(col)} for c, (s, col) in BADGES.items()},
        "stats": _summarise(rows, cfg.n_train),
        "seconds": secs,
        "images_per_second": n / max(secs, 1e-9),
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, root / MANIFEST)  # written last: a partial tree has no manifest
    return manifest


def load_manifest(root: str | os.PathLike) -> dict | None:
    p = Path(root) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def ensure_toyscenes(root: str | os.PathLike, cfg: ToySceneConfig | str = "tutorial", *,
                     workers: int | None = None, progress: bool = True, force: bool = False) -> dict:
    """Generate the toy dataset under ``root`` unless an identical one is already there.

    ``cfg`` is a :class:`ToySceneConfig` or a profile name (``"smoke"``, ``"tutorial"``).
    Returns the manifest (config, context table, statistics incl. saliency MAE).
    """
    if isinstance(cfg, str):
        cfg = config_for_profile(cfg)
    man = load_manifest(root)
    if (not force and man is not None and man.get("generator_version") == GENERATOR_VERSION
            and man.get("config") == cfg.to_dict()):
        return man
    return generate(root, cfg, workers=workers, progress=progress)


def context_pairs(manifest_or_root) -> dict:
    """``{"boat/water": (class_index, context_id), ...}`` for the metrics of co-occurrence."""
    man = manifest_or_root if isinstance(manifest_or_root, dict) else load_manifest(manifest_or_root)
    if man is None:
        raise FileNotFoundError(f"{manifest_or_root}: no {MANIFEST}; is this a toy-scenes tree?")
    names = man["class_names"]
    return {f"{names[v['class']]}/{v['name']}": (int(v["class"]), int(cid)) for cid, v in man["contexts"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wsss_core.data.toyscenes",
                                 description="Generate the toy-scenes dataset in PASCAL VOC layout.")
    ap.add_argument("--out", required=True, help="output folder (the VOC-layout root)")
    ap.add_argument("--profile", default="tutorial", choices=sorted(PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-val", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--p-legged", type=float, default=None, help="share of animal-like bodies on legs (photo-like boxes)")
    ap.add_argument("--p-shadow", type=float, default=None, help="share of bodies casting a shadow at their foot")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="regenerate even if an identical tree exists")
    a = ap.parse_args(argv)
    over = {k: v for k, v in dict(seed=a.seed, n_train=a.n_train, n_val=a.n_val, image_size=a.image_size,
                                  p_legged=a.p_legged, p_shadow=a.p_shadow).items() if v is not None}
    man = ensure_toyscenes(a.out, config_for_profile(a.profile, **over), workers=a.workers, force=a.force)
    print(json.dumps({"root": str(a.out), "images_per_second": round(man["images_per_second"], 1),
                      **man["stats"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
