"""Exercises of notebook 03 (EDAM): the DA layer's normalisation, the saliency override and the
class-specific attention, checked against the library.

Registered names: ``da_normalize`` (Exercise 1), ``edam_saliency_override`` (Exercise 2),
``cross_image_attention`` (Exercise 3). Instructor solutions: :mod:`wsss_core.exercises.solutions_nb03`.
"""
from __future__ import annotations

import numpy as np
import torch

from . import register


def _da_cases():
    g = torch.Generator().manual_seed(3)
    cases = [((2 * torch.randn(2, 4, 3, 5, generator=g),), {}), ((torch.randn(1, 7, 2, 2, generator=g),), {})]
    x = torch.randn(1, 3, 2, 2, generator=g)
    x[0, :, 0, 0] = 0.0  # an all-zero pixel must stay zero (no division by zero)
    x[0, :, 1, 1] = torch.tensor([3.0, -4.0, 0.0])
    cases.append(((x,), {}))
    return cases


def _ref_da(logits):
    from ..models.edam import da_normalize

    return da_normalize(logits)


register("da_normalize", _da_cases, _ref_da,
         hint="m(x) = |v(x)| / max(‖v(x)‖₂, 1e-12), the L2 norm taken over the channel axis (dim 1) of "
              "(B, C+1, h, w) at every pixel; then the absolute value.")


def _sal_cases():
    rng = np.random.default_rng(4)
    cases = []
    for C, H, W, theta in [(3, 4, 5, 0.2), (4, 6, 3, 0.5), (2, 5, 5, 1.0)]:
        masks = rng.random((C, H, W)).astype(np.float32)
        masks[0, 0, 0] = 1.0            # a class peak (> beta: always wins)
        masks[:, 1, 1] = 0.0            # no activation at all (< alpha: never wins)
        label = (rng.random(C) < 0.6).astype(np.float32)
        label[0] = 1.0
        sal = rng.integers(0, 256, (H, W)).astype(np.uint8)
        sal[0, 1] = int(theta * 100)   # exactly at the threshold: background
        cases.append(((masks, label, sal, theta), {}))
    return cases


def _ref_sal(masks, label, saliency, theta):
    from ..stages.edam import saliency_override

    return saliency_override(masks, label, saliency, theta=theta)


register("edam_saliency_override", _sal_cases, _ref_sal,
         hint="Scores: present classes' masks, absent classes 0; scores < 1e-6 → −2, > 0.99999 → 2; background "
              "= 1 where the 0–255 saliency ≤ θ·100, else 0; arg-max over [background, classes] (ties → background).")


def _att_cases():
    g = torch.Generator().manual_seed(5)
    cases = []
    for L, d in [(6, 4), (10, 8)]:
        q = torch.randn(L, d, generator=g)
        k = torch.randn(L, d, generator=g)
        cases.append(((q, k, L // 2), {}))  # two images of L/2 tokens each
    return cases


def _ref_att(q, k, n_first):
    from ..models.edam import attention_weights, cross_image_share

    return cross_image_share(attention_weights(q, k), n_first)[:n_first]


register("cross_image_attention", _att_cases, _ref_att,
         hint="A = softmax(q kᵀ / √d) row by row (L × L); the tokens 0..n_first−1 are image 1's; return, for each "
              "of them, the total weight it gives to the other image's tokens: A[:n_first, n_first:].sum(-1).")
