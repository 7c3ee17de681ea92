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
# # 01 · study: CAMs across seeds and scales, and where the context leak comes from
#
# The experiments behind lesson 01's claims (`notebooks/01_class_activation_maps`), run with
# `PROFILE = "study"` (the tutorial's scenes and presets; `make study`), or `smoke` for CI:
#
# * **S1 Seeds** — the lesson's figures (CAM mIoU, badge vs body recall, context vs background leak)
#   are not one lucky classifier: the same stage trained with other seeds.
# * **S2 Scales** — the tutorial makes CAMs at scale 1 + flip; PSA and IRN use scales 1, 0.5, 1.5, 2.
#   What do the papers' scales buy on 96-px scenes, and what do they cost?
# * **S3 Far and near context** — the lesson shows the boat CAM on water. Is that the blur of the coarse
#   feature grid around the boat, or has water itself become evidence for "boat"? The class CAM on water
#   *far* from every object vs on ordinary background equally far, in the same images.
# * **S4 The threshold pushed too far** — one image at extreme thresholds and α.
#
# Each section reuses what is already in `OUT_DIR` (the lesson's classifier and CAMs for the lesson's
# seed) and trains or computes the rest; everything is idempotent.

# %% tags=["parameters"]
PROFILE = "study"           # "study" (the tutorial scenes; ≈ 5 min on 2 CPU cores) | "smoke" (CI, seconds)
DATA_ROOT = None            # None: the profile's toy scenes
DEVICE = "auto"
SEED = 0                    # the lesson's seed: its classifier and CAMs are reused from OUT_DIR
OUT_DIR = "../../runs/study"
SEEDS = (0, 1, 2)           # S1: training seeds (smoke runs the first two)
SCALES = (1.0, 0.5, 1.5, 2.0)   # S2: the papers' CAM scales (smoke: the first two)
FAR = 12                    # S3: px from every object that count as "far" (1.5 cells of the stride-8 grid)

# %%
import json
import numpy as np
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from wsss_core import cams as wcams, lesson, profiles, viz
from wsss_core.metrics import ConfusionMatrix
from wsss_core.stages import cam as stage

