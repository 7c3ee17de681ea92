"""Box2Seg stage, training: the network of a setting, its training step (Box2Seg's losses), its
checkpoint folder, and the training itself.

:func:`build_model`, :func:`make_step` (B1–B6 of :mod:`wsss_core.losses_box2seg` at the configured
stride), :func:`data_identity` / :func:`checkpoint_dir_for` (the segmenter's fingerprinted folder;
:data:`STAGE`, :data:`FORMAT_VERSION`), :func:`train_segmenter` (one setting through the shared engine)
and :func:`classifier_backbone` (the initial backbone weights from notebook 01's CAM classifier).
Running settings end to end (train or reload, then score) is :func:`wsss_core.stages.box2seg.run_setting`.
Re-exported by :mod:`wsss_core.stages.box2seg`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from .. import engine
from .. import losses_box2seg as L
from ..models.segnet import SegNet, build_segnet
from . import store as result_store
from .box2seg_config import IGNORE, LossConfig, SegConfig
from .box2seg_targets import BoxSupervisionDataset, collate_boxes

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
# the backbone's initialisation: notebook 01's CAM classifier
# ------------------------------------------------------------------------------------------------
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
