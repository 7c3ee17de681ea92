"""VOCLayoutDataset: reading, root resolution, optional folders, errors on bad files, real data."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from wsss_core.data.palette import DatasetError, write_label_png
from wsss_core.data.transforms import Saliency
from wsss_core.data.voc import VOC_CLASSES, VOCLayoutDataset, collate_samples


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def test_reads_sample_exactly(make_voc_tree):
    tree = make_voc_tree()
    ds = VOCLayoutDataset(tree.base, "train")
    assert ds.ids == ["img_a", "img_b", "img_c"]  # blank lines ignored
    assert ds.num_classes == 20 and ds.class_names == list(VOC_CLASSES) and len(ds) == 3
    assert ds.root == tree.root

    s = ds[0]
    assert s["id"] == "img_a"
    assert isinstance(s["image"], tv_tensors.Image) and s["image"].dtype == torch.uint8
    assert s["image"].shape == (3, 20, 30)
    assert isinstance(s["mask"], tv_tensors.Mask) and s["mask"].dtype == torch.int64
    assert s["mask"].shape == (20, 30)
    np.testing.assert_array_equal(s["mask"].numpy(), tree.masks["img_a"])
    assert set(np.unique(s["mask"].numpy()).tolist()) == {0, 7, 15, 255}
    # person (15) and car (7, difficult: kept) → indices 14 and 6
    expected = np.zeros(20, np.float32)
    expected[[14, 6]] = 1
    assert s["label"].dtype == torch.float32
    np.testing.assert_array_equal(s["label"].numpy(), expected)
    # XML has (3,4,12,10) and (17,6,28,18) 1-based inclusive → (2,3,12,10), (16,5,28,18)
    assert isinstance(s["boxes"], tv_tensors.BoundingBoxes)
    assert s["boxes"].dtype == torch.float32 and s["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(s["boxes"].canvas_size) == (20, 30)
    assert s["boxes"].tolist() == [[2, 3, 12, 10], [16, 5, 28, 18]]
    assert s["box_labels"].tolist() == [15, 7] and s["box_labels"].dtype == torch.int64
    assert s["box_difficult"].tolist() == [False, True]
    assert s["box_instance_ids"].tolist() == [1, 2]
    inst = s["instance_mask"].numpy()
    assert s["instance_mask"].dtype == torch.int64
    assert set(np.unique(inst).tolist()) == {0, 1, 2, 255}
    for k, box in zip(s["box_instance_ids"].tolist(), s["boxes"].tolist()):
        assert tight_box(inst == k) == box
    assert "saliency" not in s and "part_mask" not in s


def test_get_raw_numpy_and_image_labels(make_voc_tree):
    tree = make_voc_tree()
    ds = VOCLayoutDataset(tree.root, "train")
    raw = ds.get_raw(2)
    assert raw["image"].shape == (18, 22, 3) and raw["image"].dtype == np.uint8
    assert raw["mask"].dtype == np.uint8 and raw["mask"].shape == (18, 22)
    assert raw["boxes"].shape == (3, 4)
    labels = ds.image_labels()
    assert labels.shape == (3, 20) and labels.dtype == torch.float32
    exp = torch.zeros(3, 20)
    exp[0, [14, 6]] = 1
    exp[1, 2] = 1
    exp[2, [14, 19]] = 1
    assert torch.equal(labels, exp)
    assert ds.image_labels() is labels  # cached


@pytest.mark.parametrize("nest", [None, "VOC2012", "VOCdevkit"])
def test_root_resolution(make_voc_tree, nest):
    tree = make_voc_tree(nest=nest)
    ds = VOCLayoutDataset(tree.base, "train")
    assert ds.root == tree.root
    assert len(ds) == 3


def test_bad_root_names_path_and_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty.*JPEGImages.*VOC2012.*VOCdevkit"):
        VOCLayoutDataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="nowhere"):
        VOCLayoutDataset(tmp_path / "nowhere")


def test_missing_split_lists_available(make_voc_tree):
    tree = make_voc_tree(splits={"train": ["img_a"], "val": ["img_b"]})
    with pytest.raises(DatasetError, match=r"trainval\.txt.*available splits: \['train', 'val'\]"):
        VOCLayoutDataset(tree.base, "trainval")
    assert VOCLayoutDataset(tree.base, "val").ids == ["img_b"]
    assert VOCLayoutDataset(tree.base, ["img_c", "img_a"]).ids == ["img_c", "img_a"]


def test_segmentation_class_aug(make_voc_tree):
    tree = make_voc_tree()
    # SBD's SegmentationClassAug: single-channel grey PNGs whose values are class indices
    aug = tree.root / "SegmentationClassAug"
    aug.mkdir()
    for id_, spec in tree.items.items():
        m = np.full(spec["size"], 0, np.uint8)
        m[:4, :4] = 9  # chair, not in the VOC masks
        Image.fromarray(m, mode="L").save(aug / f"{id_}.png")
    ds = VOCLayoutDataset(tree.base, "train", mask_dir="SegmentationClassAug")
    s = ds[1]
    assert s["mask"].shape == (24, 24) and set(np.unique(s["mask"].numpy()).tolist()) == {0, 9}
    with pytest.raises(DatasetError, match="SegClsMissing"):
        VOCLayoutDataset(tree.base, "train", mask_dir="SegClsMissing")


def test_class_names_file_vs_default(make_voc_tree):
    items = {"x1": {"size": (16, 16), "objects": [(2, (3, 3, 9, 9), False)]},
             "x2": {"size": (16, 20), "objects": [(1, (0, 0, 5, 5), False), (2, (8, 8, 20, 16), False)]}}
    tree = make_voc_tree(items, class_names=["background", "cat", "dog"])
    ds = VOCLayoutDataset(tree.base)
    assert ds.class_names == ["background", "cat", "dog"] and ds.num_classes == 2
    assert ds[0]["label"].tolist() == [0.0, 1.0]
    assert ds[1]["label"].tolist() == [1.0, 1.0]
    assert ds[1]["box_labels"].tolist() == [1, 2]
    assert ds[1]["boxes"].tolist() == [[0, 0, 5, 5], [8, 8, 20, 16]]
    # explicit class_names override the file
    ds2 = VOCLayoutDataset(tree.base, class_names=["background", "cat", "dog", "cow"])
    assert ds2.num_classes == 3 and ds2[0]["label"].tolist() == [0.0, 1.0, 0.0]


def test_saliency_auto_detection(make_voc_tree):
    tree = make_voc_tree(saliency=True)
    s = VOCLayoutDataset(tree.base)[0]
    sal = s["saliency"]
    assert isinstance(sal, tv_tensors.Mask) and isinstance(sal, Saliency)
    assert sal.dtype == torch.float32 and sal.shape == (20, 30)
    assert float(sal.min()) == 0.0 and float(sal.max()) == 1.0
    assert abs(float(sal[0, 0]) - 128 / 255) < 1e-6  # 0.5 written as 8-bit grey
    assert float(sal[5, 5]) == 1.0 and float(sal[19, 0]) == 0.0
    assert "saliency" not in VOCLayoutDataset(tree.base, saliency_dir=None)[0]
    assert "saliency" not in VOCLayoutDataset(make_voc_tree().base)[0]
    with pytest.raises(DatasetError, match="SALImages"):
        VOCLayoutDataset(tree.base, saliency_dir="SALImages")


def test_part_and_context_masks(make_voc_tree):
    tree = make_voc_tree(extras=True)
    s = VOCLayoutDataset(tree.base)[0]
    for key in ("part_mask", "context_mask"):
        assert isinstance(s[key], tv_tensors.Mask) and s[key].dtype == torch.int64 and s[key].shape == (20, 30)
    part = s["part_mask"].numpy()
    assert part[3, 2] == 15 and part[4, 3] == 15 and part[5, 17] == 7 and part[10, 10] == 0
    assert int((part > 0).sum()) == 8
    ctx = s["context_mask"].numpy()
    assert (ctx[-3:] == 2).all() and (ctx[:-3] == 0).all()
    s2 = VOCLayoutDataset(tree.base, extra_dirs={"parts": "PartMask"})[0]
    assert "parts" in s2 and "part_mask" not in s2 and "context_mask" not in s2
    assert "part_mask" not in VOCLayoutDataset(tree.base, extra_dirs=None)[0]


def test_without_xml_boxes_and_labels_come_from_masks(make_voc_tree):
    tree = make_voc_tree(xml=False)
    ds = VOCLayoutDataset(tree.base)
    s = ds[2]
    assert s["boxes"].tolist() == [[1, 1, 8, 9], [10, 2, 21, 17], [0, 12, 6, 18]]
    assert s["box_labels"].tolist() == [15, 15, 20]
    assert s["box_instance_ids"].tolist() == [1, 2, 3]
    exp = torch.zeros(20)
    exp[[14, 19]] = 1
    assert torch.equal(s["label"], exp)
    assert torch.equal(ds.image_labels()[2], exp)
    # neither XML nor instance masks: no boxes, label still from the mask
    tree2 = make_voc_tree(xml=False, instances=False)
    s2 = VOCLayoutDataset(tree2.base)[0]
    assert s2["boxes"].shape == (0, 4) and s2["box_labels"].shape == (0,)
    assert "instance_mask" not in s2
    assert s2["label"].nonzero().flatten().tolist() == [6, 14]


def test_require_masks(make_voc_tree):
    tree = make_voc_tree()
    tree.path("SegmentationClass", "img_b").unlink()
    with pytest.raises(DatasetError, match=r"img_b\.png.*does not exist"):
        VOCLayoutDataset(tree.base)[1]
    s = VOCLayoutDataset(tree.base, require_masks=False)[1]
    assert (s["mask"] == 255).all() and s["mask"].shape == (24, 24)


def test_collate(make_voc_tree):
    items = {"p": {"size": (16, 16), "objects": [(1, (0, 0, 4, 4), False)]},
             "q": {"size": (16, 16), "objects": [(2, (2, 2, 9, 9), False), (3, (10, 10, 16, 16), False)]}}
    tree = make_voc_tree(items, saliency=True, extras=True)
    ds = VOCLayoutDataset(tree.base)
    b = collate_samples([ds[0], ds[1]])
    assert b["id"] == ["p", "q"]
    assert b["image"].shape == (2, 3, 16, 16) and b["mask"].shape == (2, 16, 16)
    assert b["label"].shape == (2, 20) and b["saliency"].shape == (2, 16, 16)
    assert b["part_mask"].shape == (2, 16, 16)
    assert isinstance(b["boxes"], list) and [len(x) for x in b["boxes"]] == [1, 2]
    assert [x.tolist() for x in b["box_labels"]] == [[1], [2, 3]]
    assert isinstance(b["instance_mask"], list)
    # differing sizes stay lists
    tree2 = make_voc_tree()
    ds2 = VOCLayoutDataset(tree2.base)
    b2 = collate_samples([ds2[0], ds2[1]])
    assert isinstance(b2["image"], list) and b2["label"].shape == (2, 20)


# --------------------------------------------------------------------------------------------------
# bad input → DatasetError naming the file
# --------------------------------------------------------------------------------------------------
def _corrupt(path):
    path.write_bytes(b"this is not an image at all")


BAD_CASES = {
    "missing_image": lambda t: t.path("JPEGImages", "img_b", ".jpg").unlink(),
    "corrupt_image": lambda t: _corrupt(t.path("JPEGImages", "img_b", ".jpg")),
    "corrupt_mask": lambda t: _corrupt(t.path("SegmentationClass", "img_b")),
    "mask_size": lambda t: t.write_label("SegmentationClass", "img_b", np.zeros((24, 23), np.uint8)),
    "mask_class": lambda t: t.write_label("SegmentationClass", "img_b", np.full((24, 24), 30, np.uint8)),
    "instance_size": lambda t: t.write_label("SegmentationObject", "img_b", np.zeros((10, 24), np.uint8)),
    "saliency_size": lambda t: Image.fromarray(np.zeros((24, 25), np.uint8)).save(t.path("Saliency", "img_b")),
    "part_size": lambda t: t.write_label("PartMask", "img_b", np.zeros((5, 5), np.uint8)),
    "xml_name": lambda t: t.write_xml("img_b", [{"name": "unicorn", "bndbox": (1, 1, 5, 5)}]),
    "xml_outside": lambda t: t.write_xml("img_b", [{"name": "bird", "bndbox": (3, 4, 25, 10)}]),
    "xml_zero_x": lambda t: t.write_xml("img_b", [{"name": "bird", "bndbox": (0, 4, 10, 10)}]),
    "xml_empty": lambda t: t.write_xml("img_b", [{"name": "bird", "bndbox": (10, 4, 9, 10)}]),
    "xml_malformed": lambda t: t.path("Annotations", "img_b", ".xml").write_text("<annotation><object>"),
}
BAD_MATCH = {
    "missing_image": r"img_b\.jpg.*no image file",
    "corrupt_image": r"img_b\.jpg.*cannot read image",
    "corrupt_mask": r"SegmentationClass/img_b\.png.*cannot read",
    "mask_size": r"SegmentationClass/img_b\.png.*23x24 \(WxH\).*img_b\.jpg.*24x24 \(WxH\)",
    "mask_class": r"SegmentationClass/img_b\.png.*class index 30.*0\.\.20 or 255",
    "instance_size": r"SegmentationObject/img_b\.png.*24x10 \(WxH\).*24x24",
    "saliency_size": r"Saliency/img_b\.png.*25x24 \(WxH\).*24x24",
    "part_size": r"PartMask/img_b\.png.*5x5 \(WxH\).*24x24",
    "xml_name": r"img_b\.xml.*'unicorn'",
    "xml_outside": r"img_b\.xml.*3,4,25,10.*outside.*24x24",
    "xml_zero_x": r"img_b\.xml.*0,4,10,10.*outside",
    "xml_empty": r"img_b\.xml.*10,4,9,10.*x2<=x1",
    "xml_malformed": r"img_b\.xml.*malformed XML",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_naming_file(make_voc_tree, case):
    tree = make_voc_tree(saliency=True, extras=True)
    BAD_CASES[case](tree)
    ds = VOCLayoutDataset(tree.base)  # construction does not scan items
    ds[0], ds[2]  # the good items still load
    with pytest.raises(DatasetError, match=BAD_MATCH[case]):
        ds[1]
    with pytest.raises(DatasetError, match=BAD_MATCH[case]):
        ds.validate(progress=False)


def test_validate_reports_all_bad_files_at_once(make_voc_tree):
    tree = make_voc_tree()
    assert VOCLayoutDataset(tree.base).validate(progress=False) == 3
    _corrupt(tree.path("JPEGImages", "img_a", ".jpg"))
    tree.write_label("SegmentationClass", "img_b", np.full((24, 24), 21, np.uint8))
    tree.write_xml("img_b", [{"name": "unicorn", "bndbox": (1, 1, 5, 5)}])
    tree.write_label("SegmentationObject", "img_c", np.zeros((3, 3), np.uint8))
    with pytest.raises(DatasetError) as ei:
        VOCLayoutDataset(tree.base).validate(progress=False)
    msg = str(ei.value)
    assert "3 of 3 items" in msg
    for pat in [r"JPEGImages/img_a\.jpg", r"SegmentationClass/img_b\.png.*21", r"img_b\.xml.*unicorn",
                r"SegmentationObject/img_c\.png.*3x3"]:
        assert re.search(pat, msg), (pat, msg)


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------
REAL = [("grabcut_voc", "all", 50, 1, "foreground"), ("weizmann_horse_voc", "train", 246, 13, "horse"),
        ("weizmann_horse_voc", "val", 81, 13, "horse")]


@pytest.mark.realdata
@pytest.mark.parametrize("name,split,n,cls,cls_name", REAL)
def test_real_datasets_read_every_item(shared_data, name, split, n, cls, cls_name):
    ds = VOCLayoutDataset(shared_data / name, split)
    assert len(ds) == n and ds.class_names[cls] == cls_name
    labels = ds.image_labels()
    expected = torch.zeros(ds.num_classes)
    expected[cls - 1] = 1
    assert torch.equal(labels, expected.expand(n, -1))
    for i in range(len(ds)):
        s = ds[i]
        _, h, w = s["image"].shape
        assert s["mask"].shape == (h, w) and s["instance_mask"].shape == (h, w)
        vals = set(np.unique(s["mask"].numpy()).tolist())
        assert vals <= {0, cls, 255} and cls in vals, (s["id"], vals)
        assert torch.equal(s["label"], expected)
        b = s["boxes"]
        assert len(b) >= 1 and tuple(b.canvas_size) == (h, w)
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (s["box_labels"] == cls).all()
        # the README says boxes are the tight boxes of each object's pixels
        inst = s["instance_mask"].numpy()
        for k, box in zip(s["box_instance_ids"].tolist(), b.tolist()):
            assert tight_box(inst == k) == box, s["id"]


@pytest.mark.realdata
def test_real_grabcut_has_ignore_band(shared_data):
    ds = VOCLayoutDataset(shared_data / "grabcut_voc", "all")
    with_255 = sum(bool((ds.get_raw(i)["mask"] == 255).any()) for i in range(len(ds)))
    assert with_255 == 42  # README: 42 of 50 masks have an unknown band
