"""Exercises of notebook 06 (the segmentation network), checked against the library.

Registered names: ``ce_ignore`` (Exercise 1: DeepLab's loss on pseudo-labels with an ignore label) and
``multiscale_flip`` (Exercise 2: multi-scale + flip inference). Instructor solutions:
:mod:`wsss_core.exercises.solutions_nb06`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register


def _ce_cases():
    g = torch.Generator().manual_seed(60)
    cases = []
    for B, K, H, W, share in [(1, 3, 2, 2, 0.0), (2, 7, 5, 6, 0.3), (3, 4, 4, 3, 0.8)]:
        logits = 3 * torch.randn(B, K, H, W, generator=g)
        target = torch.randint(0, K, (B, H, W), generator=g)
        target[torch.rand(B, H, W, generator=g) < share] = 255
        cases.append(((logits, target), {}))
    return cases


def _ref_ce(logits, target):
    from ..stages.segmentation import segmentation_step

    class _Identity(torch.nn.Module):
        def forward(self, x):
            return x

    return segmentation_step(_Identity(), {"image": logits, "mask": target}, "cpu")["loss"]


register("ce_ignore", _ce_cases, _ref_ce,
         compare=lambda a, b: torch.allclose(torch.as_tensor(a, dtype=torch.float32), b, atol=1e-5),
         hint="log_softmax over the K channels, pick the target class's log-probability at every pixel whose "
              "label is not 255, average the negatives over those pixels only.")


class _TinyNet(torch.nn.Module):
    """A fixed random 2-layer conv net at output stride 2 (the exercises' stand-in for DeepLab)."""

    def __init__(self, k: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(8, k, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _ms_cases():
    g = torch.Generator().manual_seed(61)
    return [((_TinyNet(4, 0), torch.randn(2, 3, 16, 20, generator=g), (1.0,), False), {}),
            ((_TinyNet(3, 1), torch.randn(1, 3, 24, 24, generator=g), (1.0, 0.5, 1.5), True), {}),
            ((_TinyNet(5, 2), torch.randn(3, 3, 12, 16, generator=g), (0.75, 1.25), True), {})]


def _ref_ms(model, images, scales, flip):
    from ..models.deeplab import multiscale_predict

    with torch.no_grad():
        return multiscale_predict(model, images, scales, flip)


register("multiscale_flip", _ms_cases, _ref_ms,
         compare=lambda a, b: torch.allclose(torch.as_tensor(a), b, atol=1e-5),
         hint="for each scale s: resize the images by s (bilinear, align_corners=False), run the model, resize the "
              "logits back to (H, W) (bilinear), softmax over channels; with flip also run the mirrored images and "
              "mirror their probabilities back; return the mean of all the probability maps, (B, K, H, W).")
