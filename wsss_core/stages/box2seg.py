"""The box stage: GrabCut pseudo-labels from boxes, then a segmentation network trained on them —
plainly (cross-entropy) or with Box2Seg's losses (Kulharia et al., ECCV 2020; our reconstruction,
see :mod:`wsss_core.losses_box2seg`).

Notebook ``04_box2seg`` and the CLI use these functions::

    cfg = config_for_profile("tutorial")
    gc = ensure_grabcut(cfg, data, out_dir)                      # GrabCut labels of the training split (cached)
    store = build_targets("grabcut", train_ds_raw, gc_dir, cfg)   # per-image targets, box maps, filling rates
    res = run_setting("box2seg", cfg, data, out_dir)             # train (or reload) + evaluate on validation

Settings (one network, one schedule, one seed; only the target and the loss change):

============== ==================================== ============================================
name           target of the cross-entropy (B1)     extra terms
============== ==================================== ============================================
box_ce         filled boxes                         –
grabcut_ce     GrabCut                              –
box2seg        GrabCut                              attention-weighted loss (B2), filling rate (B3),
                                                    embeddings (B4 then B6)
box2seg_no_fill GrabCut                             B2, B4/B6 (no filling-rate constraint)
box2seg_no_emb GrabCut                              B2, B3 (no embeddings)
box2seg_no_awl GrabCut                              B4/B6 only (embeddings without attention)
box2seg_class_rho GrabCut                           all terms, B3's target = the mean GrabCut ρ of the box's
                                                    class (BCM's per-class filling rate; our improvement)
full_ce        true masks with a share of objects   –
               removed (all boxes kept)
full_awl       the same                             B2, B3 (ρ from GrabCut)
============== ==================================== ============================================

``LossConfig(gate=...)`` (off in every preset) is our experiment of letting the attention weight (B1) too
(B1′, :func:`wsss_core.losses_box2seg.gated_cross_entropy`); notebook 04 §8 reports what it measured.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from .. import engine
from . import store as result_store  # (here `store` names a TargetStore)
from ._config import StageConfig
from .. import losses_box2seg as L
from ..boxes import (GrabCutConfig, box_index_map, filled_box_labels, make_grabcut_labels,
                     region_filling_rates)
from ..data.palette import read_label_png
from ..data.transforms import eval_transforms, train_transforms
from ..data.voc import VOCLayoutDataset
from ..evaluation import LabelMapEvaluator
from ..models.segnet import SegNet, build_segnet

NOTEBOOK = "04_box2seg"
"""The notebook (and OUT_DIR sub-folder) that owns this stage's artifacts."""

DESCRIPTIONS = {"box_ce": "filled boxes + CE", "grabcut_ce": "GrabCut + CE", "box2seg": "Box2Seg (all terms)",
                "box2seg_no_fill": "Box2Seg without filling rate", "box2seg_no_emb": "Box2Seg without embeddings",
                "box2seg_no_awl": "Box2Seg without attention (CE + embeddings)", "mask_ce": "true masks + CE",
                "box2seg_class_rho": "Box2Seg, per-class filling rate (ours)",
                "full_ce": "masks with missing objects + CE", "full_awl": "masks with missing objects + attention loss"}
"""A short description of every setting of :func:`setting`, for tables."""

ALL_SETTINGS = ("box_ce", "grabcut_ce", "box2seg", "box2seg_no_fill", "box2seg_no_emb", "box2seg_class_rho",
                "full_ce", "full_awl")
"""The settings of the ``study`` preset (notebook 04's study: ablations, our change, missing annotations)."""

TUTORIAL_SETTINGS = ("grabcut_ce", "box2seg")
"""What the lesson (notebook 04 at ``tutorial``) trains; ``study`` trains every setting of the preset."""

TARGETS = ("box", "grabcut", "mask", "mask_missing")
GATES = ("off", "background", "object", "both")
IGNORE = 255


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class LossConfig:
    """Which Box2Seg terms are on, and their weights (``L = w_ce L_ce + w_awl L_awl + w_fill L_fill + w_emb L_emb``).

    Attributes
    ----------
    ce_weight : weight of (B1), the cross-entropy on the setting's target.
    awl_weight : weight of (B2), the attention-weighted loss (0 = off).
    fill_weight : weight of (B3), the soft filling-rate constraint (0 = off).
    emb_weight : weight of the embedding term (0 = off): (B4) on the target labels during the first
        ``emb_pretrain_epochs`` epochs, then (B6) agreement with the segmentation.
    emb_pretrain_epochs : epochs of embedding pre-training inside the same run (same schedule as
        every other setting: the switch happens at an epoch boundary, not in a separate run).
    emb_radius : pair radius on the decoder grid (stride 4 on the toy scenes: radius 3 ≈ 12 px).
    detach_segmentation : (B6) trains the embeddings only (the segmentation is not pulled).
    rho : the target of (B3): ``"box"`` = each box's own GrabCut filling rate; ``"class_mean"`` = the mean
        GrabCut filling rate of the box's class over the training split (BCM's per-class filling rate,
        measured on GrabCut's output), which a single collapsed GrabCut cannot pull down.
    gate : our experiment, off in every preset — let the attention also weight (B1) on box pixels
        (:func:`wsss_core.losses_box2seg.gated_cross_entropy`, B1′): ``"background"`` = GrabCut's background
        labels inside a box by ``1 − A``, ``"object"`` = its object labels by ``A``, ``"both"``. Measured on the
        tutorial scenes it lost to plain (B1) every way we tried (notebook 04 §8).
    gate_detach : the gate uses ``A`` without a gradient (the attention is trained by B2/B3 only).
    gate_renorm : each box's gated pixels keep a mean weight of one (the attention redistributes, not removes).
    gate_start_epoch : the gate is on from this epoch (0-based) on; plain (B1) before.
    """

    ce_weight: float = 1.0
    awl_weight: float = 0.0
    fill_weight: float = 0.0
    emb_weight: float = 0.0
    emb_pretrain_epochs: int = 0
    emb_radius: float = 3.0
    detach_segmentation: bool = False
    rho: str = "box"
    gate: str = "off"
    gate_detach: bool = False
    gate_renorm: bool = False
    gate_start_epoch: int = 0

    def __post_init__(self) -> None:
        if self.rho not in ("box", "class_mean"):
            raise ValueError(f"rho must be 'box' or 'class_mean', got {self.rho!r}")
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
        if self.gate != "off" and not self.uses_attention:
            raise ValueError("gate needs the attention head: set awl_weight or fill_weight > 0")

    @property
    def uses_attention(self) -> bool:
        return self.awl_weight > 0 or self.fill_weight > 0

    @property
    def uses_embedding(self) -> bool:
        return self.emb_weight > 0


@dataclass
class SegConfig(StageConfig):
    """The segmentation network, its augmentation and its training schedule (shared by all settings).

    Attributes
    ----------
    backbone, backbone_kwargs : :func:`wsss_core.models.backbones.build_backbone`.
    backbone_init : ``"cam_classifier"`` starts the backbone from notebook 01's CAM classifier
        (:func:`classifier_backbone`; it was trained on the image labels, which boxes imply — our stand-in
        for the ImageNet initialisation every paper uses; its backbone config must match); None keeps the
        backbone's own initialisation (random, or ``weights="imagenet"`` in ``backbone_kwargs``).
    channels, decoder_stride, embed_dim : :class:`wsss_core.models.segnet.SegNet`.
    loss_stride : resolution of the pixel losses: 1 = logits upsampled to the crop (DeepLab's
        choice), ``decoder_stride`` = labels sampled down to the decoder grid (4× fewer pixels; what
        the CPU profiles use).
    crop_size, scale, long_side, hflip, color_jitter : :func:`wsss_core.data.transforms.train_transforms`.
    eval_long_side : resize real photos so that the longer side is this before inference (logits are
        upsampled back to the full size for scoring); None = infer at full size.
    lr_mult_new : lr multiplier of decoder + heads (10 on a pretrained backbone).
    train : :class:`wsss_core.engine.TrainConfig`.
    eval_batch_size : images per inference batch (same-size toy scenes; real photos go one by one).
    cache_images : keep decoded images in memory.
    """

    backbone: str = "compact"
    backbone_kwargs: dict = field(default_factory=lambda: {"width": 32, "output_stride": 8})
    backbone_init: str | None = "cam_classifier"
    channels: int = 32
    decoder_stride: int = 4
    embed_dim: int = 16
    loss_stride: int = 4
    crop_size: int = 96
    scale: tuple | None = (0.9, 1.1)
    long_side: tuple | None = None
    hflip: bool = True
    color_jitter: tuple | None = None
    eval_long_side: int | None = None
    lr_mult_new: float = 1.0
    train: engine.TrainConfig = field(default_factory=lambda: engine.TrainConfig(
        epochs=8, batch_size=16, lr=3e-3, optimizer="adam", schedule="onecycle", weight_decay=1e-4, desc="segmenter"))
    eval_batch_size: int = 50
    cache_images: bool = True


