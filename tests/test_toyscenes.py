"""Tests of wsss_core.data.toyscenes: the procedurally generated VOC-layout dataset.

Properties of single scenes (determinism, parts inside objects, context outside objects, boxes,
the 255 border), statistics over a few hundred scenes (co-occurrence, camouflage, part share,
saliency quality), the saliency stand-in's parameters, and the written tree (layout, caching, CLI,
reading it back through the one VOC reader).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import cv2
import numpy as np
import pytest

from wsss_core.data import toyscenes as ts
from wsss_core.data.palette import read_gray_png, read_image, read_label_png
from wsss_core.data.toyscenes import (
    CLASS_NAMES,
    ToySceneConfig,
    context_pairs,
    ensure_toyscenes,
    generate,
    image_id,
    render_scene,
)
from wsss_core.data.voc import VOCLayoutDataset, parse_voc_xml

CFG = ToySceneConfig(n_train=24, n_val=8)
N_PROPS = 40  # scenes whose per-pixel properties are checked
N_STATS = 300  # scenes for the statistics


def render_with_preborder(cfg: ToySceneConfig, index: int):
    """``render_scene`` plus the instance map *before* the 255 border was drawn (captured from the
    generator's ``_ignore_border`` call; the boxes are computed from that map)."""
    captured = []
    orig = ts._ignore_border

    def spy(inst):
        captured.append(inst.copy())
        return orig(inst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ts, "_ignore_border", spy)
        sc = render_scene(cfg, index)
    assert captured  # one capture per draw; a redrawn scene (no labelled object) gives several
    return sc, captured[-1]


@pytest.fixture(scope="module")
def scenes():
    return [render_with_preborder(CFG, i) for i in range(N_STATS)]


def tight_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def mixed_3x3(ids: np.ndarray) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood (inside the image) holds more than one value — computed with
    numpy shifts, independently of the generator's OpenCV morphology."""
    H, W = ids.shape
    p = np.pad(ids.astype(np.int32), 1, mode="edge")  # edge replication = "outside is ignored"
    out = np.zeros((H, W), bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= p[dy:dy + H, dx:dx + W] != ids
    return out


# --------------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------------
def _assert_same_scene(a, b):
    for f in ("image", "cls", "inst", "part", "context", "saliency", "saliency_unsup"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.objects == b.objects


def test_same_seed_and_index_give_identical_scenes():
    for i in (0, 7, 23):
        _assert_same_scene(render_scene(CFG, i), render_scene(CFG, i))


def test_other_seed_or_index_gives_another_image():
    a = render_scene(CFG, 3)
    assert not np.array_equal(a.image, render_scene(dataclasses.replace(CFG, seed=1), 3).image)
    assert not np.array_equal(a.image, render_scene(CFG, 4).image)


def test_scene_does_not_depend_on_dataset_size():
    big = dataclasses.replace(CFG, n_train=2000, n_val=500)
    for i in (0, 5, 31):
        _assert_same_scene(render_scene(CFG, i), render_scene(big, i))


def test_saliency_parameters_change_only_the_saliency():
    # the saliency is drawn last, so the scene itself is the same whatever its parameters
    other = dataclasses.replace(CFG, sal_p_miss=1.0, sal_p_distractor=0.0, sal_blur_sigma=0.0)
    for i in (1, 2):
        a, b = render_scene(CFG, i), render_scene(other, i)
        for f in ("image", "cls", "inst", "part", "context"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        assert not np.array_equal(a.saliency, b.saliency)


# --------------------------------------------------------------------------------------------------
# per-scene properties
# --------------------------------------------------------------------------------------------------
def test_value_sets_shapes_and_dtypes(scenes):
    S = CFG.image_size
    for sc, pre in scenes[:N_PROPS]:
        K = len(sc.objects)
        assert K >= 1
        assert sc.image.shape == (S, S, 3) and sc.image.dtype == np.uint8
        for m in (sc.cls, sc.inst, sc.part, sc.context):
            assert m.shape == (S, S) and m.dtype == np.uint8
        assert set(np.unique(sc.cls).tolist()) <= set(range(7)) | {255}
        assert set(np.unique(sc.context).tolist()) <= {0, 1, 2}
        assert set(np.unique(sc.part).tolist()) <= set(range(7))
        # instance ids are exactly 1..K (plus background and border), in XML order
        assert set(np.unique(sc.inst).tolist()) - {0, 255} == set(range(1, K + 1))
        assert set(np.unique(pre).tolist()) - {0} == set(range(1, K + 1))
        # the class map and the instance map share their border and background
        np.testing.assert_array_equal(sc.cls == 255, sc.inst == 255)
        np.testing.assert_array_equal(sc.cls == 0, sc.inst == 0)
        for sal in (sc.saliency, sc.saliency_unsup):
            assert sal.dtype == np.float32 and sal.shape == (S, S)
            assert sal.min() >= 0.0 and sal.max() <= 1.0


def test_instance_classes_match_the_objects(scenes):
    for sc, pre in scenes[:N_PROPS]:
        for k, o in enumerate(sc.objects, start=1):
            assert 1 <= o["cls"] <= 6
            assert set(np.unique(sc.cls[sc.inst == k]).tolist()) == {o["cls"]}
            assert set(np.unique(sc.cls[pre == k]).tolist()) <= {o["cls"], 255}
        assert (sc.cls[pre == 0] != 0).sum() == (sc.cls[pre == 0] == 255).sum()  # bg is 0 or border


def test_boxes_are_tight_boxes_of_the_preborder_instances(scenes):
    S = CFG.image_size
    for sc, pre in scenes[:N_PROPS]:
        for k, o in enumerate(sc.objects, start=1):
            x1, y1, x2, y2 = o["box"]
            # exact: the box is the tight box of the instance's pixels before the border was drawn,
            # i.e. of its interior pixels together with the 255 pixels that belonged to it
            assert o["box"] == tight_box(pre == k)
            np.testing.assert_array_equal(pre == k, (sc.inst == k) | ((sc.inst == 255) & (pre == k)))
            # seen from the written masks: the interior lies strictly inside the box on every side
            # that is not the image edge, and that side's outermost line holds border pixels
            ix1, iy1, ix2, iy2 = tight_box(sc.inst == k)
            assert (x1 < ix1 or x1 == ix1 == 0) and (y1 < iy1 or y1 == iy1 == 0)
            assert (x2 > ix2 or x2 == ix2 == S) and (y2 > iy2 or y2 == iy2 == S)
            if x1 > 0:
                assert (sc.inst[y1:y2, x1] == 255).any() and not (sc.inst[y1:y2, x1] == k).any()
            if y2 < S:
                assert (sc.inst[y2 - 1, x1:x2] == 255).any() and not (sc.inst[y2 - 1, x1:x2] == k).any()
            assert o["truncated"] == (x1 == 0 or y1 == 0 or x2 == S or y2 == S)


def test_parts_lie_inside_objects_of_their_class(scenes):
    for sc, pre in scenes[:N_PROPS]:
        on = sc.part > 0
        valid = on & (sc.cls != 255)
        np.testing.assert_array_equal(sc.part[valid], sc.cls[valid])
        assert (pre[on] > 0).all()  # border part pixels too belong to an object
        obj_cls = np.array([0] + [o["cls"] for o in sc.objects])
        np.testing.assert_array_equal(sc.part[on], obj_cls[pre[on]])
        for k, o in enumerate(sc.objects, start=1):
            badge = (sc.part == o["cls"]) & (pre == k)
            assert badge.any(), "every labelled object carries a visible badge"
            assert badge.sum() < 0.5 * (pre == k).sum()


def test_context_never_overlaps_objects(scenes):
    for sc, pre in scenes[:N_PROPS]:
        assert not sc.context[pre > 0].any()
        assert not sc.context[(sc.cls > 0) & (sc.cls != 255)].any()


def test_ignore_border_rule(scenes):
    """255 marks exactly the pixels whose 3×3 neighbourhood mixes instance ids (background included)."""
    for sc, pre in scenes[:N_PROPS]:
        border = mixed_3x3(pre)
        np.testing.assert_array_equal(sc.inst == 255, border)
        np.testing.assert_array_equal(sc.inst, np.where(border, 255, pre))
        # every object is outlined: its 1-px outer ring and its 1-px inner rim are 255
        for k in range(1, len(sc.objects) + 1):
            m = (pre == k).astype(np.uint8)
            ring = cv2.dilate(m, np.ones((3, 3), np.uint8)).astype(bool) & (m == 0)
            assert ring.any() and (sc.inst[ring] == 255).all()
            assert (sc.inst[(m > 0) & mixed_3x3(m)] == 255).all()
        # seen from the written mask: an interior pixel's 8 neighbours are its own id or 255
        H, W = sc.inst.shape
        p = np.pad(sc.inst, 1, mode="edge")
        inner = (sc.inst > 0) & (sc.inst != 255)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                nb = p[dy:dy + H, dx:dx + W][inner]
                assert ((nb == sc.inst[inner]) | (nb == 255)).all()


def test_ignore_border_is_thin(scenes):
    """One pixel on each side of a boundary: a 3×3 erosion removes all but junction pixels (where
    three regions or a 1-px sliver meet the band is locally wider) and three erosions leave nothing."""
    k = np.ones((3, 3), np.uint8)
    band_px = survivors = 0
    for sc, _ in scenes:
        b = (sc.inst == 255).astype(np.uint8)
        e1 = cv2.erode(b, k)
        band_px += int(b.sum())
        survivors += int(e1.sum())
        assert not cv2.erode(cv2.erode(e1, k), k).any()
    assert survivors < 0.05 * band_px  # measured 2 % (seed 0, 300 scenes)


# --------------------------------------------------------------------------------------------------
# statistics over N_STATS scenes
# --------------------------------------------------------------------------------------------------
def _binomial_tol(p: float, n: int, z: float = 4.0) -> float:
    """z standard errors of a proportion estimated from n trials: a z = 4 miss has probability
    ≈ 6e-5 for a correct generator and any seed."""
    return z * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("cls_idx, ctx_id", [(1, 1), (2, 2)])  # boat/water, train/rails
def test_context_co_occurrence(scenes, cls_idx, ctx_id):
    with_c = [ctx_id in sc.context for sc, _ in scenes if any(o["cls"] == cls_idx for o in sc.objects)]
    without = [ctx_id in sc.context for sc, _ in scenes if not any(o["cls"] == cls_idx for o in sc.objects)]
    assert len(with_c) >= 50 and len(without) >= 150
    p1, p0 = CFG.p_context_with_class, CFG.p_context_without_class
    # +0.01: a band can be hidden by bodies, and a labelled body dropped for lack of badge room
    # leaves its band behind (rare: ~1 image in 600)
    assert abs(np.mean(with_c) - p1) <= _binomial_tol(p1, len(with_c)) + 0.01
    assert abs(np.mean(without) - p0) <= _binomial_tol(p0, len(without)) + 0.01
    assert np.mean(with_c) - np.mean(without) > 0.75  # the co-occurrence EPS is about


@pytest.mark.parametrize("p_with, p_without", [(0.0, 1.0), (1.0, 0.0)])
def test_context_follows_its_probabilities(p_with, p_without):
    """Degenerate probabilities make the band a function of the label."""
    cfg = dataclasses.replace(CFG, p_context_with_class=p_with, p_context_without_class=p_without)
    mismatches = 0
    for i in range(40):
        sc = render_scene(cfg, i)
        classes = {o["cls"] for o in sc.objects}
        for c in (1, 2):
            want = p_with == 1.0 if c in classes else p_without == 1.0
            if c in classes:
                assert (c in sc.context) == want  # the object's class was drawn, so was the coin
            else:  # a drawn class whose body was dropped later still decided the band (rare)
                mismatches += (c in sc.context) != want
    assert mismatches <= 1


def test_camouflage_share(scenes):
    flags = [o["camouflaged"] for sc, _ in scenes for o in sc.objects]
    assert len(flags) > 400
    p = CFG.p_camouflage
    assert abs(np.mean(flags) - p) <= _binomial_tol(p, len(flags))
    nonconvex = [o["nonconvex"] for sc, _ in scenes for o in sc.objects]
    assert abs(np.mean(nonconvex) - CFG.p_nonconvex) <= _binomial_tol(CFG.p_nonconvex, len(nonconvex))


def test_badges_are_a_small_share_of_objects(scenes):
    part = sum(int((sc.part > 0).sum()) for sc, _ in scenes)
    obj = sum(int((pre > 0).sum()) for _, pre in scenes)
    share = part / obj
    assert 0.02 < share < 0.2  # measured 0.08: what makes CAMs partial
    # badges 9-14 px across: each covers between ~25 and ~200 pixels
    sizes = [int(((sc.part == o["cls"]) & (pre == k)).sum())
             for sc, pre in scenes[:N_PROPS] for k, o in enumerate(sc.objects, start=1)]
    assert min(sizes) >= 15 and max(sizes) <= 200


def test_objects_per_image_follows_the_config(scenes):
    n = np.array([len(sc.objects) for sc, _ in scenes])
    expected = sum((k + 1) * p for k, p in enumerate(CFG.n_objects_probs))  # 1.75
    # a few labelled bodies are dropped (buried, or no room for a badge): the mean can only drop
    sd = math.sqrt(sum((k + 1 - expected) ** 2 * p for k, p in enumerate(CFG.n_objects_probs)))
    assert expected - 0.1 - 4 * sd / math.sqrt(len(n)) <= n.mean() <= expected + 4 * sd / math.sqrt(len(n))
    assert n.max() <= 3


def test_saliency_stand_in_beats_opencv_saliency(scenes):
    mae_std, mae_cv = [], []
    for sc, _ in scenes:
        valid = sc.cls != 255
        fg = ((sc.cls > 0) & valid).astype(np.float32)
        mae_std.append(np.abs(sc.saliency - fg)[valid].mean())
        mae_cv.append(np.abs(sc.saliency_unsup - fg)[valid].mean())
    mae_std, mae_cv = np.array(mae_std), np.array(mae_cv)
    assert mae_std.mean() < 0.5 * mae_cv.mean()  # measured 0.079 vs 0.233
    assert (mae_std < mae_cv).mean() > 0.8  # and in most single images (measured 91 %)


def test_saliency_stand_in_that_misses_everything_is_empty():
    cfg = dataclasses.replace(CFG, sal_p_miss=1.0, sal_p_distractor=0.0)
    for i in range(20):
        sal = render_scene(cfg, i).saliency
        # only the clipped N(0, 0.02) noise is left: mean ≈ 0.02 / √(2π) ≈ 0.008, max < 6 σ
        assert sal.max() < 0.12 and sal.mean() < 0.015


def test_saliency_stand_in_without_misses_covers_objects():
    cfg = dataclasses.replace(CFG, sal_p_miss=0.0, sal_blur_sigma=0.0, sal_p_distractor=0.0)
    below, total = 0, 0
    for i in range(30):
        sc, pre = render_with_preborder(cfg, i)
        for k in range(1, len(sc.objects) + 1):
            s = sc.saliency[pre == k]
            # one level U(0.75, 1) per object plus N(0, 0.02) noise
            assert 0.75 - 0.01 <= s.mean() <= 1.0 and s.std() < 0.03
            assert s.min() >= 0.75 - 6 * 0.02
            below += int((s < 0.7).sum())
            total += s.size
        assert sc.saliency[pre == 0].max() < 6 * 0.02  # no distractors: background is noise only
    assert below <= 0.005 * total


# --------------------------------------------------------------------------------------------------
# the written tree
# --------------------------------------------------------------------------------------------------
SUBDIRS = ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations", "PartMask",
           "ContextMask", "Saliency", "SaliencyUnsupervised")
EXT = {"JPEGImages": ".jpg", "Annotations": ".xml"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    man = generate(root, CFG, workers=1, progress=False)
    return root, man


def test_tree_layout(tree):
    root, man = tree
    ids = [image_id(i) for i in range(32)]
    assert ids[0] == "toy_000000"
    for sub in SUBDIRS:
        files = sorted(p.name for p in (root / sub).iterdir())
        assert files == [f"{i}{EXT.get(sub, '.png')}" for i in ids], sub
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert train == ids[:24] and val == ids[24:]
    assert not set(train) & set(val) and sorted(train + val) == ids
    assert (root / "class_names.txt").read_text().split() == CLASS_NAMES
    on_disk = json.loads((root / "toyscenes.json").read_text())
    assert on_disk == json.loads(json.dumps(man))
    assert on_disk["generator_version"] == ts.GENERATOR_VERSION
    assert ToySceneConfig.from_dict(on_disk["config"]) == CFG
    assert on_disk["class_names"] == CLASS_NAMES
    assert on_disk["contexts"] == {"1": {"name": "water", "class": 1}, "2": {"name": "rails", "class": 2}}
    assert not (root / "toyscenes.json.tmp").exists()


def test_manifest_statistics_match_the_scenes(tree):
    _, man = tree
    st = man["stats"]
    sc = [render_scene(CFG, i) for i in range(32)]
    assert st["n_images"] == 32
    assert st["objects_per_image"] == pytest.approx(np.mean([len(s.objects) for s in sc]))
    n_obj = sum(len(s.objects) for s in sc)
    assert st["camouflaged_share"] == pytest.approx(sum(o["camouflaged"] for s in sc for o in s.objects) / n_obj)
    counts = {n: sum(any(o["cls"] == c for o in s.objects) for s in sc[:24]) for c, n in enumerate(CLASS_NAMES) if c}
    assert st["train_images_per_class"] == counts
    assert set(st["co_occurrence"]) == {"water", "rails"}
    assert st["co_occurrence"]["water"]["class"] == "boat"
    boats = [1 in s.context for s in sc[:24] if any(o["cls"] == 1 for o in s.objects)]
    assert st["co_occurrence"]["water"]["p_context_given_class"] == pytest.approx(np.mean(boats))
    assert 0 < st["part_share_of_foreground"] < 0.2
    assert st["saliency_mae"] < st["saliency_unsupervised_mae"]
    valid = sum(int((s.cls != 255).sum()) for s in sc)
    err = sum(float(np.abs(s.saliency - ((s.cls > 0) & (s.cls != 255)))[s.cls != 255].sum()) for s in sc)
    assert st["saliency_mae"] == pytest.approx(err / valid, rel=1e-5)


def test_files_hold_the_rendered_scene(tree):
    root, _ = tree
    for i in (0, 13, 30):
        sc, iid = render_scene(CFG, i), image_id(i)
        np.testing.assert_array_equal(read_label_png(root / "SegmentationClass" / f"{iid}.png"), sc.cls)
        np.testing.assert_array_equal(read_label_png(root / "SegmentationObject" / f"{iid}.png"), sc.inst)
        np.testing.assert_array_equal(read_label_png(root / "PartMask" / f"{iid}.png"), sc.part)
        np.testing.assert_array_equal(read_label_png(root / "ContextMask" / f"{iid}.png"), sc.context)
        for sub, sal in (("Saliency", sc.saliency), ("SaliencyUnsupervised", sc.saliency_unsup)):
            np.testing.assert_allclose(read_gray_png(root / sub / f"{iid}.png"), sal, atol=0.5 / 255 + 1e-6)
        img = read_image(root / "JPEGImages" / f"{iid}.jpg").astype(np.float32)
        assert img.shape == sc.image.shape
        # JPEG quality 95 with OpenCV's default 4:2:0 chroma subsampling: mean error 3-4.6 levels
        # (PSNR 29-33 dB) on these small, noisy, saturated images; another scene is far off
        assert np.abs(img - sc.image).mean() < 6.0
        assert np.abs(img - render_scene(CFG, i + 1).image).mean() > 20.0
        objs = parse_voc_xml(root / "Annotations" / f"{iid}.xml")
        assert [o["name"] for o in objs] == [CLASS_NAMES[o["cls"]] for o in sc.objects]
        for o, ob in zip(objs, sc.objects):
            x1, y1, x2, y2 = ob["box"]
            assert o["bbox"].tolist() == [x1 + 1, y1 + 1, x2, y2]  # VOC: 1-based inclusive
            assert o["difficult"] is False


def test_tree_reads_through_the_voc_reader(tree):
    root, _ = tree
    ds = VOCLayoutDataset(root, "train")
    assert len(ds) == 24 and ds.class_names == CLASS_NAMES and ds.num_classes == 6
    assert set(ds.extra_dirs) == {"part_mask", "context_mask"} and ds.saliency_dir == root / "Saliency"
    for i in (0, 5, 17):
        s, sc = ds[i], render_scene(CFG, i)
        assert s["id"] == image_id(i)
        exp_label = np.zeros(6, np.float32)
        for o in sc.objects:
            exp_label[o["cls"] - 1] = 1
        np.testing.assert_array_equal(s["label"].numpy(), exp_label)
        assert s["boxes"].tolist() == [[float(v) for v in o["box"]] for o in sc.objects]
        assert s["box_labels"].tolist() == [o["cls"] for o in sc.objects]
        assert s["box_instance_ids"].tolist() == list(range(1, len(sc.objects) + 1))
        np.testing.assert_array_equal(s["mask"].numpy(), sc.cls)
        np.testing.assert_array_equal(s["instance_mask"].numpy(), sc.inst)
        np.testing.assert_array_equal(s["part_mask"].numpy(), sc.part)
        np.testing.assert_array_equal(s["context_mask"].numpy(), sc.context)
        np.testing.assert_allclose(s["saliency"].numpy(), sc.saliency, atol=0.5 / 255 + 1e-6)
        # a box from the XML bounds its instance's interior
        for (x1, y1, x2, y2), k in zip(s["boxes"].tolist(), s["box_instance_ids"].tolist()):
            ix1, iy1, ix2, iy2 = tight_box(s["instance_mask"].numpy() == k)
            assert x1 <= ix1 and y1 <= iy1 and ix2 <= x2 and iy2 <= y2
    assert VOCLayoutDataset(root, "val").ids == [image_id(i) for i in range(24, 32)]
    assert ds.validate(progress=False) == 24


def test_context_pairs(tree, tmp_path):
    root, man = tree
    expected = {"boat/water": (1, 1), "train/rails": (2, 2)}
    assert context_pairs(root) == expected
    assert context_pairs(man) == expected
    with pytest.raises(FileNotFoundError, match="toyscenes.json"):
        context_pairs(tmp_path)


def _age(root, old_ns, manifest=True):
    files = ([root / "toyscenes.json"] if manifest else []) + [
        root / "JPEGImages" / "toy_000000.jpg", root / "SegmentationClass" / "toy_000003.png"]
    for f in files:
        os.utime(f, ns=(old_ns, old_ns))
    return files


def test_ensure_toyscenes_caches_and_regenerates(tmp_path):
    root = tmp_path / "toy"
    cfg = dataclasses.replace(CFG, n_train=8, n_val=4)
    man1 = ensure_toyscenes(root, cfg, workers=1, progress=False)
    old = 1_000_000_000 * 10**9  # 2001: clearly not "now"
    files = _age(root, old)
    # same config: nothing is rewritten
    man2 = ensure_toyscenes(root, dataclasses.replace(cfg), workers=1, progress=False)
    assert man2 == json.loads(json.dumps(man1))
    assert all(f.stat().st_mtime_ns == old for f in files)
    # another config: regenerated, stale files removed
    cfg2 = dataclasses.replace(cfg, seed=1, n_train=4, n_val=2)
    img_before = read_image(files[1])
    man3 = ensure_toyscenes(root, cfg2, workers=1, progress=False)
    assert ToySceneConfig.from_dict(man3["config"]) == cfg2
    assert all(f.stat().st_mtime_ns != old for f in files[:2])
    assert not np.array_equal(read_image(files[1]), img_before)
    assert len(list((root / "JPEGImages").iterdir())) == 6
    assert not (root / "SegmentationClass" / "toy_000006.png").exists()
    # force: regenerated even though identical
    files = _age(root, old)
    ensure_toyscenes(root, cfg2, workers=1, progress=False, force=True)
    assert all(f.stat().st_mtime_ns != old for f in files[:2])
    # a tree without its manifest (e.g. an interrupted run) is regenerated
    (root / "toyscenes.json").unlink()
    files = _age(root, old, manifest=False)
    ensure_toyscenes(root, cfg2, workers=1, progress=False)
    assert (root / "toyscenes.json").is_file() and all(f.stat().st_mtime_ns != old for f in files)


def test_profiles():
    assert ts.config_for_profile("smoke").n_train == 64
    assert ts.config_for_profile("tutorial", seed=3) == ToySceneConfig(n_train=1000, n_val=500, seed=3)
    with pytest.raises(ValueError, match="unknown toy-scenes profile"):
        ts.config_for_profile("paper")


def test_cli_writes_the_tree(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = ts.main(["--out", str(out), "--profile", "smoke", "--n-train", "8", "--n-val", "4", "--workers", "1"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["root"] == str(out) and printed["n_images"] == 12
    man = json.loads((out / "toyscenes.json").read_text())
    assert ToySceneConfig.from_dict(man["config"]) == ToySceneConfig(n_train=8, n_val=4)
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 12
    assert (out / "ImageSets/Segmentation/val.txt").read_text().split() == [image_id(i) for i in range(8, 12)]
    # the CLI's scene 2 is render_scene's scene 2
    np.testing.assert_array_equal(read_label_png(out / "SegmentationClass" / "toy_000002.png"),
                                  render_scene(CFG, 2).cls)


# --- photo-like boxes (opt-in): legged bodies and cast shadows -------------------------------------

def test_photo_like_options_stay_out_of_the_config_dict_at_their_default():
    """Trees cached before the options existed keep their cache key (the manifest's config dict)."""
    d = ToySceneConfig().to_dict()
    assert "p_legged" not in d and "p_shadow" not in d
    on = ToySceneConfig(p_legged=0.5, p_shadow=0.25)
    assert on.to_dict()["p_legged"] == 0.5 and on.to_dict()["p_shadow"] == 0.25
    assert ToySceneConfig.from_dict(on.to_dict()) == on
    assert ToySceneConfig.from_dict(d) == ToySceneConfig()


def _box_fill(cfg, n):
    """Share of each untruncated object's box covered by the object (its 255 outline counted in)."""
    fills = []
    for i in range(n):
        sc = render_scene(cfg, i)
        for k, o in enumerate(sc.objects):
            if o["truncated"]:
                continue
            x1, y1, x2, y2 = o["box"]
            inst = sc.inst[y1:y2, x1:x2]
            fills.append(float(((inst == k + 1) | (inst == 255)).mean()))
    return np.array(fills)


def test_legged_bodies_leave_background_in_their_boxes():
    plain = _box_fill(CFG, 60)
    legged = _box_fill(dataclasses.replace(CFG, p_legged=1.0), 60)
    assert len(plain) > 20 and len(legged) > 20
    # measured: 0.77 vs 0.66 (80 scenes); the Weizmann horses fill 0.4-0.5 of their boxes
    assert legged.mean() < plain.mean() - 0.06
    assert np.percentile(legged, 10) < 0.56


def test_legged_mask_is_a_torso_on_separate_legs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = ts._legged_mask(rng, 48.0, 48.0, 24.0, 96)
        ys, xs = np.nonzero(m)
        row = m[int(48 + 0.7 * 24)]  # below the torso (half-height ≤ 0.6 r, centred 0.25 r up)
        runs = np.count_nonzero(np.diff(np.r_[0, row.astype(np.int8), 0]) == 1)
        assert 2 <= runs <= 4  # 2-4 legs, apart from each other
        assert ys.max() >= 48 + 0.8 * 24 - 1  # feet at cy + 0.8..1.0 r
        assert m[int(48 - 0.25 * 24), 48]  # the torso's centre


def test_shadow_lies_at_the_foot_of_the_body_and_outside_it():
    body = np.zeros((96, 96), bool)
    body[20:41, 30:51] = True
    sh = ts._shadow_mask(np.random.default_rng(1), body, 15.0)
    ys, xs = np.nonzero(sh)
    assert len(ys) > 20 and not (sh & body).any()
    assert ys.min() >= 40 - 0.35 * 15 - 1 and ys.max() <= 40 + 0.35 * 15 + 1  # a flat ellipse at y = 40
    assert xs.max() - xs.min() > 2 * (ys.max() - ys.min())
    assert 30 - 8 <= xs.mean() <= 50 + 8


def test_probabilities_are_checked():
    with pytest.raises(ValueError, match="p_legged must be a probability"):
        ToySceneConfig(p_legged=1.5)


def test_cli_passes_the_photo_like_options(tmp_path, capsys):
    out = tmp_path / "legged"
    assert ts.main(["--out", str(out), "--profile", "smoke", "--n-train", "4", "--n-val", "2", "--workers", "1",
                    "--p-legged", "1", "--p-shadow", "0.5"]) == 0
    capsys.readouterr()
    cfg = ToySceneConfig.from_dict(json.loads((out / "toyscenes.json").read_text())["config"])
    assert cfg.p_legged == 1.0 and cfg.p_shadow == 0.5
