"""Exercises of notebook 05 (EPS): the overlap ratio and the saliency loss, checked against the library.

Registered names: ``eps_overlap_ratio`` (Exercise 1), ``eps_saliency_loss`` (Exercise 2). Instructor
solutions: :mod:`wsss_core.exercises.solutions_nb05`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register


def _overlap_cases():
    g = torch.Generator().manual_seed(5)
    cases = []
    for B, C, h, w in [(1, 3, 2, 2), (2, 4, 5, 6), (3, 2, 7, 3)]:
        probs = F.softmax(3 * torch.randn(B, C + 1, h, w, generator=g), 1)[:, :C]
        sal = torch.rand(B, 1, h, w, generator=g)
        cases.append(((probs, sal), {}))
    # a map with exact halves: 0.5 must round to 0 (torch.round: half to even)
    probs = torch.tensor([[[[0.5, 0.51], [0.49, 1.0]]]])
    sal = torch.tensor([[[[0.5, 1.0], [1.0, 0.0]]]])
    cases.append(((probs, sal), {}))
    return cases


def _ref_overlap(fg_probs, saliency):
    from ..saliency import overlap_ratio

    return overlap_ratio(fg_probs, saliency)


register("eps_overlap_ratio", _overlap_cases, _ref_overlap,
         hint="O_c = Σ round(P_c)·round(S) / Σ (round(P_c) + 1e-4) over the pixels of each image and class: "
              "fg_probs (B, C, h, w), saliency (B, 1, h, w) → (B, C). Use torch.round.")


def _loss_cases():
    g = torch.Generator().manual_seed(6)
    cases = []
    for B, C, h, w, tau, lam in [(2, 3, 4, 4, 0.4, 0.5), (3, 5, 6, 5, 0.2, 0.3), (1, 2, 3, 3, 0.9, 0.8)]:
        maps = 2 * torch.randn(B, C + 1, h, w, generator=g)
        sal = (torch.rand(B, 1, h, w, generator=g) > 0.6).float() * 0.9
        label = (torch.rand(B, C, generator=g) > 0.4).float()
        label[:, 0] = 1.0
        cases.append(((maps, sal, label, tau, lam), {}))
    return cases


def _ref_loss(maps, saliency, label, tau, lam):
    from ..losses import eps_loss

    return eps_loss(maps, saliency, label, tau=tau, lam=lam, return_parts=True)[1]["loss_sal"]


register("eps_saliency_loss", _loss_cases, _ref_loss,
         hint="softmax over the C + 1 maps (background last) → overlap ratio of each present class → "
              "fg = present & O > tau, bg = present & not fg → M_fg, M_bg = P_bg + Σ_bg P_c → "
              "Ŝ = lam·M_fg + (1 − lam)(1 − M_bg) → mean squared error against the saliency.")
