# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 study · EPS: how much it leans on the saliency detector
#
# The experiments behind lesson 05's claims, too long for a lab session:
#
# 1. **The saliency sources and their quality** — the detector stand-in (`Saliency/`) against OpenCV's
#    unsupervised spectral residual (`SaliencyUnsupervised/`): MAE, F-measure, and how salient each kind
#    of region is (badges, bodies, water, rails), i.e. what the saliency loss teaches about it.
# 2. **EPS with a poor detector** — the lesson's claim that "a poor detector undoes the gain": the same
#    EPS trained with the unsupervised maps (keys `eps_unsupervised_saliency_*`, cited by the lesson).
# 3. **The saliency errors in full** — missed objects, salient distractors, the blurred outline.
# 4. **A second seed** — does "EPS raises mIoU over CAM and lowers both confusion ratios" hold for
#    another seed of both classifiers?
#
# Run it after the lesson with the same `OUT_DIR` (`make study` does): the lesson's EPS classifier and
# the CAM baseline are reused. Every training here is idempotent too.

# %% tags=["parameters"]
PROFILE = "study"           # "study" (tutorial scenes, the lesson's settings) | "smoke" (CI, seconds)
DATA_ROOT = None            # None: the profile's default data folder
DEVICE = "auto"             # "auto" | "cpu" | "cuda" | "mps"
SEED = 0                    # the lesson's seed (its classifiers are reused)
OUT_DIR = "../../runs/study"
USE_SOLUTIONS = False       # (no exercises here; the runner passes it to every notebook)
SECOND_SEED = 1             # another seed for CAM and EPS (None: skip section 4)
UNSUPERVISED = "SaliencyUnsupervised"   # the poor detector's folder

# %%
import numpy as np
from IPython.display import Markdown, display
from wsss_core import lesson, profiles, saliency, viz
from wsss_core.stages import eps as stage

L = lesson.setup("05_eps_saliency_study", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
cfg = stage.config_for_profile(PROFILE)
cfg = cfg.replace(train=L.train(cfg.train))
ev = stage.evaluation_dataset(L.data.root, L.data.train_split, cfg, mask_dir=L.data.mask_dir, saliency_dir=cfg.saliency_dir)
PAIRS, NAMES = L.data.context_pairs or {}, ev.class_names

# %%
cam01 = profiles.cam_config(PROFILE)
base = stage.run_cam_baseline(cfg, L.data, OUT_DIR, notebook_01_cfg=cam01.replace(train=L.train(cam01.train, cfg.train.epochs)))
res = stage.run(cfg, L.data, L.out_root / stage.NOTEBOOK)     # the lesson's EPS (reused when the lesson ran)
cam_rep = stage.cached_report(base.result.cam_dir, ev, cfg, PAIRS, L.out / "cam_baseline_report.json")
metrics = {}

# %% [markdown]
# ## 1 The saliency sources and their quality
#
# `saliency.saliency_quality` scores each folder against the true foreground (ignore pixels left out):
# mean absolute error, the maximum and mean F-measure over thresholds ($\beta^2 = 0.3$), and precision /
# recall / IoU of the binary map $S > 0.5$ that EPS's overlap test uses. `saliency.saliency_by_region`
# gives the mean saliency and the share of pixels with $S \ge 0.5$ per kind of region.

# %%
SOURCES = saliency.find_saliency_dirs(L.data.root)
q = {n: saliency.saliency_quality(L.data.root, L.data.train_split, n, mask_dir=L.data.mask_dir) for n in SOURCES}
display(Markdown("| saliency folder | MAE ↓ | max F ↑ | mean F ↑ | precision (S ≥ 0.5) | recall (S ≥ 0.5) | IoU (S ≥ 0.5) |\n"
                 "|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(
    f"| `{n}` | {v['mae']:.3f} | {v['max_f']:.3f} | {v['mean_f']:.3f} | {v['precision_at']:.3f} | {v['recall_at']:.3f} | "
    f"{v['iou_at']:.3f} |" for n, v in q.items())))
