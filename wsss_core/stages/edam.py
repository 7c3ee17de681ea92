"""The EDAM stage (Wu et al., CVPR 2021): pairs of images that share a class → EDAM network (DA layer +
collaborative multi-attention) → DA masks → pseudo-labels, with and without the saliency override.

One config object (:class:`EDAMStageConfig`), its presets (:func:`config_for_profile`: ``smoke``,
``tutorial``, ``paper``), and the steps that notebook ``03_edam`` runs one by one and :func:`run`
runs all at once (idempotent, like :func:`wsss_core.stages.cam.run`)::

    cam = cam_stage.run(cam_cfg, data, OUT_DIR / "01_class_activation_maps")   # reuses notebook 01
    pairs = pair_dataset(data.root, data.train_split, cfg)       # items = pairs sharing a class
    model, history = train_edam(cfg, pairs, ckpt, classifier=cam.model)
    ensure_masks(model, cam.train_dataset, mask_dir, cfg, ckpt.name)  # DA masks, .npz like the CAMs
    report = evaluate_masks(mask_dir, cam.train_dataset, cfg, data.context_pairs)   # threshold sweep
    sal = evaluate_with_saliency(mask_dir, saliency_dataset(data.root, data.train_split, cfg), cfg, ...)

Pairs come from :func:`sample_pairs`, a seeded sampler over the image labels (the official code reads
a precomputed list ``voc12/EDAM_train.txt`` of "image image common-class" lines instead; that file is
not in its repository). Masks are scored on the *training* split, the images the CAM stage scores,
with the same background rule (max-normalised maps, a constant threshold swept over
``cfg.thresholds``, the best one reported), so the figures of notebooks 01 and 03 compare directly.

The analysis that notebook ``03_edam`` and its study run on a trained model and its masks (pair
accuracy, precision–recall sweeps, map medians, where the cross-image attention looks, the
"salient and active" pseudo-label variant) lives in :mod:`wsss_core.stages.edam_analysis`; this module
re-exports it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import engine
from ._config import StageConfig
from ..cams import load_cams
from ..data.palette import write_label_png
from ..data.transforms import eval_transforms, train_transforms
from ..data.voc import VOCLayoutDataset, collate_samples
from ..evaluation import LabelMapEvaluator
from ..metrics import SaliencyStats
from ..models.backbones import build_backbone
from ..models.edam import EDAMNet, edam_loss, group_targets
from . import cam as cam_stage
from . import store
# the lesson's analysis lives in edam_analysis (which imports nothing from this module at run time);
# re-exported so that stages.edam.<name> (lessons, study, tests, grading paths) keeps naming the same object
from .edam_analysis import (ATTENTION_REGIONS, attention_report, map_medians, pair_accuracy,  # noqa: F401
                            recall_at_precision, region_fractions, salient_and_active_labels, sweep_curves)

NOTEBOOK = "03_edam"
"""The notebook (and OUT_DIR sub-folder) that owns this stage's artifacts."""

DEFAULT_THRESHOLDS = tuple(cam_stage.DEFAULT_THRESHOLDS) + (0.96, 0.97, 0.98, 0.99)
"""The CAM stage's sweep (0.05 … 0.95) extended to 0.99: the L2 normalisation makes DA masks saturate
(a pixel whose few activations all point to one class gets m_c ≈ 1), so their best constant
background lies higher than the CAMs' (the official ``eval.py --curve`` sweeps 0.40-0.58 on VOC)."""


