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
# # 02 · study: why the CRF, where the walk helps and hurts, and what perfect affinities would give
#
# The experiments behind lesson 02's claims (`notebooks/02_affinitynet_random_walk`), run with
# `PROFILE = "study"` (the tutorial's scenes with the long preset: 30 AffinityNet epochs, batch 16;
# `make study`), or `smoke` for CI:
#
# * **S1 The labels and their pairs** — the lesson says the dense CRF makes the *negative* pairs right:
#   label quality against the truth, the pairs of one position, and the share of each pair set that the
#   true instance map agrees with, with and without the CRF.
# * **S2 Where the walk helps and where it hurts** — object recall by kind (camouflaged, touching,
#   non-convex), the per-image change, the images that gain and lose most.
# * **S3 Is it the affinities?** — the learned affinities as a same-region detector (ROC-AUC, mean
#   affinity per kind of pair) and the same walk with **perfect** affinities, the ceiling of the stage.
# * **S4 The lesson's short schedule** — the lesson trains AffinityNet briefly (its profile's preset);
#   here the long and the short schedule side by side.
#
# Everything is idempotent: the study profile's AffinityNet, labels and walk are the lesson's when the
# lesson ran with the same profile and `OUT_DIR` (`stage.run` reuses them), made here otherwise.

# %% tags=["parameters"]
PROFILE = "study"           # "study" (the tutorial scenes, the long preset; 34 min measured on 2 shared CPU cores) | "smoke" (CI, seconds)
DATA_ROOT = None            # None: the profile's toy scenes
DEVICE = "auto"
SEED = 0
OUT_DIR = "../../runs/study"
N_DIAG = 200                # S1, S3: images of the pair and affinity diagnostics (smoke: 16)
SHORT_PROFILE = "tutorial"  # S4: the preset of the lesson's short schedule (None: skip S4)

# %%
import math, numpy as np, torch
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from wsss_core import affinity as A, cams as wcams, lesson, profiles, viz
from wsss_core.data.palette import read_label_png
from wsss_core.data.voc import VOCLayoutDataset
from wsss_core.evaluation import LabelMapEvaluator
from wsss_core.metrics import ConfusionMatrix
from wsss_core.stages import affinity as stage, cam as cam_stage

