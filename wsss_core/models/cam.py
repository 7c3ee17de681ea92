"""The CAM classifier (Zhou et al., CVPR 2016, as used by PSA and IRN): backbone → GAP → 1×1 conv.

Because the classifier is a 1×1 convolution applied after global average pooling, applying the same
weights *before* pooling gives a class activation map whose spatial mean is the logit:

    s_c = w_cᵀ GAP(f) = GAP(w_cᵀ f) ,   CAM_c(x) = ReLU(w_cᵀ f(x))        (CAM, Eq. 1–2)

so all present classes' CAMs come out of one forward pass (IRN's ``CAM.forward``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CAMClassifier(nn.Module):
    """Multi-label classifier whose weights double as a CAM head.

    ``backbone``: any module returning a dict of features with ``"out"`` (see ``backbones.py``).
    ``num_classes``: foreground classes C (20 for VOC; background has no logit).
    ``dropout``: Dropout2d before pooling (PSA's ResNet-38 uses 0.5).

    * ``forward(x)``: (B, 3, H, W) → logits (B, C).
    * ``cam(x)``: (B, 3, H, W) → ReLU CAMs (B, C, h, w) at the backbone's output stride (differentiable).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)["out"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.dropout(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(f, 1)).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.classifier(self.features(x)))

    def param_groups(self, lr_mult_new: float = 10.0) -> list[dict]:
        """PSA/IRN-style groups: pretrained backbone at 1× lr, the new classifier at ``lr_mult_new``×."""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        return [dict(params=back, lr_mult=1.0), dict(params=list(self.classifier.parameters()), lr_mult=lr_mult_new)]


def multilabel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss (PSA ``train_cls.py``, IRN ``train_cam.py``):
    −1/C Σ_c [y_c log σ(s_c) + (1 − y_c) log(1 − σ(s_c))], averaged over the batch.

    ``logits``: (B, C); ``labels``: (B, C) in {0, 1}.
    """
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))