L = lesson.setup("01_class_activation_maps_study", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
cfg = profiles.cam_config(PROFILE)
cfg = cfg.replace(train=L.train(cfg.train))
LESSON_OUT = L.out_root / stage.NOTEBOOK                # the lesson's folder: its classifier and CAMs (seed SEED)
seeds = list(SEEDS[:2] if PROFILE == "smoke" else SEEDS)
metrics = {}


def f3(v):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


# %% [markdown]
# ## S1 Seeds
#
# `stage.run` trains (or reloads) the classifier, makes (or reuses) its CAMs, sweeps the background
# threshold and scores the pseudo-labels at the best one — exactly the lesson's pipeline. The lesson's
# seed is reused from its folder; the others live under this notebook's folder.

# %%
runs = {}
for s in seeds:
    cfg_s = cfg.replace(train=cfg.train.replace(seed=int(s)))
    runs[s] = stage.run(cfg_s, L.data, LESSON_OUT if s == SEED else L.out / f"seed{s}", progress=False)
rows = []
for s, res in runs.items():
    r = res.report
    rows.append(f"| {s} | {res.val_map:.3f} | {r['miou']:.3f} | {r['best_threshold']:g} | {f3(r.get('part_recall'))} / "
                f"{f3(r.get('body_recall'))} | {f3(r.get('context_leak'))} / {f3(r.get('background_leak'))} |")
display(Markdown("| seed | val mAP | CAM mIoU (θ*) | θ* | part / body recall | context / background leak |\n"
                 "|---|---:|---:|---:|---|---|\n" + "\n".join(rows)))


def spread(key):
    v = [res.val_map if key == "cls_map" else res.report.get(key) for res in runs.values()]
    v = [x for x in v if x is not None and not np.isnan(x)]
    return (min(v), max(v)) if v else (None, None)


for key in ("cls_map", "miou", "part_recall", "body_recall", "context_leak", "background_leak"):
    name = key if key == "cls_map" else f"cam_{key}"
    metrics[f"seeds_{name}_min"], metrics[f"seeds_{name}_max"] = spread(key)
metrics["seeds"] = seeds
ratio = [res.report["context_leak"] / max(res.report["background_leak"], 1e-9) for res in runs.values() if "context_leak" in res.report]
print(f"{len(seeds)} seeds: CAM mIoU {f3(metrics['seeds_cam_miou_min'])}–{f3(metrics['seeds_cam_miou_max'])}, body recall "
      f"{f3(metrics['seeds_cam_body_recall_min'])}–{f3(metrics['seeds_cam_body_recall_max'])}, context leak "
      + (f"{min(ratio):.0f}–{max(ratio):.0f}× the background leak" if ratio else "–"))

# %% [markdown]
# ## S2 Scales
#
# The classifier of the lesson's seed, CAMs at the papers' four scales (each with its flip) into a
# folder of their own, scored with the same sweep as the lesson's scale-1 CAMs.

# %%
base = runs[SEED] if SEED in runs else runs[seeds[0]]
cfg_ms = base.cfg.replace(cam_scales=tuple(float(s) for s in (SCALES[:2] if PROFILE == "smoke" else SCALES)))
ms_dir = L.out / "cams_multiscale"
ms_seconds, _ = stage.ensure_cams(base.model, base.train_dataset, ms_dir, cfg_ms, base.checkpoint_dir.name, progress=False)
ms_report = stage.evaluate_cams(ms_dir, base.train_dataset, cfg_ms, L.data.context_pairs)
one_seconds = float(json.loads((base.cam_dir / "source.json").read_text())["seconds"])
table = {f"scales {base.cfg.cam_scales} + flip": (base.report, one_seconds), f"scales {cfg_ms.cam_scales} + flip": (ms_report, ms_seconds)}
display(Markdown("| CAMs | mIoU (θ*) | θ* | part / body recall | context leak | seconds |\n|---|---:|---:|---|---:|---:|\n" + "\n".join(
    f"| {k} | {r['miou']:.3f} | {r['best_threshold']:g} | {f3(r.get('part_recall'))} / {f3(r.get('body_recall'))} | "
    f"{f3(r.get('context_leak'))} | {t:.1f} |" for k, (r, t) in table.items())))
fig = Figure(figsize=(5, 2.8), layout="constrained")
ax = fig.add_subplot()
for k, (r, _) in table.items():
    viz.plot_sweep(r["sweep"], ax=ax, label=k)
ax.set_title("CAM pseudo-label mIoU vs background threshold")
display(fig)
metrics.update(cam_miou_scale1=base.report["miou"], cam_miou_multiscale=ms_report["miou"],
               cam_body_recall_multiscale=ms_report.get("body_recall"), cam_seconds_scale1=one_seconds,
               cam_seconds_multiscale=ms_seconds)

# %% [markdown]
# Small scenes, a stride-8 grid: downscaling by 0.5 leaves a 6 × 6 feature map, whose blobs are coarser
# still, and upscaling does not add detail the badge-detector needs. Hence the tutorial's scale 1.
#
# ## S3 Far and near context
#
# In the images labelled with the class that contain its context: the class CAM on the object, on the
# context and on ordinary background (neither object nor any context), each split at `FAR` pixels from
# every object (`stage.context_activation`). Far away, the CAM cannot be the grid's blur around the
# object; a higher CAM on far water than on far ordinary background means water alone raises the boat
# score.

# %%
CAM_DIR, BEST, ev = base.cam_dir, base.report["best_threshold"], base.train_dataset
co = stage.context_activation(CAM_DIR, ev, L.data.context_pairs, far_px=FAR)


def share(v, t):
    return float((v > t).mean()) if v.size else float("nan")


def mean(v):
    return float(v.mean()) if v.size else float("nan")


lines = [f"| pair (images) | region | pixels | mean CAM | share > θ* = {BEST:g} | share > θ = {cfg.eval_threshold:g} |",
         "|---|---|---:|---:|---:|---:|"]
for pair, st in co.items():
    for r, v in st["values"].items():
        lines.append(f"| {pair} ({st['images']}) | {r} | {v.size} | {f3(mean(v))} | {f3(share(v, BEST))} | "
                     f"{f3(share(v, cfg.eval_threshold))} |")
display(Markdown("\n".join(lines)))
metrics["cam_far_context_activation"] = {p: mean(st["values"]["context, far"]) for p, st in co.items()}
metrics["cam_far_background_activation"] = {p: mean(st["values"]["ordinary bg, far"]) for p, st in co.items()}
for pair, st in co.items():
    cf, bf = mean(st["values"]["context, far"]), mean(st["values"]["ordinary bg, far"])
    print(f"{pair}: far from objects the class CAM averages {cf:.3f} on {pair.split('/')[1]} vs {bf:.3f} on ordinary "
          f"background ({cf / max(bf, 1e-9):.1f}×)")

# %% [markdown]
# Can a threshold separate the context from the object? The share of each region's pixels whose class CAM
# exceeds $\theta$ (solid: near, dashed: far), and the image with the most CAM mass on far context.

# %%
STYLE = {"object": ("tab:green", "-"), "context, near": ("tab:purple", "-"), "context, far": ("tab:purple", "--"),
         "ordinary bg, near": ("tab:gray", "-"), "ordinary bg, far": ("tab:gray", "--")}
TH = np.asarray(cfg.thresholds, np.float32)
if co:
    fig = Figure(figsize=(4.4 * len(co), 2.8), layout="constrained")
    for ax, (pair, st) in zip(np.atleast_1d(fig.subplots(1, len(co))), co.items()):
        for r, v in st["values"].items():
            if v.size:
                ax.plot(TH, [share(v, t) for t in TH], STYLE[r][1], color=STYLE[r][0], marker="o", ms=2.5,
                        label=r.replace("object", f"{pair.split('/')[0]} pixels").replace("context", pair.split("/")[1]))
        ax.axvline(BEST, color="k", lw=0.8)
        ax.set(xlabel="background threshold θ", ylabel="share with class CAM > θ", title=pair, ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(L.out / "co_occurrence_threshold.png")
    display(fig)
    rows, titles = [], []
    for pair, st in co.items():
        if st["example"] is None:
            continue
        (c, k), raw = L.data.context_pairs[pair], ev.get_raw(st["example"])
        M_i, lab_i = wcams.load_cams(CAM_DIR / f"{raw['id']}.npz")
        ctx = raw["context_mask"] == k
        rows.append([viz.outline(viz.overlay(raw["image"], raw["mask"]), ctx), viz.outline(viz.heatmap(raw["image"], M_i[c - 1]), ctx),
                     viz.outline(viz.heatmap(raw["image"], np.clip(M_i[c - 1] / 0.3, 0, 1)), ctx)]
                    + [viz.outline(viz.overlay(raw["image"], wcams.cams_to_labels(M_i, lab_i, threshold=t)), ctx) for t in (BEST, cfg.eval_threshold)])
        titles.append([f"{raw['id']}: {pair}", "CAM (0–1)", "CAM (0–0.3)", f"pseudo-label θ* = {BEST:g}", f"θ = {cfg.eval_threshold:g}"])
    if rows:
        fig = viz.image_grid(rows, titles=titles, size=2.1)
        fig.savefig(L.out / "co_occurrence_far.png")
        display(fig)
else:
    print("no context regions in this data set: skipped")

# %% [markdown]
# Reading it: the far rows say whether the classifier has *learned* the context as evidence; near the
# object the CAM's blob spills onto water and ordinary background alike. Raising $\theta$ removes context
# pixels and the object's own pixels (green) together: no threshold removes the context alone.
#
# ## S4 The threshold pushed too far
#
# One image at four constant thresholds (top) and four values of α (bottom). Too low a threshold (too
# large an α) and the blob grows over the background; too high and objects shrink to their badges.

# %%
EX = next((i for i in range(min(len(ev), 50)) if ev.get_raw(i)["label"].sum() >= 2), 0)
raw = ev.get_raw(EX)
M_i, lab_i = wcams.load_cams(CAM_DIR / f"{raw['id']}.npz")


def cell(pl):
    cm = ConfusionMatrix(ev.num_classes + 1).update(pl, raw["mask"])
    return viz.overlay(raw["image"], pl), f"P {cm.fg_precision():.2f} R {cm.fg_recall():.2f}"


row_t = [(t, *cell(wcams.cams_to_labels(M_i, lab_i, threshold=t))) for t in (0.05, BEST, 0.5, 0.8)]
row_a = [(a, *cell(wcams.cams_to_labels(M_i, lab_i, alpha=a))) for a in (64.0, 16.0, 4.0, 1.0)]
fig = viz.image_grid([[viz.overlay(raw["image"], raw["mask"])] + [c for _, c, _ in row_t], [raw["image"]] + [c for _, c, _ in row_a]],
                     titles=[["true mask"] + [f"θ = {t:g}\n{s}" for t, _, s in row_t],
                             [raw["id"]] + [f"α = {a:g} (θ {wcams.alpha_to_threshold(a):.2f})\n{s}" for a, _, s in row_a]], size=1.9)
fig.savefig(L.out / "threshold_extremes.png")
display(fig)

# %%
print(f"written: {L.rel(lesson.finish(L, metrics))}")
