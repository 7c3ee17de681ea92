"""Real photos for lesson 07: MSRC-v2 (591 photos, 14 object classes, scene classes as background) in
VOC layout, the stage configs of each profile on it, and the measures the toy scenes get from their
``ContextMask/`` and ``PartMask/`` (which real photos do not have).

    from wsss_core import realphotos as rp
    data, reason = rp.msrc_data(DATA_ROOT)        # DataSpec ("voc", or "absent" with the reason why)
    train_ids, val_ids = rp.splits(PROFILE, data.root)
    cfgs = rp.cam_configs(PROFILE)                # {"imagenet": CAMStageConfig, "scratch": CAMStageConfig}

**Where the data are** (:func:`find_msrc`): ``DATA_ROOT`` if given; else ``$WSSS_SHARED_DATA/msrc_voc/VOC2012``
when that variable is set (and only there, as ``tests/conftest.py`` reads it, so ``WSSS_SHARED_DATA=/nonexistent``
hides the data); else ``<repo>/../shared/data/msrc_voc/VOC2012``. Nothing is downloaded
(``wsss data fetch msrc-v2`` says where the data come from).

**Context leak without scene masks.** MSRC's scene classes (grass, sky, water, …) are all background (0) in
``msrc_voc``: the masks do not say which background pixel is grass. :class:`FarBackgroundLeak` measures
what can be measured: in the images that contain class c, the share of the true background *far* from
every object pixel (more than ``far_px``; so not the blur of a coarse CAM around the object) that the
pseudo-label gives to c. For cow, sheep, boat and aeroplane that background is mostly grass, water and
sky (:data:`CONTEXT_CLASSES`); the same share for the other classes (book, chair, sign, …, whose
backgrounds vary) is the control.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import engine, profiles

__all__ = ["MSRC_SUBDIR", "CONTEXT_CLASSES", "find_msrc", "msrc_data", "splits", "cam_configs",
           "affinity_config", "FarBackgroundLeak", "image_scores"]

MSRC_SUBDIR = "msrc_voc/VOC2012"
CONTEXT_CLASSES = {"cow": "grass", "sheep": "grass", "boat": "water", "aeroplane": "sky"}
"""MSRC classes whose photos nearly always show one scene class around them (the context of the leak)."""

SMOKE_IMAGES = (16, 8)
"""Training / validation images at the ``smoke`` profile (the first ids of each split)."""


def find_msrc(data_root=None) -> tuple[Path, str | None]:
    """``(root, None)`` where MSRC's ``VOC2012`` folder (with ``JPEGImages/``) is, else ``(path tried, reason)``,
    the reason naming the path and how to point at the data."""
    if data_root:
        root, how = Path(data_root).expanduser(), "DATA_ROOT"
    else:
        base, how = profiles.shared_data_location()
        root = base / MSRC_SUBDIR
    if (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Segmentation" / "train.txt").is_file():
        return root, None
    return root, (f"MSRC-v2 not found at {root} (from {how}): put msrc_voc/ under ../shared/data, set "
                  "WSSS_SHARED_DATA to the folder holding msrc_voc/, or pass DATA_ROOT (see `wsss data fetch --list`)")


def msrc_data(data_root=None) -> tuple[profiles.DataSpec, str | None]:
    """``(DataSpec("voc", root), None)``, or ``(DataSpec("absent", path tried), reason)`` where the data are
    absent (:func:`find_msrc`); either goes to ``lesson.setup(..., data=...)``."""
    root, reason = find_msrc(data_root)
    return profiles.DataSpec("absent" if reason else "voc", root), reason


def splits(profile: str, root) -> tuple[list[str], list[str]]:
    """Image ids of the training and validation split: all of them (344 / 149), or at ``smoke`` the first
    :data:`SMOKE_IMAGES` of each."""
    lists = Path(root) / "ImageSets" / "Segmentation"
    tr, va = ([s for s in (lists / f"{n}.txt").read_text().split() if s] for n in ("train", "val"))
    if profiles.check_profile(profile) == "smoke":
        tr, va = tr[: SMOKE_IMAGES[0]], va[: SMOKE_IMAGES[1]]
    return tr, va


def cam_configs(profile: str) -> dict:
    """The CAM classifier on MSRC, from ImageNet (``"imagenet"``: ``lite0-imagenet``) and from scratch
    (``"scratch"``: ``lite0``, the same network with random weights), same data, augmentation and epochs.

    Both at output stride 16 (dilated last stages, as IRN's ResNet-50), random crops of 192 px after a
    rescale of 0.6–1.0 (the photos are about 320 × 213), flips, Adam with a one-cycle schedule, batch 16.
    The pretrained network keeps its ImageNet BatchNorm statistics (``freeze_bn``, IRN) and trains at
    lr 3e-4 (the new classifier 10×); the random one cannot use either, and trains at the compact CNN's
    from-scratch lr 3e-3 (lesson 01). ``tutorial``: 3 epochs each (the issue's probe was flat from epoch 3);
    ``study``: 10; ``smoke``: 1 epoch on a handful of images, crop 128.
    """
    from .stages.cam import CAMStageConfig

    profiles.check_profile(profile)
    epochs = {"smoke": 1, "tutorial": 3, "study": 10, "paper": 10}[profile]
    crop = 128 if profile == "smoke" else 192
    train = engine.TrainConfig(epochs=epochs, batch_size=16, lr=3e-4, optimizer="adam", schedule="onecycle",
                               weight_decay=1e-4, desc="classifier (ImageNet)")
    base = CAMStageConfig(backbone="lite0-imagenet", backbone_kwargs={"output_stride": 16, "freeze_bn": True},
                          lr_mult_new=10.0, crop_size=crop, scale=(0.6, 1.0), train=train, cam_scales=(1.0,),
                          cam_batch_size=1, min_val_map=0.5 if profile != "smoke" else 0.0, cache_images=True)
    scratch = base.replace(backbone="lite0", backbone_kwargs={"output_stride": 16}, lr_mult_new=1.0,
                           train=train.replace(lr=3e-3, desc="classifier (scratch)"))
    return {"imagenet": base, "scratch": scratch}


def affinity_config(profile: str, crf: bool | None = None):
    """AffinityNet on the fine-tuned ``lite0-imagenet`` classifier's backbone, *frozen* (IRN freezes its
    backbone; on a CPU it makes the training a forward pass), three levels (strides 4, 8, 16: ``block1``,
    ``block2``, ``block4``) fused at stride 8, radius 5; PSA's α 4 / 32 labels refined by PSA's dense CRF
    (``crf``: None = where the optional ``pydensecrf2`` is installed; never at ``smoke``); the walk with
    PSA's α 16 and t 256 but **β 16**. ``tutorial``: 3 epochs of batch 8; ``study``: 8; ``smoke``: 1, t 32.

    Measured on every 4th training photo (86) with the tutorial's classifier and CAMs (CAMs at α 16: 0.514
    mIoU): without the CRF the walk gives 0.394 at PSA's β 8 / t 256 and at best 0.522 (β 8, t 8); with CRF
    labels 0.380 at β 8 / t 256, 0.538 at β 8 / t 32, **0.543 at β 16 / t 256**. β was chosen against the
    masks, as the CAMs' θ* is (an oracle choice); the CRF labels cost about 1 min on 2 cores.
    """
    from .affinity import crf_available
    from .stages.affinity import AffinityStageConfig

    profiles.check_profile(profile)
    epochs = {"smoke": 1, "tutorial": 3, "study": 8, "paper": 8}[profile]
    crf = (crf_available() if crf is None else bool(crf)) and profile != "smoke"
    return AffinityStageConfig(
        backbone="lite0-imagenet", backbone_kwargs={"output_stride": 16, "freeze_bn": True},
        init_from_classifier=True, frozen_backbone=True, levels=("block1", "block2", "block4"),
        level_channels=(32, 64, 128), feature_stride=8, radius=5, label_mode="power", fg_alpha=4.0,
        bg_alpha=32.0, crf=crf, crop_size=128 if profile == "smoke" else 192, scale=(0.6, 1.0),
        lr_mult_new=1.0, train=engine.TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, optimizer="adam",
                                                  schedule="onecycle", weight_decay=1e-4, desc="affinitynet"),
        rw_radius=5, rw_alpha=16.0, beta=16.0, t=32 if profile == "smoke" else 256, rw_batch_size=1)


def _far_background(gt: np.ndarray, far_px: float) -> np.ndarray:
    "True background (0) more than ``far_px`` pixels from every non-background pixel (objects and void)."
    import cv2

    bg = (np.asarray(gt) == 0).astype(np.uint8)
    return cv2.distanceTransform(bg, cv2.DIST_L2, 5) > far_px


class FarBackgroundLeak:
    """Per class c, over the images whose mask contains c: far background pixels labelled c / far
    background pixels (see the module docstring). ``update(pred, gt)`` per image; ``summary()`` →
    ``{"context": pooled over CONTEXT_CLASSES, "other": pooled over the rest, "per_class": {...}}``."""

    def __init__(self, class_names, far_px: float = 16.0, context=tuple(CONTEXT_CLASSES)):
        self.names = list(class_names)
        self.far_px = float(far_px)
        self.context = [self.names.index(n) for n in context if n in self.names]
        self.counts = np.zeros((len(self.names), 2), np.int64)

    def update(self, pred, gt) -> "FarBackgroundLeak":
        pred, gt = np.asarray(pred), np.asarray(gt)
        present = [int(c) for c in np.unique(gt) if 0 < c < len(self.names)]
        if present:
            far = _far_background(gt, self.far_px)
            n = int(far.sum())
            for c in present:
                self.counts[c] += (int((far & (pred == c)).sum()), n)
        return self

    def _share(self, rows) -> float:
        a, b = self.counts[rows].sum(0) if len(rows) else (0, 0)
        return float(a) / float(b) if b else float("nan")

    def summary(self) -> dict:
        other = [c for c in range(1, len(self.names)) if c not in self.context]
        return {"context": self._share(self.context), "other": self._share(other),
                "per_class": {self.names[c]: self._share([c]) for c in range(1, len(self.names))}}


def image_scores(pred, gt, label) -> dict:
    """One image's pseudo-label against its mask: ``recall`` (object pixels given their class), ``precision``
    (pixels labelled with an object class that are that class), ``far_leak`` (far background labelled as an
    object, :class:`FarBackgroundLeak` with 16 px) and the true object share ``fg_share``; NaN where undefined."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    valid = gt != 255
    obj, lab = valid & (gt > 0), valid & (pred > 0)
    far = _far_background(gt, 16.0)

    def d(a, b):
        return float(a) / float(b) if b else float("nan")

    return {"recall": d((obj & (pred == gt)).sum(), obj.sum()), "precision": d((lab & (pred == gt)).sum(), lab.sum()),
            "far_leak": d((far & (pred > 0)).sum(), far.sum()), "fg_share": d(obj.sum(), valid.sum())}


