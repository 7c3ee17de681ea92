"""The CAM stage: train a multi-label classifier, make CAMs, turn them into pseudo-labels, measure.

One config object (:class:`CAMStageConfig`) holds every knob; :mod:`wsss_core.profiles` gives its
presets (``smoke``, ``tutorial``, ``paper``). The notebook ``01_class_activation_maps`` and the CLI
(``wsss cam ...``) both call these functions:

    model, history = train_classifier(cfg, train_ds, checkpoint_dir)
    cls = classification_report(model, val_ds, cfg)           # mAP on validation
    make_cams(model, train_ds_eval, cam_dir, cfg)             # one .npz per image
    report = evaluate_cams(cam_dir, train_ds_eval, cfg, pairs)  # threshold sweep + coverage / leak
    save_pseudo_labels(cam_dir, train_ds_eval, label_dir, threshold=report["best_threshold"])
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import engine
from . import store
from ._config import StageConfig
from ..cams import cams_to_labels, load_cams, miou_from_confusion, multiscale_cams, save_cams, threshold_sweep
from ..data.palette import write_label_png
from ..data.transforms import eval_transforms, train_transforms
from ..data.voc import VOCLayoutDataset, collate_samples
from ..evaluation import LabelMapEvaluator
from ..metrics import mean_average_precision
from ..models.backbones import build_backbone
from ..models.cam import CAMClassifier, multilabel_loss

DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))


@dataclass
class CAMStageConfig(StageConfig):
    """Everything that defines the CAM stage.

    Attributes
    ----------
    backbone, backbone_kwargs : see :func:`wsss_core.models.backbones.build_backbone`.
    dropout : Dropout2d before GAP (PSA's ResNet-38: 0.5; IRN's ResNet-50: none).
    lr_mult_new : learning-rate multiplier of the new classifier (IRN: 10× = 1.0 vs 0.1).
    crop_size, scale, long_side, hflip, color_jitter : training augmentation
        (:func:`wsss_core.data.transforms.train_transforms`).
    train : the engine's :class:`~wsss_core.engine.TrainConfig`.
    cam_scales, cam_flip : CAM inference (PSA/IRN: scales 1, 0.5, 1.5, 2 and flips).
    cam_batch_size : images per CAM inference batch (equal-sized images only; VOC uses 1).
    eval_threshold : constant background score when no sweep is done (IRN 0.15, PSA/EPS 0.2).
    thresholds : the background thresholds of the sweep.
    min_val_map : below this validation mAP the CAMs are not trustworthy; the notebook warns.
    cache_images : keep decoded images in memory (toy data).
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
        epochs=10, batch_size=32, lr=3e-3, optimizer="adam", schedule="onecycle", weight_decay=1e-4, desc="classifier"))
    cam_scales: tuple = (1.0, 0.5, 1.5, 2.0)
    cam_flip: bool = True
    cam_batch_size: int = 32
    eval_threshold: float = 0.15
    thresholds: tuple = DEFAULT_THRESHOLDS
    min_val_map: float = 0.9
    cache_images: bool = True


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------

def config_for_profile(profile: str) -> CAMStageConfig:
    """:class:`CAMStageConfig` preset (also ``profiles.cam_config``).

    * ``smoke``: 2 epochs on 64 images, single-scale CAMs — proves the code path in seconds.
    * ``tutorial``: compact CNN (stride 8) trained from scratch for 10 epochs on the 1 000 toy training
      scenes (validation mAP ≈ 0.99). CAMs at scale 1 + flip: on 96-px scenes the papers' four scales
      (1, 0.5, 1.5, 2) cost 5× and did not help (measured: pseudo-label mIoU 0.587 vs 0.596 at scale 1).
    * ``paper``: IRN's ``train_cam`` (ResNet-50, output stride 16, frozen BN, conv1..layer2 frozen,
      ImageNet weights, SGD lr 0.1 / 1.0 for the classifier, wd 1e-4, poly 0.9, batch 16, 5 epochs,
      resize-long 320–640, flip, crop 512) and its ``make_cam`` / ``eval_cam`` (scales 1, 0.5, 1.5, 2;
      background 0.15). The official ``PolyOptimizer`` passes weight decay positionally into SGD's
      *momentum* slot, so it trains with momentum 1e-4 ≈ none: we reproduce that with momentum 0.
    """
    from .. import profiles

    profiles.check_profile(profile)
    if profile == "smoke":
        return CAMStageConfig(
            train=engine.TrainConfig(epochs=2, batch_size=16, lr=3e-3, optimizer="adam", schedule="onecycle", desc="classifier"),
            cam_scales=(1.0,), cam_batch_size=16, min_val_map=0.0)
    if profile in ("tutorial", "study"):
        return CAMStageConfig(cam_scales=(1.0,))
    return CAMStageConfig(
        backbone="resnet50",
        backbone_kwargs={"output_stride": 16, "weights": "imagenet", "freeze_bn": True, "frozen_stages": 2},
        lr_mult_new=10.0, crop_size=512, scale=None, long_side=(320, 640), hflip=True, color_jitter=None,
        train=engine.TrainConfig(epochs=5, batch_size=16, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=1e-4,
                          schedule="poly", poly_power=0.9, num_workers=4, desc="classifier"),
        cam_scales=(1.0, 0.5, 1.5, 2.0), cam_batch_size=1, eval_threshold=0.15, cache_images=False)


