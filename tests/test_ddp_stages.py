"""Every training stage under torchrun: two CPU processes (gloo) give what one process gives.

The workers get exactly the environment torchrun gives (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
without the launcher. To make "the same" exact rather than statistical, the test removes the two
legitimate sources of difference between 1 and 2 processes: data order and batch statistics —
one full batch per epoch (so the split of the batch across ranks does not matter), no random
augmentation (crop = image size, no rescale / flip / jitter, no dropout), and frozen BatchNorm
statistics in the backbone (CPU has no SyncBatchNorm; on GPUs ranks would otherwise normalise with
their own half-batch, as plain DDP does).

One launch of two worker processes trains every stage in turn, through the shared engine
(:func:`wsss_core.engine.train`): the CAM classifier, the segmenter, EPS, AffinityNet, EDAM and
Box2Seg; the parent process then trains the same stages as one process. Which stages match exactly:

* exact (losses and final weights to 1e-5) where the loss is a plain mean over images / pairs of
  equal size, so that the mean of the two ranks' half-batch means is the full-batch mean: CAM
  (multi-label soft margin), EPS (soft margin + MSE over equal-size maps), EDAM (BCE over
  ``P × 2 × K`` logits);
* within a tolerance where each rank normalises its loss by its *own* count (valid pixels, pair
  counts, boxes) or where layers outside the backbone have BatchNorm (the segmentation decoders,
  normalised per half-batch): the segmenter, AffinityNet (PSA's loss divides by the pairs of each
  kind in the rank's batch), Box2Seg (cross-entropy over valid pixels, per-box terms, decoder BN).

"One writer of checkpoints" is checked by what the workers actually wrote (a ``sys.addaudithook``
records every file each rank opens for writing or renames into place), not only by the listing.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
N_TRAIN = 16
BACKBONE = {"width": 8, "output_stride": 8, "freeze_bn": True}
# checkpoint folders of the stages, relative to a run's output folder
CKPT_DIRS = {"cam": "cam_ckpt", "seg": "seg_ckpt", "eps": "eps_ckpt", "aff": "aff_ckpt", "aff_unused": "aff_ckpt_unused",
             "edam": "edam_ckpt", "box2seg": "box2seg/segmenters"}


def _cam_cfg(world_size: int):
    from wsss_core import profiles

    cfg = profiles.cam_config("smoke")
    return cfg.replace(backbone_kwargs=dict(BACKBONE), scale=None, hflip=False,
                       train=cfg.train.replace(epochs=2, batch_size=N_TRAIN // world_size, lr=1e-3, progress=False,
                                               schedule="constant", optimizer="adam"))


def _seg_cfg(world_size: int):
    from wsss_core.stages import segmentation as seg

    cfg = seg.config_for_profile("smoke")
    return cfg.replace(backbone_kwargs=dict(BACKBONE), channels=16, scale=None,
                       hflip=False, train=cfg.train.replace(epochs=2, batch_size=N_TRAIN // world_size, lr=1e-3,
                                                            progress=False, schedule="constant"))


def _eps_cfg(world_size: int):
    from wsss_core.stages import eps

    cfg = eps.config_for_profile("smoke")
    return cfg.replace(backbone_kwargs=dict(BACKBONE), dropout=0.0, scale=None, long_side=None, hflip=False,
                       color_jitter=None, train=cfg.train.replace(epochs=2, batch_size=N_TRAIN // world_size, lr=1e-3,
                                                                  progress=False, schedule="constant"))


def _aff_cfg(world_size: int):
    from wsss_core.stages import affinity

    cfg = affinity.config_for_profile("smoke")  # levels ("s2", "s4") of the backbone, as the tutorial
    return cfg.replace(backbone_kwargs=dict(BACKBONE), crf=False, scale=None, long_side=None, hflip=False,
                       color_jitter=None, train=cfg.train.replace(epochs=2, batch_size=N_TRAIN // world_size, lr=1e-3,
                                                                  progress=False, schedule="constant"))


def _edam_cfg(world_size: int, n_pairs: int | None = None):
    from wsss_core.stages import edam

    cfg = edam.config_for_profile("smoke")
    # one batch of an even number of pairs per epoch, in order (shuffle=False: with drop_last both the
    # sequential and the distributed sampler then take the same first pairs)
    bs = (n_pairs // 2 * 2) // world_size if n_pairs else 8
    return cfg.replace(backbone_kwargs=dict(BACKBONE), dropout=0.0, attn_dropout=0.0, scale=None, long_side=None,
                       hflip=False, color_jitter=None,
                       train=cfg.train.replace(epochs=2, batch_size=bs, lr=1e-3, progress=False, schedule="constant",
                                               max_iters_per_epoch=None, shuffle=False))


def _box2seg_cfg(world_size: int):
    from wsss_core.stages import box2seg

    cfg = box2seg.config_for_profile("smoke")  # setting "box2seg": CE + AWL + filling rate + embeddings
    seg = cfg.seg.replace(backbone_kwargs=dict(BACKBONE), backbone_init="cam_classifier", channels=16, scale=None,
                          long_side=None, hflip=False, color_jitter=None,
                          train=cfg.seg.train.replace(epochs=2, batch_size=N_TRAIN // world_size, lr=1e-3,
                                                      progress=False, schedule="constant", max_iters_per_epoch=None))
    return cfg.replace(seg=seg, grabcut_workers=0)


def _weights(model) -> dict:
    from wsss_core import engine

    return {k: v.tolist() for k, v in engine.unwrap(model).state_dict().items() if v.dtype.is_floating_point}


def _series(hist, key: str = "loss") -> list:
    return [r[key] for r in hist.iters]


def _barrier() -> None:
    from wsss_core import engine

    if engine.get_dist_info().enabled:
        torch.distributed.barrier()


def run_stages(root: Path, out: Path, world_size: int, gc_root: Path) -> dict:
    """Train every stage on ``root``; on rank 0 return losses, weights and metrics per stage.

    Under DDP a stage that raises is recorded (``{"error": traceback}``) and the next stages still run;
    in one process an error propagates (the reference run must work).
    """
    from wsss_core import engine
    from wsss_core.data.toyscenes import context_pairs, load_manifest
    from wsss_core.profiles import DataSpec
    from wsss_core.stages import affinity as aff_stage
    from wsss_core.stages import box2seg as b2s_stage
    from wsss_core.stages import cam as cam_stage
    from wsss_core.stages import edam as edam_stage
    from wsss_core.stages import eps as eps_stage
    from wsss_core.stages import segmentation as seg

    man = load_manifest(root)
    data = DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)
    is_main = lambda: engine.get_dist_info().is_main  # noqa: E731 (the process group starts in train())
    res: dict = {}

    def guarded(name, fn):
        try:
            fn()
        except Exception:  # noqa: BLE001 - recorded for the test, which reports it
            if world_size == 1:
                raise
            res[name] = {"error": traceback.format_exc()[-3000:]}

    # --- CAM classifier (its model initialises AffinityNet, EDAM and Box2Seg; its CAMs make affinity labels)
    cfg = _cam_cfg(world_size)
    train_ds = cam_stage.classification_dataset(root, "train", cfg)
    model, hist = cam_stage.train_classifier(cfg, train_ds, out / CKPT_DIRS["cam"])
    ev = cam_stage.evaluation_dataset(root, "train", cfg)
    cam_stage.make_cams(model, ev, out / "cams", cfg, progress=False)  # every rank makes its share
    if is_main():
        val = cam_stage.classification_dataset(root, "val", cfg, train=False)
        rep = cam_stage.evaluate_cams(out / "cams", ev, cfg, data.context_pairs)
        res["cam"] = {"loss": _series(hist), "map": cam_stage.classification_report(model, val)["map"],
                      "miou": rep["miou"], "weights": _weights(model)}

    # --- segmenter on the true masks
    def run_seg():
        scfg = _seg_cfg(world_size)
        seg_ds = seg.label_dataset(root, "train", scfg, None)
        smodel, shist = seg.train_segmenter(scfg, seg_ds, out / CKPT_DIRS["seg"])
        if is_main():
            rep = seg.evaluate(smodel, seg.label_dataset(root, "val", scfg, None, train=False), scfg, data.context_pairs)
            res["seg"] = {"loss": _series(shist), "miou": rep["miou"], "pixel_acc": rep["pixel_acc"]}

    guarded("seg", run_seg)

    # --- EPS
    def run_eps():
        ecfg = _eps_cfg(world_size)
        emodel, ehist = eps_stage.train_eps(ecfg, eps_stage.training_dataset(root, "train", ecfg), out / CKPT_DIRS["eps"])
        if is_main():
            val = eps_stage.validation_dataset(root, "val", ecfg)
            res["eps"] = {"loss": _series(ehist), "loss_cls": _series(ehist, "loss_cls"),
                          "loss_sal": _series(ehist, "loss_sal"), "weights": _weights(emodel),
                          "map": eps_stage.classification_report(emodel, val)["map"]}
            with _unsharded():
                res["eps"]["map_unsharded"] = eps_stage.classification_report(emodel, val)["map"]

    guarded("eps", run_eps)

    # --- AffinityNet: labels from the CAMs above (made by rank 0; the stage has no DDP-aware writer)
    def run_aff():
        acfg = _aff_cfg(world_size)
        label_dir = out / "aff_labels"
        if is_main():
            aff_stage.ensure_affinity_labels(out / "cams", ev, label_dir, acfg, cam_source="cam_ckpt", progress=False)
        _barrier()
        ads = aff_stage.affinity_dataset(root, "train", label_dir, acfg)
        entry = {}
        try:
            amodel, ahist = aff_stage.train_affinitynet(acfg, ads, out / CKPT_DIRS["aff"], classifier=model)
        except RuntimeError as e:  # raised on every rank together (DDP's unused-parameter check)
            if world_size == 1:
                raise
            entry["default_error"] = f"{type(e).__name__}: {e}"[:2000]
            ucfg = acfg.replace(train=acfg.train.replace(find_unused_parameters=True))
            amodel, ahist = aff_stage.train_affinitynet(ucfg, ads, out / CKPT_DIRS["aff_unused"], classifier=model)
        if is_main():
            entry.update({"loss": _series(ahist), "weights": _weights(amodel),
                          "counts": [[r["bg_count"], r["fg_count"], r["neg_count"]] for r in ahist.iters]})
            res["aff"] = entry

    guarded("aff", run_aff)

    # --- EDAM: pairs of images sharing a class, backbone from the CAM classifier
    def run_edam():
        pairs = edam_stage.pair_dataset(root, "train", _edam_cfg(world_size))
        dcfg = _edam_cfg(world_size, len(pairs))
        pairs = edam_stage.pair_dataset(root, "train", dcfg)
        dmodel, dhist = edam_stage.train_edam(dcfg, pairs, out / CKPT_DIRS["edam"], classifier=model)
        if is_main():
            res["edam"] = {"loss": _series(dhist), "acc": _series(dhist, "acc"), "weights": _weights(dmodel),
                           "n_pairs": len(pairs), "batch_size": dcfg.train.batch_size}

    guarded("edam", run_edam)

    # --- Box2Seg: GrabCut labels were made once beforehand (prepare() finds and reuses them)
    def run_box2seg():
        bcfg = _box2seg_cfg(world_size)
        sd = b2s_stage.prepare(bcfg, data, gc_root, backbone=(engine.unwrap(model).backbone.state_dict(), "cam_ckpt"),
                               progress=False)
        r = b2s_stage.run_setting("box2seg", bcfg, sd, out / "box2seg", progress=False)
        if is_main():
            h = r.history
            res["box2seg"] = {"loss": _series(h), "ce": _series(h, "ce"), "val_miou": r.val["miou"],
                              "checkpoint_dir": str(r.checkpoint_dir.relative_to(out))}
            # the reference: the trained model scored on rank 0 alone, over the whole validation split
            with _unsharded():
                summary = b2s_stage.evaluate_segmenter(r.model, sd.val, sd.context_pairs, bcfg.seg.eval_batch_size)[0]
            res["box2seg"]["val_miou_unsharded"] = summary["miou"]

    guarded("box2seg", run_box2seg)
    return res


@contextlib.contextmanager
def _unsharded():
    """Within the block :func:`wsss_core.engine.predict` runs with ``shard=False`` (the whole data set on the
    calling rank): the reference for scores a stage computes on rank 0 alone."""
    from wsss_core import engine

    orig = engine.predict

    def whole(*a, **kw):
        kw["shard"] = False
        return orig(*a, **kw)

    engine.predict = whole
    try:
        yield
    finally:
        engine.predict = orig


def _record_writes(out: Path) -> list:
    """Record (absolute paths of) the files under ``out`` this process opens for writing or renames into place."""
    log: list = []
    base = os.path.abspath(out) + os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        try:
            if event == "open":
                path, mode, flags = args
                if isinstance(mode, str):
                    if not any(c in mode for c in "wax+"):
                        return
                elif not (isinstance(flags, int) and flags & write_flags):
                    return
            elif event == "os.rename":
                path = args[1]
            else:
                return
            if isinstance(path, int):
                return
            p = os.path.abspath(os.fsdecode(path))
            if p.startswith(base):
                log.append(p[len(base):])
        except Exception:  # noqa: BLE001 - an audit hook must never raise
            pass

    sys.addaudithook(hook)
    return log


def _worker(root: str, out: str, gc_root: str) -> None:
    from datetime import timedelta

    from wsss_core import engine

    rank = int(os.environ["RANK"])
    writes = _record_writes(Path(out))
    # the process group the engine would start, with a short timeout: a stage that fails on one rank
    # only must not leave the other waiting in a collective for gloo's default 30 minutes
    torch.distributed.init_process_group("gloo", init_method="env://", rank=rank,
                                         world_size=int(os.environ["WORLD_SIZE"]), timeout=timedelta(seconds=90))
    res = run_stages(Path(root), Path(out), int(os.environ["WORLD_SIZE"]), Path(gc_root))
    if engine.get_dist_info().is_main:
        (Path(out) / "result.json").write_text(json.dumps(res))
    engine.cleanup_distributed()
    (Path(out) / f"writes_rank{rank}.json").write_text(json.dumps(sorted(set(writes))))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch of 2 workers training every stage, then the same stages in this process."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from wsss_core.data.toyscenes import ToySceneConfig, ensure_toyscenes
    from wsss_core.stages import box2seg

    tmp_path = tmp_path_factory.mktemp("ddp")
    root = tmp_path / "toy"
    ensure_toyscenes(root, ToySceneConfig(n_train=N_TRAIN, n_val=8), workers=1, progress=False)
    # GrabCut once, in this process: both runs' prepare() then read the same labels
    gc_root = tmp_path / "grabcut"
    box2seg.ensure_grabcut(box2seg.raw_dataset(root, "train"), gc_root, _box2seg_cfg(1).grabcut, workers=0,
                           progress=False)
    port = str(_free_port())
    out2 = tmp_path / "two"
    out2.mkdir()
    procs = []
    for rank in range(2):
        env = dict(os.environ)
        env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
                   RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(root), str(out2),
                                       str(gc_root)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=500)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    two = json.loads((out2 / "result.json").read_text())
    writes = {r: json.loads((out2 / f"writes_rank{r}.json").read_text()) for r in range(2)}
    one = run_stages(root, tmp_path / "one", world_size=1, gc_root=gc_root)
    return {"two": two, "one": one, "out2": out2, "writes": writes, "logs": logs}


def _stage(runs, name: str) -> tuple[dict, dict]:
    two = runs["two"].get(name)
    assert two is not None, f"{name}: no result from the 2-process run"
    if "error" in two:
        pytest.fail(f"{name} failed under 2 processes:\n{two['error']}")
    return two, runs["one"][name]


def _assert_one_writer(runs, folder: str, expected: list[str]) -> None:
    """``folder`` (relative to the 2-process output) holds ``expected`` and ``last.pt`` came from rank 0 only."""
    d = runs["out2"] / folder
    assert sorted(os.listdir(d)) == sorted(expected)
    ckpt = f"{folder}/last.pt"
    assert ckpt in runs["writes"][0], f"rank 0 did not write {ckpt}"
    rank1 = [p for p in runs["writes"][1] if p == ckpt or (p.startswith(folder + "/") and ".last.pt" in p)]
    assert not rank1, f"rank 1 wrote the checkpoint: {rank1}"


def _assert_weights_close(two: dict, one: dict, rel: float) -> None:
    """All floating-point tensors together: ``‖two − one‖ ≤ rel · ‖one‖``."""
    assert two.keys() == one.keys()
    a = np.concatenate([np.ravel(two[k]) for k in one])
    b = np.concatenate([np.ravel(one[k]) for k in one])
    assert np.linalg.norm(a - b) <= rel * np.linalg.norm(b), (np.linalg.norm(a - b), np.linalg.norm(b))


def _assert_weights(two: dict, one: dict, atol: float) -> None:
    assert two.keys() == one.keys()
    for k, v in one.items():
        np.testing.assert_allclose(np.array(two[k]), np.array(v), atol=atol, rtol=0, err_msg=k)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cam_classifier_under_two_processes(runs):
    two, one = _stage(runs, "cam")
    _assert_one_writer(runs, "cam_ckpt", ["last.pt", "stage_config.json"])
    # the loss is a mean over images, so the 2-process run is the 1-process run
    np.testing.assert_allclose(two["loss"], one["loss"], atol=1e-5)
    _assert_weights(two["weights"], one["weights"], atol=1e-5)
    assert two["map"] == pytest.approx(one["map"], abs=1e-6)
    assert two["miou"] == pytest.approx(one["miou"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_segmenter_under_two_processes(runs):
    two, one = _stage(runs, "seg")
    _assert_one_writer(runs, "seg_ckpt", ["last.pt"])
    # cross-entropy averages over each rank's own valid (non-255) pixels and the decoder's BatchNorm
    # sees half a batch, so ranks weigh pixels slightly differently from one process: same metrics
    # within a tolerance, not bit-equal
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0.05)
    assert two["miou"] == pytest.approx(one["miou"], abs=0.02)
    assert two["pixel_acc"] == pytest.approx(one["pixel_acc"], abs=0.02)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eps_under_two_processes(runs):
    two, one = _stage(runs, "eps")
    _assert_one_writer(runs, "eps_ckpt", ["last.pt", "stage_config.json"])
    # L_cls (soft margin) and L_sal (MSE over equal-size maps) are means over images: exact
    for key in ("loss", "loss_cls", "loss_sal"):
        np.testing.assert_allclose(two[key], one[key], atol=1e-5, err_msg=key)
    _assert_weights(two["weights"], one["weights"], atol=1e-5)
    assert two["map_unsharded"] == pytest.approx(one["map"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eps_validation_map_under_two_processes(runs):
    """The stage's own ``classification_report`` (its per-epoch ``val_map`` and ``run()``'s ``val_map``) on
    rank 0 must score the whole validation split under DDP."""
    two, one = _stage(runs, "eps")
    if abs(two["map"] - two["map_unsharded"]) > 1e-6:
        pytest.xfail(f"eps.predict_scores calls engine.predict without shard=False: under DDP rank 0 scores only "
                     f"its share of the split (mAP {two['map']:.4f} vs {two['map_unsharded']:.4f} over all of it)")
    assert two["map"] == pytest.approx(one["map"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_affinitynet_under_two_processes(runs):
    two, one = _stage(runs, "aff")
    folder = "aff_ckpt_unused" if "default_error" in two else "aff_ckpt"
    _assert_one_writer(runs, folder, ["last.pt"])
    # the pair counts are sums over the batch: the ranks' mean is half the full batch's
    np.testing.assert_allclose(2 * np.array(two["counts"]), np.array(one["counts"]), atol=0.5)
    # PSA's loss divides each term by the number of pairs of its kind *in the rank's batch*: close, not equal
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0.05)
    # no element-wise check of the weights: Adam's first step is lr × sign(g), so a gradient entry near 0
    # whose sign the per-rank normalisation flips moves by 2 × lr × lr_mult_new; the weights as a whole agree
    _assert_weights_close(two["weights"], one["weights"], rel=0.01)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_affinitynet_default_config_under_two_processes(runs):
    """The stage's own config (levels s2/s4) must train under DDP without the test's workaround."""
    two, _ = _stage(runs, "aff")
    if "default_error" in two:
        pytest.xfail("AffinityNet with levels=('s2', 's4') leaves the deeper backbone layers without gradients, "
                     "and train_affinitynet does not set find_unused_parameters: " + two["default_error"][:300])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_edam_under_two_processes(runs):
    two, one = _stage(runs, "edam")
    assert two["n_pairs"] == one["n_pairs"] and 2 * two["batch_size"] == one["batch_size"]
    _assert_one_writer(runs, "edam_ckpt", ["last.pt"])
    # BCE averaged over the P × 2 × K logits (K = all classes for every pair): a mean over pairs, exact
    np.testing.assert_allclose(two["loss"], one["loss"], atol=1e-5)
    np.testing.assert_allclose(two["acc"], one["acc"], atol=1e-6)
    _assert_weights(two["weights"], one["weights"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_box2seg_under_two_processes(runs):
    two, one = _stage(runs, "box2seg")
    # (the fingerprint differs: it covers the per-process batch size)
    assert Path(two["checkpoint_dir"]).name.startswith("box2seg-e2-seed0-")
    files = sorted(os.listdir(runs["out2"] / two["checkpoint_dir"]))
    assert "last.pt" in files and set(files) <= {"last.pt", "val.json"}
    _assert_one_writer(runs, two["checkpoint_dir"], files)
    # CE over each rank's valid pixels, AWL / filling rate per box, embeddings per pair, decoder BN on
    # half a batch: within a tolerance
    np.testing.assert_allclose(two["ce"], one["ce"], rtol=0.05)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0.05)
    assert two["val_miou_unsharded"] == pytest.approx(one["val_miou"], abs=0.03)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_box2seg_validation_score_under_two_processes(runs):
    """``run_setting``'s validation mIoU (stored in ``val.json``) must be the whole split's under DDP."""
    two, one = _stage(runs, "box2seg")
    if abs(two["val_miou"] - two["val_miou_unsharded"]) > 1e-6:
        pytest.xfail(f"evaluate_segmenter under DDP scores each rank's shard against the wrong ground truth "
                     f"(mIoU {two['val_miou']:.4f} vs {two['val_miou_unsharded']:.4f} over the whole split)")
    assert two["val_miou"] == pytest.approx(one["val_miou"], abs=0.03)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_only_rank0_writes_checkpoint_folders(runs):
    """Nothing at all in a checkpoint folder is written by rank 1 (sidecar files included)."""
    folders = [v for k, v in CKPT_DIRS.items()]
    rank1 = sorted(p for p in runs["writes"][1] if any(p.startswith(f + "/") for f in folders))
    if rank1:
        pytest.xfail(f"rank 1 writes sidecar files into checkpoint folders: {rank1}")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3], sys.argv[4])