SALIENCY_SOURCES = {"unsupervised": "SaliencyUnsupervised", "oracle": "SaliencyOracle"}
"""Saliency folders of :func:`saliency_tree`: OpenCV's spectral residual (Hou & Zhang 2007, no training,
no labels) and an **oracle** made from the true masks (object = 1, background = 0, void = 0.5)."""


def oracle_saliency(mask) -> np.ndarray:
    "``(H, W)`` float32: 1 on object pixels, 0 on background, 0.5 on void (255) — from the ground truth."
    mask = np.asarray(mask)
    return np.where(mask == 255, 0.5, (mask > 0).astype(np.float32)).astype(np.float32)


def saliency_tree(msrc_root, out_dir, ids, progress: bool = False) -> Path:
    """A VOC-layout tree at ``out_dir`` that links MSRC's folders (images, masks, lists, annotations,
    class names) and adds the saliency folders of :data:`SALIENCY_SOURCES` for ``ids``, so that the EPS
    and EDAM stages read ``saliency_dir="SaliencyUnsupervised"`` / ``"SaliencyOracle"`` without writing
    into the shared data. Existing maps are kept. Returns ``out_dir``."""
    from PIL import Image
    from tqdm.auto import tqdm

    from .data.palette import read_label_png, write_gray_png
    from .data.toyscenes import opencv_saliency

    src, out = Path(msrc_root).resolve(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("JPEGImages", "SegmentationClass", "ImageSets", "Annotations", "class_names.txt"):
        link = out / name
        if (src / name).exists() and not link.exists():
            link.symlink_to(src / name)
    for iid in tqdm(list(ids), desc="saliency", disable=not progress):
        paths = {k: out / d / f"{iid}.png" for k, d in SALIENCY_SOURCES.items()}
        if all(p.is_file() for p in paths.values()):
            continue
        image = np.asarray(Image.open(src / "JPEGImages" / f"{iid}.jpg").convert("RGB"))
        write_gray_png(paths["unsupervised"], opencv_saliency(image))
        write_gray_png(paths["oracle"], oracle_saliency(read_label_png(src / "SegmentationClass" / f"{iid}.png")))
    return out