@dataclass
class EDAMStageConfig(StageConfig):
    """Everything that defines the EDAM stage.

    Attributes
    ----------
    backbone, backbone_kwargs : see :func:`wsss_core.models.backbones.build_backbone`.
    init_from_classifier : start the backbone from the CAM classifier's trained backbone (EDAM starts
        from the ImageNet weights of its ResNet-38, as PSA's classifier does; our compact CNN has no
        pretrained weights, so the trained CAM classifier is the analogue). False: the backbone's own
        initialisation (random for the compact CNN, ImageNet for ``weights="imagenet"``).
    d_model, heads, ffn, layers, dropout : the CMA transformer (official 128, 2, 512, 1, 0.1).
    attn_dropout : dropout on the attention weights (official 0.1; the tutorial turns it off for speed).
    da_kernel : kernel of the DA conv (official 3).
    use_cma : False trains the ablation "EDAM without CMA" (GAP of the class-specific features).
    classes_per_pair : K, classes processed per pair; None = all C (official: 20 = all VOC classes).
        With K < C the present classes come first, absent ones fill up (official truncation rule);
        DDP then needs ``train.find_unused_parameters=True``.
    max_positions : positional table size (≥ h·w of a training crop's feature grid).
    lr_mult_new : learning-rate multiplier of the new layers (DA conv, reduction, classifiers; official 10×).
    crop_size, scale, long_side, hflip, color_jitter : training augmentation, applied to each image of
        a pair independently (official: resize-long 256–512, flip, jitter 0.3/0.3/0.3/0.1, crop 368).
    train : the engine's :class:`~wsss_core.engine.TrainConfig` (``batch_size`` = pairs per step).
    mask_scales, mask_flip, mask_batch_size : DA-mask inference (official: scales 1, 0.5, 1.5, 2 and flips).
    thresholds : the background thresholds of the sweep (as for CAMs).
    saliency_dir : folder of the saliency maps for the override (toy: ``Saliency``, the detector
        stand-in; VOC: PoolNet's maps, which the user must put there).
    sal_theta, sal_alpha, sal_beta : the official override (``infer_cls.py`` / ``eval.py``,
        README: ``--theta 0.2 --alpha 0.000001 --beta 0.99999``): background where the 0–255
        saliency ≤ θ·100; class scores < α never win, scores > β always win.
    cache_images : keep decoded images in memory (toy data).
    """

    backbone: str = "compact"
    backbone_kwargs: dict = field(default_factory=lambda: {"width": 32, "output_stride": 8})
    init_from_classifier: bool = True
    d_model: int = 32
    heads: int = 2
    ffn: int = 128
    layers: int = 1
    dropout: float = 0.1
    attn_dropout: float = 0.0
    da_kernel: int = 3
    use_cma: bool = True
    classes_per_pair: int | None = None
    max_positions: int = 4096
    lr_mult_new: float = 1.0
    crop_size: int = 96
    scale: tuple | None = (0.9, 1.1)
    long_side: tuple | None = None
    hflip: bool = True
    color_jitter: tuple | None = None
    train: engine.TrainConfig = field(default_factory=lambda: engine.TrainConfig(
        epochs=4, batch_size=16, lr=1e-3, optimizer="adam", schedule="onecycle", weight_decay=1e-4, desc="edam"))
    mask_scales: tuple = (1.0,)
    mask_flip: bool = True
    mask_batch_size: int = 32
    thresholds: tuple = DEFAULT_THRESHOLDS
    saliency_dir: str = "Saliency"
    sal_theta: float = 0.2
    sal_alpha: float = 1e-6
    sal_beta: float = 0.99999
    cache_images: bool = True

    # the CAM stage's helpers read these names
    @property
    def cam_scales(self) -> tuple:
        return self.mask_scales

    @property
    def cam_flip(self) -> bool:
        return self.mask_flip

    @property
    def cam_batch_size(self) -> int:
        return self.mask_batch_size


