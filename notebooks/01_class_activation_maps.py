# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Class activation maps: where does a classifier look?
#
# ## 1 Objective
#
# We want a mask for every training image but are given only its **image label** ("boat, cat"); the
# figure below shows the gap. **Class activation maps** (CAM; Zhou et al., CVPR 2016) bridge it: train a
# multi-label classifier that ends in global average pooling (GAP) and a linear layer, apply the linear
# layer at every location *before* the pooling, and each class gets a map of where its score came from.
# Normalised and thresholded, the maps become **pseudo-labels**, the starting point of PSA/AffinityNet
# (notebook 02), EDAM (03) and EPS (05). We train the classifier, compute CAMs as PSA and IRN do, and
# measure the two flaws the later notebooks fix: CAMs cover the small *discriminative part* (the badge)
# and miss the body, and they *leak* onto co-occurring background (water under boats, rails under
# trains).
#
# ## 2 Parameters

# %% tags=["parameters"]
PROFILE = "tutorial"        # "smoke" (CI, seconds) | "tutorial" (≈ 1 min the first time on 2 CPU cores, seconds after) | "paper" (VOC, GPU)
DATA_ROOT = None            # None: the profile's data folder (toy scenes are generated on first use)
DEVICE = "auto"             # "auto" | "cpu" | "cuda" | "mps"
SEED = 0                    # seeds training and the choice of images shown
OUT_DIR = "../runs/tutorial"
EPOCHS = None               # None: the profile's epochs (tutorial: 10)
CAM_SCALES = None           # None: the profile's CAM scales (tutorial: (1.0,); PSA / IRN: (1.0, 0.5, 1.5, 2.0))
N_SHOW = 6                  # images in the example figures

# %%
import numpy as np, torch
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from wsss_core import cams as wcams, engine, grading, lesson, profiles, viz, widgets
from wsss_core.stages import cam as stage

