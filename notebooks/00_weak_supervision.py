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
# # 00 · Weak supervision, and the data that shows its problems
#
# ## 1 Objective
#
# A segmentation network learns from **full masks**, a class for every pixel. Drawing them is slow, so
# *weakly supervised* semantic segmentation (WSSS) trains from cheaper **weak signals** (the class
# names of an image, a box per object, or a class-agnostic *saliency* map) and first turns them into
# **pseudo-labels**. Every later notebook is one way of doing that. This one trains nothing: it shows
# the weak signals next to the full mask, and measures on the data the four problems the papers
# attack: (a) a classifier needs only a small *discriminative part* of an object; (b) objects come with
# *co-occurring context* (boats on water, trains on rails); (c) *clutter* (distractors, camouflaged and
# non-convex bodies) breaks box-based guesses; (d) saliency detectors miss objects and fire on
# distractors. Each problem gets a picture (§6) and a number (§7).
#
# ## 2 Parameters

# %% tags=["parameters"]
PROFILE = "tutorial"        # "smoke" (CI, seconds) | "tutorial" (≈ 15 s on 2 CPU cores the first time, when it generates the data; ≈ 10 s after) | "paper" (the tutorial scenes)
DATA_ROOT = None            # None: the profile's toy-scenes folder (generated on first use)
DEVICE = "auto"             # unused here (nothing is trained); every notebook takes the same parameters
SEED = 0                    # picks which images are shown
OUT_DIR = "../runs/tutorial"
N_SHOW = 6                  # images per example figure

# %%
import dataclasses, time, numpy as np
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from wsss_core import boxes, grading, lesson, viz, widgets
from wsss_core.data import toyscenes
from wsss_core.data.palette import read_gray_png, read_label_png
from wsss_core.data.voc import VOCLayoutDataset, parse_voc_xml
from wsss_core.metrics import SaliencyStats, saliency_f_measure, saliency_mae

L = lesson.setup("00_weak_supervision", "tutorial" if PROFILE == "paper" else PROFILE, OUT_DIR,   # paper: the tutorial scenes
                 data_root=None if PROFILE == "paper" else DATA_ROOT, device=DEVICE, seed=SEED)
man, cfg = L.data.manifest, toyscenes.ToySceneConfig.from_dict(L.data.manifest["config"])
train, val = VOCLayoutDataset(L.data.root, L.data.train_split), VOCLayoutDataset(L.data.root, L.data.val_split)
NAMES, C, N_RENDER, N_GRABCUT = train.class_names, train.num_classes, min(len(train), 64 if L.profile == "smoke" else 400), 40 if L.profile == "smoke" else 240
print(f"train {len(train)}, val {len(val)} images of {cfg.image_size}×{cfg.image_size}, {C} classes: {NAMES[1:]}")

# %% [markdown]
# ## 3 Theory
#
# Every method in WSSS is the same pipeline with a different weak signal and pseudo-label maker:
#
# ```
# weak signal ──► pseudo-label maker ──► pseudo-labels ──► segmentation network ──► mIoU
# image labels     CAM (01) / AffinityNet + random walk (02) / EDAM (03)
# boxes            GrabCut, then Box2Seg's attention-weighted loss (04)
# labels+saliency  EPS (05)
# ```
#
# An image of $H \times W$ pixels has a full mask $Y \in \{0, 1, \dots, C, 255\}^{H \times W}$: $0$ is background,
# $1..C$ the classes, $255$ "ignore" (VOC draws it along object outlines). $P = \{p : Y_p \neq 255\}$ are
# the scored pixels, $G_p = \mathbb{1}[1 \le Y_p \le C]$ the class-agnostic foreground. The weak signals
# are functions of the full annotation:
#
# * **image label**, read from the XML by `wsss_core.data.voc.VOCLayoutDataset` (`sample["label"]`;
#   exercise 1): $$y_c = \mathbb{1}\big[\exists\, p : Y_p = c\big], \qquad c = 1..C \tag{1}$$
# * **boxes**, the tight box of object $k$'s pixels $\Omega_k$, 0-based, end-exclusive (`sample["boxes"]`;
#   exercise 2): $$B_k = \big(\min_{p \in \Omega_k} p_x,\; \min_{p \in \Omega_k} p_y,\; \max_{p \in \Omega_k} p_x + 1,\; \max_{p \in \Omega_k} p_y + 1\big) \tag{2}$$
# * **saliency**, a map $S \in [0, 1]^{H \times W}$ that estimates $G$, scored by the mean absolute error
#   (`wsss_core.metrics.saliency_mae`) and the best F-measure over thresholds $\tau$
#   (`wsss_core.metrics.saliency_f_measure`; `SaliencyStats` pools them over images):
#   $$\mathrm{MAE} = \frac{1}{|P|} \sum_{p \in P} |S_p - G_p| \tag{3}$$
#   $$F_\beta(\tau) = \frac{(1 + \beta^2)\, \mathrm{Prec}(\tau)\, \mathrm{Rec}(\tau)}{\beta^2\, \mathrm{Prec}(\tau) + \mathrm{Rec}(\tau)}, \quad \beta^2 = 0.3, \qquad \max F = \max_\tau F_\beta(\tau) \tag{4}$$
#
# Two quantities describe the problems: the **co-occurrence** of a context region $k$ with its class $c$
# over images, and the **part share** of the object pixels a classifier needs:
#
# $$P(k \mid c) = \frac{\#\{\text{images with } c \text{ and } k\}}{\#\{\text{images with } c\}}, \qquad
#   P(k \mid \neg c) = \frac{\#\{\text{images with } k,\ \text{without } c\}}{\#\{\text{images without } c\}} \tag{5}$$
# $$\text{part share} = \frac{\sum_{\text{images}} \#\{\text{badge pixels}\}}{\sum_{\text{images}} \#\{p : G_p = 1\}} \tag{6}$$
#
# Later notebooks score pseudo-labels $\hat Y$ by the mean IoU over the $C + 1$ classes, pooled over images
# (`wsss_core.metrics.ConfusionMatrix`):
# $$\mathrm{IoU}_c = \frac{\#\{p: \hat Y_p = c \wedge Y_p = c\}}{\#\{p: \hat Y_p = c \vee Y_p = c\}}, \qquad
#   \mathrm{mIoU} = \frac{1}{C + 1} \sum_{c=0}^{C} \mathrm{IoU}_c \tag{7}$$
#
# **The data.** `wsss_core.data.toyscenes` draws every image from `(seed, index)` and writes it in the
# PASCAL VOC layout, plus the layers that make the problems measurable: `PartMask/` (each object's
# *badge*, a small class-specific mark), `ContextMask/` (water, rails), `Saliency/` (a stand-in for a
# pretrained detector, with parameterised errors) and `SaliencyUnsupervised/` (OpenCV's saliency).
#
# ## 4 From scratch, then the library
#
# Co-occurrence (Eq. 5) straight from the files, against the generator's statistics in `toyscenes.json`:

