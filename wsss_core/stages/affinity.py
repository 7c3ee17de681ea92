"""The AffinityNet + random-walk stage (PSA, Ahn & Kwak CVPR 2018): CAMs → affinity labels →
AffinityNet → random walk → pseudo-labels.

One config object (:class:`AffinityStageConfig`), its presets (:func:`config_for_profile`:
``smoke``, ``tutorial``, ``paper``), and the steps that notebook ``02_affinitynet_random_walk`` runs
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

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import engine
from ..affinity import (affinity_labels, affinity_loss, crf_available, downsample_labels, local_affinities,
                        pair_labels, random_walk_labels)
from ..cams import cams_to_labels, load_cams
from ..data.palette import read_label_png, write_label_png
from ..data.transforms import train_transforms
from ..data.voc import VOCLayoutDataset, collate_samples
from ..evaluation import LabelMapEvaluator
from ..models.affinitynet import AffinityNet
from ..models.backbones import build_backbone
from . import cam as cam_stage

NOTEBOOK = "02_affinitynet_random_walk"
"""The notebook (and OUT_DIR sub-folder) that owns this stage's artifacts."""

AFF_KEY = "aff_label"
"""Sample key of the affinity-label map in :func:`affinity_dataset`."""


@dataclass
class AffinityStageConfig:
    """Everything that defines the AffinityNet + random-walk stage.

    Attributes
    ----------
    backbone, backbone_kwargs : the AffinityNet backbone (:func:`wsss_core.models.backbones.build_backbone`).
    init_from_classifier : start the backbone from the CAM classifier's trained backbone (PSA starts
        from the ImageNet weights its classifier started from; our compact CNN has none, so the
        trained classifier is the analogue). Shapes must match (the output stride may differ).
    level_channels, embed_dim : the 1×1 reductions of the last levels and the fused width
        (:class:`~wsss_core.models.affinitynet.AffinityNet`; PSA 64/128/256 → 448).
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
    level_channels: tuple = (32, 64, 128)
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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AffinityStageConfig":
        d = dict(d)
        if isinstance(d.get("train"), dict):
            d["train"] = engine.TrainConfig.from_dict(d["train"])
        for k in ("level_channels", "scale", "long_side", "color_jitter"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **kw) -> "AffinityStageConfig":
        return dataclasses.replace(self, **kw)

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

    * ``smoke``: 1 epoch on the 64 smoke scenes, t = 64 — proves the code path in seconds.
    * ``tutorial``: a compact CNN at output stride 4 (dilated last stage) initialised from the CAM
      classifier, affinities on the stride-4 grid (24 × 24 for the 96-px scenes) with radius 5 — IRN's
      grid, not PSA's stride 8: on a 12 × 12 grid a radius-5 neighbourhood spans most of the image, so
      a pair would rarely fall inside one object. PSA's α (4 / 32 for the labels, 16 for the walk),
      β = 8, t = 256, no CRF (the labels are compared with and without it in the notebook). Adam with a
      one-cycle schedule (the CAM classifier's recipe) for 8 epochs.
    * ``paper``: PSA's ``train_aff.py`` / ``infer_aff.py`` on VOC with IRN's ResNet-50 backbone
      (ImageNet weights; ResNet-38 is not available in torchvision): output stride 8, levels
      layer2 / layer3 / out reduced to 64 / 128 / 256 and fused to 448, radius 5 at stride 8, labels
      with α 4 / 32 and PSA's dense CRF, crop 448, resize-long 256–512, flip, colour jitter
      (0.3, 0.3, 0.3, 0.1), batch 8, 8 epochs, SGD lr 0.1 (new layers 10×), weight decay 5e-4, poly 0.9
      and — PSA's ``PolyOptimizer`` passes the weight decay positionally into SGD's momentum — momentum
      ≈ 0; the walk with α 16, β 8, t 256.
    """
    from ..profiles import PROFILE_NAMES

    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILE_NAMES}")
    if profile == "smoke":
        return AffinityStageConfig(
            train=engine.TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adam", schedule="onecycle",
                                     desc="affinitynet"),
            t=64)
    if profile == "tutorial":
        return AffinityStageConfig()
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