@dataclass
class RealDataConfig:
    """The real-photo part (``../shared/data``): GrabCut benchmark and Weizmann horses.

    ``grabcut_max_images`` / ``horse_max_train`` / ``horse_max_val``: None = all (smoke runs take a few).
    ``grabcut`` configures GrabCut on the photos; ``seg`` the horse segmenter; ``settings`` which
    settings to train on the horses.
    """

    grabcut: GrabCutConfig = field(default_factory=GrabCutConfig)
    grabcut_max_images: int | None = None
    horse_max_train: int | None = None
    horse_max_val: int | None = None
    seg: SegConfig = field(default_factory=lambda: SegConfig(
        backbone_init=None, crop_size=144, scale=None, long_side=(128, 192), color_jitter=(0.3, 0.3, 0.3, 0.05), eval_long_side=160,
        train=engine.TrainConfig(epochs=30, batch_size=8, lr=3e-3, optimizer="adam", schedule="onecycle",
                                 weight_decay=1e-4, desc="horses")))
    settings: tuple = ("box_ce", "grabcut_ce", "box2seg", "box2seg_class_rho")


@dataclass
class Box2SegStageConfig(StageConfig):
    """Everything notebook 04 runs.

    Attributes
    ----------
    grabcut : GrabCut on the toy / VOC training split.
    grabcut_workers : processes for GrabCut (None = all cores).
    seg : the network and schedule every setting shares.
    box2seg : the full method's loss weights; the ablations switch one term off.
    missing_share : share of the objects removed from the true masks in the missing-annotation
        experiment (the authors counted ≈ 10 % of VOC masks missing objects; 0.3 makes the effect visible
        on a small data set).
    missing_seed : which objects are removed.
    settings : the settings to run (see the module docstring; ``box2seg_no_awl`` and ``mask_ce`` exist but are
        left out of the presets to keep the notebook's training time down).
    real : the real-photo part.
    photo_like : :class:`~wsss_core.data.toyscenes.ToySceneConfig` overrides of notebook 04's §7.6 —
        toy scenes whose boxes hold background as on photos (legged bodies, cast shadows), so GrabCut takes
        box background about as often as on the GrabCut benchmark; empty = no such run (paper profile).
    photo_like_settings : the settings trained on them (same network, schedule and backbone as the rest).
    train_workers : :func:`run_settings` trains up to this many settings at once, each in its own process
        with one torch thread (CPU only; None or 1 = one after the other in this process). Not part of
        any fingerprint.
    torch_threads : torch's intra-op threads while :func:`run_setting` trains and scores a network in this
        process (restored afterwards; None = leave them). The CPU presets use 1: with the cores shared
        (other programs, or the second worker of :func:`run_settings`) two threads on these small
        convolutions were up to 16× slower than one (notebook 04's profile, see :func:`config_for_profile`).
        Not part of any fingerprint.
    profile : the profile the preset came from (:func:`config_for_profile`); :func:`run` uses it to find
        notebook 01's CAM classifier config (``profiles.cam_config(profile)``) when ``seg.backbone_init``
        is ``"cam_classifier"``. It does not enter any fingerprint.
    """

    grabcut: GrabCutConfig = field(default_factory=GrabCutConfig)
    grabcut_workers: int | None = None
    seg: SegConfig = field(default_factory=SegConfig)
    box2seg: LossConfig = field(default_factory=lambda: LossConfig(
        awl_weight=1.0, fill_weight=1.0, emb_weight=0.1, emb_pretrain_epochs=2, emb_radius=3.0))
    missing_share: float = 0.3
    missing_seed: int = 0
    settings: tuple = ALL_SETTINGS
    real: RealDataConfig = field(default_factory=RealDataConfig)
    photo_like: dict = field(default_factory=lambda: {"p_legged": 0.8, "p_shadow": 0.8})
    photo_like_settings: tuple = ("grabcut_ce", "box2seg")
    train_workers: int | None = None
    torch_threads: int | None = None
    profile: str | None = None


    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def setting(name: str, cfg: Box2SegStageConfig) -> tuple[str, LossConfig]:
    """``(target, LossConfig)`` of a named setting (module docstring table)."""
    full = cfg.box2seg
    table = {
        "box_ce": ("box", LossConfig()),
        "grabcut_ce": ("grabcut", LossConfig()),
        "mask_ce": ("mask", LossConfig()),
        "box2seg": ("grabcut", full),
        "box2seg_no_fill": ("grabcut", dataclasses.replace(full, fill_weight=0.0)),
        "box2seg_no_emb": ("grabcut", dataclasses.replace(full, emb_weight=0.0)),
        "box2seg_no_awl": ("grabcut", dataclasses.replace(full, awl_weight=0.0, fill_weight=0.0)),
        "box2seg_class_rho": ("grabcut", dataclasses.replace(full, rho="class_mean")),
        "full_ce": ("mask_missing", LossConfig()),
        "full_awl": ("mask_missing", dataclasses.replace(full, emb_weight=0.0)),
    }
    if name not in table:
        raise ValueError(f"unknown setting {name!r}; choose one of {sorted(table)}")
    return table[name]


def config_for_profile(profile: str) -> Box2SegStageConfig:
    """Presets of :class:`Box2SegStageConfig`.

    * ``smoke``: 2 epochs of 2 iterations per setting on the 64 smoke scenes, 3 GrabCut photos, 8 + 4
      horse photos for one epoch — proves the code path in seconds; its numbers mean nothing. Settings
      :data:`TUTORIAL_SETTINGS` (the study notebook asks for :data:`ALL_SETTINGS` itself).
    * ``study``: CompactCNN (width 32, stride 8) started from notebook 01's CAM classifier + FPN/PPM
      decoder at stride 4, 32 channels, trained for 8 epochs (Adam, one-cycle, lr 3e-3, batch 16) on the
      1 000 toy training scenes; the same seed and schedule for every setting of :data:`ALL_SETTINGS`.
      8 epochs are far from converged: at 24 epochs every setting gains ≈ 0.05 mIoU, and only then does
      Box2Seg with ``rho="class_mean"`` beat GrabCut + CE (notebook ``study/04_box2seg_study``). Horses:
      30 epochs on crops of 144 px (photos resized to a longer side of 128–192 px; inference at 160 px,
      scored at full size). Photo-like scenes: ``photo_like = {"p_legged": 0.8, "p_shadow": 0.8}``.
      Two settings train at once (``train_workers=2``, one process and one torch thread each).
    * ``tutorial`` (the lesson): the ``study`` preset with the settings the lesson shows,
      :data:`TUTORIAL_SETTINGS` = GrabCut + CE and Box2Seg, trained side by side on two cores. The
      network, schedule and seed are the study's, so both share checkpoints (and notebook 06 reuses the
      lesson's GrabCut labels and Box2Seg network). Profiled on 2 shared cores: one training step
      (batch 16) costs ≈ 0.14 s of CPU with GrabCut + CE and ≈ 0.17 s with Box2Seg's losses, of which the
      backbone's forward and backward ≈ 0.12 s, the embedding terms ≈ 0.02 s and data loading (cached
      images) ≈ 0.014 s; two torch threads per network made a step several times slower when the cores
      were shared, one process per network does not.
    * ``paper``: what Box2Seg reports using — UPerNet-style decoder on ResNet-101 (ImageNet) at
      stride 4, VOC 2012 train_aug with GrabCut labels. The paper's optimisation hyper-parameters
      were not available to us: we use DeepLab's (SGD momentum 0.9, lr 0.01, poly 0.9, wd 1e-4,
      batch 16, crop 512, 30 epochs ≈ 20k iterations, 10× lr on the new layers), losses at full
      resolution, embeddings of dimension 32.
    """
    from ..profiles import check_profile

    check_profile(profile)
    if profile == "smoke":
        seg = SegConfig(channels=32, train=engine.TrainConfig(epochs=2, batch_size=16, lr=3e-3, optimizer="adam",
                                                              schedule="onecycle", max_iters_per_epoch=2, desc="segmenter"))
        real = RealDataConfig(grabcut_max_images=3, horse_max_train=8, horse_max_val=4,
                              seg=RealDataConfig().seg.replace(
                                  crop_size=96, long_side=(96, 128), eval_long_side=112, channels=32,
                                  train=engine.TrainConfig(epochs=1, batch_size=4, lr=3e-3, optimizer="adam",
                                                           schedule="onecycle", desc="horses")))
        return Box2SegStageConfig(seg=seg, real=real, grabcut_workers=2, settings=TUTORIAL_SETTINGS, torch_threads=1,
                                  profile=profile,
                                  box2seg=LossConfig(awl_weight=1.0, fill_weight=1.0, emb_weight=0.1, emb_pretrain_epochs=1))
    if profile == "tutorial":
        return Box2SegStageConfig(settings=TUTORIAL_SETTINGS, train_workers=2, torch_threads=1, profile=profile)
    if profile == "study":
        return Box2SegStageConfig(train_workers=2, torch_threads=1, profile=profile)
    seg = SegConfig(
        backbone="resnet101", backbone_kwargs={"output_stride": 16, "weights": "imagenet"}, backbone_init=None, channels=256,
        decoder_stride=4, embed_dim=32, loss_stride=1, crop_size=512, scale=None, long_side=(320, 640),
        color_jitter=None, eval_long_side=None, lr_mult_new=10.0, eval_batch_size=1, cache_images=False,
        train=engine.TrainConfig(epochs=30, batch_size=16, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                                 schedule="poly", poly_power=0.9, num_workers=4, desc="segmenter"))
    return Box2SegStageConfig(seg=seg, box2seg=LossConfig(awl_weight=1.0, fill_weight=1.0, emb_weight=0.1,
                                                          emb_pretrain_epochs=5, emb_radius=5.0),
                              missing_share=0.1, settings=("box_ce", "grabcut_ce", "box2seg"), real=RealDataConfig(),
                              photo_like={}, profile=profile)


