"""AffinityNet (Ahn & Kwak, CVPR 2018): features whose L1 distances say which pixels belong together.

The official network (``network/resnet38_aff.py``) takes three levels of a ResNet-38 (``conv4``
512 ch, ``conv5`` 1024 ch, ``conv6`` 4096 ch, all at stride 8 thanks to dilation), reduces each with
a 1×1 convolution (64, 128, 256 channels, no bias) followed by ELU, concatenates them (448 ch) and
mixes them with another 1×1 convolution (448 → 448, no bias) and ELU. Initialisation: Kaiming-normal
for the three reductions, Xavier-uniform with gain 4 for the last layer. The affinity of two positions
is ``exp(−mean_d |f_i − f_j|)`` (:func:`wsss_core.affinity.local_affinities`).

:class:`AffinityNet` is that head on any backbone of :mod:`wsss_core.models.backbones` (the last
``len(level_channels)`` levels of its feature dict). Levels whose stride differs from
``feature_stride`` are resampled to it — finer ones average-pooled, coarser ones bilinearly
upsampled — so the head can predict at stride 4 from a stride-8 backbone (IRN predicts its
affinities at stride 4). With a :class:`~wsss_core.models.backbones.CompactCNN` of
``output_stride=4`` (dilated last stage) every level is natively at stride 4 or finer, the analogue
of PSA's dilated ResNet-38.

PSA initialises the backbone with the ImageNet weights the CAM classifier also started from. Our
compact CNN is trained from scratch, so the faithful analogue is to start from the CAM classifier's
trained backbone: :meth:`AffinityNet.load_backbone_from`. The weights of a stride-8 CompactCNN fit a
stride-4 one (same shapes; only the stride and dilation of the last stage differ).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..affinity import local_affinities

__all__ = ["AffinityNet"]


class AffinityNet(nn.Module):
    """Backbone + multi-level 1×1 reductions + 1×1 fusion → affinity features.

    Parameters
    ----------
    backbone : nn.Module
        Returns an ordered dict of features (finest first, last ``"out"``) and has ``channels`` and
        ``strides`` dicts (see :mod:`wsss_core.models.backbones`).
    level_channels : sequence of int
        Output channels of the 1×1 reduction of each used level; the *last* ``len(level_channels)``
        levels of the backbone are used (PSA: (64, 128, 256) on conv4, conv5, conv6).
    embed_dim : int, optional
        Channels of the fused features (PSA: 448 = the concatenation's width; the default).
    feature_stride : int
        Stride of the output grid (PSA 8; IRN 4). Levels are pooled / upsampled to it.
    levels : sequence of str, optional
        Names of the backbone levels to use, one per entry of ``level_channels`` (default: the last
        ``len(level_channels)`` levels, as PSA). ``("s2", "s4")`` keeps only the shallow levels of a
        :class:`~wsss_core.models.backbones.CompactCNN` (receptive field 19 px), which cannot see the
        class badge and so cannot copy the CAM's blob (see ``stages/affinity.py``).
    frozen_backbone : bool
        Keep the backbone fixed (IRN detaches its whole backbone and keeps it in eval mode; PSA
        fine-tunes all but its first blocks): no gradients, BatchNorm statistics frozen, only the
        1×1 layers learn — several times cheaper to train on a CPU.

    Shapes
    ------
    ``forward(x)``: (B, 3, H, W) → features (B, embed_dim, ⌈H/s⌉, ⌈W/s⌉) (for H, W multiples of s).
    ``affinities(x, radius)``: → (B, K, h, w) :func:`wsss_core.affinity.local_affinities`.
    """

    def __init__(self, backbone: nn.Module, level_channels: Sequence[int] = (64, 128, 256),
                 embed_dim: int | None = None, feature_stride: int = 8, frozen_backbone: bool = False,
                 levels: Sequence[str] | None = None):
        super().__init__()
        names = list(backbone.channels)
        if not 1 <= len(level_channels) <= len(names):
            raise ValueError(f"level_channels has {len(level_channels)} entries but the backbone has levels {names}")
        if levels is not None:
            levels = list(levels)
            unknown = [n for n in levels if n not in names]
            if unknown or len(levels) != len(level_channels):
                raise ValueError(f"levels {levels} must be {len(level_channels)} names among the backbone's {names}")
        self.backbone = backbone
        self.levels = levels if levels is not None else names[-len(level_channels):]
        self.level_strides = [int(backbone.strides[n]) for n in self.levels]
        self.feature_stride = int(feature_stride)
        self.frozen_backbone = bool(frozen_backbone)
        if self.frozen_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        if self.feature_stride < min(self.level_strides):
            raise ValueError(f"feature_stride {feature_stride} is finer than every used level {self.level_strides}")
        self.reductions = nn.ModuleList(
            nn.Conv2d(backbone.channels[n], int(c), 1, bias=False) for n, c in zip(self.levels, level_channels))
        cat = int(sum(level_channels))
        self.embed_dim = int(embed_dim or cat)
        self.fuse = nn.Conv2d(cat, self.embed_dim, 1, bias=False)
        for m in self.reductions:
            nn.init.kaiming_normal_(m.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)

    def _resample(self, f: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
        if stride < self.feature_stride:
            k = self.feature_stride // stride
            f = F.avg_pool2d(f, k, k, ceil_mode=True)
        if tuple(f.shape[-2:]) != tuple(size):
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        return f

    def train(self, mode: bool = True) -> "AffinityNet":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()  # BatchNorm keeps its statistics (IRN's FixedBatchNorm / eval mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_backbone:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        H, W = x.shape[-2:]
        size = (-(-H // self.feature_stride), -(-W // self.feature_stride))
        outs = [F.elu(red(self._resample(feats[n], s, size)))
                for n, s, red in zip(self.levels, self.level_strides, self.reductions)]
        return F.elu(self.fuse(torch.cat(outs, 1)))

    def affinities(self, x: torch.Tensor, radius: int = 5) -> torch.Tensor:
        """(B, 3, H, W) → (B, K, h, w) affinities ``exp(−mean_d |f_i − f_j|)`` within ``radius``."""
        return local_affinities(self(x), radius)

    def new_modules(self) -> list[nn.Module]:
        """The layers PSA trains from scratch (``from_scratch_layers``: the reductions and the fusion)."""
        return list(self.reductions) + [self.fuse]

    def param_groups(self, lr_mult_new: float = 10.0) -> list[dict]:
        """PSA's groups: backbone weights 1×, the new layers ``lr_mult_new``× (PSA 10×). (PSA also gives
        biases 2× / 20× with no weight decay; its new layers have no biases.)"""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for m in self.new_modules() for p in m.parameters() if p.requires_grad]
        return [dict(params=back, lr_mult=1.0), dict(params=new, lr_mult=float(lr_mult_new))]

    def load_backbone_from(self, source: nn.Module | dict) -> "AffinityNet":
        """Copy backbone weights from a CAM classifier (its ``.backbone``), a backbone, or a state dict
        (keys of the backbone, optionally prefixed ``backbone.``). Shapes must match; the stride and
        dilation of the receiving backbone may differ (stride-8 weights into a stride-4 CompactCNN)."""
        if isinstance(source, nn.Module):
            source = getattr(source, "backbone", source).state_dict()
        state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in source.items()
                 if not k.startswith("classifier.")}
        try:
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"backbone weights do not fit this AffinityNet's backbone: {str(e)[:500]}") from e
        if missing or unexpected:
            raise ValueError(f"backbone weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return self