L = lesson.setup("01_class_activation_maps", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
cfg = profiles.cam_config(PROFILE)
cfg = cfg.replace(train=L.train(cfg.train, EPOCHS), cam_scales=tuple(map(float, CAM_SCALES or cfg.cam_scales)))
train_ds = stage.classification_dataset(L.data.root, L.data.train_split, cfg, train=True)  # augmented, labels only
val_ds = stage.classification_dataset(L.data.root, L.data.val_split, cfg, train=False)     # validation mAP
eval_ds = stage.evaluation_dataset(L.data.root, "train", cfg, mask_dir=L.data.mask_dir)    # + masks, badges, context
NAMES, C, CKPT_DIR, CAM_DIR = eval_ds.class_names, eval_ds.num_classes, stage.checkpoint_dir_for(cfg, L.out, L.data), L.out / "cams"
print(f"train {len(train_ds)}, val {len(val_ds)} images, classes {NAMES[1:]}; {cfg.backbone} CNN, {cfg.train.epochs} epochs; "
      f"CAM scales {cfg.cam_scales} + flip; checkpoint {L.rel(CKPT_DIR)}")


# %%
def label_names(label) -> str:
    return ", ".join(NAMES[c + 1] for c in np.flatnonzero(label)) or "(none)"


LABELS = eval_ds.image_labels().numpy()            # (N, C) image labels of the training split
SHOW = []                                           # N_SHOW images, one per class in turn
for k in range(min(N_SHOW, len(eval_ds))):
    cand = [i for i in np.flatnonzero(LABELS[:, k % C]) if i not in SHOW] or [i for i in range(len(eval_ds)) if i not in SHOW]
    SHOW.append(int(L.rng.choice(cand)))
SHOW = sorted(SHOW)
raws = [eval_ds.get_raw(i) for i in SHOW]
fig = viz.image_grid([[r["image"] for r in raws], [viz.overlay(r["image"], r["mask"]) for r in raws]],
                     row_titles=["given: image + label", "wanted: the mask"],
                     titles=[[label_names(r["label"]) for r in raws], [""] * len(raws)], size=1.7)
viz.class_legend(fig, NAMES, ignore=True)
display(fig)

# %% [markdown]
# The mask is used below only to *score* the CAMs, never to train.
#
# ## 3 Theory
#
# **Classifier.** A backbone maps the image to features $f(x) \in \mathbb{R}^K$ at every location $x$ of an
# $h \times w$ grid (here a compact CNN of stride 8; PSA uses ResNet-38, IRN ResNet-50). GAP and a bias-free
# linear layer $w_c$ give the score of class $c$ (`CAMClassifier.forward`):
#
# $$s_c = w_c^\top \Big(\frac{1}{hw} \sum_x f(x)\Big) = \frac{1}{hw} \sum_x w_c^\top f(x). \tag{1}$$
#
# **Class activation map**, the summand of Eq. 1 kept as a map, negative evidence clipped as in PSA and
# IRN (`CAMClassifier.cam`):
#
# $$\mathrm{CAM}_c(x) = \mathrm{ReLU}\big(w_c^\top f(x)\big). \tag{2}$$
#
# **Loss**: multi-label soft margin on the image label $y \in \{0,1\}^C$ (`wsss_core.models.cam.multilabel_loss`):
#
# $$\mathcal{L} = -\frac{1}{C} \sum_{c=1}^{C} \Big[ y_c \log \sigma(s_c) + (1 - y_c) \log\big(1 - \sigma(s_c)\big) \Big]. \tag{3}$$
#
# **Multi-scale, flipped inference** (`wsss_core.cams.multiscale_cams`): for each scale $s \in S$ and flip
# $\phi$, upsample ($\mathcal{U}$), un-flip and sum; keep the labelled classes, divide by the maximum:
#
# $$A_c = \sum_{s \in S} \sum_{\phi} \phi^{-1}\Big(\mathcal{U}\big(\mathrm{CAM}_c(\phi(x_s))\big)\Big),
# \qquad M_c(x) = y_c \, \frac{A_c(x)}{\max_{x'} A_c(x') + 10^{-5}}. \tag{4}$$
#
# **Background** has no class to train, so its score is made up: a constant (IRN 0.15, PSA 0.2), or PSA's
# power rule (`wsss_core.cams.background_power`; $\alpha = 16$ for the random walk):
#
# $$M_0(x) = \theta \quad (5a), \qquad M_0(x) = \big(1 - \max_c M_c(x)\big)^{\alpha} \quad (5b).$$
#
# **Pseudo-label** (`wsss_core.cams.cams_to_labels`; ties go to background):
#
# $$\hat Y(x) = \arg\max_{c \in \{0\} \cup \{c : y_c = 1\}} M_c(x). \tag{6}$$
#
# For the arg-max, Eq. 5b is a constant threshold in disguise: $\theta(\alpha)$, the root of
# $(1 - \theta)^\alpha = \theta$ (`wsss_core.cams.alpha_to_threshold`).
#
# **Measures** (`wsss_core.evaluation.LabelMapEvaluator`, pooled over the training images): mIoU;
# **part** and **body recall**, the share of badge pixels and of other object pixels given their class;
# the **context leak**, the share of water (rails) pixels labelled boat (train) in images with a boat
# (train), next to the **background leak**, the same share for ordinary background; and EPS's
# **confusion ratio** (context pixels labelled $c$ over true pixels of $c$).
#
# ## 4 From scratch, then the library
#
# The identities hold for any weights, so an untrained (seeded) classifier and four images suffice.

# %%
from wsss_core.data.voc import collate_samples

engine.seed_everything(SEED)
toy_model = stage.build_model(cfg, C).eval()                 # random weights
batch = collate_samples([eval_ds[i] for i in range(min(4, len(eval_ds)))])
x, y = batch["image"], batch["label"]
with torch.no_grad():
    f = toy_model.features(x)                                # (B, K, h, w)
    w = toy_model.classifier.weight[:, :, 0, 0]              # (C, K)
    pre = torch.einsum("bkhw,ck->bchw", f, w)                # w_cᵀ f(x) at every location
    cam_scratch = torch.relu(pre)                            # Eq. 2
    assert torch.allclose(cam_scratch, toy_model.cam(x), atol=1e-5)
    assert torch.allclose(pre.mean(dim=(2, 3)), toy_model(x), atol=1e-5)    # Eq. 1: the mean is the logit
print(f"features {tuple(f.shape)} → CAMs {tuple(cam_scratch.shape)}, stride {x.shape[-1] // f.shape[-1]}")
print("✓ einsum + ReLU == CAMClassifier.cam, and the mean of w_cᵀ f(x) == the logit s_c")


# %% [markdown]
# Multi-scale and flip by hand (Eq. 4), for two scales:

# %%
import torch.nn.functional as F


def multiscale_scratch(model, images, labels, scales):
    "Eq. 4: sum over scales and flips of upsampled CAMs, label mask, max-normalisation."
    H, W = images.shape[-2:]
    total = torch.zeros(images.shape[0], labels.shape[1], H, W)
    for s in scales:
        xs = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        for flip in (False, True):
            cam = model.cam(xs.flip(-1) if flip else xs)
            cam = F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)
            total += cam.flip(-1) if flip else cam
    total = total * labels[:, :, None, None]
    return total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)


with torch.no_grad():
    ms_scratch = multiscale_scratch(toy_model, x, y, scales=(1.0, 0.5))
    ms_lib = wcams.multiscale_cams(toy_model, x, y, scales=(1.0, 0.5), flip=True)
assert torch.allclose(ms_scratch, ms_lib, atol=1e-5)
print("✓ by hand == wsss_core.cams.multiscale_cams; absent classes all zero:", bool((ms_lib[~y.bool()] == 0).all()))