def config_for_profile(profile: str) -> EDAMStageConfig:
    """:class:`EDAMStageConfig` preset (the pattern of :func:`wsss_core.profiles.cam_config`).

    * ``smoke``: a narrow transformer (d = 16, FFN 32), 4 steps of 8 pairs, single-scale masks —
      proves the code path in seconds.
    * ``tutorial``: the CAM stage's compact CNN (stride 8: 12 × 12 tokens per image, 288 per class
      and pair) initialised from the CAM classifier, a CMA of d = 32, 2 heads, FFN 128, one layer per
      class, dropout 0.1 but none on the attention weights (on a CPU that dropout costs as much as
      the rest of the block: PyTorch's fused attention kernel has none); Adam with a one-cycle
      schedule (the CAM classifier's recipe), 16 pairs per step, 4 epochs (8 000 image views; the
      logits' sign accuracy passes 0.99 by the third). Masks at scale 1 + flip, like the tutorial
      CAMs (on 96-px scenes the four scales did not help the CAMs; notebook 01).
    * ``paper``: the official recipe (README + ``train_EDAM_cls.py``) with torchvision's ResNet-50
      at output stride 8 (46 × 46 tokens at crop 368, as ResNet-38's) in place of ResNet-38, ImageNet
      weights, frozen BN and stem/layer1 (official: conv1a and b2 frozen); d = 128, 2 heads,
      FFN 512, 1 layer, dropout 0.1; resize-long 256–512, flip, colour jitter (0.3, 0.3, 0.3, 0.1),
      crop 368; SGD with momentum 0.9 (EDAM's ``PolyOptimizer`` passes it by keyword, unlike
      PSA's), lr 1e-3, new layers 10×, weight decay 5e-4, 2000 iterations of linear warm-up from
      0.1×, poly 0.9; 4 pairs per step. Epochs: the official single pass over its pair list equals
      25 VOC epochs of images; one of our epochs pairs every image once (2 images per pair), so
      13 epochs ≈ 26 image epochs. Masks at scales 1, 0.5, 1.5, 2 with flips; the PoolNet saliency
      maps go in ``Saliency/``.
    """
    from ..profiles import check_profile

    check_profile(profile)
    if profile == "smoke":
        return EDAMStageConfig(
            d_model=16, ffn=32,
            train=engine.TrainConfig(epochs=1, batch_size=8, lr=1e-3, optimizer="adam", schedule="onecycle",
                                     max_iters_per_epoch=4, desc="edam"),
            mask_batch_size=16)
    if profile in ("tutorial", "study"):
        return EDAMStageConfig()
    return EDAMStageConfig(
        backbone="resnet50",
        backbone_kwargs={"output_stride": 8, "weights": "imagenet", "freeze_bn": True, "frozen_stages": 1},
        init_from_classifier=False, d_model=128, heads=2, ffn=512, layers=1, dropout=0.1, attn_dropout=0.1, da_kernel=3,
        lr_mult_new=10.0, crop_size=368, scale=None, long_side=(256, 512), hflip=True,
        color_jitter=(0.3, 0.3, 0.3, 0.1),
        train=engine.TrainConfig(epochs=13, batch_size=4, lr=1e-3, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                                 schedule="poly", poly_power=0.9, warmup_iters=2000, num_workers=4, desc="edam"),
        mask_scales=(1.0, 0.5, 1.5, 2.0), mask_batch_size=1, cache_images=False)


# ------------------------------------------------------------------------------------------------
# pairs
# ------------------------------------------------------------------------------------------------

def _rng(seed, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**32] + [int(k) for k in keys])


def sample_pairs(labels, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """Pairs of images that share a class, drawn from the image labels alone.

    Every image with at least one class that another image also has is an *anchor* once, in index
    order: one of its classes ``c`` is drawn uniformly among those shared with some other image, and
    its partner uniformly among the other images labelled ``c``. The draw is a function of
    ``(seed, epoch)`` only.

    Parameters
    ----------
    labels : (N, C) multi-hot (numpy or torch), e.g. ``VOCLayoutDataset.image_labels()``.
    seed, epoch : the random draw (a new epoch gives new partners).

    Returns
    -------
    (M, 3) int64
        ``[anchor, partner, common class (0-based)]`` rows; ``M`` (the number of anchors) does not
        depend on the seed.

    Raises
    ------
    ValueError
        If ``labels`` is not 2-D, or no two images share a class.
    """
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels) > 0.5
    if lab.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {lab.shape}")
    members = [np.flatnonzero(lab[:, c]) for c in range(lab.shape[1])]
    shareable = np.array([len(m) >= 2 for m in members], bool)
    rng = _rng(seed, epoch)
    rows = []
    for i in range(lab.shape[0]):
        classes = np.flatnonzero(lab[i] & shareable)
        if classes.size == 0:
            continue
        c = int(classes[rng.integers(classes.size)])
        others = members[c][members[c] != i]
        rows.append((i, int(others[rng.integers(others.size)]), c))
    if not rows:
        raise ValueError("no two images share a class: EDAM's pairs cannot be formed")
    return np.asarray(rows, np.int64)


