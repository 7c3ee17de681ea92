"""The AffinityNet + random-walk stage (PSA, Ahn & Kwak CVPR 2018): CAMs → affinity labels →
AffinityNet → random walk → pseudo-labels.

One config object (:class:`AffinityStageConfig`), its presets (:func:`config_for_profile`:
``smoke``, ``tutorial``, ``study``, ``paper``), and the steps that notebook ``02_affinitynet_random_walk`` runs
one by one and :func:`run` runs all at once (idempotent, like :func:`wsss_core.stages.cam.run`)::

    cam = cam_stage.run(cam_cfg, data, OUT_DIR / "01_class_activation_maps")   # reuses notebook 01
    make_affinity_labels(cam.cam_dir, cam.train_dataset, label_dir, cfg)      # confident fg / bg / 255
    train_ds = affinity_dataset(data.root, data.train_split, label_dir, cfg)
    model, history = train_affinitynet(cfg, train_ds, ckpt, classifier=cam.model)
    make_rw_labels(model, cam.train_dataset, cam.cam_dir, rw_dir, cfg)        # the random walk
    report = evaluate_label_dir(rw_dir, cam.train_dataset, data.context_pairs)

Everything is scored on the *training* split, the images whose pseudo-labels a segmentation network
would later be trained on (PSA and IRN report their pseudo-label mIoU on VOC *train* the same way).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import engine
from ._config import StageConfig
from ..affinity import (affinity_labels, affinity_loss, crf_available, downsample_labels, local_affinities,
                        offset_slices, pair_labels, pair_offsets, random_walk_labels)
from ..cams import cams_to_labels, load_cams
from ..data.palette import read_label_png, write_label_png
from ..data.transforms import train_transforms
from ..data.voc import VOCLayoutDataset, collate_samples
from ..evaluation import LabelMapEvaluator
from ..evaluation import evaluate_label_dir as _evaluate_label_dir
from ..models.affinitynet import AffinityNet
from ..models.backbones import build_backbone
from . import cam as cam_stage
from . import store

NOTEBOOK = "02_affinitynet_random_walk"
"""The notebook (and OUT_DIR sub-folder) that owns this stage's artifacts."""

AFF_KEY = "aff_label"
"""Sample key of the affinity-label map in :func:`affinity_dataset`."""


