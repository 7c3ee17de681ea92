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
# # 02 · AffinityNet and the random walk: from the badge to the whole object
#
# ## 1 Objective
#
# Notebook 01 ended with CAM pseudo-labels that are **precise but incomplete**: a CAM peaks on the
# small part of an object that tells its class (here: the badge) and fades over the rest of the body,
# so the body recall stays far below the part recall. **PSA** (Ahn & Kwak, *Learning Pixel-level
# Semantic Affinity with Image-level Supervision*, CVPR 2018) keeps only what the CAMs are *sure*
# about — confident foreground near the peaks, confident background far from every peak — and learns
# from it something CAMs cannot express: which **pairs of nearby pixels belong to the same thing**.
# That network, **AffinityNet**, needs no class of its own; a pair inside one body and a pair inside
# the background are both "same", a pair across an object's edge is "different". A **random walk**
# whose transition probabilities are these affinities then spreads each CAM over the region its peak
# sits in, and stops at the edges. The same idea, with a boundary network instead, is IRN (Ahn, Cho &
# Kwak, CVPR 2019), the authors' successor.
#
# This notebook builds the affinity labels from notebook 01's CAMs, trains AffinityNet with the
# project's training engine, runs the walk with a **sparse** transition matrix (the official code uses
# a dense N × N one — §4.4 shows why that does not scale), and measures what the walk changes: how much
# of each body it recovers, where it spills, and how it fails when its two knobs are pushed too far.
#
# *How to use it:* run top to bottom. It reuses notebook 01's classifier and CAMs from `OUT_DIR` (and
# makes them first if notebook 01 has not run). With `PROFILE = "tutorial"` the first run trains
# AffinityNet on a CPU (§10 prints how long everything took); a second run reloads it. `"smoke"` (CI)
# only proves that the code runs: its classifier is too weak for the pictures to mean anything.
# Exercises are in §9; instructors set `USE_SOLUTIONS = True`.

# %% [markdown]
# ## 2 Parameters
#
# Papermill overwrites this cell's values (the runner injects `PROFILE`, `OUT_DIR`, `SEED`, `DEVICE`
# and `USE_SOLUTIONS`). The method's knobs default to PSA's official values.

# %% tags=["parameters"]
PROFILE = "tutorial"        # "smoke" (CI, seconds) | "tutorial" (laptop CPU, minutes) | "paper" (PASCAL VOC on a GPU)
DATA_ROOT = None            # None: the profile's default data folder (toy scenes are generated on first use)
DEVICE = "auto"             # "auto" | "cpu" | "cuda" | "mps"
SEED = 0                    # seeds training and the choice of images shown
OUT_DIR = "../runs/tutorial"
USE_SOLUTIONS = False       # instructors / CI: check the reference solutions of the exercises
EPOCHS = None               # None: the profile's number of AffinityNet epochs
FG_ALPHA = 4.0              # α_low: (1 − max M)^α is a large background → the foreground left is confident
BG_ALPHA = 32.0             # α_high (the CVPR paper: 24): a small background → the background left is confident
USE_CRF = None              # None: the profile's choice; True refines the labels with a dense CRF (pydensecrf2)
RADIUS = 5                  # γ: pairs closer than this many grid cells (training and walk)
RW_ALPHA = 16.0             # background power of the walk's input
BETA = 8.0                  # β: affinities are raised to this power
T_STEPS = 256               # t: number of random-walk steps (PSA: 2^8)
N_SHOW = 5                  # images in the example figures

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
from matplotlib.lines import Line2D
from tqdm.auto import tqdm

import wsss_core
from wsss_core import affinity as A
from wsss_core import cams as wcams
from wsss_core import engine, exercises, profiles, viz, widgets
from wsss_core.data.palette import read_label_png
from wsss_core.data.voc import VOCLayoutDataset
from wsss_core.metrics import ConfusionMatrix
from wsss_core.stages import affinity as stage
from wsss_core.stages import cam as cam_stage

# %matplotlib inline
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 9,
                     "image.interpolation": "nearest"})
T_START = time.perf_counter()
engine.seed_everything(SEED)
rng = np.random.default_rng(SEED)

# --- data and the two configs: the CAM stage of notebook 01, and this stage ------------------------
data = profiles.prepare_data(PROFILE, DATA_ROOT)
TOY = data.kind == "toy"
cam_cfg = profiles.cam_config(PROFILE)
cam_cfg = cam_cfg.replace(train=cam_cfg.train.replace(seed=SEED, device=DEVICE))  # exactly notebook 01's classifier
cfg = stage.config_for_profile(PROFILE)
crf = cfg.crf if USE_CRF is None else bool(USE_CRF)
if crf and not A.crf_available():
    print("USE_CRF: the optional dense CRF (pip install pydensecrf2) is not installed — the affinity labels are "
          "made without it (§5.1 shows what the CRF changes where it is installed)")
    crf = False
cfg = cfg.replace(fg_alpha=float(FG_ALPHA), bg_alpha=float(BG_ALPHA), crf=crf, radius=int(RADIUS),
                  rw_radius=int(RADIUS), rw_alpha=float(RW_ALPHA), beta=float(BETA), t=int(T_STEPS),
                  train=cfg.train.replace(seed=SEED, device=DEVICE,
                                          epochs=int(EPOCHS) if EPOCHS else cfg.train.epochs))
STRIDE = cfg.feature_stride

# --- notebook 01's classifier, CAMs and report (made here if notebook 01 has not run) --------------
t0 = time.perf_counter()
cam = cam_stage.run(cam_cfg, data, Path(OUT_DIR) / cam_stage.NOTEBOOK)
cam_seconds = time.perf_counter() - t0
eval_ds = cam.train_dataset                 # the training images, evaluation view (+ masks, parts, context)
NAMES, C = eval_ds.class_names, eval_ds.num_classes
CAM_DIR = cam.cam_dir

OUT = Path(OUT_DIR) / stage.NOTEBOOK
LABEL_DIR, RW_DIR = OUT / "affinity_labels", OUT / "rw_labels"
CKPT_DIR = stage.checkpoint_dir_for(cfg, OUT, cam.checkpoint_dir.name, data)
OUT.mkdir(parents=True, exist_ok=True)


def rel(p) -> str:
    "A path relative to the working directory (notebooks/), for printing."
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


print(f"profile {PROFILE}, seed {SEED}, device {engine.select_device(DEVICE)}")
print(f"data: {rel(data.root)} ({data.kind}), {len(eval_ds)} training images, classes {NAMES[1:]}")
print(f"CAM stage: {rel(cam.checkpoint_dir)} (val mAP {cam.val_map:.3f}; ready in {cam_seconds:.0f} s)")
print(f"AffinityNet: {cfg.backbone} {cfg.backbone_kwargs}, levels {list(cfg.levels or ['last ' + str(len(cfg.level_channels))])} → {cfg.level_channels} → {cfg.embed_dim or sum(cfg.level_channels)} "
      f"channels at stride {STRIDE}, init from the classifier: {cfg.init_from_classifier}, frozen backbone: "
      f"{cfg.frozen_backbone}; {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, {cfg.train.optimizer} lr {cfg.train.lr}")
print(f"labels: α {cfg.fg_alpha:g} / {cfg.bg_alpha:g}, CRF {cfg.crf}; pairs radius {cfg.radius}; "
      f"walk: α {cfg.rw_alpha:g}, β {cfg.beta:g}, t {cfg.t}, {cfg.rw_method}")
print(f"outputs: {rel(OUT)}")
print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
      f"matplotlib {matplotlib.__version__}, wsss_core {wsss_core.__version__}")


# %% [markdown]
# ### The problem on a picture
#
# Each row: an image, its true mask, the CAM pseudo-label that the walk will start from (background
# $(1 - \max_c M_c)^{16}$, §3), and the CAM of the first class in the label. The white outlines are the
# badges. Most of each body that lies away from its badge is background in the pseudo-label — or the
# blob around the badge runs over the body's edge onto the background.

# %%
def label_names(label) -> str:
    return ", ".join(NAMES[c + 1] for c in np.flatnonzero(label)) or "(none)"


KERNEL3 = np.ones((3, 3), np.uint8)


def outline(image, m, colour=(255, 255, 255)):
    "Draw the 1-px outline of the (H, W) bool mask `m` on a copy of `image`."
    out = image.copy()
    m = np.asarray(m, bool)
    out[m & ~(cv2.erode(m.astype(np.uint8), KERNEL3) > 0)] = colour
    return out


def load(i):
    "CAMs (C, H, W), label (C,) and raw sample (image, mask, part/context masks) of training image i."
    raw = eval_ds.get_raw(i)
    M_i, lab_i = wcams.load_cams(CAM_DIR / f"{raw['id']}.npz")
    return M_i, lab_i, raw