def pair_class_list(label_a, label_b, k: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """The classes a pair's transformers process (official ``VOC12EDAMClsDataset``): the classes
    present in either image in index order, truncated to ``k``, then absent classes in random order
    up to ``k``. ``k=None`` means all C classes (the official 20 for VOC).

    Returns ``(k,)`` int64, all distinct.
    """
    a, b = np.asarray(label_a) > 0.5, np.asarray(label_b) > 0.5
    C = a.shape[0]
    k = C if k is None else int(k)
    if not 1 <= k <= C:
        raise ValueError(f"classes_per_pair must lie in 1..{C}, got {k}")
    present = list(np.flatnonzero(a | b))
    absent = np.flatnonzero(~(a | b))
    absent = list(absent[(rng or np.random.default_rng(0)).permutation(absent.size)])
    return np.asarray((present[:k] + absent)[:k], np.int64)


class EDAMPairDataset(torch.utils.data.Dataset):
    """A dataset whose items are *pairs* of images sharing a class, for :func:`wsss_core.engine.train`.

    Parameters
    ----------
    base : :class:`~wsss_core.data.voc.VOCLayoutDataset` with training transforms (each image of a pair
        is augmented independently, as in the official loader).
    seed : seeds :func:`sample_pairs` and the class lists.
    classes_per_pair : see :func:`pair_class_list`.

    Item ``k``: ``{"id": "a|b", "image": (2, 3, h, w), "label": (2, C), "class_idx": (K,) int64,
    "common": () int64, "index": (2,) int64}``; :func:`wsss_core.data.voc.collate_samples` stacks them
    into ``(P, 2, 3, h, w)`` etc. :meth:`set_epoch` draws the epoch's pairs (``PairEpochs`` calls it
    from the training loop, so a resumed run sees the same pairs as an uninterrupted one).
    """

    def __init__(self, base, seed: int = 0, classes_per_pair: int | None = None):
        self.base = base
        self.seed = int(seed)
        self.classes_per_pair = classes_per_pair
        self.labels = base.image_labels().numpy()
        self.num_classes = base.num_classes
        self.class_names = base.class_names
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        self.epoch = int(epoch)
        self.pairs = sample_pairs(self.labels, self.seed, self.epoch)
        rng = _rng(self.seed, self.epoch, 1)
        self.class_lists = np.stack([pair_class_list(self.labels[a], self.labels[b], self.classes_per_pair, rng)
                                     for a, b, _ in self.pairs])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        a, b, c = (int(v) for v in self.pairs[k])
        sa, sb = self.base[a], self.base[b]
        return {"id": f"{sa['id']}|{sb['id']}",
                "image": torch.stack([sa["image"].as_subclass(torch.Tensor), sb["image"].as_subclass(torch.Tensor)]),
                "label": torch.stack([sa["label"], sb["label"]]),
                "class_idx": torch.from_numpy(self.class_lists[k].copy()),
                "common": torch.tensor(c),
                "index": torch.tensor([a, b])}


class PairEpochs:
    """Engine callback: ``dataset.set_epoch(epoch)`` at the start of every epoch."""

    def __init__(self, dataset: EDAMPairDataset):
        self.dataset = dataset

    def on_epoch_start(self, state) -> None:
        self.dataset.set_epoch(state.epoch)


def pair_dataset(root, split: str, cfg: EDAMStageConfig, train: bool = True, seed: int | None = None,
                 **kw) -> EDAMPairDataset:
    """Pairs of the split's images (images and labels only) with training transforms, or with
    evaluation transforms (``train=False``: whole images, for validation and for looking at the
    attention; photos of different sizes are resized to ``crop_size × crop_size`` so that a pair
    stacks). ``seed`` defaults to ``cfg.train.seed``."""
    from ..data.voc import resolve_voc_root

    if train:
        tf = train_transforms(cfg.crop_size, scale=cfg.scale, long_side=cfg.long_side, hflip=cfg.hflip,
                              color_jitter=cfg.color_jitter)
    else:
        same_size = (resolve_voc_root(root) / "toyscenes.json").is_file()   # the toy scenes share one size
        tf = eval_transforms() if same_size else eval_transforms(size=(cfg.crop_size, cfg.crop_size))
    base = VOCLayoutDataset(root, split, mask_dir=None, instance_dir=None, saliency_dir=None, extra_dirs=None,
                            transforms=tf, cache=cfg.cache_images, **kw)
    return EDAMPairDataset(base, seed=cfg.train.seed if seed is None else seed, classes_per_pair=cfg.classes_per_pair)


# ------------------------------------------------------------------------------------------------
# model and training
# ------------------------------------------------------------------------------------------------

def build_model(cfg: EDAMStageConfig, num_classes: int) -> EDAMNet:
    return EDAMNet(build_backbone(cfg.backbone, **cfg.backbone_kwargs), num_classes, d_model=cfg.d_model,
                   heads=cfg.heads, ffn=cfg.ffn, layers=cfg.layers, dropout=cfg.dropout, da_kernel=cfg.da_kernel,
                   group_size=2, use_cma=cfg.use_cma, max_positions=cfg.max_positions, attn_dropout=cfg.attn_dropout)


def edam_step(model, batch, device) -> dict:
    """One training step: BCE-with-logits of the ``(P, 2, K)`` logits against the image labels
    (:func:`wsss_core.models.edam.edam_loss`); also logs the logits' sign accuracy."""
    images = batch["image"].to(device, non_blocking=True)
    class_idx = batch["class_idx"].to(device, non_blocking=True)
    targets = group_targets(batch["label"].to(device, non_blocking=True), class_idx)
    logits = model(images, class_idx)
    return {"loss": edam_loss(logits, targets), "acc": ((logits.detach() > 0) == (targets > 0.5)).float().mean()}


def train_edam(cfg: EDAMStageConfig, pairs: EDAMPairDataset, checkpoint_dir=None, classifier=None):
    """Train EDAM (or, with ``cfg.use_cma=False``, its ablation) with the shared engine.

    ``classifier``: the CAM classifier whose backbone initialises EDAM's when
    ``cfg.init_from_classifier``. With ``checkpoint_dir`` a finished run is reloaded instead of
    retrained. Returns ``(model in eval mode, history)``.
    """
    engine.seed_everything(cfg.train.seed)
    model = build_model(cfg, pairs.num_classes)
    if cfg.init_from_classifier:
        if classifier is None:
            raise ValueError("cfg.init_from_classifier=True needs the CAM classifier (classifier=...)")
        model.backbone.load_state_dict(engine.unwrap(classifier).backbone.state_dict())
    tcfg = cfg.train if checkpoint_dir is None else cfg.train.replace(checkpoint_dir=str(checkpoint_dir))
    history = engine.train(model, edam_step, pairs, tcfg, collate_fn=collate_samples,
                           param_groups=lambda m: engine.unwrap(m).param_groups(cfg.lr_mult_new),
                           callbacks=[PairEpochs(pairs)])
    model.eval()
    return model, history


_INFERENCE_FIELDS = {"mask_scales", "mask_flip", "mask_batch_size", "thresholds", "saliency_dir", "sal_theta",
                     "sal_alpha", "sal_beta", "cache_images"}
STAGE = "edam"
FORMAT_VERSION = 1


def edam_identity(cfg: EDAMStageConfig, classifier_name: str = "", data=None) -> store.Identity:
    """EDAM's identity: its config without inference- and run-only fields, the CAM classifier it
    starts from (when ``init_from_classifier``) and the data set."""
    return store.identity(STAGE, cfg, data=data,
                          upstream={"classifier": classifier_name if cfg.init_from_classifier else ""},
                          version=FORMAT_VERSION, exclude=_INFERENCE_FIELDS)


def checkpoint_dir_for(cfg: EDAMStageConfig, out_dir, classifier_name: str = "", data=None) -> Path:
    """``out_dir/edam/<cma|nocma>-<backbone>-e<epochs>-seed<seed>-<fingerprint>``; the fingerprint
    covers everything that changes the trained weights (model, augmentation, optimiser, the CAM
    classifier it starts from, the data set's config)."""
    fp = edam_identity(cfg, classifier_name, data).hash
    name = f"{'cma' if cfg.use_cma else 'nocma'}-{cfg.backbone}-e{cfg.train.epochs}-seed{cfg.train.seed}-{fp}"
    return Path(out_dir) / "edam" / name


# ------------------------------------------------------------------------------------------------
# masks and pseudo-labels
# ------------------------------------------------------------------------------------------------

def ensure_masks(model: EDAMNet, dataset, mask_dir, cfg: EDAMStageConfig, model_name: str,
                 progress: bool = True) -> tuple[float, bool]:
    """DA masks of every image of ``dataset`` (evaluation view) in ``mask_dir/<id>.npz``, made the way
    CAMs are (:func:`wsss_core.cams.multiscale_cams` through ``EDAMNet.cam``: scales and flips
    summed, present classes only, divided by their maximum; official ``infer_cls.py``) and stored
    with :func:`wsss_core.cams.save_cams`. Reused when ``mask_dir/source.json`` names the same model,
    split and scales. Returns ``(seconds it took, reused?)``."""
    return cam_stage.ensure_cams(model, dataset, mask_dir, cfg, model_name, progress=progress)


def evaluate_masks(mask_dir, dataset, cfg: EDAMStageConfig, context_pairs=None, threshold: float | None = None,
                   progress: bool = False) -> dict:
    """The CAM stage's evaluation on DA masks (:func:`wsss_core.stages.cam.evaluate_cams`): threshold
    sweep, then every measure at the best threshold (an oracle choice, as for the CAMs)."""
    return cam_stage.evaluate_cams(mask_dir, dataset, cfg, context_pairs, threshold=threshold, progress=progress)


def saliency_override(masks, label, saliency, theta: float = 0.2, alpha: float = 1e-6, beta: float = 0.99999) -> np.ndarray:
    """EDAM's pseudo-label with a saliency map (official ``infer_cls.py`` / ``eval.py`` with
    ``--sal_path``):

    * scores ``M_c`` of the present classes (absent classes and background start at 0);
    * scores ``< alpha`` become −2 (they can never win), scores ``> beta`` become 2 (they always win);
    * background score = 1 where the 8-bit saliency ``≤ theta · 100`` (θ = 0.2 ⇒ ≤ 20 of 255), else 0;
    * arg-max over ``[background, M_1 … M_C]`` (ties → the lower index, i.e. background).

    So the saliency map decides *where* the foreground is and the masks decide *which* present
    class it is; a pixel that no present class activates at all stays background.

    Parameters
    ----------
    masks : (C, H, W) float in [0, 1] (max-normalised; absent classes are ignored).
    label : (C,) multi-hot.
    saliency : (H, W) float in [0, 1] (read from an 8-bit PNG) or uint8.
    theta, alpha, beta : the official knobs (README: 0.2, 1e-6, 0.99999).

    Returns
    -------
    (H, W) int64 in 0..C.
    """
    m = np.asarray(masks, np.float32)
    lab = np.asarray(label).astype(bool)
    sal = np.asarray(saliency)
    if m.ndim != 3 or lab.shape != (m.shape[0],) or sal.shape != m.shape[1:]:
        raise ValueError(f"masks (C, H, W) {m.shape}, label (C,) {lab.shape} and saliency (H, W) {sal.shape} disagree")
    sal255 = sal.astype(np.float64) if sal.dtype == np.uint8 else np.rint(np.clip(sal, 0, 1) * 255.0)
    scores = np.zeros((m.shape[0] + 1,) + m.shape[1:], np.float32)
    scores[1:][lab] = m[lab]
    scores = np.where(scores < alpha, -2.0, scores)
    scores = np.where(scores > beta, 2.0, scores)
    scores[0] = (sal255 <= theta * 100.0).astype(np.float32)
    return scores.argmax(0).astype(np.int64)


def saliency_dataset(root, split: str, cfg: EDAMStageConfig, **kw) -> VOCLayoutDataset:
    """Evaluation view of a split with masks, part/context masks and the saliency maps of
    ``cfg.saliency_dir`` (raises :class:`~wsss_core.data.palette.DatasetError` if that folder is absent)."""
    return VOCLayoutDataset(root, split, saliency_dir=cfg.saliency_dir, instance_dir=None,
                            transforms=eval_transforms(), cache=cfg.cache_images, **kw)


def has_saliency(root, cfg: EDAMStageConfig) -> bool:
    """Whether ``cfg.saliency_dir`` exists under the dataset root."""
    from ..data.voc import resolve_voc_root

    return (resolve_voc_root(root) / cfg.saliency_dir).is_dir()


def evaluate_with_saliency(mask_dir, dataset, cfg: EDAMStageConfig, context_pairs=None, progress: bool = False) -> dict:
    """Score :func:`saliency_override` pseudo-labels (masks from ``mask_dir``, saliency from
    ``dataset``, see :func:`saliency_dataset`) and the saliency map itself on the same images.

    Returns ``LabelMapEvaluator.summary()`` plus ``"saliency"``: ``mae``, ``max_f`` (F_β², β² = 0.3,
    :class:`wsss_core.metrics.SaliencyStats`, object pixels of the ground truth as the salient
    region) and ``precision`` / ``recall`` of the binary map the override uses (saliency > θ·100/255).
    """
    from tqdm.auto import tqdm

    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    stats = SaliencyStats()
    tp = fp = fn = 0
    for i in tqdm(range(len(dataset)), desc="saliency override", disable=not progress):
        raw = dataset.get_raw(i)
        if "saliency" not in raw:
            raise ValueError(f"{raw['id']}: the dataset has no saliency maps (saliency_dir={cfg.saliency_dir!r})")
        masks, label = load_cams(Path(mask_dir) / f"{raw['id']}.npz")
        ev.update_from_sample(saliency_override(masks, label, raw["saliency"], cfg.sal_theta, cfg.sal_alpha,
                                                cfg.sal_beta), raw)
        gt = raw["mask"]
        obj = (gt > 0) & (gt != 255)
        stats.update(raw["saliency"], obj)
        sal_fg = (np.rint(raw["saliency"] * 255.0) > cfg.sal_theta * 100.0) & (gt != 255)
        tp += int((sal_fg & obj).sum())
        fp += int((sal_fg & ~obj).sum())
        fn += int((~sal_fg & obj).sum())
    out = ev.summary()
    out["saliency"] = {**stats.value, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
                       "theta_255": cfg.sal_theta * 100.0}
    return out


def save_pseudo_labels(mask_dir, dataset, out_dir, threshold: float | None = None, cfg: EDAMStageConfig | None = None,
                       progress: bool = True) -> Path:
    """Write each image's pseudo-label as a VOC palette PNG ``out_dir/<id>.png``: masks with a
    constant background ``threshold``, or (``threshold=None``) :func:`saliency_override` with ``cfg``'s
    knobs (``dataset`` must then carry saliency maps)."""
    from tqdm.auto import tqdm

    if threshold is not None:
        return cam_stage.save_pseudo_labels(mask_dir, dataset, out_dir, threshold=threshold, progress=progress)
    if cfg is None:
        raise ValueError("the saliency override needs cfg (its theta / alpha / beta)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(dataset)), desc="pseudo-labels (saliency)", disable=not progress):
        raw = dataset.get_raw(i)
        masks, label = load_cams(Path(mask_dir) / f"{raw['id']}.npz")
        write_label_png(out_dir / f"{raw['id']}.png",
                        saliency_override(masks, label, raw["saliency"], cfg.sal_theta, cfg.sal_alpha, cfg.sal_beta))
    return out_dir


# ------------------------------------------------------------------------------------------------
# the whole stage, idempotent
# ------------------------------------------------------------------------------------------------

def write_report(out_dir, source: str, cfg: EDAMStageConfig, report: dict, sal_report: dict | None,
                 tag: str = "") -> Path:
    """Store the evaluation of the masks in ``out_dir/edam_report<tag>.json`` (``source`` = the
    checkpoint folder's name), so that :func:`run` (notebook 06) reuses it instead of re-scoring.
    The notebook writes it too. Returns the path."""
    path = Path(out_dir) / f"edam_report{tag}.json"
    cam_stage.write_metrics(path, {"source": source, "sal_theta": cfg.sal_theta,
                                   "thresholds": [round(float(t), 6) for t in cfg.thresholds],
                                   "report": report, "sal_report": sal_report})
    return path


def read_report(out_dir, source: str, cfg: EDAMStageConfig, tag: str = ""):
    """``(report, sal_report)`` from :func:`write_report`'s file if it was written for the same
    checkpoint, saliency threshold and sweep; otherwise None."""
    path = Path(out_dir) / f"edam_report{tag}.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if (stored.get("source") != source or stored.get("sal_theta") != cfg.sal_theta
            or stored.get("thresholds") != [round(float(t), 6) for t in cfg.thresholds]):
        return None
    return stored["report"], stored.get("sal_report")


@dataclass
class EDAMStageResult:
    """What :func:`run` leaves behind (paths under ``out_dir``)."""

    model: EDAMNet
    cfg: EDAMStageConfig
    checkpoint_dir: Path
    mask_dir: Path
    label_dir: Path
    sal_label_dir: Path | None
    report: dict
    sal_report: dict | None
    cam: "cam_stage.CAMStageResult"


def run(cfg: EDAMStageConfig, data, out_dir, cam_cfg=None, cam_result=None, progress: bool = True,
        tag: str = "") -> EDAMStageResult:
    """The whole stage, reusing what is already under ``out_dir`` (normally ``OUT_DIR/03_edam``) and
    the CAM stage under ``out_dir.parent / 01_class_activation_maps``:

    CAM stage (reused or made) → pairs → EDAM (reloaded if finished; backbone from the CAM classifier
    when ``cfg.init_from_classifier``) → DA masks of the training split (``masks<tag>/``) → threshold
    sweep → pseudo-labels at the best threshold (``pseudo_labels<tag>/``) and, where the dataset has
    saliency maps, with the saliency override (``pseudo_labels_sal<tag>/``) → ``edam_report<tag>.json``.
    ``tag`` keeps variants apart (the notebook's ablation uses ``"_no_cma"``).
    """
    with store.writing(out_dir, main=engine.is_main_process()):  # a lock; killed writers' half files swept
        return _run(cfg, data, Path(out_dir), cam_cfg, cam_result, progress, tag)


def _run(cfg: EDAMStageConfig, data, out_dir, cam_cfg=None, cam_result=None, progress: bool = True,
         tag: str = "") -> EDAMStageResult:
    out_dir = Path(out_dir)
    if cam_result is None:
        if cam_cfg is None:
            raise ValueError("give cam_cfg (profiles.cam_config(profile)) or cam_result")
        cam_result = cam_stage.run(cam_cfg, data, out_dir.parent / cam_stage.NOTEBOOK, progress=progress)
    ev = cam_result.train_dataset
    ckpt = checkpoint_dir_for(cfg, out_dir, cam_result.checkpoint_dir.name, data)
    pairs = pair_dataset(data.root, data.train_split, cfg)
    model, _ = train_edam(cfg, pairs, ckpt, classifier=cam_result.model)
    if engine.is_main_process():
        store.record_identity(ckpt, edam_identity(cfg, cam_result.checkpoint_dir.name, data))
    mask_dir, label_dir = out_dir / f"masks{tag}", out_dir / f"pseudo_labels{tag}"
    ensure_masks(model, ev, mask_dir, cfg, ckpt.name, progress=progress)
    sal_ok = has_saliency(data.root, cfg)
    sal_label_dir = out_dir / f"pseudo_labels_sal{tag}" if sal_ok else None
    stored = read_report(out_dir, ckpt.name, cfg, tag)
    if stored is not None:
        report, sal_report = stored
    else:
        report = evaluate_masks(mask_dir, ev, cfg, data.context_pairs)
        sal_report = None
        if sal_ok:
            sal_report = evaluate_with_saliency(mask_dir, saliency_dataset(data.root, data.train_split, cfg,
                                                                            mask_dir=data.mask_dir),
                                                cfg, data.context_pairs)
        for d in (label_dir, sal_label_dir):
            if d is not None:
                for p in d.glob("*.png"):
                    p.unlink()
        write_report(out_dir, ckpt.name, cfg, report, sal_report, tag)
        report, sal_report = read_report(out_dir, ckpt.name, cfg, tag)  # as stored (rounded): what a rerun reads
    if len(list(label_dir.glob("*.png"))) != len(ev):
        save_pseudo_labels(mask_dir, ev, label_dir, threshold=report["best_threshold"], progress=progress)
    if sal_label_dir is not None and len(list(sal_label_dir.glob("*.png"))) != len(ev):
        save_pseudo_labels(mask_dir, saliency_dataset(data.root, data.train_split, cfg, mask_dir=data.mask_dir),
                           sal_label_dir, threshold=None, cfg=cfg, progress=progress)
    return EDAMStageResult(model, cfg, ckpt, mask_dir, label_dir, sal_label_dir, report, sal_report, cam_result)