@dataclass
class AffinityStageConfig(StageConfig):
    """Everything that defines the AffinityNet + random-walk stage.

    Attributes
    ----------
    backbone, backbone_kwargs : the AffinityNet backbone (:func:`wsss_core.models.backbones.build_backbone`).
    init_from_classifier : start the backbone from the CAM classifier's trained backbone (PSA starts
        from the ImageNet weights its classifier started from; our compact CNN has none, so the
        trained classifier is the analogue). Shapes must match (the output stride may differ).
    frozen_backbone : train only the 1×1 layers on a fixed backbone (IRN freezes its whole backbone).
    level_channels, embed_dim : the 1×1 reductions of the used levels and the fused width
        (:class:`~wsss_core.models.affinitynet.AffinityNet`; PSA 64/128/256 → 448).
    levels : names of the backbone levels to use (None: the last ``len(level_channels)``, as PSA).
        The tutorial uses ``("s2", "s4")`` — see :func:`config_for_profile`.
    feature_stride : stride of the affinity grid (PSA 8, IRN 4).
    radius : pair radius γ for training (PSA 5 at stride 8; IRN 10 at stride 4).
    label_mode : ``"power"`` (PSA: α_low / α_high) or ``"threshold"`` (IRN: 0.30 / 0.05).
    fg_alpha, bg_alpha : PSA's low / high α (official 4 / 32; CVPR paper 4 / 24).
    fg_threshold, bg_threshold : IRN's conf_fg_thres / conf_bg_thres.
    crf : refine the confident score stacks with a dense CRF (PSA; needs pydensecrf2).
    crf_params : overrides of :data:`wsss_core.affinity.PSA_CRF` (e.g. ``{"scale": 5.2}``).
    crop_size, scale, long_side, hflip, color_jitter : training augmentation (joint image/label).
    lr_mult_new : learning-rate multiplier of the new 1×1 layers (PSA 10×).
    train : the engine's :class:`~wsss_core.engine.TrainConfig`.
    rw_radius, rw_alpha, beta, t : the random walk (PSA: 5, 16, 8, 256).
    rw_method : ``"sparse"`` (ours, O(N·r²) memory) or ``"dense"`` (the official N × N matrix).
    rw_batch_size : images per AffinityNet inference batch (equal-sized images only).
    cache_images : keep decoded images in memory (toy data).
    """

    backbone: str = "compact"
    backbone_kwargs: dict = field(default_factory=lambda: {"width": 32, "output_stride": 4})
    init_from_classifier: bool = True
    frozen_backbone: bool = False
    level_channels: tuple = (32, 64, 128)
    levels: tuple | None = None
    embed_dim: int | None = None
    feature_stride: int = 4
    radius: int = 5
    label_mode: str = "power"
    fg_alpha: float = 4.0
    bg_alpha: float = 32.0
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    crf: bool = False
    crf_params: dict | None = None
    crop_size: int = 96
    scale: tuple | None = (0.9, 1.1)
    long_side: tuple | None = None
    hflip: bool = True
    color_jitter: tuple | None = None
    lr_mult_new: float = 10.0
    train: engine.TrainConfig = field(default_factory=lambda: engine.TrainConfig(
        epochs=8, batch_size=16, lr=1e-3, optimizer="adam", schedule="onecycle", weight_decay=1e-4,
        desc="affinitynet"))
    rw_radius: int = 5
    rw_alpha: float = 16.0
    beta: float = 8.0
    t: int = 256
    rw_method: str = "sparse"
    rw_batch_size: int = 32
    cache_images: bool = True

    def __post_init__(self):
        if self.label_mode not in ("power", "threshold"):
            raise ValueError(f"label_mode must be 'power' (PSA) or 'threshold' (IRN), got {self.label_mode!r}")
        if self.rw_method not in ("sparse", "dense"):
            raise ValueError(f"rw_method must be 'sparse' or 'dense', got {self.rw_method!r}")

    def label_kwargs(self) -> dict:
        """Keyword arguments of :func:`wsss_core.affinity.affinity_labels` for this config."""
        if self.label_mode == "power":
            kw = dict(fg_alpha=self.fg_alpha, bg_alpha=self.bg_alpha)
        else:
            kw = dict(fg_threshold=self.fg_threshold, bg_threshold=self.bg_threshold)
        if self.crf:
            kw["crf"] = dict(self.crf_params or {}) or True
        return kw