LABELS = eval_ds.image_labels().numpy()
SHOW = sorted({int(rng.choice(np.flatnonzero(LABELS[:, k % C]) if LABELS[:, k % C].any() else np.arange(len(eval_ds))))
               for k in range(min(N_SHOW, len(eval_ds)))})
rows, titles = [], []
for i in SHOW:
    M_i, lab_i, raw = load(i)
    c = int(np.flatnonzero(lab_i)[0]) if lab_i.any() else 0
    badges = raw["part_mask"] > 0 if "part_mask" in raw else np.zeros(raw["mask"].shape, bool)
    rows.append([raw["image"], viz.overlay(raw["image"], raw["mask"]),
                 outline(viz.overlay(raw["image"], wcams.cams_to_labels(M_i, lab_i, alpha=cfg.rw_alpha)), badges),
                 outline(viz.heatmap(raw["image"], M_i[c]), badges)])
    titles.append([f"{raw['id']}: {label_names(lab_i)}", "true mask", f"CAM pseudo-label (α = {cfg.rw_alpha:g})",
                   f"CAM {NAMES[c + 1]}"])
fig = viz.image_grid(rows, titles=titles, size=1.8)
viz.class_legend(fig, NAMES, ignore=True)
display(fig)

# %% [markdown]
# ## 3 Theory
#
# Symbols follow the PSA paper; equation numbers are ours for this notebook, with the paper's in
# brackets as we read it. Every formula links to the function that implements it.
#
# **Confident regions** (paper §3.2; `wsss_core.affinity.affinity_labels`). With the max-normalised
# CAMs $M_c$ of the present classes (notebook 01), two background scores
#
# $$M_{bg}^{\alpha}(x) = \big(1 - \max_{c} M_c(x)\big)^{\alpha} \qquad [\text{PSA Eq. 2}] \tag{1}$$
#
# are built: with a **small** $\alpha_{low}$ (official 4) the background is large, so the foreground that
# still wins the arg-max over $[M_{bg}^{\alpha_{low}}, M_1, \dots]$ is *confident foreground*; with a
# **large** $\alpha_{high}$ (official 32, the CVPR paper 24) the background is small, so the background
# that still wins is *confident background*. The rest is **neutral** (label 255) and never used:
#
# $$Y(x) = \begin{cases} \arg\max_c M_c(x) & \text{if it beats } M_{bg}^{\alpha_{low}}(x) \\
# 0 & \text{if } M_{bg}^{\alpha_{high}}(x) \text{ beats every } M_c(x) \\ 255 & \text{otherwise.} \end{cases} \tag{2}$$
#
# For the arg-max the power rule is a threshold in disguise (notebook 01 §3): confident foreground is
# $\max_c M_c > \theta(\alpha_{low})$ with $(1 - \theta)^{\alpha} = \theta$, i.e. $\theta(4) \approx 0.28$,
# $\theta(32) \approx 0.075$. IRN uses two constants instead (0.30 and 0.05). PSA refines both score stacks
# with a dense CRF before the arg-max (optional here: `wsss_core.affinity.crf_refine`).
#
# **Pairs** (Eqs. 4–6 of the paper; `wsss_core.affinity.pair_offsets`, `pair_labels`). On the feature
# grid (stride $s$), every two positions $i, j$ closer than the radius $\gamma$ form a pair:
#
# $$\mathcal{P} = \{(i, j) : 0 < \lVert x_i - x_j \rVert_2 < \gamma\}, \qquad
# \mathcal{P}^{+}_{bg} = \{(i, j) \in \mathcal{P} : Y_i = Y_j = 0\}, \quad
# \mathcal{P}^{+}_{fg} = \{Y_i = Y_j > 0\}, \quad \mathcal{P}^{-} = \{Y_i \ne Y_j\} \tag{3}$$
#
# (pairs touching a neutral position are in none of them). For $\gamma = 5$ each position has 68
# neighbours, stored once as 34 forward offsets.
#
# **Affinity** (paper Eq. 3; `wsss_core.affinity.local_affinities`, `wsss_core.models.affinitynet.AffinityNet`).
# AffinityNet maps the image to features $f^{aff}$ on the grid; the affinity of a pair is
#
# $$W_{ij} = \exp\!\Big(-\tfrac{1}{D}\big\lVert f^{aff}(x_i) - f^{aff}(x_j)\big\rVert_1\Big) \in (0, 1]. \tag{4}$$
#
# (The paper writes the L1 norm; the official code takes the channel *mean* — a constant scale.)
#
# **Loss** (paper Eqs. 7–10; `wsss_core.affinity.affinity_loss`). Each term is averaged over *its own*
# pairs, so the rare foreground pairs weigh as much as the plentiful background ones:
#
# $$\mathcal{L}^{+}_{bg} = -\frac{1}{|\mathcal{P}^{+}_{bg}|}\sum_{\mathcal{P}^{+}_{bg}} \log W_{ij},\quad
# \mathcal{L}^{+}_{fg} = -\frac{1}{|\mathcal{P}^{+}_{fg}|}\sum_{\mathcal{P}^{+}_{fg}} \log W_{ij},\quad
# \mathcal{L}^{-} = -\frac{1}{|\mathcal{P}^{-}|}\sum_{\mathcal{P}^{-}} \log (1 - W_{ij}),$$
#
# $$\mathcal{L} = \tfrac14 \mathcal{L}^{+}_{bg} + \tfrac14 \mathcal{L}^{+}_{fg} + \tfrac12 \mathcal{L}^{-}. \tag{5}$$
#
# (The paper writes $\mathcal{L}^{+}_{fg} + \mathcal{L}^{+}_{bg} + 2\mathcal{L}^{-}$; the official `train_aff.py`
# uses the same weights divided by 4, with $\varepsilon = 10^{-5}$ inside the logs — we follow the code.)
#
# **Random walk** (paper Eqs. 11–12; `wsss_core.affinity.transition_matrix`, `propagate`,
# `random_walk_labels`). With $W$ the affinities within the radius ($W_{ii} = 1$, 0 beyond $\gamma$),
#
# $$T = D^{-1} W^{\circ\beta}, \qquad D_{ii} = \sum_j W_{ij}^{\beta}, \tag{6}$$
#
# a row-stochastic matrix: one step replaces each position's score by an affinity-weighted average of
# its neighbours'. $\beta$ (8) sharpens — $0.9^8 = 0.43$ but $0.5^8 = 0.004$ — so weak affinities stop the
# walk. The CAMs, with the background $M_{bg}^{\alpha}$ of Eq. 1 at $\alpha = 16$ in front, are
# average-pooled onto the grid, propagated $t$ = 256 steps,
#
# $$\operatorname{vec}(M^{*}_c) = T^{t} \cdot \operatorname{vec}(M_c) \quad \text{for } c \in \{bg\} \cup \{\text{present classes}\}, \tag{7}$$
#
# upsampled bilinearly by $s$ and arg-maxed.
#
# **Dense versus sparse.** The official code builds $T$ as a dense $N \times N$ matrix ($N$ = grid
# positions) and squares it $\log_2 t = 8$ times: $O(N^2)$ memory and $O(N^3)$ work per squaring. But
# a row of $T$ has at most 69 non-zeros (radius 5), so `wsss_core.affinity.transition_matrix` stores it
# sparse — $O(N\gamma^2)$ memory — and `propagate` applies it $t$ times (squaring would fill it in).
#
# **Measures.** As in notebook 01 (`wsss_core.evaluation.LabelMapEvaluator`): mIoU, class-aware
# foreground precision/recall, part/body recall, context and background leak, EPS's confusion ratio —
# all on the training images, whose pseudo-labels a segmentation network would later learn from.
#
# **Official code vs paper, and what we changed** (toy scenes; details in `wsss_core/affinity.py`):
# the official ¼ ¼ ½ loss weights and channel-mean affinity (above); PSA's pair indices skip sources
# within $\gamma - 1$ of the left, right and bottom border (fixed-size index arrays) — we keep every
# in-bounds pair; AffinityNet predicts on a **stride-4** grid (24 × 24 for 96-px scenes, IRN's stride)
# rather than PSA's stride 8, where a radius-5 neighbourhood would cover most of a 12 × 12 map.
# Two choices are ours, both measured on these scenes (§5.1, §7.3): the labels go through PSA's dense
# CRF (optional in PSA's README, essential here), and AffinityNet reads only the backbone's two
# **shallow** levels (receptive field 19 px) instead of PSA's three deepest ones. The toy CAMs come from
# a 12 × 12 map and spill over the bodies, so without the CRF most *negative* pairs join two background
# pixels; and a network that can see the badge (the deep level sees 43 px) then learns to redraw the
# CAM blob instead of the bodies' edges — the walk then cannot do better than the CAMs.

# %% [markdown]
# ## 4 From scratch, then the library
#
# ### 4.1 Affinity labels of one image (Eqs. 1–2)

# %%
EX = SHOW[0]
M_i, lab_i, raw = load(EX)
present = np.flatnonzero(lab_i)


