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
# # 04 · Box2Seg: segmentation from bounding boxes
#
# ## 1 Objective
#
# Notebooks 01–03 start from the weakest label, the list of classes in an image. A **bounding box** per
# object says much more — which class, how many, and roughly where and how big — and costs an annotator
# about 10 s per object instead of a minute or more for a polygon. What it does not say is *which pixels
# of the box are object*. The classic answer (SDI, Khoreva et al. CVPR 2017) is to run **GrabCut**
# (Rother et al., SIGGRAPH 2004) inside every box and train an ordinary segmentation network on the result.
# GrabCut is good but not right: it **under-estimates** an object whose colours resemble its surroundings
# and **over-estimates** when background inside the box looks like the object. The figure at the end of
# §2 shows both on our toy scenes.
#
# **Box2Seg** (Kulharia, Chandra, Agrawal, Torr & Tyagi, ECCV 2020) keeps GrabCut's labels but does not
# trust them blindly:
#
# * an **attention-weighted loss** — the per-pixel cross-entropy inside a box, multiplied by a
#   *predicted*, per-class attention score — lets the network decide which pixels of a box to learn as
#   object and damps the gradients of wrong foreground labels;
# * a **soft filling-rate constraint** ties the attention of each box to the share of the box that
#   GrabCut found to be object, so the attention cannot simply switch itself off;
# * **discriminative pixel embeddings**, first trained so that pixels with the same GrabCut label are
#   similar, then trained so that their pairwise affinities agree with the segmentation;
# * at test time only the segmentation branch is used.
#
# **No official code was released and the paper body was not available to us**: what follows is *our
# reconstruction* from the authors' own description (their blog and abstract; see
# `../shared/reference/algorithms.md` §5), every open choice documented in §3 and in the docstrings of
# `wsss_core.losses_box2seg`. We measure GrabCut's errors, train one segmentation network on the same
# schedule with filled boxes, with GrabCut labels, and with Box2Seg's losses (and without each of its
# terms), and look at the learned attention and embeddings. The authors also report that the same loss
# helps **fully supervised** training when some objects are missing from the masks but all boxes are
# present (§7.4); §7.5 repeats the key comparison on two small sets of real photos, and §7.6 on toy scenes
# redrawn so that GrabCut errs as it does on photos.
#
# *How to use it:* run top to bottom. With `PROFILE = "tutorial"` the first run makes GrabCut labels and
# trains several small networks on a CPU (§10 prints how long it took here); everything is stored under
# `OUT_DIR`, so a second run reloads it. `"smoke"` (CI) proves the code path on a few dozen images — its
# numbers mean nothing. Exercises are in §9; instructors set `USE_SOLUTIONS = True`.

# %% [markdown]
# ## 2 Parameters
#
# Papermill overwrites this cell's values (the runner injects `PROFILE`, `OUT_DIR`, `SEED`, `DEVICE`
# and `USE_SOLUTIONS`).

# %% tags=["parameters"]
PROFILE = "tutorial"        # "smoke" (CI, seconds) | "tutorial" (laptop CPU, minutes) | "paper" (PASCAL VOC on a GPU)
DATA_ROOT = None            # None: the profile's default data folder (toy scenes are generated on first use)
DEVICE = "auto"             # "auto" | "cpu" | "cuda" | "mps"
SEED = 0                    # seeds every training (same seed for all settings) and the choice of images shown
OUT_DIR = "../runs/tutorial"
USE_SOLUTIONS = False       # instructors / CI: check the reference solutions of the exercises
EPOCHS = None               # None: the profile's epochs per setting (the same for every setting)
SETTINGS = None             # None: the profile's settings, e.g. ["grabcut_ce", "box2seg"]
MISSING_SHARE = None        # None: the profile's share of objects erased from the masks in §7.4
REAL_DATA = True            # §7.5 on ../shared/data (GrabCut benchmark, Weizmann horses) when it is there
COMPARE_INIT = True         # §7.3: also train GrabCut + CE and Box2Seg from a random backbone (2 more trainings)
SEED_CHECK = True           # §7.3: retrain GrabCut + CE and the Box2Seg variants with seed SEED + 1 (3 more trainings)
N_SHOW = 5                  # images in the example figures
N_ATTENTION_IMAGES = 300    # §6.2: training images over which the attention is measured against GrabCut's errors
LONG_SCHEDULE = 3           # §7.3: also train GrabCut + CE and both Box2Seg variants for 3 times the epochs (3 trainings, 6 with SEED_CHECK; 0 skips it)
PHOTO_LIKE = True           # §7.6: the same comparison on toy scenes whose boxes hold background as on photos (2 more trainings)

# %%
# Everything else is derived from the parameters above.
import dataclasses
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
from wsss_core import boxes, engine, exercises, profiles, viz, widgets
from wsss_core import losses_box2seg as L
from wsss_core.data.palette import read_label_png
from wsss_core.metrics import ConfusionMatrix
from wsss_core.data.voc import VOCLayoutDataset
from wsss_core.stages import box2seg as stage
from wsss_core.stages.cam import write_metrics

# %matplotlib inline
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 9,
                     "image.interpolation": "nearest"})
engine.seed_everything(SEED)
rng = np.random.default_rng(SEED)

# --- data: the toy scenes of notebook 00 (or PASCAL VOC for the paper profile) ---------------------
data = profiles.prepare_data(PROFILE, DATA_ROOT)
TOY = data.kind == "toy"                  # toy scenes: camouflaged / non-convex flags, part and context masks

# --- the stage's config: the profile's preset, with this notebook's overrides ---------------------
cfg = stage.config_for_profile(PROFILE)


def with_run(seg):
    "The notebook's seed, device and epochs applied to a SegConfig's schedule."
    return seg.replace(train=seg.train.replace(seed=SEED, device=DEVICE,
                                               epochs=int(EPOCHS) if EPOCHS else seg.train.epochs))


cfg = cfg.replace(seg=with_run(cfg.seg),
                  real=dataclasses.replace(cfg.real, seg=cfg.real.seg.replace(
                      train=cfg.real.seg.train.replace(seed=SEED, device=DEVICE))),
                  missing_share=float(MISSING_SHARE) if MISSING_SHARE is not None else cfg.missing_share)
RUN = list(SETTINGS) if SETTINGS else list(cfg.settings)

OUT = Path(OUT_DIR) / stage.NOTEBOOK
OUT.mkdir(parents=True, exist_ok=True)
# training images with everything needed to *look* at them (instances, badges, context); never used to train
train_raw = VOCLayoutDataset(data.root, data.train_split, saliency_dir=None, cache=True,
                                   instance_dir="SegmentationObject" if TOY else None)
NAMES = train_raw.class_names
C = train_raw.num_classes


def rel(p) -> str:
    "A path relative to the working directory (notebooks/), for printing."
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


print(f"profile {PROFILE}, seed {SEED}, device {engine.select_device(DEVICE)}")
print(f"data: {rel(data.root)} ({data.kind}) — {C} classes: {NAMES[1:]}")
print(f"network: SegNet on {cfg.seg.backbone} {cfg.seg.backbone_kwargs}, decoder {cfg.seg.channels} ch at stride "
      f"{cfg.seg.decoder_stride}; {cfg.seg.train.epochs} epochs, batch {cfg.seg.train.batch_size}, "
      f"{cfg.seg.train.optimizer} lr {cfg.seg.train.lr} ({cfg.seg.train.schedule}) for every setting")
print(f"settings: {RUN}")
print(f"outputs: {rel(OUT)}")
print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, opencv {cv2.__version__}, "
      f"wsss_core {wsss_core.__version__}")


# %% [markdown]
# ### The problem on a picture
#
# Each row: the image with its boxes (all we are given), the boxes filled with their class, GrabCut
# inside every box, and the true mask (used only to score). Rows are picked to include a
# *camouflaged* object (its body has the colour of the background beneath it) and a *non-convex* one.

# %%
def label_names(label) -> str:
    return ", ".join(NAMES[c + 1] for c in np.flatnonzero(label)) or "(none)"


FLAGS = {i: stage.object_flags(train_raw, i) for i in range(len(train_raw))} if TOY else {}


def pick_images(n):
    "Images with a camouflaged object, a non-convex one, then random ones (seeded)."
    chosen = []
    for want in ("camouflaged", "nonconvex"):
        cand = [i for i, fl in FLAGS.items() if any(f[want] for f in fl) and i not in chosen]
        if cand:
            chosen.append(int(rng.choice(cand)))
    rest = [i for i in range(len(train_raw)) if i not in chosen]
    chosen += [int(i) for i in rng.choice(rest, size=max(0, min(n, len(train_raw)) - len(chosen)), replace=False)]
    return sorted(chosen[:n])


SHOW = pick_images(N_SHOW)
raws = {i: train_raw.get_raw(i) for i in SHOW}
gc_show = {i: boxes.grabcut_labels(r["image"], r["boxes"], r["box_labels"], cfg.grabcut) for i, r in raws.items()}


def boxes_row(fig, row, ncols, col=0, show_names=False):
    "Draw the boxes of image SHOW[row] on the grid cell (row, col)."
    r = raws[SHOW[row]]
    viz.draw_boxes(fig.axes[row * ncols + col], r["boxes"], r["box_labels"], NAMES, linewidth=1.2, show_names=show_names)


cells = [[r["image"], viz.overlay(r["image"], boxes.filled_box_labels(r["boxes"], r["box_labels"], r["mask"].shape)),
          viz.overlay(r["image"], gc_show[i]), viz.overlay(r["image"], r["mask"])] for i, r in raws.items()]
cats = {i: ", ".join(sorted({stage.object_category(f) for f in FLAGS.get(i, [])} - {"plain"})) for i in SHOW}
fig = viz.image_grid(cells, col_titles=["given: image + boxes", "filled boxes", "GrabCut in each box", "true mask"],
                     titles=[[f"{raws[i]['id']}: {label_names(raws[i]['label'])}" + (f"\n({cats[i]})" if cats.get(i) else ""),
                              "", "", ""] for i in SHOW],
                     size=1.9)
for row in range(len(SHOW)):
    boxes_row(fig, row, 4, show_names=True)
viz.class_legend(fig, NAMES, ignore=True)
fig.savefig(OUT / "problem.png")
display(fig)

