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
# # 00 · Weak supervision, and the data that shows its problems
#
# ## 1 Objective
#
# A segmentation network learns from **full masks**: a class for every pixel. Drawing them is slow, so
# *weakly supervised* semantic segmentation (WSSS) trains from cheaper **weak signals** — the names
# of the classes in an image, a box around each object, or a class-agnostic *saliency* map from an
# off-the-shelf detector — and first turns them into **pseudo-labels**. Every later notebook is one
# way of doing that. This notebook trains nothing: it shows the three weak signals next to the full
# mask, and it measures on the data the four problems the papers attack — (a) a classifier only needs
# a small *discriminative part* of an object, (b) objects come with *co-occurring context*
# (boats on water, trains on rails), (c) *clutter* — look-alike distractors, camouflaged and
# non-convex bodies — breaks box-based guesses, and (d) saliency detectors miss objects and fire on
# distractors. Each problem gets a picture (§6) and a number (§7), and the numbers are written to
# `metrics.json` for the notebook runner.
#
# *How to use it:* run top to bottom (`PROFILE = "tutorial"` takes about a minute on a laptop CPU the
# first time, when it generates the data, and less afterwards; `"smoke"` is for CI). Exercises are in §9; instructors set `USE_SOLUTIONS = True` to check the
# reference solutions instead of the stubs.

# %% [markdown]
# ## 2 Parameters
#
# Papermill overwrites this cell's values (the runner injects `PROFILE`, `OUT_DIR`, `SEED`, `DEVICE`).

# %% tags=["parameters"]
PROFILE = "tutorial"        # "smoke" (CI, seconds) | "tutorial" (laptop CPU) | "paper" (teaches on the tutorial toy scenes)
DATA_ROOT = None            # None: the profile's default toy-scenes folder (generated on first use)
DEVICE = "auto"             # unused here (nothing is trained); kept so every notebook takes the same parameters
SEED = 0                    # picks which images are shown
OUT_DIR = "../runs/tutorial"
USE_SOLUTIONS = False       # instructors / CI: check the reference solutions of the exercises
N_SHOW = 6                  # images per example figure

# %%
# Everything else is derived from the parameters above.
import colorsys
import dataclasses
import os
import platform
import time
from pathlib import Path

import cv2
import matplotlib
import matplotlib.pyplot as plt  # activates the inline backend, which displays Figure objects
import numpy as np
import torch
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import wsss_core
from wsss_core import exercises, profiles, viz, widgets
from wsss_core.data import toyscenes
from wsss_core.data.palette import read_gray_png, read_label_png
from wsss_core.data.voc import VOCLayoutDataset, parse_voc_xml
from wsss_core.metrics import SaliencyStats, saliency_f_measure, saliency_mae
from wsss_core.stages.cam import write_metrics

# %matplotlib inline
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 9,
                     "image.interpolation": "nearest"})
rng = np.random.default_rng(SEED)

# The toy scenes of the profile (generated once, then reused). The paper profile trains on VOC, but the
# lessons of this notebook need the toy scenes' extra layers (parts, context), so it uses the tutorial set.
TOY_PROFILE = PROFILE if PROFILE in ("smoke", "tutorial") else "tutorial"
data = profiles.prepare_data(TOY_PROFILE, DATA_ROOT if PROFILE == TOY_PROFILE else None)
man = data.manifest                                     # toyscenes.json: config + statistics of the generator
cfg = toyscenes.ToySceneConfig.from_dict(man["config"])
train = VOCLayoutDataset(data.root, data.train_split)   # the ONE reader, also used for VOC and real photos
val = VOCLayoutDataset(data.root, data.val_split)
NAMES = train.class_names                               # ["background", "boat", ...]
C = train.num_classes
CONTEXT_NAMES = {int(k): v["name"] for k, v in man["contexts"].items()}   # {1: "water", 2: "rails"}
N_RENDER = min(len(train), 64 if TOY_PROFILE == "smoke" else 400)      # scenes re-rendered in §5
N_GRABCUT = 40 if TOY_PROFILE == "smoke" else 240                       # objects given to GrabCut in §6.4
OUT = Path(OUT_DIR) / "00_weak_supervision"
OUT.mkdir(parents=True, exist_ok=True)


def rel(p) -> str:
    "A path relative to the working directory (notebooks/), for printing."
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


print(f"profile {PROFILE} (toy scenes: {TOY_PROFILE}), seed {SEED}, device {DEVICE} (unused)")
print(f"data: {rel(data.root)} — train {len(train)}, val {len(val)} images of "
      f"{cfg.image_size}×{cfg.image_size}, {C} classes: {NAMES[1:]}")
print(f"outputs: {rel(OUT)}")
print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
      f"matplotlib {matplotlib.__version__}, opencv {cv2.__version__}, wsss_core {wsss_core.__version__}")


# %% [markdown]
# ## 3 Theory
#
# ### One idea
#
# Every method in WSSS is the same pipeline with a different *weak signal* and a different
# *pseudo-label maker*:
#
# ```
# weak signal ──► pseudo-label maker ──► pseudo-labels ──► segmentation network ──► mIoU
# image labels     CAM / AffinityNet+random walk / EDAM
# image labels     EPS (CAM + saliency, trained jointly)
# + saliency
# boxes            GrabCut, then Box2Seg's attention-weighted loss while training the segmenter
# ```
#
# This notebook is about the first box: the weak signals, and the data they are derived from.
#
# ### Notation
#
# An image $x$ of $H \times W$ pixels has a full mask $Y \in \{0, 1, \dots, C, 255\}^{H \times W}$:
# $0$ is background, $1..C$ the classes, $255$ "ignore" (VOC draws it along object outlines; the
# GrabCut benchmark marks its uncertain band with it). Let $P = \{p : Y_p \neq 255\}$ be the scored
# pixels and $G_p = \mathbb{1}[1 \le Y_p \le C]$ the class-agnostic foreground. The weak signals are
# functions of the full annotation:
#
# * **image label** (multi-hot) — the classes present:
#   $$y_c = \mathbb{1}\big[\exists\, p : Y_p = c\big], \qquad c = 1..C \tag{1}$$
#   read from the XML by `wsss_core.data.voc.VOCLayoutDataset` (`sample["label"]`, index $c-1$ is class $c$);
#   you write it from the mask in exercise 1;
# * **boxes** — for object $k$ with pixels $\Omega_k$, the tight box in 0-based, end-exclusive
#   coordinates (the VOC XML stores the same box 1-based and inclusive):
#   $$B_k = \big(\min_{p \in \Omega_k} p_x,\; \min_{p \in \Omega_k} p_y,\; \max_{p \in \Omega_k} p_x + 1,\; \max_{p \in \Omega_k} p_y + 1\big) \tag{2}$$
#   (`sample["boxes"]`, with `sample["box_labels"]`); exercise 2;
# * **saliency** — a map $S \in [0, 1]^{H \times W}$ from a class-agnostic detector that estimates $G$.
#   Its quality, as salient-object-detection papers measure it, is the mean absolute error
#   (Perazzi et al., CVPR 2012) and the F-measure over thresholds $\tau$ (Achanta et al., CVPR 2009):
#   $$\mathrm{MAE} = \frac{1}{|P|} \sum_{p \in P} |S_p - G_p| \tag{3}$$
#   $$F_\beta(\tau) = \frac{(1 + \beta^2)\, \mathrm{Prec}(\tau)\, \mathrm{Rec}(\tau)}{\beta^2\, \mathrm{Prec}(\tau) + \mathrm{Rec}(\tau)}, \quad \beta^2 = 0.3, \qquad \max F = \max_\tau F_\beta(\tau) \tag{4}$$
#   where $\mathrm{Prec}, \mathrm{Rec}$ are those of the binary map $S \ge \tau$ against $G$ —
#   `wsss_core.metrics.saliency_mae` (Eq. 3), `wsss_core.metrics.saliency_f_measure` (Eq. 4) and
#   `wsss_core.metrics.SaliencyStats`, which averages MAE over images and the precision / recall
#   curves over images before forming $F$ (the SOD-benchmark protocol).
#
# Two quantities describe the problems of §6:
#
# * **co-occurrence** of a context region $k$ (water, rails) with its class $c$ (boat, train), over images:
#   $$P(k \mid c) = \frac{\#\{\text{images with } c \text{ and } k\}}{\#\{\text{images with } c\}}, \qquad
#     P(k \mid \neg c) = \frac{\#\{\text{images with } k,\ \text{without } c\}}{\#\{\text{images without } c\}} \tag{5}$$
#   (`wsss_core.data.toyscenes` stores both in `toyscenes.json`; §4.3 recomputes them);
# * **part share** — how much of the objects a classifier *needs* to see:
#   $$\text{part share} = \frac{\sum_{\text{images}} \#\{\text{discriminative-part pixels}\}}{\sum_{\text{images}} \#\{p : G_p = 1\}} \tag{6}$$
#
# Every later notebook scores its pseudo-labels and predictions $\hat Y$ with the mean intersection
# over union (`wsss_core.metrics.ConfusionMatrix`, pixels of $P$ only, summed over the data set):
# $$\mathrm{IoU}_c = \frac{\#\{p: \hat Y_p = c \wedge Y_p = c\}}{\#\{p: \hat Y_p = c \vee Y_p = c\}}, \qquad
#   \mathrm{mIoU} = \frac{1}{C + 1} \sum_{c=0}^{C} \mathrm{IoU}_c \tag{7}$$
#
# ### The data: toy scenes
#
# `wsss_core.data.toyscenes` draws every image from `(seed, index)` and writes it once in the PASCAL VOC
# layout, so the reader that reads VOC reads it too. Besides the VOC folders it writes the layers that
# make the problems measurable: `PartMask/` (the *badge* — a small class-specific mark — of every
# object), `ContextMask/` (water and rails), `Saliency/` (a stand-in for a pretrained saliency
# detector with parameterised errors) and `SaliencyUnsupervised/` (OpenCV's spectral-residual saliency).