def classification_dataset(root, split: str, cfg: CAMStageConfig, train: bool = True, **kw) -> VOCLayoutDataset:
    """Images and image labels only (no masks read), with training or evaluation transforms."""
    tf = train_transforms(cfg.crop_size, scale=cfg.scale, long_side=cfg.long_side, hflip=cfg.hflip,
                          color_jitter=cfg.color_jitter) if train else eval_transforms()
    return VOCLayoutDataset(root, split, mask_dir=None, instance_dir=None, saliency_dir=None, extra_dirs=None,
                            transforms=tf, cache=cfg.cache_images, **kw)


def evaluation_dataset(root, split: str, cfg: CAMStageConfig | None = None, **kw) -> VOCLayoutDataset:
    """Images (normalised), labels, masks and the toy extras (part/context masks) for evaluation."""
    return VOCLayoutDataset(root, split, saliency_dir=None, instance_dir=None, transforms=eval_transforms(),
                            cache=cfg.cache_images if cfg is not None else False, **kw)


# ------------------------------------------------------------------------------------------------
# model and training
# ------------------------------------------------------------------------------------------------

def build_model(cfg: CAMStageConfig, num_classes: int) -> CAMClassifier:
    return CAMClassifier(build_backbone(cfg.backbone, **cfg.backbone_kwargs), num_classes, dropout=cfg.dropout)


def classification_step(model, batch, device) -> dict:
    """One training step's loss: multi-label soft margin on the image labels (PSA/IRN)."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    logits = model(images)
    return {"loss": multilabel_loss(logits, labels)}


def predict_scores(model, dataset, batch_size: int = 64, device=None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Classifier scores on a dataset: ``(scores (N, C) float32, labels (N, C) float32)``."""
    def fn(m, batch, dev):
        return m(batch["image"].to(dev)).float().cpu(), batch["label"]

    if not same_size(dataset):
        batch_size = 1  # real photos differ in size; the toy scenes share one
    out = engine.predict(model, dataset, fn, batch_size=batch_size, device=device, collate_fn=collate_samples,
                         progress=progress, desc="scores", shard=False)
    scores = torch.cat([o[0] for o in out]).numpy() if out else np.zeros((0, dataset.num_classes), np.float32)
    labels = torch.cat([o[1] for o in out]).numpy() if out else np.zeros((0, dataset.num_classes), np.float32)
    return scores, labels


def classification_report(model, dataset, batch_size: int = 64, device=None) -> dict:
    """Validation mAP and per-class AP of the classifier (``cls_map`` in metrics.json)."""
    scores, labels = predict_scores(model, dataset, batch_size, device)
    m, ap = mean_average_precision(scores, labels)
    return {"map": float(m), "per_class_ap": {dataset.class_names[c + 1]: float(a) for c, a in enumerate(ap)}}