# %% [markdown]
# ## 3 Theory
#
# **GrabCut** (Rother, Kolmogorov & Blake 2004; `cv2.grabCut`, called by `wsss_core.boxes.grabcut_box`).
# Each pixel $n$ gets an opacity $\alpha_n \in \{0, 1\}$ (background / object). Object and background
# colours are each modelled by a Gaussian mixture with $K = 5$ components $\theta$; $k_n$ is the component
# of pixel $n$. GrabCut minimises the energy
#
# $$E(\alpha, k, \theta, z) = \sum_n -\log\big(\pi_{\alpha_n k_n}\, \mathcal{N}(z_n;\, \mu_{\alpha_n k_n}, \Sigma_{\alpha_n k_n})\big)
# + \gamma \sum_{(m, n) \in \mathcal{N}} [\alpha_m \neq \alpha_n]\, e^{-\beta \lVert z_m - z_n \rVert^2} \tag{1}$$
#
# — a colour term and a contrast-sensitive smoothness term over neighbouring pixels — by alternating:
# assign components, re-fit the mixtures, solve for $\alpha$ with a min-cut. Initialised from a
# rectangle (`GC_INIT_WITH_RECT`), the outside is *sure background* and the inside *probably object*;
# after 5 iterations the object is $\{\text{GC\_FGD}, \text{GC\_PR\_FGD}\}$. Its failure modes follow
# from Eq. 1: an object coloured like its surroundings costs nothing to drop (**under-estimation**), and
# background inside the box coloured like the object costs nothing to keep (**over-estimation**).
#
# **From boxes to a label map** (`wsss_core.boxes.grabcut_labels`, `paste_masks`; the convention of SDI and
# its public re-implementation): one GrabCut per box $b$ of class $c_b$ gives a mask $G_b$; masks are
# pasted largest box first, so the **smallest box containing a pixel wins**; pixels outside every box are
# background:
#
# $$Y(x) = c_{b^*(x)} \ \text{ with } \ b^*(x) = \arg\min_{b \,:\, x \in G_b} |b|, \qquad Y(x) = 0 \text{ if no } G_b \ni x. \tag{2}$$
#
# Boxes thinner than 3 px (or under 9 px²) are filled; a box covering the whole image is shrunk by 3 px
# per side so that GrabCut has background to model. The **filling rate** of a box (BCM's term, Song et
# al. CVPR 2019; `wsss_core.boxes.filling_rates`) is the share of it that is object,
# $\rho_b = |G_b \cap b| / |b|$.
#
# **Box2Seg — our reconstruction** (`wsss_core.losses_box2seg`; the equation numbers B1–B7 are ours).
# The network (`wsss_core.models.segnet.SegNet`) has a shared backbone + decoder and three heads:
# segmentation probabilities $p_c(x)$ ($c = 0$ background), per-class attention $A_c(x) = \sigma(a_c(x))$,
# and unit embeddings $e(x)$. Let $k(x)$ be the smallest box containing $x$ (`wsss_core.boxes.box_index_map`),
# $\Omega_k$ the pixels whose smallest box is $k$, $\Omega_B = \cup_k \Omega_k$, and $\rho_k$ GrabCut's
# filling rate of box $k$ on $\Omega_k$ (`wsss_core.boxes.region_filling_rates`).
#
# * (B1) the base loss, cross-entropy on GrabCut's labels (`L.cross_entropy`):
#   $\mathcal{L}_{ce} = -\frac{1}{|\Omega|} \sum_x \log p_{Y(x)}(x)$;
# * (B2) the **attention-weighted loss** (`L.attention_weighted_loss`): every box pixel is a noisy vote
#   for the box's class, weighted by the attention of that class,
#   $$\mathcal{L}_{awl} = -\frac{1}{|\Omega_B|} \sum_{x \in \Omega_B} A_{c_{k(x)}}(x)\, \log p_{c_{k(x)}}(x);$$
#   with $A \equiv 1$ it is the cross-entropy against the *filled boxes*; with a low $A$ where the box
#   holds background, the wrong foreground labels are damped. Its gradient with respect to $A$ is
#   $-\log p \ge 0$: alone, it would drive the attention to 0;
# * (B3) the **soft filling-rate constraint** (`L.filling_rate_loss`) prevents that:
#   $$\mathcal{L}_{fill} = \frac{1}{K} \sum_k \Big( \frac{1}{|\Omega_k|} \sum_{x \in \Omega_k} A_{c_k}(x) - \rho_k \Big)^2$$
#   — the attention must cover the share $\rho_k$ of the box, and the network chooses *which* share;
# * (B4) **embedding pre-training** on pixel pairs $(i, j)$ within a radius $r$ (`L.embedding_label_loss`),
#   with $a_{ij} = (1 + e_i^\top e_j)/2$ (`L.pair_affinity`) and PSA's balancing of positive background,
#   positive foreground and negative pairs from GrabCut's labels:
#   $\mathcal{L}_{pre} = \tfrac14 \overline{-\log a}^{\,bg^+} + \tfrac14 \overline{-\log a}^{\,fg^+} + \tfrac12 \overline{-\log(1 - a)}^{\,-}$;
# * (B5) the probability that the segmentation gives $i$ and $j$ one label (`L.same_label_probability`):
#   $P_{ij} = \sum_c p_c(i)\, p_c(j)$;
# * (B6) **agreement** of affinities and segmentation (`L.embedding_agreement_loss`):
#   $\mathcal{L}_{agr} = -\overline{P_{ij} \log a_{ij} + (1 - P_{ij}) \log(1 - a_{ij})}$; its gradient pulls
#   $a$ towards $P$ (the embeddings learn the segmentation's grouping) *and* $P$ towards $a$ (the
#   segmentation is asked to give one label to pixels the embeddings group together);
# * (B7) the total, with each term behind a switch (`stage.LossConfig`):
#   $\mathcal{L} = \mathcal{L}_{ce} + \lambda_{awl}\mathcal{L}_{awl} + \lambda_{fill}\mathcal{L}_{fill}
#   + \lambda_{emb}\,[\text{epoch} < E_{pre}]\,\mathcal{L}_{pre} + \lambda_{emb}\,[\text{epoch} \ge E_{pre}]\,\mathcal{L}_{agr}$.
#   At test time: $\hat Y(x) = \arg\max_c p_c(x)$.
#
# Choices the description leaves open, and ours: the attention is a sigmoid per class and only the
# channel of the pixel's (smallest) box is used; B2 is averaged over box pixels and added to B1 (not
# replacing it); $\rho_k$ is GrabCut's share of the box's own pixels; B3 is a squared error; the
# embeddings live on the decoder grid (stride 4; $r = 3$, i.e. ≈ 12 px), are "pre-trained" during the first
# $E_{pre}$ epochs *of the same run* (so every setting has the same schedule), and B6 passes gradients
# both ways; $\lambda_{awl} = \lambda_{fill} = 1$, $\lambda_{emb} = 0.1$ (printed in §5). The paper's trunk is
# UPerNet on ResNet-101 with three separate decoders; ours is a small FPN + pyramid-pooling decoder with
# three light heads on one shared decoder, for a CPU, started from notebook 01's classifier (§5.1).
#
# **Fully supervised with missing objects** (§7.4): the true masks with a share of the objects erased (set
# to background) but every box kept; B1 uses the incomplete masks, B2–B3 the boxes (with GrabCut's
# $\rho$), so an erased object's box still votes for its class where the attention points.

# %% [markdown]
# ## 4 From scratch, then the library
#
# ### 4.1 Pasting masks: the smallest box wins (Eq. 2)
#
# A 6 × 8 example: a large box of class 1 whose mask is the whole box, a small box of class 2 inside it
# whose mask covers only part of it.

# %%
shape = (6, 8)
ex_boxes = np.array([[0, 0, 7, 6], [3, 1, 7, 5]], np.float32)          # x1, y1, x2, y2 (exclusive)
ex_labels = np.array([1, 2])
m_big = np.zeros(shape, bool)
m_big[0:6, 0:7] = True
m_small = np.zeros(shape, bool)
m_small[2:4, 4:6] = True

by_hand = np.zeros(shape, np.uint8)
areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in ex_boxes]
for k in sorted(range(len(ex_boxes)), key=lambda k: -areas[k]):        # largest first ...
    by_hand[[m_big, m_small][k]] = ex_labels[k]                        # ... so the smaller box is pasted last
print(by_hand)
assert np.array_equal(by_hand, boxes.paste_masks([m_big, m_small], ex_boxes, ex_labels, shape))
print("box index map (−1 = outside every box):")
print(boxes.box_index_map(ex_boxes, shape))
print("filled boxes:")
print(boxes.filled_box_labels(ex_boxes, ex_labels, shape))
print("filling rates:", boxes.filling_rates(np.stack([m_big, m_small]), ex_boxes))
print("✓ by hand == wsss_core.boxes.paste_masks; the small box's background keeps the big box's object")

# %% [markdown]
# ### 4.2 GrabCut of one box: the OpenCV call
#
# `wsss_core.boxes.grabcut_box` is `cv2.grabCut` with the rectangle, 5 iterations, a seeded RNG and the
# special cases of §3. Written out for one box of a training image:

# %%
r0 = raws[SHOW[0]]
x1, y1, x2, y2 = boxes.box_pixels(r0["boxes"][0], r0["mask"].shape)
gc_mask = np.zeros(r0["mask"].shape, np.uint8)
bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
cv2.setRNGSeed(cfg.grabcut.seed)                                                   # OpenCV's k-means is random
cv2.grabCut(np.ascontiguousarray(r0["image"][:, :, ::-1]), gc_mask, (x1, y1, x2 - x1, y2 - y1), bgd, fgd,
            cfg.grabcut.iterations, cv2.GC_INIT_WITH_RECT)                         # BGR image, rect = x, y, w, h
by_hand = (gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)
lib, how = boxes.grabcut_box(r0["image"], r0["boxes"][0], cfg.grabcut)
print(f"box {x1, y1, x2, y2}: GrabCut keeps {by_hand.sum()} of {(x2 - x1) * (y2 - y1)} pixels "
      f"(filling rate {by_hand[y1:y2, x1:x2].mean():.2f}); outside the box: {by_hand[~(boxes.box_index_map(r0['boxes'][:1], by_hand.shape) >= 0)].sum()} px")
assert how == "grabcut" and np.array_equal(by_hand, lib)
print("✓ cv2.grabCut by hand == wsss_core.boxes.grabcut_box")

# %% [markdown]
# ### 4.3 The attention-weighted loss and the filling rate (B2, B3), with loops

# %%
g = torch.Generator().manual_seed(SEED)
Bq, Cq, Hq, Wq = 2, 3, 4, 5
logits_q = torch.randn(Bq, Cq + 1, Hq, Wq, generator=g)
att_q = torch.rand(Bq, Cq, Hq, Wq, generator=g)
box_map_q = torch.full((Bq, Hq, Wq), -1)
box_map_q[0, 0:3, 0:4], box_map_q[0, 1:3, 2:4], box_map_q[1, 1:4, 1:5] = 0, 1, 2   # box 1 nested in box 0
classes_q = torch.tensor([1, 3, 2])
rho_q = torch.tensor([0.6, 0.9, 0.3])

logp = torch.log_softmax(logits_q, dim=1)
terms, sums, counts = [], torch.zeros(3), torch.zeros(3)
for b in range(Bq):
    for y in range(Hq):
        for x in range(Wq):
            k = int(box_map_q[b, y, x])
            if k >= 0:
                c = int(classes_q[k])
                terms.append(-att_q[b, c - 1, y, x] * logp[b, c, y, x])           # B2 summand
                sums[k] += att_q[b, c - 1, y, x]
                counts[k] += 1
awl_hand = torch.stack(terms).mean()
fill_hand = ((sums / counts - rho_q) ** 2).mean()                                   # B3
awl_lib = L.attention_weighted_loss(logits_q, att_q, box_map_q, classes_q)
fill_lib = L.filling_rate_loss(att_q, box_map_q, classes_q, rho_q)
print(f"L_awl: by hand {awl_hand:.6f}, library {awl_lib:.6f}   |   L_fill: by hand {fill_hand:.6f}, library {fill_lib:.6f}")
assert torch.allclose(awl_hand, awl_lib, atol=1e-6) and torch.allclose(fill_hand, fill_lib, atol=1e-6)

# with A ≡ 1, B2 is the plain cross-entropy against the filled boxes on box pixels
filled = torch.where(box_map_q >= 0, classes_q[box_map_q.clamp_min(0)], torch.full_like(box_map_q, 255))
ce_filled = F.cross_entropy(logits_q, filled, ignore_index=255)
assert torch.allclose(L.attention_weighted_loss(logits_q, torch.ones_like(att_q), box_map_q, classes_q), ce_filled, atol=1e-6)
print(f"✓ loops == library; with A ≡ 1 the attention-weighted loss is the cross-entropy on filled boxes ({ce_filled:.4f})")

# %% [markdown]
# ### 4.4 Affinities and the agreement loss (B5, B6) for one offset

# %%
emb_q = F.normalize(torch.randn(1, 4, 3, 4, generator=g), dim=1)
prob_q = torch.softmax(torch.randn(1, 3, 3, 4, generator=g), dim=1)
dy, dx = 1, 0                                                          # each pixel with the one below it
a_hand = (1 + (emb_q[:, :, :-1] * emb_q[:, :, 1:]).sum(1)) / 2          # (1, 2, 4)
P_hand = (prob_q[:, :, :-1] * prob_q[:, :, 1:]).sum(1)
ce_hand = -(P_hand * torch.log(a_hand) + (1 - P_hand) * torch.log(1 - a_hand)).mean()
aff, valid = L.pair_affinity(emb_q, [(dy, dx)])
assert torch.allclose(aff[0, 0][valid[0]], a_hand.flatten(), atol=1e-6)
# the library's agreement loss over this one offset (radius just above 1 gives (0, 1) and (1, -1..1)):
# compare with the same pairs by hand
offs = L.pair_offsets(1.5)
ce_all = []
for (dy, dx) in offs:
    a = (1 + (emb_q * L.shift(emb_q, dy, dx)).sum(1)) / 2
    P = (prob_q * L.shift(prob_q, dy, dx)).sum(1)
    ok = L.pair_affinity(emb_q, [(dy, dx)])[1][0]
    ce_all.append((-(P * torch.log(a.clamp(1e-5, 1 - 1e-5)) + (1 - P) * torch.log((1 - a).clamp(1e-5, 1))))[0][ok])