# %% [markdown]
# ## 4 From scratch, then the library
#
# Each weak signal is computed here in a few lines of numpy from the files, then compared with what the
# library gives.
#
# ### 4.1 Image labels (Eq. 1): from the mask vs. from the XML

# %%
def label_from_mask_scratch(mask, num_classes):
    "Eq. 1 in numpy: the classes 1..C present in a (H, W) mask → (C,) multi-hot."
    present = np.unique(mask)
    present = present[(present >= 1) & (present <= num_classes)]
    y = np.zeros(num_classes, np.float32)
    y[present - 1] = 1
    return y


r = train.get_raw(0)   # one sample as numpy arrays: image, mask, instance_mask, boxes, label, saliency, ...
print({k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else v for k, v in r.items()})
print("from the mask:", label_from_mask_scratch(r["mask"], C), " from the XML (library):", r["label"])

# every training image: the classes in the mask are exactly the classes named in the XML
mismatch = [train.ids[i] for i in range(len(train))
            if not np.array_equal(label_from_mask_scratch(read_label_png(train.root / "SegmentationClass" / f"{train.ids[i]}.png"), C),
                                  train.image_label(i))]
assert not mismatch, mismatch[:5]
print(f"✓ image labels from masks == image labels from XML on all {len(train)} training images")


# %% [markdown]
# ### 4.2 Boxes (Eq. 2): from the instance mask vs. from the XML
#
# The instance mask (`SegmentationObject/`) numbers the objects 1..K in XML order. Its tight boxes are
# *almost* the XML boxes: like VOC, the masks carry a 255 outline over object borders, drawn after
# the boxes were taken, so the box of the pixels that remain is a little smaller — never larger.

# %%
def tight_box_scratch(mask):
    "Eq. 2: (x1, y1, x2, y2), 0-based, x2/y2 exclusive, of the True pixels of a (H, W) mask."
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


shrink = []
for i in range(len(train)):
    r = train.get_raw(i)
    for box, k in zip(r["boxes"], r["box_instance_ids"]):
        tb = tight_box_scratch(r["instance_mask"] == k)
        assert (tb[:2] >= box[:2]).all() and (tb[2:] <= box[2:]).all(), (r["id"], k, tb, box)  # inside the XML box
        shrink.append(int(np.abs(tb - box).max()))
shrink = np.array(shrink)
print(f"{len(shrink)} objects; largest side difference between the tight box of the visible, non-255 pixels "
      f"and the XML box: " + ", ".join(f"{d} px: {n}" for d, n in enumerate(np.bincount(shrink)) if n))
assert np.mean(shrink <= 3) > 0.9
print(f"✓ every tight box lies inside its XML box, and {np.mean(shrink <= 3):.0%} are within 3 px of it "
      "(the others lost a thin tip or sliver under the 255 outline)")


# %% [markdown]
# ### 4.3 Co-occurrence (Eq. 5): from the XML and `ContextMask/` vs. the generator's statistics
#
# Straight from the files — XML for the classes, the context mask for the regions — without the
# dataset class, then compared with the numbers the generator stored in `toyscenes.json`.

# %%
def cooccurrence_from_files(root, ids, class_names, contexts):
    "Eq. 5 for every (context id → class index) pair: {context name: (P(k | c), P(k | not c))}."
    has_class, has_ctx = [], []
    for id_ in ids:
        names = {o["name"] for o in parse_voc_xml(Path(root) / "Annotations" / f"{id_}.xml")}
        has_class.append([class_names[c] in names for c in range(len(class_names))])
        ctx = np.unique(read_label_png(Path(root) / "ContextMask" / f"{id_}.png"))
        has_ctx.append([k in ctx for k in range(max(contexts) + 1)])
    has_class, has_ctx = np.array(has_class), np.array(has_ctx)
    out = {}
    for k, (name, c) in contexts.items():
        out[name] = (has_ctx[has_class[:, c], k].mean(), has_ctx[~has_class[:, c], k].mean())
    return out, has_class, has_ctx


co, HAS_CLASS, HAS_CTX = cooccurrence_from_files(train.root, train.ids, NAMES, toyscenes.CONTEXTS)
for k, (name, c) in toyscenes.CONTEXTS.items():
    p_with, p_without = co[name]
    stored = man["stats"]["co_occurrence"][name]
    print(f"P({name} | {NAMES[c]}) = {p_with:.3f}   P({name} | no {NAMES[c]}) = {p_without:.3f}   "
          f"(toyscenes.json: {stored['p_context_given_class']:.3f} / {stored['p_context_given_no_class']:.3f}; "
          f"config asks for {cfg.p_context_with_class} / {cfg.p_context_without_class})")
    assert abs(p_with - stored["p_context_given_class"]) < 1e-12
    assert abs(p_without - stored["p_context_given_no_class"]) < 1e-12
print("✓ recomputed co-occurrence == the generator's statistics")

# %% [markdown]
# ### 4.4 Saliency quality (Eqs. 3–4): a few lines vs. `wsss_core.metrics`

