"""Instructor solutions to notebook 02's exercises (checked in CI by the notebook runs).

Students: try the exercise first — the notebook's check cell tells you whether you are right.
"""
from __future__ import annotations

import numpy as np
import torch


def pair_sets(label, radius):
    from wsss_core.affinity import pair_offsets

    label = np.asarray(label)
    h, w = label.shape
    offs = pair_offsets(radius)
    bg, fg, neg = (np.zeros((len(offs), h, w), bool) for _ in range(3))
    for k, (dy, dx) in enumerate(offs):
        y0, y1 = 0, h - dy                       # dy ≥ 0 for forward offsets
        x0, x1 = max(0, -dx), min(w, w - dx)
        a = label[y0:y1, x0:x1]
        b = label[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
        valid = (a != 255) & (b != 255)
        bg[k, y0:y1, x0:x1] = valid & (a == b) & (a == 0)
        fg[k, y0:y1, x0:x1] = valid & (a == b) & (a != 0)
        neg[k, y0:y1, x0:x1] = valid & (a != b)
    return bg, fg, neg


def transition_matrix_dense(aff, radius, beta):
    from wsss_core.affinity import pair_offsets

    aff = torch.as_tensor(aff, dtype=torch.float64)
    _, h, w = aff.shape
    N = h * w
    W = torch.eye(N, dtype=torch.float64)
    for k, (dy, dx) in enumerate(pair_offsets(radius)):
        for y in range(h):
            for x in range(w):
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    W[y * w + x, ty * w + tx] = W[ty * w + tx, y * w + x] = aff[k, y, x]
    Wb = W ** beta
    return Wb / Wb.sum(1, keepdim=True)


def walk_sparse(T, x, t):
    y = np.asarray(x).T
    for _ in range(int(t)):
        y = T @ y
    return np.asarray(y).T
