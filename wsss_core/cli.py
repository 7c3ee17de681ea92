"""``wsss`` — every stage from the command line, for people who do not want notebooks.

    wsss data toy --profile tutorial --out data/toy/tutorial   # generate the toy scenes
    wsss data validate data/toy/tutorial --split train         # check a VOC-layout tree, list bad files
    wsss data fetch --list                                     # real datasets it can download (VOC, SBD)
    wsss data fetch voc2012 sbd                                # → data/VOCdevkit/VOC2012 (+ train_aug)
    wsss cam --profile tutorial --out runs/cli/cam             # train classifier, CAMs, pseudo-labels, metrics
    wsss run eps --profile smoke --out runs/smoke              # any stage, its inputs run or reused first
    wsss run segmentation --labels affinity_rw --profile tutorial --out runs/tutorial
    wsss segment --profile tutorial --labels runs/cli/cam/pseudo_labels --out runs/cli/seg_cam
                                                               # DeepLab on a pseudo-label folder, val mIoU
    wsss segment --profile tutorial --out runs/cli/seg_full    # the fully supervised upper bound
    wsss notebooks --profile smoke --out runs/smoke            # = python -m wsss_core.notebooks
    wsss status runs/smoke --profile smoke                     # what is there, complete or not, what a rerun redoes

The presets are the ones the notebooks use (:mod:`wsss_core.profiles`), so the CLI reproduces a
notebook's numbers. Under ``torchrun --nproc_per_node N -m wsss_core.cli cam ...`` training runs
with DistributedDataParallel (CAM inference and evaluation run on rank 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _cmd_data(a) -> int:
    if a.what == "toy":
        from .data.toyscenes import main as toy_main

        argv = ["--out", a.out or f"data/toy/{a.profile}", "--profile", a.profile]
        if a.force:
            argv.append("--force")
        return toy_main(argv)
    if a.what == "fetch":
        from .data import fetch as F
        from .profiles import default_data_dir

        if a.list or not a.names:
            print(F.describe())
            return 0 if a.list else 2
        data = Path(a.data_root) if a.data_root else default_data_dir()
        try:
            for name in a.names:
                F.fetch(name, data, trust_unknown=a.trust_unknown_checksum)
        except F.FetchError as e:
            print(f"wsss data fetch: {e}", file=sys.stderr)
            return 1
        return 0
    from .data.palette import DatasetError
    from .data.voc import VOCLayoutDataset

    try:
        ds = VOCLayoutDataset(a.root, a.split)
        n = ds.validate(progress=True)
    except DatasetError as e:  # names every bad file, one line each: no traceback
        print(f"wsss data validate: {e}", file=sys.stderr)
        return 1
    print(f"{ds.root}: {n} items of split {a.split!r} read without error "
          f"({ds.num_classes} classes: {', '.join(ds.class_names[1:])})")
    return 0


def _device_ok(cmd: str, device: str) -> bool:
    """Check ``--device`` before any data is prepared or folder made: False (and one line on stderr) if
    the device does not exist here, e.g. ``--device cuda`` on a machine without a GPU."""
    from .engine import select_device

    try:
        select_device(device)
    except RuntimeError as e:
        print(f"wsss {cmd}: --device {device}: {e}", file=sys.stderr)
        return False
    return True


def _cmd_cam(a) -> int:
    """The CAM stage (:func:`wsss_core.stages.cam.run`) into ``--out``: the same call notebook 01 and
    ``wsss run cam`` make, so a rerun reuses the classifier, the CAMs and the labels."""
    from . import engine, profiles
    from .stages import cam as S
    from .stages import pipeline

    if not _device_ok("cam", a.device):
        return 2
    data = profiles.prepare_data(a.profile, a.data_root)
    cfg = pipeline.Run(a.profile, a.out, data=data, seed=a.seed, device=a.device).cfg("cam")
    if a.epochs is not None:
        cfg = cfg.replace(train=cfg.train.replace(epochs=a.epochs))
    t0 = time.perf_counter()
    res = S.run(cfg, data, Path(a.out))
    if not engine.get_dist_info().is_main:
        engine.cleanup_distributed()
        return 0
    metrics = pipeline.STAGES["cam"].metrics(res, None)
    metrics["cam_sweep"] = res.report["sweep"]
    if data.kind == "voc" and data.train_split != "train":
        # the papers score CAMs on VOC's train (1 464 images), a subset of train_aug: same CAM files
        rep = S.evaluate_cams(res.cam_dir, S.evaluation_dataset(data.root, "train", cfg), cfg, data.context_pairs)
        metrics[f"cam_miou_{data.train_split}"] = metrics["cam_miou"]
        metrics.update(cam_miou=rep["miou"], cam_fg_precision=rep["fg_precision"], cam_fg_recall=rep["fg_recall"])
    metrics.update(seconds=time.perf_counter() - t0, classifier=res.checkpoint_dir.name)
    S.write_metrics(Path(a.out) / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2, default=float))
    engine.cleanup_distributed()
    return 0


def _cmd_run(a) -> int:
    """One stage through the stage contract, its inputs run or reused first (:mod:`wsss_core.stages.pipeline`)."""
    import datetime

    from . import engine
    from .atomic import atomic_write_json
    from .stages import pipeline

    if not _device_ok("run", a.device):
        return 2
    run = pipeline.Run(a.profile, a.out, data_root=a.data_root, seed=a.seed, device=a.device,
                       labels_from=a.labels, count_files=True)
    try:
        res = run.result(a.stage)
    except pipeline.MethodUnavailable as e:
        print(f"wsss run {a.stage}: {e}", file=sys.stderr)
        return 1
    if not engine.get_dist_info().is_main:
        engine.cleanup_distributed()
        return 0
    st = pipeline.STAGES[a.stage]
    metrics = st.metrics(res, run)
    for e in run.log:
        what = "reused" if e["files_written"] == 0 else f"made or updated ({e['files_written']} files written)"
        print(f"[{e['stage']}] {what} in {e['seconds']:.1f} s — {e['folder']}")
    name = a.stage if a.stage != "segmentation" else f"segmentation_{a.labels}"
    path = run.out_dir(a.stage) / f"stage_{name}.json"
    atomic_write_json(path, {"stage": a.stage, "profile": a.profile, "seed": a.seed, "labels": a.labels if a.stage == "segmentation" else None,
                             "made_on": datetime.datetime.now().isoformat(timespec="seconds"), "metrics": metrics,
                             "stages": run.log}, default=float)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2, default=float))
    print(f"→ {path}")
    engine.cleanup_distributed()
    return 0


def _cmd_segment(a) -> int:
    from . import engine, profiles
    from .stages import cam as S
    from .stages import segmentation as SEG

    if not _device_ok("segment", a.device):
        return 2
    data = profiles.prepare_data(a.profile, a.data_root)
    cfg = SEG.config_for_profile(a.profile)
    over = {"seed": a.seed, "device": a.device}
    if a.epochs is not None:
        over["epochs"] = a.epochs
    cfg = cfg.replace(train=cfg.train.replace(**over))
    res = SEG.run(cfg, data, a.labels, a.out)
    if engine.get_dist_info().is_main:
        metrics = {"seg_miou": res.report["miou"], "seg_fg_precision": res.report["fg_precision"],
                   "seg_fg_recall": res.report["fg_recall"], "train_seconds": res.train_seconds,
                   "labels": str(a.labels) if a.labels else "true masks", "checkpoint": str(res.checkpoint_dir)}
        S.write_metrics(Path(a.out) / "metrics.json", metrics)
        print(json.dumps(metrics, indent=2, default=float))
    engine.cleanup_distributed()
    return 0


def _cmd_status(a) -> int:
    from .stages import status as ST

    try:
        rows = ST.scan(a.out_dir)
        if a.profile:
            rows = ST.plan(rows, a.profile, a.out_dir, a.data_root, seed=a.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"wsss status: {e}", file=sys.stderr)
        return 2
    print(ST.format_table(rows, a.out_dir, with_rerun=bool(a.profile)) if rows else f"{a.out_dir}: no stage results")
    return 0


def main(argv=None) -> int:
    from .profiles import PROFILE_NAMES

    ap = argparse.ArgumentParser(prog="wsss", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="generate or validate datasets")
    dsub = d.add_subparsers(dest="what", required=True)
    t = dsub.add_parser("toy", help="generate the toy scenes (VOC layout)")
    t.add_argument("--profile", default="tutorial", choices=["smoke", "tutorial"])
    t.add_argument("--out")
    t.add_argument("--force", action="store_true")
    v = dsub.add_parser("validate", help="read every item of a VOC-layout split, report all bad files")
    v.add_argument("root")
    v.add_argument("--split", default="train")
    f = dsub.add_parser("fetch", help="download a real dataset (checksummed, resumable) into data/ in VOC layout",
                        description="Download, check and extract a real dataset (see wsss_core/data/fetch.py and "
                                    "data/README.md). Archives go to <data>/downloads/; a file put there by hand "
                                    "with the right checksum is used; an interrupted download resumes.")
    f.add_argument("names", nargs="*", metavar="NAME", help="dataset names (see --list), fetched in order")
    f.add_argument("--list", action="store_true", help="name the datasets it knows, their URLs and checksums")
    f.add_argument("--data-root", help="data folder (default: $WSSS_DATA or the checkout's data/)")
    f.add_argument("--trust-unknown-checksum", action="store_true",
                   help="extract an archive whose checksum is not published (its computed SHA-256 is printed)")
    d.set_defaults(fn=_cmd_data)

    c = sub.add_parser("cam", help="the CAM stage: classifier, CAMs, pseudo-labels, metrics")
    c.add_argument("--profile", default="tutorial", choices=PROFILE_NAMES)
    c.add_argument("--out", required=True)
    c.add_argument("--data-root")
    c.add_argument("--epochs", type=int)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    c.set_defaults(fn=_cmd_cam)

    from .stages.pipeline import LABEL_SOURCES, STAGES

    r = sub.add_parser("run", help="one stage, its upstream stages run or reused: " + ", ".join(STAGES),
                       description="Run one stage through the stage contract (wsss_core/stages/pipeline.py): its "
                                   "inputs are run first or reused from OUT/<notebook>/ (the folders the notebooks "
                                   "use), then the stage; prints what each stage did and writes "
                                   "OUT/<notebook>/stage_<stage>.json. Stages: " +
                                   "; ".join(f"{k}: {v.summary}" for k, v in STAGES.items()))
    r.add_argument("stage", choices=list(STAGES))
    r.add_argument("--profile", default="tutorial", choices=PROFILE_NAMES)
    r.add_argument("--out", required=True, help="the run folder (the notebooks' OUT_DIR, e.g. runs/tutorial)")
    r.add_argument("--data-root")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("--labels", default="full", choices=list(LABEL_SOURCES),
                   help="segmentation only: whose pseudo-labels to train on (default: the true masks)")
    r.set_defaults(fn=_cmd_run)

    g = sub.add_parser("segment", help="train DeepLab on a pseudo-label folder (or the true masks), val mIoU")
    g.add_argument("--profile", default="tutorial", choices=PROFILE_NAMES)
    g.add_argument("--labels", help="folder of <id>.png pseudo-labels for the training split (default: true masks)")
    g.add_argument("--out", required=True)
    g.add_argument("--data-root")
    g.add_argument("--epochs", type=int)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g.set_defaults(fn=_cmd_segment)

    s = sub.add_parser("status", help="the stage results under a run folder: identity, complete or partial, "
                                      "and with --profile what a rerun would recompute and why")
    s.add_argument("out_dir", help="a run folder (OUT_DIR of the notebooks, or --out of wsss cam)")
    s.add_argument("--profile", choices=PROFILE_NAMES, help="compare with the checkpoints this profile would use")
    s.add_argument("--data-root", help="the profile's data folder (default: where the notebooks put it)")
    s.add_argument("--seed", type=int, default=0, help="the notebooks' SEED (default 0)")
    s.set_defaults(fn=_cmd_status)

    n = sub.add_parser("notebooks", help="run the notebooks with papermill (see python -m wsss_core.notebooks -h)",
                       add_help=False)
    n.set_defaults(fn=None)

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "notebooks":
        from .notebooks import main as nb_main

        return nb_main(argv[1:])
    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    raise SystemExit(main())