# ------------------------------------------------------------------------------------------------
# GrabCut over a split
# ------------------------------------------------------------------------------------------------
def raw_dataset(root, split, instances: bool = False, cache: bool = True, **kw) -> VOCLayoutDataset:
    """Images, masks and boxes (no transforms, no saliency); ``instances`` also reads instance masks."""
    return VOCLayoutDataset(root, split, saliency_dir=None, instance_dir="SegmentationObject" if instances else None,
                            cache=cache, **kw)


def grabcut_dir(out_dir, cfg: GrabCutConfig, split: str) -> Path:
    """``out_dir/grabcut/<split>-<fingerprint>``: one folder per GrabCut configuration."""
    return Path(out_dir) / "grabcut" / f"{split}-{cfg.fingerprint()}"


def ensure_grabcut(dataset: VOCLayoutDataset, out_dir, cfg: GrabCutConfig, workers: int | None = None,
                   progress: bool = True) -> tuple[Path, dict]:
    """GrabCut labels of ``dataset`` under :func:`grabcut_dir` (made once, then reused).

    Returns ``(folder, manifest)`` (see :func:`wsss_core.boxes.make_grabcut_labels`).
    """
    d = grabcut_dir(out_dir, cfg, dataset.split or f"n{len(dataset)}")
    man = make_grabcut_labels(dataset, d, cfg, workers=workers, progress=progress)
    return d, man


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
def remove_objects(mask, instance_mask, remove_ids) -> np.ndarray:
    """A class mask with some objects erased (set to background), as if the annotator had missed them.

    Pixels of the removed instances become 0; so do the 255 outline pixels that touch a removed object
    and no kept one (otherwise the ignore outline would betray the missing object).

    Parameters
    ----------
    mask : (H, W) uint8 class mask (255 = ignore)
    instance_mask : (H, W) uint8 instance ids (k = k-th object, 0 background, 255 outline)
    remove_ids : iterable of int instance ids

    Returns
    -------
    (H, W) uint8
    """
    import cv2

    mask = np.asarray(mask).copy()
    inst = np.asarray(instance_mask)
    rem = np.isin(inst, list(remove_ids))
    if not rem.any():
        return mask
    kept = (inst > 0) & (inst != IGNORE) & ~rem
    k3 = np.ones((3, 3), np.uint8)
    near_removed = cv2.dilate(rem.astype(np.uint8), k3) > 0
    near_kept = cv2.dilate(kept.astype(np.uint8), k3) > 0
    mask[rem] = 0
    mask[(mask == IGNORE) & near_removed & ~near_kept] = 0
    return mask


def missing_objects(ids: Sequence[str], n_objects: Sequence[int], share: float, seed: int) -> dict[str, list[int]]:
    """Which objects the missing-annotation experiment erases: ``round(share × total)`` objects drawn
    without replacement over the whole split (seeded), as ``{id: [instance ids]}``."""
    pool = [(iid, k) for iid, n in zip(ids, n_objects) for k in range(1, int(n) + 1)]
    rng = np.random.default_rng(seed)
    n_rem = int(round(share * len(pool)))
    pick = rng.choice(len(pool), size=n_rem, replace=False) if n_rem else []
    out: dict[str, list[int]] = {}
    for j in sorted(int(p) for p in pick):
        iid, k = pool[j]
        out.setdefault(iid, []).append(k)
    return out


@dataclass
class TargetStore:
    """Per-image training targets (numpy, in memory): ``target`` (H, W) uint8 label map,
    ``box_map`` (H, W) int16 (smallest box, −1 outside), ``box_classes`` (K,) int64, ``rho`` (K,) float32
    (GrabCut's filling rate of each box on its own pixels; NaN if none)."""

    kind: str
    items: dict[str, dict[str, np.ndarray]]

    def __len__(self) -> int:
        return len(self.items)

    def class_mean_rho(self) -> dict[int, float]:
        """``{class: mean ρ over the training boxes of that class}`` (BCM's per-class filling rate)."""
        vals: dict[int, list] = {}
        for t in self.items.values():
            for c, r in zip(t["box_classes"], t["rho"]):
                if np.isfinite(r):
                    vals.setdefault(int(c), []).append(float(r))
        return {c: float(np.mean(v)) for c, v in vals.items()}


def build_targets(kind: str, dataset: VOCLayoutDataset, gc_dir=None, missing: Mapping[str, list[int]] | None = None,
                  progress: bool = False) -> TargetStore:
    """Targets of every image of ``dataset`` (a :func:`raw_dataset`).

    Parameters
    ----------
    kind : {"box", "grabcut", "mask", "mask_missing"}
        The label map the cross-entropy uses: filled boxes, GrabCut labels (``gc_dir``), true masks,
        or true masks with the objects of ``missing`` removed (needs instance masks).
    gc_dir : path
        GrabCut labels (``<id>.png``); they also give every box's filling rate ρ (all kinds).
    missing : {id: [instance ids]}, for ``mask_missing``.

    Returns
    -------
    TargetStore
    """
    from tqdm.auto import tqdm

    if kind not in TARGETS:
        raise ValueError(f"unknown target kind {kind!r}; choose one of {TARGETS}")
    if gc_dir is None:
        raise ValueError("build_targets needs gc_dir: the GrabCut labels give every box's filling rate")
    items = {}
    for i in tqdm(range(len(dataset)), desc=f"targets ({kind})", disable=not progress):
        raw = dataset.get_raw(i)
        iid, shape = raw["id"], raw["image"].shape[:2]
        boxes, labels = raw["boxes"], raw["box_labels"]
        gc = read_label_png(Path(gc_dir) / f"{iid}.png")
        bmap = box_index_map(boxes, shape)
        if kind == "box":
            target = filled_box_labels(boxes, labels, shape)
        elif kind == "grabcut":
            target = gc
        elif kind == "mask":
            target = raw["mask"]
        else:
            if "instance_mask" not in raw:
                raise ValueError("mask_missing needs instance masks: build the dataset with raw_dataset(..., instances=True)")
            target = remove_objects(raw["mask"], raw["instance_mask"], (missing or {}).get(iid, []))
        items[iid] = {"target": np.asarray(target, np.uint8), "box_map": bmap.astype(np.int16),
                      "box_classes": np.asarray(labels, np.int64),
                      "rho": region_filling_rates(gc, bmap, labels).astype(np.float32)}
    return TargetStore(kind, items)


class BoxSupervisionDataset(torch.utils.data.Dataset):
    """Images with a training target, a box map and per-box classes / filling rates, augmented jointly.

    Each item: ``image`` (3, h, w) float (normalised), ``target`` (h, w) int64 (255 = ignore / padding),
    ``box_map`` (h, w) int64 (0..K−1 the image's boxes, −1 none or padding), ``box_classes`` (K,) int64,
    ``rho`` (K,) float32, ``id`` str. :func:`collate_boxes` turns a list of them into a batch with
    batch-wide box indices.
    """

    def __init__(self, base: VOCLayoutDataset, store: TargetStore, transforms=None, rho: str = "box"):
        missing = [i for i in base.ids if i not in store.items]
        if missing:
            raise ValueError(f"{len(missing)} images have no target (first: {missing[0]})")
        if rho not in ("box", "class_mean"):
            raise ValueError(f"rho must be 'box' or 'class_mean', got {rho!r}")
        self.base, self.store, self.transforms = base, store, transforms
        self.ids = base.ids
        self.rho_mode = rho
        self._class_rho = store.class_mean_rho() if rho == "class_mean" else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        raw = self.base.get_raw(i)
        t = self.store.items[raw["id"]]
        s = {"image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(raw["image"].transpose(2, 0, 1)))),
             "target": tv_tensors.Mask(torch.from_numpy(t["target"].astype(np.int64))),
             # box ids shifted by one so that padding (255) and "no box" (0) are both < 1 after the shift back
             "box_map": tv_tensors.Mask(torch.from_numpy(t["box_map"].astype(np.int64) + 1))}
        if self.transforms is not None:
            s = self.transforms(s)
        bm = s["box_map"].as_subclass(torch.Tensor).long()
        bm = torch.where(bm == IGNORE, torch.zeros_like(bm), bm) - 1
        rho = t["rho"]
        if self._class_rho is not None:
            rho = np.array([self._class_rho.get(int(c), np.nan) for c in t["box_classes"]], np.float32)
        return {"id": raw["id"], "image": s["image"].as_subclass(torch.Tensor),
                "target": s["target"].as_subclass(torch.Tensor).long(), "box_map": bm,
                "box_classes": torch.from_numpy(t["box_classes"]), "rho": torch.from_numpy(rho)}


def collate_boxes(batch: Sequence[dict]) -> dict:
    """Stack images / targets; concatenate boxes and offset each image's box ids into batch-wide ids."""
    out = {"id": [b["id"] for b in batch], "image": torch.stack([b["image"] for b in batch]),
           "target": torch.stack([b["target"] for b in batch])}
    maps, offset = [], 0
    for b in batch:
        bm = b["box_map"]
        maps.append(torch.where(bm >= 0, bm + offset, bm))
        offset += len(b["box_classes"])
    out["box_map"] = torch.stack(maps)
    out["box_classes"] = torch.cat([b["box_classes"] for b in batch]) if batch else torch.zeros(0, dtype=torch.long)
    out["rho"] = torch.cat([b["rho"] for b in batch]) if batch else torch.zeros(0)
    return out