# %%
r = train.get_raw(0)
valid = r["mask"] != 255
S, G = r["saliency"][valid], (r["mask"][valid] > 0)

mae_scratch = np.abs(S - G).mean()                                   # Eq. 3
f_scratch = []
for tau in np.arange(256) / 255:                                      # Eq. 4, 256 thresholds
    pred = S >= tau - 1e-9
    prec = (pred & G).sum() / max(pred.sum(), 1)
    rec = (pred & G).sum() / max(G.sum(), 1)
    f_scratch.append(1.3 * prec * rec / (0.3 * prec + rec) if prec + rec > 0 else 0.0)
max_f_scratch = max(f_scratch)

mae_lib = saliency_mae(S, G)
max_f_lib, _mean_f = saliency_f_measure(S, G)
print(f"MAE   scratch {mae_scratch:.5f}  library {mae_lib:.5f}")
print(f"max F scratch {max_f_scratch:.5f}  library {max_f_lib:.5f}")
assert abs(mae_scratch - mae_lib) < 1e-6 and abs(max_f_scratch - max_f_lib) < 1e-3
print("✓ agree")

# %% [markdown]
# ## 5 Run it
#
# Nothing is trained in this notebook; "running" it means generating scenes and measuring the data.
#
# ### 5.1 Generate scenes (and time the generator)
#
# `toyscenes.render_scene(cfg, index)` draws one scene; the tree on disk was written from the same
# calls. Rendering the first `N_RENDER` training scenes again gives us what the files do not store:
# which objects are *camouflaged* or *non-convex*, and where the *distractors* are. For the
# distractors we render each scene a second time with a saliency stand-in that never misses and
# always fires on distractors, and no blur (`sal_p_miss=0, sal_p_distractor=1, sal_blur_sigma=0`):
# the generator draws the image before the saliency, so the image and masks are the same (asserted)
# and the stand-in's map now marks every distractor exactly.

# %%
assert all(train.ids[i] == toyscenes.image_id(i) for i in range(N_RENDER))  # train item i is scene i

t0 = time.perf_counter()
scene_objects = [toyscenes.render_scene(cfg, i).objects for i in tqdm(range(N_RENDER), desc="render scenes")]
gen_seconds = time.perf_counter() - t0
generation_images_per_second = N_RENDER / gen_seconds
print(f"rendered {N_RENDER} scenes in {gen_seconds:.2f} s: {generation_images_per_second:.0f} images/s on one core "
      f"(the stored tree was written at {man['images_per_second']:.0f} images/s, files and worker processes included)")

oracle_cfg = dataclasses.replace(cfg, sal_p_miss=0.0, sal_p_distractor=1.0, sal_blur_sigma=0.0)
distractor_masks = []
for i in tqdm(range(N_RENDER), desc="locate distractors"):
    sc = toyscenes.render_scene(oracle_cfg, i)
    assert np.array_equal(sc.cls, read_label_png(train.root / "SegmentationClass" / f"{train.ids[i]}.png")), (
        f"scene {i} renders differently from the stored tree: the generator changed since {rel(data.root)} was "
        "written; regenerate it with toyscenes.ensure_toyscenes(data.root, cfg, force=True)")
    distractor_masks.append((sc.saliency > 0.3) & (sc.cls == 0))   # salient but background = a distractor body
print("✓ re-rendered masks == stored masks")

# %% [markdown]
# ### 5.2 Measure the training split
#
# One pass over the training split through the reader collects everything §6 and §7 need: per image
# the classes and contexts; per object its size, its box, its body colour and how salient each
# detector finds it; and the saliency statistics of Eqs. 3–4 for three maps — the detector stand-in,
# OpenCV's unsupervised saliency, and a *centre prior* (a fixed Gaussian bump in the middle of the
# image) as the baseline any detector should beat.

