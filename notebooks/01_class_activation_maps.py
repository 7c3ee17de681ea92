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
# # 01 · Class activation maps: where does a classifier look?
#
# ## 1 Objective
#
# We want a segmentation mask for every training image, but all we are given is its **image label** —
# the list of classes present ("boat, cat"). The figure at the end of §2 shows the gap on our data:
# the label we have next to the mask we would like. **Class activation maps** (CAM; Zhou et al.,
# CVPR 2016) are the first bridge. Train an ordinary multi-label classifier whose last layers are
# *global average pooling* (GAP) followed by a linear layer; because averaging and the linear layer
# commute, applying the linear layer at every position *before* the pooling gives, for each class, a
# map of how much each location pushed that class's score up. Normalised and thresholded, these maps
# become **pseudo-labels** — the starting point of every image-label method after it: PSA/AffinityNet
# (Ahn & Kwak, CVPR 2018) and IRN (Ahn et al., CVPR 2019) take the *confident* parts of the CAMs as
# seeds and propagate them (notebook 02); EDAM (03) and EPS (05) change how the classifier is trained
# so that its CAMs are better to begin with.
#
# This notebook trains the classifier on the toy scenes of notebook 00, computes CAMs the way PSA and
# IRN do (4 scales × flip, per-class max normalisation), turns them into pseudo-labels with a
# background threshold, and measures them — including the two flaws the later notebooks fix: CAMs
# light up the small *discriminative part* of an object (here: its badge) and miss its body, and they
# *leak* onto background that co-occurs with a class (water under boats, rails under trains).
#
# *How to use it:* run top to bottom. With `PROFILE = "tutorial"` the first run trains a classifier and
# computes CAMs on a CPU, which takes a while (§10 prints how long it took here); both are stored under
# `OUT_DIR`, so a second run skips them and only re-measures. `"smoke"` (CI) trains for a couple of
# epochs on a few dozen images: it proves that the code runs, and its classifier is far too weak for
# its pictures to mean anything. Exercises are in §9; instructors set `USE_SOLUTIONS = True`.

# %% [markdown]
# ## 2 Parameters
#
# Papermill overwrites this cell's values (the runner injects `PROFILE`, `OUT_DIR`, `SEED`, `DEVICE`
# and `USE_SOLUTIONS`).

# %% tags=["parameters"]
PROFILE = "tutorial"        # "smoke" (CI, seconds) | "tutorial" (laptop CPU, minutes) | "paper" (PASCAL VOC on a GPU)
DATA_ROOT = None            # None: the profile's default data folder (toy scenes are generated on first use)
DEVICE = "auto"             # "auto" | "cpu" | "cuda" | "mps"
SEED = 0                    # seeds training (weights, data order) and the choice of images shown
OUT_DIR = "../runs/tutorial"
USE_SOLUTIONS = False       # instructors / CI: check the reference solutions of the exercises
EPOCHS = None               # None: the profile's number of epochs
CAM_SCALES = None           # None: the profile's CAM scales, e.g. (1.0, 0.5, 1.5, 2.0)
N_SHOW = 6                  # images in the example figures

# %%
# Everything else is derived from the parameters above.
import json
import math
import os
import platform
import time
from pathlib import Path

import cv2
import matplotlib
import matplotlib.pyplot as plt  # activates the inline backend, which displays Figure objects
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import wsss_core
from wsss_core import cams as wcams
from wsss_core import engine, exercises, profiles, viz, widgets
from wsss_core.data.palette import read_label_png
from wsss_core.data.voc import collate_samples
from wsss_core.evaluation import LabelMapEvaluator
from wsss_core.metrics import ConfusionMatrix
from wsss_core.models.cam import CAMClassifier, multilabel_loss
from wsss_core.stages import cam as stage

# %matplotlib inline
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 9,
                     "image.interpolation": "nearest"})
engine.seed_everything(SEED)
rng = np.random.default_rng(SEED)

# --- data: the toy scenes of notebook 00 (or PASCAL VOC for the paper profile) ---------------------
data = profiles.prepare_data(PROFILE, DATA_ROOT)
TOY = data.kind == "toy"                  # toy scenes carry PartMask/ (badges) and ContextMask/ (water, rails)
EVAL_SPLIT = "train"                      # CAM pseudo-labels are made and scored on the training images

# --- the stage's config: the profile's preset, with this notebook's overrides ---------------------
cfg = profiles.cam_config(PROFILE)
cfg = cfg.replace(
    train=cfg.train.replace(seed=SEED, device=DEVICE, epochs=int(EPOCHS) if EPOCHS else cfg.train.epochs),
    cam_scales=tuple(float(s) for s in CAM_SCALES) if CAM_SCALES else cfg.cam_scales)

train_ds = stage.classification_dataset(data.root, data.train_split, cfg, train=True)   # augmented, labels only
val_ds = stage.classification_dataset(data.root, data.val_split, cfg, train=False)      # for validation mAP
eval_ds = stage.evaluation_dataset(data.root, EVAL_SPLIT, cfg, mask_dir=data.mask_dir)  # + masks, parts, context
NAMES = eval_ds.class_names               # ["background", "boat", ...]
C = eval_ds.num_classes


# --- where things go. A checkpoint is only reused by the run that wrote it: its folder name holds a
# fingerprint of everything that changes the trained weights (backbone, augmentation, optimiser,
# epochs, seed, and the data set's own config), so changing EPOCHS or the backbone trains a new one
# next to the old instead of silently reloading it (`stage.checkpoint_dir_for`). CAMs and pseudo-labels
# keep fixed folders (the later notebooks read them); cams/source.json records which classifier and
# scales made them (`stage.ensure_cams`).
OUT = Path(OUT_DIR) / "01_class_activation_maps"
CKPT_DIR = stage.checkpoint_dir_for(cfg, OUT, data)
CAM_DIR = OUT / "cams"
LABEL_DIR = OUT / "pseudo_labels"
OUT.mkdir(parents=True, exist_ok=True)


def rel(p) -> str:
    "A path relative to the working directory (notebooks/), for printing."
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


print(f"profile {PROFILE}, seed {SEED}, device {engine.select_device(DEVICE)}")
print(f"data: {rel(data.root)} ({data.kind}) — train {len(train_ds)}, val {len(val_ds)} images; "
      f"{C} classes: {NAMES[1:]}")
print(f"classifier: {cfg.backbone} {cfg.backbone_kwargs}, {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, "
      f"{cfg.train.optimizer} lr {cfg.train.lr} ({cfg.train.schedule}); CAM scales {cfg.cam_scales}, flip {cfg.cam_flip}")
print(f"outputs: {rel(OUT)} (checkpoint: {rel(CKPT_DIR)})")
print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
      f"matplotlib {matplotlib.__version__}, wsss_core {wsss_core.__version__}")


# %% [markdown]
# ### The problem on a picture
#
# Top row: what a weakly supervised method is given — an image and its image label. Bottom row: what
# we want from it, the true mask (VOC palette). The mask is used below only to *score* what the CAMs
# produce, never to train.

# %%
def label_names(label) -> str:
    return ", ".join(NAMES[c + 1] for c in np.flatnonzero(label)) or "(none)"


