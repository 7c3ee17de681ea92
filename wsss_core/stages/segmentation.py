"""The last stage: a DeepLab trained on a folder of pseudo-labels, evaluated on true masks.

    cfg = config_for_profile("tutorial")
    res = run(cfg, data, label_dir=".../01_class_activation_maps/pseudo_labels", out_dir=".../seg_cam")
    res.report["miou"]            # validation mIoU against the true masks

``label_dir`` holds one palette PNG per training image (``<id>.png``, 255 = ignore) — what every
pseudo-label maker of this project writes — or is ``None`` for the fully supervised upper bound (the
dataset's own ``SegmentationClass``). Every training goes through :func:`wsss_core.engine.train`, so
it runs on a GPU, under AMP, and under ``torchrun`` like the other stages.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import engine
from . import store
from ._config import StageConfig
from ..data.transforms import eval_transforms, train_transforms
from ..data.voc import VOCLayoutDataset, collate_samples
from ..evaluation import LabelMapEvaluator
from ..models.backbones import build_backbone
from ..models.deeplab import DeepLab, dense_crf, multiscale_predict


@dataclass
class SegStageConfig(StageConfig):
    """Everything that defines the segmentation stage.

    Attributes
    ----------
    backbone, backbone_kwargs : see :func:`wsss_core.models.backbones.build_backbone`.
    head, rates, channels : :class:`wsss_core.models.deeplab.DeepLab` (``"v2"`` = the papers' DeepLab-v2).
    lr_mult_new : learning-rate multiplier of the new head (DeepLab: 10×).
    crop_size, scale, hflip, color_jitter : training augmentation.
    train : the engine's :class:`~wsss_core.engine.TrainConfig`.
    eval_scales, eval_flip, crf : inference (the papers: multi-scale + flip + dense CRF).
    cache_images : keep decoded images in memory (toy data).
    channels_last : keep weights and activations in the NHWC memory layout (oneDNN's fast path on a CPU;
        measured ≈ 12 % less time per training step on the tutorial segmenter). A layout, not a model
        change: not part of the checkpoint's fingerprint.
    train_workers, torch_threads : :func:`wsss_core.comparison.compare` trains up to ``train_workers``
        segmenters at once in worker processes (CPU only), each with ``torch_threads`` torch threads
        (None: this process's count) — on 2 cores two networks on one thread each use the cores better
        than one network on two threads. Run-time settings: not part of the fingerprint.
    """

    backbone: str = "compact"
    backbone_kwargs: dict = field(default_factory=lambda: {"width": 32, "output_stride": 8})
    head: str = "v3plus"
    rates: tuple = (1, 2, 3)
    channels: int = 96
    lr_mult_new: float = 1.0
    crop_size: int = 96
    scale: tuple | None = (0.8, 1.2)
    long_side: tuple | None = None
    hflip: bool = True
    color_jitter: tuple | None = None
    train: engine.TrainConfig = field(default_factory=lambda: engine.TrainConfig(
        epochs=12, batch_size=16, lr=3e-3, optimizer="adam", schedule="onecycle", weight_decay=1e-4,
        desc="segmenter"))
    eval_scales: tuple = (1.0,)
    eval_flip: bool = True
    crf: bool = False
    cache_images: bool = True
    channels_last: bool = False
    train_workers: int = 1
    torch_threads: int | None = None


# fields that do not change the trained weights (left out of the checkpoint folder's fingerprint)
_INFERENCE_FIELDS = ("eval_scales", "eval_flip", "crf", "cache_images", "channels_last", "train_workers", "torch_threads")
NOTEBOOK = "06_segmentation_and_comparison"  # (notebook 06 trains one segmenter per method under it)
STAGE = "segmentation"
FORMAT_VERSION = 1


def config_for_profile(profile: str) -> SegStageConfig:
    """Presets.

    * ``smoke``: 5 epochs on the smoke scenes — proves the code path (and leaves figures that a
      regression baseline can follow).
    * ``study``: compact CNN + DeepLab-v3+ decoder at stride 4 (64 channels), 10 epochs on the 1 000 toy scenes
      (ASPP dilations 1/2/3: the stride-8 map of a 96-px scene is 12×12); flip at test time.
    * ``tutorial``: the same network with 32 channels, NHWC layout, 8 epochs, no flip at test time, two
      trainings side by side on one thread each — notebook 06's budget (eight trainings in minutes on 2 cores).
    * ``paper``: DeepLab-v2 on ResNet-101 (output stride 8, ASPP 6/12/18/24, ImageNet weights), SGD lr
      2.5e-4 (10× for the head), momentum 0.9, wd 5e-4, poly 0.9, batch 10, crop 321, scale 0.5–1.5,
      ≈ 20 k iterations on train_aug (≈ 19 epochs); multi-scale (0.5–1.5) + flip + dense CRF at test time.
    """
    from ..profiles import check_profile

    check_profile(profile)
    if profile == "smoke":
        return SegStageConfig(train=engine.TrainConfig(epochs=5, batch_size=16, lr=3e-3, optimizer="adam",
                                                       schedule="onecycle", desc="segmenter"))
    if profile == "study":
        # measured on the 1 000 tutorial scenes (val mIoU, CAM labels / true masks): 12 epochs × 96 channels
        # 0.560 / 0.927; 10 × 64: 0.561 / 0.915 at 60 % of the time; 6 × 64: 0.557 / 0.834 (upper bound under-trained)
        return SegStageConfig(channels=64, train=SegStageConfig().train.replace(epochs=10))
    if profile == "tutorial":
        # notebook 06 trains eight of these, so one is the unit of its budget. Measured per training step
        # on the shared 2 cores (batch 16): 64 → 32 channels −23 %, NHWC layout −12 %, augmentation 2.5 ms
        # per image; DataLoader workers cost more than they save (forked every epoch), 64-px crops lose
        # quality. Val mIoU of the true-mask upper bound / CAM labels: study preset 0.915 / 0.561; 32
        # channels × 5 epochs 0.622 / 0.541; × 8 epochs 0.855; 64-px crops × 10 epochs 0.806. Two
        # segmenters train side by side, one thread each (comparison.compare); test time without the flip.
        return SegStageConfig(channels=32, channels_last=True, eval_flip=False, train_workers=2, torch_threads=1,
                              train=SegStageConfig().train.replace(epochs=8))
    if profile == "paper":
        return SegStageConfig(
            backbone="resnet101", backbone_kwargs={"output_stride": 8, "weights": "imagenet"}, head="v2",
            rates=(6, 12, 18, 24), lr_mult_new=10.0, crop_size=321, scale=(0.5, 1.5), color_jitter=None,
            train=engine.TrainConfig(epochs=19, batch_size=10, lr=2.5e-4, optimizer="sgd", momentum=0.9,
                                     weight_decay=5e-4, schedule="poly", poly_power=0.9, num_workers=4,
                                     desc="segmenter"),
            eval_scales=(0.5, 0.75, 1.0, 1.25, 1.5), eval_flip=True, crf=True, cache_images=False)
    raise AssertionError(profile)  # unreachable: check_profile above


def build_model(cfg: SegStageConfig, num_classes: int) -> DeepLab:
    """``num_classes``: foreground classes C; the network predicts C + 1 (background first)."""
    return DeepLab(build_backbone(cfg.backbone, **cfg.backbone_kwargs), num_classes + 1, head=cfg.head,
                   rates=cfg.rates, channels=cfg.channels)


def label_dataset(root, split: str, cfg: SegStageConfig, label_dir=None, train: bool = True,
                  true_mask_dir: str = "SegmentationClass") -> VOCLayoutDataset:
    """Images with their labels from ``label_dir`` (pseudo-labels; an absolute folder) or, if None,
    the dataset's true masks (``true_mask_dir``: ``SegmentationClassAug`` for SBD's train_aug);
    training or evaluation transforms."""
    tf = train_transforms(cfg.crop_size, scale=cfg.scale, long_side=cfg.long_side, hflip=cfg.hflip,
                          color_jitter=cfg.color_jitter) if train else eval_transforms()
    mask_dir = str(Path(label_dir).resolve()) if label_dir is not None else true_mask_dir
    return VOCLayoutDataset(root, split, mask_dir=mask_dir, instance_dir=None, saliency_dir=None,
                            extra_dirs=None if train else "auto", transforms=tf, cache=cfg.cache_images)


def segmentation_step(model, batch, device) -> dict:
    """Per-pixel cross-entropy with 255 ignored (DeepLab's loss on (pseudo-)labels)."""
    images = batch["image"].to(device, non_blocking=True)
    target = batch["mask"].to(device, non_blocking=True).long()
    logits = model(images)
    return {"loss": F.cross_entropy(logits, target, ignore_index=255)}


def train_segmenter(cfg: SegStageConfig, train_ds, checkpoint_dir=None, num_classes: int | None = None):
    """Train with the shared engine; returns ``(model, history)`` (a finished checkpoint is reloaded)."""
    num_classes = num_classes or train_ds.num_classes
    engine.seed_everything(cfg.train.seed)
    model = build_model(cfg, num_classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    tcfg = cfg.train if checkpoint_dir is None else cfg.train.replace(checkpoint_dir=str(checkpoint_dir))
    history = engine.train(model, segmentation_step, train_ds, tcfg, collate_fn=collate_samples,
                           param_groups=lambda m: engine.unwrap(m).param_groups(cfg.lr_mult_new))
    model.eval()
    return model, history


def predict(model, dataset, cfg: SegStageConfig, device=None, progress: bool = False):
    """Yield ``(index, pred (H, W) int64)`` over a dataset with evaluation transforms, in order;
    multi-scale + flip, and dense CRF if ``cfg.crf`` (needs the ``crf`` extra). Runs on the calling
    process over the whole dataset (under torchrun: evaluate on rank 0)."""
    from ..data.transforms import denormalize

    same = (Path(dataset.root) / "toyscenes.json").is_file()

    def fn(m, batch, dev):
        probs = multiscale_predict(m, batch["image"].to(dev), cfg.eval_scales, cfg.eval_flip).cpu()
        out = []
        for k in range(probs.shape[0]):
            p = probs[k].numpy()
            if cfg.crf:
                p = dense_crf(denormalize(batch["image"][k]), p)
            out.append(p.argmax(0).astype(np.int64))
        return out

    results = engine.predict(model, dataset, fn, batch_size=32 if same else 1, device=device,
                             collate_fn=collate_samples, progress=progress, desc="segment", shard=False)
    i = 0
    for batch_preds in results:
        for p in batch_preds:
            yield i, p
            i += 1


def evaluate(model, dataset, cfg: SegStageConfig, context_pairs=None, device=None, progress: bool = False) -> dict:
    """mIoU etc. of the network's predictions against the dataset's masks (:class:`LabelMapEvaluator`)."""
    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    for i, pred in predict(model, dataset, cfg, device, progress):
        ev.update_from_sample(pred, dataset.get_raw(i))
    return ev.summary()


@dataclass
class SegResult:
    model: DeepLab
    checkpoint_dir: Path
    report: dict
    train_seconds: float
    history: engine.History | None = None


def segmenter_identity(cfg: SegStageConfig, label_dir=None) -> store.Identity:
    """The segmenter's identity: its config without the inference fields, and the label folder (file
    count, total size, absolute path; None = the true masks). Version 1 keeps the TrainConfig's run-only
    fields in the hash (it always did; dropping them would rename every existing checkpoint folder)."""
    labels = None
    if label_dir is not None:
        files = sorted(Path(label_dir).glob("*.png"))
        labels = {"labels": [len(files), sum(f.stat().st_size for f in files), str(Path(label_dir).resolve())]}
    return store.identity(STAGE, cfg, upstream=labels, version=FORMAT_VERSION, exclude=_INFERENCE_FIELDS,
                          keep_train_run_fields=True)


def checkpoint_dir_for(cfg: SegStageConfig, label_dir, out_dir) -> Path:
    """The folder :func:`run` trains into: ``out_dir/<backbone>-<head>-e<epochs>-seed<seed>-<fingerprint>``,
    fingerprinted by the config (without the run-time fields) and the label folder's content."""
    fp = segmenter_identity(cfg, label_dir).hash
    return Path(out_dir) / f"{cfg.backbone}-{cfg.head}-e{cfg.train.epochs}-seed{cfg.train.seed}-{fp}"


is_finished = engine.is_finished  # (comparison.py asks the stage)


def run(cfg: SegStageConfig, data, label_dir, out_dir, progress: bool = True) -> SegResult:
    """Train (or reload) a segmenter on ``label_dir`` (None = true masks) and evaluate it on the
    validation split; the report is cached in ``out_dir/report.json`` next to the checkpoint. The
    checkpoint folder is fingerprinted by the config and the label folder's content, so new
    pseudo-labels train a new network (:func:`checkpoint_dir_for`)."""
    with store.writing(out_dir, main=engine.is_main_process()):  # a lock; killed writers' half files swept
        return _run(cfg, data, label_dir, Path(out_dir), progress)


def _run(cfg: SegStageConfig, data, label_dir, out_dir, progress: bool = True) -> SegResult:
    ckpt = checkpoint_dir_for(cfg, label_dir, out_dir)
    if engine.is_main_process():
        ckpt.mkdir(parents=True, exist_ok=True)
        store.record_identity(ckpt, segmenter_identity(cfg, label_dir))  # read by `wsss status`
    train_ds = label_dataset(data.root, data.train_split, cfg, label_dir, train=True,
                             true_mask_dir=getattr(data, "mask_dir", "SegmentationClass"))
    val_ds = label_dataset(data.root, data.val_split, cfg, None, train=False)
    old = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    try:
        model, history = train_segmenter(cfg, train_ds, ckpt)
        seconds = float(sum(e["seconds"] for e in history.epochs))
        rpath = ckpt / "report.json"
        infer = {"eval_scales": list(cfg.eval_scales), "eval_flip": cfg.eval_flip, "crf": cfg.crf}
        if rpath.is_file():
            stored = json.loads(rpath.read_text())
            if stored.get("inference") == infer:
                return SegResult(model, ckpt, stored["report"], seconds, history)
        report = evaluate(model, val_ds, cfg, data.context_pairs, progress=progress)
    finally:
        torch.set_num_threads(old)
    store.atomic_write_json(rpath, {"inference": infer, "report": report}, default=float)
    return SegResult(model, ckpt, report, seconds, history)