def config_for_profile(profile: str) -> AffinityStageConfig:
    """:class:`AffinityStageConfig` preset (pattern of :func:`wsss_core.profiles.cam_config`).

    * ``smoke``: the tutorial's network, 1 epoch on the 64 smoke scenes, no CRF, t = 64 — proves the
      code path in seconds.
    * ``study``: AffinityNet on the two *shallow* levels (``s2``, ``s4``; receptive field 19 px) of
      a compact CNN initialised from the CAM classifier (same output stride 8, so the weights mean what
      they meant there) and fine-tuned; affinities on the stride-4 grid (24 × 24 for the 96-px scenes)
      with radius 5 — IRN's grid, not PSA's stride 8: on a 12 × 12 grid a radius-5 neighbourhood spans
      most of the image. Labels with PSA's α 4 / 32 **and PSA's dense CRF** (spatial widths scaled by
      1/2 for the small images); the walk with PSA's α 16, β 8, t 256; Adam, one-cycle, 30 epochs.

      Why shallow levels and the CRF (measured on the tutorial data; notebook 02 §5.1 and §7.3): the
      CAM blobs of the toy scenes spill over the bodies, so without the CRF 54 % of the *negative*
      pairs join two pixels of one region (mostly background to background); a network that sees the
      badge (the deep level, 43 px) then learns to redraw the blob, and the walk cannot beat the CAMs
      (mIoU 0.55 vs 0.55). With CRF labels (negative pairs 85 % right) and features that cannot see the
      badge, the affinities follow colour edges (same-vs-different ROC-AUC 0.92) and the walk gains
      +8.5 mIoU points over its CAMs after 15 epochs, +12.9 after 30 (first 300 training images).
      This is the ``study`` preset (the figures of ``benchmarks/baselines/study.json``).
    * ``tutorial`` (the lesson, ≤ 5 min on 2 CPU cores): the same stage with a short schedule — 14
      epochs of batch 8 (1 750 updates, 47 % of the study preset's image passes). Measured on the 1 000
      training scenes (one seed, AffinityNet alone): 10 epochs of batch 16 gave +3.8 mIoU points over
      the CAMs, 10 of batch 8 +4.8, 10 of batch 4 +4.5, 14 of batch 8 +6.6 (the study preset: +11.0).
      More updates per image pass help more than a higher learning rate (lr 3e-3, 10 × 16: +4.1).
    * ``paper``: PSA's ``train_aff.py`` / ``infer_aff.py`` on VOC with IRN's ResNet-50 backbone
      (ImageNet weights; ResNet-38 is not available in torchvision): output stride 8, levels
      layer2 / layer3 / out reduced to 64 / 128 / 256 and fused to 448, radius 5 at stride 8, labels
      with α 4 / 32 and PSA's dense CRF, crop 448, resize-long 256–512, flip, colour jitter
      (0.3, 0.3, 0.3, 0.1), batch 8, 8 epochs, SGD lr 0.1 (new layers 10×), weight decay 5e-4, poly 0.9
      and — PSA's ``PolyOptimizer`` passes the weight decay positionally into SGD's momentum — momentum
      ≈ 0; the walk with α 16, β 8, t 256.
    """
    from ..profiles import check_profile

    check_profile(profile)
    tutorial = AffinityStageConfig(
        backbone="compact", backbone_kwargs={"width": 32, "output_stride": 8}, init_from_classifier=True,
        frozen_backbone=False, levels=("s2", "s4"), level_channels=(32, 64), feature_stride=4, radius=5,
        label_mode="power", fg_alpha=4.0, bg_alpha=32.0, crf=True, crf_params={"scale": 2.0},
        train=engine.TrainConfig(epochs=30, batch_size=16, lr=1e-3, optimizer="adam", schedule="onecycle",
                                 weight_decay=1e-4, desc="affinitynet"),
        rw_radius=5, rw_alpha=16.0, beta=8.0, t=256)
    if profile == "smoke":
        return tutorial.replace(crf=False, t=64, train=tutorial.train.replace(epochs=1))
    if profile == "study":
        return tutorial
    if profile == "tutorial":
        return tutorial.replace(train=tutorial.train.replace(epochs=14, batch_size=8))
    return AffinityStageConfig(
        backbone="resnet50",
        backbone_kwargs={"output_stride": 8, "weights": "imagenet", "freeze_bn": True, "frozen_stages": 1},
        init_from_classifier=False, level_channels=(64, 128, 256), embed_dim=448, feature_stride=8, radius=5,
        label_mode="power", fg_alpha=4.0, bg_alpha=32.0, crf=True, crop_size=448, scale=None, long_side=(256, 512),
        hflip=True, color_jitter=(0.3, 0.3, 0.3, 0.1), lr_mult_new=10.0,
        train=engine.TrainConfig(epochs=8, batch_size=8, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=5e-4,
                                 schedule="poly", poly_power=0.9, num_workers=4, desc="affinitynet"),
        rw_radius=5, rw_alpha=16.0, beta=8.0, t=256, rw_method="sparse", rw_batch_size=1, cache_images=False)


# ------------------------------------------------------------------------------------------------
# affinity labels
# ------------------------------------------------------------------------------------------------

def _label_job(job) -> tuple[str, np.ndarray]:
    """One image's affinity label (a module-level function, so a process pool can run it)."""
    iid, cam_path, image, kw = job
    cams, label = load_cams(cam_path)
    return iid, affinity_labels(cams, label, image=image, **kw)


def default_workers() -> int:
    """Processes for the per-image CPU work of this stage (the dense CRF): the cores this process may
    use, at most 2 (the course's laptop budget; the CRF of a 96-px scene takes ≈ 25 ms)."""
    import os

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, n))