def affinity_labels_scratch(M, label, a_low, a_high):
    "Eqs. 1–2 written out: two arg-maxes, then neutral where only the low-α one said 'foreground'."
    keys = np.flatnonzero(label)
    m = M[keys].max(0)
    fg_conf = np.where(M[keys].max(0) > (1 - m) ** a_low, keys[M[keys].argmax(0)] + 1, 0)   # ties → background
    bg_conf = np.where(M[keys].max(0) > (1 - m) ** a_high, keys[M[keys].argmax(0)] + 1, 0)
    Y = np.where(fg_conf > 0, fg_conf, 255)
    Y[bg_conf == 0] = 0
    return Y.astype(np.uint8)


Y_scratch = affinity_labels_scratch(M_i, lab_i, cfg.fg_alpha, cfg.bg_alpha)
Y_lib = A.affinity_labels(M_i, lab_i, fg_alpha=cfg.fg_alpha, bg_alpha=cfg.bg_alpha)
assert np.array_equal(Y_scratch, Y_lib)
share = {n: float(np.mean(f(Y_lib))) for n, f in [("confident fg", lambda y: (y > 0) & (y < 255)),
                                                   ("confident bg", lambda y: y == 0), ("neutral", lambda y: y == 255)]}
print(f"image {raw['id']} ({label_names(lab_i)}): " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
print("✓ by hand == wsss_core.affinity.affinity_labels")


# %% [markdown]
# ### 4.2 Pairs and their labels (Eq. 3)
#
# The labels are sampled onto the stride-4 grid (the centre pixel of each cell), and every pair within
# the radius is sorted into $\mathcal{P}^{+}_{bg}$, $\mathcal{P}^{+}_{fg}$, $\mathcal{P}^{-}$ with plain loops.

# %%
def pair_sets_scratch(Y, radius):
    "Eq. 3 with loops: (K, h, w) bool masks of background-positive, foreground-positive and negative pairs."
    offsets = [(0, dx) for dx in range(1, radius)] + [(dy, dx) for dy in range(1, radius)
                                                      for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius * radius]
    h, w = Y.shape
    bg, fg, neg = (np.zeros((len(offsets), h, w), bool) for _ in range(3))
    for k, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                ty, tx = y + dy, x + dx
                if not (0 <= ty < h and 0 <= tx < w) or Y[y, x] == 255 or Y[ty, tx] == 255:
                    continue
                if Y[y, x] != Y[ty, tx]:
                    neg[k, y, x] = True
                elif Y[y, x] == 0:
                    bg[k, y, x] = True
                else:
                    fg[k, y, x] = True
    return bg, fg, neg


Y_grid = A.downsample_labels(Y_lib, STRIDE)                       # (H/s, W/s)
scratch = pair_sets_scratch(Y_grid, cfg.radius)
lib = [t.numpy() for t in A.pair_labels(torch.as_tensor(Y_grid), cfg.radius)]
assert all(np.array_equal(a, b) for a, b in zip(scratch, lib))
print(f"grid {Y_grid.shape}, {len(A.pair_offsets(cfg.radius))} forward offsets, "
      f"{int(A.pair_validity(Y_grid.shape, cfg.radius).sum())} pairs in the grid: "
      f"{int(lib[0].sum())} background-positive, {int(lib[1].sum())} foreground-positive, {int(lib[2].sum())} negative")
print("✓ loops == wsss_core.affinity.pair_labels")

# %% [markdown]
# ### 4.3 Affinities and the loss (Eqs. 4–5) on random features

# %%
g = torch.Generator().manual_seed(SEED)
feats = torch.randn(6, *Y_grid.shape, generator=g)                  # (D, h, w) stand-in for AffinityNet's output
offs = A.pair_offsets(cfg.radius)
h, w = Y_grid.shape
W_scratch = np.zeros((len(offs), h, w))
for k, (dy, dx) in enumerate(offs):
    for y in range(h):
        for x in range(w):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                W_scratch[k, y, x] = math.exp(-float((feats[:, y, x] - feats[:, y + dy, x + dx]).abs().mean()))
W_lib = A.local_affinities(feats, cfg.radius)
assert np.allclose(W_scratch, W_lib.numpy(), atol=1e-6)

bg, fg, neg = (torch.as_tensor(m) for m in lib)
eps = 1e-5
L_bg = -np.log(W_scratch[lib[0]] + eps).mean() if lib[0].any() else 0.0
L_fg = -np.log(W_scratch[lib[1]] + eps).mean() if lib[1].any() else 0.0
L_neg = -np.log(1 + eps - W_scratch[lib[2]]).mean() if lib[2].any() else 0.0
loss = A.affinity_loss(W_lib[None], bg[None], fg[None], neg[None])
print(f"L+bg {L_bg:.4f}  L+fg {L_fg:.4f}  L- {L_neg:.4f}  →  L = {L_bg / 4 + L_fg / 4 + L_neg / 2:.4f} "
      f"(library {loss['loss'].item():.4f})")
assert abs(loss["loss"].item() - (L_bg / 4 + L_fg / 4 + L_neg / 2)) < 1e-4
print("✓ loops == wsss_core.affinity.local_affinities + affinity_loss")


# %% [markdown]
# ### 4.4 The random walk: the official dense matrix by hand, our sparse one from the library (Eqs. 6–7)

# %%
def walk_dense_scratch(aff, x, radius, beta, t):
    "PSA's infer_aff.py in numpy: dense W with 1 on the diagonal, T = D⁻¹W^β, T^t by repeated squaring."
    K, h, w = aff.shape
    N = h * w
    W = np.eye(N)
    for k, (dy, dx) in enumerate(A.pair_offsets(radius)):
        for y in range(h):
            for xx in range(w):
                if 0 <= y + dy < h and 0 <= xx + dx < w:
                    i, j = y * w + xx, (y + dy) * w + xx + dx
                    W[i, j] = W[j, i] = aff[k, y, xx]
    Wb = W ** beta
    T = Wb / Wb.sum(1, keepdims=True)
    Tt = np.linalg.matrix_power(T, t)                               # log2(t) squarings for t = 2^k
    return (Tt @ x.reshape(x.shape[0], -1).T).T.reshape(x.shape), T


x0 = torch.rand(3, *Y_grid.shape, generator=g, dtype=torch.float64)
rw_scratch, T_dense = walk_dense_scratch(W_lib.double().numpy(), x0.numpy(), cfg.radius, cfg.beta, cfg.t)
rw_lib = A.random_walk(x0, W_lib, cfg.radius, beta=cfg.beta, t=cfg.t, method="sparse", dtype=torch.float64)
print(f"grid {Y_grid.shape} → N = {T_dense.shape[0]}; rows of T sum to 1: {np.allclose(T_dense.sum(1), 1)}; "
      f"non-zeros per row ≤ {int((T_dense > 0).sum(1).max())} of {T_dense.shape[0]}")
print(f"max |dense by hand − sparse library| = {float(np.abs(rw_scratch - rw_lib.numpy()).max()):.2e}")
assert np.allclose(rw_scratch, rw_lib.numpy(), atol=1e-10)
print("✓ dense walk by hand == wsss_core.affinity.random_walk(method='sparse')")

sizes = [("toy scene, stride 4", (24, 24)), ("VOC 500×375, stride 8 (PSA)", (63, 47)),
         ("VOC 500×375, stride 4 (IRN)", (125, 94)), ("128 × 128 grid", (128, 128))]
lines = ["| grid | N | dense N × N (float32) | sparse CSR, radius 5 |", "|---|---:|---:|---:|"]
for name, (hh, ww) in sizes:
    N = hh * ww
    lines.append(f"| {name} | {N:,} | {A.dense_matrix_bytes(N) / 2**20:,.1f} MiB | "
                 f"{A.sparse_matrix_bytes((hh, ww), 5) / 2**20:,.2f} MiB |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## 5 Run it
#
# ### 5.1 Affinity labels for every training image
#
# `stage.ensure_affinity_labels` writes one PNG per training image (0 confident background, $c$
# confident class, 255 neutral) at full resolution; the training loader augments them together with
# the image and samples them onto the grid. They are made once and reused.

# %%
label_seconds, reused = stage.ensure_affinity_labels(CAM_DIR, eval_ds, LABEL_DIR, cfg, cam.checkpoint_dir.name)
print(("reused" if reused else "made") + f" the affinity labels of {len(eval_ds)} images in {rel(LABEL_DIR)} "
      f"({label_seconds:.0f} s)")
label_q = stage.affinity_label_report(LABEL_DIR, eval_ds, progress=True)
display(Markdown(
    "| share of pixels | confident foreground | confident background | neutral |\n|---|---:|---:|---:|\n"
    f"| | {label_q['share_fg']:.1%} | {label_q['share_bg']:.1%} | {label_q['share_neutral']:.1%} |\n\n"
    "| against the true mask (never used for training) | value |\n|---|---:|\n"
    f"| confident foreground that has that class (precision) | {label_q['fg_precision']:.3f} |\n"
    f"| confident background that is background (precision) | {label_q['bg_precision']:.3f} |\n"
    f"| true object pixels labelled with their class | {label_q['fg_coverage']:.3f} |\n"
    + (f"| … of them off the badges (body) | {label_q['fg_coverage_body']:.3f} |\n" if "fg_coverage_body" in label_q else "")
    + f"| true background labelled background | {label_q['bg_coverage']:.3f} |"))


def aff_label_cell(image, Y):
    "Affinity label drawn on the image: classes in their palette colour, background dark, neutral cream."
    img = image.astype(np.float32)
    out = viz.overlay(image, np.where(Y == 0, 0, Y)).astype(np.float32)
    out[Y == 0] = 0.35 * img[Y == 0]
    return out.astype(np.uint8)


rows, titles = [], []
for i in SHOW:
    M_i, lab_i, raw = load(i)
    Y = read_label_png(LABEL_DIR / f"{raw['id']}.png")
    gt_edge = outline(np.zeros_like(raw["image"]), (raw["mask"] > 0) & (raw["mask"] < 255)).any(-1)
    rows.append([raw["image"], viz.heatmap(raw["image"], M_i.max(0)),
                 outline(aff_label_cell(raw["image"], Y), gt_edge)])
    titles.append([f"{raw['id']}: {label_names(lab_i)}", "max_c M_c", "affinity label (dark: bg, cream: neutral)\nwhite: true outline"])
fig = viz.image_grid(rows, titles=titles, size=2.0)
fig.savefig(OUT / "affinity_labels.png")
display(fig)

# Are the *pairs* right? (needs instance masks: the ground truth, never used for training)
gt_ds = VOCLayoutDataset(data.root, data.train_split, saliency_dir=None, cache=True)   # + instance masks
assert gt_ds.ids == eval_ds.ids
N_DIAG = min(len(eval_ds), 200 if PROFILE == "tutorial" else 16)
label_variants = {f"used here (α {cfg.fg_alpha:g} / {cfg.bg_alpha:g}, CRF {'on' if cfg.crf else 'off'})":
                  lambda i: read_label_png(LABEL_DIR / f"{eval_ds.ids[i]}.png")}
if cfg.crf:
    label_variants[f"the same without the CRF"] = lambda i: A.affinity_labels(
        *load(i)[:2], fg_alpha=cfg.fg_alpha, bg_alpha=cfg.bg_alpha)
pair_acc = {name: stage.pair_label_accuracy(fn, gt_ds, range(N_DIAG), STRIDE, cfg.radius)
            for name, fn in label_variants.items()}
display(Markdown(
    f"Pairs of the first {N_DIAG} training images: share of each set that the true instance map agrees with\n\n"
    "| affinity labels | background-positive | foreground-positive | negative |\n|---|---:|---:|---:|\n"
    + "\n".join(f"| {name} | " + " | ".join(f"{v[k]['accuracy']:.2f} ({v[k]['n'] / N_DIAG:.0f} per image)"
                                            for k in ("bg_pos", "fg_pos", "neg")) + " |"
                 for name, v in pair_acc.items())))
acc_neg = [v["neg"]["accuracy"] for v in pair_acc.values()]
print(f"negative pairs that really join two different regions: {acc_neg[0]:.0%} with the labels used here"
      + (f", {acc_neg[1]:.0%} without the CRF" if len(acc_neg) > 1 else ""))

# %% [markdown]
# What to look for: the confident foreground is the CAM blob around each badge; the neutral band
# (cream) separates it from the confident background (dark). Where the blob runs over a body's edge
# (white outline), background pixels are labelled *foreground* — the first table's foreground
# precision counts them. AffinityNet never learns "this pixel is a boat": it learns from *pairs*, so
# the last table is the one that matters. A negative pair is meant to cross an edge; when the blob
# spills onto the background, its negative pairs join background (inside the blob) to background
# (outside it), and the network is taught a boundary where the image has none. The CRF moves the
# blob's border onto colour edges, and most negative pairs become right.
#
# ### 5.2 The pairs of one position
#
# Three positions of one image on the stride-4 grid, each with its neighbours within the radius:
# green = foreground-positive pair, blue = background-positive, red = negative, grey = no label (one
# end neutral). Positions near the neutral band have few labelled pairs; positions inside the blob and
# the background have many. Below, the counts over the whole training split.

# %%
M_i, lab_i, raw = load(EX)
Y = read_label_png(LABEL_DIR / f"{raw['id']}.png")
Yg = A.downsample_labels(Y, STRIDE)
hg, wg = Yg.shape
cands = {"confident foreground": np.argwhere((Yg > 0) & (Yg < 255)), "neutral": np.argwhere(Yg == 255),
         "confident background": np.argwhere(Yg == 0)}
picks = {}
for name, cc in cands.items():
    if len(cc):
        centre = np.array([hg / 2, wg / 2])
        picks[name] = tuple(cc[np.argmin(((cc - centre) ** 2).sum(1))])   # the one nearest the centre
fig = Figure(figsize=(3.0 * max(len(picks), 1), 3.2), layout="constrained")
axes = np.atleast_1d(fig.subplots(1, max(len(picks), 1)))
colours = {"fg": "lime", "bg": "deepskyblue", "neg": "red", "none": "0.6"}
for ax, (name, (py, px)) in zip(axes, picks.items()):
    ax.imshow(aff_label_cell(raw["image"], Y), extent=(-0.5, wg - 0.5, hg - 0.5, -0.5))
    for dy, dx in A.neighbour_offsets(cfg.radius, include_self=False):
        qy, qx = py + dy, px + dx
        if not (0 <= qy < hg and 0 <= qx < wg):
            continue
        a, b = Yg[py, px], Yg[qy, qx]
        kind = "none" if 255 in (a, b) else ("neg" if a != b else ("bg" if a == 0 else "fg"))
        ax.plot([px, qx], [py, qy], "-", color=colours[kind], lw=0.8, alpha=0.9)
        ax.plot([qx], [qy], "o", color=colours[kind], ms=2.5)
    ax.plot([px], [py], "*", color="white", ms=12, markeredgecolor="k")
    ax.set_title(f"{name} position ({py}, {px})")
    ax.set_xticks([]); ax.set_yticks([])
fig.legend(handles=[Line2D([], [], color=v, marker="o", ms=4, label=k) for k, v in
                    {"foreground-positive": "lime", "background-positive": "deepskyblue", "negative": "red",
                     "no label (neutral end)": "0.6"}.items()], loc="outside lower center", ncol=4, fontsize=8)
fig.savefig(OUT / "pairs.png")
display(fig)

counts = np.zeros(3)
for iid in tqdm(eval_ds.ids, desc="count pairs"):
    grid = torch.as_tensor(A.downsample_labels(read_label_png(LABEL_DIR / f"{iid}.png"), STRIDE).astype(np.int64))
    counts += [int(m.sum()) for m in A.pair_labels(grid, cfg.radius)]
n_pairs_img = int(A.pair_validity((hg, wg), cfg.radius).sum())
print(f"per image ({n_pairs_img} pairs in a {hg}×{wg} grid): background-positive {counts[0] / len(eval_ds):.0f}, "
      f"foreground-positive {counts[1] / len(eval_ds):.0f}, negative {counts[2] / len(eval_ds):.0f} "
      f"(= {counts[0] / max(counts[2], 1):.0f} : {counts[1] / max(counts[2], 1):.0f} : 1) — hence one average per set in Eq. 5")

# %% [markdown]
# ### 5.3 Train AffinityNet
#
# `stage.train_affinitynet` runs the project's engine (`wsss_core.engine.train`: checkpoint every epoch,
# resume, AMP on a GPU) with the step of `stage.make_affinity_step`: features → affinities of all
# pairs within the radius → pair labels of the augmented label map → the loss of Eq. 5. The backbone
# starts from the CAM classifier's (PSA starts from ImageNet weights; ours has none, so the trained
# classifier is the analogue) and is fine-tuned. Unlike PSA, the head reads only the *shallow* levels
# `s2` and `s4` (§3): their features see 19 px around each position — enough for a colour edge, not
# enough to find the badge and redraw the CAM blob around it.

# %%
train_ds = stage.affinity_dataset(data.root, data.train_split, LABEL_DIR, cfg)
existed = (CKPT_DIR / engine.CHECKPOINT_NAME).is_file()
t0 = time.perf_counter()
try:
    model, history = stage.train_affinitynet(cfg, train_ds, CKPT_DIR, classifier=cam.model)
except engine.CheckpointMismatchError as e:
    raise RuntimeError(f"{rel(CKPT_DIR)} holds a checkpoint of another configuration; delete it (or change OUT_DIR) "
                       "and run this cell again.\n" + str(e)) from e
wall = time.perf_counter() - t0
aff_train_seconds = float(sum(r["seconds"] for r in history.epochs))
print(("reused the finished checkpoint " if existed and wall < 0.5 * aff_train_seconds else "trained ")
      + f"{rel(CKPT_DIR)}: {len(history.epochs)} epochs, {aff_train_seconds:.0f} s of training")

fig = Figure(figsize=(10, 3.0), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
history.plot(ax=ax1, keys=("loss",), smooth=0.1)
ax1.set(title="AffinityNet loss (Eq. 5)", ylabel="loss")
history.plot(ax=ax2, keys=("bg_loss", "fg_loss", "neg_loss"), smooth=0.1)
ax2.set(title="its three terms: L+bg, L+fg, L−", ylabel="loss")
fig.savefig(OUT / "training.png")
display(fig)
last = history.epochs[-1]
print(f"last epoch: L+bg {last['bg_loss']:.3f} (mean affinity of background pairs ≈ {math.exp(-last['bg_loss']):.2f}), "
      f"L+fg {last['fg_loss']:.3f} (≈ {math.exp(-last['fg_loss']):.2f}), L− {last['neg_loss']:.3f} "
      f"(mean affinity of negative pairs ≈ {1 - math.exp(-last['neg_loss']):.2f})")

# %% [markdown]
# ### 5.4 The random walk over the training split
#
# `stage.ensure_rw_labels`: AffinityNet's affinities for each image, the sparse walk of Eqs. 6–7
# (`wsss_core.affinity.random_walk_labels`), one PNG per image in `rw_labels/` — the pseudo-labels of
# this notebook.

# %%
rw_timing, reused = stage.ensure_rw_labels(model, eval_ds, CAM_DIR, RW_DIR, cfg, CKPT_DIR.name)
load_avg = f", load average {os.getloadavg()[0]:.1f} now" if hasattr(os, "getloadavg") else ""
print(("reused" if reused else "made") + f" {len(eval_ds)} random-walk label maps in {rel(RW_DIR)}: "
      f"{rw_timing['seconds_per_image'] * 1000:.1f} ms per image (AffinityNet "
      f"{rw_timing['affinity_seconds'] / max(rw_timing['n_images'], 1) * 1000:.1f} ms, walk "
      f"{rw_timing['walk_seconds_per_image'] * 1000:.1f} ms; device {engine.select_device(DEVICE)}{load_avg})")


def rw_label(i):
    return read_label_png(RW_DIR / f"{eval_ds.ids[i]}.png").astype(np.int64)


def cam_label(i, alpha=None):
    M_i, lab_i, _ = load(i)
    return wcams.cams_to_labels(M_i, lab_i, alpha=cfg.rw_alpha if alpha is None else alpha)


# %% [markdown]
# ## 6 Look at it
#
# Each row: image, true mask, the CAM pseudo-label the walk started from, AffinityNet's **boundary
# map** — $1 - \min$ of each grid position's affinities to its right and lower neighbours (white = the
# network says "different") — and the random-walk pseudo-label.

# %%
K01, K10 = A.pair_offsets(cfg.radius).index((0, 1)), A.pair_offsets(cfg.radius).index((1, 0))


def affinities_of(i):
    return stage.predict_affinities(model, eval_ds[i]["image"][None].to(next(model.parameters()).device), cfg.rw_radius)[0].cpu()


def boundary_map(aff, size):
    "1 − min(affinity to the right, affinity below) per grid position, nearest-upsampled to the image."
    a = torch.ones(aff.shape[1:])
    a[:, :-1] = torch.minimum(a[:, :-1], aff[K01, :, :-1])
    a[:-1] = torch.minimum(a[:-1], aff[K10, :-1])
    return cv2.resize((1 - a).numpy(), size[::-1], interpolation=cv2.INTER_NEAREST)


rows, titles = [], []
for i in SHOW:
    M_i, lab_i, raw = load(i)
    cm_cam = ConfusionMatrix(C + 1).update(cam_label(i), raw["mask"])
    cm_rw = ConfusionMatrix(C + 1).update(rw_label(i), raw["mask"])
    rows.append([raw["image"], viz.overlay(raw["image"], raw["mask"]), viz.overlay(raw["image"], cam_label(i)),
                 boundary_map(affinities_of(i), raw["mask"].shape), viz.overlay(raw["image"], rw_label(i))])
    titles.append([f"{raw['id']}: {label_names(lab_i)}", "true mask", f"CAM, α = {cfg.rw_alpha:g}: mIoU {cm_cam.miou():.2f}",
                   "boundary map (1 − affinity)", f"random walk: mIoU {cm_rw.miou():.2f}"])
fig = viz.image_grid(rows, titles=titles, size=1.9)
viz.class_legend(fig, NAMES, ignore=True)
fig.savefig(OUT / "random_walk.png")
display(fig)


# %% [markdown]
# ### The walk step by step
#
# One image; top: the score of its first class after $t$ steps (blue 0 → red 1, each map scaled by its
# own maximum), bottom: the arg-max labels at that $t$. $t = 0$ is the pooled CAM input.

# %%
def walk_steps(i, steps, alpha=None, beta=None):
    "Propagated scores (C+1, H, W) after each t in `steps`, reusing one transition matrix."
    M_i, lab_i, raw = load(i)
    x = A.rw_scores(M_i, lab_i, STRIDE, cfg.rw_alpha if alpha is None else alpha)
    T = A.transition_matrix(affinities_of(i), cfg.rw_radius, cfg.beta if beta is None else beta)
    H, W = raw["mask"].shape
    out, done, cur = {}, 0, x
    for t in sorted(steps):
        cur = A.propagate(T, cur, t - done).float()
        done = t
        up = F.interpolate(cur[None], scale_factor=STRIDE, mode="bilinear", align_corners=False)[0, :, :H, :W]
        keep = np.concatenate([[True], lab_i.astype(bool)])
        up[torch.from_numpy(~keep)] = -1
        out[t] = up
    return out, M_i, lab_i, raw


STEPS = [0, 1, 4, 16, 64, cfg.t]
ws, M_i, lab_i, raw = walk_steps(EX, STEPS)
c = int(np.flatnonzero(lab_i)[0]) + 1
fig = viz.image_grid([[viz.heatmap(raw["image"], (s[c] / max(float(s[c].max()), 1e-9)).numpy()) for s in ws.values()],
                      [viz.overlay(raw["image"], s.argmax(0).numpy()) for s in ws.values()]],
                     titles=[[f"t = {t}: score of {NAMES[c]}" for t in ws], [f"labels at t = {t}" for t in ws]], size=1.7)
fig.savefig(OUT / "walk_steps.png")
display(fig)


# %% [markdown]
# ### Explore
#
# Browse the training images and the walk's three knobs (in a live Jupyter session; an executed copy
# shows the default setting): the background power $\alpha$ of the walk's input, the sharpening
# $\beta$ and the number of steps $t$.

# %%
def render(index, alpha, beta, t):
    ws, M_i, lab_i, raw = walk_steps(index, [int(t)], alpha=alpha, beta=beta)
    pl = ws[int(t)].argmax(0).numpy()
    cam_pl = wcams.cams_to_labels(M_i, lab_i, alpha=alpha)
    m_cam = ConfusionMatrix(C + 1).update(cam_pl, raw["mask"]).miou()
    m_rw = ConfusionMatrix(C + 1).update(pl, raw["mask"]).miou()
    return viz.image_grid([[raw["image"], viz.overlay(raw["image"], raw["mask"]), viz.overlay(raw["image"], cam_pl),
                            viz.overlay(raw["image"], pl)]],
                          titles=[[f"{raw['id']}: {label_names(lab_i)}", "true mask", f"CAM, α = {alpha:g}: mIoU {m_cam:.2f}",
                                   f"walk α {alpha:g}, β {beta:g}, t {int(t)}: mIoU {m_rw:.2f}"]], size=2.2)


widgets.explore(render, index=(0, len(eval_ds) - 1, 1, int(EX)), alpha=(1.0, 64.0, 1.0, float(cfg.rw_alpha)),
                beta=(1.0, 32.0, 1.0, float(cfg.beta)), t=(0, 2048, 16, int(cfg.t)));

# %% [markdown]
# ## 7 Measure it
#
# ### 7.1 The walk against the CAMs it started from
#
# Same training images, same evaluation. Two CAM rows: the CAMs with the walk's own background
# ($\alpha = 16$, exactly the walk's input — `cam_miou` in `metrics.json`), and notebook 01's best
# constant threshold $\theta^*$ (an oracle: chosen with the ground truth).

# %%
rep_rw = stage.evaluate_label_dir(RW_DIR, eval_ds, data.context_pairs, progress=True)
rep_cam = stage.evaluate_cams_alpha(CAM_DIR, eval_ds, cfg.rw_alpha, data.context_pairs)
rep_best = cam.report


def g(d, k):
    v = d.get(k, math.nan)
    return math.nan if v is None else v


def f3(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


settings = {f"CAM, α = {cfg.rw_alpha:g} (the walk's input)": rep_cam,
            f"CAM, oracle θ* = {rep_best.get('best_threshold', math.nan):g}": rep_best,
            "random walk": rep_rw}
keys = [("mIoU", "miou"), ("foreground precision", "fg_precision"), ("foreground recall", "fg_recall"),
        ("part (badge) recall", "part_recall"), ("body recall", "body_recall"),
        ("context leak (water+rails → its class)", "context_leak"), ("background leak (ordinary bg → that class)", "background_leak")]
lines = ["| measure | " + " | ".join(settings) + " | walk − CAM α |", "|---|" + "---:|" * (len(settings) + 1)]
for name, k in keys:
    d = g(rep_rw, k) - g(rep_cam, k)
    lines.append(f"| {name} | " + " | ".join(f3(g(s, k)) for s in settings.values()) + f" | {d:+.3f} |")
for pair in rep_rw.get("confusion_ratio", {}):
    lines.append(f"| confusion ratio {pair} (EPS) | " + " | ".join(f3(s.get('confusion_ratio', {}).get(pair)) for s in settings.values()) + " | |")
display(Markdown("\n".join(lines)))
display(Markdown("Per-class IoU:\n\n| | " + " | ".join(rep_rw["per_class_iou"]) + " |\n|---|" + "---:|" * (C + 1) + "\n"
                 + "\n".join(f"| {n} | " + " | ".join(f3(s["per_class_iou"].get(k)) for k in rep_rw["per_class_iou"]) + " |"
                             for n, s in [("CAM α", rep_cam), ("random walk", rep_rw)])))
d_miou = rep_rw["miou"] - rep_cam["miou"]
d_rec, d_prec = rep_rw["fg_recall"] - rep_cam["fg_recall"], rep_rw["fg_precision"] - rep_cam["fg_precision"]
print(f"the walk changes mIoU by {100 * d_miou:+.1f} points over its input (CAM α = {cfg.rw_alpha:g}: "
      f"{rep_cam['miou']:.3f} → {rep_rw['miou']:.3f}) and by {100 * (rep_rw['miou'] - rep_best['miou']):+.1f} over the oracle CAM threshold; "
      f"foreground recall {d_rec:+.3f}, precision {d_prec:+.3f}; body recall {rep_cam.get('body_recall', math.nan):.3f} → "
      f"{rep_rw.get('body_recall', math.nan):.3f}")

# %% [markdown]
# ### 7.2 Where it helps and where it hurts
#
# Every object of the training split, with the toy scenes' flags (`Annotations/*.xml`): *camouflaged*
# bodies take their colour from the background under them, *touching* objects have another object
# within 2 px, *non-convex* bodies have holes or bays. For each kind: the share of its pixels given its
# class before and after the walk.

# %%
obj_ds = VOCLayoutDataset(data.root, data.train_split, saliency_dir=None, cache=True)   # + instance masks
assert obj_ds.ids == eval_ds.ids
objs = stage.object_report({"cam": cam_label, "rw": rw_label}, obj_ds, progress=True)
kinds = {"all objects": lambda o: True, "camouflaged": lambda o: o["camouflaged"],
         "touching another object": lambda o: o["touching"], "non-convex": lambda o: o["nonconvex"],
         "none of these": lambda o: not (o["camouflaged"] or o["touching"] or o["nonconvex"])}
lines = ["| objects | n | recall, CAM α | recall, walk | change | objects the walk improved / worsened (> 5 pts) |",
         "|---|---:|---:|---:|---:|---|"]
by_kind = {}
for name, sel in kinds.items():
    oo = [o for o in objs if sel(o)]
    if not oo:
        continue
    rc, rr = np.mean([o["recall_cam"] for o in oo]), np.mean([o["recall_rw"] for o in oo])
    up = sum(o["recall_rw"] > o["recall_cam"] + 0.05 for o in oo)
    dn = sum(o["recall_rw"] < o["recall_cam"] - 0.05 for o in oo)
    by_kind[name] = dict(n=len(oo), cam=float(rc), rw=float(rr))
    lines.append(f"| {name} | {len(oo)} | {rc:.3f} | {rr:.3f} | {rr - rc:+.3f} | {up} / {dn} |")
display(Markdown("\n".join(lines)))

# per image: which images gained and lost most (mIoU of the image alone)
per_img = []
for i in range(len(eval_ds)):
    gt = eval_ds.get_raw(i)["mask"]
    per_img.append((ConfusionMatrix(C + 1).update(rw_label(i), gt).miou() - ConfusionMatrix(C + 1).update(cam_label(i), gt).miou(), i))
per_img.sort()
deltas = np.array([d for d, _ in per_img])
fig = Figure(figsize=(10, 2.6), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
ax1.hist(deltas, bins=40, color="tab:blue")
ax1.axvline(0, color="k", lw=0.8)
ax1.set(xlabel="image mIoU, walk − CAM", ylabel="images", title=f"{(deltas > 0.01).mean():.0%} of images gain, {(deltas < -0.01).mean():.0%} lose")
for name, v in by_kind.items():
    ax2.plot([v["cam"], v["rw"]], [name, name], "-", color="0.6")
    ax2.plot([v["cam"]], [name], "o", color="tab:orange", label="CAM α" if name == "all objects" else None)
    ax2.plot([v["rw"]], [name], "o", color="tab:blue", label="random walk" if name == "all objects" else None)
ax2.set(xlabel="share of object pixels given their class", xlim=(0, 1), title="object recall by kind")
ax2.invert_yaxis()
ax2.legend(fontsize=8)
ax2.grid(alpha=0.3)
fig.savefig(OUT / "helps_hurts.png")
display(fig)

pick = [i for _, i in per_img[-2:][::-1]] + [i for _, i in per_img[:2]]
rows, titles = [], []
for rank, i in enumerate(pick):
    M_i, lab_i, raw = load(i)
    d = dict((j, dd) for dd, j in per_img)[i]
    rows.append([raw["image"], viz.overlay(raw["image"], raw["mask"]), viz.overlay(raw["image"], cam_label(i)),
                 boundary_map(affinities_of(i), raw["mask"].shape), viz.overlay(raw["image"], rw_label(i))])
    titles.append([f"{'gain' if rank < 2 else 'loss'}: {raw['id']} ({d:+.2f})", "true mask", "CAM α", "boundary map", "random walk"])
fig = viz.image_grid(rows, titles=titles, size=1.8)
fig.savefig(OUT / "gains_losses.png")
display(fig)

# %% [markdown]
# How to read this: AffinityNet's boundary map draws the bodies' colour edges, so the walk cuts the CAM
# blobs back to the bodies — the gains of §7.1 are mostly *precision* (the blob's spill onto the
# background and onto water and rails shrinks) — and fills a body where its edge is closed (the two
# top rows). It loses where the edge is not closed or the body is hard to tell from what lies under it:
# camouflaged bodies lose most in the table. The background's mass then flows in through the gap and
# washes a body with a weak CAM out (both bottom rows: the bodies end as background). Between two
# touching bodies, the class with the stronger CAM can also spread over its neighbour. The per-image
# histogram says how often the walk helps and how often it hurts.
#
# ### 7.3 Is it the affinities? The learned ones against the truth, and the walk with perfect ones
#
# Two checks that use the true instance maps (so the method could not use them): how well AffinityNet's
# affinities tell "same region" pairs (background counts as one region) from "different region" pairs —
# the ROC-AUC over all pairs within the radius, and the mean affinity per kind of pair — and what the
# *same* walk (same CAMs, $\alpha$, $\beta$, $t$) gives with **perfect affinities**: 1 inside a true
# region, 0 across. That oracle walk is the ceiling of this stage; the gap between it and ours is
# AffinityNet's.

# %%
from wsss_core.evaluation import LabelMapEvaluator


def oracle_aff(i):
    return stage.oracle_affinities(gt_ds.get_raw(i)["instance_mask"], STRIDE, cfg.rw_radius)


q_learned = stage.affinity_quality(affinities_of, gt_ds, range(N_DIAG), STRIDE, cfg.rw_radius, beta=cfg.beta, progress=True)
lines = [f"ROC-AUC of the learned affinity as a same-region detector ({N_DIAG} images): **{q_learned['auc']:.3f}** "
         "(perfect: 1, chance: 0.5)\n",
         f"| pair kind | pairs per image | mean affinity | mean affinity^β (β = {cfg.beta:g}) | perfect |", "|---|---:|---:|---:|---:|"]
for k in stage.PAIR_KINDS:
    v = q_learned[k]
    lines.append(f"| {k} | {v['n'] / N_DIAG:.0f} | {v['mean_a']:.3f} | {v['mean_a^beta']:.3f} | "
                 f"{1 if k in ('bg-bg', 'body-body', 'badge-body') else 0} |")
display(Markdown("\n".join(lines)))

evs = {name: LabelMapEvaluator(C, data.context_pairs, NAMES) for name in ("cam", "rw", "oracle")}
for i in tqdm(range(N_DIAG), desc="oracle walk"):
    M_i, lab_i, raw = load(i)
    evs["cam"].update_from_sample(cam_label(i), raw)
    evs["rw"].update_from_sample(rw_label(i), raw)
    evs["oracle"].update_from_sample(A.random_walk_labels(M_i, lab_i, oracle_aff(i), cfg.rw_radius, STRIDE, alpha=cfg.rw_alpha,
                                                          beta=cfg.beta, t=cfg.t), raw)
diag = {k: e.summary() for k, e in evs.items()}
cols = {f"CAM, α = {cfg.rw_alpha:g}": "cam", "random walk, AffinityNet": "rw", "random walk, perfect affinities": "oracle"}
lines = [f"Same {N_DIAG} images:\n", "| measure | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
for name, k in keys[:5]:
    lines.append(f"| {name} | " + " | ".join(f3(g(diag[c], k)) for c in cols.values()) + " |")
display(Markdown("\n".join(lines)))
gap_o = diag["oracle"]["miou"] - diag["cam"]["miou"]
print(f"perfect affinities: {100 * gap_o:+.1f} mIoU points over the CAMs "
      f"(precision {diag['oracle']['fg_precision'] - diag['cam']['fg_precision']:+.3f}, "
      f"recall {diag['oracle']['fg_recall'] - diag['cam']['fg_recall']:+.3f}); AffinityNet's: "
      f"{100 * (diag['rw']['miou'] - diag['cam']['miou']):+.1f} (precision {diag['rw']['fg_precision'] - diag['cam']['fg_precision']:+.3f}, "
      f"recall {diag['rw']['fg_recall'] - diag['cam']['fg_recall']:+.3f})")

# %% [markdown]
# Where does the gain come from? On PASCAL VOC a CAM covers only the most discriminative part and the
# walk mainly adds **recall**. Compare the precision and recall of the CAM column here: where the
# walk's input already reaches most of each body and spills past its edge — the toy CAMs are
# upsampled from a 12 × 12 map, so their blobs are wide — even the perfect walk mostly gains
# **precision**, by cutting the blob back to the body, and recall only where a body's far end is
# missing. The mean affinity *per kind* explains the rest of the gap: a walk of $t$ = 256 steps
# crosses any edge whose affinity is not ≈ 0 after the power β, and stalls inside a body whose affinity
# is far below 1.

# %%
metrics = {
    "cam_miou": rep_cam["miou"],                     # CAMs with the walk's background α, same images (the walk's input)
    "cam_alpha": cfg.rw_alpha,
    "cam_miou_best_threshold": rep_best["miou"],     # notebook 01's oracle threshold
    "cam_best_threshold": rep_best.get("best_threshold"),
    "rw_miou": rep_rw["miou"],
    "rw_fg_precision": rep_rw["fg_precision"],
    "rw_fg_recall": rep_rw["fg_recall"],
    "rw_seconds_per_image": rw_timing["seconds_per_image"],
    "rw_walk_seconds_per_image": rw_timing["walk_seconds_per_image"],
    "cam_fg_precision": rep_cam["fg_precision"],
    "cam_fg_recall": rep_cam["fg_recall"],
    "rw_part_recall": rep_rw.get("part_recall"),
    "rw_body_recall": rep_rw.get("body_recall"),
    "cam_body_recall": rep_cam.get("body_recall"),
    "rw_context_leak": rep_rw.get("context_leak"),
    "rw_background_leak": rep_rw.get("background_leak"),
    "rw_confusion_ratio": rep_rw.get("confusion_ratio"),
    "rw_per_class_iou": rep_rw["per_class_iou"],
    "affinity_label_fg_precision": label_q["fg_precision"],
    "affinity_label_bg_precision": label_q["bg_precision"],
    "affinity_label_neutral_share": label_q["share_neutral"],
    "object_recall_by_kind": by_kind,
    "affinity_auc": q_learned["auc"],
    "affinity_mean_by_pair_kind": {k: q_learned[k]["mean_a"] for k in stage.PAIR_KINDS},
    "pair_label_accuracy": {name: {k: v[k]["accuracy"] for k in v} for name, v in pair_acc.items()},
    "diag_n_images": N_DIAG,
    "diag_cam_miou": diag["cam"]["miou"],
    "diag_rw_miou": diag["rw"]["miou"],
    "rw_oracle_miou": diag["oracle"]["miou"],
    "rw_oracle_fg_precision": diag["oracle"]["fg_precision"],
    "rw_oracle_fg_recall": diag["oracle"]["fg_recall"],
    "affinitynet_train_seconds": aff_train_seconds,
    "rw_params": {"alpha": cfg.rw_alpha, "beta": cfg.beta, "t": cfg.t, "radius": cfg.rw_radius, "stride": STRIDE,
                  "method": cfg.rw_method, "crf": cfg.crf, "fg_alpha": cfg.fg_alpha, "bg_alpha": cfg.bg_alpha},
    "n_images": len(eval_ds),
}
cam_stage.write_metrics(OUT / "metrics.json", metrics)
print(f"wrote {rel(OUT / 'metrics.json')}: cam_miou {metrics['cam_miou']:.3f}, rw_miou {metrics['rw_miou']:.3f}, "
      f"rw_fg_precision {metrics['rw_fg_precision']:.3f}, rw_fg_recall {metrics['rw_fg_recall']:.3f}, "
      f"rw_seconds_per_image {metrics['rw_seconds_per_image']:.4f}")

# %% [markdown]
# ## 8 What goes wrong: β too small, t too large
#
# The walk has two knobs that trade spreading against stopping. With a small $\beta$, weak affinities
# across an edge are not suppressed ($0.5^1 = 0.5$ instead of $0.5^8 = 0.004$), so every region leaks
# into its neighbours; with many steps, even small leaks add up, and each connected region tends to its
# *average* score. The background has by far the most mass, so both failures end the same way: the
# objects are **washed into the background**. Below, the mean mIoU of the first images of the training
# split over a range of $\beta$ (with $t$ fixed) and of $t$ (with $\beta$ fixed), and one image at the
# extremes.

# %%
N_SWEEP = min(len(eval_ds), 60 if PROFILE == "tutorial" else 16)
BETAS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
TS = [0, 4, 16, 64, 256, 1024, 4096]
sweep_b, sweep_t = np.zeros((len(BETAS), C + 1, C + 1)), np.zeros((len(TS), C + 1, C + 1))
for i in tqdm(range(N_SWEEP), desc="β and t sweep"):
    gt = eval_ds.get_raw(i)["mask"]
    for j, b in enumerate(BETAS):
        s = walk_steps(i, [cfg.t], beta=b)[0][cfg.t]
        sweep_b[j] += ConfusionMatrix(C + 1).update(s.argmax(0).numpy(), gt).mat
    for j, (t, s) in enumerate(walk_steps(i, TS)[0].items()):
        sweep_t[j] += ConfusionMatrix(C + 1).update(s.argmax(0).numpy(), gt).mat
mi_b, mi_t = wcams.miou_from_confusion(sweep_b), wcams.miou_from_confusion(sweep_t)
fg_b = [m[1:, 1:].trace() / max(m[1:].sum(), 1) for m in sweep_b]
fg_t = [m[1:, 1:].trace() / max(m[1:].sum(), 1) for m in sweep_t]

fig = Figure(figsize=(10, 2.8), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
ax1.plot(BETAS, mi_b, "-o", label="mIoU")
ax1.plot(BETAS, fg_b, "--o", label="foreground recall")
ax1.axvline(cfg.beta, color="k", lw=0.8)
ax1.set(xscale="log", xlabel="β (t = %d)" % cfg.t, title=f"sharpening the affinities ({N_SWEEP} images)", ylim=(0, 1))
ax2.plot([max(t, 1) for t in TS], mi_t, "-o", label="mIoU")
ax2.plot([max(t, 1) for t in TS], fg_t, "--o", label="foreground recall")
ax2.axvline(cfg.t, color="k", lw=0.8)
ax2.set(xscale="log", xlabel="t (β = %g; t = 0 drawn at 1)" % cfg.beta, title="number of steps", ylim=(0, 1))
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.savefig(OUT / "failure_sweep.png")
display(fig)

ws_b1 = walk_steps(EX, [cfg.t], beta=1.0)[0][cfg.t]
ws_long = walk_steps(EX, [cfg.t, TS[-1]])[0]
M_i, lab_i, raw = load(EX)
cells = [(viz.overlay(raw["image"], raw["mask"]), "true mask"),
         (viz.overlay(raw["image"], ws_long[cfg.t].argmax(0).numpy()), f"β {cfg.beta:g}, t {cfg.t} (default)"),
         (viz.overlay(raw["image"], ws_b1.argmax(0).numpy()), f"β = 1, t {cfg.t}"),
         (viz.overlay(raw["image"], ws_long[TS[-1]].argmax(0).numpy()), f"β {cfg.beta:g}, t = {TS[-1]}")]
fig = viz.image_grid([[c for c, _ in cells]], titles=[[t for _, t in cells]], size=2.0)
fig.savefig(OUT / "failure_examples.png")
display(fig)
jb, jt = BETAS.index(cfg.beta) if cfg.beta in BETAS else None, TS.index(cfg.t) if cfg.t in TS else None
print(f"β = 1: mIoU {mi_b[0]:.3f}, foreground recall {fg_b[0]:.2f}"
      + (f" (β = {cfg.beta:g}: {mi_b[jb]:.3f}, {fg_b[jb]:.2f})" if jb is not None else "")
      + f"; t = {TS[-1]}: mIoU {mi_t[-1]:.3f}, foreground recall {fg_t[-1]:.2f}"
      + (f" (t = {cfg.t}: {mi_t[jt]:.3f}, {fg_t[jt]:.2f})" if jt is not None else ""))


# %% [markdown]
# Both curves have a maximum: too little sharpening or too many steps wash the objects out, too much
# sharpening or too few steps leave the CAMs as they were (at $t = 0$ the walk *is* the pooled CAM).
# PSA's $\beta = 8$, $t = 256$ were tuned on VOC; the sweep says whether they suit these scenes too —
# but note that choosing them this way uses the ground truth, as the oracle threshold of notebook 01 did.

# %% [markdown]
# ## 9 Exercises
#
# **Exercise 1 — the pair sets (Eq. 3).** Write `pair_sets(label, radius)`: `label` is an `(h, w)`
# integer numpy array (0 background, $c > 0$ a class, 255 neutral); return three `(K, h, w)` boolean
# arrays `(bg_pos, fg_pos, neg)` over the forward offsets of `wsss_core.affinity.pair_offsets(radius)`
# (in that order), where entry `[k, y, x]` describes the pair `(y, x)`–`(y + dy_k, x + dx_k)`. Try it
# without loops over pixels (one slice per offset).

# %%
def pair_sets(label, radius):
    "label (h, w) int → (bg_pos, fg_pos, neg), each (K, h, w) bool over A.pair_offsets(radius)."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_1 = exercises.check("pair_sets", pair_sets, use_solution=USE_SOLUTIONS)


# %% [markdown]
# **Exercise 2 — the transition matrix (Eq. 6).** Write `transition_matrix_dense(aff, radius, beta)`:
# `aff` is a `(K, h, w)` float64 tensor of forward affinities (0 where the target leaves the grid);
# return the dense `(N, N)` float64 tensor $T = D^{-1}W^{\circ\beta}$ with $W_{ii} = 1$ and
# $W_{ij} = W_{ji}$ = the pair's affinity (positions numbered row by row).

# %%
def transition_matrix_dense(aff, radius, beta):
    "aff (K, h, w) → T (N, N), N = h·w, rows summing to 1."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_2 = exercises.check("transition_matrix_dense", transition_matrix_dense, use_solution=USE_SOLUTIONS)


# %% [markdown]
# **Exercise 3 — a walk that stays sparse (Eq. 7).** Write `walk(T, x, t)`: `T` is a
# `scipy.sparse.csr_matrix` (N × N), `x` a `(C, N)` numpy array; return $T^t x$ for every channel as a
# `(C, N)` array, without ever making a dense N × N matrix. Then time it against
# `np.linalg.matrix_power(T.toarray(), t)` on a 64 × 64 grid — and predict first which is faster, and
# by how much.

# %%
def walk(T, x, t):
    "T (N, N) scipy sparse, x (C, N) → T^t applied to every row of x, (C, N)."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_3 = exercises.check("walk_sparse", walk, use_solution=USE_SOLUTIONS)

# %% [markdown]
# **Exercise 4 — open: what should AffinityNet learn from, and with what?** §5.1 showed that the
# confident foreground spills over the bodies' edges unless the CRF pulls it back. Try, one at a time,
# and compare §7.1's and §7.3's tables and the boundary maps of §6 (each run trains a new AffinityNet
# in its own folder under `OUT_DIR`): (a) `USE_CRF = False`; (b) PSA's levels — the deep one too:
# `cfg.replace(levels=None, level_channels=(32, 64, 128))`; (c) stricter labels without the CRF,
# `FG_ALPHA = 1`, or IRN's constants, `cfg.replace(label_mode="threshold")`; (d) a fresh backbone,
# `cfg.replace(init_from_classifier=False)`. Which change moves the *boundary map* onto the objects'
# edges? Why can a network that sees the badge learn the CAM blob from the pairs, and one that sees
# 19 px cannot? (Hint: what do the wrong negative pairs of §5.1 join?)
#
# **Exercise 5 — open: stride 8.** Train with `cfg.replace(feature_stride=8, backbone_kwargs={"width": 32,
# "output_stride": 8})` (PSA's stride). With radius 5 on the 12 × 12 grid of a 96-px scene, how much of
# the image does one neighbourhood cover, and what happens to small objects?

# %% [markdown]
# ## 10 Summary and pointers
#
# * CAMs are sure about little — the badges and the far background — and PSA keeps only that
#   (Eqs. 1–2). From pairs of confident pixels AffinityNet learns which neighbours belong together
#   (Eqs. 3–5), a class-agnostic notion that carries to the body pixels the CAMs missed.
# * A random walk with the affinities as transition probabilities (Eqs. 6–7) spreads each class from
#   its peak over its region and stops where affinities are low. $T$ is sparse; kept sparse, the walk
#   costs $O(N\gamma^2)$ memory instead of the official code's $O(N^2)$ (§4.4; `benchmarks/bench_random_walk.py`).
# * The walk is only as good as the boundaries AffinityNet learned (§7.3: the same walk with perfect
#   affinities is the ceiling). Labels that spill over object edges make wrong *negative* pairs and, with
#   features that can see the badge, teach the network the CAM blob (§5.1) — hence the CRF and the
#   shallow levels here. Camouflaged and touching objects leak, and too small a $\beta$ or too many
#   steps wash objects into the background (§8).
#
# The numbers of this run next to PSA's (toy scenes, small CNN, CPU — compare the pattern, not the
# absolute values):

# %%
total_seconds = time.perf_counter() - T_START
summary = [
    ("CAM pseudo-labels, mIoU", f"{100 * rep_cam['miou']:.1f} (α = {cfg.rw_alpha:g}); {100 * rep_best['miou']:.1f} (oracle θ*)",
     "48.0 (ResNet-38, VOC train; PSA README 47.7)"),
    ("after the random walk, mIoU", f"{100 * rep_rw['miou']:.1f} ({100 * (rep_rw['miou'] - rep_cam['miou']):+.1f})",
     "58.1 (+10.1; CVPR: α 4/16/24), 61.0 with the released α 4/16/32; +dCRF 59.7"),
    ("foreground precision / recall", f"{rep_cam['fg_precision']:.2f} / {rep_cam['fg_recall']:.2f} → "
     f"{rep_rw['fg_precision']:.2f} / {rep_rw['fg_recall']:.2f}", "–"),
    ("body recall (off the badges)", f"{f3(g(rep_cam, 'body_recall'))} → {f3(g(rep_rw, 'body_recall'))}", "– (VOC has no part masks)"),
    ("random walk per image", f"{1000 * rw_timing['seconds_per_image']:.1f} ms (sparse, {engine.select_device(DEVICE)}, grid {hg}×{wg})",
     "dense N × N on a GPU"),
    ("AffinityNet training", f"{aff_train_seconds:.0f} s ({cfg.train.epochs} epochs, {len(eval_ds)} images)", "8 epochs of train_aug, GPUs"),
    ("this notebook, end to end", f"{total_seconds:.0f} s", "–"),
]
display(Markdown("| | ours (this run, toy scenes) | PSA, PASCAL VOC 2012 train |\n|---|---|---|\n"
                 + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in summary)))

# %% [markdown]
# Pointers:
#
# * **IRN** (Ahn, Cho & Kwak, CVPR 2019) replaces AffinityNet's features by a class-boundary map and
#   derives each pair's affinity from the strongest boundary on the line between them; it trains at
#   stride 4 with radius 10, walks with $\beta = 10$ and reports 66.5 mIoU on VOC train (CAM 48.3).
# * The walk's labels become the training set of a segmentation network (notebook 06, PSA: DeepLab on
#   ResNet-38, VOC val 61.7).
# * **EDAM** (notebook 03) and **EPS** (notebook 05) attack the CAMs themselves — their completeness and
#   their leak onto co-occurring context — instead of post-processing them.
