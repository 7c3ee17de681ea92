"""The exercises' test cases and the library functions their answers must agree with.

Each notebook's exercises are registered here under a short name (see :func:`exercises.check`).
"""
from __future__ import annotations

import numpy as np
import torch

from . import register


# ---- 00 weak supervision -------------------------------------------------------------------------

def _label_cases():
    rng = np.random.default_rng(0)
    cases = []
    for k in range(4):
        m = rng.integers(0, 4, size=(12, 10)).astype(np.uint8)
        m[rng.random(m.shape) < 0.2] = 255
        if k == 3:
            m[:] = 0
        cases.append(((m, 6), {}))
    return cases


def _ref_image_label(mask, num_classes):
    vals = np.unique(np.asarray(mask))
    lab = np.zeros(num_classes, np.float32)
    vals = vals[(vals >= 1) & (vals <= num_classes)]
    lab[vals.astype(int) - 1] = 1
    return lab


register("image_label_from_mask", _label_cases, _ref_image_label,
         hint="Classes 1..C present in the mask (ignore 0 and 255) → a multi-hot vector of length C.")


def _box_cases():
    cases = []
    for (y0, y1, x0, x1) in [(2, 5, 3, 9), (0, 1, 0, 1), (4, 12, 0, 10)]:
        m = np.zeros((12, 10), bool)
        m[y0:y1, x0:x1] = True
        m[y0, x1 - 1] = False if (y1 - y0) > 1 else m[y0, x1 - 1]
        cases.append(((m,), {}))
    return cases


def _ref_tight_box(mask):
    ys, xs = np.nonzero(np.asarray(mask))
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


register("tight_box", _box_cases, _ref_tight_box, compare=lambda a, b: tuple(int(v) for v in a) == tuple(b),
         hint="Return (x1, y1, x2, y2) with x2, y2 exclusive, 0-based.")


# ---- 01 class activation maps --------------------------------------------------------------------

def _cam_cases():
    g = torch.Generator().manual_seed(0)
    return [((torch.randn(2, 8, 5, 6, generator=g), torch.randn(3, 8, generator=g)), {}),
            ((torch.randn(1, 4, 3, 3, generator=g), torch.randn(2, 4, generator=g)), {})]


def _ref_cam(features, weights):
    return torch.relu(torch.nn.functional.conv2d(features, weights[:, :, None, None]))


register("cam_from_features", _cam_cases, _ref_cam,
         hint="CAM_c(x) = ReLU(Σ_k w_ck f_k(x)): features (B, K, h, w), weights (C, K) → (B, C, h, w).")


def _bg_cases():
    g = torch.Generator().manual_seed(1)
    return [((torch.rand(3, 4, 5, generator=g), a), {}) for a in (1.0, 4.0, 32.0)]


def _ref_bg(cams, alpha):
    from ..cams import background_power

    return background_power(cams, alpha)


register("background_power", _bg_cases, _ref_bg,
         hint="bg(x) = (1 − max_c M_c(x))^α: cams (C, H, W) → (H, W).")


def _labels_cases():
    g = torch.Generator().manual_seed(2)
    cases = []
    for t in (0.1, 0.3, 0.6):
        cams = torch.rand(4, 6, 7, generator=g)
        label = torch.tensor([1.0, 0.0, 1.0, 1.0])
        cams = cams * label[:, None, None]
        cases.append(((cams.numpy(), label.numpy(), t), {}))
    return cases


def _ref_labels(cams, label, threshold):
    from ..cams import cams_to_labels

    return cams_to_labels(cams, label, threshold=threshold)


register("cams_to_labels", _labels_cases, _ref_labels,
         hint="Arg-max over [threshold, M_1..M_C] with absent classes excluded; ties go to background (0).")
