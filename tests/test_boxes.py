"""wsss_core.boxes: label assembly from boxes (hand-made cases), GrabCut on synthetic images, filling
rates, error counts, the cached parallel split run, and — where ../shared/data exists — the GrabCut
benchmark."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from wsss_core import boxes as B
from wsss_core.data.palette import read_label_png


def _scene(seed: int = 0, size: int = 48):
    """A textured green background with a red disk (class 1) and a blue square (class 2)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    img[:] = (40, 140, 50)
    img += rng.normal(0, 12, img.shape)
    truth = np.zeros((size, size), np.uint8)
    cv2.circle(truth, (14, 16), 9, 1, -1)
    truth[28:42, 26:42] = 2
    img[truth == 1] = (210, 40, 40) + rng.normal(0, 10, ((truth == 1).sum(), 3))
    img[truth == 2] = (40, 50, 220) + rng.normal(0, 10, ((truth == 2).sum(), 3))
    boxes = np.array([[4, 6, 25, 27], [25, 27, 43, 43]], np.float32)  # a little looser than tight
    return np.clip(img, 0, 255).astype(np.uint8), truth, boxes, np.array([1, 2])


# --------------------------------------------------------------------------------------------------
# assembly by hand
# --------------------------------------------------------------------------------------------------
def test_paste_smaller_box_wins_and_background_does_not_erase():
    shape = (6, 8)
    big = np.zeros(shape, bool)
    big[0:6, 0:6] = True                        # box 0: class 1, 6x6, mask = whole box
    small = np.zeros(shape, bool)
    small[2:4, 3:5] = True                      # box 1: class 2, box 4x4 at (2..6, 2..6), mask = a 2x2 part
    boxes = [[0, 0, 6, 6], [2, 2, 6, 6]]
    out = B.paste_masks([big, small], boxes, [1, 2], shape)
    want = np.zeros(shape, np.uint8)
    want[0:6, 0:6] = 1
    want[2:4, 3:5] = 2                          # only the small box's *object* pixels overwrite
    np.testing.assert_array_equal(out, want)
    # given in the other order, the result is the same (order is by area, not by file order)
    np.testing.assert_array_equal(B.paste_masks([small, big], boxes[::-1], [2, 1], shape), want)


