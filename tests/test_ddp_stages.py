"""Every training stage under torchrun: two CPU processes (gloo) give what one process gives.

The workers get exactly the environment torchrun gives (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
without the launcher. To make "the same" exact rather than statistical, the test removes the two
legitimate sources of difference between 1 and 2 processes: data order and batch statistics —
one full batch per epoch (so the split of the batch across ranks does not matter), no random
augmentation, and frozen BatchNorm statistics (CPU has no SyncBatchNorm; on GPUs ranks would
otherwise normalise with their own half-batch, as plain DDP does).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
N_TRAIN = 16


def _cam_cfg(world_size: int):
    from wsss_core import profiles

    cfg = profiles.cam_config("smoke")
    return cfg.replace(backbone_kwargs={"width": 8, "output_stride": 8, "freeze_bn": True}, scale=None, hflip=False,
                       train=cfg.train.replace(epochs=2, batch_size=N_TRAIN // world_size, lr=1e-3, progress=False,
                                               schedule="constant", optimizer="adam"))


def _seg_cfg(world_size: int):
    from wsss_core.stages import segmentation as seg

    cfg = seg.config_for_profile("smoke")
    return cfg.replace(backbone_kwargs={"width": 8, "output_stride": 8, "freeze_bn": True}, channels=16, scale=None,
                       hflip=False, train=cfg.train.replace(epochs=2, batch_size=N_TRAIN // world_size, lr=1e-3,
                                                            progress=False, schedule="constant"))


def run_stages(root: Path, out: Path, world_size: int) -> dict:
    """Train the CAM classifier and a segmenter on ``root``; on rank 0 return weights and metrics."""
    from wsss_core import engine
    from wsss_core.data.toyscenes import context_pairs, load_manifest
    from wsss_core.profiles import DataSpec
    from wsss_core.stages import cam as cam_stage
    from wsss_core.stages import segmentation as seg

    man = load_manifest(root)
    data = DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)
    res = {}
    cfg = _cam_cfg(world_size)
    train_ds = cam_stage.classification_dataset(root, "train", cfg)
    model, hist = cam_stage.train_classifier(cfg, train_ds, out / "cam_ckpt")
    ev = cam_stage.evaluation_dataset(root, "train", cfg)
    cam_stage.make_cams(model, ev, out / "cams", cfg, progress=False)  # every rank makes its share
    if engine.get_dist_info().is_main:
        val = cam_stage.classification_dataset(root, "val", cfg, train=False)
        rep = cam_stage.evaluate_cams(out / "cams", ev, cfg, data.context_pairs)
        res["cam"] = {"loss": [r["loss"] for r in hist.iters], "map": cam_stage.classification_report(model, val)["map"],
                      "miou": rep["miou"], "weights": {k: v.tolist() for k, v in model.state_dict().items()
                                                       if v.dtype.is_floating_point}}
    scfg = _seg_cfg(world_size)
    seg_ds = seg.label_dataset(root, "train", scfg, None)
    smodel, shist = seg.train_segmenter(scfg, seg_ds, out / "seg_ckpt")
    if engine.get_dist_info().is_main:
        rep = seg.evaluate(smodel, seg.label_dataset(root, "val", scfg, None, train=False), scfg, data.context_pairs)
        res["seg"] = {"loss": [r["loss"] for r in shist.iters], "miou": rep["miou"], "pixel_acc": rep["pixel_acc"]}
    return res


def _worker(root: str, out: str) -> None:
    from wsss_core import engine

    res = run_stages(Path(root), Path(out), int(os.environ["WORLD_SIZE"]))
    info = engine.get_dist_info()
    if info.is_main:
        (Path(out) / "result.json").write_text(json.dumps(res))
    engine.cleanup_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cam_and_segmentation_stages_under_two_processes(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from wsss_core.data.toyscenes import ToySceneConfig, ensure_toyscenes

    root = tmp_path / "toy"
    ensure_toyscenes(root, ToySceneConfig(n_train=N_TRAIN, n_val=8), workers=1, progress=False)
    port = str(_free_port())
    out2 = tmp_path / "two"
    procs = []
    for rank in range(2):
        env = dict(os.environ)
        env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
                   RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(root), str(out2)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=280)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    two = json.loads((out2 / "result.json").read_text())
    # one writer of checkpoints: the folders hold one checkpoint each, written by rank 0
    assert sorted(os.listdir(out2 / "cam_ckpt")) == ["last.pt", "stage_config.json"]
    assert sorted(os.listdir(out2 / "seg_ckpt")) == ["last.pt"]

    one = run_stages(root, tmp_path / "one", world_size=1)
    # CAM classifier: the loss is a mean over images, so the 2-process run is the 1-process run
    np.testing.assert_allclose(two["cam"]["loss"], one["cam"]["loss"], atol=1e-5)
    for k, v in one["cam"]["weights"].items():
        np.testing.assert_allclose(np.array(two["cam"]["weights"][k]), np.array(v), atol=1e-5, rtol=0)
    assert two["cam"]["map"] == pytest.approx(one["cam"]["map"], abs=1e-6)
    assert two["cam"]["miou"] == pytest.approx(one["cam"]["miou"], abs=1e-4)
    # segmenter: cross-entropy averages over each rank's own valid (non-255) pixels, so ranks weigh
    # pixels slightly differently from one process: same metrics within a tolerance, not bit-equal
    np.testing.assert_allclose(two["seg"]["loss"], one["seg"]["loss"], rtol=0.05)
    assert two["seg"]["miou"] == pytest.approx(one["seg"]["miou"], abs=0.02)
    assert two["seg"]["pixel_acc"] == pytest.approx(one["seg"]["pixel_acc"], abs=0.02)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3])