LABELS = eval_ds.image_labels().numpy()            # (N, C) image labels of the training split, from the XML
SHOW = []                                           # N_SHOW images, one per class in turn (random among those with it)
for k in range(min(N_SHOW, len(eval_ds))):
    cand = [i for i in np.flatnonzero(LABELS[:, k % C]) if i not in SHOW] or [i for i in range(len(eval_ds)) if i not in SHOW]
    SHOW.append(int(rng.choice(cand)))
SHOW = sorted(SHOW)
raws = [eval_ds.get_raw(i) for i in SHOW]
fig = viz.image_grid([[r["image"] for r in raws], [viz.overlay(r["image"], r["mask"]) for r in raws]],
                     row_titles=["given: image + label", "wanted: the mask"],
                     titles=[[label_names(r["label"]) for r in raws], [""] * len(raws)], size=1.7)
viz.class_legend(fig, NAMES, ignore=True)
display(fig)

# %% [markdown]
# ## 3 Theory
#
# **Classifier.** A backbone maps the image to features $f(x) \in \mathbb{R}^K$ at every location $x$
# of an $h \times w$ grid, $h = H / \text{stride}$ (here `wsss_core.models.backbones.CompactCNN`, whose
# output stride §4.1 prints; PSA uses ResNet-38 at stride 8, IRN ResNet-50 at stride 16). Global average
# pooling and a linear layer without bias (a 1 × 1 convolution with weights $w_c \in \mathbb{R}^K$,
# one per class) give the score of class $c$ (`CAMClassifier.forward`):
#
# $$s_c = w_c^\top \Big(\frac{1}{hw} \sum_x f(x)\Big) = \frac{1}{hw} \sum_x w_c^\top f(x). \tag{1}$$
#
# **Class activation map** (Zhou et al., 2016; with the ReLU of PSA's `forward_cam` and IRN's
# `CAM.forward`) — the summand of Eq. 1 kept as a map, negative evidence clipped (`CAMClassifier.cam`):
#
# $$\mathrm{CAM}_c(x) = \mathrm{ReLU}\big(w_c^\top f(x)\big). \tag{2}$$
#
# By Eq. 1 the spatial mean of the map *before* the ReLU is exactly the logit $s_c$: a location is
# bright when it raised the class score. §4 checks both identities numerically.
#
# **Loss.** With the image label $y \in \{0, 1\}^C$ (no background entry) and the sigmoid $\sigma$, the
# multi-label soft-margin loss of PSA's `train_cls.py` and IRN's `train_cam.py`
# (`wsss_core.models.cam.multilabel_loss`):
#
# $$\mathcal{L} = -\frac{1}{C} \sum_{c=1}^{C} \Big[ y_c \log \sigma(s_c) + (1 - y_c) \log\big(1 - \sigma(s_c)\big) \Big]. \tag{3}$$
#
# **Multi-scale, flipped inference** (PSA `infer_cls.py`, IRN `make_cam.py`; `wsss_core.cams.multiscale_cams`).
# For each scale $s \in S$ (PSA/IRN: $\{1, 0.5, 1.5, 2\}$) and each of the image and its mirror image
# $\phi$, compute Eq. 2, resize it bilinearly ($\mathcal{U}$) to the image size, undo the flip, **sum**;
# keep the classes of the label and divide each map by its maximum:
#
# $$A_c = \sum_{s \in S} \sum_{\phi \in \{\mathrm{id}, \mathrm{flip}\}} \phi^{-1}\Big(\mathcal{U}\big(\mathrm{CAM}_c(\phi(x_s))\big)\Big),
# \qquad M_c(x) = y_c \, \frac{A_c(x)}{\max_{x'} A_c(x') + 10^{-5}} \in [0, 1]. \tag{4}$$
#
# **Background.** There is no background class to train, so its score is made up. Either a constant
# (IRN's `cam_eval_thres` 0.15; PSA's and EPS's CAM evaluation 0.2):
#
# $$M_0(x) = \theta, \tag{5a}$$
#
# or PSA's power rule (Ahn & Kwak 2018, Eq. 3; `wsss_core.cams.background_power`), with $\alpha = 4$
# ("low", confident foreground), $32$ ("high", confident background; the paper's 24) and $16$ for the
# random walk:
#
# $$M_0(x) = \big(1 - \max_c M_c(x)\big)^{\alpha}. \tag{5b}$$
#
# **Pseudo-label** (`wsss_core.cams.cams_to_labels`, which stacks Eq. 5 in front of the maps with
# `wsss_core.cams.with_background`; ties go to background):
#
# $$\hat Y(x) = \arg\max_{c \in \{0\} \cup \{c : y_c = 1\}} M_c(x). \tag{6}$$
#
# Note that with Eq. 5b a pixel is background exactly when $(1 - m)^\alpha \ge m$ for
# $m = \max_c M_c(x)$, and $(1 - m)^\alpha - m$ decreases in $m$: for the arg-max, the power rule **is** a
# constant threshold $\theta(\alpha)$, the root of $(1 - \theta)^\alpha = \theta$. It matters as a *score*
# (PSA feeds it to a dense CRF, where its value, not just its rank, counts) — §4.4 checks the
# equivalence.
#
# **Measures** (`wsss_core.evaluation.LabelMapEvaluator`, pixels pooled over the training images,
# 255 skipped): mIoU (notebook 00, Eq. 7; swept over $\theta$ by `wsss_core.cams.threshold_sweep`);
# class-aware foreground precision and recall (`ConfusionMatrix.fg_precision`, `fg_recall`);
# **part** and **body recall** — the share of badge pixels, and of the other object pixels, given
# their correct class (`wsss_core.metrics.RegionStats`); the **context leak** of a pair (boat/water,
# train/rails) — in the images that contain the class, the share of the context region's pixels
# labelled as that class — next to the **background leak**, the same share for *ordinary* background
# (neither object nor any context) in the same images: same class, same images, same label maps, so
# their ratio isolates what co-occurrence adds; and EPS's
# **confusion ratio** $m_{k,c} / t_c$, context pixels labelled $c$ over true-positive pixels of $c$
# (`wsss_core.metrics.ConfusionRatio`).

# %% [markdown]
# ## 4 From scratch, then the library
#
# The identities hold for any weights, so an untrained classifier (seeded) and four training images
# are enough here; §5 trains the real one.
#
# ### 4.1 A CAM is the classifier applied at every location (Eq. 2)

# %%
engine.seed_everything(SEED)
toy_model = stage.build_model(cfg, C).eval()          # CAMClassifier(CompactCNN) with random weights
batch = collate_samples([eval_ds[i] for i in range(min(4, len(eval_ds)))])
x, y = batch["image"], batch["label"]                  # (B, 3, H, W) normalised, (B, C) multi-hot

with torch.no_grad():
    f = toy_model.features(x)                          # (B, K, h, w)
    w = toy_model.classifier.weight[:, :, 0, 0]        # (C, K): the 1×1 convolution's weights
    pre = torch.einsum("bkhw,ck->bchw", f, w)          # w_cᵀ f(x) at every location
    cam_scratch = torch.relu(pre)                      # Eq. 2
    cam_lib = toy_model.cam(x)
print(f"features {tuple(f.shape)}, weights {tuple(w.shape)} → CAMs {tuple(cam_scratch.shape)} "
      f"(stride {x.shape[-1] // f.shape[-1]})")
