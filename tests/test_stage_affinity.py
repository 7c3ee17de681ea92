"""Integration test of the AffinityNet + random-walk stage (wsss_core.stages.affinity) on a tiny toy-scenes
tree with stand-in CAMs (blurred true masks): affinity labels → AffinityNet through the engine →
checkpoint reuse → random-walk labels → evaluation, and run() reusing everything."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wsss_core import engine
from wsss_core.cams import save_cams
from wsss_core.data.palette import read_label_png
from wsss_core.data.toyscenes import ToySceneConfig, context_pairs, ensure_toyscenes
from wsss_core.engine import TrainConfig
from wsss_core.models.backbones import CompactCNN
from wsss_core.models.cam import CAMClassifier
from wsss_core.profiles import DataSpec
from wsss_core.stages import affinity as stage
from wsss_core.stages import cam as cam_stage


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_aff")
    man = ensure_toyscenes(root, ToySceneConfig(n_train=16, n_val=4), workers=1, progress=False)
    cfg = cam_stage.CAMStageConfig(cache_images=True)
    ev = cam_stage.evaluation_dataset(root, "train", cfg)
    cam_dir = root.parent / (root.name + "_cams")
    for i in range(len(ev)):  # stand-in CAMs: each class's mask, blurred, peaked at 1
        raw = ev.get_raw(i)
        cams = np.zeros((ev.num_classes,) + raw["mask"].shape, np.float32)
        for c in np.flatnonzero(raw["label"]):
            m = cv2.GaussianBlur((raw["mask"] == c + 1).astype(np.float32), (0, 0), 6)
            cams[c] = m / max(float(m.max()), 1e-6)
        save_cams(cam_dir / f"{raw['id']}.npz", cams, raw["label"])
    return root, man, ev, cam_dir


def _cfg(**kw) -> stage.AffinityStageConfig:
    return stage.AffinityStageConfig(
        backbone_kwargs={"width": 8, "output_stride": 4}, level_channels=(4, 8, 8), embed_dim=8,
        train=TrainConfig(epochs=1, batch_size=8, lr=1e-3, optimizer="adam", schedule="onecycle", progress=False,
                          desc="affinitynet"), t=32, **kw)


def test_config_presets():
    for p in ("smoke", "tutorial", "paper"):
        cfg = stage.config_for_profile(p)
        assert stage.AffinityStageConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    paper = stage.config_for_profile("paper")
    assert (paper.beta, paper.t, paper.rw_alpha, paper.fg_alpha, paper.bg_alpha, paper.radius) == (8.0, 256, 16.0, 4.0, 32.0, 5)
    assert paper.feature_stride == 8 and paper.crf and paper.train.momentum == 0.0 and paper.train.weight_decay == 5e-4
    with pytest.raises(ValueError, match="unknown profile"):
        stage.config_for_profile("huge")
    with pytest.raises(ValueError, match="label_mode"):
        stage.AffinityStageConfig(label_mode="otsu")


def test_affinity_stage_end_to_end(toy, tmp_path, monkeypatch):
    root, man, ev, cam_dir = toy
    cfg = _cfg()
    # --- affinity labels, made once ------------------------------------------------------------------
    label_dir = tmp_path / "labels"
    secs, reused = stage.ensure_affinity_labels(cam_dir, ev, label_dir, cfg, "fake-cams")
    assert not reused and len(list(label_dir.glob("*.png"))) == len(ev)
    assert stage.ensure_affinity_labels(cam_dir, ev, label_dir, cfg, "fake-cams")[1]
    lab = read_label_png(label_dir / f"{ev.ids[0]}.png")
    assert set(np.unique(lab)) <= {0, 255} | set(range(1, 7)) and (lab == 255).any() and (lab == 0).any()
    q = stage.affinity_label_report(label_dir, ev)
    assert q["bg_precision"] > 0.9 and q["fg_precision"] > 0.8   # blurred true masks: nearly right labels
    assert abs(q["share_fg"] + q["share_bg"] + q["share_neutral"] - 1) < 1e-9

    # --- the training set: image and label augmented together, label padded with 255 ------------------
    train_ds = stage.affinity_dataset(root, "train", label_dir, cfg)
    s = train_ds[0]
    assert s["image"].shape == (3, 96, 96) and s[stage.AFF_KEY].shape == (96, 96)

    # --- AffinityNet through the engine, from the classifier's backbone ------------------------------
    clf = CAMClassifier(CompactCNN(width=8, output_stride=8), ev.num_classes)
    ckpt = stage.checkpoint_dir_for(cfg, tmp_path, "fake-classifier")
    model, history = stage.train_affinitynet(cfg, train_ds, ckpt, classifier=clf)
    assert (ckpt / engine.CHECKPOINT_NAME).is_file() and len(history.iters) == 2
    rec = history.iters[0]
    assert all(k in rec for k in ("loss", "bg_loss", "fg_loss", "neg_loss", "fg_count", "neg_count"))
    assert rec["fg_count"] > 0 and rec["neg_count"] > 0 and np.isfinite(rec["loss"])
    assert not model.training

    def no_training(*a, **k):
        raise AssertionError("a finished AffinityNet was retrained")

    monkeypatch.setattr(stage, "affinity_loss", no_training)
    model2, _ = stage.train_affinitynet(cfg, train_ds, ckpt, classifier=clf)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    monkeypatch.undo()

    # --- the walk: one label map per image, timings, scores ------------------------------------------
    rw_dir = tmp_path / "rw"
    timing, reused = stage.ensure_rw_labels(model, ev, cam_dir, rw_dir, cfg, ckpt.name)
    assert not reused and timing["n_images"] == len(ev) and timing["seconds_per_image"] > 0
    assert len(list(rw_dir.glob("*.png"))) == len(ev)
    timing2, reused2 = stage.ensure_rw_labels(model, ev, cam_dir, rw_dir, cfg, ckpt.name)
    assert reused2 and timing2 == pytest.approx(timing)      # the reused run reports the timings of the one that made them
    rep = stage.evaluate_label_dir(rw_dir, ev, context_pairs(man))
    cam_rep = stage.evaluate_cams_alpha(cam_dir, ev, cfg.rw_alpha, context_pairs(man))
    assert 0 <= rep["miou"] <= 1 and 0 <= cam_rep["miou"] <= 1 and rep["n_images"] == len(ev)

    # --- per-object report (needs instance masks) ------------------------------------------------------
    from wsss_core.data.voc import VOCLayoutDataset

    obj_ds = VOCLayoutDataset(root, "train", saliency_dir=None)
    rows = stage.object_report({"rw": lambda i: read_label_png(rw_dir / f"{ev.ids[i]}.png")}, obj_ds)
    assert rows and all(0 <= r["recall_rw"] <= 1 and r["cls"] >= 1 for r in rows)
    assert {"camouflaged", "touching", "nonconvex"} <= set(rows[0])


def test_run_reuses_everything(toy, tmp_path, monkeypatch):
    root, man, ev, cam_dir = toy
    cfg = _cfg(init_from_classifier=False)
    data = DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)
    fake_cam = cam_stage.CAMStageResult(model=None, cfg=None, checkpoint_dir=Path("fake-classifier"), cam_dir=cam_dir,
                                        label_dir=None, report={"miou": 0.5}, train_dataset=ev, val_map=1.0)
    out = tmp_path / stage.NOTEBOOK
    res = stage.run(cfg, data, out, cam_result=fake_cam, progress=False)
    assert (out / "rw_report.json").is_file() and set(res.report) == {"rw", "cam_alpha", "cam_best", "timing"}
    assert res.report["cam_best"] == {"miou": 0.5}

    def fail(*a, **k):
        raise AssertionError("run() redid finished work")

    monkeypatch.setattr(stage, "affinity_loss", fail)
    monkeypatch.setattr(stage, "evaluate_label_dir", fail)
    res2 = stage.run(cfg, data, out, cam_result=fake_cam, progress=False)
    assert res2.report == json.loads((out / "rw_report.json").read_text())["report"]


def test_same_region_pairs_and_pair_label_accuracy_by_hand():
    # a 1 × 4 grid: background, object 1, object 1, 255 (ignored); radius 2 → forward offset (0, 1) only
    inst = np.array([[0, 1, 1, 255]])
    same, valid = stage.same_region_pairs(inst, 2)
    assert stage.pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert same[0, 0].tolist() == [False, True, False, False] and valid[0, 0].tolist() == [True, True, False, False]
    assert not valid[1:].any()                                       # no second row

    class GT:                                                       # get_raw with an instance map
        def get_raw(self, i):
            return {"instance_mask": inst}

    # labels: bg | class 2 | bg | neutral → pairs (0,1) neg (right: different regions), (1,2) neg (wrong: same object)
    acc = stage.pair_label_accuracy(lambda i: np.array([[0, 2, 0, 255]]), GT(), [0, 0], 1, 2)
    assert acc["neg"] == {"n": 4, "accuracy": 0.5}
    assert acc["bg_pos"]["n"] == 0 and np.isnan(acc["fg_pos"]["accuracy"])


def test_affinity_quality_is_perfect_for_oracle_affinities(toy):
    root, _, ev, _ = toy
    from wsss_core.data.voc import VOCLayoutDataset

    gt = VOCLayoutDataset(root, "train", saliency_dir=None, cache=False)
    fn = lambda i: stage.oracle_affinities(gt.get_raw(i)["instance_mask"], 4, 5)  # noqa: E731
    q = stage.affinity_quality(fn, gt, range(3), 4, 5)
    assert q["auc"] == pytest.approx(1.0)
    assert q["bg-bg"]["mean_a"] == 1 and q["object-background"]["mean_a"] == 0 and q["object-background"]["n"] > 0
    # an uninformative (constant) affinity is at chance
    q0 = stage.affinity_quality(lambda i: 0.5 * torch.ones(34, 24, 24), gt, range(3), 4, 5)
    assert q0["auc"] == pytest.approx(0.5)


def test_process_pools_give_the_same_labels_and_the_sweep(toy, tmp_path):
    """The CRF labels and the walk spread over two processes are the labels of one process."""
    from wsss_core.affinity import crf_available

    root, man, ev, cam_dir = toy
    cfg = _cfg(crf=crf_available(), crf_params={"scale": 2.0, "iters": 2})
    one, two = tmp_path / "one", tmp_path / "two"
    stage.make_affinity_labels(cam_dir, ev, one, cfg, progress=False, workers=1)
    stage.make_affinity_labels(cam_dir, ev, two, cfg, progress=False, workers=2)
    for iid in ev.ids:
        assert np.array_equal(read_label_png(one / f"{iid}.png"), read_label_png(two / f"{iid}.png"))
    clf = CAMClassifier(CompactCNN(width=8, output_stride=8), ev.num_classes)
    model, _ = stage.train_affinitynet(cfg, stage.affinity_dataset(root, "train", one, cfg), None, classifier=clf)
    t1 = stage.make_rw_labels(model, ev, cam_dir, tmp_path / "rw1", cfg, progress=False, workers=1)
    t2 = stage.make_rw_labels(model, ev, cam_dir, tmp_path / "rw2", cfg, progress=False, workers=2)
    assert (t1["workers"], t2["workers"], t2["n_images"]) == (1, 2, len(ev)) and t2["walk_seconds_per_image"] > 0
    for iid in ev.ids:
        assert np.array_equal(read_label_png(tmp_path / "rw1" / f"{iid}.png"), read_label_png(tmp_path / "rw2" / f"{iid}.png"))
    sw = stage.walk_sweep(model, ev, cam_dir, range(3), cfg, [1.0, 8.0], [0, 32])
    assert sw["beta"]["values"] == [1.0, 8.0] and len(sw["t"]["miou"]) == 2
    assert all(0 <= v <= 1 for k in sw for v in sw[k]["miou"] + sw[k]["fg_recall"])