L = lesson.setup("02_affinitynet_random_walk_study", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
cam_cfg = profiles.cam_config(PROFILE)
cam = cam_stage.run(cam_cfg.replace(train=L.train(cam_cfg.train)), L.data, L.out_root / cam_stage.NOTEBOOK, progress=False)
cfg = stage.resolve_crf(stage.config_for_profile(PROFILE))
cfg = cfg.replace(train=L.train(cfg.train))
res = stage.run(cfg, L.data, L.out_root / stage.NOTEBOOK, cam_result=cam, progress=False)   # the lesson's stage, same profile
eval_ds, model, NAMES, C, STRIDE = cam.train_dataset, res.model, cam.train_dataset.class_names, cam.train_dataset.num_classes, cfg.feature_stride
gt_ds = VOCLayoutDataset(L.data.root, L.data.train_split, saliency_dir=None, cache=True)      # + instance masks (never trained on)
assert gt_ds.ids == eval_ds.ids
N_DIAG = min(len(eval_ds), int(N_DIAG) if PROFILE != "smoke" else 16)
print(f"{cfg.train.epochs} epochs, CRF {cfg.crf}: CAM α {cfg.rw_alpha:g} mIoU {res.report['cam_alpha']['miou']:.3f} → walk "
      f"{res.report['rw']['miou']:.3f} on {len(eval_ds)} images ({L.rel(res.checkpoint_dir)})")
metrics = {"cam_miou": res.report["cam_alpha"]["miou"], "rw_miou": res.report["rw"]["miou"], "epochs": cfg.train.epochs}


# %%
def load(i):
    raw = eval_ds.get_raw(i)
    return (*wcams.load_cams(cam.cam_dir / f"{raw['id']}.npz"), raw)


def cam_label(i):
    M_i, lab_i, _ = load(i)
    return wcams.cams_to_labels(M_i, lab_i, alpha=cfg.rw_alpha)


def rw_label(i):
    return read_label_png(res.rw_dir / f"{eval_ds.ids[i]}.png").astype(np.int64)


def affinities_of(i):
    return stage.image_affinities(model, eval_ds, i, cfg.rw_radius)


def f3(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# %% [markdown]
# ## S1 The labels and their pairs
#
# Label quality against the true mask (never used for training), then three positions of one image on
# the stride-4 grid with their neighbours within the radius: green = foreground-positive pair, blue =
# background-positive, red = negative, grey = no label (one end neutral).

# %%
q = stage.affinity_label_report(res.label_dir, eval_ds)
display(Markdown(
    "| share of pixels | confident foreground | confident background | neutral |\n|---|---:|---:|---:|\n"
    f"| | {q['share_fg']:.1%} | {q['share_bg']:.1%} | {q['share_neutral']:.1%} |\n\n"
    "| against the true mask | value |\n|---|---:|\n"
    f"| confident foreground that has that class (precision) | {q['fg_precision']:.3f} |\n"
    f"| confident background that is background (precision) | {q['bg_precision']:.3f} |\n"
    f"| true object pixels labelled with their class | {q['fg_coverage']:.3f} |\n"
    + (f"| … of them off the badges (body) | {q['fg_coverage_body']:.3f} |\n" if "fg_coverage_body" in q else "")
    + f"| true background labelled background | {q['bg_coverage']:.3f} |"))
metrics.update(affinity_label_fg_precision=q["fg_precision"], affinity_label_bg_precision=q["bg_precision"],
               affinity_label_neutral_share=q["share_neutral"])

EX = int(np.flatnonzero(eval_ds.image_labels().numpy().any(1))[0])
M_i, lab_i, raw = load(EX)
Y = read_label_png(res.label_dir / f"{raw['id']}.png")
Yg = A.downsample_labels(Y, STRIDE)
hg, wg = Yg.shape
cands = {"confident foreground": np.argwhere((Yg > 0) & (Yg < 255)), "neutral": np.argwhere(Yg == 255),
         "confident background": np.argwhere(Yg == 0)}
picks = {n: tuple(cc[np.argmin(((cc - [hg / 2, wg / 2]) ** 2).sum(1))]) for n, cc in cands.items() if len(cc)}
colours = {"fg": "lime", "bg": "deepskyblue", "neg": "red", "none": "0.6"}
fig = Figure(figsize=(3.0 * max(len(picks), 1), 3.2), layout="constrained")
for ax, (name, (py, px)) in zip(np.atleast_1d(fig.subplots(1, max(len(picks), 1))), picks.items()):
    ax.imshow(viz.overlay(raw["image"], np.where(Y == 0, 0, Y)), extent=(-0.5, wg - 0.5, hg - 0.5, -0.5))
    for dy, dx in A.neighbour_offsets(cfg.radius, include_self=False):
        qy, qx = py + dy, px + dx
        if 0 <= qy < hg and 0 <= qx < wg:
            a, b = Yg[py, px], Yg[qy, qx]
            kind = "none" if 255 in (a, b) else ("neg" if a != b else ("bg" if a == 0 else "fg"))
            ax.plot([px, qx], [py, qy], "-", color=colours[kind], lw=0.8)
    ax.plot([px], [py], "*", color="white", ms=12, markeredgecolor="k")
    ax.set(title=f"{name} position ({py}, {px})", xticks=[], yticks=[])
fig.legend(handles=[Line2D([], [], color=v, marker="o", ms=4, label=k) for k, v in colours.items()], loc="outside lower center", ncol=4)
fig.savefig(L.out / "pairs.png")
display(fig)

# %% [markdown]
# A negative pair is meant to cross an edge. Where the confident blob spills onto the background its
# negative pairs join background to background; the CRF moves the blob's border onto colour edges.
# The share of each pair set that the true instance map agrees with (background counts as one region):

# %%
variants = {f"used (α {cfg.fg_alpha:g} / {cfg.bg_alpha:g}, CRF {'on' if cfg.crf else 'off'})":
            lambda i: read_label_png(res.label_dir / f"{eval_ds.ids[i]}.png")}
if cfg.crf:
    variants["the same without the CRF"] = lambda i: A.affinity_labels(*load(i)[:2], fg_alpha=cfg.fg_alpha, bg_alpha=cfg.bg_alpha)
pair_acc = {n: stage.pair_label_accuracy(fn, gt_ds, range(N_DIAG), STRIDE, cfg.radius) for n, fn in variants.items()}
display(Markdown(
    f"First {N_DIAG} training images:\n\n| affinity labels | background-positive | foreground-positive | negative |\n|---|---:|---:|---:|\n"
    + "\n".join(f"| {n} | " + " | ".join(f"{v[k]['accuracy']:.2f} ({v[k]['n'] / N_DIAG:.0f} per image)" for k in ("bg_pos", "fg_pos", "neg"))
                + " |" for n, v in pair_acc.items())))
acc = list(pair_acc.values())
metrics.update(pair_label_accuracy={n: {k: v[k]["accuracy"] for k in v} for n, v in pair_acc.items()},
               pair_neg_accuracy_crf=acc[0]["neg"]["accuracy"] if cfg.crf else math.nan,
               pair_neg_accuracy_no_crf=acc[-1]["neg"]["accuracy"])

# %% [markdown]
# ## S2 Where the walk helps and where it hurts
#
# Every object of the training split with the toy scenes' flags: *camouflaged* bodies take their colour
# from the background under them, *touching* objects have another object within 2 px, *non-convex*
# bodies have holes or bays. For each kind: the share of its pixels given its class before and after.

# %%
objs = stage.object_report({"cam": cam_label, "rw": rw_label}, gt_ds)
kinds = {"all objects": lambda o: True, "camouflaged": lambda o: o["camouflaged"], "touching another object": lambda o: o["touching"],
         "non-convex": lambda o: o["nonconvex"], "none of these": lambda o: not (o["camouflaged"] or o["touching"] or o["nonconvex"])}
by_kind, lines = {}, ["| objects | n | recall, CAM α | recall, walk | improved / worsened (> 5 pts) |", "|---|---:|---:|---:|---|"]
for name, sel in kinds.items():
    oo = [o for o in objs if sel(o)]
    if oo:
        rc, rr = float(np.mean([o["recall_cam"] for o in oo])), float(np.mean([o["recall_rw"] for o in oo]))
        by_kind[name] = dict(n=len(oo), cam=rc, rw=rr)
        lines.append(f"| {name} | {len(oo)} | {rc:.3f} | {rr:.3f} | {sum(o['recall_rw'] > o['recall_cam'] + 0.05 for o in oo)} / "
                     f"{sum(o['recall_rw'] < o['recall_cam'] - 0.05 for o in oo)} |")
display(Markdown("\n".join(lines)))
metrics["object_recall_by_kind"] = by_kind

per_img = sorted((ConfusionMatrix(C + 1).update(rw_label(i), gt_ds.get_raw(i)["mask"]).miou()
                  - ConfusionMatrix(C + 1).update(cam_label(i), gt_ds.get_raw(i)["mask"]).miou(), i) for i in range(len(eval_ds)))
deltas = np.array([d for d, _ in per_img])
fig = Figure(figsize=(5, 2.6), layout="constrained")
ax = fig.subplots()
ax.hist(deltas, bins=40)
ax.axvline(0, color="k", lw=0.8)
ax.set(xlabel="image mIoU, walk − CAM", ylabel="images", title=f"{(deltas > 0.01).mean():.0%} of images gain, {(deltas < -0.01).mean():.0%} lose")
display(fig)
metrics.update(images_gain_share=float((deltas > 0.01).mean()), images_lose_share=float((deltas < -0.01).mean()))
rows, titles = [], []
for rank, (d, i) in enumerate(per_img[-2:][::-1] + per_img[:2]):
    M_i, lab_i, raw = load(i)
    rows.append([raw["image"], viz.overlay(raw["image"], raw["mask"]), viz.overlay(raw["image"], cam_label(i)),
                 A.boundary_map(affinities_of(i), cfg.rw_radius, raw["mask"].shape), viz.overlay(raw["image"], rw_label(i))])
    titles.append([f"{'gain' if rank < 2 else 'loss'}: {raw['id']} ({d:+.2f})", "true mask", "CAM α", "boundary map", "random walk"])
fig = viz.image_grid(rows, titles=titles, size=1.8)
fig.savefig(L.out / "gains_losses.png")
display(fig)

# %% [markdown]
# The boundary map draws the bodies' colour edges, so the walk cuts the CAM blobs back to the bodies
# and fills a body where its edge is closed. It loses where the edge is open or the body looks like what
# lies under it (camouflaged bodies): the background's mass flows in and washes a weak body out.
#
# ## S3 Is it the affinities?
#
# How well the learned affinities tell "same region" from "different region" pairs (ROC-AUC over all
# pairs within the radius, mean affinity per kind of pair), and what the *same* walk gives with
# **perfect affinities** (1 inside a true region, 0 across) — the ceiling of the stage.

# %%
q_learned = stage.affinity_quality(affinities_of, gt_ds, range(N_DIAG), STRIDE, cfg.rw_radius, beta=cfg.beta)
display(Markdown(f"ROC-AUC ({N_DIAG} images): **{q_learned['auc']:.3f}** (perfect 1, chance 0.5)\n\n"
                 f"| pair kind | pairs per image | mean affinity | mean affinity^β | perfect |\n|---|---:|---:|---:|---:|\n"
                 + "\n".join(f"| {k} | {q_learned[k]['n'] / N_DIAG:.0f} | {q_learned[k]['mean_a']:.3f} | {q_learned[k]['mean_a^beta']:.3f} | "
                             f"{1 if k in ('bg-bg', 'body-body', 'badge-body') else 0} |" for k in stage.PAIR_KINDS)))
evs = {name: LabelMapEvaluator(C, L.data.context_pairs, NAMES) for name in ("cam", "rw", "oracle")}
for i in range(N_DIAG):
    M_i, lab_i, raw = load(i)
    oracle = stage.oracle_affinities(gt_ds.get_raw(i)["instance_mask"], STRIDE, cfg.rw_radius)
    evs["cam"].update_from_sample(cam_label(i), raw)
    evs["rw"].update_from_sample(rw_label(i), raw)
    evs["oracle"].update_from_sample(A.random_walk_labels(M_i, lab_i, oracle, cfg.rw_radius, STRIDE, alpha=cfg.rw_alpha,
                                                          beta=cfg.beta, t=cfg.t), raw)
diag = {k: e.summary() for k, e in evs.items()}
display(Markdown(f"Same {N_DIAG} images:\n\n| measure | CAM α | walk, AffinityNet | walk, perfect affinities |\n|---|---:|---:|---:|\n"
                 + "\n".join(f"| {k} | " + " | ".join(f3(diag[c].get(k)) for c in ("cam", "rw", "oracle")) + " |"
                             for k in ("miou", "fg_precision", "fg_recall", "part_recall", "body_recall"))))
metrics.update(affinity_auc=q_learned["auc"], affinity_mean_by_pair_kind={k: q_learned[k]["mean_a"] for k in stage.PAIR_KINDS},
               diag_n_images=N_DIAG, diag_cam_miou=diag["cam"]["miou"], diag_rw_miou=diag["rw"]["miou"],
               rw_oracle_miou=diag["oracle"]["miou"], rw_oracle_fg_precision=diag["oracle"]["fg_precision"],
               rw_oracle_fg_recall=diag["oracle"]["fg_recall"])

# %% [markdown]
# Where the toy CAMs spill past the bodies, even the perfect walk mainly gains **precision** (it cuts the
# blob back) and recall only where a body's far end is missing. A walk of 256 steps crosses any edge
# whose affinity is not ≈ 0 after the power β, and stalls inside a body whose affinity is far below 1.
#
# ## S4 The lesson's short schedule
#
# The lesson trains with its profile's preset (fewer epochs, smaller batches, to fit its time budget);
# the same labels, walk and evaluation with that preset, next to this profile's.

# %%
if SHORT_PROFILE and PROFILE != "smoke":
    short = stage.resolve_crf(stage.config_for_profile(SHORT_PROFILE))
    short = short.replace(train=L.train(short.train))
    res_s = stage.run(short, L.data, L.out / "short_schedule", cam_result=cam, progress=False)
    sched = {f"{SHORT_PROFILE} ({short.train.epochs} epochs, batch {short.train.batch_size})": res_s,
             f"{PROFILE} ({cfg.train.epochs} epochs, batch {cfg.train.batch_size})": res}
    display(Markdown("| schedule | CAM α mIoU | walk mIoU | gain | fg precision | fg recall |\n|---|---:|---:|---:|---:|---:|\n"
                     + "\n".join(f"| {n} | {r.report['cam_alpha']['miou']:.3f} | {r.report['rw']['miou']:.3f} | "
                                 f"{100 * (r.report['rw']['miou'] - r.report['cam_alpha']['miou']):+.1f} | "
                                 f"{r.report['rw']['fg_precision']:.3f} | {r.report['rw']['fg_recall']:.3f} |" for n, r in sched.items())))
    metrics.update(rw_miou_short_schedule=res_s.report["rw"]["miou"], short_schedule_epochs=short.train.epochs)
else:
    print("S4 skipped (smoke profile, or SHORT_PROFILE = None)")

# %%
print(f"written: {L.rel(lesson.finish(L, metrics))}")