def make_affinity_labels(cam_dir, dataset, out_dir, cfg: AffinityStageConfig, progress: bool = True,
                         overwrite: bool = False, workers: int | None = None) -> Path:
    """Affinity labels (0 confident background, c confident class, 255 neutral) of every image of
    ``dataset`` from its CAMs in ``cam_dir`` → ``out_dir/<id>.png`` at full resolution (IRN stores its
    ``ir_label`` the same way; the training loader samples them onto the feature grid after the
    augmentation). Existing files are kept unless ``overwrite``.

    With the dense CRF the images are spread over ``workers`` processes (default
    :func:`default_workers`; the labels do not depend on it); without it one process is faster.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    kw = cfg.label_kwargs()
    if kw.get("crf") and not crf_available():
        raise ImportError("cfg.crf=True needs the optional dense CRF (pip install pydensecrf2); "
                          "set crf=False to make the labels without it")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i, iid in enumerate(dataset.ids) if overwrite or not (out_dir / f"{iid}.png").exists()]
    workers = (default_workers() if workers is None else int(workers)) if kw.get("crf") else 1

    def jobs():
        for i in todo:
            iid = dataset.ids[i]
            yield iid, Path(cam_dir) / f"{iid}.npz", dataset.get_raw(i)["image"] if kw.get("crf") else None, kw

    bar = tqdm(total=len(todo), desc="affinity labels", disable=not progress)
    try:
        if workers <= 1 or len(todo) < 2 * workers:
            results = map(_label_job, jobs())
            for iid, lab in results:
                write_label_png(out_dir / f"{iid}.png", lab)
                bar.update(1)
        else:
            # "fork" where there is one: the workers run numpy and pydensecrf only (never torch, whose thread
            # pools do not survive a fork), and a spawned worker would spend seconds importing torch first
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
                for iid, lab in ex.map(_label_job, jobs(), chunksize=max(1, min(32, len(todo) // (8 * workers)))):
                    write_label_png(out_dir / f"{iid}.png", lab)
                    bar.update(1)
    finally:
        bar.close()
    return out_dir


def _label_source(cfg: AffinityStageConfig, cam_source: str, dataset) -> dict:
    return {"cams": cam_source, "split": getattr(dataset, "split", None), "n_images": len(dataset),
            **{k: v for k, v in cfg.label_kwargs().items()}, "label_mode": cfg.label_mode}


def ensure_affinity_labels(cam_dir, dataset, out_dir, cfg: AffinityStageConfig, cam_source: str,
                           progress: bool = True, workers: int | None = None) -> tuple[float, bool]:
    """Make the affinity labels unless ``out_dir`` holds those of the same CAMs and label settings
    (``out_dir/source.json``); others are deleted first. Returns ``(seconds, reused?)``; ``workers``:
    see :func:`make_affinity_labels`."""
    out_dir = Path(out_dir)
    source = json.loads(json.dumps(_label_source(cfg, cam_source, dataset), default=str))
    folder = store.Result(out_dir, marker="source.json")  # written last, removed first
    old = folder.record()
    if old is not None and {k: old.get(k) for k in source} == source:
        make_affinity_labels(cam_dir, dataset, out_dir, cfg, progress=progress, workers=workers)  # fills in missing files
        return float(old["seconds"]), True
    folder.begin()
    for p in out_dir.glob("*.png"):
        p.unlink()
    t0 = time.perf_counter()
    make_affinity_labels(cam_dir, dataset, out_dir, cfg, progress=progress, workers=workers)
    seconds = time.perf_counter() - t0
    folder.complete({**source, "seconds": seconds})
    return seconds, False


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


# ------------------------------------------------------------------------------------------------
# AffinityNet
# ------------------------------------------------------------------------------------------------

def affinity_dataset(root, split: str, label_dir, cfg: AffinityStageConfig, **kw) -> VOCLayoutDataset:
    """Training images with their affinity-label maps (key ``"aff_label"``, 255 padded) under joint
    augmentation (:func:`wsss_core.data.transforms.train_transforms`)."""
    tf = train_transforms(cfg.crop_size, scale=cfg.scale, long_side=cfg.long_side, hflip=cfg.hflip,
                          color_jitter=cfg.color_jitter)
    return VOCLayoutDataset(root, split, mask_dir=None, instance_dir=None, saliency_dir=None,
                            extra_dirs={AFF_KEY: str(Path(label_dir).resolve())}, transforms=tf,
                            cache=cfg.cache_images, **kw)


def build_model(cfg: AffinityStageConfig) -> AffinityNet:
    return AffinityNet(build_backbone(cfg.backbone, **cfg.backbone_kwargs), cfg.level_channels,
                       embed_dim=cfg.embed_dim, feature_stride=cfg.feature_stride,
                       frozen_backbone=cfg.frozen_backbone, levels=cfg.levels)


def make_affinity_step(cfg: AffinityStageConfig):
    """The engine's step function: affinities of every pair within ``cfg.radius`` on the feature grid,
    the pair labels from the augmented affinity-label map sampled onto that grid, PSA's loss."""
    radius, stride = int(cfg.radius), int(cfg.feature_stride)

    def step(model, batch, device) -> dict:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch[AFF_KEY].to(device, non_blocking=True)
        feats = model(images)
        grid = downsample_labels(labels, stride)
        if tuple(grid.shape[-2:]) != tuple(feats.shape[-2:]):
            raise RuntimeError(f"label grid {tuple(grid.shape[-2:])} ≠ feature grid {tuple(feats.shape[-2:])}: use "
                               f"a crop size that is a multiple of feature_stride={stride}")
        aff = local_affinities(feats, radius)
        bg, fg, neg = pair_labels(grid, radius)
        return affinity_loss(aff, bg, fg, neg)

    return step


