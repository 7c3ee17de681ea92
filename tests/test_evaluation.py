"""LabelMapEvaluator: the figures notebooks write to metrics.json, on hand-computed cases."""
import math

import numpy as np
import pytest

from wsss_core.evaluation import LabelMapEvaluator

PAIRS = {"boat/water": (1, 1), "train/rails": (2, 2)}


def test_controlled_leak_counts_only_images_with_the_class():
    # 1×8: boat at 0..1, water at 2..4, ordinary background at 5..7
    gt = np.array([[1, 1, 0, 0, 0, 0, 0, 0]])
    cx = np.array([[0, 0, 1, 1, 1, 0, 0, 0]])
    pred = np.array([[1, 1, 1, 1, 0, 1, 0, 0]])
    ev = LabelMapEvaluator(6, PAIRS)
    ev.update(pred, gt, context_mask=cx)
    # an image with water and no boat: nothing can be labelled boat there; it must not dilute the leak
    ev.update(np.zeros((1, 8), int), np.zeros((1, 8), int), context_mask=cx)
    s = ev.summary()
    assert s["context_leak_per_pair"]["boat/water"] == pytest.approx(2 / 3)
    assert s["background_leak_per_pair"]["boat/water"] == pytest.approx(1 / 3)
    assert math.isnan(s["context_leak_per_pair"]["train/rails"])  # no train anywhere
    assert s["context_leak"] == pytest.approx(2 / 3) and s["background_leak"] == pytest.approx(1 / 3)
    # EPS confusion ratio m/t: 2 water pixels called boat / 2 true-positive boat pixels
    assert s["confusion_ratio"]["boat/water"] == pytest.approx(1.0)
    # any-class share of ordinary background over both images: 1 of 3 + 0 of 5
    assert s["background_fg_share"] == pytest.approx(1 / 8)


def test_pooled_leak_is_a_ratio_of_sums():
    ev = LabelMapEvaluator(6, PAIRS)
    # boat image: 4 water px, all labelled boat; 4 ordinary bg px, none labelled
    ev.update(np.array([[1, 1, 1, 1, 0, 0, 0, 0, 1]]), np.array([[0, 0, 0, 0, 0, 0, 0, 0, 1]]),
              context_mask=np.array([[1, 1, 1, 1, 0, 0, 0, 0, 0]]))
    ev.update(np.array([[0, 2, 0, 0, 0, 0, 2]]), np.array([[0, 0, 0, 0, 0, 0, 2]]),
              context_mask=np.array([[2, 2, 0, 0, 0, 0, 0]]))  # train image: rails 1 of 2, ordinary bg 0 of 4
    s = ev.summary()
    assert s["context_leak_per_pair"] == pytest.approx({"boat/water": 4 / 4, "train/rails": 1 / 2})
    assert s["context_leak"] == pytest.approx((4 + 1) / (4 + 2))  # pooled counts, not a mean of ratios
    assert s["background_leak"] == 0.0


def test_part_and_body_recall_and_ignore():
    gt = np.array([[3, 3, 3, 3, 255, 0]])
    part = np.array([[3, 0, 0, 0, 0, 0]])
    pred = np.array([[3, 3, 0, 0, 3, 0]])
    ev = LabelMapEvaluator(6)
    ev.update(pred, gt, part_mask=part)
    s = ev.summary()
    assert s["part_recall"] == pytest.approx(1.0)
    assert s["body_recall"] == pytest.approx(1 / 3)
    assert "context_leak" not in s