# %% [markdown]
# Background and pseudo-labels (Eqs. 5–6) on one row of six pixels, and the power rule as a threshold:

# %%
M = np.array([[[0.05, 0.2, 0.6, 1.0, 0.3, 0.0]], [[0.0, 0.1, 0.2, 0.4, 0.9, 0.25]]], np.float32)   # (C=2, 1, 6)
lab = np.array([1, 1], np.float32)
print("max_c M_c       ", M.max(0)[0], "\nbg, α = 4       ", wcams.background_power(M, 4.0)[0].round(3))
print("labels, θ = 0.3 ", wcams.cams_to_labels(M, lab, threshold=0.3)[0])
print("labels, α = 4   ", wcams.cams_to_labels(M, lab, alpha=4.0)[0], f"  (θ(4) = {wcams.alpha_to_threshold(4):.3f})")
with torch.no_grad():
    Mi = wcams.multiscale_cams(toy_model, x, y, scales=(1.0,)).numpy()
a = wcams.cams_to_labels(Mi, y.numpy(), alpha=16.0)
b = wcams.cams_to_labels(Mi, y.numpy(), threshold=wcams.alpha_to_threshold(16.0))
assert (a == b).mean() > 0.9999
print(f"✓ α = 16 and θ(16) = {wcams.alpha_to_threshold(16.0):.3f} give the same labels on {a.size} pixels")

# %% [markdown]
# ## 5 Run it
#
# `stage.train_classifier` runs the shared training loop (`wsss_core.engine.train`): Eq. 3 on random
# crops with flips, Adam with a one-cycle schedule, a checkpoint and the validation mAP after every
# epoch. A finished checkpoint is reloaded, not retrained; its folder name fingerprints every setting
# that changes the weights, so changing `EPOCHS` trains a new one beside it.

# %%
try:
    model, history = stage.train_classifier(cfg, train_ds, CKPT_DIR, val_ds=val_ds)
except engine.CheckpointMismatchError as e:
    raise RuntimeError(f"{L.rel(CKPT_DIR)} holds a checkpoint of another configuration: delete it or change "
                       f"OUT_DIR.\n{e}") from e