def training_dataset(base: VOCLayoutDataset, store: TargetStore, seg: SegConfig, rho: str = "box") -> BoxSupervisionDataset:
    """:class:`BoxSupervisionDataset` with the joint training augmentation of ``seg`` (``rho``: see
    :class:`LossConfig`)."""
    tf = train_transforms(seg.crop_size, scale=seg.scale, long_side=seg.long_side, hflip=seg.hflip,
                          color_jitter=seg.color_jitter)
    return BoxSupervisionDataset(base, store, tf, rho=rho)


# ------------------------------------------------------------------------------------------------
# model, step, training
# ------------------------------------------------------------------------------------------------
def build_model(seg: SegConfig, num_classes: int, loss: LossConfig | None = None) -> SegNet:
    """The :class:`SegNet` of ``seg``; the attention / embedding heads exist only if ``loss`` uses them
    (so every setting's segmentation branch starts from the same seeded weights)."""
    loss = loss or LossConfig()
    return build_segnet(seg.backbone, seg.backbone_kwargs, num_classes, channels=seg.channels,
                        decoder_stride=seg.decoder_stride, attention=loss.uses_attention,
                        embedding=loss.uses_embedding, embed_dim=seg.embed_dim)


def _down(t: torch.Tensor, s: int) -> torch.Tensor:
    """Sample a (B, H, W) label-like map on the grid of a stride-``s`` feature map (pixel centres)."""
    if s == 1:
        return t
    return t[:, s // 2::s, s // 2::s]


class _Phase:
    """Engine callback: remembers the current epoch for the step function (embedding pre-training switch)."""

    def __init__(self) -> None:
        self.epoch = 0

    def on_epoch_start(self, state) -> None:
        self.epoch = int(state.epoch)


def make_step(loss: LossConfig, seg: SegConfig, phase: _Phase | None = None):
    """The training step of one setting: ``step(model, batch, device) -> {"loss", "ce", ...}``.

    Pixel losses (B1–B3) are computed at ``seg.loss_stride`` (1: logits upsampled to the crop; s > 1:
    labels and box maps sampled on the stride-s grid); the embedding terms (B4/B6) on the decoder grid.
    """
    phase = phase or _Phase()

    def step(model, batch, device):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["target"].to(device, non_blocking=True)
        bm = batch["box_map"].to(device, non_blocking=True)
        bc = batch["box_classes"].to(device, non_blocking=True)
        out = model(x)
        seg_logits = out["seg"]
        if seg.loss_stride == 1:
            size = y.shape[-2:]
            logits = F.interpolate(seg_logits, size=size, mode="bilinear", align_corners=False)
            yy, bb = y, bm
        else:
            yy, bb = _down(y, seg.loss_stride), _down(bm, seg.loss_stride)
            logits = seg_logits
            if logits.shape[-2:] != yy.shape[-2:]:
                logits = F.interpolate(logits, size=yy.shape[-2:], mode="bilinear", align_corners=False)
        A = None
        if loss.uses_attention:
            att = out["att"]
            if att.shape[-2:] != logits.shape[-2:]:
                att = F.interpolate(att, size=logits.shape[-2:], mode="bilinear", align_corners=False)
            A = torch.sigmoid(att.float())
        if loss.gate != "off" and A is not None and phase.epoch >= loss.gate_start_epoch:
            ce = L.gated_cross_entropy(logits, yy, A.detach() if loss.gate_detach else A, bb, bc,
                                       gate_background=loss.gate in ("background", "both"),
                                       gate_object=loss.gate in ("object", "both"), per_box_mean_one=loss.gate_renorm)
        else:
            ce = L.cross_entropy(logits, yy)
        total = loss.ce_weight * ce
        logs = {"ce": ce.detach()}
        if A is not None:
            if loss.awl_weight > 0:
                awl = L.attention_weighted_loss(logits, A, bb, bc)
                total = total + loss.awl_weight * awl
                logs["awl"] = awl.detach()
            if loss.fill_weight > 0:
                fill = L.filling_rate_loss(A, bb, bc, batch["rho"].to(device))
                total = total + loss.fill_weight * fill
                logs["fill"] = fill.detach()
            with torch.no_grad():
                means, counts = L.box_attention_means(A, bb, bc)
                logs["att_mean"] = means[counts > 0].mean() if bool((counts > 0).any()) else torch.zeros(())
        if loss.uses_embedding:
            emb = out["emb"]
            ye = _down(y, max(1, round(x.shape[-1] / emb.shape[-1])))
            ye = ye[:, :emb.shape[-2], :emb.shape[-1]]
            if phase.epoch < loss.emb_pretrain_epochs:
                e = L.embedding_label_loss(emb, ye, loss.emb_radius)
                logs["emb_pre"] = e.detach()
            else:
                e = L.embedding_agreement_loss(emb, seg_logits, loss.emb_radius, ignore=ye == IGNORE,
                                               detach_segmentation=loss.detach_segmentation)
                logs["emb_agr"] = e.detach()
            total = total + loss.emb_weight * e
        return {"loss": total, **logs}

    return step


_LATE_LOSS_FIELDS = ("rho", "gate", "gate_detach", "gate_renorm", "gate_start_epoch")
"""LossConfig fields added after checkpoints had been made; see :func:`checkpoint_dir_for`."""

STAGE = "box2seg"
FORMAT_VERSION = 1


def data_identity(data) -> dict:
    """What identifies a data set in a fingerprint (toy generator config, or the root's name; no split)."""
    return result_store.data_identity(data, with_split=False)


def checkpoint_dir_for(name: str, target: str, loss: LossConfig, seg: SegConfig, out_dir, extra: dict | None = None) -> Path:
    """``out_dir/segmenters/<name>-e<epochs>-seed<seed>-<fingerprint>``; the fingerprint covers the
    network, augmentation, schedule, target kind, loss and ``extra`` (data, GrabCut config, removed objects)."""
    loss_d = dataclasses.asdict(loss)
    defaults = {f.name: f.default for f in dataclasses.fields(LossConfig)}
    for k in _LATE_LOSS_FIELDS:  # at their defaults they are left out: fingerprints stay those of earlier runs
        if loss_d.get(k) == defaults[k]:
            del loss_d[k]
    seg_d = result_store.config_identity(seg, ("eval_batch_size", "cache_images", "eval_long_side"))
    ident = result_store.identity(STAGE, {"target": target, "loss": loss_d, "seg": seg_d, "extra": extra or {}},
                                  version=FORMAT_VERSION)
    return Path(out_dir) / "segmenters" / f"{name}-e{seg.train.epochs}-seed{seg.train.seed}-{ident.hash}"


def train_segmenter(name: str, target: str, loss: LossConfig, seg: SegConfig, train_ds: BoxSupervisionDataset,
                    num_classes: int, checkpoint_dir=None, backbone_state: Mapping[str, torch.Tensor] | None = None,
                    callbacks: Sequence[Any] = ()):
    """Train one setting with the shared engine (reloads a finished checkpoint); returns ``(model, history)``.

    ``backbone_state``: initial backbone weights (:func:`classifier_backbone`), loaded after the seeded
    construction, so every setting starts from the same weights. ``callbacks``: more engine callbacks
    (:func:`run_settings` reports progress from its worker processes with one).
    """
    engine.seed_everything(seg.train.seed)
    model = build_model(seg, num_classes, loss)
    if backbone_state is not None:
        model.backbone.load_state_dict(backbone_state)
    tcfg = seg.train.replace(desc=name)
    if checkpoint_dir is not None:
        tcfg = tcfg.replace(checkpoint_dir=str(checkpoint_dir))
    phase = _Phase()
    history = engine.train(model, make_step(loss, seg, phase), train_ds, tcfg, collate_fn=collate_boxes,
                           param_groups=lambda m: engine.unwrap(m).param_groups(seg.lr_mult_new),
                           callbacks=[phase, *callbacks])
    model.eval()
    return model, history


# ------------------------------------------------------------------------------------------------
# inference and evaluation
# ------------------------------------------------------------------------------------------------
def _resize_for_inference(x: torch.Tensor, long_side: int | None) -> torch.Tensor:
    if long_side is None:
        return x
    h, w = x.shape[-2:]
    s = long_side / max(h, w)
    if abs(s - 1) < 1e-6:
        return x
    return F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False,
                         antialias=s < 1)


@torch.no_grad()
def predict_maps(model: SegNet, images: torch.Tensor, long_side: int | None = None, heads: Sequence[str] = ("seg",)) -> dict:
    """Network outputs for normalised images ``(B, 3, H, W)``, upsampled to ``(H, W)``.

    Returns a dict with ``prob`` (B, C+1, H, W) softmax, and where asked and built ``att`` (B, C, H, W)
    attention in [0, 1] and ``emb`` (B, E, h, w) (left on the decoder grid).
    """
    model = engine.unwrap(model)
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        x = images.to(dev)
        H, W = x.shape[-2:]
        out = model(_resize_for_inference(x, long_side))
        res = {"prob": torch.softmax(F.interpolate(out["seg"].float(), size=(H, W), mode="bilinear", align_corners=False), 1)}
        if "att" in heads and "att" in out:
            res["att"] = torch.sigmoid(F.interpolate(out["att"].float(), size=(H, W), mode="bilinear", align_corners=False))
        if "emb" in heads and "emb" in out:
            res["emb"] = out["emb"].float()
        return res
    finally:
        model.train(was)