def train_classifier(cfg: CAMStageConfig, train_ds, checkpoint_dir=None, val_ds=None, num_classes: int | None = None):
    """Train the CAM classifier with the shared engine; returns ``(model, history)``.

    With ``checkpoint_dir``, every epoch is checkpointed and a finished run is reloaded instead of
    retrained. With ``val_ds``, validation mAP is recorded after each epoch (``history.epochs``).
    """
    num_classes = num_classes or train_ds.num_classes
    if checkpoint_dir is not None:
        _check_stage_identity(cfg, checkpoint_dir)
    engine.seed_everything(cfg.train.seed)
    model = build_model(cfg, num_classes)
    tcfg = cfg.train if checkpoint_dir is None else cfg.train.replace(checkpoint_dir=str(checkpoint_dir))
    eval_fn = None
    if val_ds is not None:
        def eval_fn(m, epoch):
            if not engine.get_dist_info().is_main:
                return {}
            return {"val_map": classification_report(m, val_ds)["map"]}
    history = engine.train(model, classification_step, train_ds, tcfg, collate_fn=collate_samples,
                           param_groups=lambda m: engine.unwrap(m).param_groups(cfg.lr_mult_new), eval_fn=eval_fn)
    model.eval()
    return model, history


# fields that do not change the trained weights
_INFERENCE_FIELDS = {"cam_scales", "cam_flip", "cam_batch_size", "eval_threshold", "thresholds", "min_val_map",
                     "cache_images"}


def _check_stage_identity(cfg: CAMStageConfig, checkpoint_dir) -> None:
    """Refuse to resume a checkpoint trained with another model/augmentation config (the engine only
    sees the TrainConfig): ``checkpoint_dir/stage_config.json`` records what made the weights."""
    d = Path(checkpoint_dir)
    # the engine compares the TrainConfig itself
    ident = {k: v for k, v in json.loads(json.dumps(cfg.to_dict(), default=list)).items()
             if k not in _INFERENCE_FIELDS | {"train"}}
    f = d / "stage_config.json"
    if (d / "last.pt").exists() and f.is_file():
        old = json.loads(f.read_text())
        diff = {k: (old.get(k), v) for k, v in ident.items() if old.get(k) != v}
        if diff and cfg.train.resume:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise engine.CheckpointMismatchError(
                f"{d}: the checkpoint was trained with a different CAM-stage config ({lines}). Delete the folder, "
                "choose another checkpoint_dir, or set train.resume=False to start afresh.")
    d.mkdir(parents=True, exist_ok=True)
    if engine.is_main_process():  # one writer under torchrun (unchanged: left untouched)
        store.atomic_update_json(f, ident)


# ------------------------------------------------------------------------------------------------
# CAMs and pseudo-labels
# ------------------------------------------------------------------------------------------------

