"""The EPS classifier (Lee et al., CVPR 2021, "Railroad is not a Train"): a CAM classifier with C + 1
output maps, the extra one for the background.

Official code (``halbielee/EPS``, ``network/resnet38_eps.py``): ResNet-38 features → a 1×1 convolution
to ``C + 1`` maps, no bias, Xavier-uniform initialisation, no dropout; the logit vector is the global
average of the maps. **The background map is the last channel (index C)**, not channel 0 as in label
maps. Only the first C logits enter the classification loss (``module/train.py: train_eps`` applies the
multi-label soft margin to ``pred[:, :-1]``); the background map is trained by the saliency loss alone
(:func:`wsss_core.losses.eps_loss`). At inference the *softmax* over the C + 1 maps is used, and the
learned background channel is dropped (``infer.py``; see :func:`eps_cam_fn`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["EPSClassifier", "eps_cam_fn", "eps_background_fn"]


class EPSClassifier(nn.Module):
    """Backbone → 1×1 conv (no bias) to ``C + 1`` maps; logits = GAP of the maps.

    Parameters
    ----------
    backbone : nn.Module
        Returns a dict of features whose ``"out"`` entry is ``(B, K, h, w)`` and exposes
        ``out_channels`` (see :mod:`wsss_core.models.backbones`).
    num_classes : int
        Foreground classes C (20 for VOC, 6 for the toy scenes). The module has ``C + 1`` outputs.
    dropout : float
        Dropout2d before the 1×1 convolution (the official EPS network has none; kept for
        symmetry with :class:`~wsss_core.models.cam.CAMClassifier`).

    Notes
    -----
    * ``forward(x)`` → ``(logits (B, C + 1), maps (B, C + 1, h, w))``, both float, differentiable;
      ``logits = mean_{h,w} maps`` (the official ``avg_pool2d`` over the whole map). Returning both from
      one call lets DistributedDataParallel see every parameter used in the loss.
    * ``classify(x)`` → the C foreground logits ``(B, C)`` (what the classification loss and mAP use).
    * ``cam(x)`` → the raw maps ``(B, C + 1, h, w)`` (the official ``forward_cam``).
    * ``background_index`` = C.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.background_index = self.num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(backbone.out_channels, self.num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → backbone features ``(B, K, h, w)``."""
        return self.backbone(x)["out"]

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class maps ``(B, C + 1, h, w)`` (no ReLU, no softmax), background last."""
        return self.classifier(self.dropout(self.features(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` → ``(logits (B, C + 1), maps (B, C + 1, h, w))``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"EPSClassifier expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        maps = self.cam(x)
        return maps.mean(dim=(2, 3)), maps

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The foreground logits ``(B, C)`` (background logit dropped)."""
        return self(x)[0][:, : self.num_classes]

    def param_groups(self, lr_mult_new: float = 10.0) -> list[dict]:
        """The official groups in simplified form: backbone at 1× the learning rate, the new 1×1
        convolution at ``lr_mult_new``× (EPS: 10×; it has no bias, so the 2×/20× bias groups are empty
        for it)."""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        return [dict(params=back, lr_mult=1.0), dict(params=list(self.classifier.parameters()), lr_mult=lr_mult_new)]


def eps_cam_fn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``cam_fn`` for :func:`wsss_core.cams.multiscale_cams`: softmax over the C + 1 maps, then the C
    foreground probabilities ``(B, C, h, w)`` in [0, 1] (official ``infer.py``: the softmax is taken at
    the feature resolution, before the bilinear upsampling, and the background channel is dropped)."""
    C = model.num_classes
    return F.softmax(model.cam(x).float(), dim=1)[:, :C]


def eps_background_fn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The learned background probability ``(B, 1, h, w)`` (softmax channel C) — unused by the
    official pseudo-masks, shown in the notebook to explain what the saliency loss taught it."""
    C = model.num_classes
    return F.softmax(model.cam(x).float(), dim=1)[:, C:]