def evaluation_dataset(root, split, seg: SegConfig | None = None, **kw) -> VOCLayoutDataset:
    """Validation images (normalised) + masks (+ part/context masks of the toy scenes)."""
    return VOCLayoutDataset(root, split, saliency_dir=None, instance_dir=None, transforms=eval_transforms(),
                            cache=seg.cache_images if seg is not None else False, **kw)


def evaluate_segmenter(model: SegNet, dataset: VOCLayoutDataset, context_pairs=None, batch_size: int = 50,
                       long_side: int | None = None, progress: bool = False, keep: Sequence[int] = ()) -> tuple[dict, dict]:
    """Score the segmentation branch on ``dataset`` (eval transforms, masks).

    Returns ``(summary, kept)``: :meth:`LabelMapEvaluator.summary` (mIoU, per-class IoU, fg precision /
    recall, part / body recall, context leak where available) and ``{index: (H, W) uint8 prediction}``
    for the indices in ``keep``.
    """
    from ..data.voc import collate_samples

    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    same = (Path(dataset.root) / "toyscenes.json").is_file()
    bs = batch_size if same else 1
    keep = set(int(k) for k in keep)
    kept: dict[int, np.ndarray] = {}
    counter = [0]

    def fn(m, batch, dev):
        prob = predict_maps(m, batch["image"], long_side)["prob"]
        pred = prob.argmax(1).to(torch.uint8).cpu().numpy()
        for p in pred:
            i = counter[0]
            counter[0] += 1
            ev.update_from_sample(p, dataset.get_raw(i))
            if i in keep:
                kept[i] = p
        return None

    # fn pairs the k-th prediction with dataset.get_raw(k): every rank scores the whole split, in order
    engine.predict(model, dataset, fn, batch_size=bs, collate_fn=collate_samples, progress=progress, desc="evaluate",
                   shard=False)
    return ev.summary(), kept


# ------------------------------------------------------------------------------------------------
# the stage's data, and one setting, idempotent
# ------------------------------------------------------------------------------------------------
@dataclass
class StageData:
    """A training split with its GrabCut labels, the validation split, and target stores made on demand.

    Attributes
    ----------
    base : the training split (:func:`raw_dataset`, with instance masks where they exist)
    val : the validation split (:func:`evaluation_dataset`)
    gc_dir, gc_manifest : the GrabCut labels of ``base`` and their manifest (filling rates, time)
    missing : ``{id: [instance ids]}`` erased in the missing-annotation experiment
    context_pairs : for the evaluator (toy scenes: boat/water, train/rails)
    identity : what the checkpoints' fingerprints record about the data (and the backbone's initialisation)
    backbone_state : initial backbone weights for every setting (None: the backbone's own)
    """

    base: VOCLayoutDataset
    val: VOCLayoutDataset
    gc_dir: Path
    gc_manifest: dict
    missing: dict
    context_pairs: dict
    identity: dict
    backbone_state: dict | None = None
    _stores: dict = field(default_factory=dict)

    def store(self, kind: str) -> TargetStore:
        """The :class:`TargetStore` of ``kind`` (built once)."""
        if kind not in self._stores:
            self._stores[kind] = build_targets(kind, self.base, self.gc_dir, self.missing)
        return self._stores[kind]


def _subset(root, split, n, **kw):
    ds = VOCLayoutDataset(root, split, **kw)
    if n is not None and n < len(ds):
        ds = VOCLayoutDataset(root, ds.ids[:n], **kw)
        ds.split = f"{split}{n}"
    return ds


def prepare(cfg: Box2SegStageConfig, data, out_dir, seg: SegConfig | None = None, grabcut: GrabCutConfig | None = None,
            max_train: int | None = None, max_val: int | None = None, backbone: tuple[dict, str] | None = None,
            progress: bool = True) -> StageData:
    """Load the splits of ``data`` (a :class:`wsss_core.profiles.DataSpec`), make (or reuse) the GrabCut
    labels of the training split, and draw the objects the missing-annotation experiment erases.

    ``seg`` / ``grabcut`` override ``cfg.seg`` / ``cfg.grabcut`` (the horses use ``cfg.real``);
    ``max_train`` / ``max_val`` take the first images only (smoke runs); ``backbone`` = ``(state_dict,
    name)`` of the initial backbone weights (:func:`classifier_backbone`), required when
    ``seg.backbone_init`` is set.
    """
    if (seg or cfg.seg).backbone_init is not None and backbone is None:
        raise ValueError(f"seg.backbone_init={((seg or cfg.seg).backbone_init)!r} needs backbone=(state_dict, name): "
                         "use stage.classifier_backbone(...)")
    seg = seg or cfg.seg
    grabcut = grabcut or cfg.grabcut
    from ..data.voc import resolve_voc_root

    root = Path(data.root)
    has_inst = (resolve_voc_root(root) / "SegmentationObject").is_dir()
    base = _subset(root, data.train_split, max_train, saliency_dir=None, extra_dirs=None,
                   instance_dir="SegmentationObject" if has_inst else None, cache=seg.cache_images,
                   mask_dir=getattr(data, "mask_dir", "SegmentationClass"))
    val = _subset(root, data.val_split, max_val, saliency_dir=None, instance_dir=None, transforms=eval_transforms(),
                  cache=seg.cache_images)
    gdir, man = ensure_grabcut(base, out_dir, grabcut, workers=cfg.grabcut_workers, progress=progress)
    n_obj = [len(base.get_raw(i)["boxes"]) for i in range(len(base))]
    missing = missing_objects(base.ids, n_obj, cfg.missing_share, cfg.missing_seed) if has_inst else {}
    identity = {"data": data_identity(data), "train": base.split, "n_train": len(base), "grabcut": grabcut.fingerprint(),
                "backbone_init": backbone[1] if backbone is not None else None}
    return StageData(base, val, gdir, man, missing, dict(getattr(data, "context_pairs", {}) or {}), identity,
                     backbone[0] if backbone is not None else None)


@dataclass
class SettingResult:
    """A trained setting: the model, its history, where it lives, and its validation figures."""

    name: str
    target: str
    loss: LossConfig
    model: SegNet
    history: engine.History
    checkpoint_dir: Path
    val: dict
    train_seconds: float
    reused: bool


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``with torch_threads(1): ...`` runs the block with ``n`` torch intra-op threads and restores the
    previous count (None: unchanged)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_setting(name: str, cfg: Box2SegStageConfig, sd: StageData, out_dir, seg: SegConfig | None = None,
                progress: bool = True, callbacks: Sequence[Any] = ()) -> SettingResult:
    """Train (or reload) one setting and score it on the validation split; the score is cached in
    ``checkpoint_dir/val.json`` next to the checkpoint.

    Parameters
    ----------
    name : a setting of :func:`setting`
    sd : :func:`prepare`'s result
    seg : overrides ``cfg.seg`` (the horses use ``cfg.real.seg``)
    """
    target, loss = setting(name, cfg)
    seg = seg or cfg.seg
    extra = dict(sd.identity)
    if target == "mask_missing":
        extra["missing"] = result_store.fingerprint(sd.missing)
    store = sd.store(target)
    ckpt = checkpoint_dir_for(name, target, loss, seg, out_dir, extra)
    reused = engine.is_finished(ckpt)  # reloaded, not trained: by state, not timing
    with torch_threads(cfg.torch_threads):
        model, history = train_segmenter(name, target, loss, seg, training_dataset(sd.base, store, seg, loss.rho),
                                         sd.base.num_classes, ckpt, backbone_state=sd.backbone_state, callbacks=callbacks)
    seconds = float(sum(r["seconds"] for r in history.epochs))
    vpath = ckpt / "val.json"
    ident = {"val": sd.val.split, "n_val": len(sd.val), "long_side": seg.eval_long_side, "pairs": sorted(sd.context_pairs)}
    val = None
    if vpath.is_file():
        stored = json.loads(vpath.read_text())
        if stored.get("ident") == ident:
            val = stored["summary"]
    if val is None:
        with torch_threads(cfg.torch_threads):
            val, _ = evaluate_segmenter(model, sd.val, sd.context_pairs, seg.eval_batch_size, seg.eval_long_side,
                                        progress=progress)
        val = _jsonable(val)  # NaN → None, as it is stored (a reloaded result equals a fresh one)
        if engine.get_dist_info().is_main:
            result_store.atomic_write_json(vpath, {"ident": ident, "summary": val}, indent=1)
    return SettingResult(name, target, loss, model, history, ckpt, val, seconds, reused)


def setting_checkpoint(name: str, cfg: Box2SegStageConfig, sd: StageData, out_dir, seg: SegConfig | None = None) -> Path:
    """The checkpoint folder :func:`run_setting` trains ``name`` into (same fingerprint)."""
    target, loss = setting(name, cfg)
    extra = dict(sd.identity)
    if target == "mask_missing":
        extra["missing"] = result_store.fingerprint(sd.missing)
    return checkpoint_dir_for(name, target, loss, seg or cfg.seg, out_dir, extra)