assert torch.allclose(cam_scratch, cam_lib, atol=1e-5), (cam_scratch - cam_lib).abs().max()
print("✓ einsum + ReLU == CAMClassifier.cam")

# %% [markdown]
# ### 4.2 The mean of the map before the ReLU is the logit (Eq. 1)

# %%
with torch.no_grad():
    logits = toy_model(x)                              # GAP, then the linear layer
print("logits          ", logits[0].numpy().round(4))
print("mean of w_cᵀf(x)", pre.mean(dim=(2, 3))[0].numpy().round(4))
print("mean of CAM_c   ", cam_scratch.mean(dim=(2, 3))[0].numpy().round(4), " (after the ReLU: ≥ the logit)")
assert torch.allclose(pre.mean(dim=(2, 3)), logits, atol=1e-5)
assert (cam_scratch.mean(dim=(2, 3)) >= logits - 1e-6).all()
print("✓ mean_x w_cᵀ f(x) == s_c: a CAM is the logit spread over the image")


# %% [markdown]
# ### 4.3 Multi-scale + flip, by hand for two scales (Eq. 4)

# %%
def multiscale_scratch(model, images, labels, scales):
    "Eq. 4 written out: sum over scales and flips of upsampled CAMs, label mask, max-normalisation."
    H, W = images.shape[-2:]
    total = torch.zeros(images.shape[0], labels.shape[1], H, W)
    for s in scales:
        xs = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        for flip in (False, True):
            cam = model.cam(xs.flip(-1) if flip else xs)                            # CAM_c(φ(x_s))
            cam = F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)   # U(·)
            total += cam.flip(-1) if flip else cam                                  # φ⁻¹(·), summed
    total = total * labels[:, :, None, None]                                        # present classes only
    return total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)                    # per-class max norm.


with torch.no_grad():
    ms_scratch = multiscale_scratch(toy_model, x, y, scales=(1.0, 0.5))
    ms_lib = wcams.multiscale_cams(toy_model, x, y, scales=(1.0, 0.5), flip=True)
print(f"multi-scale CAMs {tuple(ms_lib.shape)}, max over present classes "
      f"{ms_lib.amax(dim=(2, 3))[y.bool()].min():.4f}..{ms_lib.amax(dim=(2, 3))[y.bool()].max():.4f}, "
      f"absent classes all zero: {bool((ms_lib[~y.bool()] == 0).all())}")
assert torch.allclose(ms_scratch, ms_lib, atol=1e-5), (ms_scratch - ms_lib).abs().max()
print("✓ by hand == wsss_core.cams.multiscale_cams (scales 1, 0.5 with flips)")


# %% [markdown]
# ### 4.4 Background and pseudo-labels (Eqs. 5–6) on a 1 × 6 example
#
# One row of pixels, two present classes. The constant background $\theta = 0.3$ and the power rule
# with $\alpha = 4$; and the threshold $\theta(\alpha)$ that the power rule amounts to.

# %%
def alpha_to_threshold(alpha: float) -> float:
    "θ(α): the root of (1 − θ)^α = θ (bisection); the power background of Eq. 5b is the constant θ(α) for Eq. 6."
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - mid) ** alpha > mid else (lo, mid)
    return (lo + hi) / 2


M = np.array([[[0.05, 0.2, 0.6, 1.0, 0.3, 0.0]],      # class 1
              [[0.0, 0.1, 0.2, 0.4, 0.9, 0.25]]], np.float32)   # class 2 → (C=2, H=1, W=6)
lab = np.array([1, 1], np.float32)
print("max_c M_c         ", M.max(0)[0])
print("bg, power α=4     ", wcams.background_power(M, 4.0)[0].round(3))
print("labels, θ = 0.3   ", wcams.cams_to_labels(M, lab, threshold=0.3)[0])
print("labels, α = 4     ", wcams.cams_to_labels(M, lab, alpha=4.0)[0])
for a in (4, 16, 32):
    print(f"θ(α={a:>2}) = {alpha_to_threshold(a):.4f}")

# On real CAMs: the power rule and the constant θ(α) give the same labels (up to float rounding at the boundary)
same, total = 0, 0
for i in range(min(8, len(eval_ds))):
    Mi = wcams.multiscale_cams(toy_model, eval_ds[i]["image"][None], torch.as_tensor(eval_ds.get_raw(i)["label"])[None],
                               scales=(1.0,))[0].numpy()
    li = eval_ds.get_raw(i)["label"]
    a = wcams.cams_to_labels(Mi, li, alpha=16.0)
    b = wcams.cams_to_labels(Mi, li, threshold=alpha_to_threshold(16.0))
    same += int((a == b).sum())
    total += a.size
assert same / total > 0.9999, same / total
print(f"✓ α = 16 and θ = θ(16) agree on {same / total:.4%} of {total} pixels")

# %% [markdown]
# ## 5 Run it
#
# ### 5.1 Train the classifier
#
# `stage.train_classifier` runs the project's training loop (`wsss_core.engine.train`): the loss of
# Eq. 3 on random crops with flips, Adam with a one-cycle schedule for the compact CNN (the paper
# profile: IRN's SGD recipe on a ResNet-50), a checkpoint after every epoch, and the validation mAP
# after every epoch. A finished checkpoint in the same folder is reloaded instead of retrained.

# %%
existed = (CKPT_DIR / engine.CHECKPOINT_NAME).is_file()
t0 = time.perf_counter()
try:
    model, history = stage.train_classifier(cfg, train_ds, CKPT_DIR, val_ds=val_ds)
except engine.CheckpointMismatchError as e:
    raise RuntimeError(
        f"{rel(CKPT_DIR)} holds a checkpoint written under a different training configuration (listed "
        "below). This notebook never reuses such a checkpoint silently, because its CAMs would not be the "
        "ones this configuration produces. Delete that folder (or change OUT_DIR) and run the cell again.\n"
        + str(e)) from e
wall = time.perf_counter() - t0
train_seconds = float(sum(r["seconds"] for r in history.epochs))
if existed and wall < 0.5 * train_seconds:
    print(f"reused the finished checkpoint {rel(CKPT_DIR)} (it trained in {train_seconds:.0f} s)")
else:
    print(f"trained {len(history.epochs)} epochs in {train_seconds:.0f} s ({wall:.0f} s with validation)")

