"""A segmentation network on any backbone of :mod:`wsss_core.models.backbones`, with optional Box2Seg heads.

Box2Seg (Kulharia et al., ECCV 2020) puts three decoders on one UPerNet-style trunk (FPN + pyramid
pooling, ResNet-101): segmentation, per-class attention and pixel embeddings. No code was released; this
is *our reconstruction*, scaled for a CPU:

* **trunk**: the backbone's feature maps (finest first) → 1×1 lateral convolutions to ``channels`` →
  a small pyramid-pooling module (PPM: global average pooling and a 2×2 pooling of the coarsest map,
  as in UPerNet/PSPNet) added to the coarsest level → top-down path (upsample, add the next finer
  lateral) down to ``decoder_stride`` → one 3×3 conv-BN-ReLU. Output: shared features ``(B, D, h, w)``
  with ``h = H / decoder_stride``. Box2Seg's three separate decoders become three light heads on this
  one shared decoder (one decoder per head would triple the CPU time).
* **heads** (each a 3×3 conv-BN-ReLU to ``D/2`` channels, then a 1×1 conv):

  - ``seg``: ``(B, C + 1, h, w)`` logits, background at index 0 (the segmentation branch; the only
    one used at test time);
  - ``att``: ``(B, C, h, w)`` attention *logits*, one channel per foreground class; the attention is
    ``A_c = sigmoid(att_c)`` (:func:`wsss_core.losses_box2seg.attention_weighted_loss`);
  - ``emb``: ``(B, E, h, w)`` pixel embeddings, L2-normalised over the channels (unit vectors).

With ``attention=False, embedding=False`` it is a plain segmenter (reused for "one network on every
method's pseudo-labels", notebook 06).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SegNet", "build_segnet"]


def _cbr(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Head(nn.Sequential):
    def __init__(self, cin: int, hidden: int, cout: int, bias_init: float | None = None):
        super().__init__(_cbr(cin, hidden), nn.Conv2d(hidden, cout, 1))
        if bias_init is not None:
            nn.init.constant_(self[-1].bias, bias_init)


class SegNet(nn.Module):
    """Backbone + FPN/PPM decoder + segmentation head (+ optional attention and embedding heads).

    Parameters
    ----------
    backbone : nn.Module
        Returns an ordered dict of feature maps, finest first, last ``"out"``; exposes ``channels``
        and ``strides`` (every backbone of :mod:`wsss_core.models.backbones` does).
    num_classes : int
        Foreground classes C; the segmentation head has C + 1 outputs (0 = background).
    channels : int
        Decoder width D.
    decoder_stride : int
        Finest backbone stride the decoder goes down to (the output stride of every head); levels
        finer than this are not used.
    attention : bool
        Build the per-class attention head (Box2Seg).
    embedding : bool
        Build the embedding head (Box2Seg).
    embed_dim : int
        Embedding dimension E.
    ppm_bins : tuple of int
        Pyramid-pooling bins on the coarsest map (UPerNet uses 1, 2, 3, 6 on ResNet's 1/32 map;
        our 12×12 map takes 1 and 2).

    Notes
    -----
    ``forward(x)``: ``(B, 3, H, W)`` → dict with ``seg`` and, where built, ``att`` and ``emb``, all at
    ``(h, w) = (H, W) / decoder_stride`` (rounded up by the convolutions).
    ``segment(x)``: the segmentation logits upsampled bilinearly to ``(H, W)`` (test time).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, channels: int = 64, decoder_stride: int = 4,
                 attention: bool = False, embedding: bool = False, embed_dim: int = 16,
                 ppm_bins: Iterable[int] = (1, 2), att_bias_init: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        strides = dict(backbone.strides)
        chans = dict(backbone.channels)
        self.levels = [k for k in chans if strides[k] >= decoder_stride]
        if not self.levels or min(strides[k] for k in self.levels) != decoder_stride:
            raise ValueError(f"decoder_stride {decoder_stride} is not one of the backbone's strides {strides}")
        self.decoder_stride = int(decoder_stride)
        self.lateral = nn.ModuleDict({k: _cbr(chans[k], channels, 1) for k in self.levels})
        self.ppm_bins = tuple(int(b) for b in ppm_bins)
        top = self.levels[-1]
        self.ppm = nn.ModuleList([_cbr(chans[top], channels, 1) for _ in self.ppm_bins])
        self.fuse = _cbr(channels, channels, 3)
        hidden = max(channels // 2, 8)
        self.seg_head = _Head(channels, hidden, num_classes + 1)
        self.att_head = _Head(channels, hidden, num_classes, att_bias_init) if attention else None
        self.emb_head = _Head(channels, hidden, embed_dim) if embedding else None
        self.embed_dim = embed_dim if embedding else 0

    # ---------------------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Shared decoder features ``(B, D, h, w)`` at ``decoder_stride``."""
        feats = self.backbone(x)
        top_name = self.levels[-1]
        top = feats[top_name]
        y = self.lateral[top_name](top)
        for b, conv in zip(self.ppm_bins, self.ppm):
            pooled = conv(F.adaptive_avg_pool2d(top, b))
            y = y + F.interpolate(pooled, size=y.shape[-2:], mode="bilinear", align_corners=False)
        for name in reversed(self.levels[:-1]):
            lat = self.lateral[name](feats[name])
            y = lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(y)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.decode(x)
        out = {"seg": self.seg_head(f)}
        if self.att_head is not None:
            out["att"] = self.att_head(f)
        if self.emb_head is not None:
            out["emb"] = F.normalize(self.emb_head(f).float(), dim=1, eps=1e-6)
        return out

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, C + 1, H, W)`` at the input's size (the attention and embedding
        heads are not evaluated: Box2Seg drops them at test time)."""
        logits = self.seg_head(self.decode(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self, lr_mult_new: float = 1.0) -> list[dict]:
        """Backbone at 1× lr, decoder and heads at ``lr_mult_new``× (DeepLab: 10× for new layers
        on a pretrained backbone; 1× when everything trains from scratch)."""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in back}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [dict(params=back, lr_mult=1.0), dict(params=new, lr_mult=lr_mult_new)]


def build_segnet(backbone: str = "compact", backbone_kwargs: dict | None = None, num_classes: int = 6, **kw) -> SegNet:
    """:class:`SegNet` on :func:`wsss_core.models.backbones.build_backbone` ``(backbone, **backbone_kwargs)``."""
    from .backbones import build_backbone

    return SegNet(build_backbone(backbone, **(backbone_kwargs or {})), num_classes, **kw)