def test_filled_boxes_and_box_index_map():
    shape = (5, 7)
    boxes = np.array([[0, 0, 5, 4], [3, 1, 7, 5], [1, 1, 3, 3]], np.float32)  # areas 20, 16, 4
    want = np.array([
        [1, 1, 1, 1, 1, 0, 0],
        [1, 3, 3, 2, 2, 2, 2],
        [1, 3, 3, 2, 2, 2, 2],
        [1, 1, 1, 2, 2, 2, 2],
        [0, 0, 0, 2, 2, 2, 2]], np.uint8)
    np.testing.assert_array_equal(B.filled_box_labels(boxes, [1, 2, 3], shape), want)
    idx = B.box_index_map(boxes, shape)
    np.testing.assert_array_equal(idx, np.where(want == 0, -1, want.astype(np.int64) - 1))
    # equal areas: the later box wins, in both functions
    same = np.array([[0, 0, 2, 2], [1, 0, 3, 2]], np.float32)
    np.testing.assert_array_equal(B.box_index_map(same, (2, 3)), [[0, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(B.filled_box_labels(same, [4, 5], (2, 3)), [[4, 5, 5], [4, 5, 5]])


def test_box_pixels_rounds_outwards_and_rejects_empty_boxes():
    assert B.box_pixels([0.4, 1.6, 3.2, 4.0], (10, 10)) == (0, 1, 4, 4)
    assert B.box_pixels([-3, -3, 20, 20], (10, 12)) == (0, 0, 12, 10)
    with pytest.raises(ValueError, match="covers no pixel"):
        B.box_pixels([12, 0, 15, 5], (10, 10))
    with pytest.raises(ValueError, match="labels"):
        B.filled_box_labels([[0, 0, 2, 2]], [1, 2], (4, 4))
    with pytest.raises(ValueError, match="1..254"):
        B.filled_box_labels([[0, 0, 2, 2]], [0], (4, 4))


def test_tiny_boxes_are_filled():
    img, _, _, _ = _scene()
    for box, tiny in [([5, 5, 7, 20], True),        # 2 px wide
                      ([10, 10, 12, 12], True),     # 2x2
                      ([5, 5, 8, 8], False)]:       # 3x3 = 9 px: GrabCut is tried
        m, how = B.grabcut_box(img, box, B.GrabCutConfig())
        x1, y1, x2, y2 = B.box_pixels(box, img.shape[:2])
        assert (how == "tiny") == tiny, box
        assert not m[:y1].any() and not m[y2:].any() and not m[:, :x1].any() and not m[:, x2:].any()
        if tiny:
            assert m.sum() == (x2 - x1) * (y2 - y1)
    # a tiny box among normal ones: its pixels take its class (it is the smallest box)
    boxes = np.array([[4, 6, 25, 27], [30, 5, 32, 7]], np.float32)
    lab = B.grabcut_labels(img, boxes, [1, 3])
    assert (lab[5:7, 30:32] == 3).all()


def test_grabcut_separates_objects_and_keeps_outside_background():
    img, truth, boxes, labels = _scene()
    lab, det = B.grabcut_labels(img, boxes, labels, return_details=True)
    inside = B.box_index_map(boxes, truth.shape) >= 0
    assert (lab[~inside] == 0).all()
    for c in (1, 2):
        inter = ((lab == c) & (truth == c)).sum()
        union = ((lab == c) | (truth == c)).sum()
        assert inter / union > 0.85, (c, inter / union)
    assert det["how"] == ["grabcut", "grabcut"]
    # filling rates: the object's share of its box, from the per-box masks
    true_fill = [((truth == c)[int(b[1]):int(b[3]), int(b[0]):int(b[2])]).mean() for b, c in zip(boxes, labels)]
    np.testing.assert_allclose(det["fill"], true_fill, atol=0.08)
    # deterministic: the same labels twice (OpenCV's RNG is reseeded per box)
    np.testing.assert_array_equal(lab, B.grabcut_labels(img, boxes, labels))


def test_whole_image_box_is_shrunk_not_an_error():
    img, truth, _, _ = _scene(size=40)
    m, how = B.grabcut_box(img, [0, 0, 40, 40], B.GrabCutConfig())
    assert how == "grabcut"
    # the red disk is the odd colour out: GrabCut, told only that the 3-px frame is background, finds
    # the blue square too; at least it drops most of the green background
    green = truth == 0
    assert m[green].mean() < 0.5
    assert m[truth == 1].mean() > 0.8


def test_min_fill_falls_back_to_the_box():
    img, truth, boxes, labels = _scene()
    camo = img.copy()
    camo[truth == 1] = (40, 140, 50)            # the disk painted like the background: GrabCut collapses
    m, how = B.grabcut_box(camo, boxes[0], B.GrabCutConfig())
    assert m[truth == 1].mean() < 0.5
    m2, how2 = B.grabcut_box(camo, boxes[0], B.GrabCutConfig(min_fill=0.9))
    assert how2 == "collapsed" and m2[6:27, 4:25].all()


def test_roi_crop_gives_masks_inside_the_box():
    img, truth, boxes, labels = _scene()
    lab = B.grabcut_labels(img, boxes, labels, B.GrabCutConfig(roi_margin=0.3))
    for c in (1, 2):
        inter = ((lab == c) & (truth == c)).sum()
        assert inter / ((lab == c) | (truth == c)).sum() > 0.85
    assert (lab[B.box_index_map(boxes, truth.shape) < 0] == 0).all()


# --------------------------------------------------------------------------------------------------
# filling rates and errors
# --------------------------------------------------------------------------------------------------
def test_filling_rates_by_hand():
    masks = np.zeros((2, 4, 6), bool)
    masks[0, 0:2, 0:3] = True                   # 6 of the box's 12 pixels
    masks[1, 3, 5] = True                       # 1 of 4
    boxes = [[0, 0, 3, 4], [4, 2, 6, 4]]
    np.testing.assert_allclose(B.filling_rates(masks, boxes), [0.5, 0.25])
    with pytest.raises(ValueError, match="masks"):
        B.filling_rates(masks[:1], boxes)


def test_region_filling_rates_count_own_pixels_only():
    label = np.array([
        [1, 1, 0, 0],
        [1, 2, 2, 0],
        [0, 2, 255, 0]], np.uint8)
    boxes = np.array([[0, 0, 4, 3], [1, 1, 3, 3]], np.float32)     # box 1 nested in box 0
    bmap = B.box_index_map(boxes, label.shape)
    rho = B.region_filling_rates(label, bmap, [1, 2])
    # box 0 owns the 12 - 4 = 8 outer pixels, 3 of them labelled 1; box 1 owns 3 valid pixels, all 2
    np.testing.assert_allclose(rho, [3 / 8, 1.0])
    assert np.isnan(B.region_filling_rates(label, np.full(label.shape, -1), [1]))[0]


def test_grabcut_errors_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255], [0, 0, 0, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 0], [0, 1, 2, 1], [2, 0, 0, 0]], np.uint8)
    e = B.grabcut_errors(pred, gt, boxes=[[0, 0, 4, 2]])
    assert e["object"] == 4 and e["missed"] == 2 and e["wrong_class"] == 1
    assert e["background"] == 7 and e["taken"] == 2 and e["box_background"] == 3
    assert e["errors"] == 4 and e["valid"] == 11
    st = B.GrabCutStats().update(pred, gt, [[0, 0, 4, 2]]).summary()
    assert st["miss_rate"] == 0.5 and st["take_rate"] == pytest.approx(2 / 3)
    assert st["mean_image_error"] == pytest.approx(4 / 11)