# %%
fig = Figure(figsize=(10, 3.0), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
history.plot(ax=ax1, keys=("loss",), smooth=0.1)
ax1.set(title="multi-label soft-margin loss (Eq. 3)", ylabel="loss")
ex, ey = history.series("val_map", "epochs")
ax2.plot(np.arange(1, len(ey) + 1), ey, "o-", color="tab:green", label="validation mAP")
ax2.axhline(cfg.min_val_map, color="tab:red", ls="--", lw=1, label=f"trust threshold {cfg.min_val_map}")
ax2.set(xlabel="epoch", ylabel="mAP", title="validation mAP per epoch", ylim=(0, 1.02))
ax2.legend(fontsize=8)
ax2.grid(alpha=0.3)
display(fig)

# %% [markdown]
# ### 5.2 Is the classifier good enough to explain?
#
# A CAM explains a classifier's decision; if the decision is poor, so is the explanation. Below: the
# average precision of every class on the validation split (`stage.classification_report`).

# %%
cls = stage.classification_report(model, val_ds)
val_labels = val_ds.image_labels().numpy()
display(Markdown("| class | AP (val) | val images with it |\n|---|---:|---:|\n" + "\n".join(
    f"| {name} | {ap:.3f} | {int(val_labels[:, c].sum())} |" for c, (name, ap) in enumerate(cls["per_class_ap"].items()))
    + f"\n| **mean (mAP)** | **{cls['map']:.3f}** | {len(val_ds)} |"))
if cls["map"] < cfg.min_val_map:
    print("!" * 100)
    print(f"WARNING: validation mAP {cls['map']:.3f} is below {cfg.min_val_map} — this classifier is weak, and the CAMs of a\n"
          "weak classifier are not trustworthy: they show whatever it latched onto (often the context — water,\n"
          "rails — instead of the badges), and every number below describes that, not the CAM method.\n"
          "What to do: train longer (EPOCHS = 20 or 25; the badges are learned late, after a jump in accuracy),\n"
          "or try another SEED, then run the notebook again.")
    print("!" * 100)
elif cfg.min_val_map <= 0:
    print(f"validation mAP {cls['map']:.3f}: the {PROFILE} profile sets no minimum — it only proves that the code runs; "
          "do not read anything into its CAMs (run PROFILE = 'tutorial' for that)")
else:
    print(f"validation mAP {cls['map']:.3f} ≥ {cfg.min_val_map}: the classifier is good enough for its CAMs to be worth studying")

# %% [markdown]
# ### 5.3 Make the CAMs
#
# Eq. 4 for every training image (`stage.make_cams`): one `.npz` per image under `cams/`, maps at
# full resolution for the present classes only (like IRN's `high_res`). Existing maps made by the same
# classifier with the same scales are kept.

# %%
cam_seconds, reused = stage.ensure_cams(model, eval_ds, CAM_DIR, cfg, CKPT_DIR.name)
if reused:
    print(f"reused the CAMs in {rel(CAM_DIR)} (made in {cam_seconds:.0f} s)")
else:
    n_pass = len(cfg.cam_scales) * (2 if cfg.cam_flip else 1)
    print(f"made CAMs of {len(eval_ds)} images × {n_pass} passes in {cam_seconds:.0f} s → {rel(CAM_DIR)}")


def load(i):
    "CAMs (C, H, W) in [0, 1], label (C,) and the raw sample (image, mask, part/context masks) of training image i."
    raw = eval_ds.get_raw(i)
    M_i, lab_i = wcams.load_cams(CAM_DIR / f"{raw['id']}.npz")
    return M_i, lab_i, raw


report = stage.evaluate_cams(CAM_DIR, eval_ds, cfg, data.context_pairs, progress=True)   # threshold sweep, §7
BEST = report["best_threshold"]
print(f"best background threshold θ* = {BEST} (mIoU {report['miou']:.3f}; §7 explains how it was chosen)")

# %% [markdown]
# ## 6 Look at it
#
# Each row: the image, its true mask, the pseudo-label at the best threshold $\theta^*$ (Eq. 6), and the
# CAM $M_c$ of every class in its label (Eq. 4, blue 0 → red 1). White outlines: the **badges** of that
# class (`PartMask/`); the cross: the CAM's maximum.

# %%
KERNEL3 = np.ones((3, 3), np.uint8)


def outline(image, m, colour=(255, 255, 255)):
    "Draw the 1-px outline of the (H, W) bool mask `m` on a copy of `image`."
    out = image.copy()
    m = np.asarray(m, bool)
    out[m & ~(cv2.erode(m.astype(np.uint8), KERNEL3) > 0)] = colour
    return out


def cam_row(i, threshold):
    "Cells, titles and CAM peaks (col, (y, x)) for one row of the CAM figure."
    M_i, lab_i, raw = load(i)
    pl = wcams.cams_to_labels(M_i, lab_i, threshold=threshold)
    cells = [raw["image"], viz.overlay(raw["image"], raw["mask"]), viz.overlay(raw["image"], pl)]
    titles = [f"{raw['id']}\n{label_names(lab_i)}", "true mask", f"pseudo-label θ={threshold:g}"]
    peaks = []
    for c in np.flatnonzero(lab_i):
        hm = viz.heatmap(raw["image"], M_i[c])
        if "part_mask" in raw:
            hm = outline(hm, raw["part_mask"] == c + 1)
        peaks.append((len(cells), np.unravel_index(np.argmax(M_i[c]), M_i[c].shape)))
        cells.append(hm)
        titles.append(f"CAM {NAMES[c + 1]}")
    return cells, titles, peaks


rows, titles, peaks = zip(*[cam_row(i, BEST) for i in SHOW])
fig = viz.image_grid(list(rows), titles=list(titles), size=1.75)
ncols = max(len(r) for r in rows)
for r, row_peaks in enumerate(peaks):
    for col, (py, px) in row_peaks:
        fig.axes[r * ncols + col].plot([px], [py], "x", color="white", ms=7, mew=2)
viz.class_legend(fig, NAMES, ignore=True)
fig.savefig(OUT / "cams.png")
display(fig)

# %% [markdown]
# What to look for: in most images each CAM's maximum (the cross) sits on or next to a badge of its
# class (§7.2 counts how often), and the map fades with the distance from it. The classifier found
# the cheapest evidence for the label, the badge, and the CAM shows that evidence, not the object. The
# pseudo-label therefore covers the badge and a blob around it, a blob whose size is set by the
# coarse feature grid and the receptive field rather than by the object's outline. Bodies far from their badge are missed; where water or rails are present, look
# for CAM mass on them. §7 counts all of this over the whole training split.
#
# ### Explore
#
# Browse the training images and the two background rules (in a live Jupyter session; an executed copy
# shows the default setting). In *power* mode the threshold slider is unused and the title gives the
# equivalent constant $\theta(\alpha)$ of §3.

# %%
MODES = ["constant θ (Eq. 5a)", "power (1 − max M)^α (Eq. 5b)"]


def render(index, mode, threshold, alpha):
    M_i, lab_i, raw = load(index)
    if mode == MODES[0]:
        bg = np.full(M_i.shape[1:], threshold, np.float32)
        pl = wcams.cams_to_labels(M_i, lab_i, threshold=threshold)
        rule = f"θ = {threshold:.2f}"
    else:
        bg = wcams.background_power(M_i, alpha)
        pl = wcams.cams_to_labels(M_i, lab_i, alpha=alpha)
        rule = f"α = {alpha} (≡ θ = {alpha_to_threshold(alpha):.3f})"
    cm = ConfusionMatrix(C + 1).update(pl, raw["mask"])
    fig = viz.image_grid([[raw["image"], viz.overlay(raw["image"], raw["mask"]), viz.heatmap(raw["image"], M_i.max(0)),
                           bg, viz.overlay(raw["image"], pl)]],
                         titles=[[f"{raw['id']}: {label_names(lab_i)}", "true mask", "max_c M_c (blue 0, red 1)",
                                  "background score M_0\n(black 0, white 1)", f"pseudo-label, {rule}\nimage mIoU {cm.miou():.2f}"]],
                         size=2.2)
    return fig


widgets.explore(render, index=(0, len(eval_ds) - 1, 1, int(SHOW[0])), mode=MODES,
                threshold=(0.05, 0.95, 0.05, float(BEST)), alpha=(1, 64, 1, 16));

# %% [markdown]
# ## 7 Measure it
#
# ### 7.1 The background threshold
#
# `stage.evaluate_cams` labels every training image at each threshold $\theta$ of a sweep and keeps the
# one with the best mIoU, $\theta^*$. That choice **uses the ground truth**: it is an *oracle*. The papers
# report CAM quality in the same spirit — on the training images, with one background constant that
# suits them (IRN 0.15, PSA 0.2). The
# non-oracle figure is the mIoU at the profile's fixed threshold (`cfg.eval_threshold`, IRN's 0.15).
# One pass over the CAMs below also scores the fixed threshold, PSA's power rule with $\alpha = 16$,
# and where each CAM's maximum lies.

# %%
ALPHA = 16.0                                     # PSA's α for the random walk (notebook 02)
TH = np.asarray(cfg.thresholds, np.float32)
ev_fixed = LabelMapEvaluator(C, data.context_pairs, NAMES)
ev_alpha = LabelMapEvaluator(C, data.context_pairs, NAMES)
sweep_mats = np.zeros((len(TH), C + 1, C + 1), np.int64)
peak_dist = []                                   # distance (px) from each CAM's maximum to its class's nearest badge
for i in tqdm(range(len(eval_ds)), desc="score CAMs"):
    M_i, lab_i, raw = load(i)
    ev_fixed.update_from_sample(wcams.cams_to_labels(M_i, lab_i, threshold=cfg.eval_threshold), raw)
    ev_alpha.update_from_sample(wcams.cams_to_labels(M_i, lab_i, alpha=ALPHA), raw)
    sweep_mats += wcams.threshold_sweep([(M_i, lab_i, raw["mask"])], C, TH)
    if "part_mask" in raw:
        for c in np.flatnonzero(lab_i):
            badge = raw["part_mask"] == c + 1
            if badge.any():
                dist = cv2.distanceTransform((~badge).astype(np.uint8), cv2.DIST_L2, 5)
                peak_dist.append(float(dist.flat[np.argmax(M_i[c])]))
fixed, alpha_rep = ev_fixed.summary(), ev_alpha.summary()
peak_dist = np.array(peak_dist)
PEAK_PX = 4
peak_on_badge = float(np.mean(peak_dist <= PEAK_PX)) if peak_dist.size else math.nan

tp = np.stack([np.diag(m)[1:].sum() for m in sweep_mats])
fg_prec = tp / np.maximum(sweep_mats[:, :, 1:].sum(axis=(1, 2)), 1)
fg_rec = tp / np.maximum(sweep_mats[:, 1:, :].sum(axis=(1, 2)), 1)
sweep_miou = wcams.miou_from_confusion(sweep_mats)
assert np.isclose(sweep_miou.max(), report["miou"])                    # the library's sweep and ours agree
assert np.isclose(fixed["miou"], report["sweep"].get(cfg.eval_threshold, fixed["miou"]))

fig = Figure(figsize=(10, 3.0), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
viz.plot_sweep(report["sweep"], best=BEST, ax=ax1, label="CAM pseudo-labels (train)")
ax1.axvline(cfg.eval_threshold, color="0.4", ls="--", lw=1)
lo_, hi_ = ax1.get_ylim()
ax1.text(cfg.eval_threshold, lo_ + 0.02 * (hi_ - lo_), f" fixed θ={cfg.eval_threshold:g}", fontsize=7, va="bottom")
ax1.axvline(alpha_to_threshold(ALPHA), color="tab:purple", ls=":", lw=1)
ax1.text(alpha_to_threshold(ALPHA), lo_ + 0.12 * (hi_ - lo_), f"θ(α={ALPHA:g}) ", fontsize=7, va="bottom", ha="right",
         color="tab:purple")
ax1.set_title("mIoU vs background threshold (★ = oracle θ*)")
ax2.plot(TH, fg_prec, "-o", ms=3, label="foreground precision")
ax2.plot(TH, fg_rec, "-o", ms=3, label="foreground recall")
ax2.axvline(BEST, color="k", lw=0.8)
ax2.set(xlabel="background threshold", title="low θ: more object, less precise; high θ: precise, objects shrink", ylim=(0, 1.02))
ax2.grid(alpha=0.3)
ax2.legend(fontsize=8)
fig.savefig(OUT / "threshold_sweep.png")
display(fig)
print(f"oracle θ* = {BEST}: mIoU {report['miou']:.3f}   |   fixed θ = {cfg.eval_threshold}: mIoU {fixed['miou']:.3f}   |   "
      f"power α = {ALPHA:g} (≡ θ {alpha_to_threshold(ALPHA):.3f}): mIoU {alpha_rep['miou']:.3f}")


# %% [markdown]
# ### 7.2 What the pseudo-labels get right and wrong

# %%
def g(d, k):
    v = d.get(k, math.nan)
    return math.nan if v is None else v


def f3(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


settings = {f"oracle θ* = {BEST:g}": report, f"fixed θ = {cfg.eval_threshold:g}": fixed,
            f"power α = {ALPHA:g}": alpha_rep}
keys = [("mIoU", "miou"), ("foreground precision", "fg_precision"), ("foreground recall", "fg_recall"),
        ("part (badge) recall", "part_recall"), ("body recall", "body_recall"),
        ("context leak (water+rails → its class)", "context_leak"), ("background leak (ordinary bg → that class)", "background_leak")]
lines = ["| measure | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
lines += [f"| {name} | " + " | ".join(f3(g(s, k)) for s in settings.values()) + " |" for name, k in keys]
for pair in report.get("context_leak_per_pair", {}):
    lines.append(f"| leak {pair} | " + " | ".join(f3(s["context_leak_per_pair"][pair]) for s in settings.values()) + " |")
    lines.append(f"| ordinary background → {pair.split('/')[0]} | " + " | ".join(f3(s["background_leak_per_pair"][pair]) for s in settings.values()) + " |")
    lines.append(f"| confusion ratio {pair} (EPS) | " + " | ".join(f3(s["confusion_ratio"][pair]) for s in settings.values()) + " |")
lines.append(f"| CAM maximum ≤ {PEAK_PX} px from a badge of its class | {f3(peak_on_badge)} | | |")
display(Markdown("\n".join(lines)))
display(Markdown("Per-class IoU at θ*:\n\n| " + " | ".join(report["per_class_iou"]) + " |\n|" + "---:|" * (C + 1) + "\n| "
                 + " | ".join(f3(v) for v in report["per_class_iou"].values()) + " |"))

# %%
if TOY:
    fig = Figure(figsize=(10, 2.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    viz.bar_table({"badge pixels": report["part_recall"], "body pixels": report["body_recall"]}, ax=ax1,
                  title=f"recall of object pixels at θ* = {BEST:g}", color=["tab:red", "tab:blue"], xlim=(0, 1.15))
    leaks = {}
    for p, v in report["context_leak_per_pair"].items():
        cls_name, ctx_name = p.split("/")
        leaks[f"{ctx_name} → {cls_name}"] = v
        leaks[f"other bg → {cls_name}"] = report["background_leak_per_pair"][p]
    viz.bar_table(leaks, ax=ax2, title="share labelled as the class (images with the class)",
                  color=["tab:purple", "tab:gray"] * (len(leaks) // 2))
    fig.savefig(OUT / "coverage_and_leak.png")
    display(fig)
    print(f"badge pixels are recalled {report['part_recall'] / max(report['body_recall'], 1e-9):.1f}× as often as body pixels; "
          f"water and rails are labelled as their class {report['context_leak'] / max(report['background_leak'], 1e-9):.1f}× as "
          f"often as ordinary background in the same images; {peak_on_badge:.0%} of the CAM maxima lie within "
          f"{PEAK_PX} px of a badge of their class")

# %% [markdown]
# ### 7.3 Next to the papers, and saved for the next notebooks
#
# The papers' numbers are CAM pseudo-label mIoU on PASCAL VOC 2012 *train* (1 464 images, 21 classes,
# ResNets pretrained on ImageNet, GPUs). Ours come from small toy scenes and a small CNN trained from
# scratch on a CPU (sizes printed below): **not comparable in absolute terms**. What carries over is
# the pattern — CAMs precise on discriminative parts, incomplete on bodies, leaking onto co-occurring
# context — and the order of the methods in the following notebooks.

# %%
PAPERS = [  # CAM-only pseudo-label mIoU (%) on VOC 2012 train (PSA README, IRN issue #4, EPS README)
    ("PSA", "CAM, PSA (Ahn & Kwak, CVPR 2018)", "ResNet-38, VOC train, θ 0.2", 48.0),
    ("IRN", "CAM, IRN (Ahn et al., CVPR 2019)", "ResNet-50, VOC train, θ 0.15", 48.3),
    ("EPS baseline", "CAM baseline of EPS (Lee et al., CVPR 2021)", "ResNet-38, VOC train", 47.05),
]
rows = [f"| {n} | {w} | {v} |" for _, n, w, v in PAPERS]
rows += [f"| **ours**, oracle θ* = {BEST:g} | {cfg.backbone} CNN, toy {EVAL_SPLIT} ({len(eval_ds)} images), {PROFILE} | **{100 * report['miou']:.1f}** |",
         f"| **ours**, fixed θ = {cfg.eval_threshold:g} | same | **{100 * fixed['miou']:.1f}** |",
         f"| **ours**, power α = {ALPHA:g} | same | **{100 * alpha_rep['miou']:.1f}** |"]
display(Markdown("| CAM pseudo-labels | setting | mIoU (%) |\n|---|---|---:|\n" + "\n".join(rows)))
H_img, W_img = eval_ds.get_raw(0)["mask"].shape
print(f"ours: {len(eval_ds)} images of {H_img}×{W_img} px, {C + 1} classes with background; "
      f"classifier with {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters trained from scratch on "
      f"{engine.select_device(DEVICE)}")

metrics = {
    "cls_map": cls["map"],
    "cls_per_class_ap": cls["per_class_ap"],
    "cam_miou": report["miou"],
    "cam_best_threshold": BEST,
    "cam_fg_precision": report["fg_precision"],
    "cam_fg_recall": report["fg_recall"],
    "cam_part_recall": g(report, "part_recall"),
    "cam_body_recall": g(report, "body_recall"),
    "cam_context_leak": g(report, "context_leak"),
    "cam_background_leak": g(report, "background_leak"),
    "cam_context_leak_per_pair": report.get("context_leak_per_pair", {}),
    "cam_background_leak_per_pair": report.get("background_leak_per_pair", {}),
    "cam_background_fg_share": g(report, "background_fg_share"),
    "cam_confusion_ratio": report.get("confusion_ratio", {}),
    "cam_per_class_iou": report["per_class_iou"],
    "cam_eval_threshold": cfg.eval_threshold,
    "cam_miou_at_eval_threshold": fixed["miou"],
    "cam_alpha": ALPHA,
    "cam_miou_alpha": alpha_rep["miou"],
    "cam_peak_on_badge": peak_on_badge,
    "cam_sweep": report["sweep"],
    "epochs": cfg.train.epochs,
    "n_images": len(eval_ds),
    "train_seconds": train_seconds,
    "cam_seconds": cam_seconds,
}
stage.write_metrics(OUT / "metrics.json", metrics)
(OUT / "cam_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
stage.save_pseudo_labels(CAM_DIR, eval_ds, LABEL_DIR, threshold=BEST)
print(f"written: {rel(OUT / 'metrics.json')}, {rel(OUT / 'cam_config.json')}, "
      f"{len(list(LABEL_DIR.glob('*.png')))} pseudo-labels at θ* = {BEST:g} in {rel(LABEL_DIR)}")

# %% [markdown]
# ## 8 What goes wrong
#
# ### 8.1 Co-occurrence: the boat's CAM spills onto the water
#
# Water comes with almost every boat, so "water" is evidence for "boat" as far as the image label is
# concerned. Below, among the training images with a boat on water (and a train on rails), the one
# whose CAM puts the most mass on water (rails) *far from any object* — more than `FAR` pixels away,
# so that it cannot be the blur of the coarse feature grid around the object. The water (rails) is outlined in
# white. The CAM is drawn twice: on its full scale, and on a scale that saturates at `LOW_SCALE`, so
# that weak activations show. The table compares the class's CAM on far context with the same CAM on
# ordinary background equally far from every object, in the same images.

# %%
FAR = 12          # px: 1.5 cells of the stride-8 feature map
LOW_SCALE = 0.3   # a second colour scale for the CAM, 0 → LOW_SCALE, to make weak activations visible
REGIONS = ["object", "context, near", "context, far", "ordinary bg, near", "ordinary bg, far"]
co = {}
if TOY and data.context_pairs:
    for pair, (c, k) in data.context_pairs.items():
        vals = {r: [] for r in REGIONS}
        best_i, best_mass, n_img = None, -1.0, 0
        for i in np.flatnonzero(LABELS[:, c - 1]):          # images labelled with the class
            M_i, lab_i, raw = load(int(i))
            ctx = raw["context_mask"] == k
            if not ctx.any():
                continue
            n_img += 1
            bg = raw["mask"] == 0
            plain = raw["context_mask"] == 0
            far = cv2.distanceTransform(bg.astype(np.uint8), cv2.DIST_L2, 5) > FAR   # > FAR px from every object / 255 pixel
            m = M_i[c - 1]
            sel = {"object": raw["mask"] == c, "context, near": ctx & bg & ~far, "context, far": ctx & bg & far,
                   "ordinary bg, near": plain & bg & ~far, "ordinary bg, far": plain & bg & far}
            for r in REGIONS:
                vals[r].append(m[sel[r]])
            if m[sel["context, far"]].sum() > best_mass:
                best_i, best_mass = int(i), float(m[sel["context, far"]].sum())
        co[pair] = dict(images=n_img, example=best_i,
                        values={r: np.concatenate(v) if v else np.zeros(0) for r, v in vals.items()})

    def share(v, t):
        return float((v > t).mean()) if v.size else math.nan

    def mean(v):
        return float(v.mean()) if v.size else math.nan

    lines = [f"| pair (images) | region | pixels | mean CAM of the class | share > θ* = {BEST:g} | share > θ = {cfg.eval_threshold:g} |",
             "|---|---|---:|---:|---:|---:|"]
    for pair, st in co.items():
        for r in REGIONS:
            v = st["values"][r]
            lines.append(f"| {pair} ({st['images']}) | {r} | {v.size} | {f3(mean(v))} | {f3(share(v, BEST))} | "
                         f"{f3(share(v, cfg.eval_threshold))} |")
    display(Markdown("\n".join(lines)))

    rows, titles = [], []
    for pair, st in co.items():
        if st["example"] is None:
            continue
        c, k = data.context_pairs[pair]
        kname = pair.split("/")[1]
        M_i, lab_i, raw = load(st["example"])
        ctx = raw["context_mask"] == k
        far_ctx = ctx & (raw["mask"] == 0) & (cv2.distanceTransform((raw["mask"] == 0).astype(np.uint8), cv2.DIST_L2, 5) > FAR)
        rows.append([raw["image"], outline(viz.overlay(raw["image"], raw["mask"]), ctx),
                     outline(viz.heatmap(raw["image"], M_i[c - 1]), ctx),
                     outline(viz.heatmap(raw["image"], np.clip(M_i[c - 1] / LOW_SCALE, 0, 1)), ctx),
                     outline(viz.overlay(raw["image"], wcams.cams_to_labels(M_i, lab_i, threshold=BEST)), ctx),
                     outline(viz.overlay(raw["image"], wcams.cams_to_labels(M_i, lab_i, threshold=cfg.eval_threshold)), ctx)])
        titles.append([f"{raw['id']}: {label_names(lab_i)}", f"true mask, {kname} outlined", f"CAM {NAMES[c]} (scale 0–1)",
                       f"same, scale 0–{LOW_SCALE:g}\nfar {kname}: mean {mean(M_i[c - 1][far_ctx]):.2f}",
                       f"pseudo-label θ* = {BEST:g}", f"pseudo-label θ = {cfg.eval_threshold:g}"])
    if rows:
        fig = viz.image_grid(rows, titles=titles, size=2.1)
        fig.savefig(OUT / "co_occurrence.png")
        display(fig)

    # Can a threshold separate the context from the object? Share of each region's pixels whose class CAM exceeds θ.
    STYLE = {"object": ("tab:green", "-"), "context, near": ("tab:purple", "-"), "context, far": ("tab:purple", "--"),
             "ordinary bg, near": ("tab:gray", "-"), "ordinary bg, far": ("tab:gray", "--")}
    fig = Figure(figsize=(4.4 * len(co), 2.8), layout="constrained")
    for ax, (pair, st) in zip(np.atleast_1d(fig.subplots(1, len(co))), co.items()):
        cname, kname = pair.split("/")
        for r in REGIONS:
            v = st["values"][r]
            if v.size:
                col, ls = STYLE[r]
                ax.plot(TH, [share(v, t) for t in TH], ls, marker="o", ms=2.5, color=col,
                        label=r.replace("object", f"{cname} pixels").replace("context", kname))
        ax.axvline(BEST, color="k", lw=0.8)
        ax.axvline(cfg.eval_threshold, color="0.4", ls=":", lw=0.8)
        ax.set(xlabel="background threshold θ", ylabel=f"share with CAM {cname} > θ",
               title=f"{pair}: near = ≤ {FAR} px from an object", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(OUT / "co_occurrence_threshold.png")
    display(fig)

    for pair, st in co.items():
        v = st["values"]
        cf, bf = mean(v["context, far"]), mean(v["ordinary bg, far"])
        print(f"{pair}: far from objects, the class CAM averages {cf:.3f} on {pair.split('/')[1]} vs {bf:.3f} on ordinary "
              f"background ({cf / max(bf, 1e-9):.1f}×); above θ* = {BEST:g}: {share(v['context, far'], BEST):.1%} vs "
              f"{share(v['ordinary bg, far'], BEST):.1%}, above θ = {cfg.eval_threshold:g}: "
              f"{share(v['context, far'], cfg.eval_threshold):.1%} vs {share(v['ordinary bg, far'], cfg.eval_threshold):.1%}; "
              f"near objects, above θ*: {share(v['context, near'], BEST):.1%} vs {share(v['ordinary bg, near'], BEST):.1%}")
    metrics["cam_far_context_activation"] = {p: mean(st["values"]["context, far"]) for p, st in co.items()}
    metrics["cam_far_background_activation"] = {p: mean(st["values"]["ordinary bg, far"]) for p, st in co.items()}
    stage.write_metrics(OUT / "metrics.json", metrics)
else:
    print("no context regions in this data set (the toy scenes have them): skipped")


# %% [markdown]
# How to read this. The **far** rows say whether the classifier has *learned* the context as evidence:
# a class CAM clearly higher on far water than on far ordinary background means water alone raises
# the boat score — the co-occurrence of the image labels has become a feature. Whether that turns into
# wrong pseudo-labels depends on the threshold: far away, the context's weak activation crosses a low
# threshold (IRN's fixed one, dotted) more often than the oracle $\theta^*$; near the object, the CAM's
# blob spills onto water *and* onto ordinary background, and the near rows say whether it spills
# further onto the context. No threshold removes the context alone: raising $\theta$ removes context
# pixels and the object's own pixels (green) together. The context-leak and confusion-ratio rows of
# §7.2 are the resulting pixel counts. EPS (notebook 05) attacks this with a saliency map that says
# water is not salient, so it cannot be an object.
#
# ### 8.2 The threshold pushed too far
#
# One image at four constant thresholds (top) and four values of $\alpha$ (bottom; $\theta(\alpha)$ in the
# titles). Too low a threshold (or too large an $\alpha$) and the blob around each badge grows over the
# background; too high (or too small an $\alpha$) and the objects shrink to their badges or vanish. The
# precision/recall curve of §7.1 shows the same trade-off over the whole training split.

# %%
def pick_example():
    "The first of the shown images with at least two present classes, else the first shown image."
    for i in SHOW:
        if eval_ds.get_raw(i)["label"].sum() >= 2:
            return i
    return SHOW[0]


EX = pick_example()
M_i, lab_i, raw = load(EX)
settings_t = [0.05, BEST, 0.5, 0.8]
settings_a = [64.0, 16.0, 4.0, 1.0]


def cell(pl):
    cm = ConfusionMatrix(C + 1).update(pl, raw["mask"])
    return viz.overlay(raw["image"], pl), f"P {cm.fg_precision():.2f} R {cm.fg_recall():.2f}"


row_t = [cell(wcams.cams_to_labels(M_i, lab_i, threshold=t)) for t in settings_t]
row_a = [cell(wcams.cams_to_labels(M_i, lab_i, alpha=a)) for a in settings_a]
fig = viz.image_grid(
    [[viz.overlay(raw["image"], raw["mask"])] + [c for c, _ in row_t], [raw["image"]] + [c for c, _ in row_a]],
    titles=[["true mask"] + [f"θ = {t:g}{' (θ*)' if t == BEST else ''}\n{s}" for t, (_, s) in zip(settings_t, row_t)],
            [label_names(lab_i)] + [f"α = {a:g} (θ {alpha_to_threshold(a):.2f})\n{s}" for a, (_, s) in zip(settings_a, row_a)]],
    size=1.9)
fig.savefig(OUT / "threshold_extremes.png")
display(fig)
j_lo, j_hi = int(np.argmin(np.abs(TH - 0.05))), int(np.argmin(np.abs(TH - 0.8)))
print(f"whole training split — θ = {TH[j_lo]:g}: fg precision {fg_prec[j_lo]:.2f}, recall {fg_rec[j_lo]:.2f}, mIoU {sweep_miou[j_lo]:.3f}; "
      f"θ* = {BEST:g}: mIoU {report['miou']:.3f}; θ = {TH[j_hi]:g}: precision {fg_prec[j_hi]:.2f}, recall {fg_rec[j_hi]:.2f}, "
      f"mIoU {sweep_miou[j_hi]:.3f}")


# %% [markdown]
# ## 9 Exercises
#
# **Exercise 1 — CAMs from features (Eq. 2).** Write `cam_from_features(features, weights)`:
# `features` is a `(B, K, h, w)` tensor, `weights` a `(C, K)` tensor; return the `(B, C, h, w)` ReLU
# CAMs. §4.1 used `einsum`; do it *without* `einsum` — as a matrix product over the flattened
# positions, or as a 1 × 1 convolution.

# %%
def cam_from_features(features, weights):
    "features (B, K, h, w), weights (C, K) → ReLU(w_cᵀ f(x)) as (B, C, h, w)."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_1 = exercises.check("cam_from_features", cam_from_features, use_solution=USE_SOLUTIONS)


# %% [markdown]
# **Exercise 2 — PSA's background score (Eq. 5b).** Write `background_power(cams, alpha)`: `cams` is a
# `(C, H, W)` tensor of values in $[0, 1]$; return the `(H, W)` map $(1 - \max_c M_c)^\alpha$.

# %%
def background_power(cams, alpha):
    "cams (C, H, W) in [0, 1] → (1 − max_c cams)^alpha, shape (H, W)."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_2 = exercises.check("background_power", background_power, use_solution=USE_SOLUTIONS)


# %% [markdown]
# **Exercise 3 — pseudo-labels (Eq. 6).** Write `cams_to_labels(cams, label, threshold)`: `cams` is a
# `(C, H, W)` numpy array, `label` a `(C,)` multi-hot vector, `threshold` the constant background score.
# Return the `(H, W)` int64 map with 0 = background and `c + 1` for channel `c`; classes absent from
# `label` must never win, and a tie between the background and a class goes to the background.

# %%
def cams_to_labels(cams, label, threshold):
    "cams (C, H, W), label (C,), threshold float → (H, W) int64 labels 0..C."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_3 = exercises.check("cams_to_labels", cams_to_labels, use_solution=USE_SOLUTIONS)

# %% [markdown]
# **Exercise 4 — open: what sets the blob size?** The pseudo-labels of §6 are blobs around the badges.
# Predict first: with a *finer* feature map (output stride 4 instead of 8), will the body recall go up
# or down, and the part recall? What about a classifier trained for *fewer* epochs?
# Then test it — each run trains a new classifier in its own folder (the folder name fingerprints the
# config), e.g.
#
# ```python
# cfg4 = cfg.replace(backbone_kwargs={**cfg.backbone_kwargs, "output_stride": 4})
# # or: cfg.replace(train=cfg.train.replace(epochs=6))
# ```
#
# train it with `stage.train_classifier(cfg4, train_ds, <a new folder>, val_ds=val_ds)`, make its CAMs
# into another folder with `stage.make_cams`, and compare `stage.evaluate_cams(...)`'s `part_recall`,
# `body_recall`, `context_leak` and mIoU with the table of §7.2 (a stride-4 model takes longer: its
# last stage runs at twice the resolution). Explain what you see with Eq. 2: what is the spatial
# resolution of a CAM, and what decides how far from the badge the map stays high?
#
# **Exercise 5 — open: a better threshold rule?** The oracle $\theta^*$ needs ground truth. Propose a
# rule that does not — e.g. a per-image threshold from the CAM values themselves (Otsu's method on
# $\max_c M_c$, or a fixed share of each map's maximum per class) — implement it with
# `wsss_core.cams.with_background` or by hand, and compare its mIoU with the fixed and oracle
# thresholds of §7.1.

# %% [markdown]
# ## 10 Summary and pointers
#
# * A GAP classifier's last layer, applied at every location before the pooling, is a **class
#   activation map** (Eq. 2); its spatial mean is the class score (Eq. 1, checked in §4.2).
# * PSA and IRN compute it over 4 scales and flips, normalise each class by its maximum (Eq. 4), and
#   turn it into a pseudo-label with a made-up background score (Eqs. 5–6). The power background of
#   PSA is, for the arg-max, a constant threshold in disguise (§4.4).
# * The threshold matters a lot (§7.1, §8.2) and its best value is usually reported as an oracle.
# * CAMs are **precise but incomplete**: they peak on the discriminative badge and fade over the
#   body; and they **leak** onto co-occurring context (§7.2, §8.1).
#
# The numbers of this run next to the papers' (toy data, tiny CNN, CPU — compare the pattern, not the
# absolute values):

# %%
summary = [("classifier validation mAP", f"{cls['map']:.3f}", "–"),
           ("CAM mIoU, oracle θ*", f"{100 * report['miou']:.1f} (θ* = {BEST:g})", " · ".join(f"{v} ({short})" for short, _, _, v in PAPERS)),
           (f"CAM mIoU, fixed θ = {cfg.eval_threshold:g}", f"{100 * fixed['miou']:.1f}", "–"),
           ("part / body recall", f"{f3(g(report, 'part_recall'))} / {f3(g(report, 'body_recall'))}", "– (VOC has no part masks)"),
           ("context leak / background leak", f"{f3(g(report, 'context_leak'))} / {f3(g(report, 'background_leak'))}", "– (EPS reports confusion ratios)"),
           ("training / CAM time", f"{train_seconds:.0f} s / {cam_seconds:.0f} s ({engine.select_device(DEVICE)})", "GPU hours")]
for pair, st in co.items():
    summary.insert(-1, (f"mean {pair.split('/')[0]} CAM far from objects: on {pair.split('/')[1]} / on ordinary bg",
                        f"{f3(mean(st['values']['context, far']))} / {f3(mean(st['values']['ordinary bg, far']))}", "–"))
display(Markdown("| | ours (this run) | papers, PASCAL VOC 2012 train |\n|---|---|---|\n"
                 + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in summary)))

# %% [markdown]
# What the next notebooks change:
#
# * **02 · AffinityNet and random walk** (PSA; IRN): keep only the CAMs' *confident* regions — the
#   foreground of $\alpha = 4$, the background of $\alpha = 32$ — learn from them which neighbouring pixels
#   belong together, and let a random walk spread each class from its badge over the whole body, up to
#   the object's edges. Attacks the low body recall.
# * **03 · EDAM**: trains the classifier itself to see whole objects, by attending jointly to
#   class-specific features across a batch of images. Attacks the low body recall at the source.
# * **05 · EPS**: adds a saliency map as pixel-level supervision for the class maps, which tells water
#   (not salient) from boat (salient). Attacks the context leak and the confusion ratio.
#
# The pseudo-labels written in §7.3 (`pseudo_labels/`) and the CAMs (`cams/`) are the input of
# notebook 02 and the "CAM" row of the comparison in notebook 06.
