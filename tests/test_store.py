"""wsss_core.stages.store: identities, atomic writes, completion markers, the result lock."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from wsss_core import profiles
from wsss_core.stages import affinity, box2seg, cam, edam, eps, segmentation, store

TOY = SimpleNamespace(manifest={"generator_version": 7, "config": {"n_train": 64, "size": 96}},
                      root=Path("/d/toy/smoke"), train_split="train")
VOC = SimpleNamespace(manifest=None, root=Path("/d/VOCdevkit/VOC2012"), train_split="train_aug")


# ------------------------------------------------------------------------------------------------
# identity
# ------------------------------------------------------------------------------------------------

def test_identity_ignores_run_only_fields_and_changes_with_a_real_one():
    cfg = profiles.cam_config("smoke")
    base = cam.classifier_identity(cfg, TOY)
    for field, value in (("device", "cuda"), ("progress", False), ("num_workers", 4), ("desc", "x"),
                         ("checkpoint_dir", "/elsewhere"), ("resume", False)):
        assert field in store.RUN_ONLY_FIELDS
        other = cam.classifier_identity(cfg.replace(train=cfg.train.replace(**{field: value})), TOY)
        assert other.hash == base.hash, field
    # inference-only fields of the stage do not count either
    assert cam.classifier_identity(cfg.replace(cam_scales=(1.0, 2.0)), TOY).hash == base.hash
    # a field that changes the weights does, and the diff names it
    for changed in (cfg.replace(train=cfg.train.replace(lr=1e-2)), cfg.replace(dropout=0.5)):
        new = cam.classifier_identity(changed, TOY)
        assert new.hash != base.hash
    new = cam.classifier_identity(cfg.replace(train=cfg.train.replace(epochs=3)), TOY)
    assert store.diff_fields(base.fields, new.fields) == ["train.epochs"]
    assert store.diff_fields(base.fields, cam.classifier_identity(cfg, VOC).fields) == [
        "data.config", "data.generator_version", "data.root", "data.split"]
    # amp changes the arithmetic: part of the identity, yet tolerated when resuming a checkpoint
    assert "amp" not in store.RUN_ONLY_FIELDS and "amp" in store.RESUME_TOLERATED_FIELDS
    assert cam.classifier_identity(cfg.replace(train=cfg.train.replace(amp=True)), TOY).hash != base.hash


def test_identity_upstream_version_and_json_round_trip():
    cfg = affinity.config_for_profile("smoke")
    a = affinity.affinitynet_identity(cfg, "clsA", TOY)
    assert a.fields["classifier"] == "clsA" and a.hash != affinity.affinitynet_identity(cfg, "clsB", TOY).hash
    with pytest.raises(ValueError, match="clashes"):
        store.identity("x", {"classifier": 1}, upstream={"classifier": 2})
    v1 = store.identity("x", {"a": 1})
    v2 = store.identity("x", {"a": 1}, version=2)
    assert v1.hash == store.fingerprint({"a": 1}) and v2.hash != v1.hash and v2.fields["format_version"] == 2
    # what is stored as JSON (tuples become lists) compares equal to the live identity
    stored = json.loads(json.dumps(a.to_dict(), default=str))
    assert store.diff_fields(stored["fields"], a.fields) == [] and stored["hash"] == a.hash


def _legacy_table() -> dict:
    """Every stage's checkpoint folder names under the four profiles, computed by the code before the
    store existed (commit 862a79e). A changed name would orphan every cached result of that stage."""
    return json.loads((Path(__file__).parent / "data" / "identities_v1.json").read_text())


def _names_now() -> dict:
    out = {}
    for p in profiles.PROFILE_NAMES:
        for dn, d in (("toy", TOY), ("voc", VOC), ("none", None)):
            out[f"cam/{p}/{dn}"] = cam.checkpoint_dir_for(profiles.cam_config(p), "o", d).as_posix()
            out[f"eps/{p}/{dn}"] = eps.checkpoint_dir_for(eps.config_for_profile(p), "o", d).as_posix()
            out[f"affinity/{p}/{dn}"] = affinity.checkpoint_dir_for(affinity.config_for_profile(p), "o", "clsname",
                                                                    d).as_posix()
            out[f"edam/{p}/{dn}"] = edam.checkpoint_dir_for(edam.config_for_profile(p), "o", "clsname", d).as_posix()
        out[f"segmentation/{p}"] = segmentation.checkpoint_dir_for(segmentation.config_for_profile(p), None,
                                                                   "o").as_posix()
        c = box2seg.config_for_profile(p)
        for name in box2seg.ALL_SETTINGS:
            t, loss = box2seg.setting(name, c)
            out[f"box2seg/{p}/{name}"] = box2seg.checkpoint_dir_for(
                name, t, loss, c.seg, "o", {"data": box2seg.data_identity(TOY)}).as_posix()
    return out


def test_checkpoint_names_are_those_made_before_the_store():
    legacy = _legacy_table()
    now = _names_now()
    assert len(legacy) == 84 and now.keys() == legacy.keys()
    changed = {k: (legacy[k], now[k]) for k in legacy if legacy[k] != now[k]}
    assert not changed, changed


def test_segmentation_label_folder_identity_is_the_legacy_one(tmp_path):
    """The version-1 formula (written out here as it was): config minus inference fields, *with* the
    TrainConfig's run-only fields, and the label folder's file count, size and path."""
    import hashlib

    from wsss_core.data.palette import write_label_png
    import numpy as np

    for i in range(3):
        write_label_png(tmp_path / f"{i}.png", np.full((5, 6), i, np.uint8))
    cfg = segmentation.config_for_profile("smoke")
    files = sorted(tmp_path.glob("*.png"))
    ident = {k: v for k, v in cfg.to_dict().items() if k not in segmentation._INFERENCE_FIELDS}
    ident["labels"] = [len(files), sum(f.stat().st_size for f in files), str(tmp_path.resolve())]
    old = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    assert segmentation.checkpoint_dir_for(cfg, tmp_path, "o").name.endswith(old)
    # (so a changed device still renames a segmenter's folder: kept for compatibility, see segmenter_identity)
    moved = cfg.replace(train=cfg.train.replace(device="cpu"))
    assert segmentation.segmenter_identity(moved).hash != segmentation.segmenter_identity(cfg).hash


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------

def test_atomic_write_leaves_the_old_file_when_the_writer_dies_midway(tmp_path):
    p = tmp_path / "sub" / "metrics.json"
    store.atomic_write_json(p, {"miou": 0.5})
    with pytest.raises(RuntimeError, match="disk on fire"):
        with store.atomic_path(p) as tmp:
            with open(tmp, "w") as f:
                f.write('{"miou": 0.7, "per_cl')   # half a file ...
                f.flush()
                raise RuntimeError("disk on fire")  # ... and the writer dies
    assert json.loads(p.read_text()) == {"miou": 0.5}
    assert sorted(x.name for x in p.parent.iterdir()) == ["metrics.json"]  # no temporary file left
    # an unserialisable object never touches the file
    with pytest.raises(TypeError):
        store.atomic_write_json(p, {"x": object()})
    assert json.loads(p.read_text()) == {"miou": 0.5}


def test_sweep_temp_removes_a_dead_writers_half_file_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".a.npz.{dead.pid}.tmp").write_bytes(b"half")
    (tmp_path / f".b.npz.{os.getpid()}.tmp").write_bytes(b"mine")
    assert [p.name for p in store.sweep_temp(tmp_path)] == [f".a.npz.{dead.pid}.tmp"]
    assert (tmp_path / f".b.npz.{os.getpid()}.tmp").exists()


# ------------------------------------------------------------------------------------------------
# completion
# ------------------------------------------------------------------------------------------------

def test_marker_is_written_last_and_removed_first(tmp_path):
    r = store.Result(tmp_path / "labels")
    assert r.state() == store.ABSENT
    r.begin()
    (r.folder / "a.png").write_bytes(b"x")
    assert r.state() == store.PARTIAL and not r.is_complete()
    r.complete({"classifier": "c1", "n_images": 1})
    assert r.state() == store.COMPLETE and r.is_complete({"classifier": "c1"}) and not r.is_complete({"classifier": "c2"})
    assert "completed" in r.record()
    r.begin()  # remaking: the marker goes before any file is touched
    assert r.state() == store.PARTIAL and (r.folder / "a.png").exists()


def test_ensure_cams_marker_comes_after_the_last_map_and_a_crash_is_not_reused(tmp_path):
    cfg = profiles.cam_config("smoke")
    ds = type("DS", (), {"ids": ["a", "b", "c"], "split": "train", "__len__": lambda self: 3})()
    folder = tmp_path / "cams"
    seen = []

    def make(model, dataset, out_dir, cfg, progress=False, fail_at=None):
        for i, iid in enumerate(dataset.ids):
            if i == fail_at:
                raise KeyboardInterrupt("killed")
            assert not (out_dir / cam.CAM_MARKER).exists(), "marker written before the maps"
            (out_dir / f"{iid}.npz").write_bytes(b"map of " + iid.encode())
            seen.append(iid)

    cam.ensure_cams(None, ds, folder, cfg, "cls-old", make=make)
    assert cam.cam_folder(folder).record()["classifier"] == "cls-old"
    # a new classifier starts remaking and dies after one map ...
    with pytest.raises(KeyboardInterrupt):
        cam.ensure_cams(None, ds, folder, cfg, "cls-new", make=lambda *a, **k: make(*a, **k, fail_at=1))
    # ... which leaves a partial folder, and the *old* classifier does not take it for its own
    assert cam.cam_folder(folder).state() == store.PARTIAL
    seen.clear()
    _, reused = cam.ensure_cams(None, ds, folder, cfg, "cls-old", make=make)
    assert not reused and seen == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------------
# lock
# ------------------------------------------------------------------------------------------------

def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_lock_held_by_a_live_process_names_it(tmp_path):
    p = _sleeper()
    try:
        (tmp_path / store.LOCK_NAME).write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(),
                                                            "started": "2026-12-06T01:00:00+00:00"}))
        t0 = time.monotonic()
        with pytest.raises(store.ResultLocked) as e:
            with store.lock(tmp_path, wait=0.3, poll=0.05):
                pass
        assert time.monotonic() - t0 >= 0.3
        msg = str(e.value)
        assert f"pid {p.pid} on {socket.gethostname()} since 2026-12-06T01:00:00" in msg and str(tmp_path) in msg
    finally:
        p.kill()
        p.wait()
    # the holder died: its lock is taken over, and released after the block
    with store.lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with store.lock(tmp_path):  # re-entrant in one process
            pass
        assert path.exists()
    assert not (tmp_path / store.LOCK_NAME).exists()


def test_a_lock_from_another_host_is_never_presumed_dead(tmp_path):
    (tmp_path / store.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t"}))
    with pytest.raises(store.ResultLocked, match="pid 1 on elsewhere"):
        with store.lock(tmp_path):
            pass


def test_an_unreadable_lock_is_refused_while_fresh_and_taken_over_when_old(tmp_path):
    lock = tmp_path / store.LOCK_NAME
    lock.write_text("{")  # e.g. a file system without hard links, writer killed mid-way
    with pytest.raises(store.ResultLocked, match="unknown process"):
        with store.lock(tmp_path):
            pass
    os.utime(lock, (time.time() - 120, time.time() - 120))
    with store.lock(tmp_path):
        pass


def test_two_processes_on_one_folder(tmp_path):
    """A second process asking for a held lock gets the error; after the first releases it, it gets it."""
    code = ("import sys, time; from wsss_core.stages import store\n"
            "with store.lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "30"], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert first.stdout.readline().strip() == "locked"
        with pytest.raises(store.ResultLocked, match=f"pid {first.pid} "):
            with store.lock(tmp_path):
                pass
    finally:
        first.kill()
        first.wait()
    with store.lock(tmp_path):  # SIGKILLed holder: stale, taken over
        pass


def test_cam_run_refuses_a_folder_another_run_holds(tmp_path):
    p = _sleeper()
    try:
        (tmp_path / store.LOCK_NAME).write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(),
                                                            "started": "now"}))
        with pytest.raises(store.ResultLocked, match=f"pid {p.pid}"):
            cam.run(profiles.cam_config("smoke"), TOY, tmp_path, progress=False)
    finally:
        p.kill()
        p.wait()
    assert not (tmp_path / "classifier").exists()  # nothing written


# ------------------------------------------------------------------------------------------------
# wsss status
# ------------------------------------------------------------------------------------------------

def test_status_table_and_what_a_rerun_would_do(tmp_path, capsys):
    """A smoke CAM stage trained for 1 epoch, then asked about the smoke profile (2 epochs)."""
    import torch

    from wsss_core import cli, engine
    from wsss_core.stages import status

    torch.set_num_threads(1)
    root = tmp_path / "data"
    data = profiles.prepare_data("smoke", root, progress=False)
    cfg = profiles.cam_config("smoke")
    short = cfg.replace(train=cfg.train.replace(epochs=1, progress=False))
    run_dir = tmp_path / "runs"
    res = cam.run(short, data, run_dir / cam.NOTEBOOK, progress=False)

    rows = {r.folder.relative_to(run_dir).as_posix(): r for r in status.scan(run_dir)}
    ck = f"{cam.NOTEBOOK}/classifier/{res.checkpoint_dir.name}"
    assert set(rows) == {ck, f"{cam.NOTEBOOK}/cams", f"{cam.NOTEBOOK}/pseudo_labels"}
    assert all(r.state == store.COMPLETE for r in rows.values())
    assert rows[ck].stage == "cam" and rows[ck].identity == res.checkpoint_dir.name[-8:]
    assert rows[f"{cam.NOTEBOOK}/cams"].identity == rows[ck].identity

    # the smoke profile trains 2 epochs: a new classifier, and the field that differs is named
    planned = status.plan(status.scan(run_dir), "smoke", run_dir, root)
    want = cam.checkpoint_dir_for(cfg, run_dir / cam.NOTEBOOK, data)
    new = [r for r in planned if r.folder == want]
    assert len(new) == 1 and new[0].state == store.ABSENT and "train.epochs" in new[0].rerun
    # ... and notebook 06's segmenters of the labels already there (the CAM's) and of the true masks
    assert {r.stage for r in planned if r.state == store.ABSENT} == {"cam", "affinity", "edam", "eps",
                                                                     "segmentation:cam", "segmentation:full"}
    from wsss_core.stages import segmentation

    scfg = segmentation.config_for_profile("smoke")
    scfg = scfg.replace(train=scfg.train.replace(seed=0))
    seg_row = next(r for r in planned if r.stage == "segmentation:cam")
    assert seg_row.folder == segmentation.checkpoint_dir_for(scfg, res.label_dir, run_dir / segmentation.NOTEBOOK / "cam")
    assert seg_row.rerun == "train (none there yet)"
    made = {r.folder.name: r.rerun for r in planned if r.kind != "checkpoint"}
    assert made["cams"].startswith("remake (made by " + res.checkpoint_dir.name)

    # a checkpoint that did not finish is partial
    ckpt = res.checkpoint_dir / engine.CHECKPOINT_NAME
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["finished"] = False
    torch.save(state, ckpt)
    r = [r for r in status.scan(run_dir) if r.kind == "checkpoint"][0]
    assert r.state == store.PARTIAL

    assert cli.main(["status", str(run_dir), "--profile", "smoke", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| stage | folder | identity | state | note | rerun |") and "train.epochs" in out
    assert cli.main(["status", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# bad input (the ones the store answers; issue 18 lists twenty)
# ------------------------------------------------------------------------------------------------

def _disk_full_after(monkeypatch, n_bytes: int):
    """Simulate ENOSPC: writes to temporary files fail once ``n_bytes`` have been written."""
    import builtins
    import errno

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n + len(b) > n_bytes:
                self.f.write(b[: max(n_bytes - self.n, 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(b)
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

    def fake_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Full(f) if str(file).endswith(".tmp") and "w" in mode else f

    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.bad_input
@pytest.mark.parametrize("what", ["metrics.json", "label PNG", "CAM npz"])
def test_disk_full_while_writing_names_the_file_and_keeps_the_old_one(what, tmp_path, monkeypatch):
    import numpy as np

    from wsss_core.cams import load_cams, save_cams
    from wsss_core.data.palette import read_label_png, write_label_png

    writers = {
        "metrics.json": (tmp_path / "metrics.json", lambda p, v: cam.write_metrics(p, {"miou": v, "pad": "x" * 4000}),
                         lambda p: json.loads(p.read_text())["miou"]),
        "label PNG": (tmp_path / "a.png", lambda p, v: write_label_png(p, np.random.RandomState(v).randint(0, 3, (64, 64))),
                      lambda p: int(read_label_png(p).sum())),
        "CAM npz": (tmp_path / "a.npz", lambda p, v: save_cams(p, np.random.RandomState(v).rand(3, 64, 64), [1, 0, 1]),
                    lambda p: float(load_cams(p)[0].sum())),
    }
    path, write, read = writers[what]
    write(path, 1)
    before = read(path)
    _disk_full_after(monkeypatch, 100)
    with pytest.raises(OSError) as e:
        write(path, 2)
    monkeypatch.undo()
    msg = str(e.value)
    assert str(path) in msg and "No space left" in msg and "\n" not in msg
    assert read(path) == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.bad_input
def test_status_of_a_missing_folder_and_an_unknown_profile(tmp_path, capsys):
    from wsss_core import cli

    assert cli.main(["status", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"wsss status: {tmp_path / 'nowhere'}: no such run folder"
    with pytest.raises(SystemExit) as e:
        cli.main(["status", str(tmp_path), "--profile", "huge"])
    assert e.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown profile 'huge'; the profiles are: smoke, tutorial, study, paper"):
        profiles.cam_config("huge")