ce_all = torch.cat(ce_all).mean()
lib = L.embedding_agreement_loss(emb_q, torch.log(prob_q), radius=1.5)
print(f"offsets within radius 1.5: {offs}; agreement loss by hand {ce_all:.6f}, library {lib:.6f}")
assert torch.allclose(ce_all, lib, atol=1e-5)
print(f"PSA's radius 5 gives {len(L.pair_offsets(5))} offsets; ours, radius {cfg.box2seg.emb_radius:g} on the stride-"
      f"{cfg.seg.decoder_stride} grid, {len(L.pair_offsets(cfg.box2seg.emb_radius))}")
print("✓ by hand == wsss_core.losses_box2seg.pair_affinity / embedding_agreement_loss")

# %% [markdown]
# ## 5 Run it
#
# ### 5.1 A backbone to start from, and GrabCut over the training split
#
# Every paper in this series starts its networks from an ImageNet-pretrained backbone. We have no
# ImageNet on a CPU, and a small CNN trained from scratch on boxes spends its first epochs learning
# *which class* a body is (from its badge) rather than *where* it ends. Our stand-in: the backbone of
# notebook 01's CAM classifier, trained on the **image labels** — which every box annotation implies,
# so no extra supervision enters. `stage.classifier_backbone` reloads it from `OUT_DIR/01_class_activation_maps`
# (or trains it there exactly as notebook 01 would). Every setting below starts from these weights.
#
# `stage.prepare` then runs `wsss_core.boxes.make_grabcut_labels` over every training image — one
# process per core, a progress bar, one PNG per image and a manifest with every box's filling rate under
# `grabcut/train-<fingerprint>/` — or reloads them when the same configuration made them before.

# %%
backbone = None
if cfg.seg.backbone_init == "cam_classifier":
    cam_cfg = profiles.cam_config(PROFILE)
    cam_cfg = cam_cfg.replace(train=cam_cfg.train.replace(seed=SEED, device=DEVICE))        # as notebook 01 trains it
    t0 = time.perf_counter()
    backbone = stage.classifier_backbone(data, Path(OUT_DIR) / "01_class_activation_maps", cam_cfg)
    print(f"backbone: the CAM classifier {backbone[1]} of notebook 01 ({time.perf_counter() - t0:.0f} s to load or train)")
t0 = time.perf_counter()
sd = stage.prepare(cfg, data, OUT, backbone=backbone)
gc_man = sd.gc_manifest
gc_reused = time.perf_counter() - t0 < 0.5 * gc_man["seconds"]
print(f"GrabCut {'(reused) ' if gc_reused else ''}on {len(gc_man['ids'])} training images: {gc_man['seconds']:.1f} s with "
      f"{gc_man['workers']} process(es) = {gc_man['images_per_second']:.1f} images/s; boxes: {gc_man['how_counts']}")
print(f"labels in {rel(sd.gc_dir)}; validation: {len(sd.val)} images; missing-annotation experiment erases "
      f"{sum(len(v) for v in sd.missing.values())} objects in {len(sd.missing)} images")

# %% [markdown]
# ### 5.2 Train every setting
#
# One network, one schedule, one seed; only the target of the cross-entropy and the extra terms change
# (`stage.setting`). Each run goes through the project's training loop (`wsss_core.engine.train`:
# progress bar, checkpoint after every epoch) and is reloaded when its checkpoint folder — named by a
# fingerprint of everything that changes the weights — already holds the finished run. Then the
# segmentation branch alone is scored on the **validation** split.

# %%
DESCR = {"box_ce": "filled boxes + CE", "grabcut_ce": "GrabCut + CE", "box2seg": "Box2Seg (all terms)",
         "box2seg_no_fill": "Box2Seg without filling rate", "box2seg_no_emb": "Box2Seg without embeddings",
         "box2seg_no_awl": "Box2Seg without attention (CE + embeddings)", "mask_ce": "true masks + CE",
         "box2seg_class_rho": "Box2Seg, per-class filling rate (ours)",
         "full_ce": "masks with missing objects + CE", "full_awl": "masks with missing objects + attention loss"}
for name in RUN:
    target, loss = stage.setting(name, cfg)
    terms = [f"{w}={getattr(loss, w):g}" for w in ("awl_weight", "fill_weight", "emb_weight") if getattr(loss, w)]
    extra = f" (embedding pre-training {loss.emb_pretrain_epochs} epoch(s), radius {loss.emb_radius:g})" if loss.emb_weight else ""
    print(f"{name:16s} target {target:13s} {', '.join(terms) or 'CE only'}{extra}")

results = {}
for name in RUN:
    results[name] = res = stage.run_setting(name, cfg, sd, OUT)
    how = "reused" if res.reused else "trained"
    print(f"{name}: {how} ({res.train_seconds:.0f} s) → validation mIoU {res.val['miou']:.3f}   [{rel(res.checkpoint_dir)}]")
train_seconds = sum(r.train_seconds for r in results.values())

# %%
fig = Figure(figsize=(11, 3.2), layout="constrained")
ax1, ax2, ax3 = fig.subplots(1, 3)
for j, (name, res) in enumerate(results.items()):
    x, y = res.history.series("ce", "epochs")
    ax1.plot(np.arange(1, len(y) + 1), y, "o-", ms=3, color=f"C{j}", label=name)
ax1.set(xlabel="epoch", ylabel="cross-entropy on the setting's target (B1)", title="B1 per setting (epoch means)")
ax1.grid(alpha=0.3)
ax1.legend(fontsize=7)
if "box2seg" in results:
    h = results["box2seg"].history
    h.plot(ax=ax2, keys=[k for k in ("ce", "awl", "fill", "emb_pre", "emb_agr") if h.series(k, "epochs")[0].size])
    ax2.set(title="Box2Seg's terms (unweighted)", ylabel="loss")
    xs, ys = h.series("att_mean", "epochs")
    ax3.plot(np.arange(1, len(ys) + 1), ys, "o-", color="tab:purple", label="mean attention of a box's class")
    rho_all = np.concatenate([np.asarray(v["rho"]) for v in sd.store("grabcut").items.values()])
    ax3.axhline(np.nanmean(rho_all), color="k", ls="--", lw=1, label=f"mean GrabCut ρ = {np.nanmean(rho_all):.2f}")
    ax3.set(xlabel="epoch", ylim=(0, 1), title="attention in boxes (B3: towards ρ; B2: down)")
    ax3.grid(alpha=0.3)
    ax3.legend(fontsize=7)
fig.savefig(OUT / "training.png")
display(fig)


# %% [markdown]
# ## 6 Look at it
#
# ### 6.1 GrabCut's errors
#
# Left to right: the image and its boxes, the true mask, GrabCut, and GrabCut's errors — **red: object
# pixels missed** (under-estimation), **blue: background taken** (over-estimation), yellow: object given
# another class.

# %%
def error_map(image, pred, gt):
    "Image dimmed, with missed object pixels red, taken background blue, wrong class yellow."
    out = (0.45 * viz.as_image(image)).astype(np.uint8)
    valid = gt != 255
    out[valid & (gt > 0) & (pred == 0)] = (230, 30, 30)
    out[valid & (gt == 0) & (pred > 0)] = (40, 90, 255)
    out[valid & (gt > 0) & (pred > 0) & (pred != gt)] = (250, 220, 0)
    return out


def gc_label(i):
    return read_label_png(sd.gc_dir / f"{train_raw.ids[i]}.png")


cells, titles = [], []
for i in SHOW:
    r = raws[i]
    lab = gc_label(i)
    e = boxes.grabcut_errors(lab, r["mask"], r["boxes"])
    cells.append([r["image"], viz.overlay(r["image"], r["mask"]), viz.overlay(r["image"], lab), error_map(r["image"], lab, r["mask"])])
    titles.append([r["id"], "true mask", "GrabCut",
                   f"missed {e['missed'] / max(e['object'], 1):.0%} of object\ntook {e['taken'] / max(e['box_background'], 1):.0%} of box bg"])
fig = viz.image_grid(cells, titles=titles, size=1.9)
for row in range(len(SHOW)):
    boxes_row(fig, row, 4)
fig.savefig(OUT / "grabcut_errors.png")
display(fig)


# %% [markdown]
# ### 6.2 The learned attention inside the boxes
#
# For the same training images, Box2Seg's attention $A_c$ of each box's class over the box's own pixels
# $\Omega_k$ (blue 0 → red 1; outside the boxes: no colour), next to GrabCut's labels and the truth. Where
# GrabCut took background, does the attention stay low; where it missed object, does the attention
# still cover it?

# %%
def box_attention(model, raw):
    "(H, W) attention of each pixel's box class (NaN outside boxes), and the box index map."
    att = stage.predict_maps(model, stage.image_tensor(raw["image"])[None], heads=("att",))["att"][0].numpy()
    bmap = boxes.box_index_map(raw["boxes"], raw["mask"].shape)
    out = np.full(bmap.shape, np.nan, np.float32)
    for k, c in enumerate(raw["box_labels"]):
        out[bmap == k] = att[c - 1][bmap == k]
    return out, bmap


def att_cell(image, a):
    "Heat map of the attention inside the boxes; the image, dimmed, outside."
    hm = viz.heatmap(image, np.nan_to_num(a), alpha=0.65)
    dim = (0.35 * viz.as_image(image)).astype(np.uint8)
    return np.where(np.isnan(a)[..., None], dim, hm)


if "box2seg" in results:
    b2s = results["box2seg"].model
    cells, titles = [], []
    for i in SHOW:
        r = raws[i]
        a, bmap = box_attention(b2s, r)
        rho = boxes.region_filling_rates(gc_label(i), bmap, r["box_labels"])
        means = [float(np.nanmean(a[bmap == k])) for k in range(len(r["boxes"]))]
        cells.append([r["image"], viz.overlay(r["image"], gc_label(i)), att_cell(r["image"], a), viz.overlay(r["image"], r["mask"])])
        titles.append([r["id"], "GrabCut", "attention A_c in boxes\n" + " ".join(f"{m:.2f}/ρ{p:.2f}" for m, p in zip(means, rho)),
                       "true mask"])
    fig = viz.image_grid(cells, titles=titles, size=1.9)
    for row in range(len(SHOW)):
        boxes_row(fig, row, 4, col=2)
    fig.savefig(OUT / "attention.png")
    display(fig)
else:
    print("box2seg was not among the settings run: no attention to show")

# %% [markdown]
# **Does the attention find GrabCut's mistakes?** Over the boxes of training images, the mean attention
# $A_c$ on four kinds of box pixel (`stage.attention_by_grabcut_error`): pixels GrabCut gave the box's class
# rightly (*object kept*) or wrongly (*background taken*: a wrong foreground label), and pixels it called
# background wrongly (*object missed*) or rightly (*background left*). The attention never sees the truth;
# if it is low on taken background and high on missed object, it has learned where GrabCut is wrong.

# %%
att_err = {}
if "box2seg" in results:
    att_err = stage.attention_by_grabcut_error(results["box2seg"].model, train_raw, sd.gc_dir, n=N_ATTENTION_IMAGES)
    label_ = {"object_kept": "GrabCut: object, truth: object", "background_taken": "GrabCut: object, truth: background (over-estimated)",
              "object_missed": "GrabCut: background, truth: object (under-estimated)", "background_left": "GrabCut: background, truth: background"}
    lines = ["| box pixels (train) | pixels | mean attention $A_c$ |", "|---|---:|---:|"]
    lines += [f"| {label_[k]} | {v['pixels']} | **{v['attention']:.3f}** |" for k, v in att_err.items()]
    display(Markdown("\n".join(lines)))
    print(f"over {min(N_ATTENTION_IMAGES, len(train_raw))} training images: the attention is "
          f"{att_err['background_taken']['attention']:.2f} on GrabCut's wrong object labels vs "
          f"{att_err['object_kept']['attention']:.2f} on its right ones, and {att_err['object_missed']['attention']:.2f} on "
          f"the object GrabCut missed vs {att_err['background_left']['attention']:.2f} on the background it left")
