"""Box2Seg stage, configuration: the settings, their loss switches and the profile presets.

:class:`LossConfig` (which Box2Seg terms are on), :class:`SegConfig` (network, augmentation, schedule),
:class:`RealDataConfig` (the real-photo part), :class:`Box2SegStageConfig` (all of notebook 04),
:func:`setting` (a named setting → ``(target, LossConfig)``; the settings table is in the docstring of
:mod:`wsss_core.stages.box2seg`) and :func:`config_for_profile` (the presets). Nothing here touches data
or trains anything; every other ``box2seg_*`` module builds on these. Import them from
:mod:`wsss_core.stages.box2seg`, which re-exports them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .. import engine
from ..boxes import GrabCutConfig
from ._config import StageConfig

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
    settings : the settings to run (see the table in :mod:`wsss_core.stages.box2seg`; ``box2seg_no_awl`` and
        ``mask_ce`` exist but are left out of the presets to keep the notebook's training time down).
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
    """``(target, LossConfig)`` of a named setting (the table in :mod:`wsss_core.stages.box2seg`'s docstring)."""
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
