"""Bad input, measured (issue 18, item 7): each case gives one line naming the file (or the argument)
and what is wrong, and writes nothing half-done. Run them alone with ``pytest -m bad_input``.

The four disk-full / ``wsss status`` cases live in tests/test_store.py.
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_core import cli, engine, profiles
from wsss_core.data.palette import DatasetError, VOC_PALETTE, write_label_png
from wsss_core.data.voc import VOCLayoutDataset

pytestmark = pytest.mark.bad_input


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` → its SHA-1 (a read must leave the tree exactly as it was)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _one_line(text: str, *patterns: str) -> str:
    """The single line of ``text`` matching every pattern (fails if none or several do)."""
    hits = [ln for ln in text.splitlines() if all(re.search(p, ln) for p in patterns)]
    assert len(hits) == 1, (patterns, text)
    return hits[0]


def _validate(tree, capsys, split: str = "train") -> str:
    """``wsss data validate`` on the tree: it must fail (exit 1) without a traceback and change no file;
    returns what it printed on stderr."""
    before = _snapshot(tree.base)
    rc = cli.main(["data", "validate", str(tree.base), "--split", split])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err and "wsss data validate: " in err  # (after the progress bar's \r lines)
    assert _snapshot(tree.base) == before
    return err


def _load_fails(tree, i: int, pattern: str, split="train") -> None:
    """Loading item ``i`` raises a one-line DatasetError matching ``pattern``; nothing is written."""
    before = _snapshot(tree.base)
    with pytest.raises(DatasetError, match=pattern) as e:
        VOCLayoutDataset(tree.base, split).get_raw(i)
    assert "\n" not in str(e.value)
    assert _snapshot(tree.base) == before


# --------------------------------------------------------------------------------------------------
# data files
# --------------------------------------------------------------------------------------------------
def test_corrupt_jpeg(make_voc_tree, capsys):
    tree = make_voc_tree()
    tree.path("JPEGImages", "img_a", ".jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    _load_fails(tree, 0, r"JPEGImages/img_a\.jpg: cannot read image")
    _one_line(_validate(tree, capsys), r"JPEGImages/img_a\.jpg", "cannot read image")


def test_truncated_png(make_voc_tree, capsys):
    tree = make_voc_tree()
    p = tree.path("SegmentationClass", "img_b")
    p.write_bytes(p.read_bytes()[:60])  # the header and half a chunk
    _load_fails(tree, 1, r"SegmentationClass/img_b\.png: cannot read label image")
    _one_line(_validate(tree, capsys), r"SegmentationClass/img_b\.png", "cannot read label image")


def test_mask_of_another_size_than_its_image(make_voc_tree, capsys):
    tree = make_voc_tree()
    tree.write_label("SegmentationClass", "img_b", np.zeros((10, 12), np.uint8))
    pat = r"SegmentationClass/img_b\.png: mask size 12x10 \(WxH\) differs from image img_b\.jpg size 24x24"
    _load_fails(tree, 1, pat)
    _one_line(_validate(tree, capsys), pat)


def test_mask_values_outside_the_class_list(make_voc_tree, capsys):
    tree = make_voc_tree()
    m = tree.masks["img_c"].copy()
    m[0, 0] = 42
    tree.write_label("SegmentationClass", "img_c", m)
    pat = r"SegmentationClass/img_c\.png: mask contains class index 42; allowed 0\.\.20 or 255"
    _load_fails(tree, 2, pat)
    _one_line(_validate(tree, capsys), pat)


@pytest.mark.parametrize("how", ["rgb", "palette"])
def test_palette_png_with_an_unknown_colour(how, make_voc_tree, capsys):
    """A mask whose colour is no class: saved as RGB colours (a colour is not an index: refused), or a
    palette PNG whose pixel uses a palette entry beyond the classes (index 77)."""
    tree = make_voc_tree()
    p = tree.path("SegmentationClass", "img_a")
    if how == "rgb":
        rgb = VOC_PALETTE[tree.masks["img_a"]].copy()
        rgb[0, 0] = (1, 2, 3)  # in no palette
        Image.fromarray(rgb, mode="RGB").save(p)
        pat = r"SegmentationClass/img_a\.png: label PNG has mode 'RGB'; expected a palette"
    else:
        m = tree.masks["img_a"].copy()
        m[5, 5] = 77
        write_label_png(p, m)
        pat = r"SegmentationClass/img_a\.png: mask contains class index 77"
    _load_fails(tree, 0, pat)
    _one_line(_validate(tree, capsys), pat)


@pytest.mark.parametrize("source", ["xml", "mask"])
def test_an_image_with_no_labels(source, make_voc_tree, capsys):
    """An XML without objects (or, with no XML, a mask of background only) gives an all-zero image label:
    a classifier cannot learn from it. Loading it is allowed (a test image has no labels); validate says so."""
    tree = make_voc_tree(xml=(source == "xml"))
    if source == "xml":
        tree.write_xml("img_c", [])
        pat = r"Annotations/img_c\.xml: no <object>, so image 'img_c' has no class label"
    else:
        tree.write_label("SegmentationClass", "img_c", np.zeros((18, 22), np.uint8))
        pat = r"SegmentationClass/img_c\.png: no foreground class .*image 'img_c' has no class label"
    assert not VOCLayoutDataset(tree.base).get_raw(2)["label"].any()
    err = _validate(tree, capsys)
    _one_line(err, pat)
    assert "1 of 3 items" in err


def test_empty_split_list(make_voc_tree, capsys):
    tree = make_voc_tree(splits={"train": ["img_a", "img_b", "img_c"], "val": []})
    with pytest.raises(DatasetError, match=r"ImageSets/Segmentation/val\.txt: split list is empty$"):
        VOCLayoutDataset(tree.base, "val")
    _one_line(_validate(tree, capsys, "val"), r"val\.txt: split list is empty")


def test_id_in_the_list_without_a_file(make_voc_tree, capsys):
    tree = make_voc_tree(splits={"train": ["img_a", "img_zz"]})
    pat = r"JPEGImages/img_zz\.jpg: no image file for id 'img_zz'"
    _load_fails(tree, 1, pat)
    err = _validate(tree, capsys)
    _one_line(err, pat)
    assert "1 of 2 items" in err


@pytest.mark.parametrize("box", ["outside", "x2_lt_x1"])
def test_xml_box_outside_the_image_or_reversed(box, make_voc_tree, capsys):
    tree = make_voc_tree()
    if box == "outside":
        tree.write_xml("img_b", [{"name": "cat", "bndbox": (3, 4, 25, 10)}])
        pat = r"Annotations/img_b\.xml: object 1 \('cat'\) box .*3,4,25,10 .*lies outside the image 24x24"
    else:
        tree.write_xml("img_b", [{"name": "cat", "bndbox": (10, 4, 9, 10)}])
        pat = r"Annotations/img_b\.xml: object 1 \('cat'\) has an empty box: .*10,4,9,10 .*x2<=x1"
    _load_fails(tree, 1, pat)
    _one_line(_validate(tree, capsys), pat)


def test_unknown_class_name_in_xml(make_voc_tree, capsys):
    tree = make_voc_tree()
    tree.write_xml("img_a", [{"name": "unicorn", "bndbox": (1, 1, 5, 5)}])
    pat = r"Annotations/img_a\.xml: object 1 has class name 'unicorn', not among the foreground class names"
    _load_fails(tree, 0, pat)
    _one_line(_validate(tree, capsys), pat)


def test_nan_in_a_cam_file(tmp_path):
    """A CAM file holding NaN is refused by name (NaN compares False with every threshold and would
    silently become background); the file is left as it is for the user to delete."""
    from wsss_core.cams import load_cams, save_cams

    p = tmp_path / "img_a.npz"
    cams = np.random.RandomState(0).rand(3, 8, 8).astype(np.float32)
    cams[1, 2, 3] = np.nan
    save_cams(p, cams, [1, 1, 0])
    before = _snapshot(tmp_path)
    with pytest.raises(DatasetError, match=r"img_a\.npz: CAM file holds 1 non-finite \(NaN/inf\) values") as e:
        load_cams(p)
    assert "\n" not in str(e.value) and _snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def test_unknown_profile(tmp_path, capsys):
    from wsss_core.notebooks import main as nb_main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["cam", "--profile", "huge", "--out", str(out)])
    assert e.value.code == 2
    _one_line(capsys.readouterr().err, r"argument --profile: invalid choice: 'huge'")
    with pytest.raises(SystemExit) as e:
        nb_main(["--profile", "huge", "--out", str(out)])
    assert e.value.code == 2
    _one_line(capsys.readouterr().err, r"unknown profile 'huge'; the profiles are: smoke, tutorial, study, paper")
    with pytest.raises(ValueError, match=r"^unknown profile 'huge'; the profiles are: smoke, tutorial, study, paper$"):
        profiles.prepare_data("huge", tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_unknown_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["affinty", "--profile", "smoke", "--out", "out"])
    assert e.value.code == 2
    _one_line(capsys.readouterr().err, r"argument cmd: invalid choice: 'affinty'")
    assert list(tmp_path.iterdir()) == []


def test_only_naming_no_notebook(tmp_path, capsys):
    from wsss_core.notebooks import main as nb_main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        nb_main(["--profile", "smoke", "--out", str(out), "--only", "99_nothing"])
    msg = str(e.value.code)
    assert "\n" not in msg
    assert re.match(r"--only 99_nothing: no notebook matches in .*notebooks \(known: 00_", msg), msg
    assert not out.exists()


def test_cuda_asked_for_on_a_cpu_only_machine(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"device='cuda' was requested but torch\.cuda\.is_available\(\) is False"):
        engine.select_device("cuda")
    for cmd in ("cam", "segment"):
        out, data = tmp_path / f"out_{cmd}", tmp_path / "data"
        rc = cli.main([cmd, "--profile", "smoke", "--device", "cuda", "--out", str(out), "--data-root", str(data)])
        err = capsys.readouterr().err
        assert rc == 2
        _one_line(err, rf"^wsss {cmd}: --device cuda: device='cuda' was requested but torch\.cuda\.is_available\(\) is False")
        assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no data prepared, no output folder made


# --------------------------------------------------------------------------------------------------
# configs, checkpoints, training
# --------------------------------------------------------------------------------------------------
def _tiny_data(n=8, nan=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    if nan:
        x[:] = float("nan")
    return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))


def _step(model, batch, device):
    x, y = (t.to(device) for t in batch)
    return {"loss": torch.nn.functional.mse_loss(model(x), y)}


def _cfg(**kw):
    base = dict(epochs=1, batch_size=4, lr=0.01, optimizer="sgd", schedule="constant", device="cpu",
                progress=False, desc="tiny")
    return engine.TrainConfig(**{**base, **kw})


def test_config_field_with_a_wrong_type(tmp_path):
    with pytest.raises(TypeError, match=r"^TrainConfig\.epochs must be an int, got '3' \(str\)$"):
        engine.TrainConfig(epochs="3")
    with pytest.raises(TypeError, match=r"^TrainConfig\.lr must be a number, got '0\.1' \(str\)$"):
        engine.TrainConfig.from_dict({"lr": "0.1"})
    with pytest.raises(TypeError, match=r"^TrainConfig\.batch_size must be an int, got 2\.5 \(float\)$"):
        _cfg().replace(batch_size=2.5)
    with pytest.raises(TypeError, match=r"^TrainConfig\.grad_clip must be a number or None, got 'no' \(str\)$"):
        engine.TrainConfig(grad_clip="no")
    assert engine.TrainConfig(epochs=np.int64(2), lr=np.float32(0.1), grad_clip=None).epochs == 2  # numpy numbers pass
    ck = tmp_path / "ck"
    with pytest.raises(TypeError, match=r"TrainConfig\.epochs must be an int"):  # refused before anything is made
        engine.train(torch.nn.Linear(3, 1), _step, _tiny_data(), {"epochs": "2", "checkpoint_dir": str(ck)})
    assert not ck.exists()


def test_read_only_output_folder_simulated(tmp_path, monkeypatch):
    """A read-only folder, simulated (the tests may run as root, for whom chmod changes nothing): opening
    a file for writing in it raises EACCES. The error names the file; the old file stays, no temp file."""
    from wsss_core.stages.cam import write_metrics

    ro = tmp_path / "ro"
    write_metrics(ro / "metrics.json", {"miou": 0.5})
    write_label_png(ro / "a.png", np.ones((4, 4), np.uint8))
    before = _snapshot(ro)
    real_open = builtins.open

    def guarded_open(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+") and Path(os.fspath(file)).resolve().parent == ro.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(PermissionError, match=rf"^\[Errno 13\] {re.escape(str(ro / 'metrics.json'))}: Permission denied "
                                              r"\(not written; any previous file is unchanged\)$"):
        write_metrics(ro / "metrics.json", {"miou": 0.7})
    with pytest.raises(PermissionError, match=rf"^\[Errno 13\] {re.escape(str(ro / 'a.png'))}: Permission denied"):
        write_label_png(ro / "a.png", np.zeros((4, 4), np.uint8))
    monkeypatch.undo()
    assert _snapshot(ro) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root: chmod 0o555 does not stop root from writing (the simulated "
                           "read-only case above covers it)")
def test_read_only_output_folder_chmod(tmp_path):
    from wsss_core.stages.cam import write_metrics

    ro = tmp_path / "ro"
    write_metrics(ro / "metrics.json", {"miou": 0.5})
    before = _snapshot(ro)
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=rf"^\[Errno 13\] {re.escape(str(ro / 'metrics.json'))}: Permission denied"):
            write_metrics(ro / "metrics.json", {"miou": 0.7})
    finally:
        ro.chmod(0o755)
    assert _snapshot(ro) == before


def test_checkpoint_from_another_config(tmp_path):
    ds = _tiny_data()
    engine.train(torch.nn.Linear(3, 1), _step, ds, _cfg(checkpoint_dir=tmp_path))
    before = _snapshot(tmp_path)
    with pytest.raises(engine.CheckpointMismatchError,
                       match=rf"^tiny: {re.escape(str(tmp_path / 'last.pt'))} was written by a run with a different "
                             r"configuration: epochs: 1 \(checkpoint\) != 2 \(now\); lr: 0\.01 \(checkpoint\) != 0\.02 "
                             r"\(now\)\. Delete .*resume=False") as e:
        engine.train(torch.nn.Linear(3, 1), _step, ds, _cfg(checkpoint_dir=tmp_path, epochs=2, lr=0.02))
    assert "\n" not in str(e.value)
    assert _snapshot(tmp_path) == before  # the checkpoint is neither reused nor overwritten


def test_checkpoint_from_another_format_version(tmp_path):
    ds = _tiny_data()
    engine.train(torch.nn.Linear(3, 1), _step, ds, _cfg(checkpoint_dir=tmp_path))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    ck["version"] = 99  # written by a future engine
    torch.save(ck, tmp_path / "last.pt")
    before = _snapshot(tmp_path)
    with pytest.raises(engine.CheckpointMismatchError,
                       match=rf"^tiny: {re.escape(str(tmp_path / 'last.pt'))} was written by a run with a different "
                             r"configuration: checkpoint format version: 99 \(checkpoint\) != 1 \(this engine\)\. Delete") as e:
        engine.train(torch.nn.Linear(3, 1), _step, ds, _cfg(checkpoint_dir=tmp_path))
    assert "\n" not in str(e.value)
    assert _snapshot(tmp_path) == before


def test_nan_in_the_input(tmp_path):
    with pytest.raises(FloatingPointError, match=r"^tiny: non-finite loss \(nan\) at epoch 0 \(0-based\), iteration 0 "
                                                 r"of the epoch .*check the inputs") as e:
        engine.train(torch.nn.Linear(3, 1), _step, _tiny_data(nan=True), _cfg(checkpoint_dir=tmp_path / "ck"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "ck" / engine.CHECKPOINT_NAME).exists()  # no checkpoint of a broken epoch


def test_checkpoint_from_another_stage_config(tmp_path):
    """The CAM stage's own check (the engine sees only the TrainConfig): a checkpoint folder whose
    ``stage_config.json`` records another model config is refused before any model is built."""
    from wsss_core.stages import cam

    cfg = profiles.cam_config("smoke")
    d = tmp_path / "classifier"
    d.mkdir()
    (d / engine.CHECKPOINT_NAME).write_bytes(b"stands for a trained checkpoint")
    cam._check_stage_identity(cfg, d)  # records stage_config.json, as a first run does
    before = _snapshot(d)
    with pytest.raises(engine.CheckpointMismatchError,
                       match=rf"^{re.escape(str(d))}: the checkpoint was trained with a different CAM-stage config "
                             r"\(dropout: checkpoint 0\.\d+ vs now 0\.37\)\. Delete the folder") as e:
        cam.train_classifier(cfg.replace(dropout=0.37), None, d, num_classes=3)
    assert "\n" not in str(e.value)
    assert _snapshot(d) == before