regions = {n: saliency.saliency_by_region(L.data.root, L.data.train_split, n, mask_dir=L.data.mask_dir,
                                          context_pairs=PAIRS) for n in SOURCES}
R = list(next(iter(regions.values()))) if regions else []
display(Markdown("| saliency folder | " + " | ".join(R) + " |\n|---|" + "---:|" * len(R) + "\n" + "\n".join(
    f"| `{n}` | " + " | ".join(f"{r[k]['mean']:.2f} ({r[k]['salient']:.0%})" for k in R) + " |" for n, r in regions.items())))
SHOW = sorted(int(i) for i in L.rng.choice(len(ev), size=min(5, len(ev)), replace=False))
grid = [[ev.get_raw(i)["image"] for i in SHOW], [viz.overlay(ev.get_raw(i)["image"], ev.get_raw(i)["mask"]) for i in SHOW]]
for n in SOURCES:
    ds_n = stage.evaluation_dataset(L.data.root, L.data.train_split, None, mask_dir=None, saliency_dir=n, extra_dirs=None)
    grid.append([ds_n.get_raw(i)["saliency"] for i in SHOW])
display(viz.image_grid(grid, row_titles=["image", "true mask", *SOURCES], size=1.7))
metrics.update(saliency_mae=q["Saliency"]["mae"], saliency_max_f=q["Saliency"]["max_f"], saliency_by_region=regions)
if UNSUPERVISED in q:
    metrics.update(saliency_unsupervised_mae=q[UNSUPERVISED]["mae"], saliency_unsupervised_max_f=q[UNSUPERVISED]["max_f"])

# %% [markdown]
# The detector stand-in finds the objects as blurred blobs, misses some and fires on some badge-less
# distractor bodies; it is dark on water and rails. The spectral residual responds to small,
# high-contrast structure: the badges (*part*) light up, the large uniform *bodies* hardly do, and the
# rails' sleepers are brighter on average than the bodies.
#
# ## 2 EPS with a poor detector
#
# The lesson's configuration, trained with the unsupervised maps instead.

# %%
res_u = None
if UNSUPERVISED in SOURCES:
    res_u = stage.run(cfg.replace(saliency_dir=UNSUPERVISED), L.data, L.out / "unsupervised_saliency")
    reps = {"CAM": cam_rep, "EPS (Saliency)": res.report, f"EPS ({UNSUPERVISED})": res_u.report}
    display(Markdown(stage.report_table(reps, PAIRS, fixed=False)))
    i = stage.context_leak_example(base.result.cam_dir, float(cam_rep["best_threshold"]), ev, PAIRS)["index"]
    raw = ev.get_raw(i)
    ds_u = stage.evaluation_dataset(L.data.root, L.data.train_split, None, mask_dir=None, saliency_dir=UNSUPERVISED, extra_dirs=None)
    row = [raw["image"], raw["saliency"], viz.overlay(raw["image"], stage.pseudo_label(res.cam_dir, raw["id"], float(res.report["best_threshold"]))[2]),
           ds_u.get_raw(i)["saliency"], viz.overlay(raw["image"], stage.pseudo_label(res_u.cam_dir, raw["id"], float(res_u.report["best_threshold"]))[2])]
    display(viz.image_grid([row], titles=[[raw["id"], "Saliency/", "EPS trained with it", f"{UNSUPERVISED}/", "EPS trained with it"]], size=2.0))
    metrics.update(eps_unsupervised_saliency_miou=res_u.report["miou"],
                   eps_unsupervised_saliency_confusion_ratio=res_u.report.get("confusion_ratio_pooled"),
                   eps_unsupervised_saliency_confusion_ratio_per_pair=res_u.report.get("confusion_ratio", {}),
                   eps_unsupervised_saliency_val_map=res_u.val_map, eps_unsupervised_train_seconds=res_u.train_seconds)
else:
    print(f"no {UNSUPERVISED}/ folder in {L.rel(L.data.root)}: section skipped")

