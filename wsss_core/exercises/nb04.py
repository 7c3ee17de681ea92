"""Exercises of notebook 04 (Box2Seg): label assembly from boxes, the attention-weighted loss and the
filling-rate penalty, checked against the library.

Registered names: ``paste_box_masks`` (Exercise 1), ``attention_weighted_loss`` (Exercise 2),
``filling_rate_loss`` (Exercise 3). Instructor solutions: :mod:`wsss_core.exercises.solutions_nb04`.
"""
from __future__ import annotations

import numpy as np
import torch

from . import register


def _paste_cases():
    rng = np.random.default_rng(4)
    cases = []
    for H, W, K in [(6, 8, 2), (10, 12, 3), (9, 9, 4)]:
        boxes, masks = [], []
        for _ in range(K):
            x1, y1 = int(rng.integers(0, W - 2)), int(rng.integers(0, H - 2))
            x2, y2 = int(rng.integers(x1 + 1, W + 1)), int(rng.integers(y1 + 1, H + 1))
            m = np.zeros((H, W), bool)
            m[y1:y2, x1:x2] = rng.random((y2 - y1, x2 - x1)) < 0.7
            boxes.append([x1, y1, x2, y2])
            masks.append(m)
        labels = rng.integers(1, 5, size=K)
        cases.append(((masks, np.array(boxes, np.float32), labels, (H, W)), {}))
    # nested boxes, the larger listed last: the smaller must still win
    big = np.ones((4, 4), bool)
    small = np.zeros((4, 4), bool)
    small[1:3, 1:3] = True
    cases.append((([small, big], np.array([[1, 1, 3, 3], [0, 0, 4, 4]], np.float32), np.array([2, 1]), (4, 4)), {}))
    return cases


def _ref_paste(masks, boxes, labels, shape):
    from ..boxes import paste_masks

    return paste_masks(masks, boxes, labels, shape)


register("paste_box_masks", _paste_cases, _ref_paste,
         compare=lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
         hint="Start from zeros (H, W) uint8; paste each mask's True pixels with its box's label, "
              "largest box area first, so that smaller boxes win on overlap (equal areas: list order).")


def _awl_cases():
    g = torch.Generator().manual_seed(40)
    cases = []
    for B, C, H, W in [(1, 2, 3, 4), (2, 3, 5, 5), (3, 4, 4, 6)]:
        logits = torch.randn(B, C + 1, H, W, generator=g)
        att = torch.rand(B, C, H, W, generator=g)
        box_map = torch.randint(-1, 3, (B, H, W), generator=g)
        classes = torch.randint(1, C + 1, (3,), generator=g)
        cases.append(((logits, att, box_map, classes), {}))
    return cases


def _ref_awl(logits, attention, box_map, box_classes):
    from ..losses_box2seg import attention_weighted_loss

    return attention_weighted_loss(logits, attention, box_map, box_classes)


register("attention_weighted_loss", _awl_cases, _ref_awl,
         hint="log-softmax over the C + 1 channels; at every pixel with box_map >= 0 take c = box_classes[k], "
              "the term −A_{c}(x) · log p_c(x) (attention channel c − 1, logits channel c); mean over those pixels.")


def _fill_cases():
    g = torch.Generator().manual_seed(41)
    cases = []
    for B, C, H, W, K in [(1, 2, 3, 4, 2), (2, 3, 6, 5, 4), (2, 2, 4, 4, 3)]:
        att = torch.rand(B, C, H, W, generator=g)
        box_map = torch.randint(-1, K, (B, H, W), generator=g)
        classes = torch.randint(1, C + 1, (K,), generator=g)
        rho = torch.rand(K, generator=g)
        cases.append(((att, box_map, classes, rho), {}))
    # a box with no pixel at all is skipped
    att = torch.rand(1, 2, 3, 3, generator=g)
    box_map = torch.zeros(1, 3, 3, dtype=torch.long)
    cases.append(((att, box_map, torch.tensor([1, 2]), torch.tensor([0.3, 0.9])), {}))
    return cases


def _ref_fill(attention, box_map, box_classes, rho):
    from ..losses_box2seg import filling_rate_loss

    return filling_rate_loss(attention, box_map, box_classes, rho)


register("filling_rate_loss", _fill_cases, _ref_fill,
         hint="For each box k with at least one pixel: m_k = mean of A_{c_k} over the pixels with box_map == k; "
              "return the mean over those boxes of (m_k − rho_k)².")