else:
    print("box2seg was not among the settings run: no attention to measure")

# %% [markdown]
# ### 6.3 Predictions on validation images
#
# The segmentation branch of every setting on the same validation images (the attention and embedding
# heads are not used at test time).

# %%
val_show = sorted(int(i) for i in rng.choice(len(sd.val), size=min(N_SHOW, len(sd.val)), replace=False))


def prediction_grid(dataset, indices, models, long_side=None, n_classes=None, size=1.8):
    "One row per image: the image, its true mask and each model's prediction (with n_classes: the image's mIoU in the title)."
    cells, titles = [], []
    for i in indices:
        r = dataset.get_raw(int(i))
        row, t = [r["image"], viz.overlay(r["image"], r["mask"])], [r["id"], "true mask"]
        for n, model in models.items():
            p = stage.predict_maps(model, dataset[int(i)]["image"][None], long_side)["prob"][0].argmax(0).numpy()
            row.append(viz.overlay(r["image"], p))
            t.append(n if n_classes is None else f"{n}\nimage mIoU {ConfusionMatrix(n_classes).update(p, r['mask']).miou():.2f}")
        cells.append(row)
        titles.append(t)
    return viz.image_grid(cells, titles=titles, size=size)


cols = [n for n in ("box_ce", "grabcut_ce", "box2seg", "full_ce", "full_awl") if n in results]
fig = prediction_grid(sd.val, val_show, {n: results[n].model for n in cols}, n_classes=C + 1)
viz.class_legend(fig, NAMES, ignore=True)
fig.savefig(OUT / "predictions.png")
display(fig)

# %% [markdown]
# ### 6.4 Explore: the embeddings' affinity to one pixel
#
# Pick a validation image and a pixel (the white cross): the map shows the affinity
# $a_{ij} = (1 + e_i^\top e_j)/2$ of that pixel's embedding with every other pixel's (on the stride-4
# decoder grid, upsampled; black 0 → white 1), next to Box2Seg's prediction. Pixels of the same object
# should light up together, other objects and background should stay dark. In a live Jupyter session the
# sliders move the pixel; an executed copy shows the default (the centre of the first object).

# %%
emb_model = next((results[n].model for n in ("box2seg", "box2seg_no_awl", "box2seg_no_fill") if n in results
                  and results[n].model.emb_head is not None), None)


def affinity_view(index, y, x):
    r = sd.val.get_raw(index)
    out = stage.predict_maps(emb_model, sd.val[index]["image"][None], heads=("seg", "emb"))
    e = out["emb"][0]                                                       # (E, h, w)
    s = r["image"].shape[0] / e.shape[1]
    yy, xx = min(int(y / s), e.shape[1] - 1), min(int(x / s), e.shape[2] - 1)
    aff = ((1 + torch.einsum("e,ehw->hw", e[:, yy, xx], e)) / 2).numpy()
    aff_up = cv2.resize(aff, r["image"].shape[1::-1], interpolation=cv2.INTER_LINEAR)
    pred = out["prob"][0].argmax(0).numpy()
    same = r["mask"][y, x]
    inside = aff_up[r["mask"] == same].mean() if same != 255 else float("nan")
    outside = aff_up[(r["mask"] != same) & (r["mask"] != 255)].mean()
    fig = viz.image_grid([[r["image"], aff_up, viz.overlay(r["image"], pred), viz.overlay(r["image"], r["mask"])]],
                         titles=[[f"{r['id']} pixel (y={y}, x={x})", f"affinity to it\nsame label {inside:.2f}, others {outside:.2f}",
                                  "prediction", "true mask"]], size=2.3)
    for ax in fig.axes[:2]:
        ax.plot([x], [y], "+", color="white" if ax is fig.axes[1] else "k", ms=12, mew=2)
        ax.plot([x], [y], "+", color="red", ms=6, mew=1)
    return fig


if emb_model is not None:
    idx0 = val_show[0]
    r = sd.val.get_raw(idx0)
    ys, xs = np.nonzero((r["mask"] > 0) & (r["mask"] != 255))
    y0, x0 = (int(np.median(ys)), int(np.median(xs))) if ys.size else (48, 48)
    H0, W0 = r["mask"].shape
    widgets.explore(affinity_view, index=(0, len(sd.val) - 1, 1, int(idx0)), y=(0, H0 - 1, 1, y0), x=(0, W0 - 1, 1, x0));
else:
    print("no setting with embeddings was run")

# %% [markdown]
# ## 7 Measure it
#
# ### 7.1 GrabCut against the truth (training split)
#
# mIoU of the pseudo-labels themselves (filled boxes vs GrabCut), pixels missed and taken, and the same
# per object category: camouflaged bodies, non-convex ones, and the rest (`stage.object_rows`: recall =
# share of an object's pixels given its class; taken = share of its box's background given its class).

# %%
cm_box, cm_gc = ConfusionMatrix(C + 1), ConfusionMatrix(C + 1)
gc_stats, box_stats = boxes.GrabCutStats(), boxes.GrabCutStats()
obj_rows, obj_rows_box = [], []
for i in tqdm(range(len(train_raw)), desc="score GrabCut"):
    r = train_raw.get_raw(i)
    lab = gc_label(i)
    filled = boxes.filled_box_labels(r["boxes"], r["box_labels"], r["mask"].shape)
    cm_gc.update(lab, r["mask"])
    cm_box.update(filled, r["mask"])
    gc_stats.update(lab, r["mask"], r["boxes"])
    box_stats.update(filled, r["mask"], r["boxes"])
    if "instance_mask" in r:
        obj_rows += stage.object_rows(r, lab, FLAGS.get(i), gc_man["fill"][r["id"]])
        obj_rows_box += stage.object_rows(r, filled, FLAGS.get(i))
gs, bs = gc_stats.summary(), box_stats.summary()
box_miou, grabcut_miou = cm_box.miou(), cm_gc.miou()