# %%
def cooccurrence_from_files(root, ids, class_names, contexts):
    "Eq. 5 for every (context id → class index) pair: {context name: (P(k | c), P(k | not c))}."
    has_class, has_ctx = [], []
    for id_ in ids:
        names = {o["name"] for o in parse_voc_xml(root / "Annotations" / f"{id_}.xml")}
        has_class.append([class_names[c] in names for c in range(len(class_names))])
        ctx = np.unique(read_label_png(root / "ContextMask" / f"{id_}.png"))
        has_ctx.append([k in ctx for k in range(max(contexts) + 1)])
    has_class, has_ctx = np.array(has_class), np.array(has_ctx)
    out = {name: (has_ctx[has_class[:, c], k].mean(), has_ctx[~has_class[:, c], k].mean())
           for k, (name, c) in contexts.items()}
    return out, has_class, has_ctx


co, HAS_CLASS, HAS_CTX = cooccurrence_from_files(train.root, train.ids, NAMES, toyscenes.CONTEXTS)
for name, (p_with, p_without) in co.items():
    stored = man["stats"]["co_occurrence"][name]
    assert abs(p_with - stored["p_context_given_class"]) < 1e-12 and abs(p_without - stored["p_context_given_no_class"]) < 1e-12
print("✓ recomputed co-occurrence == the generator's statistics:",
      ", ".join(f"P({k} | class) {a:.3f}, P({k} | no class) {b:.3f}" for k, (a, b) in co.items()))

# %% [markdown]
# Saliency quality (Eqs. 3–4) in a few lines, against `wsss_core.metrics`:

# %%
r = train.get_raw(0)
valid = r["mask"] != 255
S, G = r["saliency"][valid], (r["mask"][valid] > 0)
mae_scratch = np.abs(S - G).mean()                                    # Eq. 3
f_scratch = []
for tau in np.arange(256) / 255:                                      # Eq. 4, 256 thresholds
    pred = S >= tau - 1e-9
    prec, rec = (pred & G).sum() / max(pred.sum(), 1), (pred & G).sum() / max(G.sum(), 1)
    f_scratch.append(1.3 * prec * rec / (0.3 * prec + rec) if prec + rec > 0 else 0.0)
assert abs(mae_scratch - saliency_mae(S, G)) < 1e-6 and abs(max(f_scratch) - saliency_f_measure(S, G)[0]) < 1e-3
print(f"✓ MAE {mae_scratch:.4f} and max F {max(f_scratch):.4f} agree with the library")

# %% [markdown]
# ## 5 Run it
#
# Nothing is trained; running means re-rendering scenes and measuring the data. `toyscenes.render_scene`
# gives what the files do not store: which objects are *camouflaged* or *non-convex*, and where the
# *distractors* are (rendered a second time with a saliency stand-in that never misses and always fires
# on distractors; the image is drawn first, so it is unchanged).

# %%
assert all(train.ids[i] == toyscenes.image_id(i) for i in range(N_RENDER))   # train item i is scene i
t0 = time.perf_counter()
for i in range(N_RENDER):
    toyscenes.render_scene(cfg, i)
generation_images_per_second = N_RENDER / (time.perf_counter() - t0)
oracle_cfg = dataclasses.replace(cfg, sal_p_miss=0.0, sal_p_distractor=1.0, sal_blur_sigma=0.0)
scene_objects, distractor_masks = [], []
for i in range(N_RENDER):
    sc = toyscenes.render_scene(oracle_cfg, i)
    assert np.array_equal(sc.cls, read_label_png(train.root / "SegmentationClass" / f"{train.ids[i]}.png")), \
        "the generator changed since the data were written: regenerate with toyscenes.ensure_toyscenes(..., force=True)"
    scene_objects.append(sc.objects)
    distractor_masks.append((sc.saliency > 0.3) & (sc.cls == 0))      # salient but background = a distractor
