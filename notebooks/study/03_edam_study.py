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
# # 03 · study: EDAM without its cross-image attention, and the saliency threshold
#
# The experiments behind lesson 03's claims (`notebooks/03_edam`), run with `PROFILE = "study"` (the
# tutorial's scenes and EDAM preset; `make study`), or `smoke` for CI:
#
# * **S1 The ablation** — the lesson finds that EDAM's masks do not cover more of each object than CAMs
#   at equal precision. Is it the DA layer or the collaborative multi-attention (CMA)? The same network,
#   pairs, initialisation and training without the transformer (`use_cma=False`: the class-specific
#   features go straight to the average pooling), scored like EDAM, with recall at equal precision.
# * **S2 The saliency threshold pushed too far** — the override with $\vartheta$ from 0.05 to 2.4.
#
# EDAM itself is the lesson's (same profile and `OUT_DIR`: `stage.run` reuses it) or made here.

# %% tags=["parameters"]
PROFILE = "study"           # "study" (the tutorial scenes; ≈ 4 min on 2 CPU cores) | "smoke" (CI, seconds)
DATA_ROOT = None            # None: the profile's toy scenes
DEVICE = "auto"
SEED = 0
OUT_DIR = "../../runs/study"
THETAS = (0.05, 0.2, 0.5, 1.0, 1.5, 2.0, 2.4)   # S2: saliency thresholds ϑ (background where the 0–255 saliency ≤ 100·ϑ)

# %%
import math, numpy as np
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from wsss_core import lesson, profiles
from wsss_core.cams import load_cams
from wsss_core.metrics import ConfusionMatrix
from wsss_core.stages import cam as cam_stage, edam as stage