class _QueueProgress:
    """Engine callback in a worker process: sends ``(name, done, total, loss)`` to the parent's queue."""

    def __init__(self, queue, name: str, every: int = 5):
        self.queue, self.name, self.every = queue, name, every

    def on_train_start(self, state) -> None:
        self.total = state.iters_per_epoch * state.cfg.epochs
        self.queue.put((self.name, 0, self.total, None))

    def on_iter_end(self, state) -> None:
        done = state.iteration + 1
        if done % self.every == 0 or done == self.total:
            self.queue.put((self.name, done, self.total, float(state.history.iters[-1]["loss"])))


def _setting_worker(name, cfg, sd, out_dir, seg, queue, threads):
    """One setting in a worker process of :func:`run_settings` (train, score, write ``val.json``)."""
    torch.set_num_threads(max(1, int(threads)))
    cfg = cfg.replace(torch_threads=None)  # this process's count, set above
    seg = seg.replace(train=seg.train.replace(progress=False))
    res = run_setting(name, cfg, sd, out_dir, seg=seg, progress=False, callbacks=[_QueueProgress(queue, name)])
    return name, res.train_seconds


def run_settings(names: Sequence[str], cfg: Box2SegStageConfig, sd: StageData, out_dir, seg: SegConfig | None = None,
                 workers: int | None = None, progress: bool = True) -> dict[str, SettingResult]:
    """:func:`run_setting` for several settings, training up to ``workers`` of them at once.

    Settings whose checkpoint is not finished are trained in ``workers`` processes (default
    ``cfg.train_workers``) with ``cfg.torch_threads`` torch threads each (default: this process's threads
    shared out) — on a CPU of few cores two small networks side by side use the cores better than one
    network on two threads (profiled for notebook 04: with the machine shared, two threads per network were
    up to 16× slower per step than one). A pool costs a few seconds to start, so the ``smoke`` preset
    trains its tiny runs here, one thread each. Each worker trains,
    scores its network on the validation split and writes both next to the checkpoint; this process then
    reloads every setting (:func:`run_setting`) and shows one progress bar per training. With a GPU, one
    setting to train or ``workers <= 1`` everything runs here, one setting after the other. The
    checkpoints are the same either way (same folders and fingerprints; thread counts change the last
    digits of the weights, not the run's identity).

    Returns
    -------
    {name: SettingResult} in the order of ``names``
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    names = list(dict.fromkeys(names))
    seg = seg or cfg.seg
    workers = cfg.train_workers if workers is None else workers
    todo = [n for n in names if not engine.is_finished(setting_checkpoint(n, cfg, sd, out_dir, seg))]
    fresh: dict[str, float] = {}
    if (workers or 0) > 1 and len(todo) > 1 and engine.select_device(seg.train.device).type == "cpu":
        for n in todo:  # targets are built once here and shipped to the workers with sd
            sd.store(setting(n, cfg)[0])
        threads = cfg.torch_threads or max(1, (torch.get_num_threads() or 1) // min(workers, len(todo)))
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads (Jupyter, torch)
        with ctx.Manager() as mgr, ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as ex:
            queue = mgr.Queue()
            futs = {ex.submit(_setting_worker, n, cfg, sd, out_dir, seg, queue, threads): n for n in todo}
            bars = {n: tqdm(total=1, desc=n, disable=not progress) for n in todo}
            pending = set(futs)

            def drain():
                while not queue.empty():
                    n, done, total, loss = queue.get()
                    b = bars[n]
                    if b.total != total:
                        b.reset(total=total)
                    b.update(done - b.n)
                    if loss is not None:
                        b.set_postfix(loss=f"{loss:.3f}", refresh=False)

            try:
                while pending:
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    drain()
                    for f in finished:
                        n, sec = f.result()  # re-raises a worker's error here
                        fresh[n] = sec
                drain()
            finally:
                for b in bars.values():
                    b.close()
    out = {}
    for n in names:
        r = run_setting(n, cfg, sd, out_dir, seg=seg, progress=progress)
        out[n] = dataclasses.replace(r, reused=False) if n in fresh else r
    return out


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


# ------------------------------------------------------------------------------------------------
# per-object measurements (toy scenes: camouflaged / non-convex flags in the XML)
# ------------------------------------------------------------------------------------------------
def object_flags(dataset: VOCLayoutDataset, i: int) -> list[dict]:
    """The XML flags of item ``i``'s objects (:func:`wsss_core.boxes.read_object_flags`; [] without XML)."""
    from ..boxes import read_object_flags

    if dataset.annotation_dir is None:
        return []
    p = dataset.annotation_dir / f"{dataset.ids[i]}.xml"
    return read_object_flags(p) if p.is_file() else []


def object_category(flags: Mapping[str, int]) -> str:
    """``"camouflaged"``, ``"non-convex"`` (and not camouflaged) or ``"plain"``."""
    if flags.get("camouflaged"):
        return "camouflaged"
    if flags.get("nonconvex"):
        return "non-convex"
    return "plain"


def object_rows(raw: Mapping[str, Any], pred, flags: Sequence[Mapping[str, int]] | None = None,
                fill: Sequence[float] | None = None) -> list[dict]:
    """One record per object of an image: how much of it ``pred`` recovers and how much it over-takes.

    Parameters
    ----------
    raw : ``VOCLayoutDataset.get_raw`` sample with ``mask``, ``instance_mask``, ``boxes``, ``box_labels``,
        ``box_instance_ids``
    pred : (H, W) label map (GrabCut's, or a segmenter's)
    flags : per box, the XML flags (:func:`object_flags`)
    fill : per box, a filling rate to carry along (GrabCut's ρ from the manifest)

    Returns
    -------
    list of dict
        ``id``, ``k`` (box index), ``cls``, ``category``, ``area`` (object pixels), ``box_area``,
        ``true_fill`` (object pixels / box pixels), ``recall`` (object pixels given its class),
        ``taken`` (background pixels of the box given the class / background pixels of the box),
        and ``fill`` if given.
    """
    from ..boxes import box_pixels

    mask, inst = np.asarray(raw["mask"]), np.asarray(raw["instance_mask"])
    pred = np.asarray(pred)
    rows = []
    for k, (box, c, iid) in enumerate(zip(raw["boxes"], raw["box_labels"], raw["box_instance_ids"])):
        x1, y1, x2, y2 = box_pixels(box, mask.shape)
        obj = inst == iid
        m_box, p_box = mask[y1:y2, x1:x2], pred[y1:y2, x1:x2]
        bg = m_box == 0
        r = {"id": raw["id"], "k": k, "cls": int(c),
             "category": object_category(flags[k]) if flags is not None and k < len(flags) else "plain",
             "area": int(obj.sum()), "box_area": int((x2 - x1) * (y2 - y1)),
             "true_fill": float(obj[y1:y2, x1:x2].sum()) / max(1, (x2 - x1) * (y2 - y1)),
             "recall": float((pred[obj] == c).mean()) if obj.any() else float("nan"),
             "taken": float((p_box[bg] == c).mean()) if bg.any() else float("nan")}
        if fill is not None and k < len(fill):
            r["fill"] = float(fill[k])
        rows.append(r)
    return rows