print(f"rendered {N_RENDER} scenes at {generation_images_per_second:.0f} images/s on one core; ✓ masks == stored masks")

# %% [markdown]
# One pass over the training split collects the rest: per image the objects and badge pixels, per object
# its class and how salient it is, and Eqs. 3–4 for three maps: the detector stand-in, OpenCV's
# unsupervised saliency, and a *centre prior* (a fixed Gaussian bump), the baseline any detector should beat.

# %%
H = W = cfg.image_size
yy, xx = np.mgrid[0:H, 0:W]
CENTRE_PRIOR = np.exp(-(((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2) / (2 * (H / 4) ** 2))).astype(np.float32)
sal_stats = {"stand-in detector": SaliencyStats(), "OpenCV (unsupervised)": SaliencyStats(), "centre prior": SaliencyStats()}
images, objects = [], []
for i in range(len(train)):
    r = train.get_raw(i)
    valid = r["mask"] != 255
    fg = valid & (r["mask"] > 0)
    unsup = read_gray_png(train.root / "SaliencyUnsupervised" / f"{r['id']}.png")
    for name, s in zip(sal_stats, (r["saliency"], unsup, CENTRE_PRIOR)):
        sal_stats[name].update(s[valid], fg[valid])
    images.append(dict(label=r["label"], n_objects=len(r["boxes"]), fg=int(fg.sum()), part=int((r["part_mask"] > 0).sum()),
                       valid=int(valid.sum())))
    objects += [dict(index=i, cls=int(c), area=int((r["instance_mask"] == k).sum()),
                     sal=float(r["saliency"][r["instance_mask"] == k].mean())) for c, k in zip(r["box_labels"], r["box_instance_ids"])]
OBJ = {key: np.array([o[key] for o in objects]) for key in objects[0]}
objects_per_image = len(objects) / len(images)
part_share = sum(im["part"] for im in images) / sum(im["fg"] for im in images)

fig = Figure(figsize=(10, 2.4), layout="constrained")
ax1, ax2, ax3 = fig.subplots(1, 3)
counts = np.bincount([im["n_objects"] for im in images])
ax1.bar(range(len(counts)), counts)
ax1.set(xlabel="objects per image", ylabel="images", title=f"{objects_per_image:.2f} objects per image")
labels = np.stack([im["label"] for im in images])
ax2.bar(range(1, C + 1), labels.sum(0), color=[viz.palette_color(c) for c in range(1, C + 1)])
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
# Each row is a training image: the image label (above it), the full mask (cream outline = 255), the
# boxes, and two saliency maps.

# %%
def label_names(label):
    return ", ".join(NAMES[c + 1] for c in np.flatnonzero(label)) or "(none)"


SHOW = np.sort(L.rng.choice(len(train), size=min(N_SHOW, len(train)), replace=False))
raws = [train.get_raw(int(i)) for i in SHOW]
rows = [[r["image"], viz.overlay(r["image"], r["mask"]), r["image"], r["saliency"],
         read_gray_png(train.root / "SaliencyUnsupervised" / f"{r['id']}.png")] for r in raws]
fig = viz.image_grid(rows, col_titles=["image + image label", "full mask", "boxes", "saliency: stand-in", "saliency: OpenCV"],
                     titles=[[label_names(r["label"]), "", "", "", ""] for r in raws], size=1.9)
for row, r in enumerate(raws):
    viz.draw_boxes(fig.axes[row * 5 + 2], r["boxes"], r["box_labels"], NAMES)
viz.class_legend(fig, NAMES, ignore=True)
fig.savefig(L.out / "weak_signals.png")
display(fig)


# %% [markdown]
# The label says *what* but not *where*; boxes say where but enclose background; saliency says
# "something is here" without a class, not always correctly.
#
# ### 6.2 (a) Partial coverage: a classifier needs only the badge
#
# Every object is a *body* drawn from one distribution shared by all classes, carrying a small
# class-specific *badge*. Below: the badges, the image with everything else greyed out, and the image
# with the badges painted over. The class is obvious in the third column and impossible to tell in the
# fourth.

# %%
import cv2


def grey_out(image, keep):
    "Image with every pixel outside `keep` (H, W) bool replaced by a flat grey."
    out = np.full_like(image, 128)
    out[keep] = image[keep]
    return out


def remove_badges(image, part):
    "Paint over each badge (a disc around it, so its outline does not show) with the surrounding colours."
    hole = np.zeros(part.shape, np.uint8)
    n, comp = cv2.connectedComponents((part > 0).astype(np.uint8))
    for j in range(1, n):
        ys, xs = np.nonzero(comp == j)
        (cx, cy), radius = cv2.minEnclosingCircle(np.stack([xs, ys], axis=1).astype(np.float32))
        cv2.circle(hole, (int(round(cx)), int(round(cy))), int(np.ceil(radius)) + 2, 1, -1)
    return cv2.inpaint(image, hole, 3, cv2.INPAINT_TELEA)


rows = [[r["image"], viz.overlay(r["image"], r["part_mask"], alpha=0.9),
         grey_out(r["image"], cv2.dilate((r["part_mask"] > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0),
         remove_badges(r["image"], r["part_mask"]), viz.overlay(r["image"], r["mask"])] for r in raws]
fig = viz.image_grid(rows, col_titles=["image", "badges (PartMask)", "badges only", "badges removed", "full mask"],
                     titles=[[label_names(r["label"])] for r in raws], size=1.9)
fig.savefig(L.out / "partial_coverage.png")
display(fig)
print(f"badge pixels are {part_share:.1%} of all object pixels in the training split (Eq. 6)")

# %% [markdown]
# The class is written in a few dozen pixels; the rest of the object, the part a segmentation must
# recover, looks the same for every class. A CNN trained on image labels takes the shortcut: its class
# activation map (notebook 01) lights up the badge and misses most of the body. AffinityNet (02)
# propagates the confident parts along learned pixel affinities; EDAM (03) makes the classifier attend
# to whole objects.
#
# ### 6.3 (b) Co-occurrence: boats on water, trains on rails

# %%
BOAT, TRAIN, WATER, RAILS = 1, 2, 1, 2
CONTEXT_RGB = {WATER: (0, 110, 255), RAILS: (150, 0, 255)}              # water blue, rails violet
groups = {"boat on water": HAS_CLASS[:, BOAT] & HAS_CTX[:, WATER], "water, no boat": ~HAS_CLASS[:, BOAT] & HAS_CTX[:, WATER],
          "train on rails": HAS_CLASS[:, TRAIN] & HAS_CTX[:, RAILS], "rails, no train": ~HAS_CLASS[:, TRAIN] & HAS_CTX[:, RAILS]}
cols, titles = [[], []], [[], []]
for g, m in groups.items():
    idx = L.rng.choice(np.flatnonzero(m), size=min(2, m.sum()), replace=False) if m.any() else []
    for row in range(2):
        r = train.get_raw(int(idx[row])) if row < len(idx) else None
        cols[row] += [r["image"], viz.region_overlay(viz.overlay(r["image"], r["mask"]), r["context_mask"], CONTEXT_RGB)] if r else [None, None]
        titles[row] += [f"{g}\n{label_names(r['label'])}" if r else f"{g}\n(none)", "mask + context"]
fig = viz.image_grid(cols, titles=titles, size=1.7)
fig.savefig(L.out / "co_occurrence.png")
display(fig)
rows = []
for k, (name, c) in toyscenes.CONTEXTS.items():
    precision = (HAS_CLASS[:, c] & HAS_CTX[:, k]).sum() / max(HAS_CTX[:, k].sum(), 1)    # images with water that have a boat
    rows.append(f"| {NAMES[c]} / {name} | {co[name][0]:.3f} | {co[name][1]:.3f} | {precision:.3f} | {co[name][0]:.3f} |")
display(Markdown("| class / context | P(context \\| class) | P(context \\| no class) | rule 'context ⇒ class': "
                 "precision | recall |\n|---|---:|---:|---:|---:|\n" + "\n".join(rows)))

# %% [markdown]
# "Water ⇒ boat" is a good rule for the *image label*, and a classifier trained on image labels has no
# reason not to use it. Its CAM for "boat" then spreads onto the water. EPS (05) counters this with a
# saliency map that says water is background, and measures the leak with its confusion ratio. Water
# also appears without boats, which is what lets a careful method tell them apart.
#
# ### 6.4 (c) Clutter: why GrabCut from boxes errs
#
# **Distractors** are bodies without a badge (background in the truth; outlined in white below),
# **camouflaged** bodies are coloured like the background beneath them, **non-convex** bodies leave a lot
# of background in their box. GrabCut (Rother et al., 2004; `wsss_core.boxes.grabcut_box`, the one
# notebook 04 uses) fits colour models inside and outside a box and cuts along colour edges. It runs
# on the first `N_GRABCUT` objects, scored inside each box.

# %%
gc_rows = []
for i in range(N_RENDER):
    r = train.get_raw(i) if len(gc_rows) < N_GRABCUT else None
    for k, o in enumerate(scene_objects[i], start=1):
        if r is None or len(gc_rows) >= N_GRABCUT:
            break
        pred, _ = boxes.grabcut_box(r["image"], r["boxes"][k - 1])
        x1, y1, x2, y2 = r["boxes"][k - 1].astype(int)
        in_box = np.full(r["mask"].shape, 255, np.uint8)                 # this object inside its box; 255 elsewhere
        in_box[y1:y2, x1:x2] = np.where(r["instance_mask"][y1:y2, x1:x2] == 255, 255, r["instance_mask"][y1:y2, x1:x2] == k)
        scored, gt = in_box != 255, in_box == 1
        gc_rows.append(dict(index=i, k=k, camo=o["camouflaged"], nonconvex=o["nonconvex"], pred=pred, in_box=in_box,
                            iou=(pred & gt).sum() / max(((pred | gt) & scored).sum(), 1), fill=gt.sum() / max(scored.sum(), 1)))
GC = {key: np.array([g[key] for g in gc_rows]) for key in ("camo", "nonconvex", "iou", "fill")}
gc_groups = {"convex": ~GC["camo"] & ~GC["nonconvex"], "non-convex": ~GC["camo"] & GC["nonconvex"], "camouflaged": GC["camo"]}
display(Markdown("| objects | n | object share of its box | GrabCut IoU in the box |\n|---|---:|---:|---:|\n" + "\n".join(
    f"| {g} | {m.sum()} | {GC['fill'][m].mean():.3f} | {GC['iou'][m].mean():.3f} |" for g, m in gc_groups.items() if m.any())))
show_rows = [j for m, n in ((gc_groups["camouflaged"], 2), (gc_groups["non-convex"], 2), (gc_groups["convex"], 1))
             for j in np.flatnonzero(m)[np.argsort(GC["iou"][m])][:n]]      # the worst of each kind
rows, titles = [], []
for j in show_rows:
    g = gc_rows[j]
    r, c = train.get_raw(g["index"]), int(train.get_raw(g["index"])["box_labels"][g["k"] - 1])
    rows.append([viz.outline(r["image"], distractor_masks[g["index"]]), viz.overlay(r["image"], r["mask"]),
                 viz.overlay(r["image"], np.where(g["pred"], c, 0)), viz.error_map(r["image"], g["pred"], g["in_box"])])
    titles.append([f"{'camouflaged' if g['camo'] else 'non-convex' if g['nonconvex'] else 'convex'} {NAMES[c]}",
                   "full mask", f"GrabCut: IoU {g['iou']:.2f}", "red over, blue under"])
if rows:
    fig = viz.image_grid(rows, titles=titles, size=1.9)
    for row, j in enumerate(show_rows):
        k, r = gc_rows[j]["k"], train.get_raw(gc_rows[j]["index"])
        viz.draw_boxes(fig.axes[row * 4 + 2], r["boxes"][k - 1:k], r["box_labels"][k - 1:k], NAMES, linewidth=1.0)
    fig.savefig(L.out / "clutter_grabcut.png")
    display(fig)

# %% [markdown]
# Each row is the *worst* GrabCut result of its kind. GrabCut does well on convex bodies that stand out,
# worse on non-convex ones, and fails on camouflaged ones: it swallows the background in the box (red)
# or keeps a fragment (blue). A filled box is wrong on all the background a box holds (1 − the object
# share in the table). Box2Seg (04) weights each pixel's loss by a learned attention map instead.
#
# ### 6.5 (d) Saliency quality

# %%
fig = Figure(figsize=(9.5, 2.6), layout="constrained")
ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.3, 1])
for name, st in sal_stats.items():
    ax1.plot(np.arange(256) / 255, st.f_curve(), label=f"{name} (max F {st.value['max_f']:.3f})")
ax1.set(xlabel="threshold τ", ylabel="F (β² = 0.3)", title="F-measure of S ≥ τ, training split (Eq. 4)")
ax1.legend(fontsize=7)
ax1.grid(alpha=0.3)
viz.bar_table({name: st.value["mae"] for name, st in sal_stats.items()}, ax=ax2, title="MAE (Eq. 3), lower is better")
display(fig)
missed = OBJ["sal"] < 0.3
fired = [float(train.get_raw(i)["saliency"][m].mean()) > 0.3 for i, m in enumerate(distractor_masks) if m.any()]
print(f"the stand-in misses {missed.mean():.1%} of the objects (configured sal_p_miss = {cfg.sal_p_miss}) and fires on "
      f"{np.mean(fired):.1%} of the distractors (sal_p_distractor = {cfg.sal_p_distractor}; first {N_RENDER} scenes)")

# %% [markdown]
# The stand-in plays a *pretrained* salient-object detector (EPS used PFAN, EDAM PoolNet): good on the
# whole, with a blurred boundary, a few objects missed and some distractors marked. OpenCV's
# unsupervised saliency beats the centre prior but is far below the stand-in: it responds mostly to the
# badges (measured in the study notebook), so it cannot repair partial coverage.
#
# ### 6.6 Explore the data
#
# Browse the training images layer by layer (live in Jupyter; an executed copy shows the defaults).

# %%
LAYERS = ["mask", "parts", "context", "saliency (stand-in)", "saliency (OpenCV)", "boxes", "distractors"]


def render(index, layer, alpha):
    r = train.get_raw(index)
    img = r["image"]
    right = {"mask": lambda: viz.overlay(img, r["mask"], alpha), "parts": lambda: viz.overlay(img, r["part_mask"], alpha),
             "context": lambda: viz.region_overlay(img, r["context_mask"], CONTEXT_RGB, alpha),
             "saliency (stand-in)": lambda: viz.heatmap(img, r["saliency"], alpha),
             "saliency (OpenCV)": lambda: viz.heatmap(img, read_gray_png(train.root / "SaliencyUnsupervised" / f"{r['id']}.png"), alpha),
             "distractors": lambda: viz.outline(img, distractor_masks[index]) if index < N_RENDER else img}.get(layer, lambda: img)()
    fig = viz.image_grid([[img, right]], titles=[[f"{r['id']}: {label_names(r['label'])}", layer]], size=3.0)
    if layer == "boxes":
        viz.draw_boxes(fig.axes[1], r["boxes"], r["box_labels"], NAMES)
    if layer == "distractors" and index >= N_RENDER:
        fig.axes[1].set_title(f"distractors: located in the first {N_RENDER} scenes only", fontsize=8)
    return fig


widgets.explore(render, index=(0, len(train) - 1, 1, int(SHOW[0])), layer=LAYERS, alpha=(0.0, 1.0, 0.05, 0.55));

# %% [markdown]
# ## 7 Measure it
#
# The numbers of this notebook, with where each comes from, written to
# `OUT_DIR/00_weak_supervision/metrics.json` (the regression baseline reads these keys).

# %%
sal_d, sal_u = sal_stats["stand-in detector"].value, sal_stats["OpenCV (unsupervised)"].value
measured = {
    "n_train": (len(train), "train split"), "n_val": (len(val), "val split"), "num_classes": (C, "class_names.txt"),
    "objects_per_image": (objects_per_image, "XML objects, train (§5)"), "part_share_of_foreground": (part_share, "Eq. 6, train (§5)"),
    "p_water_given_boat": (co["water"][0], "Eq. 5, train (§4)"), "p_water_given_no_boat": (co["water"][1], "Eq. 5, train (§4)"),
    "p_rails_given_train": (co["rails"][0], "Eq. 5, train (§4)"), "p_rails_given_no_train": (co["rails"][1], "Eq. 5, train (§4)"),
    "camouflaged_share": (man["stats"]["camouflaged_share"], "toyscenes.json, train + val"),
    "saliency_mae": (sal_d["mae"], "stand-in, Eq. 3, train (§5)"), "saliency_max_f": (sal_d["max_f"], "stand-in, Eq. 4, train (§5)"),
    "saliency_unsupervised_mae": (sal_u["mae"], "OpenCV, Eq. 3, train (§5)"),
    "saliency_unsupervised_max_f": (sal_u["max_f"], "OpenCV, Eq. 4, train (§5)"),
    "generation_images_per_second": (generation_images_per_second, f"render_scene ×{N_RENDER}, one core (§5)"),
}
metrics = {k: v for k, (v, _) in measured.items()}
display(Markdown("| key | value | from |\n|---|---:|---|\n" + "\n".join(
    f"| `{k}` | {v:.4g} | {src} |" if isinstance(v, float) else f"| `{k}` | {v} | {src} |" for k, (v, src) in measured.items())))

# %% [markdown]
# ## 8 What goes wrong
#
# A weak signal that is *wrong* is worse than one that is silent. The saliency stand-in's two failure
# modes on training images: an object it misses, and a distractor it marks as salient (error map of
# $S \ge 0.5$: **red** = salient background, **blue** = object not salient).

# %%
cases = []
if missed.any():
    cases.append((f"missed {NAMES[int(OBJ['cls'][missed][0])]}", int(OBJ["index"][missed][0])))
fired_idx = [i for i, m in enumerate(distractor_masks) if m.sum() > 50 and float(train.get_raw(i)["saliency"][m].mean()) > 0.5]
if fired_idx:
    cases.append(("salient distractor", fired_idx[0]))
rows, titles = [], []
for what, i in cases:
    r = train.get_raw(i)
    rows.append([viz.outline(r["image"], distractor_masks[i]) if i < N_RENDER else r["image"], viz.overlay(r["image"], r["mask"]),
                 r["saliency"], viz.error_map(r["image"], r["saliency"] >= 0.5, r["mask"])])
    titles.append([f"{what} (labels: {label_names(r['label'])})", "full mask", "stand-in saliency", "error (red FP, blue FN)"])
if rows:
    fig = viz.image_grid(rows, titles=titles, size=2.1)
    fig.savefig(L.out / "what_goes_wrong.png")
    display(fig)
else:
    print("no saliency failure among these images (try a larger profile)")

# %% [markdown]
# **EPS** (05) trains its class maps to reproduce the saliency map: a missed object teaches that its
# pixels are background; a salient distractor pushes a class map onto a badge-less body. **EDAM** (03)
# turns pixels of (nearly) zero saliency into background, erasing a missed object from its pseudo-label.
#
# ## 9 Exercises
#
# Three functions (7 points) and a written answer (2 points). The lesson uses your answer, or the
# library's result if yours is missing or wrong.
#
# ### Exercise 1 · image labels from a mask, Eq. 1 (2 points)
#
# Write `image_label_from_mask(mask, num_classes)`: `mask` `(H, W)` uint8 (0 background, 1..C classes,
# 255 ignore) → `(num_classes,)` float32 multi-hot, entry `c - 1` set when class `c` occurs. Do not use
# the data set's own reader (it is unavailable while graded).

# %% nbgrader={"grade": false, "grade_id": "image_label_from_mask_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def image_label_from_mask(mask, num_classes):
    "(H, W) int mask (0 bg, 1..C classes, 255 ignore) → (num_classes,) float32 multi-hot."
    ### BEGIN SOLUTION
    mask = np.asarray(mask)
    label = np.zeros(num_classes, np.float32)
    for c in range(1, num_classes + 1):
        label[c - 1] = float((mask == c).any())
    return label
    ### END SOLUTION


# %%
r = train.get_raw(int(SHOW[0]))
label_1 = grading.attempt(image_label_from_mask, lambda m, n: train._label_from_mask(m), r["mask"], C)
print(f"{r['id']}: {label_names(label_1)} (the XML says {label_names(r['label'])})")

# %% nbgrader={"grade": true, "grade_id": "image_label_from_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with grading.tests("image_label_from_mask"):
    m = np.array([[0, 2, 255], [2, 0, 4]], np.uint8)                  # classes 2 and 4 of C = 5 occur
    out = image_label_from_mask(m, 5)
    assert np.shape(out) == (5,), f"shape {np.shape(out)}, expected (num_classes,) = (5,)"
    assert np.asarray(out).dtype == np.float32, f"dtype {np.asarray(out).dtype}, expected float32"
    assert np.array_equal(out, [0, 1, 0, 1, 0]), f"{out} ≠ [0, 1, 0, 1, 0] (entries 2 − 1 and 4 − 1)"
    assert not np.asarray(image_label_from_mask(np.full((3, 3), 255, np.uint8), 5)).any(), "255 is not a class"
    ### BEGIN HIDDEN TESTS
    def _ref_label(mask, num_classes):
        v = np.unique(mask)
        lab = np.zeros(num_classes, np.float32)
        lab[v[(v >= 1) & (v <= num_classes)].astype(int) - 1] = 1
        return lab
    rng = grading.fresh_rng()
    cases = []
    for _ in range(6):
        n = int(rng.integers(2, 21))
        m = rng.choice(rng.integers(0, n + 1, size=int(rng.integers(1, 4))), size=(int(rng.integers(1, 30)), 17)).astype(np.uint8)
        m[rng.random(m.shape) < 0.2] = 255
        cases.append((m, n))
    grading.check_against(image_label_from_mask, _ref_label, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.data.voc.VOCLayoutDataset._label_from_mask"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2 · the tight box of an object, Eq. 2 (2 points)
#
# Write `tight_box(mask)`: `mask` `(H, W)` bool with at least one True pixel → `(x1, y1, x2, y2)` Python
# ints, 0-based, `x2`, `y2` *exclusive*. The lesson compares the box of each object's visible pixels with
# the XML box, written before occlusion and the void outline.

# %% nbgrader={"grade": false, "grade_id": "tight_box_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def tight_box(mask):
    "(H, W) bool mask → (x1, y1, x2, y2) ints, 0-based, x2 / y2 exclusive."
    ### BEGIN SOLUTION
    rows, cols = np.asarray(mask).any(axis=1), np.asarray(mask).any(axis=0)
    y = np.flatnonzero(rows)
    x = np.flatnonzero(cols)
    return int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1
    ### END SOLUTION


# %%
from wsss_core.data.voc import _boxes_from_instances


def library_box(mask):
    "The reader's tight box of one mask (its helper for instance masks)."
    return tuple(int(v) for v in _boxes_from_instances(mask.astype(np.uint8), mask.astype(np.uint8))[0][0])


for k, xml_box in enumerate(r["boxes"], start=1):
    box = grading.attempt(tight_box, library_box, r["instance_mask"] == k, compare=lambda a, b: tuple(int(v) for v in a) == b)
    print(f"{r['id']} object {k}: tight box of its visible pixels {tuple(box)}, XML box {tuple(int(v) for v in xml_box)}")

# %% nbgrader={"grade": true, "grade_id": "tight_box", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with grading.tests("tight_box"):
    m = np.zeros((6, 8), bool)
    m[2, 3] = m[4, 5] = True                                          # pixels (x=3, y=2) and (x=5, y=4)
    out = tight_box(m)
    assert len(out) == 4 and all(isinstance(v, (int, np.integer)) for v in out), f"4 ints, not {out!r}"
    assert tuple(out) == (3, 2, 6, 5), f"{tuple(out)} ≠ (3, 2, 5 + 1, 4 + 1)"
    ### BEGIN HIDDEN TESTS
    def _ref_box(mask):
        ys, xs = np.nonzero(mask)
        return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    rng = grading.fresh_rng()
    cases = []
    for _ in range(6):
        m = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.uniform(0.01, 0.2)
        m[int(rng.integers(0, m.shape[0])), int(rng.integers(0, m.shape[1]))] = True
        cases.append((m,))
    grading.check_against(tight_box, _ref_box, cases, seed=grading.seed_of(rng),
                          compare=lambda a, b: tuple(int(v) for v in a) == tuple(b),
                          forbid=["wsss_core.data.voc._boxes_from_instances"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 3 · recall inside a region (3 points)
#
# Does OpenCV's saliency (§6.5) see badges or bodies? Write `region_recall(pred, gt, region)`: `pred`,
# `gt` `(H, W)` int label maps (`gt` 255 = ignore), `region` `(H, W)` bool → the share of `gt`'s
# foreground pixels ($1 \le$ `gt` $\le C$) in `region` where `pred == gt`, a Python float; NaN if none.
# Do not call `wsss_core.metrics.region_recall`.

# %% nbgrader={"grade": false, "grade_id": "region_recall_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def region_recall(pred, gt, region):
    "pred, gt (H, W) int, region (H, W) bool → recall of gt's foreground pixels inside region (NaN if none)."
    ### BEGIN SOLUTION
    pred, gt, region = np.asarray(pred), np.asarray(gt), np.asarray(region, bool)
    fg = region & (gt >= 1) & (gt != 255)
    return float((pred[fg] == gt[fg]).sum() / fg.sum()) if fg.any() else float("nan")
    ### END SOLUTION


# %%
from wsss_core.metrics import region_recall as lib_region_recall

pred, gt, badge, body = [], [], [], []
for i in range(min(len(train), 64)):
    ri = train.get_raw(i)
    unsup = read_gray_png(train.root / "SaliencyUnsupervised" / f"{ri['id']}.png")
    pred.append(np.where(unsup >= 0.5, ri["mask"], 0))
    gt.append(ri["mask"])
    badge.append(ri["part_mask"] > 0)
    body.append(ri["part_mask"] == 0)
pred, gt, badge, body = (np.concatenate(a) for a in (pred, gt, badge, body))   # 64 images stacked: pixels pooled
recall_badge = grading.attempt(region_recall, lib_region_recall, pred, gt, badge)
recall_body = grading.attempt(region_recall, lib_region_recall, pred, gt, body)
print(f"OpenCV saliency ≥ 0.5 recalls {recall_badge:.1%} of the badge pixels and {recall_body:.1%} of the body pixels")

# %% nbgrader={"grade": true, "grade_id": "region_recall", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
with grading.tests("region_recall"):
    p = np.array([[1, 0, 2], [1, 1, 0]])
    g = np.array([[1, 1, 2], [0, 255, 3]])
    reg = np.array([[True, True, False], [True, True, True]])
    out = region_recall(p, g, reg)                 # foreground in region: (0,0)=1 ✓, (0,1)=1 ✗, (1,2)=3 ✗ → 1/3
    assert isinstance(out, float), f"a Python float, not {type(out).__name__}"
    assert abs(out - 1 / 3) < 1e-9, f"{out} ≠ 1/3 (0 and 255 in gt are not counted)"
    assert np.isnan(region_recall(p, g, np.zeros_like(reg))), "an empty region gives NaN"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = []
    for _ in range(6):
        shape = (int(rng.integers(2, 30)), int(rng.integers(2, 30)))
        g = rng.integers(0, 5, size=shape)
        g[rng.random(shape) < 0.15] = 255
        p = np.where(rng.random(shape) < 0.6, g, rng.integers(0, 5, size=shape)) % 255
        cases.append((p, g, rng.random(shape) < rng.uniform(0.2, 0.9)))
    grading.check_against(region_recall, lib_region_recall, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.metrics.region_recall", "wsss_core.metrics._region_counts",
                                  "wsss_core.metrics.RegionStats.update"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4 · written: co-occurrence that the data never breaks (2 points)
#
# Water comes with a boat with probability `p_context_with_class` (0.95), without one with
# `p_context_without_class` (0.05). The cell below sets the second to 0 and recomputes Eq. 5. What would
# a classifier trained on such image labels learn about water, what would its boat CAM do, and why does
# the generator keep `p_context_without_class` above zero?

# %%
never_alone = dataclasses.replace(cfg, p_context_without_class=0.0)
has_boat, has_water = [], []
for i in range(min(N_RENDER, 200)):
    sc = toyscenes.render_scene(never_alone, i)
    has_boat.append(any(o["cls"] == BOAT for o in sc.objects))
    has_water.append(bool((sc.context == WATER).any()))
has_boat, has_water = np.array(has_boat), np.array(has_water)
print(f"p_context_without_class = 0, {len(has_boat)} scenes: P(water | boat) {has_water[has_boat].mean():.3f}, "
      f"P(water | no boat) {has_water[~has_boat].mean():.3f}, P(boat | water) {has_boat[has_water].mean():.3f}")

# %% [markdown] nbgrader={"grade": true, "grade_id": "cooccurrence_written", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# Water now appears only with boats (P(boat | water) = 1): for the image label it is as good evidence
# of "boat" as the badge, so the boat CAM would cover the water. Water without boats is the only
# signal that water alone is not a boat; a careful method (EPS, 05) needs it.

# %% [markdown]
# ## 10 Summary and pointers
#
# A weak signal is a function of the full mask that throws most of it away; every WSSS method is a
# pseudo-label maker that guesses the rest. The toy scenes make the guessing hard in the four ways the
# papers describe, each measured in §7.
#
# | problem (§) | what it does to pseudo-labels | notebook | method (paper) |
# |---|---|---|---|
# | (a) partial coverage (6.2) | CAMs cover the badge, miss the body | 01, 02, 03 | CAM (Zhou et al., CVPR 2016); AffinityNet (Ahn & Kwak, CVPR 2018); EDAM (Wu et al., CVPR 2021) |
# | (c) clutter (6.4) | GrabCut from boxes over- and under-estimates | 04 | GrabCut (Rother et al., 2004) + Box2Seg (Kulharia et al., ECCV 2020) |
# | (b) co-occurrence (6.3), (d) saliency (6.5) | CAMs leak onto water / rails | 05 | EPS (Lee et al., CVPR 2021) |
# | all | pseudo-label errors become network errors | 06 | one segmenter per pseudo-label set |
#
# Next to PASCAL VOC 2012, the data of the papers' numbers: 20 classes + background vs 6; 1,464 training
# images (10,582 with SBD) vs `n_train`; about 500 × 375 px vs 96 × 96. The toy scenes are a teaching
# instrument, not a benchmark: the *order* of the methods carries over, not the mIoU. Real photos (the GrabCut benchmark, Weizmann horses) read by the same reader, the
# data checks and the badge analysis are in `study/00_weak_supervision_study`.
#
# Next: **01 · class activation maps**.

# %%
print(f"written: {L.rel(lesson.finish(L, metrics))}")
