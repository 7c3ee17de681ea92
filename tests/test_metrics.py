"""Tests of wsss_core.metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from wsss_core.metrics import (
    ConfusionMatrix,
    ConfusionRatio,
    RegionStats,
    SaliencyStats,
    average_precision,
    background_leak,
    boundary_f_score,
    boundary_prf,
    mean_average_precision,
    miou,
    region_recall,
    saliency_f_measure,
    saliency_mae,
)

# 3×4 example, 4 labels (background + 3 classes; class 3 absent everywhere), one ignore pixel
# whose prediction (2) must not be counted.
GT = np.array([[0, 0, 1, 1], [0, 1, 1, 255], [2, 2, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 1, 0, 2], [2, 0, 0, 0]], dtype=np.uint8)
# (gt, pred) pairs: row 0 (0,0) (0,1) (1,1) (1,1); row 1 (0,0) (1,1) (1,0) ignored;
# row 2 (2,2) (2,0) (0,0) (0,0)
M_EXPECTED = np.array([[4, 1, 0, 0], [1, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_confusion_matrix_hand_example():
    cm = ConfusionMatrix(4).update(PRED, GT)
    np.testing.assert_array_equal(cm.mat, M_EXPECTED)
    assert cm.mat.dtype == np.int64
    assert cm.total == 11
    # row sums 5, 4, 2, 0; column sums 6, 4, 1, 0
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], [4 / 7, 3 / 5, 1 / 2])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((4 / 7 + 3 / 5 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(8 / 11)
    np.testing.assert_allclose(cm.precision()[:3], [4 / 6, 3 / 4, 1.0])
    np.testing.assert_allclose(cm.recall()[:3], [4 / 5, 3 / 4, 1 / 2])
    assert math.isnan(cm.precision()[3]) and math.isnan(cm.recall()[3])
    assert cm.fg_precision() == pytest.approx((3 + 1) / (4 + 1))
    assert cm.fg_recall() == pytest.approx((3 + 1) / (4 + 2))


def test_confusion_matrix_torch_and_numpy_agree():
    a = ConfusionMatrix(4).update(PRED, GT)
    b = ConfusionMatrix(4).update(torch.from_numpy(PRED), torch.from_numpy(GT))
    c = ConfusionMatrix(4).update(torch.from_numpy(PRED).long(), GT)  # mixed inputs
    np.testing.assert_array_equal(a.mat, b.mat)
    np.testing.assert_array_equal(a.mat, c.mat)
    # batched (B, H, W) input equals two separate updates
    d = ConfusionMatrix(4).update(np.stack([PRED, PRED]), np.stack([GT, GT]))
    np.testing.assert_array_equal(d.mat, 2 * M_EXPECTED)


def test_confusion_matrix_bad_values():
    bad = PRED.copy()
    bad[0, 0] = 4
    with pytest.raises(ValueError, match="pred value 4"):
        ConfusionMatrix(4).update(bad, GT)
    with pytest.raises(ValueError, match="pred value 4"):
        ConfusionMatrix(4).update(torch.from_numpy(bad), torch.from_numpy(GT))
    # an out-of-range prediction where the target is ignored is fine
    ok = PRED.copy()
    ok[1, 3] = 9
    np.testing.assert_array_equal(ConfusionMatrix(4).update(ok, GT).mat, M_EXPECTED)
    bad_gt = GT.copy()
    bad_gt[0, 0] = 7
    with pytest.raises(ValueError, match="target value 7"):
        ConfusionMatrix(4).update(PRED, bad_gt)
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(4).update(PRED[:2], GT)
    with pytest.raises(TypeError):
        ConfusionMatrix(4).update(PRED.astype(np.float32), GT)


def test_confusion_matrix_merge_reset_summary_markdown():
    a = ConfusionMatrix(4).update(PRED, GT)
    b = ConfusionMatrix(4).update(GT.clip(0, 3) * (GT != 255), GT)  # perfect prediction
    s = a + b
    np.testing.assert_array_equal(s.mat, a.mat + b.mat)
    np.testing.assert_array_equal(a.mat, M_EXPECTED)  # + does not modify the operands
    a.merge(b)
    np.testing.assert_array_equal(a.mat, s.mat)
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(5))

    names = ["background", "boat", "train", "cat"]
    summ = ConfusionMatrix(4).update(PRED, GT).summary(names)
    assert set(summ) == {"miou", "pixel_acc", "fg_precision", "fg_recall", "per_class_iou"}
    assert summ["per_class_iou"]["boat"] == pytest.approx(3 / 5)
    assert math.isnan(summ["per_class_iou"]["cat"])
    md = ConfusionMatrix(4).update(PRED, GT).to_markdown(names)
    lines = md.splitlines()
    assert len(lines) == 2 + 4 + 1
    assert lines[3].startswith("| boat | 0.600 | 0.750 | 0.750 | 4 |")
    assert "| cat | – |" in md
    a.reset()
    assert a.total == 0 and math.isnan(a.miou())
    a.reduce_from_all_processes()  # no process group: a no-op
    assert a.total == 0


def test_miou_convenience():
    perfect = [GT.clip(0, 3) * (GT != 255)]
    assert miou(perfect, [GT], 4) == pytest.approx(1.0)
    assert miou([PRED, PRED], [GT, GT], 4) == pytest.approx((4 / 7 + 3 / 5 + 1 / 2) / 3)
    with pytest.raises(ValueError):
        miou([], [], 4)


def test_region_recall_part_vs_body():
    gt = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 0, 0], [0, 1, 0, 2], [0, 2, 1, 0]])
    part = np.zeros_like(gt, dtype=bool)
    part[:, 1] = True  # the "badge" column
    body = ~part
    # part: gt fg pixels (0,1) (1,1) (2,1) -> all correct
    assert region_recall(pred, gt, part) == pytest.approx(1.0)
    # body: gt fg pixels (0,2) (0,3) (1,2) (1,3) (2,2); correct: none; (2,3) is ignore
    assert region_recall(pred, gt, body) == pytest.approx(0.0)
    acc = RegionStats()
    acc.update(pred, gt, part).update(pred, gt, np.ones_like(part))
    assert (acc.num, acc.den) == (3 + 3, 3 + 8)
    assert acc.value == pytest.approx(6 / 11)
    assert math.isnan(region_recall(pred, gt, np.zeros_like(part)))


def _boat_scene():
    gt = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    context = np.zeros_like(gt)
    context[2:] = 1  # water under and around the boat (12 px, 3 of them are boat)
    pred = np.array(
        [
            [0, 0, 0, 0, 0, 2],  # a false positive of another class on ordinary background
            [0, 1, 1, 0, 0, 0],  # one boat pixel missed
            [0, 1, 1, 1, 1, 0],  # spills onto the water at (2, 4)
            [0, 1, 1, 0, 0, 0],  # and at (3, 1), (3, 2)
        ]
    )
    return pred, gt, context


def test_confusion_ratio_boat_on_water():
    pred, gt, context = _boat_scene()
    pairs = {"boat/water": (1, 1), "train/rails": (2, 2)}
    cr = ConfusionRatio().update(pred, gt, context, pairs)
    # t_boat = (1,1) (1,2) (2,1) (2,2) (2,3) = 5;  m = water pixels that are not boat, predicted boat = 3
    assert cr.t["boat/water"] == 5 and cr.m["boat/water"] == 3
    assert cr.ratios()["boat/water"] == pytest.approx(3 / 5)
    # water that is background: 12 - 3 = 9 pixels, 3 of them called boat
    assert cr.leak()["boat/water"] == pytest.approx(3 / 9)
    # no train predicted correctly (t = 0) and no rails: nan, not an error
    assert math.isnan(cr.ratios()["train/rails"])
    assert math.isnan(cr.leak()["train/rails"])
    # ordinary background: gt 0 and context 0 = 6 + 3 = 9 pixels, one called "train"
    assert cr.background_leak() == pytest.approx(1 / 9)
    assert background_leak(pred, gt, context) == pytest.approx(1 / 9)
    # pooled over images: the same image twice keeps the ratios, doubles the counts
    cr.update(pred, gt, context, pairs)
    assert cr.m["boat/water"] == 6 and cr.ratios()["boat/water"] == pytest.approx(3 / 5)
    summ = cr.summary()
    assert summ["context_leak"]["boat/water"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        cr.update(pred, gt, context, {"boat/water": (2, 1)})


def test_confusion_ratio_ignores_ignore_pixels():
    pred, gt, context = _boat_scene()
    gt = gt.copy()
    gt[3, 1] = 255  # one spilled water pixel becomes "ignore"
    cr = ConfusionRatio().update(pred, gt, context, {"boat/water": (1, 1)})
    assert cr.m["boat/water"] == 2 and cr.region["boat/water"] == 8


def test_average_precision_hand_values():
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0]) == pytest.approx(1.0)
    # worst ranking: positives last, precisions 1/3 and 2/4
    assert average_precision([0.9, 0.8, 0.7, 0.6], [0, 0, 1, 1]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert math.isnan(average_precision([0.3, 0.2], [0, 0]))
    # ties form one threshold (scikit-learn): precision 1/2 at recall 1, whatever the order
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    y = np.array([0, 1, 0, 1, 1])
    # thresholds 0.9 (tp0 fp1), 0.5 (tp2 fp2), 0.1 (tp3 fp2): AP = 2/3 * 2/4 + 1/3 * 3/5
    expected = 2 / 3 * 0.5 + 1 / 3 * 0.6
    assert average_precision(s, y) == pytest.approx(expected)
    perm = np.array([3, 0, 4, 2, 1])
    assert average_precision(s[perm], y[perm]) == average_precision(s, y)
    assert average_precision(torch.tensor(s), torch.tensor(y)) == pytest.approx(expected)


def test_mean_average_precision():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.9, 0.4], [0.7, 0.2, 0.3], [0.6, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    m, ap = mean_average_precision(scores, targets)
    assert ap[0] == pytest.approx(5 / 6) and ap[1] == pytest.approx(1.0)
    assert math.isnan(ap[2])
    assert m == pytest.approx((5 / 6 + 1) / 2)


def test_saliency_mae_and_f_measure_by_hand():
    pred = np.array([[0.9, 0.2], [0.6, 0.0]])
    gt = np.array([[1, 0], [1, 0]], dtype=bool)
    assert saliency_mae(pred, gt) == pytest.approx((0.1 + 0.2 + 0.4 + 0.0) / 4)
    # thresholds τ = 0, 0.5, 1:  τ=0 all fg: P=1/2, R=1, F=1.3*0.5/(0.15+1);  τ=0.5: P=R=1, F=1;
    # τ=1: nothing predicted, F=0
    f0 = 1.3 * 0.5 * 1 / (0.3 * 0.5 + 1)
    max_f, mean_f = saliency_f_measure(pred, gt, thresholds=3)
    assert max_f == pytest.approx(1.0)
    assert mean_f == pytest.approx((f0 + 1 + 0) / 3)
    # uint8 maps are read as /255; a perfect binary map has MAE 0 and max F 1
    perfect = gt.astype(np.uint8) * 255
    assert saliency_mae(perfect, gt) == 0.0
    assert saliency_f_measure(perfect, gt)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        saliency_mae(pred * 2, gt)


def test_saliency_stats_accumulates():
    pred = np.array([[0.9, 0.2], [0.6, 0.0]])
    gt = np.array([[1, 0], [1, 0]])
    inverted = 1.0 - pred  # MAE 1 - 0.175
    st = SaliencyStats(thresholds=3).update(pred, gt).update(inverted, gt)
    v = st.value
    assert v["n"] == 2
    assert v["mae"] == pytest.approx((0.175 + 0.825) / 2)
    # inverted map: τ=0: P=1/2 R=1; τ=0.5: fg={0.8 (bg), 1.0 (bg)} P=0 R=0; τ=1: {1.0} P=0 R=0
    # mean curves: τ=0 P=1/2 R=1; τ=0.5 P=1/2 R=1/2; τ=1 P=0 R=0
    f = [1.3 * 0.5 / (0.15 + 1), 1.3 * 0.25 / (0.15 + 0.5), 0.0]
    assert v["max_f"] == pytest.approx(max(f))
    assert v["mean_f"] == pytest.approx(sum(f) / 3)
    assert math.isnan(SaliencyStats().value["mae"])


def test_boundary_f_score():
    gt = np.zeros((32, 32), dtype=np.int64)
    gt[8:20, 8:20] = 1
    assert boundary_f_score(gt, gt) == 1.0
    assert boundary_f_score(gt.astype(bool), gt.astype(bool)) == 1.0
    shifted = np.roll(gt, 3, axis=1)
    f_strict = boundary_f_score(shifted, gt, tolerance=1)
    assert 0.0 < f_strict < 1.0
    # every boundary pixel of a 3-px shift is within 3 px of the other boundary
    assert boundary_f_score(shifted, gt, tolerance=3) == pytest.approx(1.0)
    assert boundary_f_score(shifted, gt, tolerance=2) > f_strict
    # the wrong class on the same shape has no matching boundary
    assert boundary_f_score(np.where(gt == 1, 2, 0), gt) == 0.0
    # nothing predicted: precision and recall 0
    assert boundary_prf(np.zeros_like(gt), gt) == (0.0, 0.0, 0.0)
    # boundary pixels touching the image border are not boundaries
    full = np.ones((8, 8), dtype=np.int64)
    assert boundary_prf(full, full) == (1.0, 1.0, 1.0)


def test_boundary_prf_counts_by_hand():
    # a 3x3 square: its inner boundary is the 8 pixels around the centre
    gt = np.zeros((7, 7), dtype=np.int64)
    gt[2:5, 2:5] = 1
    pred = np.zeros_like(gt)
    pred[2:5, 2:6] = 1  # one column wider: boundary = 10 pixels (the 2 centre pixels are interior)
    p, r, f = boundary_prf(pred, gt, tolerance=0)
    # exact matches: gt boundary pixels also on pred boundary = 8 - 1 (gt's right-middle (3,4) is
    # interior in pred); pred boundary pixels on gt boundary = same 7
    assert p == pytest.approx(7 / 10)
    assert r == pytest.approx(7 / 8)
    assert f == pytest.approx(2 * p * r / (p + r))
    # tolerance 1 matches everything
    assert boundary_prf(pred, gt, tolerance=1)[2] == pytest.approx(1.0)
