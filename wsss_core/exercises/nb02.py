"""Exercises of notebook 02 (AffinityNet and random walk): the pair sets, the transition matrix and a
random walk that stays sparse, checked against :mod:`wsss_core.affinity`.

Registered names: ``pair_sets`` (Exercise 1), ``transition_matrix_dense`` (Exercise 2),
``walk_sparse`` (Exercise 3). Instructor solutions: :mod:`wsss_core.exercises.solutions_nb02`.
"""
from __future__ import annotations

import numpy as np
import torch

from . import register


def _pair_cases():
    rng = np.random.default_rng(2)
    cases = []
    for (h, w), r in [((5, 6), 2), ((7, 7), 3), ((9, 8), 5)]:
        lab = rng.integers(0, 3, size=(h, w)).astype(np.int64)
        lab[rng.random((h, w)) < 0.2] = 255
        cases.append(((lab, r), {}))
    lab = np.zeros((3, 3), np.int64)          # the hand-made map of tests/test_affinity.py
    lab[:, 2] = 1
    lab[1, 1] = 255
    lab[2, :2] = 2
    cases.append(((lab, 2), {}))
    return cases


def _ref_pairs(label, radius):
    from ..affinity import pair_labels

    return tuple(t.numpy() for t in pair_labels(torch.as_tensor(np.asarray(label)), radius))


def _same_bool(a, b) -> bool:
    if not (isinstance(a, (tuple, list)) and len(a) == 3):
        return False
    return all(np.asarray(x).shape == np.asarray(y).shape and np.array_equal(np.asarray(x, bool), np.asarray(y, bool))
               for x, y in zip(a, b))


register("pair_sets", _pair_cases, _ref_pairs, compare=_same_bool,
         hint="For each forward offset (dy, dx) of A.pair_offsets(radius): a = label[y, x], b = label[y+dy, x+dx] "
              "(both in the grid, both ≠ 255); bg_pos: a == b == 0, fg_pos: a == b > 0, neg: a ≠ b. "
              "Entries whose target leaves the grid are False.")


def _tm_cases():
    from ..affinity import local_affinities

    g = torch.Generator().manual_seed(5)
    cases = []
    for (h, w), r, beta in [((3, 4), 2, 1.0), ((5, 5), 3, 8.0), ((4, 7), 5, 2.5)]:
        aff = local_affinities(torch.randn(4, h, w, generator=g, dtype=torch.float64), r)
        cases.append(((aff, r, beta), {}))
    return cases


def _ref_tm(aff, radius, beta):
    from ..affinity import transition_matrix

    return transition_matrix(aff, radius, beta, kind="dense", dtype=torch.float64)


register("transition_matrix_dense", _tm_cases, _ref_tm,
         hint="W = identity; for every forward pair (i, j) with affinity a: W[i, j] = W[j, i] = a. "
              "Then W ** beta (element-wise) and divide every row by its sum.")


def _walk_cases():
    from ..affinity import local_affinities, transition_matrix

    g = torch.Generator().manual_seed(6)
    cases = []
    for (h, w), r, t in [((4, 5), 2, 3), ((8, 8), 5, 64), ((6, 9), 3, 0)]:
        T = transition_matrix(local_affinities(torch.randn(4, h, w, generator=g), r), r, 8.0, dtype=torch.float64)
        x = torch.rand(3, h * w, generator=g, dtype=torch.float64).numpy()
        cases.append(((T, x, t), {}))
    return cases


def _ref_walk(T, x, t):
    from ..affinity import propagate

    return propagate(T, x, t).numpy()


register("walk_sparse", _walk_cases, _ref_walk,
         hint="Apply T to the columns t times: y = x.T; repeat t times: y = T @ y; return y.T. "
              "T @ (N, C) stays a sparse-times-dense product.")
