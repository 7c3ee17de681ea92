"""The EPS stage (Lee et al., CVPR 2021): train a C + 1 classifier with saliency as pseudo-pixel
supervision, make its pseudo-masks, and compare them with CAM's on the same images.

One config (:class:`EPSStageConfig`), its presets (:func:`config_for_profile`: ``smoke``, ``tutorial``,
``paper``), and idempotent steps that notebook ``05_eps_saliency`` calls one by one::

    cfg = config_for_profile("tutorial")
    base = run_cam_baseline(cfg, data, OUT_DIR, notebook_01_cfg=profiles.cam_config("tutorial"))
    res = run(cfg, data, Path(OUT_DIR) / NOTEBOOK)      # EPS: train, maps, evaluation, res.label_dir
    cam_rep = cached_report(base.result.cam_dir, res.train_dataset, cfg, data.context_pairs, path)
    study = saliency_error_study({"CAM": (base.result.cam_dir, t_cam), "EPS": (res.cam_dir, t_eps)},
                                 evaluation_dataset(data.root, data.train_split, cfg, saliency_dir=cfg.saliency_dir))

Later notebooks (06) only need ``run(...).label_dir``: one palette PNG of class indices per training
image (255 = ignore), at the best background threshold of the sweep (``cfg.label_threshold = None``).

Fidelity to the official code (``halbielee/EPS``) is noted where it matters: background channel last,
classification loss on the C foreground logits, saliency resized with nearest interpolation,
overlap ratio with rounding and 1e-4 per pixel, τ = 0.4, λ = 0.5, MSE, ``L_cls + L_sal``; pseudo-masks
from the softmax maps, multi-scale + flip, max-normalised, constant background 0.2, learned background
channel unused.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .. import engine
from . import store
from ._config import StageConfig
from ..cams import load_cams, multiscale_cams, save_cams
from ..data.palette import read_label_png, write_label_png
from ..data.transforms import eval_transforms, train_transforms
from ..data.voc import VOCLayoutDataset, collate_samples
from ..losses import eps_loss
from ..metrics import boundary_prf, mean_average_precision
from ..models.backbones import build_backbone
from ..models.eps import EPSClassifier, eps_cam_fn
from ..saliency import SELECTION_STRATEGIES, saliency_error_masks
from . import cam as cam_stage

NOTEBOOK = "05_eps_saliency"
"""The notebook (and OUT_DIR sub-folder) that owns this stage's artifacts."""

DEFAULT_THRESHOLDS = cam_stage.DEFAULT_THRESHOLDS


@dataclass
class EPSStageConfig(StageConfig):
    """Everything that defines the EPS stage.

    Attributes
    ----------
    backbone, backbone_kwargs, dropout, lr_mult_new : the network (see
        :func:`wsss_core.models.backbones.build_backbone`; the 1×1 classifier has C + 1 outputs).
    crop_size, scale, long_side, hflip, color_jitter : training augmentation, applied jointly to the
        image and its saliency map (EPS: resize-long 256–512, flip, colour jitter 0.3/0.3/0.3/0.1, crop 448).
    train : the engine's :class:`~wsss_core.engine.TrainConfig`.
    saliency_dir : folder of saliency maps under the data root (toy: ``"Saliency"`` = the detector
        stand-in, ``"SaliencyUnsupervised"`` = OpenCV's spectral residual; VOC: e.g. ``"SALImages"``).
    tau : overlap-ratio threshold of the adaptive map selection (official script: 0.4).
    lam : λ, blend of the foreground and background maps in the predicted saliency (official: 0.5).
    strategy : map selection, ``"adaptive"`` (official) | ``"naive"`` | ``"predefined"``.
    predefined_background : class names always folded into the background by ``"predefined"``.
    cam_scales, cam_flip, cam_batch_size : pseudo-mask inference (official: scales 0.5, 1, 1.5, 2 + flip).
    eval_threshold : the constant background score of the official ``infer.py`` (``--thr 0.20``).
    label_threshold : background score of the saved pseudo-labels; None = the sweep's best (an oracle
        choice, as notebook 01 saves CAM labels), a number = that constant (0.2 = official).
    thresholds : the background thresholds of the sweep.
    boundary_tolerance : pixels for the boundary F-score.
    min_val_map : below this validation mAP the maps are not trustworthy; the notebook warns.
    cache_images : keep decoded images in memory (toy data).
    val_every_epoch : log the validation mAP after every epoch (a curve); False: only once, after
        training (the tutorial: 500 validation images per epoch cost ≈ 12 % of the training time).
        Does not change the weights (not part of the checkpoint's fingerprint).
    """

    backbone: str = "compact"
    backbone_kwargs: dict = field(default_factory=lambda: {"width": 32, "output_stride": 8})
    dropout: float = 0.0
    lr_mult_new: float = 1.0
    crop_size: int = 96
    scale: tuple | None = (0.9, 1.1)
    long_side: tuple | None = None
    hflip: bool = True
    color_jitter: tuple | None = None
    train: engine.TrainConfig = field(default_factory=lambda: engine.TrainConfig(
        epochs=10, batch_size=32, lr=3e-3, optimizer="adam", schedule="onecycle", weight_decay=1e-4, desc="eps"))
    saliency_dir: str = "Saliency"
    tau: float = 0.4
    lam: float = 0.5
    strategy: str = "adaptive"
    predefined_background: tuple = ()
    cam_scales: tuple = (1.0, 0.5, 1.5, 2.0)
    cam_flip: bool = True
    cam_batch_size: int = 32
    eval_threshold: float = 0.2
    label_threshold: float | None = None
    thresholds: tuple = DEFAULT_THRESHOLDS
    boundary_tolerance: float = 2.0
    min_val_map: float = 0.9
    cache_images: bool = True
    val_every_epoch: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in SELECTION_STRATEGIES:
            raise ValueError(f"strategy must be one of {SELECTION_STRATEGIES}, got {self.strategy!r}")
        if not 0.0 <= float(self.lam) <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {self.lam}")
        if not 0.0 <= float(self.tau) <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {self.tau}")
        if self.strategy == "predefined" and not self.predefined_background:
            raise ValueError("strategy='predefined' needs predefined_background=(class names, ...)")
        self.predefined_background = tuple(self.predefined_background)