def f3(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


lines = ["| pseudo-label (train) | mIoU | fg precision | fg recall | object pixels missed | box background taken | pixels wrong |",
         "|---|---:|---:|---:|---:|---:|---:|",
         f"| filled boxes | {box_miou:.3f} | {cm_box.fg_precision():.3f} | {cm_box.fg_recall():.3f} | {bs['miss_rate']:.3f} | {bs['take_rate']:.3f} | {bs['error_rate']:.3f} |",
         f"| GrabCut | {grabcut_miou:.3f} | {cm_gc.fg_precision():.3f} | {cm_gc.fg_recall():.3f} | {gs['miss_rate']:.3f} | {gs['take_rate']:.3f} | {gs['error_rate']:.3f} |"]
display(Markdown("\n".join(lines)))
by_cat = stage.summarise_objects(obj_rows)
if obj_rows:
    lines = ["| objects | n | GrabCut: recall | GrabCut: box background taken | mean true fill | mean GrabCut ρ |", "|---|---:|---:|---:|---:|---:|"]
    for cat in ("plain", "non-convex", "camouflaged", "all"):
        if cat in by_cat:
            rs = obj_rows if cat == "all" else [o for o in obj_rows if o["category"] == cat]
            lines.append(f"| {cat} | {by_cat[cat]['n']} | {by_cat[cat]['recall']:.3f} | {by_cat[cat]['taken']:.3f} | "
                         f"{np.mean([o['true_fill'] for o in rs]):.3f} | {np.mean([o['fill'] for o in rs]):.3f} |")
    display(Markdown("\n".join(lines)))
    tf, gf = np.array([o["true_fill"] for o in obj_rows]), np.array([o["fill"] for o in obj_rows])
    cat_arr = np.array([o["category"] for o in obj_rows])
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for cat, col in (("plain", "tab:green"), ("non-convex", "tab:orange"), ("camouflaged", "tab:red")):
        sel = cat_arr == cat
        ax1.scatter(tf[sel], gf[sel], s=5, alpha=0.5, color=col, label=f"{cat} ({sel.sum()})")
    ax1.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax1.set(xlabel="true filling rate of the box", ylabel="GrabCut's filling rate ρ", title="GrabCut's ρ vs the truth, per box",
            xlim=(0, 1), ylim=(0, 1))
    ax1.legend(fontsize=7)
    cats_ = [c for c in ("plain", "non-convex", "camouflaged") if c in by_cat]
    xs_ = np.arange(len(cats_))
    ax2.bar(xs_ - 0.2, [1 - by_cat[c]["recall"] for c in cats_], 0.4, color="tab:red", label="object pixels missed")
    ax2.bar(xs_ + 0.2, [by_cat[c]["taken"] for c in cats_], 0.4, color="tab:blue", label="box background taken")
    ax2.set_xticks(xs_, cats_)
    ax2.set(title="GrabCut's errors per object category (mean over objects)", ylim=(0, 1))
    ax2.legend(fontsize=7)
    ax2.grid(axis="y", alpha=0.3)
    fig.savefig(OUT / "grabcut_categories.png")
    display(fig)
print(f"filled boxes mIoU {box_miou:.3f} → GrabCut {grabcut_miou:.3f}; GrabCut misses {gs['miss_rate']:.1%} of the object pixels "
      f"and takes {gs['take_rate']:.1%} of the background inside boxes (filled boxes: {bs['take_rate']:.0%} by definition)")

# %% [markdown]
# ### 7.2 The segmentation networks on the validation split
#
# "train s" is the wall-clock time of each training when it was made; on a shared machine it depends on
# the load at that moment, so compare it across runs with care.

# %%
ORDER = [n for n in ("box_ce", "grabcut_ce", "box2seg_no_awl", "box2seg_no_emb", "box2seg_no_fill", "box2seg",
                     "box2seg_class_rho", "mask_ce",
                     "full_ce", "full_awl") if n in results]
lines = ["| setting | trained on | mIoU (val) | fg precision | fg recall | body recall | Δ mIoU vs GrabCut + CE | train s |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
ref = results["grabcut_ce"].val["miou"] if "grabcut_ce" in results else None
for n in ORDER:
    v = results[n].val
    d = f"{v['miou'] - ref:+.3f}" if ref is not None and n != "grabcut_ce" and not n.startswith("full") else ""
    lines.append(f"| {DESCR[n]} | {results[n].target} | **{v['miou']:.3f}** | {f3(v['fg_precision'])} | {f3(v['fg_recall'])} | "
                 f"{f3(v.get('body_recall'))} | {d} | {results[n].train_seconds:.0f} |")
display(Markdown("\n".join(lines)))
display(Markdown("Per-class IoU (val):\n\n| setting | " + " | ".join(NAMES) + " |\n|---|" + "---:|" * len(NAMES) + "\n" + "\n".join(
    f"| {n} | " + " | ".join(f3(results[n].val["per_class_iou"].get(c)) for c in NAMES) + " |" for n in ORDER)))
vals = {DESCR[n]: results[n].val["miou"] for n in ORDER if not n.startswith("full")}
if vals:
    fig = Figure(figsize=(8, 0.45 * len(vals) + 1.0), layout="constrained")
    ax = viz.bar_table(vals, ax=fig.add_subplot(), title="validation mIoU (same network, schedule and seed)", xlim=(0, 1.2))
    ax.axvline(grabcut_miou, color="k", ls="--", lw=0.8)
    ax.text(grabcut_miou, -0.45, " mIoU of the GrabCut\n labels (train)", fontsize=7, va="top")
    ax.figure.savefig(OUT / "settings.png")
    display(ax.figure)

# %% [markdown]
# ### 7.3 Which term does what (ablation)
#
# Each row removes one term from the full method; the last column is what the full method gains by
# having it. A term that does not help on our data is reported as such (§8 and §10 discuss why). The
# last row is not an ablation but our one change to the method (§8 motivates it): B3's target $\rho_k$
# becomes the mean GrabCut filling rate of the box's *class* over the training split (BCM's per-class
# filling rate, `LossConfig(rho="class_mean")`), so a box where GrabCut collapsed no longer tells the
# attention to cover a sliver; its last column is its gain over the full method as described.

# %%
ablation = {}
if "box2seg" in results:
    full = results["box2seg"].val["miou"]
    rows_ = [("box2seg", "all terms (B1 + B2 + B3 + B4/B6)"), ("box2seg_no_fill", "without the filling rate B3"),
             ("box2seg_no_emb", "without the embeddings B4/B6"), ("box2seg_no_awl", "without the attention B2 + B3"),
             ("grabcut_ce", "none: GrabCut + CE (B1 only)"),
             ("box2seg_class_rho", "all terms, B3 with the per-class mean ρ (our change)")]
    lines = ["| Box2Seg | mIoU (val) | contribution of the removed term(s) |", "|---|---:|---:|"]
    for n, text in rows_:
        if n in results:
            m = results[n].val["miou"]
            ablation[n] = m
            d = m - full if n == "box2seg_class_rho" else full - m
            lines.append(f"| {text} | {m:.3f} | {'' if n == 'box2seg' else f'{d:+.3f}'} |")
    display(Markdown("\n".join(lines)))
else:
    print("box2seg was not among the settings run")

# %% [markdown]
# **Does the answer depend on where the network starts?** Every setting above starts from notebook 01's
# classifier backbone (§5.1). The same two settings — GrabCut + CE and Box2Seg — trained from a *random*
# backbone with the same schedule and seed (`COMPARE_INIT`; `seg.backbone_init = None`, new checkpoint
# folders) tell whether Box2Seg's extra terms matter more when the network has not yet learned what the
# classes look like.

# %%
init_rows = {}
if COMPARE_INIT and cfg.seg.backbone_init is not None and {"grabcut_ce", "box2seg"} <= set(results):
    cfg_rand = cfg.replace(seg=cfg.seg.replace(backbone_init=None))
    sd_rand = dataclasses.replace(sd, identity={**sd.identity, "backbone_init": None}, backbone_state=None, _stores=sd._stores)
    for n in ("grabcut_ce", "box2seg"):
        r_ = stage.run_setting(n, cfg_rand, sd_rand, OUT)
        init_rows[n] = {"classifier": results[n].val["miou"], "random": r_.val["miou"]}
        print(f"{n} from a random backbone: {'reused' if r_.reused else 'trained'} ({r_.train_seconds:.0f} s) → "
              f"validation mIoU {r_.val['miou']:.3f}   [{rel(r_.checkpoint_dir)}]")
    lines = ["| backbone at the start | GrabCut + CE | Box2Seg | Box2Seg − GrabCut + CE |", "|---|---:|---:|---:|"]
    for k, text in (("classifier", "notebook 01's CAM classifier (every setting above)"), ("random", "random (seeded)")):
        a, b = init_rows["grabcut_ce"][k], init_rows["box2seg"][k]
        lines.append(f"| {text} | {a:.3f} | {b:.3f} | **{b - a:+.3f}** |")
    display(Markdown("\n".join(lines)))
    gain_c = init_rows["box2seg"]["classifier"] - init_rows["grabcut_ce"]["classifier"]
    gain_r = init_rows["box2seg"]["random"] - init_rows["grabcut_ce"]["random"]
    print(f"Box2Seg's gain over GrabCut + CE: {gain_r:+.3f} mIoU from a random backbone, {gain_c:+.3f} from the classifier's")
elif not COMPARE_INIT:
    print("COMPARE_INIT = False: skipped")
else:
    print("needs grabcut_ce and box2seg, and a backbone initialisation to compare with")

# %% [markdown]
# **Is one seed enough?** The gaps between the GrabCut + CE and Box2Seg rows above are a few hundredths of
# mIoU. The same settings retrained with the next seed (`SEED_CHECK`; new initialisation of the decoder
# and heads, new batch order and augmentation) show how much of a gap the seed alone makes; only a
# difference that survives both seeds is worth a sentence.

# %%
seed_rows = {}
if SEED_CHECK and {"grabcut_ce", "box2seg"} <= set(results):
    cfg_s = cfg.replace(seg=cfg.seg.replace(train=cfg.seg.train.replace(seed=SEED + 1)))
    for n in [n for n in ("grabcut_ce", "box2seg", "box2seg_class_rho") if n in results]:
        r_ = stage.run_setting(n, cfg_s, sd, OUT)
        seed_rows[n] = (results[n].val["miou"], r_.val["miou"])
        print(f"{n} with seed {SEED + 1}: {'reused' if r_.reused else 'trained'} ({r_.train_seconds:.0f} s) → "
              f"validation mIoU {r_.val['miou']:.3f}   [{rel(r_.checkpoint_dir)}]")
    ref_ = np.mean(seed_rows["grabcut_ce"])
    lines = [f"| setting | seed {SEED} | seed {SEED + 1} | mean | mean − GrabCut + CE |", "|---|---:|---:|---:|---:|"]
    for n, (a, b) in seed_rows.items():
        lines.append(f"| {DESCR[n]} | {a:.3f} | {b:.3f} | **{(a + b) / 2:.3f}** | {'' if n == 'grabcut_ce' else f'{(a + b) / 2 - ref_:+.3f}'} |")
    display(Markdown("\n".join(lines)))
elif not SEED_CHECK:
    print("SEED_CHECK = False: skipped")
else:
    print("needs grabcut_ce and box2seg")

# %% [markdown]
# **Is the schedule long enough?** Every setting above trains for the same few epochs, chosen so that the
# notebook runs in minutes. Learning from noisy labels has two phases: a network first fits what the
# labels agree on, and only later memorises their mistakes; a short schedule compares the methods in the
# first phase only. GrabCut + CE and the two Box2Seg variants trained for `LONG_SCHEDULE` times the epochs
# (the one-cycle schedule stretched to the new length; with `SEED_CHECK` both seeds) show whether the
# comparison changes when the networks are trained to the end.

# %%
long_rows, long_seed_rows = {}, {}
LONG_SETTINGS = [n for n in ("grabcut_ce", "box2seg", "box2seg_class_rho") if n in results]
if LONG_SCHEDULE and LONG_SCHEDULE > 1 and {"grabcut_ce", "box2seg"} <= set(results):
    long_epochs = int(round(cfg.seg.train.epochs * LONG_SCHEDULE))
    cfg_l = cfg.replace(seg=cfg.seg.replace(train=cfg.seg.train.replace(epochs=long_epochs)))
    long_seeds = [SEED, SEED + 1] if SEED_CHECK else [SEED]
    for seed_ in long_seeds:
        cfg_ls = cfg_l.replace(seg=cfg_l.seg.replace(train=cfg_l.seg.train.replace(seed=seed_)))
        for n in LONG_SETTINGS:
            r_ = stage.run_setting(n, cfg_ls, sd, OUT)
            (long_rows if seed_ == SEED else long_seed_rows)[n] = r_
            print(f"{n}, {long_epochs} epochs, seed {seed_}: {'reused' if r_.reused else 'trained'} ({r_.train_seconds:.0f} s) → "
                  f"validation mIoU {r_.val['miou']:.3f}   [{rel(r_.checkpoint_dir)}]")
    head = f"| setting | {cfg.seg.train.epochs} epochs, seed {SEED} | {long_epochs} epochs, seed {SEED} |"
    head += f" {long_epochs} epochs, seed {SEED + 1} | {long_epochs} epochs, mean | mean − GrabCut + CE | fg precision / recall ({long_epochs} ep., seed {SEED}) |" if long_seed_rows else " − GrabCut + CE | fg precision / recall |"
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    ref_ = np.mean([r_["grabcut_ce"].val["miou"] for r_ in (long_rows, long_seed_rows) if r_])
    for n in LONG_SETTINGS:
        a, b = results[n].val["miou"], long_rows[n].val
        pr = f"{b['fg_precision']:.3f} / {b['fg_recall']:.3f}"
        if long_seed_rows:
            c = long_seed_rows[n].val["miou"]
            mean_ = (b["miou"] + c) / 2
            delta = "" if n == "grabcut_ce" else f"{mean_ - ref_:+.3f}"
            lines.append(f"| {DESCR[n]} | {a:.3f} | {b['miou']:.3f} | {c:.3f} | **{mean_:.3f}** | {delta} | {pr} |")
        else:
            delta = "" if n == "grabcut_ce" else f"{b['miou'] - ref_:+.3f}"
            lines.append(f"| {DESCR[n]} | {a:.3f} | **{b['miou']:.3f}** | {delta} | {pr} |")
    display(Markdown("\n".join(lines)))
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for j, (n, r_) in enumerate(long_rows.items()):
        y = r_.history.series("ce", "epochs")[1]
        ax1.plot(np.arange(1, len(y) + 1), y, "o-", ms=3, color=f"C{j}", label=DESCR[n])
        if n != "grabcut_ce":
            y = r_.history.series("att_mean", "epochs")[1]
            ax2.plot(np.arange(1, len(y) + 1), y, "o-", ms=3, color=f"C{j}", label=DESCR[n])
    ax1.set(xlabel="epoch", ylabel="B1: cross-entropy on GrabCut's labels", title=f"{long_epochs} epochs: fitting GrabCut's labels")
    ax2.set(xlabel="epoch", ylim=(0, 1), ylabel="mean attention of a box's class", title="the attention in boxes")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(OUT / "long_schedule.png")
    display(fig)
elif not LONG_SCHEDULE or LONG_SCHEDULE <= 1:
    print("LONG_SCHEDULE off: skipped")
else:
    print("needs grabcut_ce and box2seg")

# %% [markdown]
# ### 7.4 Fully supervised, with missing objects
#
# The true masks of the training split with a share of the objects erased (set to background, outline
# included — `stage.remove_objects`), every box kept. Cross-entropy alone learns "these objects are
# background"; the attention-weighted loss lets the boxes of the erased objects still vote for their
# class. The erased objects' own pixels in the training images are counted as well: how much of them does
# each network label correctly?

# %%
missing_rows = {}
if "full_ce" in results and "full_awl" in results:
    n_obj = sum(len(train_raw.get_raw(i)["boxes"]) for i in range(len(train_raw)))
    n_rem = sum(len(v) for v in sd.missing.values())
    print(f"erased {n_rem} of {n_obj} objects ({n_rem / max(n_obj, 1):.0%}; the authors found ≈ 10 % of VOC masks missing objects)")
    # recall of the erased objects in the *training* images, by each network
    rec = {n: [] for n in ("full_ce", "full_awl")}
    for iid, ks in tqdm(list(sd.missing.items()), desc="erased objects"):
        i = train_raw.ids.index(iid)
        r = train_raw.get_raw(i)
        x = stage.image_tensor(r["image"])[None]
        for n in rec:
            p = stage.predict_maps(results[n].model, x)["prob"][0].argmax(0).numpy()
            for k in ks:
                obj = r["instance_mask"] == k
                if obj.any():
                    rec[n].append(float((p[obj] == r["box_labels"][k - 1]).mean()))
    lines = ["| training target | loss | mIoU (val) | fg recall (val) | erased objects recovered (train) |", "|---|---|---:|---:|---:|"]
    for n, loss_txt in (("full_ce", "CE"), ("full_awl", "CE + attention-weighted + filling rate")):
        v = results[n].val
        missing_rows[n] = {"miou": v["miou"], "erased_recall": float(np.mean(rec[n])) if rec[n] else float("nan")}
        lines.append(f"| masks, {n_rem / max(n_obj, 1):.0%} objects erased | {loss_txt} | **{v['miou']:.3f}** | {f3(v['fg_recall'])} | "
                     f"{f3(missing_rows[n]['erased_recall'])} |")
    display(Markdown("\n".join(lines)))
else:
    print("full_ce / full_awl were not among the settings run")

# %% [markdown]
# ### 7.5 Real photos
#
# Where `../shared/data` holds the two small real datasets (see its README): **GrabCut benchmark** — our
# GrabCut (the same code and settings as above) from the tight boxes of its 50 photos, scored with the
# benchmark's usual *error rate* (misclassified pixels over all scored pixels, per image, averaged; the
# unknown band of the masks is not scored) and foreground IoU; **Weizmann horses** — the box-supervised
# network trained on `train.txt` (GrabCut on its photos, crops of a fixed size with the joint
# augmentation) and scored on `val.txt` at full size, one photo at a time: filled boxes + CE vs GrabCut +
# CE vs Box2Seg (and our per-class filling rate, which on a one-class data set is the mean $\rho$ of all
# horse boxes). Absent data are skipped with a message.

# %%
real, bench_gc_errors = {}, {}
shared = profiles.shared_data_dir()
if not REAL_DATA:
    print("REAL_DATA = False: skipped")
elif shared is None or not (shared / "grabcut_voc").is_dir():
    print("skipped: the real datasets were not found (looked for $WSSS_SHARED_DATA, then <repo>/../shared/data)")
else:
    gc_bench = stage._subset(shared / "grabcut_voc", "all", cfg.real.grabcut_max_images, saliency_dir=None, cache=False)
    man = boxes.make_grabcut_labels(gc_bench, OUT / "real" / f"grabcut_benchmark-{cfg.real.grabcut.fingerprint()}-n{len(gc_bench)}",
                                    cfg.real.grabcut, workers=cfg.grabcut_workers)
    errs, ious, cm_b, bench_stats = [], [], ConfusionMatrix(2), boxes.GrabCutStats()
    for i in range(len(gc_bench)):
        rr = gc_bench.get_raw(i)
        lab = read_label_png(OUT / "real" / f"grabcut_benchmark-{cfg.real.grabcut.fingerprint()}-n{len(gc_bench)}" / f"{rr['id']}.png")
        e = boxes.grabcut_errors(lab, rr["mask"])
        errs.append(e["errors"] / e["valid"])
        ious.append(ConfusionMatrix(2).update(lab, rr["mask"]).iou()[1])
        cm_b.update(lab, rr["mask"])
        bench_stats.update(lab, rr["mask"], rr["boxes"])
    real["grabcut_benchmark_error"] = float(np.mean(errs))
    real["grabcut_benchmark_fg_iou"] = float(np.mean(ious))
    bench_gc_errors = bench_stats.summary()
    real["grabcut_benchmark_images_per_second"] = man["images_per_second"]
    print(f"GrabCut benchmark ({len(gc_bench)} photos): mean error rate {real['grabcut_benchmark_error']:.2%}, mean foreground IoU "
          f"{real['grabcut_benchmark_fg_iou']:.3f} (pooled {cm_b.iou()[1]:.3f}); {man['images_per_second']:.2f} photos/s with "
          f"{man['workers']} process(es). Plain OpenCV GrabCut from tight boxes, 5 iterations: ≈ 4.3 % / 0.86 (DESIGN.md)")

# %%
horse, horse_gc_errors, horse_att_err = {}, {}, {}
if REAL_DATA and shared is not None and (shared / "weizmann_horse_voc").is_dir():
    hdata = profiles.DataSpec("voc", shared / "weizmann_horse_voc", "train", "val")
    HOUT = OUT / "horses"
    hsd = stage.prepare(cfg, hdata, HOUT, seg=cfg.real.seg, grabcut=cfg.real.grabcut,
                        max_train=cfg.real.horse_max_train, max_val=cfg.real.horse_max_val)
    hcm, horse_stats = ConfusionMatrix(hsd.base.num_classes + 1), boxes.GrabCutStats()
    HORSE = hsd.base.class_names.index("horse")
    for i in range(len(hsd.base)):
        rr = hsd.base.get_raw(i)
        lab = read_label_png(hsd.gc_dir / f"{rr['id']}.png")
        hcm.update(lab, rr["mask"])
        horse_stats.update(lab, rr["mask"], rr["boxes"])
    horse["grabcut_train_fg_iou"] = float(hcm.iou()[HORSE])
    horse_gc_errors = horse_stats.summary()
    print(f"horses: GrabCut on {len(hsd.base)} training photos in {hsd.gc_manifest['seconds']:.0f} s "
          f"({hsd.gc_manifest['images_per_second']:.2f} photos/s), foreground IoU {horse['grabcut_train_fg_iou']:.3f}")
    hres = {}
    for name in cfg.real.settings:
        hres[name] = stage.run_setting(name, cfg, hsd, HOUT, seg=cfg.real.seg)
        horse[name] = hres[name].val["per_class_iou"]["horse"]
        print(f"  {name}: {'reused' if hres[name].reused else 'trained'} ({hres[name].train_seconds:.0f} s) → val horse IoU "
              f"{horse[name]:.3f}, mIoU {hres[name].val['miou']:.3f}")
    lines = ["| horses (val, full size) | horse IoU | fg precision | fg recall | mIoU (bg + horse) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {DESCR[n]} | **{horse[n]:.3f}** | {hres[n].val['fg_precision']:.3f} | {hres[n].val['fg_recall']:.3f} | "
              f"{hres[n].val['miou']:.3f} |" for n in hres]
    display(Markdown("\n".join(lines)))
    if "box2seg" in hres:  # does the attention find GrabCut's mistakes on photos too? (as in §6.2)
        horse_att_err = stage.attention_by_grabcut_error(hres["box2seg"].model, hsd.base, hsd.gc_dir,
                                                        long_side=cfg.real.seg.eval_long_side)
        print("horses, Box2Seg's attention on GrabCut's box pixels (train): " + ", ".join(
            f"{k.replace('_', ' ')} {v['attention']:.2f}" for k, v in horse_att_err.items()))
    fig = prediction_grid(hsd.val, range(min(4, len(hsd.val))), {n: r_.model for n, r_ in hres.items()},
                          long_side=cfg.real.seg.eval_long_side, size=1.9)
    fig.savefig(OUT / "horses.png")
    display(fig)
elif REAL_DATA:
    print("skipped: the Weizmann horses were not found (looked for $WSSS_SHARED_DATA, then <repo>/../shared/data)")


# %% [markdown]
# **Which way does GrabCut err — on our scenes and on photos?** Box2Seg's attention is built to damp
# *wrong foreground* labels (background GrabCut took inside a box). The same counts on the three data sets
# (`boxes.GrabCutStats`): object pixels GrabCut missed and box background it took, both as a share of the
# object pixels, and how much background a box holds per object pixel.

# %%
def error_profile_table(rows):
    "GrabCut's error profile per data set, as a Markdown table; rows: (name, boxes.GrabCutStats().summary())."
    lines = ["| GrabCut from tight boxes | object pixels missed | box background taken (per object pixel) | box background per object pixel | taken ÷ missed |",
             "|---|---:|---:|---:|---:|"]
    for name_, st_ in rows:
        lines.append(f"| {name_} | {st_['miss_rate']:.3f} | {st_['take_share']:.3f} | {st_['box_background'] / max(st_['object'], 1):.2f} | "
                     f"**{st_['take_share'] / max(st_['miss_rate'], 1e-9):.2f}** |")
    return Markdown("\n".join(lines))


profile_rows = [("toy scenes (train)", gs)]
if bench_gc_errors:
    profile_rows.append(("GrabCut benchmark (50 photos)", bench_gc_errors))
if horse_gc_errors:
    profile_rows.append(("Weizmann horses (train)", horse_gc_errors))
display(error_profile_table(profile_rows))
if len(profile_rows) == 1:
    print("the photos were not found: only the toy scenes' profile")

# %% [markdown]
# ### 7.6 Photo-like boxes: does Box2Seg win when GrabCut errs as on photos?
#
# The table above says our scenes and the photos differ in *which way* GrabCut errs. So we changed the
# scenes, not the method: the same generator with `ToySceneConfig(p_legged=0.8, p_shadow=0.8)` draws most
# bodies as a torso on thin legs (sometimes with a neck and head) — background between the legs, as
# between a horse's — and gives most bodies a dark, body-tinted shadow at their foot. Same classes,
# badges, context bands and sizes (`cfg.photo_like`; a tree of its own next to the profile's). GrabCut and
# the networks (same backbone from §5.1, same schedule and seed) run on it exactly as above.

# %%
photo, photo_res, photo_gs = {}, {}, {}
if not PHOTO_LIKE or not TOY or not cfg.photo_like:
    print("skipped: PHOTO_LIKE = False" if not PHOTO_LIKE else "skipped: photo-like boxes are a toy-scenes variant")
else:
    pdata = profiles.prepare_data(PROFILE, toy_overrides=cfg.photo_like)
    POUT = OUT / "photo_like"
    psd = stage.prepare(cfg, pdata, POUT, backbone=backbone)
    pcm_gc, pcm_box, pstats = ConfusionMatrix(C + 1), ConfusionMatrix(C + 1), boxes.GrabCutStats()
    for i in range(len(psd.base)):
        r = psd.base.get_raw(i)
        lab = read_label_png(psd.gc_dir / f"{r['id']}.png")
        pcm_gc.update(lab, r["mask"])
        pcm_box.update(boxes.filled_box_labels(r["boxes"], r["box_labels"], r["mask"].shape), r["mask"])
        pstats.update(lab, r["mask"], r["boxes"])
    photo_gs = pstats.summary()
    photo.update(box_miou=pcm_box.miou(), grabcut_miou=pcm_gc.miou(),
                 grabcut_miss_rate=photo_gs["miss_rate"], grabcut_take_share=photo_gs["take_share"])
    display(error_profile_table(profile_rows[:1] + [("photo-like toy scenes (train)", photo_gs)] + profile_rows[1:]))
    print(f"photo-like scenes: filled boxes mIoU {photo['box_miou']:.3f}, GrabCut {photo['grabcut_miou']:.3f} "
          f"(the plain scenes: {box_miou:.3f} / {grabcut_miou:.3f})")
    for name in cfg.photo_like_settings:
        photo_res[name] = res = stage.run_setting(name, cfg, psd, POUT)
        photo[f"seg_{name}_miou"] = res.val["miou"]
        print(f"  {name}: {'reused' if res.reused else 'trained'} ({res.train_seconds:.0f} s) → validation mIoU {res.val['miou']:.3f}")
    lines = ["| photo-like scenes (val) | mIoU | fg precision | fg recall | Δ mIoU vs GrabCut + CE |", "|---|---:|---:|---:|---:|"]
    ref_ = photo_res["grabcut_ce"].val["miou"] if "grabcut_ce" in photo_res else math.nan
    lines += [f"| {DESCR[n]} | **{r.val['miou']:.3f}** | {r.val['fg_precision']:.3f} | {r.val['fg_recall']:.3f} | {r.val['miou'] - ref_:+.3f} |"
              for n, r in photo_res.items()]
    display(Markdown("\n".join(lines)))
    fig = prediction_grid(psd.val, rng.choice(len(psd.val), size=min(N_SHOW, len(psd.val)), replace=False),
                          {n: r_.model for n, r_ in photo_res.items()}, size=1.9)
    fig.savefig(OUT / "photo_like.png")
    display(fig)


# %% [markdown]
# How to read this. The first table says whether the change of scenes did what it was for: GrabCut now
# takes box background several times more often, as on the photos, while still missing the camouflaged
# bodies. If Box2Seg's attention-weighted loss pays off where GrabCut's foreground labels are wrong, the
# second table is where it should show. §8 discusses the outcome.

# %%
def g(d, k):
    v = d.get(k, math.nan) if d else math.nan
    return math.nan if v is None else v


metrics = {
    "box_miou": box_miou,
    "grabcut_miou": grabcut_miou,
    "grabcut_miss_rate": gs["miss_rate"],
    "grabcut_take_rate": gs["take_rate"],
    "grabcut_images_per_second": gc_man["images_per_second"],
    "grabcut_objects": {k: v for k, v in by_cat.items()},
    "settings": {n: {"miou": r.val["miou"], "fg_precision": r.val["fg_precision"], "fg_recall": r.val["fg_recall"],
                     "train_seconds": r.train_seconds} for n, r in results.items()},
    "epochs": cfg.seg.train.epochs,
    "n_train": len(sd.base),
    "n_val": len(sd.val),
    "train_seconds": train_seconds,
}
for n, r in results.items():
    metrics[f"seg_{n}_miou" if not n.startswith("full") else f"{n}_miou"] = r.val["miou"]
metrics["backbone_init"] = cfg.seg.backbone_init
for n, v in init_rows.items():
    metrics[f"seg_{n}_random_init_miou"] = v["random"]
for n, (a, b) in seed_rows.items():
    metrics[f"seg_{n}_seed{SEED + 1}_miou"] = b
    metrics[f"seg_{n}_two_seed_mean_miou"] = (a + b) / 2
if long_rows:
    metrics["long_epochs"] = long_epochs
    for n, r_ in long_rows.items():
        metrics[f"seg_{n}_long_miou"] = r_.val["miou"]
    for n, r_ in long_seed_rows.items():
        metrics[f"seg_{n}_long_seed{SEED + 1}_miou"] = r_.val["miou"]
        metrics[f"seg_{n}_long_two_seed_mean_miou"] = (long_rows[n].val["miou"] + r_.val["miou"]) / 2
if "full_ce" in missing_rows:
    metrics["missing_share"] = cfg.missing_share
    metrics["full_ce_erased_recall"] = missing_rows["full_ce"]["erased_recall"]
    metrics["full_awl_erased_recall"] = missing_rows["full_awl"]["erased_recall"]
metrics.update(real)
for k, v in horse.items():
    metrics[f"horse_{k}" if k == "grabcut_train_fg_iou" else f"horse_{k}_fg_iou"] = v
metrics["grabcut_take_share"] = gs["take_share"]
for prefix, errs_ in (("grabcut_benchmark_", bench_gc_errors), ("horse_grabcut_", horse_gc_errors)):
    if errs_:
        metrics[f"{prefix}miss_rate"], metrics[f"{prefix}take_share"] = errs_["miss_rate"], errs_["take_share"]
for prefix, att_ in (("attention_", att_err), ("horse_attention_", horse_att_err)):
    metrics.update({f"{prefix}{k}": v["attention"] for k, v in att_.items()})
metrics.update({f"photo_like_{k}": v for k, v in photo.items()})
write_metrics(OUT / "metrics.json", metrics)
print(f"written {rel(OUT / 'metrics.json')}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                             if isinstance(v, float) and k.endswith(("miou", "fg_iou", "error"))))

# %% [markdown]
# ## 8 What goes wrong
#
# ### The filling rate inherits GrabCut's mistakes
#
# The attention's only anchor is $\rho_k$, and $\rho_k$ comes from GrabCut. Where GrabCut collapses — on
# camouflaged bodies it keeps a sliver of the box — the filling-rate constraint *asks* the attention to
# cover only that sliver, and the cross-entropy on GrabCut's labels calls the rest background. Box2Seg
# cannot recover what both of its signals deny. Below: over the training boxes, the mean attention of
# each box against GrabCut's $\rho$ and against the true filling rate, per category; and how much of
# the camouflaged objects of the **validation** images each network recovers.

# %%
wrong = {}
if "box2seg" in results and obj_rows:
    b2s = results["box2seg"].model
    att_mean, rho_k, true_k, cat_k = [], [], [], []
    for i in tqdm(range(len(train_raw)), desc="attention per box"):
        r = train_raw.get_raw(i)
        a, bmap = box_attention(b2s, r)
        rho = boxes.region_filling_rates(gc_label(i), bmap, r["box_labels"])
        truth_rho = boxes.region_filling_rates(r["mask"], bmap, r["box_labels"])
        for k in range(len(r["boxes"])):
            if (bmap == k).any() and np.isfinite(rho[k]) and np.isfinite(truth_rho[k]):
                att_mean.append(float(np.nanmean(a[bmap == k])))
                rho_k.append(float(rho[k]))
                true_k.append(float(truth_rho[k]))
                cat_k.append(stage.object_category(FLAGS[i][k]) if FLAGS.get(i) else "plain")
    att_mean, rho_k, true_k, cat_k = map(np.asarray, (att_mean, rho_k, true_k, cat_k))
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for cat, col in (("plain", "tab:green"), ("non-convex", "tab:orange"), ("camouflaged", "tab:red")):
        sel = cat_k == cat
        ax1.scatter(rho_k[sel], att_mean[sel], s=5, alpha=0.5, color=col, label=cat)
        ax2.scatter(true_k[sel], att_mean[sel], s=5, alpha=0.5, color=col, label=cat)
    for ax, xl in ((ax1, "GrabCut's ρ (the target of B3)"), (ax2, "true filling rate")):
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel=xl, ylabel="mean attention in the box", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7)
    corr_rho, corr_true = np.corrcoef(rho_k, att_mean)[0, 1], np.corrcoef(true_k, att_mean)[0, 1]
    ax1.set_title(f"attention vs GrabCut's ρ: correlation r = {corr_rho:.2f}")
    ax2.set_title(f"attention vs the true filling rate: r = {corr_true:.2f}")
    fig.savefig(OUT / "attention_vs_fill.png")
    display(fig)
    camo = cat_k == "camouflaged"
    wrong = {"attention_rho_corr": float(corr_rho), "attention_true_fill_corr": float(corr_true),
             "camouflaged_mean_rho": float(rho_k[camo].mean()) if camo.any() else math.nan,
             "camouflaged_mean_true_fill": float(true_k[camo].mean()) if camo.any() else math.nan,
             "camouflaged_mean_attention": float(att_mean[camo].mean()) if camo.any() else math.nan}
    print(f"camouflaged boxes ({camo.sum()}): GrabCut ρ {wrong['camouflaged_mean_rho']:.2f}, true filling rate "
          f"{wrong['camouflaged_mean_true_fill']:.2f}, learned attention {wrong['camouflaged_mean_attention']:.2f}")

    # validation: recall of the objects of each category, per network
    val_inst = VOCLayoutDataset(data.root, sd.val.ids, saliency_dir=None, extra_dirs=None, cache=True)
    cols = [n for n in ("box_ce", "grabcut_ce", "box2seg", "box2seg_class_rho") if n in results]
    recs = {n: [] for n in cols}
    for n in cols:
        _, kept = stage.evaluate_segmenter(results[n].model, sd.val, None, cfg.seg.eval_batch_size, keep=range(len(sd.val)))
        for i in range(len(val_inst)):
            recs[n] += stage.object_rows(val_inst.get_raw(i), kept[i], stage.object_flags(val_inst, i))
    lines = ["| objects (val) | n | " + " | ".join(DESCR[n] for n in cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    per = {n: stage.summarise_objects(recs[n]) for n in cols}
    for cat in ("plain", "non-convex", "camouflaged", "all"):
        if cat in per[cols[0]]:
            lines.append(f"| {cat}: recall | {per[cols[0]][cat]['n']} | " + " | ".join(f"{per[n][cat]['recall']:.3f}" for n in cols) + " |")
    display(Markdown("\n".join(lines)))
    wrong["val_object_recall"] = {n: {c: v["recall"] for c, v in per[n].items()} for n in cols}
    metrics.update({f"box2seg_{k}": v for k, v in wrong.items() if not isinstance(v, dict)})
    metrics["val_object_recall"] = wrong["val_object_recall"]
    write_metrics(OUT / "metrics.json", metrics)
else:
    print("needs the box2seg setting and the toy scenes' object flags")


# %% [markdown]
# How to read this. If the left cloud hugs the diagonal and the right one does not, the attention has
# learned to reproduce GrabCut's filling rate, errors included: on camouflaged boxes GrabCut's $\rho$ is far
# below the truth and so is the attention. The validation table says whether the network nonetheless
# generalises to camouflaged objects — it sees many plain bodies carrying badges, and a camouflaged body
# is a body with a badge too — and whether Box2Seg's box votes help there more than GrabCut + CE. A remedy
# the description leaves room for: a filling rate that does not trust a collapsed GrabCut — BCM's
# per-class mean filling rate (the setting `box2seg_class_rho` of §7.2–7.3, and its column in the table
# above), or GrabCut with a fallback to the box when it keeps less than 20 % of it
# (`GrabCutConfig(min_fill=0.2)`, Exercise 4).

# %% [markdown]
# ### The attention knows where GrabCut is wrong, but the loss does not listen
#
# §6.2 measured the attention on GrabCut's four kinds of box pixel: it is low on the background GrabCut
# took and fairly high on the object GrabCut missed — it has found GrabCut's mistakes without seeing the
# truth. Yet the loss as described cannot act on it: (B1) still pulls every pixel to GrabCut's label with
# weight one, and (B2) only *adds* box votes weighted by $A$. A wrongly taken pixel gets $1 + A$ votes for
# the object instead of $1$; a missed one gets $A$ votes for the object against $1$ for background. So
# Box2Seg cannot fix GrabCut's errors on the pixels it trains on, and its extra votes blur the edges
# (precision falls, §7.2). Two facts make it worse on our scenes:
#
# * **GrabCut errs the other way here.** The table at the end of §7.5 counts it: on the toy scenes GrabCut
#   *misses* more object than it *takes* background, while on both sets of photos it takes 2–5× more
#   background than it misses — the error Box2Seg's attention is meant to damp. Our bodies also fill
#   their boxes (≈ 0.35 background pixels per object pixel in a box, 1–1.6 on the photos), so there is
#   little background in a box to take.
# * **Letting the attention weight (B1) too is unstable.** The obvious repair is to gate GrabCut's own
#   labels inside boxes by the attention — (B1′), `LossConfig(gate=...)`. During development we trained it
#   with the tutorial preset (seeds 0 and 1, validation mIoU; GrabCut + CE 0.819 / 0.808, Box2Seg 0.803 /
#   0.806 in the same runs). It lost every way we tried:
#
# | (B1′) variant, `LossConfig(...)` | seed 0 | seed 1 | what happened |
# |---|---:|---:|---|
# | `gate="background"` (GrabCut's in-box background × $(1 - A)$) | 0.788 | – | the attention spreads: precision 0.92 → 0.84 |
# | the same with `rho="class_mean"` | 0.796 | 0.798 | the same |
# | `gate="object"` (GrabCut's object labels × $A$) | 0.495 | 0.345 | recall collapses: lower $A$ → weaker object labels → lower $p_c$ → lower $A$ |
# | `gate="object", gate_detach=True` | 0.605 | 0.479 | the same loop, through the segmentation alone |
# | `gate="both"` | 0.506 | 0.380 | the same |
# | `gate="both", gate_detach=True` | 0.529 | 0.500 | the same |
# | `gate="both"` or `"object"`, `gate_detach=True, gate_start_epoch=4` | 0.741 / 0.727 | – | a warm-up slows the collapse, does not stop it |
# | `gate="both", gate_detach=True, gate_renorm=True` (each box keeps a mean weight of one) | 0.692 | 0.664 | the same |
# | no gate, `fill_weight=10` (the attention held hard to $\rho$) | 0.678 | – | precision 0.69: the attention covers $\rho$ of every box, edges included |
#
# These rows are not rerun by this notebook (about 4 minutes of training each); each is one
# `stage.run_setting("box2seg", cfg.replace(box2seg=dataclasses.replace(cfg.box2seg, gate=...)), sd, OUT)` away.
# What the paper does to keep its attention from collapsing we could not check (no code, no paper body).

# %% [markdown]
# ### What changes the verdict: train to the end, and do not trust a collapsed GrabCut
#
# Two explanations were left after the above, and each has a test:
#
# * *"Our scenes hand Box2Seg the wrong kind of noise."* §7.6 redraws them so that GrabCut takes box
#   background about as often as on the photos. Box2Seg as described still trails GrabCut + CE there, with
#   the same signature: more recall, less precision. The kind of noise is not the reason.
# * *"The short schedule compares the methods before they have learned what the labels can teach."*
#   §7.3's longer schedule: both networks gain about 0.05 mIoU (the 8-epoch preset is far from converged).
#   Box2Seg as described only draws level with GrabCut + CE — but **Box2Seg with the per-class filling
#   rate now beats it on both seeds**, by about 0.02 mIoU, mostly through recall (the camouflaged bodies
#   whose GrabCut $\rho$ collapsed get box votes for the class's usual share of the box).
#
# Development runs with the same stage code (`stage.run_setting`, tutorial preset, validation mIoU; seed
# 0 / seed 1). The notebook reruns the rows marked ✓ from its own checkpoints (§7.2, §7.3, §7.6):
#
# | run | GrabCut + CE | Box2Seg | Box2Seg, per-class ρ (ours) |
# |---|---:|---:|---:|
# | 8 epochs (the preset) ✓ | 0.819 / 0.808 | 0.803 / 0.806 | 0.813 / 0.817 |
# | 24 epochs (`LONG_SCHEDULE = 3`) ✓ | 0.869 / 0.868 | 0.871 / 0.864 | **0.891 / 0.885** |
# | 48 epochs | 0.877 / – | 0.874 / – | – |
# | 8 epochs, losses at full resolution (`SegConfig(loss_stride=1)`) | 0.813 / – | 0.809 / – | – |
# | photo-like scenes, 8 epochs ✓ (seed 0) | 0.732 | 0.714 | – |
# | photo-like scenes, 24 epochs | 0.760 / – | 0.753 / – | **0.785** / – |
# | photo-like scenes, 8 epochs, backbone of a classifier trained on them | 0.727 / 0.723 | 0.718 / 0.711 | – |
# | Weizmann horses (30 epochs, val horse IoU) | 0.657 / 0.648 | 0.640 / 0.636 | 0.634 / – |
#
# Reading it: in our reconstruction the attention-weighted box votes buy recall with precision about one
# for one (at 48 epochs fg precision / recall 0.960 / 0.893 for GrabCut + CE, 0.948 / 0.901 for Box2Seg),
# *unless* the attention is held to a filling rate that does not inherit GrabCut's collapses; then, trained
# long enough, the recall gain is larger than the precision loss (24 epochs, seed 0: precision 0.956 → 0.947,
# recall 0.886 → 0.922). On the horses — one class, so the per-class $\rho$ is just the mean over all
# boxes, and GrabCut's dominant error there is *taking* background, which a per-class $\rho$ does not
# address — it does not help (§7.5). The (B1′) gates above remain unstable.

# %% [markdown]
# ## 9 Exercises
#
# **Exercise 1 — assemble a label map (Eq. 2).** Write `paste_box_masks(masks, boxes, labels, shape)`:
# `masks` is a list of `(H, W)` bool arrays (one per box), `boxes` a `(K, 4)` array of
# `x1, y1, x2, y2` (exclusive), `labels` the `K` classes; return the `(H, W)` uint8 label map in which the
# smallest box wins where masks overlap (equal areas: the later box), 0 elsewhere.

# %%
def paste_box_masks(masks, boxes, labels, shape):
    "masks: K arrays (H, W) bool; boxes (K, 4) x1, y1, x2, y2; labels (K,) → (H, W) uint8, smaller boxes win."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_1 = exercises.check("paste_box_masks", paste_box_masks, use_solution=USE_SOLUTIONS)


# %% [markdown]
# **Exercise 2 — the attention-weighted loss (B2).** Write `attention_weighted_loss(logits, attention,
# box_map, box_classes)`: `logits` `(B, C + 1, H, W)`, `attention` `(B, C, H, W)` in $[0, 1]$ (channel
# $c - 1$ is class $c$), `box_map` `(B, H, W)` box indices (−1 outside), `box_classes` `(N,)`. Return the
# mean over box pixels of $-A_c(x) \log p_c(x)$, $c$ the class of the pixel's box. Loops are fine; a
# vectorised version uses `torch.gather`.

# %%
def attention_weighted_loss(logits, attention, box_map, box_classes):
    "−mean over box pixels of A_c(x) · log softmax(logits)_c(x), c = box_classes[box_map[x]]."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_2 = exercises.check("attention_weighted_loss", attention_weighted_loss, use_solution=USE_SOLUTIONS)


# %% [markdown]
# **Exercise 3 — the filling-rate penalty (B3).** Write `filling_rate_loss(attention, box_map,
# box_classes, rho)`: for each box $k$ that has pixels, the mean of $A_{c_k}$ over its pixels minus
# $\rho_k$, squared; return the mean over those boxes.

# %%
def filling_rate_loss(attention, box_map, box_classes, rho):
    "mean over boxes with pixels of (mean of A_{c_k} over box k − rho_k)²."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_3 = exercises.check("filling_rate_loss", filling_rate_loss, use_solution=USE_SOLUTIONS)

# %% [markdown]
# **Exercise 4 — open: a filling rate that does not trust a collapsed GrabCut.** §8 shows the attention
# copying GrabCut's $\rho$, errors included. Try one of:
#
# * GrabCut with a fallback to the filled box when it keeps less than 20 % of a box:
#   `cfg2 = cfg.replace(grabcut=dataclasses.replace(cfg.grabcut, min_fill=0.2))`, then
#   `sd2 = stage.prepare(cfg2, data, OUT, backbone=backbone)` (new GrabCut labels in their own folder) and
#   `stage.run_setting("box2seg", cfg2, sd2, OUT)` — the labels *and* $\rho$ change, so compare with
#   `grabcut_ce` trained on the same labels;
# * a filling rate between the two of §7.3 — the larger of the box's own $\rho_k$ and its class mean
#   (write it into the `rho` arrays of `sd.store("grabcut").items`, a plain dict of numpy arrays, and
#   retrain `box2seg` into another `OUT`): which boxes does it change, compared with `box2seg_class_rho`?
#
# Predict first: which objects should gain (§7.1's table), and can it cost anything on plain objects?
#
# **Exercise 5 — open: how much does the embedding radius matter?** Retrain with
# `cfg.replace(box2seg=dataclasses.replace(cfg.box2seg, emb_radius=5.0))` and compare §7.3's row and the
# affinity explorer of §6.4. What does a larger radius change in Eq. B6's pairs, and in the cost?

# %% [markdown]
# ## 10 Summary and pointers
#
# * Boxes are noisy labels; **GrabCut** inside each box (Eq. 1–2) turns them into pixel labels that both
#   under- and over-estimate objects (§6.1, §7.1) — camouflaged bodies are its blind spot.
# * **Box2Seg** keeps GrabCut's labels for the cross-entropy and adds the boxes back through an
#   **attention-weighted loss** (B2) whose attention is held to GrabCut's **filling rate** (B3), plus
#   **pixel embeddings** trained on GrabCut's pairs and then to agree with the segmentation (B4–B6). At
#   test time only the segmentation branch runs. All of it is our reconstruction (§3).
# * The filling rate is also its weak point: the attention learns GrabCut's $\rho$, errors included (§8).
# * The attention does learn where GrabCut is wrong — low on the background GrabCut took, fairly high on
#   the object it missed (§6.2) — but the loss as described only adds box votes on top of GrabCut's labels,
#   so it cannot overrule them; letting the attention gate GrabCut's labels collapsed every way we tried
#   (§8). On our scenes GrabCut mostly *misses* object; on photos it mostly *takes* background (§7.5), the
#   error the attention is built for — yet on the horses Box2Seg does not win either.
# * Train to the end before comparing: with 3× the epochs both networks gain about 0.05 mIoU; Box2Seg as
#   described then ties with GrabCut + CE, and **Box2Seg with a per-class filling rate (our change, BCM's
#   idea) beats it by about 0.02 mIoU on both seeds** — on our scenes and on scenes redrawn so that GrabCut
#   errs as on photos (§7.3, §7.6, §8). Not on the horses (§7.5).
# * Check a gap against the seed before believing it: on this preset a second seed, or another thread
#   count on the same seed, moves a setting by about ±0.01 mIoU, and the runs from a random backbone by
#   far more (two runs of this notebook, same seed, other CPU load: GrabCut + CE 0.51 and 0.70, Box2Seg 0.73
#   and 0.68 — §7.3; the figures of this run are printed below).
#
# The numbers of this run next to the papers' (toy data, a tiny CNN started from notebook 01's classifier,
# CPU — compare the pattern, not the absolute values):

# %%
PAPERS = [  # PASCAL VOC 2012, mIoU (%); "2nd": third-party summaries, see reference/algorithms.md §5–6
    ("GrabCut pseudo-labels, VOC train (BANA's table, 2nd)", "65.7"),
    ("SDI, DeepLab-v1 VGG16, GrabCut+/MCG labels, val (2nd)", "65.7"),
    ("BCM, ResNet-101, val (2nd)", "70.2"),
    ("Box2Seg, UPerNet ResNet-101, val (2nd; not checked against the paper)", "76.4"),
]
rows = [f"| {a} | {b} |" for a, b in PAPERS]
rows += [f"| **ours**: filled boxes, toy train | **{100 * box_miou:.1f}** |",
         f"| **ours**: GrabCut pseudo-labels, toy train | **{100 * grabcut_miou:.1f}** |"]
for n in ORDER:
    rows.append(f"| **ours**: {DESCR[n]}, toy val | **{100 * results[n].val['miou']:.1f}** |")
for k, text in (("grabcut_benchmark_error", "GrabCut benchmark, mean error rate (%)"), ("grabcut_benchmark_fg_iou", "GrabCut benchmark, foreground IoU (%)")):
    if k in real:
        rows.append(f"| **ours**: {text} | **{100 * real[k]:.1f}** |")
for n in ("box_ce", "grabcut_ce", "box2seg", "box2seg_class_rho"):
    if n in horse:
        rows.append(f"| **ours**: Weizmann horses val, {DESCR[n]}, horse IoU (%) | **{100 * horse[n]:.1f}** |")
display(Markdown("| | mIoU (%) |\n|---|---:|\n" + "\n".join(rows)))
if {"grabcut_ce", "box2seg"} <= set(results):
    d_ = results["box2seg"].val["miou"] - results["grabcut_ce"].val["miou"]
    verdict = "beats" if d_ > 0.005 else ("ties with" if d_ > -0.005 else "falls behind")
    text = (f"In this run Box2Seg **{verdict}** GrabCut + CE on the validation split ({d_:+.3f} mIoU, "
            f"backbone from {cfg.seg.backbone_init or 'a random initialisation'})")
    if init_rows:
        g_ = init_rows["box2seg"]["random"] - init_rows["grabcut_ce"]["random"]
        text += f"; from a random backbone the difference is {g_:+.3f} mIoU (§7.3)"
    if "box2seg_class_rho" in results:
        text += (f"; with our per-class filling rate Box2Seg reaches {results['box2seg_class_rho'].val['miou']:.3f} "
                 f"({results['box2seg_class_rho'].val['miou'] - results['grabcut_ce'].val['miou']:+.3f} over GrabCut + CE)")
    if seed_rows:
        text += (f". Averaged over seeds {SEED} and {SEED + 1}: " + ", ".join(
            f"{DESCR[n]} {np.mean(v):.3f}" for n, v in seed_rows.items()) + " (§7.3)")
    if long_rows:
        seeds_ = f"mean of seeds {SEED} and {SEED + 1}" if long_seed_rows else f"seed {SEED}"
        text += f". With {metrics['long_epochs']} epochs ({seeds_}): " + ", ".join(
            f"{DESCR[n]} {np.mean([r_[n].val['miou'] for r_ in (long_rows, long_seed_rows) if r_]):.3f}" for n in long_rows) + " (§7.3)"
    if {"grabcut_ce", "box2seg"} <= set(photo_res):
        text += (f". On the photo-like scenes: GrabCut + CE {photo_res['grabcut_ce'].val['miou']:.3f}, "
                 f"Box2Seg {photo_res['box2seg'].val['miou']:.3f} (§7.6)")
    display(Markdown(text + "."))
print(f"ours: {len(sd.base)} training / {len(sd.val)} validation scenes of {train_raw.get_raw(0)['mask'].shape[0]} px, "
      f"{C + 1} classes; networks of {sum(p.numel() for p in results[RUN[0]].model.parameters()) / 1e6:.2f} M parameters "
      f"(backbone init: {cfg.seg.backbone_init or 'random'}) trained on {engine.select_device(DEVICE)}; training time of all settings {train_seconds:.0f} s, GrabCut {gc_man['seconds']:.0f} s")

# %% [markdown]
# Pointers:
#
# * **SDI** (Khoreva et al., CVPR 2017): GrabCut+ and MCG ∩ GrabCut with disagreement as *ignore*, and
#   recursive training — the same question (which GrabCut pixels to trust) answered with a fixed rule.
# * **BCM** (Song et al., CVPR 2019): the filling rate per class, used to keep only the most confident
#   share of each box's pixel losses — Box2Seg's filling rate, without the learned attention.
# * **BANA** (Oh et al., CVPR 2021): background-aware pooling inside boxes, no GrabCut at all.
# * **Notebook 06** trains one segmentation network on every method's pseudo-labels (CAM, random walk,
#   EDAM, EPS, GrabCut) and puts them in one table; `wsss_core.models.segnet.SegNet` with its heads
#   switched off is that plain segmenter.