# %% [markdown]
# Why the poor detector makes EPS *worse* than CAM: the spectral residual marks the badges and leaves
# the bodies dark, so the saliency loss, a squared error at every pixel, pulls the class maps *off* the
# bodies towards the background channel. The classifier still fires on the badges (validation mAP is
# unchanged), but the maps shrink to them (body recall above), and the best background threshold drops
# so low that the coarse maps spill onto context again.
#
# ## 3 The saliency errors in full
#
# What each pseudo-label does where the detector (`Saliency/`, binarised at 0.5) is wrong: **missed**
# object pixels (given their true class ↑ — EPS *corrects* the miss if high), whole objects the detector
# missed (≥ half found ↑), **salient distractors** (labelled as a class ↓ — EPS *inherits* the false alarm
# if higher than CAM) and the detector's **blurred outline** (salient background within 3 px of an object).

# %%
dirs = {"CAM": (base.result.cam_dir, float(cam_rep["best_threshold"])), "EPS": (res.cam_dir, float(res.report["best_threshold"]))}
if res_u is not None:
    dirs[f"EPS ({UNSUPERVISED})"] = (res_u.cam_dir, float(res_u.report["best_threshold"]))
err = stage.saliency_error_study(dirs, ev)
reg = err["regions"]
names = {"missed_recall": f"missed object pixels ({reg['missed']}): labelled with the true class ↑",
         "objects_missed_found": f"objects the detector missed ({reg['objects_missed']}): ≥ half found ↑",
         "false_far_fg": f"salient distractor pixels ({reg['false_far']}): labelled as a class ↓",
         "false_near_fg": f"blurred-outline pixels ({reg['false_near']}): labelled as a class ↓"}
display(Markdown("| saliency error | " + " | ".join(dirs) + " |\n|---|" + "---:|" * len(dirs) + "\n" + "\n".join(
    f"| {t} | " + " | ".join(f"{err[n][k]:.3f}" for n in dirs) + " |" for k, t in names.items())))
metrics["saliency_error_study"] = {k: v for k, v in err.items() if k != "per_image"}

# %% [markdown]
# ## 4 A second seed
#
# CAM and EPS trained again with `SECOND_SEED` (weights and data order), same recipe, their own folders
# (notebook 01's CAMs are not touched).

# %%
if SECOND_SEED is not None:
    s = int(SECOND_SEED)
    cfg_s = cfg.replace(train=cfg.train.replace(seed=s, epochs=1 if PROFILE == "smoke" else cfg.train.epochs))
    base_s = stage.run_cam_baseline(cfg_s, L.data, L.out / f"seed{s}")      # no notebook_01_cfg: never notebook 01's folder
    res_s = stage.run(cfg_s, L.data, L.out / f"seed{s}" / "eps")
    cam_s = stage.cached_report(base_s.result.cam_dir, ev, cfg, PAIRS, L.out / f"seed{s}" / "cam_report.json")
    display(Markdown(stage.report_table({f"CAM, seed {SEED}": cam_rep, f"EPS, seed {SEED}": res.report,
                                         f"CAM, seed {s}": cam_s, f"EPS, seed {s}": res_s.report}, PAIRS, fixed=False)))
    m_s = stage.comparison_metrics(cam_s, res_s.report)
    metrics.update({f"{k}_seed{s}": m_s[k] for k in ("cam_miou", "eps_miou", "cam_confusion_ratio", "eps_confusion_ratio")})
    for p in PAIRS:  # a pair absent from the images (tiny smoke sets) has no ratio: None
        c, e = cam_s["confusion_ratio"][p], res_s.report["confusion_ratio"][p]
        print(f"seed {s}, {p}: confusion ratio CAM {c if c is None else round(c, 3)} → EPS {e if e is None else round(e, 3)}")
    print(f"seed {s}: mIoU CAM {cam_s['miou']:.3f} → EPS {res_s.report['miou']:.3f}")

# %%
lesson.finish(L, metrics)