def make_cams(model, dataset, out_dir, cfg: CAMStageConfig, device=None, progress: bool = True,
              overwrite: bool = False) -> Path:
    """Multi-scale + flip CAMs of every image of ``dataset`` (eval transforms) → ``out_dir/<id>.npz``.

    Maps are at full image resolution, max-normalised, present classes only (IRN ``high_res``).
    Existing files are kept unless ``overwrite``. Under torchrun every rank must call it: the images
    are split across ranks, and all ranks wait until every file is written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i, iid in enumerate(dataset.ids) if overwrite or not (out_dir / f"{iid}.npz").exists()]
    info = engine.get_dist_info()
    if not todo:
        return out_dir
    sub = torch.utils.data.Subset(dataset, todo)

    def fn(m, batch, dev):
        cams = multiscale_cams(m, batch["image"].to(dev), batch["label"].to(dev), scales=cfg.cam_scales,
                               flip=cfg.cam_flip)
        for iid, c, lab in zip(batch["id"], cams.cpu(), batch["label"]):
            save_cams(out_dir / f"{iid}.npz", c, lab)
        return None

    engine.predict(model, sub, fn, batch_size=cfg.cam_batch_size if same_size(dataset) else 1, device=device,
                   collate_fn=collate_samples, progress=progress, desc="CAMs")
    if info.enabled:
        torch.distributed.barrier()
    return out_dir


def same_size(dataset) -> bool:
    """Whether every image of ``dataset`` has one size (the toy scenes; real photos do not), so that
    inference may batch them."""
    return (Path(dataset.root) / "toyscenes.json").is_file()


def iter_cams(cam_dir, dataset, with_raw: bool = True):
    """Yield ``(cams (C, H, W), label (C,), raw sample)`` in dataset order."""
    cam_dir = Path(cam_dir)
    for i, iid in enumerate(dataset.ids):
        cams, label = load_cams(cam_dir / f"{iid}.npz")
        yield cams, label, (dataset.get_raw(i) if with_raw else None)


def evaluate_cams(cam_dir, dataset, cfg: CAMStageConfig, context_pairs=None, threshold: float | None = None,
                  progress: bool = False) -> dict:
    """Background-threshold sweep, then a full evaluation at the best threshold (or ``threshold``).

    Returns ``{"sweep": {t: mIoU}, "best_threshold": t*, **LabelMapEvaluator.summary() at t*}``.
    The sweep uses the ground truth, so the best threshold is an *oracle* choice: papers report
    CAM quality this way (IRN's ``eval_cam`` picks its 0.15 on train), and the notebook says so.
    """
    from tqdm.auto import tqdm

    raws = [dataset.get_raw(i) for i in tqdm(range(len(dataset)), desc="load masks", disable=not progress)]
    cam_dir = Path(cam_dir)
    mats = threshold_sweep(((load_cams(cam_dir / f"{r['id']}.npz")[0], r["label"], r["mask"]) for r in raws),
                           dataset.num_classes, cfg.thresholds)
    mi = miou_from_confusion(mats)
    sweep = {float(t): float(v) for t, v in zip(cfg.thresholds, mi)}
    best = float(cfg.thresholds[int(np.nanargmax(mi))]) if threshold is None else float(threshold)
    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    for r in raws:
        cams, label = load_cams(cam_dir / f"{r['id']}.npz")
        ev.update_from_sample(cams_to_labels(cams, label, threshold=best), r)
    return {"sweep": sweep, "best_threshold": best, **ev.summary()}


def save_pseudo_labels(cam_dir, dataset, out_dir, threshold: float | None = 0.15, alpha: float | None = None,
                       progress: bool = True) -> Path:
    """Write each image's CAM pseudo-label as a VOC palette PNG ``out_dir/<id>.png``; then the folder's
    marker ``out_dir/.complete.json`` (:func:`label_record`: which maps, threshold, number of images),
    removed before the first PNG is written."""
    from tqdm.auto import tqdm

    folder = store.Result(out_dir)
    folder.begin()
    for iid in tqdm(dataset.ids, desc="pseudo-labels", disable=not progress):
        cams, label = load_cams(Path(cam_dir) / f"{iid}.npz")
        write_label_png(folder.folder / f"{iid}.png", cams_to_labels(cams, label, threshold=threshold, alpha=alpha))
    folder.complete(label_record(cam_dir, dataset, threshold, alpha))
    return folder.folder


def label_record(cam_dir, dataset, threshold: float | None, alpha: float | None = None) -> dict:
    """What identifies the pseudo-labels of :func:`save_pseudo_labels`: the classifier that made the maps
    (their marker's ``classifier``), the rule's threshold / alpha and the number of images."""
    return {"classifier": (cam_folder(cam_dir).record() or {}).get("classifier"), "threshold": threshold,
            "alpha": alpha, "n_images": len(dataset.ids)}


def stored_form(v):
    """``v`` as :func:`write_metrics` stores it and a reader gets it back: floats rounded to 6 digits, NaN as
    None, numpy scalars as Python numbers, tuples as lists, dict keys as strings. A cache compares (and a
    stage returns) this form, so a first run and a rerun that reads the file see the same figures."""
    if isinstance(v, dict):
        return {str(k): stored_form(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [stored_form(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if np.isnan(v) else round(float(v), 6)
    if isinstance(v, np.integer):
        return int(v)
    return v


def write_metrics(path, metrics: dict) -> Path:
    """Write a notebook's ``metrics.json`` (:func:`stored_form`: floats rounded to 6 digits; NaN kept as null)."""
    return store.atomic_write_json(path, stored_form(metrics))  # a killed writer leaves the old file or none


# ------------------------------------------------------------------------------------------------
# the whole stage, idempotent: what notebook 01 does step by step, for the later notebooks
# ------------------------------------------------------------------------------------------------

NOTEBOOK = "01_class_activation_maps"
"""The notebook (and OUT_DIR sub-folder) that owns this stage's artifacts."""

REPORT_NAME = "cam_report.json"

STAGE = "cam"
FORMAT_VERSION = 1
"""Bump when the classifier or its CAMs change meaning for the same config (every result is remade)."""


def classifier_identity(cfg: CAMStageConfig, data=None) -> store.Identity:
    """The trained classifier's identity (:func:`wsss_core.stages.store.identity`): the config without
    the inference-only and run-only fields, and — given ``data`` — the data set's identity."""
    return store.identity(STAGE, cfg, data=data,
                          version=FORMAT_VERSION, exclude=_INFERENCE_FIELDS)


def checkpoint_dir_for(cfg: CAMStageConfig, out_dir, data=None) -> Path:
    """``out_dir/classifier/<backbone>-os<s>-e<epochs>-seed<seed>-<fingerprint>``.

    The fingerprint covers everything that changes the trained weights (backbone, augmentation,
    optimiser, epochs, seed and — given ``data`` (a :class:`wsss_core.profiles.DataSpec`) — the
    dataset's own config), so a changed configuration trains a new classifier next to the old one
    instead of silently reloading it.
    """
    name = (f"{cfg.backbone}-os{cfg.backbone_kwargs.get('output_stride', 'x')}-e{cfg.train.epochs}"
            f"-seed{cfg.train.seed}-{classifier_identity(cfg, data).hash}")
    return Path(out_dir) / "classifier" / name


CAM_MARKER = "source.json"
"""The completion marker of a folder of maps (:func:`ensure_cams`): which classifier, split and scales
made them, and how long it took. Written after the last map; removed before the first is remade."""


def cam_folder(cam_dir) -> store.Result:
    """A folder of maps (CAMs, EPS maps, DA masks) as a :class:`~wsss_core.stages.store.Result`."""
    return store.Result(cam_dir, marker=CAM_MARKER)


def ensure_cams(model, dataset, cam_dir, cfg, classifier_name: str, progress: bool = True, make=None,
                kind: str | None = None) -> tuple[float, bool]:
    """Make the maps of ``dataset`` unless ``cam_dir`` already holds those of the same classifier,
    split and scales (its marker ``cam_dir/source.json``); maps of anything else are deleted first.

    ``make`` (default :func:`make_cams`) makes the maps, ``(model, dataset, out_dir, cfg, progress=...)``,
    keeping existing files; ``kind`` is recorded in the marker (e.g. ``"eps-softmax"``) and must match.
    The marker is removed before any map is deleted or made and written after the last one, so an
    interrupted run is never reused as complete. Returns ``(seconds it took to make them, reused?)``.
    """
    import time

    make = make or make_cams
    folder = cam_folder(cam_dir)
    source = {"classifier": classifier_name, "split": getattr(dataset, "split", None), "scales": list(cfg.cam_scales),
              "flip": cfg.cam_flip, "n_images": len(dataset)}
    if kind is not None:
        source["kind"] = kind
    old = folder.record()
    if old is not None and {k: old.get(k) for k in source} == source:
        make(model, dataset, folder.folder, cfg, progress=progress)  # fills in missing files only
        return float(old["seconds"]), True
    folder.begin()
    for p in folder.folder.glob("*.npz"):
        p.unlink()
    t0 = time.perf_counter()
    make(model, dataset, folder.folder, cfg, progress=progress)
    seconds = time.perf_counter() - t0
    folder.complete({**source, "seconds": seconds})
    return seconds, False


@dataclass
class CAMStageResult:
    """What :func:`run` leaves behind (all paths under ``out_dir``)."""

    model: CAMClassifier
    cfg: CAMStageConfig
    checkpoint_dir: Path
    cam_dir: Path
    label_dir: Path
    report: dict
    train_dataset: VOCLayoutDataset  # evaluation view of the split the CAMs were made for
    val_map: float


def run(cfg: CAMStageConfig, data, out_dir, progress: bool = True) -> CAMStageResult:
    """The whole CAM stage, reusing whatever is already in ``out_dir`` (normally
    ``OUT_DIR/01_class_activation_maps``, so later notebooks pick up notebook 01's classifier and CAMs):

    train (or reload) the classifier, make (or reuse) the CAMs of the training split, evaluate them
    with a threshold sweep, save the pseudo-labels at the best threshold, and write
    ``out_dir/cam_report.json``. ``data`` is a :class:`wsss_core.profiles.DataSpec`.

    Every file is written atomically and every folder completed by a marker written last, so a run
    killed anywhere is finished by calling it again (the classifier resumes from its last epoch).
    ``out_dir`` is locked meanwhile (:func:`wsss_core.stages.store.lock`): a second process running
    into the same folder stops with an error naming the first.
    """
    out_dir = Path(out_dir)
    with store.writing(out_dir, main=engine.is_main_process()):  # under torchrun rank 0 holds it for all ranks
        return _run(cfg, data, out_dir, progress)


def _run(cfg: CAMStageConfig, data, out_dir: Path, progress: bool) -> CAMStageResult:
    ident = classifier_identity(cfg, data)
    ckpt = checkpoint_dir_for(cfg, out_dir, data)
    train_ds = classification_dataset(data.root, data.train_split, cfg)
    val_ds = classification_dataset(data.root, data.val_split, cfg, train=False)
    model, _ = train_classifier(cfg, train_ds, ckpt, val_ds=val_ds)
    if engine.is_main_process():
        store.record_identity(ckpt, ident)  # read by `wsss status`
    val_map = classification_report(model, val_ds)["map"]
    ev = evaluation_dataset(data.root, data.train_split, cfg)
    cam_dir, label_dir = out_dir / "cams", out_dir / "pseudo_labels"
    ensure_cams(model, ev, cam_dir, cfg, ckpt.name, progress=progress)
    report_path = out_dir / REPORT_NAME
    report = None
    if report_path.is_file():
        stored = json.loads(report_path.read_text())
        if stored.get("source") == json.loads((cam_dir / "source.json").read_text()).get("classifier"):
            report = stored["report"]
    if report is None:
        report = evaluate_cams(cam_dir, ev, cfg, data.context_pairs)
        save_report(out_dir, ckpt.name, report)
        report = stored_form(report)  # as stored (rounded): what a rerun reads
    labels = store.Result(label_dir)
    if not labels.is_complete(label_record(cam_dir, ev, report["best_threshold"])):
        labels.begin()
        for p in label_dir.glob("*.png"):  # (labels of other images)
            p.unlink()
        save_pseudo_labels(cam_dir, ev, label_dir, threshold=report["best_threshold"], progress=progress)
    return CAMStageResult(model, cfg, ckpt, cam_dir, label_dir, report, ev, val_map)


def save_report(out_dir, classifier_name: str, report: dict) -> Path:
    """Write ``out_dir/cam_report.json`` — :func:`evaluate_cams`'s report and the classifier (checkpoint
    folder name) whose CAMs it scored — so that :func:`run` (the later notebooks) reuses it instead of
    evaluating the same CAMs again."""
    return write_metrics(Path(out_dir) / REPORT_NAME, {"source": classifier_name, "report": report})


# ------------------------------------------------------------------------------------------------
# what notebook 01 measures beyond evaluate_cams (and its study notebook)
# ------------------------------------------------------------------------------------------------

def score_cams(cam_dir, dataset, cfg: CAMStageConfig, context_pairs=None, best_threshold: float | None = None,
               alpha: float = 16.0, peak_px: float = 4.0, progress: bool = False) -> dict:
    """One pass over the CAMs of ``dataset`` for the figures of notebook 01 §7–8.

    Returns a dict with

    * ``fixed``, ``alpha`` — :class:`~wsss_core.evaluation.LabelMapEvaluator` summaries of the
      pseudo-labels at the constant ``cfg.eval_threshold`` (Eq. 5a) and PSA's power rule with ``alpha``
      (Eq. 5b);
    * ``thresholds``, ``miou``, ``fg_precision``, ``fg_recall`` — arrays over ``cfg.thresholds``
      (class-aware foreground precision / recall of every threshold of the sweep);
    * ``peak_on_badge`` — the share of present-class CAMs whose maximum lies within ``peak_px`` pixels
      of a badge (``part_mask``) of that class (NaN without part masks);
    * ``leak_example`` — per context pair, the index of the image (labelled with the class) whose
      pseudo-label at ``best_threshold`` gives the class the most context pixels (None if none does).
    """
    import cv2
    from tqdm.auto import tqdm

    C = dataset.num_classes
    pairs = dict(context_pairs or {})
    th = np.asarray(cfg.thresholds, np.float32)
    best = cfg.eval_threshold if best_threshold is None else float(best_threshold)
    ev_fixed = LabelMapEvaluator(C, pairs, dataset.class_names)
    ev_alpha = LabelMapEvaluator(C, pairs, dataset.class_names)
    mats = np.zeros((len(th), C + 1, C + 1), np.int64)
    peak_dist, leak = [], {name: (None, 0) for name in pairs}
    for i in tqdm(range(len(dataset)), desc="score CAMs", disable=not progress):
        raw = dataset.get_raw(i)
        cams, label = load_cams(Path(cam_dir) / f"{raw['id']}.npz")
        ev_fixed.update_from_sample(cams_to_labels(cams, label, threshold=cfg.eval_threshold), raw)
        ev_alpha.update_from_sample(cams_to_labels(cams, label, alpha=alpha), raw)
        mats += threshold_sweep([(cams, label, raw["mask"])], C, th)
        if "part_mask" in raw:
            for c in np.flatnonzero(label):
                badge = raw["part_mask"] == c + 1
                if badge.any():
                    dist = cv2.distanceTransform((~badge).astype(np.uint8), cv2.DIST_L2, 5)
                    peak_dist.append(float(dist.flat[np.argmax(cams[c])]))
        if pairs and "context_mask" in raw:
            pl = cams_to_labels(cams, label, threshold=best)
            for name, (c, k) in pairs.items():
                n = int(((raw["context_mask"] == k) & (raw["mask"] == 0) & (pl == c)).sum()) if label[c - 1] else 0
                if n > leak[name][1]:
                    leak[name] = (i, n)
    tp = np.stack([np.diag(m)[1:].sum() for m in mats])
    return {"fixed": ev_fixed.summary(), "alpha": ev_alpha.summary(), "thresholds": th,
            "miou": miou_from_confusion(mats),
            "fg_precision": tp / np.maximum(mats[:, :, 1:].sum(axis=(1, 2)), 1),
            "fg_recall": tp / np.maximum(mats[:, 1:, :].sum(axis=(1, 2)), 1),
            "peak_on_badge": float(np.mean(np.asarray(peak_dist) <= peak_px)) if peak_dist else float("nan"),
            "leak_example": {name: v[0] for name, v in leak.items()}}


CONTEXT_REGIONS = ("object", "context, near", "context, far", "ordinary bg, near", "ordinary bg, far")
"""The regions of :func:`context_activation`: the class's own pixels, then its context region and the
ordinary background (neither object nor any context), each split into near / far from every object."""


def context_activation(cam_dir, dataset, context_pairs, far_px: float = 12.0) -> dict:
    """The class CAM's values on the regions of :data:`CONTEXT_REGIONS`, in the images labelled with the
    class and holding its context: ``{pair: {"images": n, "example": index, "values": {region: 1-D array}}}``.

    *Far* means more than ``far_px`` pixels from every object (and 255) pixel, so that the CAM's value
    there cannot be the blur of the coarse feature grid around an object: a class CAM higher on far
    context than on far ordinary background means the classifier has learned the context itself as
    evidence. ``example`` is the image with the most CAM mass on far context.
    """
    import cv2

    out = {}
    for pair, (c, k) in dict(context_pairs or {}).items():
        vals = {r: [] for r in CONTEXT_REGIONS}
        best_i, best_mass, n_img = None, -1.0, 0
        for i in range(len(dataset)):
            raw = dataset.get_raw(i)
            if not raw["label"][c - 1]:
                continue
            ctx = raw["context_mask"] == k
            if not ctx.any():
                continue
            n_img += 1
            m = load_cams(Path(cam_dir) / f"{raw['id']}.npz")[0][c - 1]
            bg = raw["mask"] == 0
            far = cv2.distanceTransform(bg.astype(np.uint8), cv2.DIST_L2, 5) > far_px
            plain = raw["context_mask"] == 0
            sel = {"object": raw["mask"] == c, "context, near": ctx & bg & ~far, "context, far": ctx & bg & far,
                   "ordinary bg, near": plain & bg & ~far, "ordinary bg, far": plain & bg & far}
            for r in CONTEXT_REGIONS:
                vals[r].append(m[sel[r]])
            mass = float(m[sel["context, far"]].sum())
            if mass > best_mass:
                best_i, best_mass = i, mass
        out[pair] = {"images": n_img, "example": best_i,
                     "values": {r: np.concatenate(v) if v else np.zeros(0, np.float32) for r, v in vals.items()}}
    return out
