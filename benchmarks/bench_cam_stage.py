#!/usr/bin/env python
"""CAM stage: quality and wall time for a profile, printed as one JSON object.

    python benchmarks/bench_cam_stage.py --profile tutorial            # ≈ 5 min on 2 CPU cores
    python benchmarks/bench_cam_stage.py --profile smoke --out /tmp/b  # seconds

Phases timed separately: toy-data generation (0 when cached), classifier training, CAM inference
(multi-scale + flip, train split), evaluation (threshold sweep + coverage/leak figures). Nothing is
reused between runs except the generated data: the classifier is trained from scratch each time.
Recorded results live in benchmarks/baselines/ (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tutorial", choices=["smoke", "tutorial"])
    ap.add_argument("--out", help="work folder (default: a temporary folder, removed afterwards)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int)
    a = ap.parse_args(argv)

    from wsss_core import profiles
    from wsss_core.stages import cam as S

    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="wsss_bench_"))
    t0 = time.perf_counter()
    data = profiles.prepare_data(a.profile, progress=False)
    t_data = time.perf_counter() - t0
    cfg = profiles.cam_config(a.profile)
    over = {"seed": a.seed, "progress": False}
    if a.epochs:
        over["epochs"] = a.epochs
    cfg = cfg.replace(train=cfg.train.replace(**over))
    train_ds = S.classification_dataset(data.root, data.train_split, cfg)
    val_ds = S.classification_dataset(data.root, data.val_split, cfg, train=False)
    shutil.rmtree(work / "cams", ignore_errors=True)
    t1 = time.perf_counter()
    model, history = S.train_classifier(cfg, train_ds, None, val_ds=None)
    t2 = time.perf_counter()
    cls = S.classification_report(model, val_ds)
    ev = S.evaluation_dataset(data.root, data.train_split, cfg)
    t3 = time.perf_counter()
    S.make_cams(model, ev, work / "cams", cfg, progress=False)
    t4 = time.perf_counter()
    rep = S.evaluate_cams(work / "cams", ev, cfg, data.context_pairs)
    t5 = time.perf_counter()
    n_train = len(train_ds)
    out = {
        "benchmark": "cam_stage",
        "profile": a.profile,
        "seed": a.seed,
        "epochs": cfg.train.epochs,
        "cam_scales": list(cfg.cam_scales),
        "n_train": n_train,
        "quality": {
            "cls_map": round(cls["map"], 4),
            "cam_miou": round(rep["miou"], 4),
            "cam_best_threshold": rep["best_threshold"],
            "cam_fg_precision": round(rep["fg_precision"], 4),
            "cam_fg_recall": round(rep["fg_recall"], 4),
            "cam_part_recall": round(rep.get("part_recall", float("nan")), 4),
            "cam_body_recall": round(rep.get("body_recall", float("nan")), 4),
            "cam_context_leak": round(rep.get("context_leak", float("nan")), 4),
            "cam_background_leak": round(rep.get("background_leak", float("nan")), 4),
        },
        "seconds": {
            "data": round(t_data, 1),
            "train": round(t2 - t1, 1),
            "train_per_epoch": round((t2 - t1) / cfg.train.epochs, 2),
            "cams": round(t4 - t3, 1),
            "evaluate": round(t5 - t4, 1),
            "total": round(t5 - t0, 1),
        },
        "images_per_second": {
            "train": round(n_train * cfg.train.epochs / (t2 - t1), 1),
            "cams": round(n_train / (t4 - t3), 1),
        },
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    print(json.dumps(out, indent=2))
    if not a.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
