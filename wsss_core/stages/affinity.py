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

The diagnostics against the ground truth that notebook 02 and its study use (affinity-label quality,
per-object recall, pair kinds, oracle affinities, affinity ROC-AUC, pair-label accuracy) live in
:mod:`wsss_core.stages.affinity_analysis`; this module re-exports them.
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
                        pair_labels, random_walk_labels)
from ..affinity import pair_offsets  # noqa: F401  (used by affinity_analysis only; stage.pair_offsets kept)
from ..cams import cams_to_labels, load_cams
from ..data.palette import write_label_png
from ..data.transforms import train_transforms
from ..data.voc import VOCLayoutDataset, collate_samples
from ..evaluation import LabelMapEvaluator
from ..evaluation import evaluate_label_dir as _evaluate_label_dir
from ..models.affinitynet import AffinityNet
from ..models.backbones import build_backbone
from . import cam as cam_stage
from . import store
# the ground-truth diagnostics live in affinity_analysis (which imports nothing from this module);
# re-exported so that stages.affinity.<name> (lessons, study, tests) keeps naming the same object
from .affinity_analysis import (PAIR_KINDS, affinity_label_report, affinity_quality,  # noqa: F401
                                object_report, oracle_affinities, pair_label_accuracy, same_region_pairs)

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
        report = cam_stage.stored_form(report)  # as stored (rounded): what a rerun reads
    return AffinityStageResult(model, cfg, ckpt, label_dir, rw_dir, report, cam_result)