def summarise_objects(rows: Sequence[Mapping[str, Any]], key: str = "category") -> dict:
    """Pool :func:`object_rows` records by ``key``: ``{group: {"n", "recall", "taken"}}`` (means over
    objects) plus an ``"all"`` entry."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    groups["all"] = list(rows)
    out = {}
    for g, rs in groups.items():
        rec = [r["recall"] for r in rs if not math.isnan(r["recall"])]
        tak = [r["taken"] for r in rs if not math.isnan(r["taken"])]
        out[g] = {"n": len(rs), "recall": float(np.mean(rec)) if rec else float("nan"),
                  "taken": float(np.mean(tak)) if tak else float("nan")}
    return out


ERROR_KINDS = ("object_kept", "background_taken", "object_missed", "background_left")
"""The four kinds of box pixel by GrabCut's label (object / background) and the truth, for
:func:`attention_by_grabcut_error`: ``background_taken`` = over-estimation, ``object_missed`` =
under-estimation."""


def attention_report(model: SegNet, dataset: VOCLayoutDataset, gc_dir, n: int | None = None,
                     long_side: int | None = None, flags: Mapping[int, Sequence[Mapping[str, int]]] | None = None,
                     batch_size: int = 50) -> dict:
    """Box2Seg's attention against GrabCut's labels and the truth, over the first ``n`` images of ``dataset``.

    ``dataset`` is a :func:`raw_dataset` with true masks. For every box ``k`` of class ``c`` and its own
    pixels ``Ω_k`` (the pixels whose smallest box it is; ignore pixels skipped):

    * ``by_error``: the mean attention ``A_c`` on four kinds of box pixel (:data:`ERROR_KINDS`):
      ``object_kept`` (GrabCut ``c``, truth ``c``), ``background_taken`` (GrabCut ``c``, truth not ``c``:
      a wrong foreground label), ``object_missed`` (GrabCut not ``c``, truth ``c``: a wrong background
      label) and ``background_left`` (neither) — ``{kind: {"attention", "pixels"}}`` (NaN if no pixel);
    * ``boxes``: one record per box, ``attention`` (mean ``A_c`` on ``Ω_k``), ``rho`` (GrabCut's filling rate
      of ``Ω_k``, the target of B3), ``true_fill`` (the truth's) and ``category`` (:func:`object_category`
      from ``flags[i]``, else ``"plain"``).

    Same-sized images (the toy scenes) go through the network ``batch_size`` at a time; ``long_side``
    resizes photos for inference (:func:`predict_maps`), the attention is scored at full size.
    """
    if getattr(engine.unwrap(model), "att_head", None) is None:
        raise ValueError("the model has no attention head (train a setting with awl_weight or fill_weight > 0)")
    sums = dict.fromkeys(ERROR_KINDS, 0.0)
    counts = dict.fromkeys(ERROR_KINDS, 0)
    records = []
    n = len(dataset) if n is None else min(n, len(dataset))
    root = getattr(dataset, "root", None)
    same = root is not None and (Path(root) / "toyscenes.json").is_file()
    bs = max(1, batch_size) if same else 1
    for s0 in range(0, n, bs):
        raws = [dataset.get_raw(i) for i in range(s0, min(n, s0 + bs))]
        x = torch.stack([image_tensor(r["image"]) for r in raws])
        att_b = predict_maps(model, x, long_side, heads=("att",))["att"].numpy()
        for j, raw in enumerate(raws):
            i, att = s0 + j, att_b[j]
            gc = read_label_png(Path(gc_dir) / f"{raw['id']}.png")
            m = raw["mask"]
            bmap = box_index_map(raw["boxes"], m.shape)
            fl = (flags or {}).get(i) or []
            for k, c in enumerate(raw["box_labels"]):
                region = bmap == k
                own = region & (m != IGNORE)
                g, t = gc == c, m == c
                for kind, sel in (("object_kept", g & t), ("background_taken", g & ~t), ("object_missed", ~g & t),
                                  ("background_left", ~g & ~t)):
                    sel = sel & own
                    sums[kind] += float(att[c - 1][sel].sum())
                    counts[kind] += int(sel.sum())
                if region.any():
                    records.append({"id": raw["id"], "k": k, "cls": int(c),
                                    "attention": float(att[c - 1][region].mean()),
                                    "rho": float(g[region].mean()), "true_fill": float(t[own].mean()) if own.any() else math.nan,
                                    "category": object_category(fl[k]) if k < len(fl) else "plain"})
    by_error = {k: {"attention": sums[k] / counts[k] if counts[k] else math.nan, "pixels": counts[k]} for k in ERROR_KINDS}
    return {"by_error": by_error, "boxes": records, "n_images": n}


def attention_by_grabcut_error(model: SegNet, dataset: VOCLayoutDataset, gc_dir, n: int | None = None,
                               long_side: int | None = None) -> dict:
    """Mean attention ``A_c`` of each box's class on the box's own pixels, by what GrabCut did there:
    ``{kind: {"attention": mean A (NaN if no pixel), "pixels": count}}`` for the kinds of
    :data:`ERROR_KINDS` (:func:`attention_report`'s ``by_error``)."""
    return attention_report(model, dataset, gc_dir, n, long_side)["by_error"]


def box_attention_map(model: SegNet, raw: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(A, box_map)``: the attention of each pixel's (smallest) box class, ``(H, W)`` float with NaN outside
    every box, and :func:`wsss_core.boxes.box_index_map` of the image's boxes."""
    att = predict_maps(model, image_tensor(raw["image"])[None], heads=("att",))["att"][0].numpy()
    bmap = box_index_map(raw["boxes"], raw["mask"].shape)
    out = np.full(bmap.shape, np.nan, np.float32)
    for k, c in enumerate(raw["box_labels"]):
        out[bmap == k] = att[c - 1][bmap == k]
    return out, bmap


def grabcut_report(dataset: VOCLayoutDataset, gc_dir, fill: Mapping[str, Sequence[float]] | None = None,
                   flags: Mapping[int, Sequence[Mapping[str, int]]] | None = None, progress: bool = False) -> dict:
    """GrabCut's labels (``gc_dir``) and the filled boxes against the true masks of ``dataset`` (a
    :func:`raw_dataset`; with instance masks, per object as well).

    Returns
    -------
    dict
        ``box`` / ``grabcut``: ``{"miou", "fg_precision", "fg_recall", **GrabCutStats.summary()}`` (miss
        rate = under-estimation, take rate = over-estimation inside boxes); ``objects``: GrabCut's
        :func:`object_rows` (with ``fill`` = its ρ from the manifest's ``fill`` when given) and
        ``by_category``: :func:`summarise_objects` of them.
    """
    from tqdm.auto import tqdm

    from ..boxes import GrabCutStats
    from ..metrics import ConfusionMatrix

    C1 = dataset.num_classes + 1
    cms = {"box": ConfusionMatrix(C1), "grabcut": ConfusionMatrix(C1)}
    stats = {"box": GrabCutStats(), "grabcut": GrabCutStats()}
    rows = []
    for i in tqdm(range(len(dataset)), desc="score GrabCut", disable=not progress):
        r = dataset.get_raw(i)
        labs = {"grabcut": read_label_png(Path(gc_dir) / f"{r['id']}.png"),
                "box": filled_box_labels(r["boxes"], r["box_labels"], r["mask"].shape)}
        for k, lab in labs.items():
            cms[k].update(lab, r["mask"])
            stats[k].update(lab, r["mask"], r["boxes"])
        if "instance_mask" in r:
            rows += object_rows(r, labs["grabcut"], (flags or {}).get(i), (fill or {}).get(r["id"]))
    out = {k: {"miou": float(cms[k].miou()), "fg_precision": float(cms[k].fg_precision()),
               "fg_recall": float(cms[k].fg_recall()), **stats[k].summary()} for k in cms}
    out["objects"] = rows
    out["by_category"] = summarise_objects(rows) if rows else {}
    return out


def pick_examples(n: int, n_images: int, rng: np.random.Generator,
                  flags: Mapping[int, Sequence[Mapping[str, int]]] | None = None) -> list[int]:
    """``n`` image indices for the figures: one with a camouflaged object and one with a non-convex object
    where ``flags`` (``{index: object_flags}``) has them, the rest drawn with ``rng``; sorted."""
    chosen: list[int] = []
    for want in ("camouflaged", "nonconvex"):
        cand = [i for i, fl in (flags or {}).items() if any(f.get(want) for f in fl) and i not in chosen]
        if cand and len(chosen) < n:
            chosen.append(int(rng.choice(cand)))
    rest = [i for i in range(n_images) if i not in chosen]
    k = max(0, min(n, n_images) - len(chosen))
    chosen += [int(i) for i in rng.choice(rest, size=k, replace=False)] if k else []
    return sorted(chosen[:n])


def attention_cell(image, attention) -> np.ndarray:
    """The attention inside the boxes as a heat map (blue 0 → red 1) on the image; outside the boxes
    (NaN) the image dimmed."""
    from .. import viz

    a = np.asarray(attention)
    hm = viz.heatmap(image, np.nan_to_num(a), alpha=0.65)
    dim = (0.35 * viz.as_image(image)).astype(np.uint8)
    return np.where(np.isnan(a)[..., None], dim, hm)


def prediction_grid(dataset: VOCLayoutDataset, indices: Sequence[int], models: Mapping[str, SegNet],
                    long_side: int | None = None, n_classes: int | None = None, size: float = 1.8):
    """A figure with one row per image: the image, its true mask and each model's prediction (the
    segmentation branch; with ``n_classes`` the image's mIoU in each title). ``dataset`` yields
    normalised images (:func:`evaluation_dataset`)."""
    from .. import viz
    from ..metrics import ConfusionMatrix

    cells, titles = [], []
    for i in indices:
        r = dataset.get_raw(int(i))
        row, t = [r["image"], viz.overlay(r["image"], r["mask"])], [r["id"], "true mask"]
        for name, model in models.items():
            p = predict_maps(model, dataset[int(i)]["image"][None], long_side)["prob"][0].argmax(0).numpy()
            row.append(viz.overlay(r["image"], p))
            t.append(name if n_classes is None else
                     f"{name}\nimage mIoU {ConfusionMatrix(n_classes).update(p, r['mask']).miou():.2f}")
        cells.append(row)
        titles.append(t)
    return viz.image_grid(cells, titles=titles, size=size)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """A raw ``(H, W, 3) uint8`` image as the network's input ``(3, H, W)`` float (eval transforms)."""
    x = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))))
    return eval_transforms()({"image": x})["image"].as_subclass(torch.Tensor)


def classifier_backbone(data, cam_out_dir, cam_cfg=None, profile: str | None = None) -> tuple[dict, str]:
    """The backbone weights of notebook 01's CAM classifier, trained on the image labels (which boxes imply).

    Reloads the classifier from ``cam_out_dir`` (normally ``OUT_DIR/01_class_activation_maps``) when
    notebook 01 trained it with the same config, or trains it there exactly as notebook 01 would
    (same checkpoint folder, with the validation mAP recorded per epoch), so that the two notebooks share
    it either way.

    Parameters
    ----------
    data : :class:`wsss_core.profiles.DataSpec`
    cam_out_dir : path
    cam_cfg : :class:`wsss_core.stages.cam.CAMStageConfig`, optional (default: ``profiles.cam_config(profile)``)
    profile : str, optional

    Returns
    -------
    (state_dict, name)
        The backbone's weights (CPU tensors) and the classifier's checkpoint folder name (for fingerprints).
    """
    from .. import profiles
    from . import cam as cam_stage

    if cam_cfg is None:
        if profile is None:
            raise ValueError("classifier_backbone needs cam_cfg or profile")
        cam_cfg = profiles.cam_config(profile)
    ckpt = cam_stage.checkpoint_dir_for(cam_cfg, cam_out_dir, data)
    train_ds = cam_stage.classification_dataset(data.root, data.train_split, cam_cfg, train=True)
    val_ds = cam_stage.classification_dataset(data.root, data.val_split, cam_cfg, train=False)
    model, _ = cam_stage.train_classifier(cam_cfg, train_ds, ckpt, val_ds=val_ds)
    return {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}, ckpt.name