train_seconds = float(sum(r["seconds"] for r in history.epochs))
cls = stage.classification_report(model, val_ds)
fig = Figure(figsize=(10, 2.8), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
history.plot(ax=ax1, keys=("loss",), smooth=0.1)
ax1.set(title="multi-label soft-margin loss (Eq. 3)", ylabel="loss")
ey = history.series("val_map", "epochs")[1]
ax2.plot(np.arange(1, len(ey) + 1), ey, "o-", color="tab:green", label="validation mAP")
ax2.axhline(cfg.min_val_map, color="tab:red", ls="--", lw=1, label=f"trust threshold {cfg.min_val_map}")
ax2.set(xlabel="epoch", ylabel="mAP", ylim=(0, 1.02), title="validation mAP per epoch")
ax2.legend(fontsize=8)
display(fig)
display(Markdown("| class | " + " | ".join(cls["per_class_ap"]) + " | **mAP** |\n|---|" + "---:|" * (C + 1)
                 + "\n| AP (val) | " + " | ".join(f"{v:.3f}" for v in cls["per_class_ap"].values()) + f" | **{cls['map']:.3f}** |"))
print(f"training: {train_seconds:.0f} s for {len(history.epochs)} epochs (reused if the checkpoint existed)")
if cls["map"] < cfg.min_val_map:
    print(f"WARNING: validation mAP {cls['map']:.3f} < {cfg.min_val_map}: a weak classifier's CAMs show whatever it "
          "latched onto (often water or rails), not the CAM method. Train longer (EPOCHS) or try another SEED.")

# %% [markdown]
# A CAM explains a decision; the mAP says whether the decision is worth explaining. Next, Eq. 4 for
# every training image (`stage.ensure_cams`, one `.npz` per image under `cams/`), the threshold sweep of
# §7 (`stage.evaluate_cams`) and one more pass for the figures (`stage.score_cams`).

# %%
cam_seconds, reused = stage.ensure_cams(model, eval_ds, CAM_DIR, cfg, CKPT_DIR.name)
report = stage.evaluate_cams(CAM_DIR, eval_ds, cfg, L.data.context_pairs, progress=True)
BEST, ALPHA = report["best_threshold"], 16.0
scores = stage.score_cams(CAM_DIR, eval_ds, cfg, L.data.context_pairs, best_threshold=BEST, alpha=ALPHA, progress=True)
fixed, alpha_rep = scores["fixed"], scores["alpha"]
print(f"CAMs {'reused' if reused else 'made'} ({cam_seconds:.0f} s); best threshold θ* = {BEST} (mIoU {report['miou']:.3f})")


def load(i):
    "CAMs (C, H, W) in [0, 1], label (C,) and the raw sample of training image i."
    raw = eval_ds.get_raw(i)
    return (*wcams.load_cams(CAM_DIR / f"{raw['id']}.npz"), raw)


# %% [markdown]
# ## 6 Look at it
#
# Each row: image, true mask, pseudo-label at $\theta^*$, and the CAM of every labelled class (blue 0 →
# red 1) with that class's **badges** outlined in white and the CAM's maximum marked by a cross.

# %%
def cam_row(i, threshold):
    "Cells, titles and CAM peaks (column, (y, x)) of one row of the CAM figure."
    M_i, lab_i, raw = load(i)
    cells = [raw["image"], viz.overlay(raw["image"], raw["mask"]),
             viz.overlay(raw["image"], wcams.cams_to_labels(M_i, lab_i, threshold=threshold))]
    titles, peaks = [f"{raw['id']}\n{label_names(lab_i)}", "true mask", f"pseudo-label θ={threshold:g}"], []
    for c in np.flatnonzero(lab_i):
        hm = viz.heatmap(raw["image"], M_i[c])
        cells.append(viz.outline(hm, raw["part_mask"] == c + 1) if "part_mask" in raw else hm)
        peaks.append((len(cells) - 1, np.unravel_index(np.argmax(M_i[c]), M_i[c].shape)))
        titles.append(f"CAM {NAMES[c + 1]}")
    return cells, titles, peaks


rows, titles, peaks = zip(*[cam_row(i, BEST) for i in SHOW])
fig = viz.image_grid(list(rows), titles=list(titles), size=1.75)
ncols = max(len(r) for r in rows)
for r, row_peaks in enumerate(peaks):
    for col, (py, px) in row_peaks:
        fig.axes[r * ncols + col].plot([px], [py], "x", color="white", ms=7, mew=2)
viz.class_legend(fig, NAMES, ignore=True)
fig.savefig(L.out / "cams.png")
display(fig)

# %% [markdown]
# Each CAM peaks on or next to a badge of its class and fades with the distance from it: the classifier
# found the cheapest evidence for the label, and the CAM shows that evidence, not the object. The
# pseudo-label is a blob around the badge whose size is set by the coarse feature grid, not by the
# object's outline. Where water or rails are present, look for CAM mass on them.
#
# **Explore** the images and the two background rules (live in Jupyter; an executed copy shows the
# defaults). In *power* mode the threshold slider is unused.

# %%
from wsss_core.metrics import ConfusionMatrix

MODES = ["constant θ (Eq. 5a)", "power (1 − max M)^α (Eq. 5b)"]


def render(index, mode, threshold, alpha):
    M_i, lab_i, raw = load(index)
    if mode == MODES[0]:
        bg, pl, rule = np.full(M_i.shape[1:], threshold, np.float32), wcams.cams_to_labels(M_i, lab_i, threshold=threshold), f"θ = {threshold:.2f}"
    else:
        bg, pl = wcams.background_power(M_i, alpha), wcams.cams_to_labels(M_i, lab_i, alpha=alpha)
        rule = f"α = {alpha} (≡ θ = {wcams.alpha_to_threshold(alpha):.3f})"
    cm = ConfusionMatrix(C + 1).update(pl, raw["mask"])
    return viz.image_grid([[raw["image"], viz.overlay(raw["image"], raw["mask"]), viz.heatmap(raw["image"], M_i.max(0)),
                            bg, viz.overlay(raw["image"], pl)]],
                          titles=[[f"{raw['id']}: {label_names(lab_i)}", "true mask", "max_c M_c",
                                   "background score M_0\n(black 0, white 1)", f"pseudo-label, {rule}\nimage mIoU {cm.miou():.2f}"]],
                          size=2.2)


widgets.explore(render, index=(0, len(eval_ds) - 1, 1, int(SHOW[0])), mode=MODES,
                threshold=(0.05, 0.95, 0.05, float(BEST)), alpha=(1, 64, 1, 16));

# %% [markdown]
# ## 7 Measure it
#
# `stage.evaluate_cams` labels every training image at each threshold of a sweep and keeps the best,
# $\theta^*$. That choice **uses the ground truth**: it is an *oracle*, as in the papers' CAM numbers (IRN
# picked 0.15, PSA 0.2 on the training images). The non-oracle figures are the fixed threshold
# (`cfg.eval_threshold`, IRN's 0.15) and PSA's power rule with $\alpha = 16$.

# %%
assert np.isclose(scores["miou"].max(), report["miou"])          # the two passes agree
fig = Figure(figsize=(10, 2.8), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
viz.plot_sweep(report["sweep"], best=BEST, ax=ax1, label="CAM pseudo-labels (train)")
for t, style, name in ((cfg.eval_threshold, "--", "fixed θ"), (wcams.alpha_to_threshold(ALPHA), ":", f"θ(α={ALPHA:g})")):
    ax1.axvline(t, color="0.4", ls=style, lw=1, label=name)
ax1.legend(fontsize=7)
ax1.set_title("mIoU vs background threshold (★ = oracle θ*)")
ax2.plot(scores["thresholds"], scores["fg_precision"], "-o", ms=3, label="foreground precision")
ax2.plot(scores["thresholds"], scores["fg_recall"], "-o", ms=3, label="foreground recall")
ax2.axvline(BEST, color="k", lw=0.8)
ax2.set(xlabel="background threshold", ylim=(0, 1.02), title="low θ: more object, less precise")
ax2.grid(alpha=0.3)
ax2.legend(fontsize=8)
fig.savefig(L.out / "threshold_sweep.png")
display(fig)


# %%
def f3(v):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


settings = {f"oracle θ* = {BEST:g}": report, f"fixed θ = {cfg.eval_threshold:g}": fixed, f"power α = {ALPHA:g}": alpha_rep}
keys = [("mIoU", "miou"), ("foreground precision", "fg_precision"), ("foreground recall", "fg_recall"),
        ("part (badge) recall", "part_recall"), ("body recall", "body_recall"),
        ("context leak (water, rails → class)", "context_leak"), ("background leak (ordinary bg → class)", "background_leak")]
lines = ["| measure | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
lines += [f"| {name} | " + " | ".join(f3(s.get(k)) for s in settings.values()) + " |" for name, k in keys]
for pair in report.get("confusion_ratio", {}):
    lines.append(f"| confusion ratio {pair} (EPS) | " + " | ".join(f3(s["confusion_ratio"][pair]) for s in settings.values()) + " |")
lines.append(f"| CAM maximum ≤ 4 px from a badge of its class | {f3(scores['peak_on_badge'])} | | |")
display(Markdown("\n".join(lines)))
if "part_recall" in report and "context_leak" in report:
    fig = Figure(figsize=(10, 2.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    viz.bar_table({"badge pixels": report["part_recall"], "body pixels": report["body_recall"]}, ax=ax1,
                  title=f"recall of object pixels at θ* = {BEST:g}", color=["tab:red", "tab:blue"], xlim=(0, 1.15))
    leaks = {}
    for p, v in report["context_leak_per_pair"].items():
        leaks[f"{p.split('/')[1]} → {p.split('/')[0]}"] = v
        leaks[f"other bg → {p.split('/')[0]}"] = report["background_leak_per_pair"][p]
    viz.bar_table(leaks, ax=ax2, title="share labelled as the class (images with the class)",
                  color=["tab:purple", "tab:gray"] * (len(leaks) // 2))
    fig.savefig(L.out / "coverage_and_leak.png")
    display(fig)

# %% [markdown]
# Badges are recalled almost always, bodies much less often: **partial coverage**. Water and rails are
# labelled as their class many times more often than ordinary background in the same images:
# **co-occurrence**. Next to the papers (CAM pseudo-labels on PASCAL VOC 2012 train with ImageNet-pretrained
# ResNets): toy scenes and a small CNN from scratch are **not comparable in absolute terms**; the
# pattern is what carries over. The pseudo-labels at $\theta^*$ and the report are saved for notebook 02.

# %%
PAPERS = [("CAM, PSA (Ahn & Kwak, CVPR 2018)", "ResNet-38, VOC train, θ 0.2", 48.0),   # PSA README
          ("CAM, IRN (Ahn et al., CVPR 2019)", "ResNet-50, VOC train, θ 0.15", 48.3),  # IRN issue #4
          ("CAM baseline of EPS (Lee et al., CVPR 2021)", "ResNet-38, VOC train", 47.05)]  # EPS README
ours = f"{cfg.backbone} CNN, toy train ({len(eval_ds)} images), {L.profile}"
rows = [f"| {n} | {w} | {v} |" for n, w, v in PAPERS] + [
    f"| **ours**, {name} | {ours} | **{100 * s['miou']:.1f}** |" for name, s in settings.items()]
display(Markdown("| CAM pseudo-labels | setting | mIoU (%) |\n|---|---|---:|\n" + "\n".join(rows)))
stage.save_report(L.out, CKPT_DIR.name, report)
# the CAM stage as notebooks 02–06 and `wsss run cam` call it: it reuses the classifier, CAMs and report
# above and writes the pseudo-labels at θ* (their completion marker last)
stage.run(cfg, L.data, L.out, progress=False)
stage.write_metrics(L.out / "cam_config.json", cfg.to_dict())

# %% [markdown]
# ## 8 What goes wrong: the boat's CAM spills onto the water
#
# Water comes with almost every boat, so for the image label "water" is evidence for "boat". Below, for
# each pair, the training image whose pseudo-label gives the class the most context pixels, with the
# water (rails) outlined. The CAM is drawn on its full scale and on a scale that saturates at 0.3, so
# that weak activations show.

# %%
rows, titles = [], []
for pair, i in scores.get("leak_example", {}).items():
    if i is None:
        continue
    (c, k), (M_i, lab_i, raw) = L.data.context_pairs[pair], load(i)
    ctx, m = raw["context_mask"] == k, M_i[c - 1]
    rows.append([viz.outline(viz.overlay(raw["image"], raw["mask"]), ctx), viz.outline(viz.heatmap(raw["image"], m), ctx),
                 viz.outline(viz.heatmap(raw["image"], np.clip(m / 0.3, 0, 1)), ctx),
                 viz.outline(viz.overlay(raw["image"], wcams.cams_to_labels(M_i, lab_i, threshold=BEST)), ctx)])
    titles.append([f"{raw['id']}: {label_names(lab_i)}\ntrue mask, {pair.split('/')[1]} outlined",
                   f"CAM {NAMES[c]} (0–1)", "same, 0–0.3", f"pseudo-label θ* = {BEST:g}"])
if rows:
    fig = viz.image_grid(rows, titles=titles, size=2.2)
    fig.savefig(L.out / "co_occurrence.png")
    display(fig)
else:
    print("no context regions in this data set (the toy scenes have them)")

# %% [markdown]
# The classifier had no reason to separate "boat" from "water": the image label is right either way.
# Raising $\theta$ removes context pixels and the object's own pixels together, so no threshold fixes
# it. EPS (notebook 05) adds a saliency map that says water is not an object. Whether the CAM is high on
# water *far* from any boat, i.e. whether water itself became evidence, is measured in the study
# notebook `study/01_class_activation_maps_study`, with the seed spread and the papers' four scales.
#
# ## 9 Exercises
#
# Three functions (8 points) and a written answer (2 points). The lesson uses your answer, or the
# library's result if yours is missing or wrong.
#
# ### Exercise 1 · the threshold hidden in the power rule (2 points)
#
# Write `alpha_to_threshold(alpha)`: the root $\theta \in (0, 1)$ of $(1 - \theta)^\alpha = \theta$ for
# $\alpha > 0$, as a Python float accurate to $10^{-6}$ (bisection works: the left side minus the right
# decreases in $\theta$). Do not call `wsss_core.cams.alpha_to_threshold`.

# %% nbgrader={"grade": false, "grade_id": "alpha_to_threshold_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def alpha_to_threshold(alpha):
    "alpha > 0 → θ in (0, 1) with (1 − θ)^alpha = θ."
    ### BEGIN SOLUTION
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-9:
        mid = 0.5 * (lo + hi)
        if (1.0 - mid) ** alpha > mid:
            lo = mid
        else:
            hi = mid
    return float(0.5 * (lo + hi))
    ### END SOLUTION


# %%
theta_alpha = grading.attempt(alpha_to_threshold, wcams.alpha_to_threshold, ALPHA)
print(f"α = {ALPHA:g} acts as the constant background θ = {theta_alpha:.3f}; the oracle θ* is {BEST:g}, IRN's {cfg.eval_threshold:g}")

# %% nbgrader={"grade": true, "grade_id": "alpha_to_threshold", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with grading.tests("alpha_to_threshold"):
    out = alpha_to_threshold(1.0)
    assert isinstance(out, float), f"a Python float, not {type(out).__name__}"
    assert abs(out - 0.5) < 1e-6, f"θ(1) = {out} ≠ 0.5 (1 − θ = θ)"
    assert abs(alpha_to_threshold(2.0) - (3 - 5 ** 0.5) / 2) < 1e-6, "θ(2) ≠ (3 − √5)/2, the root of θ² − 3θ + 1 = 0"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = [(float(a),) for a in rng.uniform(0.3, 64.0, size=6)]
    grading.check_against(alpha_to_threshold, wcams.alpha_to_threshold, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.cams.alpha_to_threshold"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2 · pseudo-labels with PSA's power rule, Eqs. 5b and 6 (3 points)
#
# Write `power_labels(cams, label, alpha)`: `cams` `(C, H, W)` float32 numpy in $[0, 1]$, `label` `(C,)`
# multi-hot, `alpha > 0` → `(H, W)` int64 labels, 0 = background and `c + 1` for channel `c`. The
# background is $(1 - \max_c M_c)^\alpha$ over the *present* classes only; absent classes never win;
# ties go to background. Do not call `wsss_core.cams` (its label functions are unavailable while graded).

# %% nbgrader={"grade": false, "grade_id": "power_labels_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def power_labels(cams, label, alpha):
    "cams (C, H, W), label (C,), alpha → (H, W) int64 labels 0..C with the background (1 − max M)^alpha."
    ### BEGIN SOLUTION
    cams = np.asarray(cams, np.float32)
    present = np.asarray(label).astype(bool)
    masked = np.where(present[:, None, None], cams, np.float32(-1.0))
    bg = ((1.0 - np.where(present[:, None, None], cams, 0).max(axis=0)) ** alpha).astype(np.float32)
    return np.concatenate([bg[None], masked]).argmax(axis=0).astype(np.int64)
    ### END SOLUTION


# %%
M_i, lab_i, raw = load(SHOW[0])
pl_power = grading.attempt(power_labels, lambda c, l, a: wcams.cams_to_labels(c, l, alpha=a), M_i, lab_i, ALPHA)
pl_best = wcams.cams_to_labels(M_i, lab_i, threshold=BEST)
print(f"{raw['id']}: foreground share {(pl_power > 0).mean():.1%} with α = {ALPHA:g}, {(pl_best > 0).mean():.1%} at θ* = {BEST:g}; "
      f"true {((raw['mask'] > 0) & (raw['mask'] != 255)).mean():.1%}")

# %% nbgrader={"grade": true, "grade_id": "power_labels", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
with grading.tests("power_labels"):
    m = np.array([[[0.9, 0.1, 0.3]], [[0.2, 0.8, 0.1]]], np.float32)          # (C=2, H=1, W=3)
    out = power_labels(m, np.array([1, 1]), 1.0)         # bg = 1 − max = [0.1, 0.2, 0.7] → [1, 2, 0]
    assert np.shape(out) == (1, 3), f"shape {np.shape(out)}, expected (H, W) = (1, 3)"
    assert np.asarray(out).dtype == np.int64, f"dtype {np.asarray(out).dtype}, expected int64"
    assert np.array_equal(out, [[1, 2, 0]]), f"{out} ≠ [[1, 2, 0]]"
    out = power_labels(m, np.array([1, 0]), 1.0)         # class 2 absent: bg = 1 − [0.9, 0.1, 0.3] → [1, 0, 0]
    assert np.array_equal(out, [[1, 0, 0]]), f"{out} ≠ [[1, 0, 0]] (absent classes neither win nor raise the max)"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = []
    for _ in range(5):
        c = int(rng.integers(1, 7))
        lab = (rng.random(c) < 0.6).astype(np.float32)
        lab[int(rng.integers(0, c))] = 1
        cases.append((rng.random((c, int(rng.integers(2, 20)), 13)).astype(np.float32), lab, float(rng.uniform(1, 32))))
    grading.check_against(power_labels, lambda c, l, a: wcams.cams_to_labels(c, l, alpha=a), cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.cams.cams_to_labels", "wsss_core.cams.with_background",
                                  "wsss_core.cams._with_background_np", "wsss_core.cams.background_power",
                                  "wsss_core.cams.alpha_to_threshold", "wsss_core.cams.threshold_sweep"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 3 · the context leak of one image (3 points)
#
# Write `context_leak(pred, gt, context_mask, c, k)`: `pred`, `gt` `(H, W)` int label maps (`gt` 255 =
# ignore), `context_mask` `(H, W)` int region ids, `c` a class, `k` a context id → the share of the
# region $\{x : \text{context}(x) = k,\ \text{gt}(x) \notin \{c, 255\}\}$ that `pred` labels `c`, a Python
# float, NaN for an empty region. The lesson measures it on §8's images.

# %% nbgrader={"grade": false, "grade_id": "context_leak_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def context_leak(pred, gt, context_mask, c, k):
    "Share of context-k pixels (gt not c, not ignored) labelled c; NaN if there are none."
    ### BEGIN SOLUTION
    pred, gt, context_mask = np.asarray(pred), np.asarray(gt), np.asarray(context_mask)
    region = (context_mask == k) & (gt != c) & (gt != 255)
    return float((pred[region] == c).sum() / region.sum()) if region.any() else float("nan")
    ### END SOLUTION


# %%
from wsss_core.metrics import ConfusionRatio


def library_context_leak(pred, gt, context_mask, c, k):
    return ConfusionRatio().update(pred, gt, context_mask, {"pair": (c, k)}).leak()["pair"]


for pair, i in scores.get("leak_example", {}).items():
    if i is not None:
        (c, k), (M_i, lab_i, raw) = L.data.context_pairs[pair], load(i)
        pl = wcams.cams_to_labels(M_i, lab_i, threshold=BEST)
        leak = grading.attempt(context_leak, library_context_leak, pl, raw["mask"], raw["context_mask"], c, k)
        print(f"{raw['id']}: {leak:.1%} of the {pair.split('/')[1]} labelled {NAMES[c]} at θ* = {BEST:g}")

# %% nbgrader={"grade": true, "grade_id": "context_leak", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
with grading.tests("context_leak"):
    p, g, ctx = np.array([[1, 1, 0, 2]]), np.array([[0, 255, 0, 1]]), np.array([[1, 1, 1, 0]])
    out = context_leak(p, g, ctx, 1, 1)                  # region: pixels 0 and 2 (pixel 1 ignored); pred = 1 at pixel 0
    assert isinstance(out, float), f"a Python float, not {type(out).__name__}"
    assert abs(out - 0.5) < 1e-9, f"{out} ≠ 1/2"
    assert np.isnan(context_leak(p, g, ctx, 1, 2)), "no pixel of context 2: NaN"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = []
    for _ in range(6):
        shape = (int(rng.integers(3, 25)), int(rng.integers(3, 25)))
        g = rng.integers(0, 4, size=shape)
        g[rng.random(shape) < 0.1] = 255
        cases.append((rng.integers(0, 4, size=shape), g, rng.integers(0, 3, size=shape), int(rng.integers(1, 4)), int(rng.integers(1, 3))))
    grading.check_against(context_leak, library_context_leak, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.metrics.ConfusionRatio.update", "wsss_core.metrics.ConfusionRatio.leak",
                                  "wsss_core.metrics.ConfusionRatio.ratios", "wsss_core.metrics._bg_leak_counts",
                                  "wsss_core.metrics.background_leak", "wsss_core.evaluation.LabelMapEvaluator.update"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4 · written: a threshold without ground truth (2 points)
#
# $\theta^*$ is an oracle. The cell below picks a threshold per image with Otsu's method on
# $\max_c M_c$ (no ground truth) and scores it next to the fixed and oracle thresholds. Run it, then
# explain in the cell after it where Otsu's thresholds land, why its mIoU is where it is, and what the
# method assumes about the histogram of $\max_c M_c$.

# %%
import cv2

cm_otsu, otsu_th = ConfusionMatrix(C + 1), []
for i in range(len(eval_ds)):
    M_i, lab_i, raw = load(i)
    t, _ = cv2.threshold((255 * (M_i * lab_i[:, None, None]).max(0)).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    otsu_th.append(t / 255)
    cm_otsu.update(wcams.cams_to_labels(M_i, lab_i, threshold=t / 255), raw["mask"])
print(f"Otsu: θ median {np.median(otsu_th):.2f} (10–90 %: {np.percentile(otsu_th, 10):.2f}–{np.percentile(otsu_th, 90):.2f}), "
      f"mIoU {cm_otsu.miou():.3f}, precision {cm_otsu.fg_precision():.3f}, recall {cm_otsu.fg_recall():.3f}; "
      f"fixed θ = {cfg.eval_threshold:g}: {fixed['miou']:.3f}; oracle θ* = {BEST:g}: {report['miou']:.3f}")

# %% [markdown] nbgrader={"grade": true, "grade_id": "otsu_threshold_written", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# (tutorial run) Otsu's thresholds cluster around 0.34, near the oracle θ* = 0.3 and far above IRN's
# 0.15, so its mIoU (0.564) nearly matches the oracle's (0.568) and beats the fixed threshold's (0.558):
# more precise (0.76 vs 0.61), less complete (recall 0.62 vs 0.76). Otsu assumes a bimodal histogram,
# object vs background; a CAM that covers only the badge gives a small, high mode and a threshold
# that cuts the body away.

# %% [markdown]
# ## 10 Summary and pointers
#
# * A GAP classifier's last layer applied at every location is a **CAM** (Eq. 2); its mean is the
#   class score (Eq. 1).
# * Pseudo-labels need a made-up background score (Eqs. 5–6); its best value is an oracle choice (§7).
# * CAMs are **precise but incomplete** (badge recall ≫ body recall) and **leak** onto co-occurring
#   context (§7, §8). Toy data, tiny CNN, CPU: compare the pattern with the papers, not the values.
#
# Next: **02** (AffinityNet + random walk) spreads the confident CAM regions over whole bodies; **03**
# (EDAM) trains the classifier to see whole objects; **05** (EPS) uses saliency against the leak.

# %%
metrics = {
    "cls_map": cls["map"], "cls_per_class_ap": cls["per_class_ap"],
    "cam_miou": report["miou"], "cam_best_threshold": BEST,
    "cam_fg_precision": report["fg_precision"], "cam_fg_recall": report["fg_recall"],
    "cam_part_recall": report.get("part_recall"), "cam_body_recall": report.get("body_recall"),
    "cam_context_leak": report.get("context_leak"), "cam_background_leak": report.get("background_leak"),
    "cam_context_leak_per_pair": report.get("context_leak_per_pair", {}),
    "cam_background_leak_per_pair": report.get("background_leak_per_pair", {}),
    "cam_background_fg_share": report.get("background_fg_share"), "cam_confusion_ratio": report.get("confusion_ratio", {}),
    "cam_per_class_iou": report["per_class_iou"], "cam_eval_threshold": cfg.eval_threshold,
    "cam_miou_at_eval_threshold": fixed["miou"], "cam_alpha": ALPHA, "cam_miou_alpha": alpha_rep["miou"],
    "cam_peak_on_badge": scores["peak_on_badge"], "cam_sweep": report["sweep"], "epochs": cfg.train.epochs,
    "n_images": len(eval_ds), "train_seconds": train_seconds, "cam_seconds": cam_seconds,
}
print(f"written: {L.rel(lesson.finish(L, metrics))}")
