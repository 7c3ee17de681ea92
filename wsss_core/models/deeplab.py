"""DeepLab segmentation networks: the last stage of every WSSS pipeline.

The papers train DeepLab on their pseudo-labels: PSA and EPS/EDAM use DeepLab-v2 (ResNet-101 or
ResNet-38, output stride 8, ASPP of four parallel 3×3 convolutions with dilations 6/12/18/24 whose
outputs are *summed*, Chen et al., TPAMI 2017, Fig. 7), IRN DeepLab-v2 on ResNet-50. For the CPU
tutorial we add the DeepLab-v3+ decoder (Chen et al., ECCV 2018): ASPP with image pooling,
concatenated, then fused with stride-4 features — on 96-px scenes the coarse stride-8 logits alone
would blur every boundary.

Both heads run on any backbone of :mod:`wsss_core.models.backbones` (a dict of features whose last
entry is ``"out"``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class ASPPv2(nn.Module):
    """DeepLab-v2's ASPP classifier: Σ_r Conv3×3_{dilation r}(x) → (B, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates)
        for b in self.branches:
            nn.init.normal_(b.weight, std=0.01)
            nn.init.zeros_(b.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(b(x) for b in self.branches)


def _conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPPv3(nn.Module):
    """DeepLab-v3's ASPP: 1×1, three dilated 3×3 and an image-pooling branch, concatenated, 1×1."""

    def __init__(self, in_channels: int, channels: int = 128, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, channels, 1)] +
                                      [_conv_bn_relu(in_channels, channels, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False),
                                  nn.ReLU(inplace=True))  # no BN on a 1×1 map (batch-size-1 safe)
        self.project = _conv_bn_relu(channels * (len(rates) + 2), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, 1))


class DeepLab(nn.Module):
    """A DeepLab on a backbone.

    Parameters
    ----------
    backbone : a backbone returning ``{..., "out": (B, C_out, H/s, W/s)}``.
    num_classes : classes *including* background (21 for VOC).
    head : ``"v2"`` (ASPP-sum on the last features, the papers' DeepLab-v2) or ``"v3plus"`` (ASPP +
        a decoder on the stride-4 features ``low_level``).
    rates : ASPP dilations (v2: 6/12/18/24 at output stride 8; smaller for small images).
    low_level : the backbone feature used by the v3+ decoder (``"s4"`` for CompactCNN, ``"layer1"``
        for ResNets).
    channels : width of the v3+ head.

    ``forward(x)``: (B, 3, H, W) → logits (B, num_classes, H, W) (bilinearly upsampled).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "v3plus",
                 rates: Sequence[int] = (6, 12, 18, 24), low_level: str | None = None, channels: int = 128):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.head_type = head
        if head == "v2":
            self.head = ASPPv2(backbone.out_channels, num_classes, rates)
        elif head == "v3plus":
            if low_level is None:
                low_level = "s4" if "s4" in backbone.channels else "layer1"
            if low_level not in backbone.channels:
                raise ValueError(f"backbone has no feature {low_level!r}; it has {list(backbone.channels)}")
            self.low_level = low_level
            self.aspp = ASPPv3(backbone.out_channels, channels, rates[:3])
            self.reduce = _conv_bn_relu(backbone.channels[low_level], 48, 1)
            self.decoder = nn.Sequential(_conv_bn_relu(channels + 48, channels), _conv_bn_relu(channels, channels))
            self.classifier = nn.Conv2d(channels, num_classes, 1)
        else:
            raise ValueError(f"head must be 'v2' or 'v3plus', got {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        feats = self.backbone(x)
        if self.head_type == "v2":
            logits = self.head(feats["out"])
        else:
            low = self.reduce(feats[self.low_level])
            y = F.interpolate(self.aspp(feats["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
            logits = self.classifier(self.decoder(torch.cat([y, low], 1)))
        return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)

    def param_groups(self, lr_mult_new: float = 10.0) -> list[dict]:
        """DeepLab's groups: the (pretrained) backbone at 1×, the new head at ``lr_mult_new``×."""
        back = {id(p) for p in self.backbone.parameters()}
        new = [p for p in self.parameters() if id(p) not in back and p.requires_grad]
        return [dict(params=[p for p in self.backbone.parameters() if p.requires_grad], lr_mult=1.0),
                dict(params=new, lr_mult=lr_mult_new)]


@torch.no_grad()
def multiscale_predict(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                       flip: bool = False) -> torch.Tensor:
    """Class probabilities averaged over scales and flips (DeepLab's multi-scale inference).

    ``images``: (B, 3, H, W) normalised → (B, K, H, W) softmax probabilities.
    """
    B, _, H, W = images.shape
    total = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False,
                                                   recompute_scale_factor=False)
        xs = torch.cat([x, x.flip(-1)], 0) if flip else x
        p = F.interpolate(model(xs).float(), size=(H, W), mode="bilinear", align_corners=False).softmax(1)
        if flip:
            p = p[:B] + p[B:].flip(-1)
        total = p if total is None else total + p
    return total / (len(scales) * (2 if flip else 1))


def dense_crf(image, probs, iterations: int = 10, pos_w: float = 3, pos_xy: float = 1, bi_w: float = 4,
              bi_xy: float = 67, bi_rgb: float = 3):
    """Dense CRF refinement of class probabilities (Krähenbühl & Koltun 2011), with the DeepLab
    parameters EPS uses (bi_w 4, bi_xy 67, bi_rgb 3, pos_w 3, pos_xy 1).

    ``image``: (H, W, 3) uint8; ``probs``: (K, H, W) float in [0, 1] → (K, H, W) refined probabilities.
    Needs the optional ``pydensecrf2`` package (``pip install -e .[crf]``); raises ImportError with
    that hint if it is missing.
    """
    import numpy as np

    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError("dense CRF needs the optional extra: pip install -e .[crf] (pydensecrf2)") from e
    probs = np.ascontiguousarray(np.clip(np.asarray(probs, np.float32), 1e-8, 1.0))
    K, H, W = probs.shape
    d = dcrf.DenseCRF2D(W, H, K)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=bi_w)
    return np.asarray(d.inference(iterations), np.float32).reshape(K, H, W)