def test_read_object_flags(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text("<annotation><object><name>cat</name><camouflaged>1</camouflaged></object>"
                 "<object><name>dog</name><nonconvex>1</nonconvex><truncated>0</truncated></object></annotation>")
    assert B.read_object_flags(p) == [{"camouflaged": 1, "nonconvex": 0, "truncated": 0},
                                      {"camouflaged": 0, "nonconvex": 1, "truncated": 0}]


def test_config_checks():
    with pytest.raises(ValueError, match="iterations"):
        B.GrabCutConfig(iterations=0)
    with pytest.raises(ValueError, match="min_fill"):
        B.GrabCutConfig(min_fill=1.0)
    assert B.GrabCutConfig().fingerprint() != B.GrabCutConfig(roi_margin=0.5).fingerprint()
    with pytest.raises(ValueError, match="uint8"):
        B.grabcut_box(np.zeros((8, 8, 3), np.float32), [0, 0, 4, 4])


# --------------------------------------------------------------------------------------------------
# a split, cached, in parallel
# --------------------------------------------------------------------------------------------------
def test_make_grabcut_labels_caches_and_parallel_equals_serial(make_voc_tree, tmp_path):
    from wsss_core.data.voc import VOCLayoutDataset

    items = {f"im{k}": {"size": (30, 36), "objects": [(1, (3 + k, 4, 20, 22), False), (2, (18, 10, 34, 28), False)]}
             for k in range(4)}
    tree = make_voc_tree(items, class_names=["background", "a", "b"])
    ds = VOCLayoutDataset(tree.base, "train")
    man = B.make_grabcut_labels(ds, tmp_path / "serial", workers=0, progress=False)
    assert man["ids"] == ds.ids and set(man["fill"]) == set(ds.ids)
    assert all(len(man["fill"][i]) == 2 for i in ds.ids)
    assert sum(man["how_counts"].values()) == 8
    stamp = (tmp_path / "serial" / "im0.png").stat().st_mtime_ns
    again = B.make_grabcut_labels(ds, tmp_path / "serial", workers=0, progress=False)
    assert again["seconds"] == man["seconds"]                      # read from the manifest, not redone
    assert (tmp_path / "serial" / "im0.png").stat().st_mtime_ns == stamp
    par = B.make_grabcut_labels(ds, tmp_path / "par", workers=2, progress=False)
    for i in ds.ids:
        np.testing.assert_array_equal(read_label_png(tmp_path / "serial" / f"{i}.png"),
                                      read_label_png(tmp_path / "par" / f"{i}.png"))
        lab = read_label_png(tmp_path / "par" / f"{i}.png")
        raw = ds.get_raw(ds.ids.index(i))
        assert (lab[B.box_index_map(raw["boxes"], lab.shape) < 0] == 0).all()
    assert json.loads((tmp_path / "par" / B.MANIFEST).read_text())["fingerprint"] == B.GrabCutConfig().fingerprint()
    # another config is not served from the cache
    other = B.make_grabcut_labels(ds, tmp_path / "serial", B.GrabCutConfig(iterations=2), workers=0, progress=False)
    assert other["fingerprint"] != man["fingerprint"]


# --------------------------------------------------------------------------------------------------
# real photos
# --------------------------------------------------------------------------------------------------
def _benchmark(root, n=None, cfg=None):
    from wsss_core.data.voc import VOCLayoutDataset
    from wsss_core.metrics import ConfusionMatrix

    ds = VOCLayoutDataset(root, "all", saliency_dir=None)
    errs, ious = [], []
    for i in range(len(ds) if n is None else n):
        raw = ds.get_raw(i)
        lab = B.grabcut_labels(raw["image"], raw["boxes"], raw["box_labels"], cfg)
        e = B.grabcut_errors(lab, raw["mask"])
        errs.append(e["errors"] / e["valid"])
        ious.append(ConfusionMatrix(2).update(lab, raw["mask"]).iou()[1])
    return float(np.mean(errs)), float(np.mean(ious))


@pytest.mark.realdata
def test_grabcut_benchmark_first_images():
    from conftest import require_shared_data

    root = require_shared_data("grabcut_voc")
    err, iou = _benchmark(root, n=6)
    assert err < 0.08 and iou > 0.75, (err, iou)


@pytest.mark.realdata
@pytest.mark.slow
def test_grabcut_benchmark_all_50_images():
    """Plain OpenCV GrabCut from tight boxes, 5 iterations: ≈ 4.3 % mean error / 0.86 foreground IoU
    (DESIGN.md); ours must be at least as good (we measured 3.97 % / 0.86)."""
    from conftest import require_shared_data

    root = require_shared_data("grabcut_voc")
    err, iou = _benchmark(root)
    assert err <= 0.043 and iou >= 0.855, (err, iou)
