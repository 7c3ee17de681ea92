"""Integration test of the CAM stage (wsss_core.stages.cam) on a tiny generated toy-scenes tree:
train → checkpoint reuse → classification report → CAMs → threshold sweep → pseudo-labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsss_core import engine
from wsss_core.cams import load_cams
from wsss_core.data.palette import read_label_png
from wsss_core.data.toyscenes import ToySceneConfig, context_pairs, ensure_toyscenes
from wsss_core.engine import CheckpointMismatchError, TrainConfig
from wsss_core.metrics import ConfusionMatrix
from wsss_core.stages import cam as stage


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    man = ensure_toyscenes(root, ToySceneConfig(n_train=32, n_val=16), workers=1, progress=False)
    return root, man


def _cfg(epochs: int = 2) -> stage.CAMStageConfig:
    return stage.CAMStageConfig(
        backbone_kwargs={"width": 16, "output_stride": 8},
        train=TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, optimizer="adam", schedule="onecycle",
                          progress=False, desc="classifier"),
        cam_scales=(1.0,), cam_batch_size=16)


def test_cam_stage_end_to_end(toy, tmp_path, monkeypatch):
    root, man = toy
    cfg = _cfg()
    train_ds = stage.classification_dataset(root, "train", cfg, train=True)
    val_ds = stage.classification_dataset(root, "val", cfg, train=False)
    eval_ds = stage.evaluation_dataset(root, "train", cfg)
    C = eval_ds.num_classes
    assert (len(train_ds), len(val_ds), C) == (32, 16, 6)

    # --- training: 2 epochs of 32 / 16 = 2 iterations, checkpointed, per-epoch validation mAP ----------
    ckpt = tmp_path / "classifier"
    model, history = stage.train_classifier(cfg, train_ds, ckpt, val_ds=val_ds)
    assert (ckpt / engine.CHECKPOINT_NAME).is_file()
    assert len(history.epochs) == 2 and len(history.iters) == 4
    assert all(0.0 <= r["val_map"] <= 1.0 for r in history.epochs)
    assert all(np.isfinite(r["loss"]) for r in history.iters)
    assert not model.training

    # --- a second call with the same folder reloads the finished run: no training step at all ------------
    def no_training(*a, **k):
        raise AssertionError("train_classifier retrained a finished checkpoint")

    monkeypatch.setattr(stage, "classification_step", no_training)
    mtime = (ckpt / engine.CHECKPOINT_NAME).stat().st_mtime_ns
    model2, history2 = stage.train_classifier(cfg, train_ds, ckpt, val_ds=val_ds)
    assert (ckpt / engine.CHECKPOINT_NAME).stat().st_mtime_ns == mtime
    assert len(history2.epochs) == len(history.epochs) and len(history2.iters) == len(history.iters)
    assert history2.to_dict() == history.to_dict()
    s1, s2 = model.state_dict(), model2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k].cpu(), s2[k].cpu()) for k in s1)
    # ... and a different configuration in the same folder is refused, not silently reused
    with pytest.raises(CheckpointMismatchError):
        stage.train_classifier(_cfg(epochs=3), train_ds, ckpt)
    monkeypatch.undo()

    # --- classification report -----------------------------------------------------------------------
    cls = stage.classification_report(model, val_ds)
    assert 0.0 <= cls["map"] <= 1.0
    assert list(cls["per_class_ap"]) == eval_ds.class_names[1:]

    # --- CAMs: one file per training image, full resolution, present classes only, max-normalised -------
    cam_dir = stage.make_cams(model, eval_ds, tmp_path / "cams", cfg, progress=False)
    files = sorted(cam_dir.glob("*.npz"))
    assert [f.stem for f in files] == sorted(eval_ds.ids)
    for i in range(len(eval_ds)):
        raw = eval_ds.get_raw(i)
        cams, label = load_cams(cam_dir / f"{raw['id']}.npz")
        assert cams.shape == (C,) + raw["mask"].shape and cams.dtype == np.float32
        np.testing.assert_array_equal(label, raw["label"])
        assert cams.min() >= 0.0 and cams.max() <= 1.0 + 1e-3
        assert (cams[label == 0] == 0).all()
        present_max = cams[label == 1].reshape(int(label.sum()), -1).max(1)
        assert ((np.abs(present_max - 1.0) < 2e-3) | (present_max == 0)).all()  # M_c = A_c / (max A_c + 1e-5)
    mtimes = [f.stat().st_mtime_ns for f in files]
    stage.make_cams(model, eval_ds, cam_dir, cfg, progress=False)  # existing maps are kept
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    # --- evaluation: the best threshold's mIoU is the maximum of the sweep ---------------------------------
    pairs = context_pairs(man)
    rep = stage.evaluate_cams(cam_dir, eval_ds, cfg, pairs)
    assert set(rep["sweep"]) == set(cfg.thresholds)
    best = max(rep["sweep"], key=rep["sweep"].get)
    assert rep["best_threshold"] == best
    assert rep["miou"] == pytest.approx(max(rep["sweep"].values()), abs=1e-12)
    for key in ("fg_precision", "fg_recall", "part_recall", "body_recall", "context_leak", "background_leak"):
        assert key in rep and (np.isnan(rep[key]) or 0.0 <= rep[key] <= 1.0), key
    assert set(rep["context_leak_per_pair"]) == set(pairs) == set(rep["confusion_ratio"])
    assert rep["n_images"] == len(eval_ds)
    fixed = stage.evaluate_cams(cam_dir, eval_ds, cfg, pairs, threshold=0.15)
    assert fixed["best_threshold"] == 0.15
    assert fixed["miou"] == pytest.approx(rep["sweep"][0.15], abs=1e-12)

    # --- pseudo-labels at that threshold, scored independently from the PNGs -----------------------------
    label_dir = stage.save_pseudo_labels(cam_dir, eval_ds, tmp_path / "labels", threshold=rep["best_threshold"],
                                         progress=False)
    cm = ConfusionMatrix(C + 1)
    for i, iid in enumerate(eval_ds.ids):
        pred = read_label_png(label_dir / f"{iid}.png")
        gt = read_label_png(root / "SegmentationClass" / f"{iid}.png")
        assert pred.shape == gt.shape and pred.max() <= C
        present = set(np.unique(pred).tolist()) - {0}
        assert present <= {c + 1 for c in np.flatnonzero(eval_ds.get_raw(i)["label"])}  # only labelled classes
        cm.update(pred, gt)
    assert cm.miou() == pytest.approx(rep["miou"], abs=1e-12)
    assert cm.fg_precision() == pytest.approx(rep["fg_precision"], abs=1e-12)

    # --- metrics.json ------------------------------------------------------------------------------
    path = stage.write_metrics(tmp_path / "metrics.json", {"cam_miou": rep["miou"], "nan": float("nan"),
                                                           "per_class": rep["per_class_iou"]})
    written = json.loads(path.read_text())
    assert written["cam_miou"] == pytest.approx(rep["miou"], abs=1e-6) and written["nan"] is None


@pytest.mark.slow
def test_paper_profile_code_path_on_a_small_voc_tree(make_voc_tree, tmp_path):
    """The ``paper`` preset (ResNet-50, output stride 16, frozen BN and stages, SGD + poly, resize-long +
    crop) runs end-to-end on real-VOC-like data: 20 classes, images of different sizes (batch 1 at
    inference). Shrunk only in size (crop 64, 1 epoch, no ImageNet weights offline)."""
    from wsss_core import profiles

    items = {f"im{i}": {"size": (40 + 6 * i, 56 - 4 * i), "objects": [(1 + 3 * i, (4, 5, 30, 30), False)]}
             for i in range(4)}
    tree = make_voc_tree(items, nest="VOCdevkit", splits={"train": list(items), "val": list(items)[:2]})
    cfg = profiles.cam_config("paper")
    assert cfg.backbone == "resnet50" and cfg.backbone_kwargs["output_stride"] == 16
    assert cfg.train.optimizer == "sgd" and cfg.train.schedule == "poly" and cfg.cam_scales == (1.0, 0.5, 1.5, 2.0)
    # no ImageNet weights offline, hence no frozen BN statistics either (they are ImageNet's)
    cfg = cfg.replace(backbone_kwargs={**cfg.backbone_kwargs, "weights": None, "freeze_bn": False}, crop_size=64,
                      long_side=(48, 72), cam_scales=(1.0, 0.5),
                      train=cfg.train.replace(epochs=1, batch_size=2, lr=0.01, num_workers=0, progress=False))
    train_ds = stage.classification_dataset(tree.base, "train", cfg)
    val_ds = stage.classification_dataset(tree.base, "val", cfg, train=False)
    assert train_ds.num_classes == 20
    model, hist = stage.train_classifier(cfg, train_ds, tmp_path / "ck", val_ds=val_ds)
    assert len(hist.epochs) == 1 and "val_map" in hist.epochs[0]
    ev = stage.evaluation_dataset(tree.base, "train", cfg)
    stage.make_cams(model, ev, tmp_path / "cams", cfg, progress=False)
    for i, iid in enumerate(ev.ids):
        cams, label = load_cams(tmp_path / "cams" / f"{iid}.npz")
        assert cams.shape == (20,) + items[iid]["size"]  # full resolution, per image size
        assert label.sum() == 1 and label[3 * i] == 1
    rep = stage.evaluate_cams(tmp_path / "cams", ev, cfg)
    assert 0.0 <= rep["miou"] <= 1.0 and "context_leak" not in rep
