"""Notebook 06's comparison (wsss_core.comparison) and the regression baselines of the notebook runner."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from wsss_core import comparison
from wsss_core.stages import pipeline
from wsss_core.data.palette import write_label_png
from wsss_core.notebooks import compare_to_baseline, make_baseline, quality_direction

REPO = Path(__file__).resolve().parents[1]
SMOKE_BASELINE = REPO / "benchmarks" / "baselines" / "smoke.json"


def _row(method, pseudo, seg, sup=None, status="ok"):
    return {"method": method, "title": comparison.METHODS[method].title, "status": status,
            "supervision": sup or comparison.METHODS[method].supervision, "pseudo_miou": pseudo, "seg_miou": seg,
            "pseudo_fg_precision": 0.5, "pseudo_fg_recall": 0.5, "seg_fg_precision": 0.5, "seg_fg_recall": 0.5,
            "seg_context_leak": 0.1, "train_seconds": 1.0, "model": object()}


def _rows():
    rows = [_row("cam", 0.50, 0.55), _row("eps", 0.60, 0.66), _row("grabcut", 0.70, 0.72),
            _row("box2seg", 0.75, 0.77), _row("full", 1.0, 0.80)]
    full = rows[-1]["seg_miou"]
    for r in rows:
        r["ratio"] = comparison.weak_full_ratio(r["seg_miou"], full)
    return rows


def test_weak_full_ratio_and_best_rows():
    assert comparison.weak_full_ratio(0.6, 0.8) == pytest.approx(0.75)
    assert math.isnan(comparison.weak_full_ratio(0.6, 0.0))
    rows = _rows()
    assert comparison.best_of(rows, ("image", "image+saliency"))["method"] == "eps"
    assert comparison.best_of(rows, ("box",))["method"] == "box2seg"
    assert comparison.best_of(rows, ("mask-free nonsense",)) is None


def test_metrics_from_rows_flat_keys_and_rows():
    rows = _rows() + [{"method": "edam", "title": "EDAM", "supervision": "image", "status": "skipped: no data"}]
    m = comparison.metrics_from_rows(rows)
    assert m["full_miou"] == pytest.approx(0.80)
    assert m["seg_eps_miou"] == pytest.approx(0.66) and m["pseudo_eps_miou"] == pytest.approx(0.60)
    assert m["ratio_box2seg"] == pytest.approx(0.77 / 0.80, abs=1e-6)
    assert m["best_image_method"] == "eps" and m["best_image_ratio"] == pytest.approx(0.66 / 0.8, abs=1e-6)
    assert m["best_box_method"] == "box2seg"
    assert "seg_edam_miou" not in m                          # skipped rows have no figures...
    assert [r["method"] for r in m["rows"]][-1] == "edam"    # ...but keep their row and its reason
    assert all("model" not in r for r in m["rows"])          # nothing unserialisable
    json.dumps(m)


def test_table_markdown_has_every_row_and_the_papers_columns():
    rows = _rows()
    md = comparison.table_markdown(rows)
    lines = md.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "| EPS | image+saliency | 60.0 | 66.0 | 0.82 | 69.4 | 70.9 |" in md
    assert "paper: val" in lines[0]
    assert "paper" not in comparison.table_markdown(rows, paper=False)


def test_every_method_has_a_maker_and_unknown_ones_are_named():
    assert set(comparison.METHODS) == set(pipeline.LABEL_SOURCES)
    with pytest.raises(KeyError, match="known: cam"):
        comparison.pseudo_label_dir("crf-magic", "smoke", None, "/nonexistent")
    assert comparison.pseudo_label_dir("full", "smoke", None, "/nonexistent") is None


def test_method_keys_and_label_dirs():
    assert comparison.method_keys(None) == list(comparison.METHODS)
    assert comparison.method_keys(["cam", "eps"]) == ["cam", "eps", "full"]
    assert comparison.method_keys(["full", "cam"]) == ["full", "cam"]
    with pytest.raises(ValueError, match="known: "):
        comparison.method_keys(["cam", "magic"])
    dirs, skipped, seconds = comparison.pseudo_label_dirs(["full"], "smoke", None, "/nonexistent")
    assert dirs == {"full": None} and skipped == {} and set(seconds) == {"full"}


def test_label_dir_report_scores_a_hand_made_folder(make_voc_tree, tmp_path):
    from wsss_core.data.voc import VOCLayoutDataset

    tree = make_voc_tree(ignore_border=False)
    ds = VOCLayoutDataset(tree.root, "train", saliency_dir=None, extra_dirs=None)
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    for iid in ds.ids:
        write_label_png(perfect / f"{iid}.png", tree.masks[iid])
        write_label_png(empty / f"{iid}.png", np.zeros_like(tree.masks[iid]))
    assert comparison.label_dir_report(perfect, ds)["miou"] == pytest.approx(1.0)
    rep = comparison.label_dir_report(empty, ds)
    # all background: background IoU = bg share of the pixels, every present class IoU 0
    m = np.concatenate([tree.masks[i].ravel() for i in ds.ids])
    present = np.unique(m[m != 255])
    assert rep["miou"] == pytest.approx((m == 0).mean() / len(present))
    (perfect / f"{ds.ids[0]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{ds.ids[0]}.png"):
        comparison.label_dir_report(perfect, ds)


# ---- regression baselines ------------------------------------------------------------------------

def test_quality_direction_by_name():
    assert quality_direction("eps_miou") == "higher"
    assert quality_direction("cam_confusion_ratio") == "lower"
    assert quality_direction("ratio_eps") == "higher"
    assert quality_direction("cam_context_leak") == "lower"
    assert quality_direction("saliency_mae") == "lower"
    for k in ("rw_seconds_per_image", "cam_best_threshold", "n_train", "epochs"):
        assert quality_direction(k) is None


def test_make_baseline_round_trip():
    recs = [{"notebook": "01_x", "metrics": {"cam_miou": 0.5, "cam_context_leak": 0.3, "train_seconds": 9.0,
                                            "best_image_method": "eps", "flag": True, "rows": [1]}}]
    base = make_baseline(recs, "smoke", 0.05, "cmd")
    assert base["metrics"] == {"01_x": {"cam_miou": 0.5, "cam_context_leak": 0.3}}
    assert base["lower_is_better"] == ["cam_context_leak"] and base["made_by"] == "cmd"
    assert compare_to_baseline(recs, base, 0.05) == []


def test_committed_smoke_baseline_catches_a_degraded_metric():
    """The baseline CI checks (`make test`): it covers every notebook, and degrading any one of its
    metrics beyond the tolerance — in the bad direction — is reported, while the recorded values pass."""
    base = json.loads(SMOKE_BASELINE.read_text())
    # make test runs the lessons and the study notebooks at smoke (--study): the baseline covers both
    nbs = sorted(p.stem for p in [*(REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"),
                                  *(REPO / "notebooks" / "study").glob("[0-9][0-9]_*.ipynb")])
    assert sorted(base["metrics"]) == nbs
    tol = base["default_tolerance"]
    lower = set(base["lower_is_better"])
    recs = [{"notebook": nb, "metrics": dict(m)} for nb, m in base["metrics"].items()]
    assert compare_to_baseline(recs, base, tol) == []
    for nb, m in base["metrics"].items():
        key = sorted(m)[0]
        bad = [{"notebook": r["notebook"], "metrics": dict(r["metrics"])} for r in recs]
        target = next(r for r in bad if r["notebook"] == nb)
        step = 2 * float(base["tolerances"].get(key, tol))
        target["metrics"][key] += step if key in lower else -step
        problems = compare_to_baseline(bad, base, tol)
        assert len(problems) == 1 and problems[0].startswith(f"{nb}.{key}"), problems
        # the good direction is never a regression
        target["metrics"][key] = m[key] + (-step if key in lower else step)
        assert compare_to_baseline(bad, base, tol) == []


def test_make_test_checks_the_smoke_baseline():
    mk = (REPO / "Makefile").read_text()
    test_block = mk.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "--baseline benchmarks/baselines/smoke.json" in test_block


@pytest.mark.slow
def test_paper_profile_comparison_on_a_small_voc_tree(make_voc_tree, tmp_path):
    """Notebook 06's code path with the ``paper`` presets (ResNet-50 CAMs, DeepLab-v2 ResNet-101 with
    ASPP 6/12/18/24, multi-scale + flip inference) on real-VOC-like data: 20 classes, images of different
    sizes, SBD-style ``train_aug`` with ``SegmentationClassAug``. Shrunk only in size (no ImageNet
    weights offline, 1 epoch, small crops)."""
    from wsss_core import profiles
    from wsss_core.stages import segmentation as seg

    items = {f"im{i}": {"size": (40 + 6 * i, 56 - 4 * i), "objects": [(1 + 3 * i, (4, 5, 30, 30), False)]}
             for i in range(4)}
    tree = make_voc_tree(items, splits={"train_aug": list(items), "val": list(items)[:2]})
    for iid, m in tree.masks.items():          # SBD's masks: the true masks without the 255 border
        write_label_png(tree.root / "SegmentationClassAug" / f"{iid}.png", np.where(m == 255, 0, m).astype(np.uint8))
    data = profiles.prepare_data("paper", tree.root)
    assert data.train_split == "train_aug" and data.mask_dir == "SegmentationClassAug"

    def shrink(stage, cfg):
        assert stage == "cam"
        return cfg.replace(backbone_kwargs={**cfg.backbone_kwargs, "weights": None, "freeze_bn": False}, crop_size=64,
                           long_side=(48, 72), cam_scales=(1.0, 0.5),
                           train=cfg.train.replace(epochs=1, batch_size=2, lr=0.01, num_workers=0, progress=False))

    scfg = seg.config_for_profile("paper")
    assert scfg.backbone == "resnet101" and scfg.head == "v2" and scfg.rates == (6, 12, 18, 24)
    scfg = scfg.replace(backbone_kwargs={**scfg.backbone_kwargs, "weights": None}, crop_size=48, eval_scales=(1.0, 0.75),
                        crf=False, train=scfg.train.replace(epochs=1, batch_size=2, num_workers=0, progress=False))
    rows = comparison.compare(["cam", "full"], "paper", data, tmp_path / "runs", seg_cfg=scfg, progress=False,
                              log=None, config_hook=shrink)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    cam, full = rows
    assert 0.0 <= cam["pseudo_miou"] <= 1.0 and full["pseudo_miou"] == 1.0
    assert full["ratio"] == pytest.approx(1.0) and cam["ratio"] == pytest.approx(cam["seg_miou"] / full["seg_miou"])
    assert cam["seg_report"]["n_images"] == 2                       # the val split, at full size, batch 1
    assert Path(cam["label_dir"]).parent.name == "01_class_activation_maps"
    assert len(list(Path(cam["label_dir"]).glob("*.png"))) == 4     # one pseudo-label per train_aug image
    m = comparison.metrics_from_rows(rows)
    assert {"seg_cam_miou", "pseudo_cam_miou", "ratio_cam", "full_miou", "best_image_ratio"} <= set(m)
    # run again: every checkpoint and label folder is reused (same figures, nothing retrained)
    again = comparison.compare(["cam", "full"], "paper", data, tmp_path / "runs", seg_cfg=scfg, progress=False,
                               log=None, config_hook=shrink)
    assert [r["seg_miou"] for r in again] == [r["seg_miou"] for r in rows]
    assert [r["checkpoint_dir"] for r in again] == [r["checkpoint_dir"] for r in rows]


def test_optional_baseline_keys_may_be_missing():
    recs = [{"notebook": "04", "metrics": {"seg_miou": 0.8}}]
    base = {"metrics": {"04": {"seg_miou": 0.8, "horse_box2seg_fg_iou": 0.6}}, "optional": ["horse_box2seg_fg_iou"]}
    assert compare_to_baseline(recs, base, 0.02) == []
    recs[0]["metrics"]["horse_box2seg_fg_iou"] = 0.5          # present: checked like any other key
    assert len(compare_to_baseline(recs, base, 0.02)) == 1
    made = make_baseline([{"notebook": "04", "metrics": {"horse_box2seg_fg_iou": 0.6, "seg_miou": 0.8}}], "t", 0.02)
    assert made["optional"] == ["horse_box2seg_fg_iou"]


@pytest.mark.slow
def test_rewriting_a_baseline_keeps_hand_tuned_tolerances(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from wsss_core.notebooks import main as runner_main

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    params = new_code_cell('PROFILE = "tutorial"\nOUT_DIR = "out"\nSEED = 0\nDEVICE = "auto"')
    params.metadata["tags"] = ["parameters"]
    body = ("import json, pathlib\nout = pathlib.Path(OUT_DIR) / '00_x'\nout.mkdir(parents=True, exist_ok=True)\n"
            "(out / 'metrics.json').write_text(json.dumps({'seg_miou': 0.5, 'ratio_cam': 0.9, 'train_seconds': 3.0}))")
    nb = new_notebook(cells=[params, new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "00_x.ipynb")
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"tolerances": {"ratio_cam": 0.25, "gone_key": 1.0}, "note": "keep me", "metrics": {}}))
    assert runner_main(["--profile", "smoke", "--out", str(tmp_path / "runs"), "--notebooks", str(nbs),
                        "--tolerance", "0.08", "--write-baseline", str(base)]) == 0
    b = json.loads(base.read_text())
    assert b["metrics"] == {"00_x": {"seg_miou": 0.5, "ratio_cam": 0.9}}
    assert b["tolerances"] == {"ratio_cam": 0.25} and b["note"] == "keep me" and b["default_tolerance"] == 0.08


@pytest.mark.slow
def test_segmenters_trained_side_by_side_are_the_serial_ones(tmp_path):
    """compare() with train_workers=2 trains in two worker processes (one thread each), leaving the same
    checkpoint folders and cached reports that a serial run reads; the rows come back in order."""
    from wsss_core.data.toyscenes import ToySceneConfig, context_pairs, ensure_toyscenes
    from wsss_core.data.voc import VOCLayoutDataset
    from wsss_core.profiles import DataSpec
    from wsss_core.stages import segmentation as seg

    root = tmp_path / "toy"
    man = ensure_toyscenes(root, ToySceneConfig(n_train=16, n_val=8), workers=1, progress=False)
    data = DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)
    labels = tmp_path / "labels"          # "pseudo-labels": the true masks without class 3
    ds = VOCLayoutDataset(root, "train", saliency_dir=None, extra_dirs=None)
    for i in range(len(ds)):
        m = ds.get_raw(i)["mask"].copy()
        m[m == 3] = 0
        write_label_png(labels / f"{ds.ids[i]}.png", m)
    cfg = seg.config_for_profile("smoke")
    cfg = cfg.replace(channels=16, train_workers=2, torch_threads=1,
                      train=cfg.train.replace(epochs=1, batch_size=8, progress=False))
    dirs = {"cam": labels, "full": None}
    comparison._train_side_by_side(dirs, cfg, data, tmp_path / "seg", True, False, None)
    for m, d in dirs.items():
        ck = seg.checkpoint_dir_for(cfg, d, tmp_path / "seg" / m)
        assert seg.is_finished(ck) and (ck / "report.json").is_file() and list(ck.glob("train_report_*.json"))
    assert (seg.checkpoint_dir_for(cfg, labels, tmp_path / "seg" / "cam") / "pseudo_report.json").is_file()
    # a serial configuration finds them (the run-time fields are not in the fingerprint)
    serial = cfg.replace(train_workers=1, torch_threads=None)
    assert seg.checkpoint_dir_for(serial, labels, tmp_path / "seg" / "cam") == seg.checkpoint_dir_for(cfg, labels, tmp_path / "seg" / "cam")
    rows = comparison.compare(["full"], "smoke", data, tmp_path, seg_cfg=serial, progress=False, log=None,
                              seg_root=tmp_path / "seg")
    assert rows[0]["status"] == "ok" and rows[0]["ratio"] == pytest.approx(1.0) and "seg_train_miou" in rows[0]
