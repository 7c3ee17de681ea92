"""Instructor solutions to notebook 03's exercises (checked in CI by the notebook runs).

Students: try the exercise first — the notebook's check cell tells you whether you are right.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def da_normalize(logits):
    norm = torch.sqrt((logits ** 2).sum(dim=1, keepdim=True)).clamp_min(1e-12)
    return (logits / norm).abs()


def edam_saliency_override(masks, label, saliency, theta):
    masks = np.asarray(masks, np.float32)
    C = masks.shape[0]
    scores = np.zeros((C + 1,) + masks.shape[1:], np.float32)
    for c in range(C):
        if label[c] > 0:
            scores[c + 1] = masks[c]
    scores[scores < 1e-6] = -2.0
    scores[scores > 0.99999] = 2.0
    scores[0] = np.asarray(saliency, np.float64) <= theta * 100
    return np.argmax(scores, axis=0)


def cross_image_attention(q, k, n_first):
    logits = q @ k.transpose(0, 1) / math.sqrt(q.shape[-1])
    weights = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights[:n_first, n_first:].sum(dim=-1)
