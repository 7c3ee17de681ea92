"""Child process of tests/test_faults.py: the CAM stage at smoke settings, optionally paused at one point
so that the parent can ``kill -9`` it there.

    python faults_cam_child.py DATA_ROOT OUT_DIR PAUSE FLAG

``PAUSE`` is ``none``, ``step:N`` (before the N-th training step, 1-based) or ``replace:SUFFIX:N`` (the
N-th atomic rename onto a file whose name ends with SUFFIX: the temporary file is cut to half its size
first, as if the writer were in the middle of it; ``replace_in:PART:N``: whose path contains PART). At the pause the child writes FLAG and sleeps.
After the stage it writes OUT_DIR/metrics.json (the notebook-01 keys the stage reports, plus digests of
the classifier's weights, the CAM files and the pseudo-label PNGs).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import torch


def pause_here(flag: str) -> None:
    Path(flag).write_text(str(os.getpid()))
    time.sleep(600)  # the parent kills us here


def install(pause: str, flag: str) -> None:
    if pause == "none":
        return
    kind, *args = pause.split(":")
    if kind == "step":
        from wsss_core.stages import cam

        n, real = int(args[0]), cam.classification_step
        count = [0]

        def step(*a, **k):
            count[0] += 1
            if count[0] == n:
                pause_here(flag)
            return real(*a, **k)

        cam.classification_step = step
    elif kind in ("replace", "replace_in"):  # the target's name ends with SUFFIX / its path holds it
        suffix, n = args[0], int(args[1])
        real, count = os.replace, [0]

        def hit(dst) -> bool:
            return str(dst).endswith(suffix) if kind == "replace" else suffix in str(dst)

        def replace(src, dst, *a, **k):
            if hit(dst):
                count[0] += 1
                if count[0] == n:
                    size = os.path.getsize(src)
                    with open(src, "r+b") as f:
                        f.truncate(size // 2)
                    pause_here(flag)
            return real(src, dst, *a, **k)

        os.replace = replace
    else:
        raise SystemExit(f"unknown pause {pause!r}")


def digest(paths) -> str:
    h = hashlib.sha1()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def main(data_root: str, out_dir: str, pause: str, flag: str) -> None:
    torch.set_num_threads(1)
    from wsss_core import profiles
    from wsss_core.stages import cam

    data = profiles.prepare_data("smoke", data_root, progress=False)
    cfg = profiles.cam_config("smoke")
    cfg = cfg.replace(train=cfg.train.replace(progress=False))
    install(pause, flag)
    res = cam.run(cfg, data, out_dir, progress=False)
    sd = res.model.state_dict()
    w = hashlib.sha1(b"".join(sd[k].detach().cpu().numpy().tobytes() for k in sorted(sd))).hexdigest()[:16]
    rep = res.report
    metrics = {"cls_map": res.val_map, "cam_miou": rep["miou"], "cam_best_threshold": rep["best_threshold"],
               "cam_fg_precision": rep["fg_precision"], "cam_fg_recall": rep["fg_recall"], "cam_sweep": rep["sweep"],
               "weights_sha1": w, "cams_sha1": digest(res.cam_dir.glob("*.npz")),
               "labels_sha1": digest(res.label_dir.glob("*.png"))}
    cam.write_metrics(Path(out_dir) / "metrics.json", metrics)


if __name__ == "__main__":
    main(*sys.argv[1:5])