def train_affinitynet(cfg: AffinityStageConfig, train_ds, checkpoint_dir=None, classifier=None):
    """Train AffinityNet with the shared engine; returns ``(model, history)`` (model in eval mode).

    ``classifier``: the CAM classifier whose backbone initialises AffinityNet's when
    ``cfg.init_from_classifier``. With ``checkpoint_dir`` a finished run is reloaded instead of retrained.
    """
    engine.seed_everything(cfg.train.seed)
    model = build_model(cfg)
    if cfg.init_from_classifier:
        if classifier is None:
            raise ValueError("cfg.init_from_classifier=True needs the CAM classifier (classifier=...)")
        model.load_backbone_from(classifier)
    tcfg = cfg.train if checkpoint_dir is None else cfg.train.replace(checkpoint_dir=str(checkpoint_dir))
    if list(model.levels) != list(model.backbone.channels)[-len(model.levels):]:
        # the backbone's deeper stages get no gradient (levels ("s2", "s4")): DDP must be told so. A run-free
        # field of the engine: checkpoints and fingerprints are unchanged.
        tcfg = tcfg.replace(find_unused_parameters=True)
    history = engine.train(model, make_affinity_step(cfg), train_ds, tcfg, collate_fn=collate_samples,
                           param_groups=lambda m: engine.unwrap(m).param_groups(cfg.lr_mult_new))
    model.eval()
    return model, history


_INFERENCE_FIELDS = {"rw_radius", "rw_alpha", "beta", "t", "rw_method", "rw_batch_size", "cache_images"}
STAGE = "affinity"
FORMAT_VERSION = 1


def affinitynet_identity(cfg: AffinityStageConfig, classifier_name: str = "", data=None) -> store.Identity:
    """AffinityNet's identity: its config without inference- and run-only fields, the CAM classifier
    (checkpoint folder name) its labels and initial weights came from, and the data set."""
    return store.identity(STAGE, cfg, data=data,
                          upstream={"classifier": classifier_name}, version=FORMAT_VERSION,
                          exclude=_INFERENCE_FIELDS)


def checkpoint_dir_for(cfg: AffinityStageConfig, out_dir, classifier_name: str = "", data=None) -> Path:
    """``out_dir/affinitynet/<backbone>-s<stride>-r<radius>-e<epochs>-seed<seed>-<fingerprint>``; the
    fingerprint covers everything that changes the trained weights: the model, labels, augmentation,
    optimiser, the CAM classifier the labels (and initial weights) came from and the data set."""
    fp = affinitynet_identity(cfg, classifier_name, data).hash
    name = f"{cfg.backbone}-s{cfg.feature_stride}-r{cfg.radius}-e{cfg.train.epochs}-seed{cfg.train.seed}-{fp}"
    return Path(out_dir) / "affinitynet" / name