# %%
H = W = cfg.image_size
yy, xx = np.mgrid[0:H, 0:W]
CENTRE_PRIOR = np.exp(-(((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2) / (2 * (H / 4) ** 2))).astype(np.float32)
KERNEL3 = np.ones((3, 3), np.uint8)

sal_stats = {"stand-in detector": SaliencyStats(), "OpenCV (unsupervised)": SaliencyStats(),
             "centre prior": SaliencyStats()}
images, objects = [], []
for i in tqdm(range(len(train)), desc="measure train"):
    r = train.get_raw(i)
    mask, inst, part = r["mask"], r["instance_mask"], r["part_mask"]
    valid = mask != 255
    fg = valid & (mask > 0)
    unsup = read_gray_png(train.root / "SaliencyUnsupervised" / f"{r['id']}.png")
    for name, s in (("stand-in detector", r["saliency"]), ("OpenCV (unsupervised)", unsup),
                    ("centre prior", CENTRE_PRIOR)):
        sal_stats[name].update(s[valid], fg[valid])
    images.append(dict(index=i, label=r["label"], n_objects=len(r["boxes"]), fg=int(fg.sum()),
                       part=int((part > 0).sum()), valid=int(valid.sum()),
                       part_label_ok=np.array_equal(label_from_mask_scratch(part, C), r["label"])))
    no_badge = cv2.dilate((part > 0).astype(np.uint8), KERNEL3) == 0      # body pixels: not badge, not its rim
    images[-1].update(unsup_badge=float(unsup[part > 0].mean()) if (part > 0).any() else np.nan,
                      unsup_body=float(unsup[fg & no_badge].mean()) if (fg & no_badge).any() else np.nan,
                      unsup_bg=float(unsup[valid & ~fg].mean()))
    for box, c, k in zip(r["boxes"], r["box_labels"], r["box_instance_ids"]):
        V = inst == k
        x1, y1, x2, y2 = box.astype(int)
        in_box = np.zeros_like(V)
        in_box[y1:y2, x1:x2] = True
        body = V & no_badge
        rgb = r["image"][body].mean(axis=0) / 255 if body.any() else np.full(3, np.nan)
        objects.append(dict(index=i, k=int(k), cls=int(c), area=int(V.sum()),
                            fill=V.sum() / max((in_box & (inst != 255)).sum(), 1),
                            hue=colorsys.rgb_to_hsv(*rgb)[0] if body.any() else np.nan,
                            sal=float(r["saliency"][V].mean()), sal_unsup=float(unsup[V].mean())))

LABELS = np.stack([im["label"] for im in images])                    # (N, C) multi-hot
OBJ = {key: np.array([o[key] for o in objects]) for key in objects[0]}
objects_per_image = len(objects) / len(images)
part_share = sum(im["part"] for im in images) / sum(im["fg"] for im in images)
print(f"{len(images)} images, {len(objects)} objects ({objects_per_image:.2f} per image), "
      f"foreground {sum(im['fg'] for im in images) / sum(im['valid'] for im in images):.1%} of the scored pixels")

# %%
fig = Figure(figsize=(10, 2.6), layout="constrained")
ax1, ax2, ax3 = fig.subplots(1, 3)
counts = np.bincount([im["n_objects"] for im in images])
ax1.bar(range(len(counts)), counts, color="tab:blue")
ax1.set(xlabel="objects per image", ylabel="images", title="objects per image")
for c in range(1, C + 1):
    ax2.bar(c, LABELS[:, c - 1].sum(), color=viz.palette_color(c))
ax2.set_xticks(range(1, C + 1), NAMES[1:], rotation=30)
ax2.set(ylabel="images", title="images per class")
ax3.hist(np.sqrt(OBJ["area"]), bins=25, color="tab:gray")
ax3.set(xlabel="√(visible object pixels)", ylabel="objects", title=f"object size (image {W}×{H})")
display(fig)

# %% [markdown]
# ## 6 Look at it
#
# ### 6.1 Three weak signals vs. the full mask
#
# Each row is one training image. The full mask (VOC palette; the cream outline is 255, "ignore") is
# what a fully supervised network would get. The weak signals: the **image label** (written above
# the image), the **boxes**, and a **saliency** map — from the detector stand-in or from OpenCV.

# %%
SHOW = np.sort(rng.choice(len(train), size=min(N_SHOW, len(train)), replace=False))


def label_names(label):
    return ", ".join(NAMES[c + 1] for c in np.flatnonzero(label)) or "(none)"


raws = [train.get_raw(int(i)) for i in SHOW]
rows = [[r["image"], viz.overlay(r["image"], r["mask"]), r["image"], r["saliency"],
         read_gray_png(train.root / "SaliencyUnsupervised" / f"{r['id']}.png")] for r in raws]
fig = viz.image_grid(rows, col_titles=["image + image label", "full mask", "boxes", "saliency: stand-in",
                                       "saliency: OpenCV"],
                     titles=[[label_names(r["label"]), "", "", "", ""] for r in raws], size=1.9)
for row, r in enumerate(raws):
    viz.draw_boxes(fig.axes[row * 5 + 2], r["boxes"], r["box_labels"], NAMES)
viz.class_legend(fig, NAMES, ignore=True)
fig.savefig(OUT / "weak_signals.png")
display(fig)


# %% [markdown]
# The image label says *what* but not *where*; the boxes say where, roughly, but also enclose
# background; the saliency maps say "something is here" without a class — and, as the last two
# columns already show, not always correctly.
#
# ### 6.2 (a) Partial coverage: a classifier needs only the badge
#
# Every object is a *body* whose shape, colour and texture come from one distribution shared by all
# classes, carrying a small class-specific *badge* (`PartMask/`). Below: the badge pixels, the image
# with everything but the badges greyed out, and the image with the badges painted over
# (`cv2.inpaint`). The class is obvious in the third column and impossible to tell in the fourth.

# %%
def grey_out(image, keep):
    "Image with every pixel outside `keep` (H, W) bool replaced by a flat grey."
    out = np.full_like(image, 128)
    out[keep] = image[keep]
    return out


def remove_badges(image, part):
    "Paint over each badge with the surrounding colours — over a disc around it, so its outline does not show."
    hole = np.zeros(part.shape, np.uint8)
    n, comp = cv2.connectedComponents((part > 0).astype(np.uint8))
    for j in range(1, n):
        ys, xs = np.nonzero(comp == j)
        (cx, cy), radius = cv2.minEnclosingCircle(np.stack([xs, ys], axis=1).astype(np.float32))
        cv2.circle(hole, (int(round(cx)), int(round(cy))), int(np.ceil(radius)) + 2, 1, -1)
    return cv2.inpaint(image, hole, 3, cv2.INPAINT_TELEA)


rows = []
for r in raws:
    badge_zone = cv2.dilate((r["part_mask"] > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    rows.append([r["image"], viz.overlay(r["image"], r["part_mask"], alpha=0.9), grey_out(r["image"], badge_zone),
                 remove_badges(r["image"], r["part_mask"]), viz.overlay(r["image"], r["mask"])])
fig = viz.image_grid(rows, col_titles=["image", "badges (PartMask)", "badges only", "badges removed", "full mask"],
                     titles=[[label_names(r["label"])] for r in raws], size=1.9)
fig.savefig(OUT / "partial_coverage.png")
display(fig)
print(f"badge pixels are {part_share:.1%} of all object pixels in the training split (Eq. 6)")

# %% [markdown]
# Two checks that the badge is *all* a classifier needs. First, the part masks alone give every image
# label exactly (Eq. 1 applied to `PartMask/` instead of the full mask). Second, the badge shape is
# fixed per class while the body is not: below, badges cut out of the first scenes, one row per
# class, and the hue of every object's body colour by class.

# %%
print(f"image label from the badges alone == image label: {np.mean([im['part_label_ok'] for im in images]):.1%} "
      f"of the {len(images)} training images, from {part_share:.1%} of the object pixels")

per_class = {c: [] for c in range(1, C + 1)}
for i in range(N_RENDER):
    r = train.get_raw(i)
    for c, k in zip(r["box_labels"], r["box_instance_ids"]):
        b = (r["part_mask"] == c) & (r["instance_mask"] == k)
        if b.any() and len(per_class[int(c)]) < 10:
            ys, xs = np.nonzero(b)
            crop = r["image"][max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3]
            per_class[int(c)].append(cv2.resize(crop, (20, 20), interpolation=cv2.INTER_NEAREST))
fig = viz.image_grid([per_class[c] or [None] for c in range(1, C + 1)], row_titles=NAMES[1:], size=0.55, fontsize=7)
display(fig)
print(f"badge colour in this data set: {getattr(cfg, 'badge_colour', 'class')!r} "
      "('class': one colour per class; 'random': any of the six colours, only the shape tells the class)")

fig = Figure(figsize=(5.5, 2.3), layout="constrained")
ax = fig.add_subplot()
for c in range(1, C + 1):
    ax.hist(OBJ["hue"][OBJ["cls"] == c], bins=np.linspace(0, 1, 13), histtype="step", lw=1.6, density=True,
            color=viz.palette_color(c), label=NAMES[c])
ax.set(xlabel="hue of the object's mean body colour", ylabel="density",
       title="body colour by class: one distribution for all")
ax.legend(fontsize=7, ncols=3)
display(fig)


# %% [markdown]
# The class is written in a few dozen pixels; the rest of the object — the part a segmentation must
# recover — looks the same for every class (the one exception: a camouflaged boat or train takes the
# colour of the water or rails beneath it). A CNN trained on image labels will take the shortcut:
# its class activation map (notebook 01) lights up the badge and a blob around it and misses most of
# the body — CAM pseudo-labels are *precise but incomplete*. AffinityNet (notebook 02) propagates the
# confident parts to the rest of the body along learned pixel affinities; EDAM (notebook 03) makes the
# classifier attend to the whole object by sharing class-specific features across images.
#
# ### 6.3 (b) Co-occurrence: boats on water, trains on rails

# %%
def pick(cond, n):
    idx = np.flatnonzero(cond)
    return list(rng.choice(idx, size=min(n, len(idx)), replace=False)) if len(idx) else []


BOAT, TRAIN = 1, 2
WATER, RAILS = 1, 2
groups = {"boat on water": HAS_CLASS[:, BOAT] & HAS_CTX[:, WATER],
          "water, no boat": ~HAS_CLASS[:, BOAT] & HAS_CTX[:, WATER],
          "train on rails": HAS_CLASS[:, TRAIN] & HAS_CTX[:, RAILS],
          "rails, no train": ~HAS_CLASS[:, TRAIN] & HAS_CTX[:, RAILS]}
picked = {g: pick(m, 2) for g, m in groups.items()}
CTX_RGB = {1: (0, 110, 255), 2: (150, 0, 255)}   # water blue, rails violet (context ids are not class ids)


def context_overlay(image, ctx, alpha=0.6):
    out = image.astype(np.float32).copy()
    for k, rgb in CTX_RGB.items():
        out[ctx == k] = (1 - alpha) * out[ctx == k] + alpha * np.array(rgb, np.float32)
    return out.round().astype(np.uint8)


cols, titles = [[], []], [[], []]
for g, idx in picked.items():
    for row in range(2):
        if row < len(idx):
            r = train.get_raw(int(idx[row]))
            cols[row] += [r["image"], context_overlay(viz.overlay(r["image"], r["mask"]), r["context_mask"])]
            titles[row] += [f"{g}\n{label_names(r['label'])}", "mask + context"]
        else:
            cols[row] += [None, None]
            titles[row] += [f"{g}\n(none in this split)", ""]
fig = viz.image_grid(cols, titles=titles, size=1.7)
fig.savefig(OUT / "co_occurrence.png")
display(fig)

# %%
rows = []
for k, (name, c) in toyscenes.CONTEXTS.items():
    p_with, p_without = co[name]
    has_c, has_k = HAS_CLASS[:, c], HAS_CTX[:, k]
    precision = (has_c & has_k).sum() / max(has_k.sum(), 1)       # of the images with water, how many have a boat
    rows.append(f"| {NAMES[c]} / {name} | {p_with:.3f} | {p_without:.3f} | {precision:.3f} | {p_with:.3f} |")
display(Markdown("| class / context | P(context \\| class) | P(context \\| no class) | "
                 "rule 'context ⇒ class': precision | recall |\n|---|---:|---:|---:|---:|\n" + "\n".join(rows)))


# %% [markdown]
# Water almost always comes with a boat and rarely without one, so "water ⇒ boat" is a good rule for
# the *image label* (some "water, no boat" images even hold a badge-less body floating where a boat
# would be: a distractor) — and a classifier trained on image labels has no reason not to use it. Its CAM
# for "boat" then spreads onto the water: pseudo-labels call water "boat". EPS (notebook 05) counters
# this with a saliency map that says water is background; the leak is measured with EPS's confusion
# ratio (water pixels labelled boat / boat pixels labelled boat). The water also appears without
# boats (`p_context_without_class`), which is what lets a careful method tell them apart.
#
# ### 6.4 (c) Clutter: distractors, camouflage, non-convex bodies — why GrabCut from boxes errs
#
# Three kinds of clutter, all invisible in the weak labels:
#
# * **distractors** — bodies that look exactly like objects but carry no badge; the ground truth calls
#   them background (outlined in white below);
# * **camouflaged bodies** — coloured like the background beneath them;
# * **non-convex bodies** — lobed, bitten or L-shaped, so their box holds a lot of background.
#
# GrabCut (Rother et al., 2004) is the classic way to turn a box into a mask: it fits colour models
# inside and outside the box and cuts along colour edges. Here it runs on the first `N_GRABCUT`
# objects (OpenCV, 5 iterations, one box at a time), scored inside each box (255 skipped).

# %%
def error_map(image, pred, mask):
    "Prediction (H, W) bool vs. the foreground of `mask`: red = predicted but background (over-estimation), "
    "blue = object but not predicted (under-estimation), grey = right; 255 pixels and the rest dimmed."
    out = (0.35 * image).astype(np.uint8)
    valid = mask != 255
    fg, pred = (mask > 0) & valid, pred & valid
    out[pred & ~fg] = (230, 40, 40)
    out[~pred & fg] = (40, 90, 255)
    out[pred & fg] = (200, 200, 200)
    return out


def grabcut_in_box(image, box, iters=5):
    "Foreground (H, W) bool of cv2.grabCut initialised with one box (0-based, end-exclusive)."
    x1, y1, x2, y2 = (int(v) for v in box)
    gc = np.zeros(image.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), gc, (x1, y1, x2 - x1, y2 - y1), bgd, fgd, iters,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:          # a box too small to fit colour models
        gc[y1:y2, x1:x2] = cv2.GC_PR_FGD
    return (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)


flags, gc_rows = [], []
for i in range(N_RENDER):
    r = None
    for k, o in enumerate(scene_objects[i], start=1):
        flags.append((i, k, o["camouflaged"], o["nonconvex"]))
        if len(gc_rows) < N_GRABCUT:
            r = r or train.get_raw(i)
            pred = grabcut_in_box(r["image"], r["boxes"][k - 1])
            x1, y1, x2, y2 = r["boxes"][k - 1].astype(int)
            in_box = np.zeros(pred.shape, bool)
            in_box[y1:y2, x1:x2] = True
            scored = in_box & (r["instance_mask"] != 255)
            gt = r["instance_mask"] == k
            iou = (pred & gt & scored).sum() / max(((pred | gt) & scored).sum(), 1)
            gc_rows.append(dict(index=i, k=k, camo=o["camouflaged"], nonconvex=o["nonconvex"], iou=iou,
                                fill=gt.sum() / max(scored.sum(), 1), pred=pred))
flags = np.array(flags, dtype=int)
camo_subset = flags[:, 2].mean()
nonconvex_subset = flags[:, 3].mean()
n_distractors = [cv2.connectedComponents(m.astype(np.uint8))[0] - 1 for m in distractor_masks]
distractor_share = (np.mean([m.sum() for m in distractor_masks])
                    / np.mean([images[i]["valid"] - images[i]["fg"] for i in range(N_RENDER)]))

GC = {key: np.array([g[key] for g in gc_rows]) for key in ("camo", "nonconvex", "iou", "fill")}
gc_groups = {"convex, not camouflaged": ~GC["camo"] & ~GC["nonconvex"],
             "non-convex": ~GC["camo"] & GC["nonconvex"], "camouflaged": GC["camo"]}
print(f"first {N_RENDER} training scenes: {np.mean(n_distractors):.2f} distractor bodies per image covering "
      f"{distractor_share:.1%} of the background; {camo_subset:.1%} of the objects camouflaged "
      f"(whole data set: {man['stats']['camouflaged_share']:.1%}), {nonconvex_subset:.1%} non-convex")
display(Markdown("| objects | n | object share of its box | GrabCut IoU in the box |\n|---|---:|---:|---:|\n" + "\n".join(
    f"| {g} | {m.sum()} | {GC['fill'][m].mean():.3f} | {GC['iou'][m].mean():.3f} |" for g, m in gc_groups.items() if m.any())))


# %%
def outline(image, m, colour=(255, 255, 255)):
    "Draw the outline of the (H, W) bool mask `m` on a copy of `image`."
    out = image.copy()
    edge = m & ~(cv2.erode(m.astype(np.uint8), KERNEL3) > 0)
    out[edge] = colour
    return out


def worst(mask_of_rows, n):
    idx = np.flatnonzero(mask_of_rows)
    return list(idx[np.argsort(GC["iou"][idx])][:n])


show_rows = worst(GC["camo"], 2) + worst(~GC["camo"] & GC["nonconvex"], 2) + worst(~GC["camo"] & ~GC["nonconvex"], 1)
rows, titles = [], []
for j in show_rows:
    g = gc_rows[j]
    r = train.get_raw(g["index"])
    kind = "camouflaged" if g["camo"] else ("non-convex" if g["nonconvex"] else "convex")
    c = int(r["box_labels"][g["k"] - 1])
    x1, y1, x2, y2 = r["boxes"][g["k"] - 1].astype(int)
    in_box = np.full(r["mask"].shape, 255, np.uint8)                     # score this object inside its box only
    in_box[y1:y2, x1:x2] = np.where(r["instance_mask"][y1:y2, x1:x2] == 255, 255,
                                    (r["instance_mask"][y1:y2, x1:x2] == g["k"]).astype(np.uint8))
    rows.append([outline(r["image"], distractor_masks[g["index"]]), viz.overlay(r["image"], r["mask"]), r["image"],
                 viz.overlay(r["image"], np.where(g["pred"], c, 0)), error_map(r["image"], g["pred"], in_box)])
    titles.append([f"{kind} {NAMES[c]}", "full mask", "its box", f"GrabCut: IoU {g['iou']:.2f}",
                   "red over, blue under"])
if rows:
    fig = viz.image_grid(rows, titles=titles, size=1.9)
    for row, j in enumerate(show_rows):
        g = gc_rows[j]
        r = train.get_raw(g["index"])
        for col in (2, 3, 4):
            viz.draw_boxes(fig.axes[row * 5 + col], r["boxes"][g["k"] - 1:g["k"]], r["box_labels"][g["k"] - 1:g["k"]],
                           NAMES, show_names=col == 2, linewidth=1.5 if col == 2 else 0.8)
    fig.savefig(OUT / "clutter_grabcut.png")
    display(fig)

# %% [markdown]
# Each row is the *worst* GrabCut result of its kind in the sample (the table gives the averages).
# White outlines in the first column are distractor bodies: background in the full mask, yet they look
# exactly like objects. No box is drawn around them, but one may lie inside another object's box, where
# a colour model can take it for the object, and a saliency detector or a CAM may fire on it. GrabCut does well on convex bodies that stand out, worse on non-convex ones (a box is a
# poor first guess of a lobed or L-shaped body), and fails on camouflaged bodies, whose colour model
# cannot be told apart from the background's: it either swallows the background in the box
# (over-estimation) or keeps a fragment (under-estimation). A "filled box" — every box pixel labelled
# with the class — is wrong on all the background a box holds (1 minus the "object share of its box"
# column of the table above). Box2Seg (notebook 04) trains the segmenter on GrabCut's pseudo-labels,
# but weights each pixel's loss inside the boxes by a learned per-class attention map, regularised by
# the filling rate GrabCut gives each box — so the loss leans on the pixels the network finds
# object-like rather than on every GrabCut label alike.
#
# ### 6.5 (d) Saliency quality

# %%
fig = Figure(figsize=(9.5, 2.8), layout="constrained")
ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.3, 1])
taus = np.arange(256) / 255
for name, st in sal_stats.items():
    ax1.plot(taus, st.f_curve(), label=f"{name} (max F {st.value['max_f']:.3f})")
ax1.set(xlabel="threshold τ", ylabel="F (β² = 0.3)", title="F-measure of S ≥ τ, training split (Eq. 4)")
ax1.legend(fontsize=7)
ax1.grid(alpha=0.3)
viz.bar_table({name: st.value["mae"] for name, st in sal_stats.items()}, ax=ax2, title="MAE (Eq. 3), lower is better")
display(fig)

missed = OBJ["sal"] < 0.3
fired = [float(train.get_raw(i)["saliency"][m].mean()) > 0.3 for i, m in enumerate(distractor_masks) if m.any()]
print(f"the stand-in misses {missed.mean():.1%} of the objects (mean saliency < 0.3 on the object; "
      f"configured sal_p_miss = {cfg.sal_p_miss}) and fires on {np.mean(fired):.1%} of the images' distractors "
      f"(configured sal_p_distractor = {cfg.sal_p_distractor}; first {N_RENDER} scenes)")
unsup_on_distractors = np.mean([read_gray_png(train.root / "SaliencyUnsupervised" / f"{train.ids[i]}.png")[m].mean()
                                for i, m in enumerate(distractor_masks) if m.any()])
print("OpenCV's saliency, mean value on: badges {:.2f}, object bodies {:.2f}, distractors {:.2f}, "
      "all background {:.2f}".format(np.nanmean([im["unsup_badge"] for im in images]),
                                     np.nanmean([im["unsup_body"] for im in images]), unsup_on_distractors,
                                     np.mean([im["unsup_bg"] for im in images])))

# %% [markdown]
# The stand-in plays the role of a *pretrained* salient-object detector (EPS used PFAN, EDAM PoolNet):
# good on the whole — low MAE, high max F — but with a blurred boundary, a few objects missed entirely
# and some distractors marked as salient. OpenCV's spectral-residual saliency is a real, unsupervised
# detector: better than the centre prior, far below the stand-in, and — the last line above — it
# responds mostly to the *badges*, the same small saturated marks a classifier learns, and little to
# the bodies. It tells where objects are, not how far they extend, so it cannot repair partial
# coverage. That is why the EPS notebook uses the stand-in by default and keeps OpenCV as the honest
# hard case. Every notebook that uses a saliency map reports its MAE and max F next to its own results.
#
# ### 6.6 Explore the data
#
# Move the sliders (in a live Jupyter session) to browse the training images layer by layer; in an
# executed copy of this notebook you see the figure for the default values.

# %%
LAYERS = ["mask", "parts", "context", "saliency (stand-in)", "saliency (OpenCV)", "boxes", "distractors"]


def render(index, layer, alpha):
    r = train.get_raw(index)
    img = r["image"]
    if layer == "mask":
        right = viz.overlay(img, r["mask"], alpha)
    elif layer == "parts":
        right = viz.overlay(img, r["part_mask"], alpha)
    elif layer == "context":
        right = context_overlay(img, r["context_mask"], alpha)
    elif layer == "saliency (stand-in)":
        right = viz.heatmap(img, r["saliency"], alpha)
    elif layer == "saliency (OpenCV)":
        right = viz.heatmap(img, read_gray_png(train.root / "SaliencyUnsupervised" / f"{r['id']}.png"), alpha)
    elif layer == "distractors":
        right = outline(img, distractor_masks[index]) if index < N_RENDER else img
    else:
        right = img
    fig = viz.image_grid([[img, right]], titles=[[f"{r['id']}: {label_names(r['label'])}", layer]], size=3.0)
    if layer == "boxes":
        viz.draw_boxes(fig.axes[1], r["boxes"], r["box_labels"], NAMES)
    if layer == "distractors" and index >= N_RENDER:
        fig.axes[1].set_title(f"distractors: only the first {N_RENDER} scenes were located", fontsize=8)
    return fig


widgets.explore(render, index=(0, len(train) - 1, 1, int(SHOW[0])), layer=LAYERS, alpha=(0.0, 1.0, 0.05, 0.55));

# %% [markdown]
# ### 6.7 Real photos, read by the same reader
#
# Two small real datasets in the same VOC layout (see `../shared/data/README.md`, not shipped with the
# package): the GrabCut benchmark (Rother et al., 2004; one foreground class, masks with an *unknown*
# band marked 255) and the Weizmann horses (class 13 = horse, VOC numbering). If they are absent this
# section is skipped.

# %%
SHARED = profiles.shared_data_dir()
real_stats = {}
if SHARED is None:
    print("skipped: no real-photo folder found (set WSSS_SHARED_DATA, or put the data next to the repository "
          "in ../shared/data); nothing else in this notebook depends on it")
else:
    grabcut = VOCLayoutDataset(SHARED / "grabcut_voc", "all")            # class_names.txt: background, foreground
    horses = VOCLayoutDataset(SHARED / "weizmann_horse_voc", "val")      # no class_names.txt: the 21 VOC names
    print(grabcut)
    print(horses)
    n_real = len(grabcut) if TOY_PROFILE != "smoke" else min(len(grabcut), 10)
    band = [float((grabcut.get_raw(i)["mask"] == 255).mean()) for i in range(n_real)]
    real_stats["grabcut_with_255"] = (int(np.sum(np.array(band) > 0)), n_real)
    print(f"GrabCut benchmark: {real_stats['grabcut_with_255'][0]} of {n_real} masks have a 255 band, "
          f"covering {np.mean(band):.2%} of the pixels on average")

    rows, titles = [], []
    gc_pick = sorted(np.argsort(band)[::-1][:3])                         # the widest unknown bands
    for ds, idx in ((grabcut, gc_pick), (horses, [0, 1, 2])):
        for i in idx:
            r = ds.get_raw(int(i))
            m = r["mask"]
            edge = (m == 255) if (m == 255).any() else (m != cv2.erode(m, KERNEL3))   # the 255 band, else the outline
            ys, xs = np.nonzero(edge)
            j = np.argmin((ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2)        # an edge pixel near the middle
            cy, cx = int(ys[j]), int(xs[j])
            half = max(16, min(m.shape) // 10)
            y0, x0 = max(cy - half, 0), max(cx - half, 0)
            over = viz.overlay(r["image"], r["mask"])
            rows.append([r["image"], over, r["image"], over[y0:y0 + 2 * half, x0:x0 + 2 * half]])
            titles.append([f"{ds.root.parent.name}/{r['id']}", "mask" + (" (cream = 255)" if (m == 255).any() else ""),
                           "box", "zoom on the mask edge"])
    fig = viz.image_grid(rows, titles=titles, size=2.0)
    for row in range(len(rows)):
        ds, i = (grabcut, gc_pick[row]) if row < 3 else (horses, row - 3)
        r = ds.get_raw(int(i))
        viz.draw_boxes(fig.axes[row * 4 + 2], r["boxes"], r["box_labels"], ds.class_names)
    fig.savefig(OUT / "real_photos.png")
    display(fig)

    st = SaliencyStats()
    n_h = len(horses) if TOY_PROFILE != "smoke" else min(len(horses), 10)
    for i in tqdm(range(n_h), desc="OpenCV saliency, horses"):
        r = horses.get_raw(i)
        valid = r["mask"] != 255
        st.update(toyscenes.opencv_saliency(r["image"])[valid], (r["mask"] > 0)[valid])
    real_stats["horse_opencv"] = st.value
    print(f"OpenCV saliency on {n_h} Weizmann horse photos: MAE {st.value['mae']:.3f}, max F {st.value['max_f']:.3f} "
          f"(toy scenes: MAE {sal_stats['OpenCV (unsupervised)'].value['mae']:.3f}, "
          f"max F {sal_stats['OpenCV (unsupervised)'].value['max_f']:.3f})")

if PROFILE == "paper":
    try:
        voc = profiles.prepare_data("paper", DATA_ROOT)
        voc_val = VOCLayoutDataset(voc.root, voc.val_split)
        rows = [[r["image"], viz.overlay(r["image"], r["mask"])] for r in (voc_val.get_raw(i) for i in range(3))]
        display(viz.image_grid(rows, col_titles=["PASCAL VOC val", "mask"], size=2.4))
    except FileNotFoundError as e:
        print(f"PASCAL VOC not shown: {e}")

# %% [markdown]
# The real masks follow the same conventions — palette PNG, 0 background, 255 ignore — so every later
# stage runs on them unchanged. GrabCut's 255 band is thin (zoom in the last column) but it matters:
# those pixels are skipped by every metric here, exactly as VOC's outlines are.
#
# OpenCV's saliency is no better on real horses than on the toy scenes: an unsupervised detector is
# a weak signal on real photos too, which is why the papers rely on *trained* saliency networks.

# %% [markdown]
# ## 7 Measure it
#
# The numbers of this notebook, with where each comes from; they go to
# `OUT_DIR/00_weak_supervision/metrics.json` under stable keys (the runner's regression baseline
# reads them).

# %%
sal_d, sal_u = sal_stats["stand-in detector"].value, sal_stats["OpenCV (unsupervised)"].value
metrics = {
    "n_train": len(train),
    "n_val": len(val),
    "num_classes": C,
    "objects_per_image": objects_per_image,
    "part_share_of_foreground": part_share,
    "p_water_given_boat": co["water"][0],
    "p_water_given_no_boat": co["water"][1],
    "p_rails_given_train": co["rails"][0],
    "p_rails_given_no_train": co["rails"][1],
    "camouflaged_share": man["stats"]["camouflaged_share"],
    "saliency_mae": sal_d["mae"],
    "saliency_max_f": sal_d["max_f"],
    "saliency_unsupervised_mae": sal_u["mae"],
    "saliency_unsupervised_max_f": sal_u["max_f"],
    "generation_images_per_second": generation_images_per_second,
}
source = {
    "n_train": "train split", "n_val": "val split", "num_classes": "class_names.txt",
    "objects_per_image": "XML objects, train (§5.2)", "part_share_of_foreground": "Eq. 6, train (§5.2)",
    "p_water_given_boat": "Eq. 5, train (§4.3)", "p_water_given_no_boat": "Eq. 5, train (§4.3)",
    "p_rails_given_train": "Eq. 5, train (§4.3)", "p_rails_given_no_train": "Eq. 5, train (§4.3)",
    "camouflaged_share": "toyscenes.json, train + val", "saliency_mae": "stand-in, Eq. 3, train (§5.2)",
    "saliency_max_f": "stand-in, Eq. 4, train (§5.2)", "saliency_unsupervised_mae": "OpenCV, Eq. 3, train (§5.2)",
    "saliency_unsupervised_max_f": "OpenCV, Eq. 4, train (§5.2)",
    "generation_images_per_second": f"render_scene ×{N_RENDER}, one core (§5.1)",
}
path = write_metrics(OUT / "metrics.json", metrics)
display(Markdown("| key | value | from |\n|---|---:|---|\n" + "\n".join(
    f"| `{k}` | {v:.4g} | {source[k]} |" if isinstance(v, float) else f"| `{k}` | {v} | {source[k]} |"
    for k, v in metrics.items())))
print(f"written: {rel(path)}")


def gc_mean(group):
    m = gc_groups[group]
    return f"{GC['iou'][m].mean():.3f} ({m.sum()} objects)" if m.any() else "–"


more = [("(a)", "image labels recovered from the badges alone (§6.2)",
         f"{np.mean([im['part_label_ok'] for im in images]):.1%}"),
        ("(b)", "rule 'water ⇒ boat': precision / recall (§6.3)",
         f"{(HAS_CLASS[:, BOAT] & HAS_CTX[:, WATER]).sum() / max(HAS_CTX[:, WATER].sum(), 1):.3f} / {co['water'][0]:.3f}"),
        ("(c)", "distractor bodies per image (§6.4)", f"{np.mean(n_distractors):.2f}"),
        ("(c)", "non-convex objects (§6.4)", f"{nonconvex_subset:.1%}"),
        ("(c)", "GrabCut IoU in the box: convex (§6.4)", gc_mean("convex, not camouflaged")),
        ("(c)", "GrabCut IoU in the box: non-convex", gc_mean("non-convex")),
        ("(c)", "GrabCut IoU in the box: camouflaged", gc_mean("camouflaged")),
        ("(d)", "centre-prior saliency: MAE / max F (§6.5)",
         f"{sal_stats['centre prior'].value['mae']:.3f} / {sal_stats['centre prior'].value['max_f']:.3f}")]
display(Markdown("Not in `metrics.json` (they depend on subsets and on OpenCV's GrabCut), but worth keeping in mind:\n\n"
                 "| problem | quantity | value |\n|---|---|---:|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in more)))

# %% [markdown]
# ## 8 What goes wrong
#
# A weak signal that is *wrong* is worse than one that is silent. Here are the saliency stand-in's two
# failure modes on training images: an object it misses, and a distractor it marks as salient. The
# error map shows the binarised saliency ($S \ge 0.5$) against the true foreground: **red** = salient
# but background (false positive), **blue** = object but not salient (false negative).

# %%
cases = []
missed_idx = [int(OBJ["index"][j]) for j in np.flatnonzero(missed)]
if missed_idx:
    cases.append((f"missed {NAMES[int(OBJ['cls'][np.flatnonzero(missed)[0]])]}", missed_idx[0]))
fired_idx = [i for i, m in enumerate(distractor_masks)
             if m.sum() > 50 and float(train.get_raw(i)["saliency"][m].mean()) > 0.5]
if fired_idx:
    cases.append(("salient distractor", fired_idx[0]))
if cases:
    rows, titles = [], []
    for what, i in cases:
        r = train.get_raw(i)
        img = outline(r["image"], distractor_masks[i]) if i < N_RENDER else r["image"]
        rows.append([img, viz.overlay(r["image"], r["mask"]), r["saliency"],
                     error_map(r["image"], r["saliency"] >= 0.5, r["mask"])])
        titles.append([f"{what} (labels: {label_names(r['label'])})", "full mask", "stand-in saliency",
                       "error (red FP, blue FN)"])
    fig = viz.image_grid(rows, titles=titles, size=2.1)
    fig.savefig(OUT / "what_goes_wrong.png")
    display(fig)
else:
    print("no saliency failure among these images (try a larger profile)")


# %% [markdown]
# What the later methods will suffer from these errors:
#
# * **EPS** (notebook 05) trains the classifier so that its class maps, summed, *reproduce the saliency
#   map*. A missed object teaches it that the object's pixels are background — the class map is pushed
#   off the body it should cover; a salient distractor teaches it that a badge-less body is foreground,
#   so some class map is pushed onto it. (EPS's map-selection rule only decides, per present class,
#   whether that class counts as foreground; it cannot repair a wrong saliency pixel.)
# * **EDAM** (notebook 03) uses saliency when it makes pseudo-labels: where the saliency map is
#   (nearly) zero the pixel becomes background unless a class map is at its very peak — a missed
#   object is largely erased from its pseudo-label.
# * **GrabCut / Box2Seg** (notebook 04) do not use saliency, but suffer the same way from camouflage
#   (§6.4): a colour model cannot find a body coloured like its background.
#
# The numbers to keep in mind: the stand-in's max F (§7) bounds how well a saliency-guided method can
# separate foreground from background; OpenCV's much lower max F is what happens without a trained
# detector.

# %% [markdown]
# ## 9 Exercises
#
# **Exercise 1 — image labels from a mask (Eq. 1).** Write `image_label_from_mask(mask, num_classes)`:
# `mask` is an `(H, W)` integer array with 0 = background, 1..C = classes and 255 = ignore; return a
# `(num_classes,)` float32 multi-hot vector whose entry `c - 1` is 1 if class `c` occurs in the mask.
# Replace the `raise` and run the check cell.

# %%
def image_label_from_mask(mask, num_classes):
    "(H, W) int mask (0 bg, 1..C classes, 255 ignore) → (num_classes,) float32 multi-hot."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_1 = exercises.check("image_label_from_mask", image_label_from_mask, use_solution=USE_SOLUTIONS)


# %% [markdown]
# **Exercise 2 — the tight box of a mask (Eq. 2).** Write `tight_box(mask)`: `mask` is an `(H, W)`
# boolean array with at least one True pixel; return `(x1, y1, x2, y2)` — 0-based, with `x2`, `y2`
# *exclusive* (the convention of `sample["boxes"]`; the VOC XML stores `x1 + 1, y1 + 1, x2, y2`).

# %%
def tight_box(mask):
    "(H, W) bool mask → (x1, y1, x2, y2) ints, 0-based, x2 / y2 exclusive."
    # YOUR CODE HERE
    raise NotImplementedError


# %%
passed_2 = exercises.check("tight_box", tight_box, use_solution=USE_SOLUTIONS)

# %% [markdown]
# **Exercise 3 — predict, then test (no check cell).** The co-occurrence of §6.3 is set by
# `ToySceneConfig.p_context_with_class` (now 0.95) and `p_context_without_class` (now 0.05).
#
# 1. Before running anything: if both were 0.5, what would P(water | boat) and P(water | no boat)
#    be, and how much would the boat class map of notebook 01 leak onto water compared with now?
#    What if `p_context_without_class` were 0?
# 2. Render a few hundred scenes with `toyscenes.render_scene(dataclasses.replace(cfg, p_context_with_class=0.5,
#    p_context_without_class=0.5), i)` and recompute Eq. 5 from `scene.objects` and `scene.context`
#    to check the first half of your prediction. (The second half needs notebook 01: generate a
#    dataset with `toyscenes.ensure_toyscenes(folder, that_config)` and pass `DATA_ROOT=folder`.)
# 3. Why does the generator keep `p_context_without_class` above zero? (Hint: what could a method
#    learn about water from images that have water and no boat?)

# %% [markdown]
# ## 10 Summary and pointers
#
# * A weak signal is a function of the full mask that throws most of it away: image labels keep the
#   classes (Eq. 1), boxes keep the extents (Eq. 2), saliency keeps a noisy class-agnostic
#   foreground. Every WSSS method is a pseudo-label maker that guesses the rest.
# * The toy scenes make the guessing hard in the four ways the papers describe, each measured above
#   (§7): badges are a small share of the object pixels yet identify the class; water and rails
#   co-occur with boats and trains; distractors, camouflage and non-convex bodies defeat box-based
#   colour models; a pretrained-like saliency detector misses objects and fires on distractors, and
#   an unsupervised one mostly finds the badges.
#
# | problem (§) | what it does to pseudo-labels | notebook | method (paper) |
# |---|---|---|---|
# | (a) partial coverage (6.2) | CAMs cover the badge, miss the body | 01 | CAM (Zhou et al., CVPR 2016) as the baseline |
# | (a) partial coverage | propagate confident CAM regions along pixel affinities | 02 | AffinityNet + random walk (Ahn & Kwak, CVPR 2018; IRN, Ahn et al., CVPR 2019) |
# | (a) partial coverage | attend to whole objects across images | 03 | EDAM (Wu et al., CVPR 2021) |
# | (c) clutter (6.4) | GrabCut from boxes over- and under-estimates | 04 | GrabCut (Rother et al., 2004) + Box2Seg (Kulharia et al., ECCV 2020) |
# | (b) co-occurrence (6.3), (d) saliency (6.5) | CAMs leak onto water / rails | 05 | EPS (Lee et al., CVPR 2021), confusion ratio |
# | all | pseudo-label errors become network errors | 06 | segmentation network trained on each pseudo-label set, one comparison table |
#
# **Toy scenes next to PASCAL VOC 2012** (the data of the papers' numbers; toy numbers from this run):
#
# | | PASCAL VOC 2012 | toy scenes (this run) |
# |---|---|---|
# | classes | 20 + background | 6 + background |
# | training images | 1 464 (10 582 with SBD's train_aug) | see `n_train` in §7 |
# | validation images | 1 449 | see `n_val` in §7 |
# | image size | about 500 × 375 | 96 × 96 |
# | where the problems come from | the world | parameters of `ToySceneConfig`, measured in §7 |
#
# The toy scenes are a teaching instrument on a CPU, not a benchmark: a method's mIoU on them is not
# comparable with its VOC number, but the *order* of the methods and the size of each problem are
# what the next notebooks look at.
#
# Next: **01 · class activation maps** — train a classifier on the image labels and watch its CAMs
# find the badges.