def make_affinity_labels(cam_dir, dataset, out_dir, cfg: AffinityStageConfig, progress: bool = True,
                         overwrite: bool = False) -> Path:
    """Affinity labels (0 confident background, c confident class, 255 neutral) of every image of
    ``dataset`` from its CAMs in ``cam_dir`` → ``out_dir/<id>.png`` at full resolution (IRN stores its
    ``ir_label`` the same way; the training loader samples them onto the feature grid after the
    augmentation). Existing files are kept unless ``overwrite``.
    """
    from tqdm.auto import tqdm

    kw = cfg.label_kwargs()
    if kw.get("crf") and not crf_available():
        raise ImportError("cfg.crf=True needs the optional dense CRF (pip install pydensecrf2); "
                          "set crf=False to make the labels without it")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, iid in enumerate(tqdm(dataset.ids, desc="affinity labels", disable=not progress)):
        p = out_dir / f"{iid}.png"
        if p.exists() and not overwrite:
            continue
        cams, label = load_cams(Path(cam_dir) / f"{iid}.npz")
        image = dataset.get_raw(i)["image"] if kw.get("crf") else None
        write_label_png(p, affinity_labels(cams, label, image=image, **kw))
    return out_dir


def _label_source(cfg: AffinityStageConfig, cam_source: str, dataset) -> dict:
    return {"cams": cam_source, "split": getattr(dataset, "split", None), "n_images": len(dataset),
            **{k: v for k, v in cfg.label_kwargs().items()}, "label_mode": cfg.label_mode}


def ensure_affinity_labels(cam_dir, dataset, out_dir, cfg: AffinityStageConfig, cam_source: str,
                           progress: bool = True) -> tuple[float, bool]:
    """Make the affinity labels unless ``out_dir`` holds those of the same CAMs and label settings
    (``out_dir/source.json``); others are deleted first. Returns ``(seconds, reused?)``."""
    out_dir = Path(out_dir)
    source = json.loads(json.dumps(_label_source(cfg, cam_source, dataset), default=str))
    sp = out_dir / "source.json"
    old = json.loads(sp.read_text()) if sp.is_file() else None
    if old is not None and {k: old.get(k) for k in source} == source:
        make_affinity_labels(cam_dir, dataset, out_dir, cfg, progress=progress)  # fills in missing files
        return float(old["seconds"]), True
    for p in out_dir.glob("*.png"):
        p.unlink()
    t0 = time.perf_counter()
    make_affinity_labels(cam_dir, dataset, out_dir, cfg, progress=progress)
    seconds = time.perf_counter() - t0
    sp.write_text(json.dumps({**source, "seconds": seconds}, indent=2))
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
                       embed_dim=cfg.embed_dim, feature_stride=cfg.feature_stride)


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
    history = engine.train(model, make_affinity_step(cfg), train_ds, tcfg, collate_fn=collate_samples,
                           param_groups=lambda m: engine.unwrap(m).param_groups(cfg.lr_mult_new))
    model.eval()
    return model, history


_INFERENCE_FIELDS = {"rw_radius", "rw_alpha", "beta", "t", "rw_method", "rw_batch_size", "cache_images"}
_RUN_FREE = ("device", "progress", "num_workers", "checkpoint_dir", "resume", "desc")


def checkpoint_dir_for(cfg: AffinityStageConfig, out_dir, classifier_name: str = "", data=None) -> Path:
    """``out_dir/affinitynet/<backbone>-s<stride>-r<radius>-e<epochs>-seed<seed>-<fingerprint>``; the
    fingerprint covers everything that changes the trained weights: the model, labels, augmentation,
    optimiser, the CAM classifier the labels (and initial weights) came from and the data set."""
    ident = {k: v for k, v in cfg.to_dict().items() if k not in _INFERENCE_FIELDS}
    ident["train"] = {k: v for k, v in cfg.train.to_dict().items() if k not in _RUN_FREE}
    ident["classifier"] = classifier_name
    if data is not None:
        ident["data"] = ({"generator_version": data.manifest["generator_version"], "config": data.manifest["config"]}
                         if data.manifest else {"root": Path(data.root).name, "split": data.train_split})
    fp = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
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