# ------------------------------------------------------------------------------------------------
# inference: affinities and the random walk
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def predict_affinities(model: AffinityNet, images: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 3, H, W) normalised images → (B, K, ⌈H/s⌉, ⌈W/s⌉) affinities; images are zero-padded at the
    bottom/right to a multiple of the stride first (PSA's ``infer_aff.py``)."""
    s = engine.unwrap(model).feature_stride
    H, W = images.shape[-2:]
    x = F.pad(images, (0, (-W) % s, 0, (-H) % s))
    return local_affinities(model(x).float(), radius)


def _walk_init() -> None:
    """Worker start-up of the walk's process pool: one torch thread (as in DataLoader workers, which are
    forked the same way), so the forked process never enters the parent's OpenMP pool."""
    torch.set_num_threads(1)


def _walk_job(job) -> tuple[str, float]:
    """One image's random walk (a module-level function, so a process pool can run it): labels → PNG;
    returns ``(id, seconds of the walk)``."""
    iid, cam_path, aff, out_path, kw = job
    cams, label = load_cams(cam_path)
    t0 = time.perf_counter()
    lab = random_walk_labels(cams, label, torch.from_numpy(aff), **kw)
    sec = time.perf_counter() - t0
    write_label_png(out_path, lab)
    return iid, sec


def make_rw_labels(model: AffinityNet, dataset, cam_dir, out_dir, cfg: AffinityStageConfig, device=None,
                   progress: bool = True, overwrite: bool = False, workers: int | None = None) -> dict:
    """Random-walk pseudo-labels of every image of ``dataset`` (evaluation transforms) →
    ``out_dir/<id>.png``; returns timings ``{"n_images", "seconds", "affinity_seconds", "walk_seconds",
    "seconds_per_image", "walk_seconds_per_image", "workers"}``: ``seconds`` is the wall time of
    AffinityNet inference and the walks (not file I/O), ``walk_seconds`` the walks' own time summed over
    images (so ``walk_seconds_per_image`` is the cost of one walk, whatever the parallelism). Existing
    files are kept unless ``overwrite``.

    On a CPU the walks (scipy, one thread each) are spread over ``workers`` forked processes (default
    :func:`default_workers`) while the main process computes the next batch's affinities; on a GPU
    (sparse walks on the device) or with ``workers=1`` everything runs in this process.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i, iid in enumerate(dataset.ids) if overwrite or not (out_dir / f"{iid}.png").exists()]
    model = engine.unwrap(model)
    dev = engine.select_device(device) if device is not None else next(model.parameters()).device
    model.to(dev).eval()
    bs = cfg.rw_batch_size if cam_stage.same_size(dataset) else 1
    kw = dict(radius=cfg.rw_radius, stride=model.feature_stride, alpha=cfg.rw_alpha, beta=cfg.beta, t=cfg.t,
              method=cfg.rw_method)
    workers = 1 if dev.type != "cpu" else (default_workers() if workers is None else int(workers))
    if len(todo) < 2 * workers or "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    t_aff = t_walk = 0.0
    bar = tqdm(total=len(todo), desc="random walk", disable=not progress)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_walk_init) if workers > 1 else None
    t_start = time.perf_counter()
    try:
        pending = []
        for s in range(0, len(todo), bs):
            idx = todo[s:s + bs]
            batch = collate_samples([dataset[i] for i in idx])
            t0 = time.perf_counter()
            aff = predict_affinities(model, batch["image"].to(dev), cfg.rw_radius)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t_aff += time.perf_counter() - t0
            for j, i in enumerate(idx):
                iid = dataset.ids[i]
                if pool is None:
                    cams, label = load_cams(Path(cam_dir) / f"{iid}.npz")
                    t1 = time.perf_counter()
                    lab = random_walk_labels(cams, label, aff[j], **kw)
                    t_walk += time.perf_counter() - t1
                    write_label_png(out_dir / f"{iid}.png", lab)
                    bar.update(1)
                else:
                    job = (iid, Path(cam_dir) / f"{iid}.npz", aff[j].cpu().numpy(), out_dir / f"{iid}.png", kw)
                    pending.append(pool.submit(_walk_job, job))
            while pending and (len(pending) > 4 * bs or s + bs >= len(todo)):   # bounded queue; all at the end
                t_walk += pending.pop(0).result()[1]
                bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    n = len(todo)
    wall = time.perf_counter() - t_start if pool is not None else t_aff + t_walk
    return {"n_images": n, "seconds": wall, "affinity_seconds": t_aff, "walk_seconds": t_walk,
            "seconds_per_image": wall / n if n else float("nan"),
            "walk_seconds_per_image": t_walk / n if n else float("nan"), "workers": workers}


evaluate_label_dir = _evaluate_label_dir  # re-exported: scores a folder of label PNGs (wsss_core.evaluation)


def evaluate_cams_alpha(cam_dir, dataset, alpha: float, context_pairs=None) -> dict:
    """The CAM pseudo-labels the walk starts from — arg-max over ``[(1 − max M)^α, M]`` at full
    resolution — scored on ``dataset`` (same images as the walk)."""
    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    for i, iid in enumerate(dataset.ids):
        cams, label = load_cams(Path(cam_dir) / f"{iid}.npz")
        ev.update_from_sample(cams_to_labels(cams, label, alpha=alpha), dataset.get_raw(i))
    return ev.summary()


_TIMING_KEYS = ("n_images", "seconds", "affinity_seconds", "walk_seconds", "seconds_per_image", "walk_seconds_per_image",
                "workers")


def _rw_source(cfg: AffinityStageConfig, ckpt_name: str, dataset) -> dict:
    return {"affinitynet": ckpt_name, "split": getattr(dataset, "split", None), "n_images": len(dataset),
            "rw_radius": cfg.rw_radius, "rw_alpha": cfg.rw_alpha, "beta": cfg.beta, "t": cfg.t}


def ensure_rw_labels(model: AffinityNet, dataset, cam_dir, out_dir, cfg: AffinityStageConfig, ckpt_name: str,
                     progress: bool = True) -> tuple[dict, bool]:
    """Make the random-walk labels unless ``out_dir`` holds those of the same AffinityNet checkpoint,
    split and walk settings (``out_dir/source.json``); others are deleted first.
    Returns ``(timing of the run that made them, reused?)`` (see :func:`make_rw_labels`)."""
    out_dir = Path(out_dir)
    source = json.loads(json.dumps(_rw_source(cfg, ckpt_name, dataset)))
    folder = store.Result(out_dir, marker="source.json")  # written last, removed first
    old = folder.record()
    if old is not None and {k: old.get(k) for k in source} == source:
        make_rw_labels(model, dataset, cam_dir, out_dir, cfg, progress=progress)  # fills in missing files
        return {k: old[k] for k in _TIMING_KEYS if k in old}, True
    folder.begin()
    for p in out_dir.glob("*.png"):
        p.unlink()
    timing = make_rw_labels(model, dataset, cam_dir, out_dir, cfg, progress=progress)
    folder.complete({**source, **timing})
    return timing, False


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


def resolve_crf(cfg: AffinityStageConfig, use_crf: bool | None = None) -> AffinityStageConfig:
    """``cfg`` with the dense CRF on or off: ``use_crf`` None keeps the preset's choice. Where the
    optional ``pydensecrf2`` is not installed the CRF is turned off with a warning (the labels are then
    made without it; notebook 02's study shows what that costs)."""
    crf = cfg.crf if use_crf is None else bool(use_crf)
    if crf and not crf_available():
        import warnings

        warnings.warn("the affinity labels' dense CRF needs the optional pydensecrf2 (pip install -e .[crf]); "
                      "making the labels without it", stacklevel=2)
        crf = False
    return cfg.replace(crf=crf)


def image_affinities(model: AffinityNet, dataset, i: int, radius: int) -> torch.Tensor:
    """AffinityNet's (K, h, w) affinities of image ``i`` of an evaluation dataset, on the CPU."""
    dev = next(engine.unwrap(model).parameters()).device
    return predict_affinities(model, dataset[i]["image"][None].to(dev), radius)[0].cpu()


def walk_sweep(model: AffinityNet, dataset, cam_dir, indices, cfg: AffinityStageConfig, betas, ts,
               progress: bool = False) -> dict:
    """The walk's two knobs pushed both ways: for each β in ``betas`` (with ``cfg.t`` steps) and each t
    in ``ts`` (with ``cfg.beta``), the mIoU and foreground recall of the walk's labels on ``indices``.

    Returns ``{"beta": {"values", "miou", "fg_recall"}, "t": {...}}`` (lists over the values)."""
    from tqdm.auto import tqdm

    from ..affinity import walk_steps
    from ..cams import miou_from_confusion
    from ..metrics import ConfusionMatrix

    C = dataset.num_classes
    mats = {"beta": np.zeros((len(betas), C + 1, C + 1)), "t": np.zeros((len(ts), C + 1, C + 1))}
    stride = engine.unwrap(model).feature_stride
    for i in tqdm(list(indices), desc="β and t sweep", disable=not progress):
        raw = dataset.get_raw(i)
        cams, label = load_cams(Path(cam_dir) / f"{raw['id']}.npz")
        aff = image_affinities(model, dataset, i, cfg.rw_radius)
        kw = dict(radius=cfg.rw_radius, stride=stride, alpha=cfg.rw_alpha)
        for j, b in enumerate(betas):
            s = walk_steps(cams, label, aff, steps=[cfg.t], beta=b, **kw)[cfg.t]
            mats["beta"][j] += ConfusionMatrix(C + 1).update(s.argmax(0).numpy(), raw["mask"]).mat
        for j, s in enumerate(walk_steps(cams, label, aff, steps=ts, beta=cfg.beta, **kw).values()):
            mats["t"][j] += ConfusionMatrix(C + 1).update(s.argmax(0).numpy(), raw["mask"]).mat
    out = {}
    for name, vals in (("beta", list(betas)), ("t", sorted(ts))):
        m = mats[name]
        out[name] = {"values": vals, "miou": [float(v) for v in miou_from_confusion(m)],
                     "fg_recall": [float(x[1:, 1:].trace() / max(x[1:].sum(), 1)) for x in m]}
    return out


# ------------------------------------------------------------------------------------------------
# diagnostics against the ground truth (never used for training)
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


# ------------------------------------------------------------------------------------------------
# the whole stage, idempotent
# ------------------------------------------------------------------------------------------------

@dataclass
class AffinityStageResult:
    """What :func:`run` leaves behind (paths under ``out_dir``)."""

    model: AffinityNet
    cfg: AffinityStageConfig
    checkpoint_dir: Path
    label_dir: Path
    rw_dir: Path
    report: dict
    cam: "cam_stage.CAMStageResult"


def run(cfg: AffinityStageConfig, data, out_dir, cam_cfg=None, cam_result=None, progress: bool = True) -> AffinityStageResult:
    """The whole stage, reusing what is already under ``out_dir`` (normally ``OUT_DIR/02_affinitynet_random_walk``)
    and the CAM stage under ``out_dir.parent / 01_class_activation_maps``:

    CAM stage (reused or made, :func:`wsss_core.stages.cam.run`) → affinity labels → AffinityNet
    (reloaded if finished) → random-walk pseudo-labels of the training split (``rw_labels/``) →
    ``rw_report.json`` with the walk's and the CAMs' scores on the same images (``rw``, ``cam_alpha``
    = the CAMs with the walk's α-background, ``cam_best`` = notebook 01's oracle threshold) and timings.
    """
    with store.writing(out_dir, main=engine.is_main_process()):  # a lock; killed writers' half files swept
        return _run(cfg, data, Path(out_dir), cam_cfg, cam_result, progress)


def _run(cfg: AffinityStageConfig, data, out_dir, cam_cfg=None, cam_result=None, progress: bool = True) -> AffinityStageResult:
    out_dir = Path(out_dir)
    if cam_result is None:
        if cam_cfg is None:
            raise ValueError("give cam_cfg (profiles.cam_config(profile)) or cam_result")
        cam_result = cam_stage.run(cam_cfg, data, out_dir.parent / cam_stage.NOTEBOOK, progress=progress)
    ev = cam_result.train_dataset
    label_dir, rw_dir = out_dir / "affinity_labels", out_dir / "rw_labels"
    ensure_affinity_labels(cam_result.cam_dir, ev, label_dir, cfg, cam_result.checkpoint_dir.name, progress=progress)
    ckpt = checkpoint_dir_for(cfg, out_dir, cam_result.checkpoint_dir.name, data)
    train_ds = affinity_dataset(data.root, data.train_split, label_dir, cfg)
    model, _ = train_affinitynet(cfg, train_ds, ckpt, classifier=cam_result.model)
    if engine.is_main_process():
        store.record_identity(ckpt, affinitynet_identity(cfg, cam_result.checkpoint_dir.name, data))
    timing, reused = ensure_rw_labels(model, ev, cam_result.cam_dir, rw_dir, cfg, ckpt.name, progress=progress)
    report_path = out_dir / "rw_report.json"
    report = None
    if reused and report_path.is_file():
        stored = json.loads(report_path.read_text())
        if stored.get("source") == ckpt.name:
            report = stored["report"]
    if report is None:
        report = {"rw": evaluate_label_dir(rw_dir, ev, data.context_pairs),
                  "cam_alpha": evaluate_cams_alpha(cam_result.cam_dir, ev, cfg.rw_alpha, data.context_pairs),
                  "cam_best": cam_result.report, "timing": timing}
        cam_stage.write_metrics(report_path, {"source": ckpt.name, "report": report})
        report = json.loads(report_path.read_text())["report"]  # as stored (rounded): what a rerun reads
    return AffinityStageResult(model, cfg, ckpt, label_dir, rw_dir, report, cam_result)