# ------------------------------------------------------------------------------------------------
# the whole stage for later notebooks (06): pseudo-label folders of the training split
# ------------------------------------------------------------------------------------------------
def box_constrained_labels(prob: np.ndarray, boxes, box_labels) -> np.ndarray:
    """A segmenter's prediction restricted by the image's boxes (what a box annotation allows).

    Pixels outside every box are background; a pixel inside boxes takes the most probable of
    background and the classes of the boxes that contain it. (Our choice for turning a box-supervised
    network's output into training labels; not from the paper.)

    Parameters
    ----------
    prob : (C+1, H, W) float class probabilities (index 0 = background)
    boxes : (K, 4) XYXY, 0-based, exclusive
    box_labels : (K,) int classes (1..C)

    Returns
    -------
    (H, W) uint8 label map
    """
    from ..boxes import box_pixels

    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise ValueError(f"prob must be (C+1, H, W), got shape {prob.shape}")
    allowed = np.zeros(prob.shape, bool)
    allowed[0] = True
    for box, c in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(box_labels).reshape(-1)):
        if not 0 < int(c) < prob.shape[0]:
            raise ValueError(f"box class {int(c)} outside 1..{prob.shape[0] - 1}")
        x1, y1, x2, y2 = box_pixels(box, prob.shape[1:])
        allowed[int(c), y1:y2, x1:x2] = True
    return np.where(allowed, prob, -1.0).argmax(0).astype(np.uint8)


def write_predicted_labels(model: SegNet, dataset: VOCLayoutDataset, out_dir, long_side: int | None = None,
                           constrain_to_boxes: bool = True, progress: bool = True) -> dict:
    """Write the segmentation branch's prediction for every image of ``dataset`` (a :func:`raw_dataset`)
    as ``out_dir/<id>.png`` (palette PNG of class indices), and score them against the masks.

    Returns ``{"miou", "fg_precision", "fg_recall", "n"}`` of the written labels.
    """
    from tqdm.auto import tqdm

    from ..data.palette import write_label_png
    from ..metrics import ConfusionMatrix

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = ConfusionMatrix(dataset.num_classes + 1)
    for i in tqdm(range(len(dataset)), desc="Box2Seg labels", disable=not progress):
        raw = dataset.get_raw(i)
        prob = predict_maps(model, image_tensor(raw["image"])[None], long_side)["prob"][0].numpy()
        lab = (box_constrained_labels(prob, raw["boxes"], raw["box_labels"]) if constrain_to_boxes
               else prob.argmax(0).astype(np.uint8))
        write_label_png(out_dir / f"{raw['id']}.png", lab)
        if "mask" in raw:
            cm.update(lab, raw["mask"])
    return {"miou": float(cm.miou()), "fg_precision": float(cm.fg_precision()), "fg_recall": float(cm.fg_recall()),
            "n": len(dataset)}


@dataclass
class Box2SegStageResult:
    """What :func:`run` leaves behind (paths under ``out_dir``).

    Attributes
    ----------
    grabcut_label_dir : GrabCut pseudo-labels of the training split (``<id>.png``, class indices)
    box2seg_label_dir : the trained Box2Seg network's predictions on the training split, restricted to
        the boxes (:func:`box_constrained_labels`), ``<id>.png``
    report : ``{"grabcut_train_miou", "box2seg_train_miou", "box2seg_val_miou", "grabcut_ce_val_miou"?,
        "grabcut_images_per_second", "box2seg_checkpoint", ...}``
    results : ``{setting: SettingResult}`` of the settings run
    stage_data : :func:`prepare`'s result
    """

    cfg: Box2SegStageConfig
    grabcut_label_dir: Path
    box2seg_label_dir: Path
    report: dict
    results: dict
    stage_data: StageData


def run(cfg: Box2SegStageConfig, data, out_dir, settings: Sequence[str] = ("box2seg",), cam_out_dir=None,
        cam_cfg=None, label_setting: str = "box2seg", seed: int | None = None, device: str | None = None,
        progress: bool = True) -> Box2SegStageResult:
    """The box stage as one idempotent call (for notebook 06 and the CLI)::

        cfg = stage.config_for_profile(profile)
        res = stage.run(cfg, data, Path(OUT_DIR) / stage.NOTEBOOK)
        res.grabcut_label_dir, res.box2seg_label_dir, res.report

    Makes (or reuses) the GrabCut labels of the training split, trains (or reloads — the same
    checkpoint folders as notebook 04) the ``settings`` (``label_setting`` is always among them), and
    writes that network's box-constrained predictions on the training split to
    ``out_dir/box2seg_labels`` (redone only when the checkpoint changed; ``source.json`` records it).

    Parameters
    ----------
    cfg : :class:`Box2SegStageConfig` (``config_for_profile``)
    data : :class:`wsss_core.profiles.DataSpec`
    out_dir : normally ``OUT_DIR/04_box2seg``
    settings : settings to train / reload and score on the validation split
    cam_out_dir : where notebook 01's classifier lives (default ``out_dir/../01_class_activation_maps``);
        used when ``cfg.seg.backbone_init == "cam_classifier"``
    cam_cfg : the CAM stage config (default ``profiles.cam_config(cfg.profile)``)
    label_setting : the setting whose network writes ``box2seg_label_dir``: ``"box2seg"`` (the method as
        described) or ``"box2seg_class_rho"`` (our per-class filling rate; see notebook 04 §7.3)
    seed, device : override ``cfg.seg.train``'s seed / device (and the default ``cam_cfg``'s), as
        notebook 04 sets them from its SEED / DEVICE parameters; None keeps the config's
    """
    from ..metrics import ConfusionMatrix

    out_dir = Path(out_dir)
    run_kw = {k: v for k, v in (("seed", None if seed is None else int(seed)), ("device", device)) if v is not None}
    if run_kw:
        cfg = cfg.replace(seg=cfg.seg.replace(train=cfg.seg.train.replace(**run_kw)))
    setting(label_setting, cfg)  # validates the name
    settings = list(dict.fromkeys([label_setting, *settings]))
    backbone = None
    if cfg.seg.backbone_init == "cam_classifier":
        if cam_cfg is None:
            if cfg.profile is None:
                raise ValueError("cfg.profile is None: pass cam_cfg (the CAM stage config whose classifier initialises "
                                 "the backbone), or build cfg with config_for_profile")
            from .. import profiles

            cam_cfg = profiles.cam_config(cfg.profile)
            if run_kw:
                cam_cfg = cam_cfg.replace(train=cam_cfg.train.replace(**run_kw))
        backbone = classifier_backbone(data, Path(cam_out_dir) if cam_out_dir else out_dir.parent / "01_class_activation_maps",
                                       cam_cfg)
    elif cfg.seg.backbone_init is not None:
        raise ValueError(f"unknown seg.backbone_init {cfg.seg.backbone_init!r}")
    sd = prepare(cfg, data, out_dir, backbone=backbone, progress=progress)
    results = {n: run_setting(n, cfg, sd, out_dir, progress=progress) for n in settings}
    b2s = results[label_setting]
    label_dir = out_dir / "box2seg_labels"
    labels = result_store.Result(label_dir, marker="source.json")  # written last, removed first
    source = {"checkpoint": b2s.checkpoint_dir.name, "split": sd.base.split, "n": len(sd.base), "constrain_to_boxes": True}
    stored = labels.record()
    n_png = len(list(label_dir.glob("*.png"))) if label_dir.is_dir() else 0
    if stored is not None and stored.get("source") == source and n_png == len(sd.base):
        lab_scores = stored["scores"]
    else:
        labels.begin()
        for p in label_dir.glob("*.png"):
            p.unlink()
        lab_scores = write_predicted_labels(b2s.model, sd.base, label_dir, cfg.seg.eval_long_side, progress=progress)
        labels.complete({"source": source, "scores": lab_scores})
    cm = ConfusionMatrix(sd.base.num_classes + 1)
    for i in range(len(sd.base)):
        raw = sd.base.get_raw(i)
        cm.update(read_label_png(sd.gc_dir / f"{raw['id']}.png"), raw["mask"])
    report = {"grabcut_train_miou": float(cm.miou()), "grabcut_images_per_second": sd.gc_manifest["images_per_second"],
              "box2seg_train_miou": lab_scores["miou"], "box2seg_checkpoint": b2s.checkpoint_dir.name,
              "label_setting": label_setting,
              "n_train": len(sd.base), "n_val": len(sd.val)}
    for n, r in results.items():
        report[f"{n}_val_miou"] = r.val["miou"]
    return Box2SegStageResult(cfg, sd.gc_dir, label_dir, report, results, sd)
