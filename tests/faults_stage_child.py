"""Child process of tests/test_faults.py for the stages after the CAM stage: ``STAGE`` through the stage
contract (:class:`wsss_core.stages.pipeline.Run`, smoke preset, seed 0), its inputs run or reused first,
optionally paused at one point so that the parent can ``kill -9`` it there.

    python faults_stage_child.py STAGE DATA_ROOT OUT_DIR PAUSE FLAG

``PAUSE`` as in faults_cam_child.py. After the stage it writes ``OUT_DIR/metrics.json``: the stage's
headline figures (``Stage.metrics``) and digests of its weights and of every label PNG and map file it made.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from faults_cam_child import digest, install


def main(stage: str, data_root: str, out_dir: str, pause: str, flag: str) -> None:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):  # one core: the stages' process pools stay serial, so every file is
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # written (and paused) in this process
    from wsss_core import profiles
    from wsss_core.atomic import atomic_write_json
    from wsss_core.stages import pipeline

    data = profiles.prepare_data("smoke", data_root, progress=False)
    run = pipeline.Run("smoke", out_dir, data=data, seed=0, progress=False,
                       config_hook=lambda name, cfg: cfg.replace(train=cfg.train.replace(progress=False))
                       if hasattr(cfg, "train") else cfg)
    install(pause, flag)
    res = run.result(stage)
    sd = res.model.state_dict()
    folder = run.out_dir(stage)
    metrics = {**pipeline.STAGES[stage].metrics(res, run),
               "weights_sha1": hashlib.sha1(b"".join(sd[k].detach().cpu().numpy().tobytes()
                                                     for k in sorted(sd))).hexdigest()[:16],
               "pngs_sha1": digest(folder.rglob("*.png")), "maps_sha1": digest(folder.rglob("*.npz"))}
    atomic_write_json(Path(out_dir) / "metrics.json", metrics, default=float)


if __name__ == "__main__":
    main(*sys.argv[1:6])