def config_for_profile(profile: str) -> EPSStageConfig:
    """:class:`EPSStageConfig` preset (following :func:`wsss_core.profiles.cam_config`).

    * ``smoke``: 2 epochs on the 64 smoke scenes, single-scale maps — proves the code path in seconds.
    * ``study``: exactly notebook 01's classifier recipe (compact CNN, stride 8, Adam + one-cycle,
      10 epochs, batch 32, crops of 96 with scale 0.9–1.1 and flips; maps at scale 1 + flip), so that
      the CAM baseline *is* notebook 01's classifier and the only difference is the saliency loss;
      EPS's own τ = 0.4, λ = 0.5, adaptive selection, background 0.2.
    * ``tutorial``: the same (the same checkpoint), without the per-epoch validation curve. Measured on
      2 shared cores: the two trainings of the old lesson (EPS, and EPS with the unsupervised saliency,
      now in the study notebook) were > 90 % of its time; DataLoader workers made an epoch *slower*
      (+50 % CPU: the forked workers' start-up outweighs 2.5 ms of augmentation per image).
    * ``paper``: the official ``script/voc12_eps.sh`` + ``main.py`` on PASCAL VOC: batch 8, 20 000
      iterations (≈ 15 epochs of train_aug's 10 582 images), crop 448, resize-long 256–512, flip,
      colour jitter (0.3, 0.3, 0.3, 0.1), SGD lr 0.01 (10× for the new layer), weight decay 5e-4, poly
      0.9, τ 0.4, λ 0.5; inference scales 0.5–2 + flip, background 0.2. Differences: ResNet-38
      (MXNet ImageNet weights) is not available in torchvision, so a ResNet-50 at output stride 8 with
      ImageNet weights, frozen BatchNorm and frozen stem + layer1 stands in (ResNet-38 freezes
      conv1a and b2*; its BN is frozen); the official ``PolyOptimizer`` passes weight decay into SGD's
      momentum slot (momentum 5e-4 ≈ none), reproduced with momentum 0. Saliency maps (PFAN in the
      paper) must be put in ``<VOC2012>/Saliency/`` (or set ``saliency_dir``).
    """
    from ..profiles import check_profile

    check_profile(profile)
    if profile == "smoke":
        return EPSStageConfig(
            train=engine.TrainConfig(epochs=2, batch_size=16, lr=3e-3, optimizer="adam", schedule="onecycle", desc="eps"),
            cam_scales=(1.0,), cam_batch_size=16, min_val_map=0.0)
    if profile == "study":
        return EPSStageConfig(cam_scales=(1.0,))
    if profile == "tutorial":  # the same network as "study" (same checkpoint); no validation curve
        return EPSStageConfig(cam_scales=(1.0,), val_every_epoch=False)
    return EPSStageConfig(
        backbone="resnet50",
        backbone_kwargs={"output_stride": 8, "weights": "imagenet", "freeze_bn": True, "frozen_stages": 1},
        lr_mult_new=10.0, crop_size=448, scale=None, long_side=(256, 512), hflip=True,
        color_jitter=(0.3, 0.3, 0.3, 0.1),
        train=engine.TrainConfig(epochs=15, batch_size=8, lr=0.01, optimizer="sgd", momentum=0.0, weight_decay=5e-4,
                                 schedule="poly", poly_power=0.9, num_workers=4, desc="eps"),
        saliency_dir="Saliency", tau=0.4, lam=0.5, strategy="adaptive",
        cam_scales=(1.0, 0.5, 1.5, 2.0), cam_batch_size=1, eval_threshold=0.2, label_threshold=0.2,
        cache_images=False)


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------

def training_dataset(root, split: str, cfg: EPSStageConfig, saliency_dir: str | None = None, **kw) -> VOCLayoutDataset:
    """Images, image labels and saliency maps, with the training augmentation applied to image and
    saliency together (nearest resampling; random-crop padding = 0 = not salient). No masks are read."""
    tf = train_transforms(cfg.crop_size, scale=cfg.scale, long_side=cfg.long_side, hflip=cfg.hflip,
                          color_jitter=cfg.color_jitter)
    return VOCLayoutDataset(root, split, mask_dir=None, instance_dir=None, saliency_dir=saliency_dir or cfg.saliency_dir,
                            extra_dirs=None, transforms=tf, cache=cfg.cache_images, **kw)


def validation_dataset(root, split: str, cfg: EPSStageConfig, **kw) -> VOCLayoutDataset:
    """Images and labels with evaluation transforms (for validation mAP)."""
    return VOCLayoutDataset(root, split, mask_dir=None, instance_dir=None, saliency_dir=None, extra_dirs=None,
                            transforms=eval_transforms(), cache=cfg.cache_images, **kw)


def evaluation_dataset(root, split: str, cfg: EPSStageConfig | None = None, saliency_dir: str | None = None,
                       **kw) -> VOCLayoutDataset:
    """Images, labels, masks, the toy extras (part/context masks) and, if given, a saliency folder."""
    return VOCLayoutDataset(root, split, saliency_dir=saliency_dir, instance_dir=None, transforms=eval_transforms(),
                            cache=cfg.cache_images if cfg is not None else False, **kw)