def make_rw_labels(model: AffinityNet, dataset, cam_dir, out_dir, cfg: AffinityStageConfig, device=None,
                   progress: bool = True, overwrite: bool = False) -> dict:
    """Random-walk pseudo-labels of every image of ``dataset`` (evaluation transforms) →
    ``out_dir/<id>.png``; returns timings ``{"n_images", "seconds", "affinity_seconds", "walk_seconds",
    "seconds_per_image", "walk_seconds_per_image"}`` (``seconds`` covers AffinityNet inference, the walk,
    upsampling and arg-max; not file I/O). Existing files are kept unless ``overwrite``.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i, iid in enumerate(dataset.ids) if overwrite or not (out_dir / f"{iid}.png").exists()]
    model = engine.unwrap(model)
    dev = engine.select_device(device) if device is not None else next(model.parameters()).device
    model.to(dev).eval()
    bs = cfg.rw_batch_size if cam_stage._same_size(dataset) else 1
    t_aff = t_walk = 0.0
    bar = tqdm(total=len(todo), desc="random walk", disable=not progress)
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
            cams, label = load_cams(Path(cam_dir) / f"{iid}.npz")
            t1 = time.perf_counter()
            lab = random_walk_labels(cams, label, aff[j], cfg.rw_radius, engine.unwrap(model).feature_stride,
                                     alpha=cfg.rw_alpha, beta=cfg.beta, t=cfg.t, method=cfg.rw_method)
            t_walk += time.perf_counter() - t1
            write_label_png(out_dir / f"{iid}.png", lab)
        bar.update(len(idx))
    bar.close()
    n = len(todo)
    return {"n_images": n, "seconds": t_aff + t_walk, "affinity_seconds": t_aff, "walk_seconds": t_walk,
            "seconds_per_image": (t_aff + t_walk) / n if n else float("nan"),
            "walk_seconds_per_image": t_walk / n if n else float("nan")}


def evaluate_label_dir(label_dir, dataset, context_pairs=None, progress: bool = False) -> dict:
    """:class:`~wsss_core.evaluation.LabelMapEvaluator` summary of the PNG label maps in ``label_dir``
    (one per image of ``dataset``)."""
    from tqdm.auto import tqdm

    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    for i, iid in enumerate(tqdm(dataset.ids, desc="evaluate", disable=not progress)):
        ev.update_from_sample(read_label_png(Path(label_dir) / f"{iid}.png").astype(np.int64), dataset.get_raw(i))
    return ev.summary()


def evaluate_cams_alpha(cam_dir, dataset, alpha: float, context_pairs=None) -> dict:
    """The CAM pseudo-labels the walk starts from — arg-max over ``[(1 − max M)^α, M]`` at full
    resolution — scored on ``dataset`` (same images as the walk)."""
    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    for i, iid in enumerate(dataset.ids):
        cams, label = load_cams(Path(cam_dir) / f"{iid}.npz")
        ev.update_from_sample(cams_to_labels(cams, label, alpha=alpha), dataset.get_raw(i))
    return ev.summary()


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


def _rw_source(cfg: AffinityStageConfig, ckpt_name: str, dataset) -> dict:
    return {"affinitynet": ckpt_name, "split": getattr(dataset, "split", None), "n_images": len(dataset),
            "rw_radius": cfg.rw_radius, "rw_alpha": cfg.rw_alpha, "beta": cfg.beta, "t": cfg.t}


def run(cfg: AffinityStageConfig, data, out_dir, cam_cfg=None, cam_result=None, progress: bool = True) -> AffinityStageResult:
    """The whole stage, reusing what is already under ``out_dir`` (normally ``OUT_DIR/02_affinitynet_random_walk``)
    and the CAM stage under ``out_dir.parent / 01_class_activation_maps``:

    CAM stage (reused or made, :func:`wsss_core.stages.cam.run`) → affinity labels → AffinityNet
    (reloaded if finished) → random-walk pseudo-labels of the training split (``rw_labels/``) →
    ``rw_report.json`` with the walk's and the CAMs' scores on the same images.
    """
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
    source = _rw_source(cfg, ckpt.name, ev)
    sp = rw_dir / "source.json"
    old = json.loads(sp.read_text()) if sp.is_file() else None
    report_path = out_dir / "rw_report.json"
    if old is None or {k: old.get(k) for k in source} != source or not report_path.is_file():
        for p in rw_dir.glob("*.png"):
            p.unlink()
        timing = make_rw_labels(model, ev, cam_result.cam_dir, rw_dir, cfg, progress=progress)
        sp.write_text(json.dumps({**source, **timing}, indent=2))
        report = {"rw": evaluate_label_dir(rw_dir, ev, data.context_pairs),
                  "cam_alpha": evaluate_cams_alpha(cam_result.cam_dir, ev, cfg.rw_alpha, data.context_pairs),
                  "cam_best": cam_result.report, "timing": timing}
        cam_stage.write_metrics(report_path, {"source": source, "report": report})
    else:
        make_rw_labels(model, ev, cam_result.cam_dir, rw_dir, cfg, progress=progress)  # fills in missing files
        report = json.loads(report_path.read_text())["report"]
    return AffinityStageResult(model, cfg, ckpt, label_dir, rw_dir, report, cam_result)