L = lesson.setup("03_edam_study", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
cam_cfg = profiles.cam_config(PROFILE)
cam = cam_stage.run(cam_cfg.replace(train=L.train(cam_cfg.train)), L.data, L.out_root / cam_stage.NOTEBOOK, progress=False)
cfg = stage.config_for_profile(PROFILE)
cfg = cfg.replace(train=L.train(cfg.train))
edam = stage.run(cfg, L.data, L.out_root / stage.NOTEBOOK, cam_result=cam, progress=False)          # the lesson's EDAM
eval_ds, C = cam.train_dataset, cam.train_dataset.num_classes
print(f"EDAM ({L.rel(edam.checkpoint_dir)}): mIoU {edam.report['miou']:.3f} at θ* = {edam.report['best_threshold']:g}; "
      f"CAM {cam.report['miou']:.3f}")
metrics = {"edam_miou": edam.report["miou"], "cam_miou": cam.report["miou"]}


def f3(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# %% [markdown]
# ## S1 The ablation: EDAM without the collaborative multi-attention
#
# Trained into this notebook's folder (`stage.run(..., tag="_no_cma")`), then all three maps on one
# footing: each at its best threshold, and each precision–recall curve read at the CAM's precision.

# %%
cfg_nc = cfg.replace(use_cma=False)
nc = stage.run(cfg_nc, L.data, L.out, cam_result=cam, progress=False, tag="_no_cma")
acc_nc = stage.pair_accuracy(nc.model, stage.pair_dataset(L.data.root, L.data.val_split, cfg_nc, train=False), max_pairs=256)
TH_FINE = np.round(np.concatenate([np.arange(0.02, 0.96, 0.02), [0.96, 0.97, 0.98, 0.985, 0.99, 0.995]]), 3)
maps = {"CAM (notebook 01)": (cam.cam_dir, cam.report), "EDAM": (edam.mask_dir, edam.report), "EDAM without CMA": (nc.mask_dir, nc.report)}
curves = {n: stage.sweep_curves(d, eval_ds, TH_FINE) for n, (d, _) in maps.items()}
P_REF = cam.report["fg_precision"]
P_OTHER = (round(P_REF - 0.1, 2), round(P_REF + 0.1, 2))
med = stage.map_medians({n: d for n, (d, _) in maps.items()}, eval_ds)
display(Markdown(
    f"| maps | θ* | mIoU | body recall | context leak | median on background | body recall at P = {P_REF:.3f} | at P = {P_OTHER[0]:g} | "
    f"at P = {P_OTHER[1]:g} |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(
        f"| {n} | {r['best_threshold']:g} | {r['miou']:.3f} | {f3(r.get('body_recall'))} | {f3(r.get('context_leak'))} | {med[n][1]:.2f} | "
        + " | ".join(f3(stage.recall_at_precision(curves[n], p, "body_recall")) for p in (P_REF,) + P_OTHER) + " |"
        for n, (_, r) in maps.items())))
fig = Figure(figsize=(5.5, 3.3), layout="constrained")
ax = fig.subplots()
for (name, cv), col in zip(curves.items(), ["tab:blue", "tab:red", "tab:orange"]):
    ax.plot(cv["fg_precision"], cv["body_recall"], "-", color=col, label=name)
ax.axvline(P_REF, color="k", lw=0.8, ls=":")
ax.set(xlabel="foreground precision", ylabel="body recall", title="body recall vs precision (dotted: CAM's at θ*)", xlim=(0, 1.02), ylim=(0, 1.02))
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.savefig(L.out / "ablation_precision_recall.png")
display(fig)
print(f"EDAM without CMA: validation pair accuracy {acc_nc['acc']:.3f}")
metrics.update(edam_no_cma_miou=nc.report["miou"], edam_no_cma_best_threshold=nc.report["best_threshold"],
               edam_no_cma_fg_recall=nc.report["fg_recall"], edam_no_cma_body_recall=nc.report.get("body_recall"),
               edam_no_cma_context_leak=nc.report.get("context_leak"), precision_ref=P_REF,
               edam_no_cma_body_recall_at_precision=stage.recall_at_precision(curves["EDAM without CMA"], P_REF, "body_recall"),
               edam_body_recall_at_precision=stage.recall_at_precision(curves["EDAM"], P_REF, "body_recall"),
               cam_body_recall_at_precision=stage.recall_at_precision(curves["CAM (notebook 01)"], P_REF, "body_recall"),
               edam_no_cma_val_pair_accuracy=acc_nc["acc"])

# %% [markdown]
# The curves cross: compare them over the whole precision range before reading one operating point as
# a verdict. If the DA layer alone recalls as many body pixels as EDAM at the CAM's precision, the
# cross-image attention adds nothing on these scenes, as the lesson's §10 argues it cannot.
#
# ## S2 The saliency threshold pushed too far
#
# The official $\vartheta = 0.2$ (saliency ≤ 20 of 255 is background) trusts every faint response of
# the detector. Raising it removes the blur around objects and weak distractors, until it cuts the
# objects themselves.

# %%
if stage.has_saliency(L.data.root, cfg):
    sal_ds = stage.saliency_dataset(L.data.root, L.data.train_split, cfg, mask_dir=L.data.mask_dir)
    cms = {th: ConfusionMatrix(C + 1) for th in THETAS}
    for i in range(len(eval_ds)):
        raw = sal_ds.get_raw(i)
        Me, lab_i = load_cams(edam.mask_dir / f"{raw['id']}.npz")
        for th in THETAS:
            cms[th].update(stage.saliency_override(Me, lab_i, raw["saliency"], th, cfg.sal_alpha, cfg.sal_beta), raw["mask"])
    sweep = {th: (cm.miou(), cm.fg_precision(), cm.fg_recall()) for th, cm in cms.items()}
    fig = Figure(figsize=(5.5, 3.0), layout="constrained")
    ax = fig.subplots()
    for j, (name, col) in enumerate([("mIoU", "k"), ("fg precision", "tab:blue"), ("fg recall", "tab:orange")]):
        ax.plot([100 * t for t in THETAS], [sweep[t][j] for t in THETAS], "-o", ms=3, color=col, label=name)
    ax.axvline(100 * cfg.sal_theta, color="0.5", ls=":", lw=1)
    ax.set(xlabel="saliency threshold 100·ϑ (of 255)", title="EDAM + saliency override vs ϑ (dotted: official)", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(L.out / "saliency_threshold.png")
    display(fig)
    best = max(sweep, key=lambda t: sweep[t][0])
    print(f"ϑ = {cfg.sal_theta:g}: mIoU {sweep.get(cfg.sal_theta, (math.nan,))[0]:.3f}; best ϑ = {best:g}: {sweep[best][0]:.3f}; "
          f"ϑ = {THETAS[-1]:g}: {sweep[THETAS[-1]][0]:.3f} (recall {sweep[THETAS[-1]][2]:.3f})")
    metrics.update(sal_theta_sweep_miou={str(t): v[0] for t, v in sweep.items()}, sal_theta_best=best, sal_theta_best_miou=sweep[best][0])
else:
    print(f"no {cfg.saliency_dir}/ under {L.rel(L.data.root)}: S2 skipped")

# %%
print(f"written: {L.rel(lesson.finish(L, metrics))}")