# ------------------------------------------------------------------------------------------------
# model and training
# ------------------------------------------------------------------------------------------------

def build_model(cfg: EPSStageConfig, num_classes: int) -> EPSClassifier:
    """The C + 1 classifier (background channel last) on ``cfg.backbone``."""
    return EPSClassifier(build_backbone(cfg.backbone, **cfg.backbone_kwargs), num_classes, dropout=cfg.dropout)


def predefined_indices(cfg: EPSStageConfig, class_names: Sequence[str]) -> list[int]:
    """0-based foreground channel indices of ``cfg.predefined_background`` (names → c − 1)."""
    idx = []
    for name in cfg.predefined_background:
        if name not in class_names or class_names.index(name) == 0:
            raise ValueError(f"predefined_background class {name!r} is not a foreground class of {list(class_names[1:])}")
        idx.append(class_names.index(name) - 1)
    return idx


def make_step(cfg: EPSStageConfig, predefined: Sequence[int] = ()):
    """The training step for :func:`wsss_core.engine.train`: ``L = L_cls + L_sal``
    (:func:`wsss_core.losses.eps_loss`). Logs ``loss_cls``, ``loss_sal`` and ``fg_share`` (the share of
    present classes that the map selection counted as foreground in the batch)."""
    pre = list(predefined)

    def eps_step(model, batch, device) -> dict:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if "saliency" not in batch:
            raise KeyError("the EPS step needs batches with a 'saliency' entry (use training_dataset)")
        sal = batch["saliency"].to(device, non_blocking=True)
        logits, maps = model(images)
        loss, parts = eps_loss(maps, sal, labels, logits=logits, tau=cfg.tau, lam=cfg.lam, strategy=cfg.strategy,
                               predefined=pre, return_parts=True)
        n_present = labels.sum().clamp(min=1)
        return {"loss": loss, "loss_cls": parts["loss_cls"].detach(), "loss_sal": parts["loss_sal"].detach(),
                "fg_share": parts["fg"].sum() / n_present}

    return eps_step


def predict_scores(model, dataset, batch_size: int = 64, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Foreground logits ``(N, C)`` and labels ``(N, C)`` of a dataset (background logit dropped)."""
    def fn(m, batch, dev):
        return m.classify(batch["image"].to(dev)).float().cpu(), batch["label"]

    bs = batch_size if cam_stage.same_size(dataset) else 1
    out = engine.predict(model, dataset, fn, batch_size=bs, device=device, collate_fn=collate_samples,
                         progress=False, desc="scores", shard=False)
    if not out:
        C = dataset.num_classes
        return np.zeros((0, C), np.float32), np.zeros((0, C), np.float32)
    return torch.cat([o[0] for o in out]).numpy(), torch.cat([o[1] for o in out]).numpy()


def classification_report(model, dataset, batch_size: int = 64, device=None) -> dict:
    """Validation mAP and per-class AP of the EPS classifier's C foreground logits."""
    scores, labels = predict_scores(model, dataset, batch_size, device)
    m, ap = mean_average_precision(scores, labels)
    return {"map": float(m), "per_class_ap": {dataset.class_names[c + 1]: float(a) for c, a in enumerate(ap)}}


# fields that do not change the trained weights
_INFERENCE_FIELDS = {"cam_scales", "cam_flip", "cam_batch_size", "eval_threshold", "label_threshold",
                     "thresholds", "boundary_tolerance", "min_val_map", "cache_images", "val_every_epoch"}
STAGE = "eps"
FORMAT_VERSION = 1


def classifier_identity(cfg: EPSStageConfig, data=None) -> store.Identity:
    """The EPS classifier's identity (:func:`wsss_core.stages.store.identity`)."""
    return store.identity(STAGE, cfg, data=data,
                          version=FORMAT_VERSION, exclude=_INFERENCE_FIELDS)


def checkpoint_dir_for(cfg: EPSStageConfig, out_dir, data=None) -> Path:
    """``out_dir/classifier/eps-<backbone>-os<s>-<saliency>-e<epochs>-seed<seed>-<fingerprint>``.

    The fingerprint covers everything that changes the trained weights (network, augmentation,
    saliency source, τ, λ, strategy, optimiser, epochs, seed, and — given ``data`` — the dataset's
    own config), so a changed configuration trains a new classifier next to the old one.
    """
    name = (f"eps-{cfg.backbone}-os{cfg.backbone_kwargs.get('output_stride', 'x')}-{cfg.saliency_dir}"
            f"-e{cfg.train.epochs}-seed{cfg.train.seed}-{classifier_identity(cfg, data).hash}")
    return Path(out_dir) / "classifier" / name


def train_eps(cfg: EPSStageConfig, train_ds, checkpoint_dir=None, val_ds=None, num_classes: int | None = None):
    """Train the EPS classifier with the shared engine; returns ``(model, history)``.

    With ``checkpoint_dir`` every epoch is checkpointed and a finished run is reloaded instead of
    retrained (the engine refuses a checkpoint of another TrainConfig; :func:`checkpoint_dir_for`
    gives every stage config its own folder). With ``val_ds`` the validation mAP is logged per epoch.
    """
    num_classes = num_classes or train_ds.num_classes
    pre = predefined_indices(cfg, train_ds.class_names) if cfg.strategy == "predefined" else []
    engine.seed_everything(cfg.train.seed)
    model = build_model(cfg, num_classes)
    tcfg = cfg.train if checkpoint_dir is None else cfg.train.replace(checkpoint_dir=str(checkpoint_dir))
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        if engine.is_main_process():  # one writer under torchrun
            store.atomic_update_json(Path(checkpoint_dir) / "stage_config.json", cfg.to_dict(), default=list)
    eval_fn = None
    if val_ds is not None:
        def eval_fn(m, epoch):
            if not engine.get_dist_info().is_main:
                return {}
            return {"val_map": classification_report(m, val_ds)["map"]}
    history = engine.train(model, make_step(cfg, pre), train_ds, tcfg, collate_fn=collate_samples,
                           param_groups=lambda m: engine.unwrap(m).param_groups(cfg.lr_mult_new), eval_fn=eval_fn)
    model.eval()
    return model, history


# ------------------------------------------------------------------------------------------------
# pseudo-masks
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def eps_maps(model, images: torch.Tensor, labels: torch.Tensor | None, scales=(1.0,), flip: bool = True,
             size=None) -> torch.Tensor:
    """The official pseudo-mask maps (``infer.py``): per scale and flip, softmax over the C + 1 maps,
    bilinear to the image size, foreground channels only, × label, summed, max-normalised.

    ``images`` (B, 3, H, W) normalised → (B, C, H, W) float32 in [0, 1] (absent classes 0). The
    learned background channel is dropped; the pseudo-label adds a constant background
    (:func:`wsss_core.cams.cams_to_labels`, ``threshold=0.2``). One difference from ``infer.py``: the
    rescaled inputs are made by bilinear interpolation of the normalised tensor (as for the CAMs of
    notebook 01), where the official code resizes the PIL image bicubically.
    """
    return multiscale_cams(model, images, labels, scales=scales, flip=flip, size=size, cam_fn=eps_cam_fn)


def make_eps_cams(model, dataset, out_dir, cfg: EPSStageConfig, device=None, progress: bool = True,
                  overwrite: bool = False) -> Path:
    """:func:`eps_maps` of every image of ``dataset`` (evaluation transforms) → ``out_dir/<id>.npz``
    (the format of :func:`wsss_core.cams.save_cams`: present classes only, float16)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i, iid in enumerate(dataset.ids) if overwrite or not (out_dir / f"{iid}.npz").exists()]
    if not todo:
        return out_dir
    sub = torch.utils.data.Subset(dataset, todo)

    def fn(m, batch, dev):
        maps = eps_maps(m, batch["image"].to(dev), batch["label"].to(dev), scales=cfg.cam_scales, flip=cfg.cam_flip)
        for iid, c, lab in zip(batch["id"], maps.cpu(), batch["label"]):
            save_cams(out_dir / f"{iid}.npz", c, lab)
        return None

    bs = cfg.cam_batch_size if cam_stage.same_size(dataset) else 1
    engine.predict(model, sub, fn, batch_size=bs, device=device, collate_fn=collate_samples, progress=progress,
                   desc="EPS maps")
    if engine.get_dist_info().enabled:  # as cam.make_cams: every rank's share is on disk before anyone reads
        torch.distributed.barrier()
    return out_dir


def ensure_eps_cams(model, dataset, cam_dir, cfg: EPSStageConfig, classifier_name: str,
                    progress: bool = True) -> tuple[float, bool]:
    """Make the EPS maps of ``dataset`` unless ``cam_dir`` holds those of the same classifier, split
    and scales (``cam_dir/source.json``); maps of anything else are deleted first.

    Returns ``(seconds it took to make them, reused?)``.
    """
    return cam_stage.ensure_cams(model, dataset, cam_dir, cfg, classifier_name, progress=progress,
                                 make=make_eps_cams, kind="eps-softmax")


# ------------------------------------------------------------------------------------------------
# measures
# ------------------------------------------------------------------------------------------------

def labels_from_maps(cams: np.ndarray, label, threshold: float) -> np.ndarray:
    """Pseudo-label from max-normalised maps and a constant background (Eq. 7), in numpy.

    The rule of :func:`wsss_core.cams.cams_to_labels` with ``threshold`` (a pixel is class
    ``argmax_c M_c`` over the classes of ``label`` if ``max_c M_c > threshold``, else 0; ties between
    classes go to the lower index), without the round trip through torch — which costs ~10 ms per image
    on a busy CPU, i.e. minutes over a training split.

    ``cams`` (C, H, W), ``label`` (C,) → (H, W) int64 in 0..C.
    """
    cams = np.asarray(cams, np.float32)
    lab = np.asarray(label).astype(bool)
    if cams.ndim != 3 or lab.shape != cams.shape[:1]:
        raise ValueError(f"cams must be (C, H, W) and label (C,), got {cams.shape} and {lab.shape}")
    if not lab.any():
        return np.zeros(cams.shape[1:], np.int64)
    masked = np.where(lab[:, None, None], cams, -1.0)
    return np.where(masked.max(0) > threshold, masked.argmax(0) + 1, 0).astype(np.int64)


def evaluate(cam_dir, dataset, cfg, context_pairs=None, threshold: float | None = None,
             fixed_threshold: float | None = None, boundary_tolerance: float | None = None,
             progress: bool = False) -> dict:
    """Score a folder of maps (CAM or EPS, :func:`wsss_core.cams.save_cams` format) against ``dataset``.

    The protocol of :func:`wsss_core.stages.cam.evaluate_cams`: a sweep of the constant background
    threshold over ``cfg.thresholds`` (:func:`wsss_core.cams.threshold_sweep`), then every measure of
    :class:`wsss_core.evaluation.LabelMapEvaluator` (mIoU, precision / recall, part / body recall,
    context and background leak, EPS confusion ratio) at the best threshold — or at ``threshold``.

    Parameters
    ----------
    fixed_threshold : also evaluate at this threshold (EPS's 0.2) → ``report["fixed"]``
    boundary_tolerance : also the boundary precision / recall / F-score within this many pixels
        (:func:`wsss_core.metrics.boundary_prf` per image, averaged) → ``report["boundary"]`` (at the
        chosen threshold) and ``report["boundary_fixed"]`` (at ``fixed_threshold``), each
        ``{"precision", "recall", "f", "n", "tolerance", "threshold"}``

    Returns
    -------
    dict
        ``{"sweep": {t: mIoU}, "best_threshold": t, **summary, ["fixed": {...}], ["boundary": {...}, ...]}``
    """
    from tqdm.auto import tqdm

    from ..cams import miou_from_confusion, threshold_sweep
    from ..evaluation import LabelMapEvaluator

    cam_dir = Path(cam_dir)
    def samples(desc):  # maps are read per image, twice, rather than held (VOC: GBs at full resolution)
        for i in tqdm(range(len(dataset)), desc=desc, disable=not progress):
            r = dataset.get_raw(i)
            yield r, load_cams(cam_dir / f"{r['id']}.npz")

    mats = threshold_sweep(((m[0], m[1], r["mask"]) for r, m in samples("sweep")), dataset.num_classes, cfg.thresholds)
    mi = miou_from_confusion(mats)
    sweep = {float(t): float(v) for t, v in zip(cfg.thresholds, mi)}
    best = float(cfg.thresholds[int(np.nanargmax(mi))]) if threshold is None else float(threshold)
    todo = {"best": best}
    if fixed_threshold is not None:
        todo["fixed"] = float(fixed_threshold)
    evs = {k: LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names) for k in todo}
    bnd = {k: [] for k in todo}
    for r, (cams, label) in samples("evaluate"):
        for k, t in todo.items():
            pred = labels_from_maps(cams, label, t)
            evs[k].update_from_sample(pred, r)
            if boundary_tolerance is not None:
                bnd[k].append(boundary_prf(pred, r["mask"], tolerance=boundary_tolerance))
    report = {"sweep": sweep, "best_threshold": best, **evs["best"].summary()}
    if fixed_threshold is not None:
        report["fixed"] = {"best_threshold": todo["fixed"], **evs["fixed"].summary()}
    if boundary_tolerance is not None:
        for k, name in (("best", "boundary"), ("fixed", "boundary_fixed")):
            if k in bnd:
                report[name] = _boundary_summary(bnd[k], boundary_tolerance, todo[k])
    return report


def _boundary_summary(prf: list, tolerance: float, threshold: float) -> dict:
    arr = np.asarray(prf, np.float64).reshape(-1, 3)
    mean = arr.mean(0) if len(arr) else np.full(3, math.nan)
    return {"precision": float(mean[0]), "recall": float(mean[1]), "f": float(mean[2]), "n": int(len(arr)),
            "tolerance": float(tolerance), "threshold": float(threshold)}


def cached_report(cam_dir, dataset, cfg, context_pairs, report_path, progress: bool = False) -> dict:
    """:func:`evaluate` with ``fixed_threshold=cfg.eval_threshold`` and the boundary F-score, stored in
    ``report_path`` and reused while the maps (``cam_dir/source.json``), thresholds and pairs are the same.
    The returned dict always has the JSON types (threshold keys as strings, NaN as None)."""
    cam_dir, report_path = Path(cam_dir), Path(report_path)
    src = cam_dir / "source.json"
    key = {"maps": json.loads(src.read_text()) if src.is_file() else str(cam_dir),
           "thresholds": list(cfg.thresholds), "eval_threshold": cfg.eval_threshold,
           "boundary_tolerance": cfg.boundary_tolerance, "n_images": len(dataset),
           "pairs": {k: list(v) for k, v in (context_pairs or {}).items()}}
    key = cam_stage.stored_form(key)  # compared with the stored key (its floats rounded as written)
    if report_path.is_file():
        stored = json.loads(report_path.read_text())
        if stored.get("key") == key:
            return stored["report"]
    report = evaluate(cam_dir, dataset, cfg, context_pairs, fixed_threshold=cfg.eval_threshold,
                      boundary_tolerance=cfg.boundary_tolerance, progress=progress)
    cam_stage.write_metrics(report_path, {"key": key, "report": report})
    return cam_stage.stored_form(report)


def saliency_error_study(methods: Mapping[str, tuple], dataset, saliency_threshold: float = 0.5,
                         near: float = 3.0, progress: bool = False) -> dict:
    """What happens to the pixels where the saliency map is wrong, for each pseudo-label maker.

    ``methods``: ``{name: (cam_dir, background threshold)}``; ``dataset`` must carry the saliency
    used for training (``evaluation_dataset(..., saliency_dir=...)``). With the error regions of
    :func:`wsss_core.saliency.saliency_error_masks`:

    * ``missed_recall`` — share of *missed* object pixels (true object, S < 0.5) given their true
      class: EPS **corrects** the saliency where this stays high;
    * ``false_far_fg`` — share of salient-distractor pixels (background, S ≥ 0.5, far from objects)
      labelled as some class: EPS **inherits** the error where this rises above CAM's;
    * ``false_near_fg`` — the same for the detector's blurred outline;
    * ``objects_missed_found`` — of the objects (instances of ``SegmentationObject/``) whose mean
      saliency is below 0.5, the share with ≥ 50 % of their pixels labelled correctly.

    Returns
    -------
    dict
        ``{"regions": {region: count}, name: {measure: value}, "per_image": {name: {"missed_ok": [...],
        "far_fg": [...], "objects_found": [...]}, "missed": [...], "false_far": [...],
        "objects_missed": [...]}}`` (per-image counts in dataset order, to pick examples).
    """
    from tqdm.auto import tqdm

    names = list(methods)
    cnt = {n: {"missed_ok": 0, "far_fg": 0, "near_fg": 0, "obj_found": 0} for n in names}
    tot = {"missed": 0, "false_far": 0, "false_near": 0, "objects_missed": 0}
    per = {n: {"missed_ok": [], "far_fg": [], "objects_found": []} for n in names}
    per_tot = {"missed": [], "false_far": [], "objects_missed": []}
    inst_dir = Path(dataset.root) / "SegmentationObject"
    for i in tqdm(range(len(dataset)), desc="saliency errors", disable=not progress):
        raw = dataset.get_raw(i)
        if "saliency" not in raw:
            raise KeyError("saliency_error_study needs a dataset with saliency (evaluation_dataset(..., saliency_dir=...))")
        gt = np.asarray(raw["mask"])
        sal = np.asarray(raw["saliency"])
        err = saliency_error_masks(sal, gt, saliency_threshold, near)
        n_missed, n_far = int(err["missed"].sum()), int(err["false_far"].sum())
        tot["missed"] += n_missed
        tot["false_far"] += n_far
        tot["false_near"] += int(err["false_near"].sum())
        per_tot["missed"].append(n_missed)
        per_tot["false_far"].append(n_far)
        missed_objs = []
        if (inst_dir / f"{raw['id']}.png").is_file():
            inst = read_label_png(inst_dir / f"{raw['id']}.png")
            for k in np.unique(inst):
                if k in (0, 255):
                    continue
                m = inst == k
                if float(sal[m].mean()) < saliency_threshold:
                    missed_objs.append(m)
        tot["objects_missed"] += len(missed_objs)
        per_tot["objects_missed"].append(len(missed_objs))
        for n in names:
            cam_dir, thr = methods[n]
            cams, label = load_cams(Path(cam_dir) / f"{raw['id']}.npz")
            pred = labels_from_maps(cams, label, thr)
            ok = int((err["missed"] & (pred == gt)).sum())
            far = int((err["false_far"] & (pred > 0)).sum())
            cnt[n]["missed_ok"] += ok
            cnt[n]["far_fg"] += far
            cnt[n]["near_fg"] += int((err["false_near"] & (pred > 0)).sum())
            per[n]["missed_ok"].append(ok)
            per[n]["far_fg"].append(far)
            found = sum(int(float((pred[m] == gt[m]).mean()) >= 0.5) for m in missed_objs)
            cnt[n]["obj_found"] += found
            per[n]["objects_found"].append(found)
    div = lambda a, b: float(a) / b if b else math.nan  # noqa: E731
    out: dict = {"regions": dict(tot)}
    for n in names:
        out[n] = {"missed_recall": div(cnt[n]["missed_ok"], tot["missed"]),
                  "false_far_fg": div(cnt[n]["far_fg"], tot["false_far"]),
                  "false_near_fg": div(cnt[n]["near_fg"], tot["false_near"]),
                  "objects_missed_found": div(cnt[n]["obj_found"], tot["objects_missed"])}
    out["per_image"] = {**per, **per_tot}
    return out


def save_pseudo_labels(cam_dir, dataset, out_dir, threshold: float, progress: bool = True) -> Path:
    """Each image's pseudo-label (constant background ``threshold``, :func:`labels_from_maps`) as a VOC
    palette PNG ``out_dir/<id>.png``."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for iid in tqdm(dataset.ids, desc="pseudo-labels", disable=not progress):
        cams, label = load_cams(Path(cam_dir) / f"{iid}.npz")
        write_label_png(out_dir / f"{iid}.png", labels_from_maps(cams, label, threshold).astype(np.uint8))
    return out_dir


# ------------------------------------------------------------------------------------------------
# the CAM baseline: same backbone, schedule and pseudo-mask rule
# ------------------------------------------------------------------------------------------------

def cam_baseline_config(cfg: EPSStageConfig) -> cam_stage.CAMStageConfig:
    """The CAM-stage config that trains the same backbone with the same augmentation, optimiser,
    epochs and seed — everything but the saliency loss and the background channel — and makes its
    maps with the same scales and flips (ReLU CAMs, max-normalised, constant background)."""
    return cam_stage.CAMStageConfig(
        backbone=cfg.backbone, backbone_kwargs=dict(cfg.backbone_kwargs), dropout=cfg.dropout,
        lr_mult_new=cfg.lr_mult_new, crop_size=cfg.crop_size, scale=cfg.scale, long_side=cfg.long_side,
        hflip=cfg.hflip, color_jitter=cfg.color_jitter, train=cfg.train.replace(desc="classifier"),
        cam_scales=tuple(cfg.cam_scales), cam_flip=cfg.cam_flip, cam_batch_size=cfg.cam_batch_size,
        eval_threshold=cfg.eval_threshold, thresholds=tuple(cfg.thresholds), min_val_map=cfg.min_val_map,
        cache_images=cfg.cache_images)


def baseline_location(cfg: EPSStageConfig, data, out_root, notebook_01_cfg: cam_stage.CAMStageConfig | None = None
                      ) -> tuple[cam_stage.CAMStageConfig, Path, bool]:
    """Where :func:`run_cam_baseline` puts the CAM baseline: ``(its config, its folder, shared)`` —
    ``shared`` when it is notebook 01's (see there)."""
    cam_cfg = cam_baseline_config(cfg)
    out_root = Path(out_root)
    shared = False
    if notebook_01_cfg is not None:
        probe = out_root / cam_stage.NOTEBOOK
        same_net = cam_stage.checkpoint_dir_for(cam_cfg, probe, data) == cam_stage.checkpoint_dir_for(notebook_01_cfg, probe, data)
        same_maps = (tuple(cam_cfg.cam_scales) == tuple(notebook_01_cfg.cam_scales)
                     and cam_cfg.cam_flip == notebook_01_cfg.cam_flip)
        shared = same_net and same_maps
    if shared:
        out_dir = out_root / cam_stage.NOTEBOOK
        cam_cfg = cam_cfg.replace(eval_threshold=notebook_01_cfg.eval_threshold, thresholds=tuple(notebook_01_cfg.thresholds))
    else:
        out_dir = out_root / NOTEBOOK / "cam_baseline"
    return cam_cfg, out_dir, shared


@dataclass
class CAMBaseline:
    """The CAM side of the comparison: the CAM stage's result, and whether it is notebook 01's."""

    result: "cam_stage.CAMStageResult"
    shared_with_notebook_01: bool
    out_dir: Path


def run_cam_baseline(cfg: EPSStageConfig, data, out_root, notebook_01_cfg: cam_stage.CAMStageConfig | None = None,
                     progress: bool = True) -> CAMBaseline:
    """The CAM baseline for the comparison, trained (or reloaded) with :func:`cam_baseline_config`.

    If that config trains the very classifier notebook 01 trains (``notebook_01_cfg``, same
    fingerprint) and makes its CAMs with the same scales, notebook 01's artifacts in
    ``out_root/01_class_activation_maps`` are used (or made there, as notebook 01 would make them);
    otherwise the baseline lives in ``out_root/05_eps_saliency/cam_baseline`` so that notebook 01's
    files are never replaced.
    """
    cam_cfg, out_dir, shared = baseline_location(cfg, data, out_root, notebook_01_cfg)
    res = cam_stage.run(cam_cfg, data, out_dir, progress=progress)
    return CAMBaseline(res, shared, out_dir)


# ------------------------------------------------------------------------------------------------
# the whole stage, idempotent
# ------------------------------------------------------------------------------------------------

@dataclass
class EPSStageResult:
    """What :func:`run` leaves behind (all paths under ``out_dir``)."""

    model: EPSClassifier
    cfg: EPSStageConfig
    checkpoint_dir: Path
    cam_dir: Path
    label_dir: Path
    report: dict  # evaluate() at the best threshold, + "fixed": at cfg.eval_threshold, + "boundary"
    history: engine.History
    train_dataset: VOCLayoutDataset  # evaluation view of the split the maps were made for
    val_map: float
    train_seconds: float
    cam_seconds: float
    cam: "cam_stage.CAMStageResult | None" = None  # the CAM baseline, when run through the pipeline


def run(cfg: EPSStageConfig, data, out_dir, progress: bool = True) -> EPSStageResult:
    """The whole EPS stage, reusing whatever ``out_dir`` already holds (normally
    ``OUT_DIR/05_eps_saliency``): train (or reload) the classifier, make (or reuse) the EPS maps of the
    training split, evaluate them (sweep → best threshold; and at ``cfg.eval_threshold``, the official
    0.2; boundary F-score), save pseudo-labels (at ``cfg.label_threshold``, default the best) and write
    ``out_dir/eps_report.json``. ``data`` is a :class:`wsss_core.profiles.DataSpec`.
    """
    with store.writing(out_dir, main=engine.is_main_process()):  # a lock; killed writers' half files swept
        return _run(cfg, data, Path(out_dir), progress)


def _run(cfg: EPSStageConfig, data, out_dir, progress: bool = True) -> EPSStageResult:
    out_dir = Path(out_dir)
    ckpt = checkpoint_dir_for(cfg, out_dir, data)
    train_ds = training_dataset(data.root, data.train_split, cfg)
    val_ds = validation_dataset(data.root, data.val_split, cfg)
    model, history = train_eps(cfg, train_ds, ckpt, val_ds=val_ds if cfg.val_every_epoch else None)
    if engine.is_main_process():
        store.record_identity(ckpt, classifier_identity(cfg, data))
    train_seconds = float(sum(r.get("seconds", 0.0) for r in history.epochs))
    val_map = classification_report(model, val_ds)["map"]
    ev = evaluation_dataset(data.root, data.train_split, cfg, mask_dir=data.mask_dir)
    cam_dir, label_dir = out_dir / "cams", out_dir / "pseudo_labels"
    cam_seconds, _ = ensure_eps_cams(model, ev, cam_dir, cfg, ckpt.name, progress=progress)
    report_path = out_dir / "eps_report.json"
    report = cached_report(cam_dir, ev, cfg, data.context_pairs, report_path, progress=progress)
    thr = float(report["best_threshold"]) if cfg.label_threshold is None else float(cfg.label_threshold)
    labels = store.Result(label_dir, marker="source.json")  # written last, removed first
    want = {"maps": cam_stage.cam_folder(cam_dir).record(), "threshold": thr}
    if not labels.is_complete(want) or len(list(label_dir.glob("*.png"))) != len(ev):
        labels.begin()
        for p in label_dir.glob("*.png"):
            p.unlink()
        save_pseudo_labels(cam_dir, ev, label_dir, threshold=thr, progress=progress)
        labels.complete(want)
    return EPSStageResult(model, cfg, ckpt, cam_dir, label_dir, report, history, ev, val_map, train_seconds, cam_seconds)


# ------------------------------------------------------------------------------------------------
# notebook 05's figures, tables and metrics (kept here so that the lesson's cells stay short)
# ------------------------------------------------------------------------------------------------

def pseudo_label(cam_dir, image_id: str, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(maps (C, H, W), label (C,), pseudo-label (H, W))`` of one image from a folder of maps (CAM or
    EPS, :func:`wsss_core.cams.save_cams` format) with a constant background ``threshold`` (Eq. 7)."""
    maps, label = load_cams(Path(cam_dir) / f"{image_id}.npz")
    return maps, label, labels_from_maps(maps, label, threshold)


def context_leak_example(cam_dir, threshold: float, dataset, context_pairs: Mapping[str, tuple],
                         pair: str | None = None) -> dict:
    """The training image whose pseudo-label puts the most *context* pixels (e.g. water) into the
    pair's class (e.g. boat) — the picture of the co-occurrence problem.

    ``context_pairs``: ``{"boat/water": (class id, context id), ...}`` (:class:`~wsss_core.profiles.DataSpec`);
    ``pair`` defaults to the first. Returns ``{"index", "class_id", "context_id", "leak"}`` (``index`` 0
    and ``leak`` 0 when the data has no context masks, e.g. VOC).
    """
    if not context_pairs:
        return {"index": 0, "class_id": None, "context_id": None, "leak": 0}
    pair = pair or next(iter(context_pairs))
    cls, ctx = context_pairs[pair]
    best = {"index": 0, "class_id": int(cls), "context_id": int(ctx), "leak": -1}
    for i in range(len(dataset)):
        raw = dataset.get_raw(i)
        if "context_mask" not in raw or not raw["label"][cls - 1]:
            continue
        region = (raw["context_mask"] == ctx) & (raw["mask"] == 0)
        if not region.any():
            continue
        _, _, pred = pseudo_label(cam_dir, raw["id"], threshold)
        leak = int((region & (pred == cls)).sum())
        if leak > best["leak"]:
            best.update(index=i, leak=leak)
    best["leak"] = max(best["leak"], 0)
    return best


@torch.no_grad()
def learned_background(model, image: torch.Tensor) -> np.ndarray:
    """EPS's learned background probability :math:`P_{C+1}` (scale 1, no flip) of one normalised image
    ``(3, H, W)``, resized to ``(H, W)`` — what the saliency loss taught the network (the pseudo-masks do
    not use it)."""
    from ..models.eps import eps_background_fn

    dev = next(model.parameters()).device
    bg = eps_background_fn(model, image[None].to(dev)).float().cpu()
    return torch.nn.functional.interpolate(bg, size=tuple(image.shape[-2:]), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def _get(d, *keys):
    for k in keys:
        d = d.get(k, math.nan) if isinstance(d, dict) else math.nan
    return math.nan if d is None else d


def _f3(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def report_table(reports: Mapping[str, dict], context_pairs=None, fixed: bool = True) -> str:
    """Markdown table of :func:`evaluate` reports side by side (``{name: report}``): background threshold,
    mIoU, foreground precision / recall, body recall, the confusion ratio (Eq. 8) pooled and per pair,
    context leak and boundary F-score — at the best threshold θ* and, with ``fixed``, at the report's
    fixed threshold (``report["fixed"]``, EPS's official 0.2)."""
    cols = []
    for name, rep in reports.items():
        cols.append((f"{name}, θ*", rep, rep.get("boundary", {})))
        if fixed and "fixed" in rep:
            cols.append((f"{name}, θ = {rep['fixed']['best_threshold']:g}", rep["fixed"], rep.get("boundary_fixed", {})))
    rows = [("background threshold", lambda r, b: f"{float(r['best_threshold']):g}"),
            ("mIoU ↑", lambda r, b: _f3(r["miou"])),
            ("foreground precision ↑", lambda r, b: _f3(_get(r, "fg_precision"))),
            ("foreground recall ↑", lambda r, b: _f3(_get(r, "fg_recall"))),
            ("body recall ↑", lambda r, b: _f3(_get(r, "body_recall"))),
            ("confusion ratio, pooled ↓", lambda r, b: _f3(_get(r, "confusion_ratio_pooled")))]
    rows += [(f"confusion ratio {p} ↓", lambda r, b, p=p: _f3(_get(r, "confusion_ratio", p))) for p in (context_pairs or {})]
    rows += [("context leak ↓", lambda r, b: _f3(_get(r, "context_leak"))),
             ("boundary F-score ↑", lambda r, b: _f3(b.get("f", math.nan)))]
    lines = ["| measure | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {label} | " + " | ".join(fn(r, b) for _, r, b in cols) + " |" for label, fn in rows]
    return "\n".join(lines)


def comparison_metrics(cam_rep: dict, eps_rep: dict) -> dict:
    """Notebook 05's flat metrics of the CAM-vs-EPS comparison (the keys of the regression baselines):
    ``{cam,eps}_miou`` (θ*), ``_miou_fixed``, ``_best_threshold``, ``_confusion_ratio`` (pooled) and
    ``_per_pair`` (θ* and fixed), ``_context_leak``, ``_background_leak``, ``_fg_precision``,
    ``_fg_recall``, ``_body_recall``, ``_boundary_f``; ``eps_per_class_iou``, ``fixed_threshold``."""
    m: dict = {}
    for name, rep in (("cam", cam_rep), ("eps", eps_rep)):
        fix = rep.get("fixed", {})
        m.update({f"{name}_miou": rep["miou"], f"{name}_best_threshold": float(rep["best_threshold"]),
                  f"{name}_miou_fixed": fix.get("miou", math.nan),
                  f"{name}_confusion_ratio": _get(rep, "confusion_ratio_pooled"),
                  f"{name}_confusion_ratio_per_pair": rep.get("confusion_ratio", {}),
                  f"{name}_confusion_ratio_fixed_per_pair": fix.get("confusion_ratio", {}),
                  f"{name}_context_leak": _get(rep, "context_leak"), f"{name}_background_leak": _get(rep, "background_leak"),
                  f"{name}_fg_precision": rep["fg_precision"], f"{name}_fg_recall": rep["fg_recall"],
                  f"{name}_body_recall": _get(rep, "body_recall"), f"{name}_boundary_f": _get(rep, "boundary", "f")})
    m["eps_per_class_iou"] = eps_rep.get("per_class_iou", {})
    m["fixed_threshold"] = float(eps_rep.get("fixed", {}).get("best_threshold", math.nan))
    return m
