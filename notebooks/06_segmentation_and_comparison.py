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
# # 06 · The segmentation network, and every method side by side
#
# ## 1 Objective
#
# Notebooks 01–05 each end with **pseudo-labels**: a mask for every training image, made from image
# labels (CAM, AffinityNet + random walk, EDAM, EPS) or from boxes (GrabCut, Box2Seg). None of the papers
# stops there: their last step is to train an ordinary **fully supervised segmentation network**
# (DeepLab) on the pseudo-labels as if they were true masks, and to report its mIoU on *validation*
# images, whose pseudo-labels were never made. This notebook does that with **one network, one schedule
# and one seed for every method**, plus the same network trained on the *true* masks, the upper bound.
# The table of §7 is the page to read first:
#
# * *pseudo-label mIoU (train)*: how good the labels are (the papers' "train" column);
# * *segmentation mIoU (val)*: how good a network trained on them is (the papers' headline figure);
# * *weak / full*: the second over the same network's figure with true masks.
#
# *How to use it:* run it after notebooks 01–05 with the same `PROFILE`, `OUT_DIR` and `SEED`: each
# method's stage then finds its notebook's labels in `OUT_DIR`, and only the segmenters are trained here
# (eight short trainings at `"tutorial"`). Run on its own, it first runs every method's stage (much
# longer). Graded exercises are in §9.

# %% [markdown]
# ## 2 Parameters

# %% tags=["parameters"]
PROFILE = "tutorial"        # "smoke" (CI, seconds) | "tutorial" (2 CPU cores: ≈ 6 min after 01-05) | "study" | "paper"
DATA_ROOT = None            # None: the profile's default data folder
DEVICE = "auto"             # "auto" | "cpu" | "cuda" | "mps"
SEED = 0                    # the same seed as notebooks 01-05, so that their outputs are reused
OUT_DIR = "../runs/tutorial"
METHODS = None              # None: all; or a list of keys, e.g. ["cam", "eps", "full"]
EPOCHS = None               # None: the profile's segmenter epochs
CRF = False                 # dense CRF after multi-scale + flip inference (needs pydensecrf2)
N_SHOW = 6                  # validation images in the figures

# %%
import numpy as np
import torch
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from wsss_core import comparison, grading, lesson, viz, widgets
from wsss_core.data.palette import read_label_png
from wsss_core.stages import segmentation as seg

L = lesson.setup(comparison.NOTEBOOK, PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
KEYS = comparison.method_keys(METHODS)      # every method, and "full" (the true masks) last
seg_cfg = seg.config_for_profile(PROFILE)
seg_cfg = seg_cfg.replace(crf=bool(CRF), train=L.train(seg_cfg.train, EPOCHS))
val_ds = seg.label_dataset(L.data.root, L.data.val_split, seg_cfg, None, train=False)   # true masks
NAMES, C = val_ds.class_names, val_ds.num_classes
print(f"methods {KEYS}; DeepLab-{seg_cfg.head}, {seg_cfg.channels} channels, {seg_cfg.train.epochs} epochs; {len(val_ds)} val images")

# %% [markdown]
# ### Every method's pseudo-labels
#
# Each method's stage is called with the profile's preset and this run's seed. When its notebook ran
# before into the same `OUT_DIR`, the stage finds its outputs there and returns in seconds; otherwise it
# trains now (the progress bars say so).

# %%
LABEL_DIRS, SKIPPED, STAGE_SECONDS = comparison.pseudo_label_dirs(KEYS, PROFILE, L.data, OUT_DIR, seed=SEED, device=DEVICE)
for k in KEYS:
    where = SKIPPED.get(k) or (L.rel(LABEL_DIRS[k]) if LABEL_DIRS[k] is not None else "(the true masks)")
    print(f"{k:12s} {STAGE_SECONDS[k]:6.1f} s  {where}")
KEYS = [k for k in KEYS if k in LABEL_DIRS]

train_true = seg.label_dataset(L.data.root, L.data.train_split, seg_cfg, None, train=False)
raws_t = [train_true.get_raw(i) for i in sorted(L.rng.choice(len(train_true), size=min(N_SHOW, len(train_true)), replace=False))]
grid = [[r["image"] for r in raws_t], [viz.overlay(r["image"], r["mask"]) for r in raws_t]]
grid += [[viz.overlay(r["image"], read_label_png(LABEL_DIRS[k] / f"{r['id']}.png")) for r in raws_t]
         for k in KEYS if LABEL_DIRS[k] is not None]
fig = viz.image_grid(grid, row_titles=["image", "true mask"] + [comparison.METHODS[k].short for k in KEYS
                                                                if LABEL_DIRS[k] is not None], size=1.5)
viz.class_legend(fig, NAMES, ignore=True)
display(fig)

# %% [markdown]
# The same training images under every method's pseudo-labels (white = 255, "don't know", ignored by the
# loss). The segmenter of each row is trained on *these* masks: their mistakes are what it learns from.
#
# ## 3 Theory
#
# **The network** (`wsss_core.models.deeplab.DeepLab`). A backbone (ResNet-101 at output stride 8 in
# the papers; `CompactCNN` here) gives features $f$; DeepLab-v2's ASPP head sums classifiers applied with
# several dilation rates $r$, the same pixel seen with several fields of view (Chen et al., TPAMI 2018):
#
# $$z(x) = \sum_{r \in R} W_r \ast_r f\,(x), \qquad p_k(x) = \operatorname{softmax}_k\, z(x). \tag{1}$$
#
# We use the v3+ variant (parallel dilated branches concatenated, and a decoder that mixes in stride-4
# features; Chen et al., ECCV 2018), because a 96-px scene is only 12 × 12 at stride 8.
#
# **The loss** (`wsss_core.stages.segmentation.segmentation_step`): per-pixel cross-entropy against the
# pseudo-label $\hat y$, averaged over the pixels that are not "ignore" (255), the set $\Omega$:
#
# $$\mathcal{L} = -\frac{1}{|\Omega|} \sum_{x \in \Omega} \log p_{\hat y(x)}(x). \tag{2}$$
#
# Ignore pixels cost nothing; wrong pixels pull the network the wrong way.
#
# **Inference** (`wsss_core.models.deeplab.multiscale_predict`): probabilities averaged over scales $S$
# and horizontal flips, resized back to the image (then optionally a dense CRF):
#
# $$\bar p(x) = \frac{1}{2|S|} \sum_{s \in S} \sum_{\phi \in \{\mathrm{id}, \mathrm{flip}\}}
# \phi^{-1}\Big(\mathrm{up}\big(p(\phi(\mathrm{down}_s I))\big)\Big)(x), \qquad y(x) = \arg\max_k \bar p_k(x). \tag{3}$$
#
# **Measures** (`wsss_core.evaluation.LabelMapEvaluator`): the mean over the $K{+}1$ classes of
# $\mathrm{IoU}_k = \frac{TP_k}{TP_k + FP_k + FN_k}$, accumulated over *all* pixels of a split, and
# weak/full = mIoU(network on pseudo-labels) / mIoU(the same network on true masks). (4)
#
# **Why a network can beat its labels.** Pseudo-label errors are *per image*, while the network's weights
# are shared across all images: what it can fit consistently is appearance → class, and errors that
# disagree with appearance average out. Errors that are *consistent* with appearance (water labelled
# "boat" in every boat image) are learned as faithfully as the truth (§8).

# %% [markdown]
# ## 4 From scratch, then the library
#
# ### 4.1 The loss with an ignore label (Eq. 2)

# %%
import torch.nn.functional as F

g = torch.Generator().manual_seed(SEED)
logits = 2 * torch.randn(2, C + 1, 8, 8, generator=g)
target = torch.randint(0, C + 1, (2, 8, 8), generator=g)
target[torch.rand(2, 8, 8, generator=g) < 0.3] = 255                       # 30 % "don't know"

logp = F.log_softmax(logits, dim=1)
valid = target != 255
loss_scratch = -logp.gather(1, target.clamp(max=C)[:, None]).squeeze(1)[valid].mean()
loss_lib = seg.segmentation_step(torch.nn.Identity(), {"image": logits, "mask": target}, "cpu")["loss"]
print(f"from scratch {loss_scratch:.6f}   library {loss_lib:.6f}   ({valid.float().mean():.0%} of the pixels count)")
assert torch.allclose(loss_scratch, loss_lib, atol=1e-6)

# %% [markdown]
# ### 4.2 Multi-scale + flip inference (Eq. 3), on an untrained segmenter

# %%
from wsss_core.models.deeplab import multiscale_predict

net = seg.build_model(seg_cfg, C).eval()
batch = torch.stack([val_ds[i]["image"] for i in range(2)]) if L.toy else val_ds[0]["image"][None]
H, W = batch.shape[-2:]
scales, maps = (1.0, 0.75, 1.25), []
with torch.no_grad():
    for s in scales:
        x = F.interpolate(batch, scale_factor=s, mode="bilinear", align_corners=False) if s != 1.0 else batch
        for flip in (False, True):
            p = F.interpolate(net(x.flip(-1) if flip else x), size=(H, W), mode="bilinear", align_corners=False).softmax(1)
            maps.append(p.flip(-1) if flip else p)
    p_scratch = torch.stack(maps).mean(0)
    p_lib = multiscale_predict(net, batch, scales, flip=True)
print(f"max |difference| {float((p_scratch - p_lib).abs().max()):.2e}")
assert torch.allclose(p_scratch, p_lib, atol=1e-5)

# %% [markdown]
# ## 5 Run it
#
# One segmenter per method, the same config and seed each time (`wsss_core.comparison.compare` →
# `wsss_core.stages.segmentation.run`, the shared training engine). On a CPU the `tutorial` preset trains
# two of them side by side, one thread each (`train_workers`, `torch_threads`): on two cores that beats
# one network on two threads. Each is stored in a folder whose name fingerprints the config *and* the
# label folder, so a re-run reloads it. Each is scored on the validation images (the headline) and on
# the training images (to compare with its own labels, §7.2).

# %%
rows = comparison.compare(KEYS, PROFILE, L.data, OUT_DIR, seg_cfg=seg_cfg, seed=SEED, device=DEVICE)
ROWS = {r["method"]: r for r in rows if r["status"] == "ok"}
print(f"training, where it happened now: {sum(r['train_seconds'] for r in ROWS.values()):.0f} s in total")
fig = Figure(figsize=(7, 3), layout="constrained")
ax = fig.subplots()
for k, r in ROWS.items():
    if r["history"] is not None and r["history"].epochs:
        ax.plot([e["epoch"] + 1 for e in r["history"].epochs], [e["loss"] for e in r["history"].epochs], marker="o", ms=3,
                label=f"{comparison.METHODS[k].short} ({r['history'].epochs[-1]['loss']:.3f})")
ax.set(xlabel="epoch", ylabel="training loss (Eq. 2)", yscale="log", title="the same network on each method's labels")
ax.legend(fontsize=7, ncol=2, title="final loss", title_fontsize=7)
display(fig)

# %% [markdown]
# A low final loss says that the labels are *easy to fit*, not that they are right: smooth, blob-shaped
# labels (CAM's) are easier to fit than true masks with thin parts and exact edges. §7 shows what each
# loss turned into.
#
# ## 6 Look at it
#
# Validation images (never pseudo-labelled by anyone), their true masks and every segmenter's
# prediction ("→ EPS": the network trained on EPS's pseudo-labels); then an explorer over all validation
# images (a static figure when run headless).

# %%
@torch.no_grad()
def predict_one(k: str, i: int) -> np.ndarray:
    "The segmenter of method k on validation image i → (H, W) labels."
    model = ROWS[k]["model"]
    x = val_ds[i]["image"][None].to(next(model.parameters()).device)
    return multiscale_predict(model, x, seg_cfg.eval_scales, seg_cfg.eval_flip)[0].argmax(0).cpu().numpy()


SHOW = sorted(L.rng.choice(len(val_ds), size=min(N_SHOW, len(val_ds)), replace=False).tolist())
raws = [val_ds.get_raw(i) for i in SHOW]
grid = [[r["image"] for r in raws], [viz.overlay(r["image"], r["mask"]) for r in raws]]
grid += [[viz.overlay(r["image"], predict_one(k, i)) for i, r in zip(SHOW, raws)] for k in ROWS]
fig = viz.image_grid(grid, row_titles=["image", "true mask"] + [f"→ {comparison.METHODS[k].short}" for k in ROWS], size=1.5)
viz.class_legend(fig, NAMES)
display(fig)


# %%
def render(index, method):
    raw = val_ds.get_raw(index)
    return viz.image_grid([[raw["image"], viz.overlay(raw["image"], raw["mask"]),
                            viz.overlay(raw["image"], predict_one(method, index))]],
                          titles=[[raw["id"], "true mask", f"→ {comparison.METHODS[method].title}"]], size=2.2)


widgets.explore(render, index=(0, len(val_ds) - 1, 1, int(SHOW[0])), method=list(ROWS));

# %% [markdown]
# ## 7 Measure it
#
# ### 7.1 The comparison table
#
# Our figures (toy scenes, a compact CNN, CPU) next to the papers' PASCAL VOC 2012 figures (ResNet-38/101,
# GPUs, ImageNet pre-training, often a dense CRF): compare the *pattern*, not the values. The papers'
# segmenters differ from one another; ours are identical, which is the point of this table.

# %%
display(Markdown(comparison.table_markdown(rows)))
full = ROWS["full"]["seg_miou"]
best_img, best_box = comparison.best_of(rows, ("image", "image+saliency")), comparison.best_of(rows, ("box",))
for what, b in (("image-label", best_img), ("box", best_box)):
    if b:
        print(f"best {what} method: {b['title']}, val mIoU {100 * b['seg_miou']:.1f}, weak/full {b['ratio']:.2f}")
keys = list(ROWS)
x = np.arange(len(keys))
fig = Figure(figsize=(8, 3.2), layout="constrained")
ax = fig.subplots()
ax.bar(x - 0.2, [100 * ROWS[k]["pseudo_miou"] for k in keys], 0.4, label="pseudo-labels (train)", color="#9ecae1")
ax.bar(x + 0.2, [100 * ROWS[k]["seg_miou"] for k in keys], 0.4, label="segmenter (val)", color="#3182bd")
for xi, k in zip(x, keys):
    ax.text(xi + 0.2, 100 * ROWS[k]["seg_miou"] + 1, f"{ROWS[k]['ratio']:.2f}", ha="center", fontsize=7)
ax.axhline(100 * full, color="k", lw=0.8, ls="--", label="true masks (val)")
ax.set_xticks(x, [comparison.METHODS[k].short for k in keys], fontsize=8)
ax.set(ylabel="mIoU (%)", ylim=(0, 125), yticks=range(0, 101, 20),
       title="one DeepLab, one schedule: labels → network (numbers on bars: weak/full)")
ax.legend(fontsize=7, loc="upper left", ncol=3)
fig.savefig(L.out / "comparison.png")
display(fig)

# %% [markdown]
# The lesson's schedule is short (8 epochs, 32 channels) so that eight trainings fit a lab session. The
# `study` profile trains the same network longer and wider (10 epochs, 64 channels; on the study presets'
# labels); its figures, read from `benchmarks/baselines/study.json`, say which rows the short schedule
# holds back:

# %%
cite = {k: lesson.study_figure(comparison.NOTEBOOK, "full_miou" if k == "full" else f"seg_{k}_miou") for k in ROWS}
made = next((c for c in cite.values() if c["value"] is not None), {"made_by": "not recorded yet", "made_on": None})
display(Markdown("| trained on | val mIoU, this run | val mIoU, study schedule |\n|---|---:|---:|\n" + "\n".join(
    f"| {ROWS[k]['title']} | {100 * ROWS[k]['seg_miou']:.1f} | "
    + ("–" if c["value"] is None else f"{100 * c['value']:.1f}") + " |" for k, c in cite.items())))
print(f"study schedule: profile study, made by `{made['made_by']}` ({made['made_on']})")

# %% [markdown]
# Labels that are hard to fit (GrabCut's: the highest final loss in §5) lose most to the short schedule.
# Image-label rows train on the method's pseudo-labels. *GrabCut* trains on GrabCut's labels from the
# boxes; *Box2Seg* on the **Box2Seg network's own predictions** for the training images, restricted to
# their boxes. This segmenter starts from a fresh backbone for every row, while notebook 04's networks
# start from notebook 01's classifier, and notebook 04 found that the initialisation decides whether
# Box2Seg beats GrabCut + CE.
#
# ### 7.2 Does the network correct its labels?
#
# The pseudo-label mIoU and the segmenter's mIoU on the *same training images*. A positive gain is the
# averaging argument of §3 at work. On the toy scenes the gains are small: most label errors here are
# *consistent* with appearance (a CAM blob is always a blob around the badge), the kind the network
# cannot average away (§8).

# %%
tab = ["| trained on | pseudo-labels (train) | segmenter (train) | gain | segmenter (val) | fg precision / recall (val) |",
       "|---|---:|---:|---:|---:|---|"]
for k, r in ROWS.items():
    gain = r.get("seg_train_miou", np.nan) - r["pseudo_miou"]
    tab.append(f"| {r['title']} | {100 * r['pseudo_miou']:.1f} | {100 * r.get('seg_train_miou', np.nan):.1f} | "
               f"{100 * gain:+.1f} | {100 * r['seg_miou']:.1f} | {r['seg_fg_precision']:.2f} / {r['seg_fg_recall']:.2f} |")
display(Markdown("\n".join(tab)))

# %% [markdown]
# ## 8 What goes wrong: the network inherits consistent mistakes
#
# CAMs label water as "boat" and rails as "train" in image after image (notebook 01). To the segmenter
# that is not noise but a rule consistent with appearance, and it learns it. The table gives the
# segmenters' **context leak** on validation images (the share of water / rails pixels predicted as boat
# / train), and the figure shows validation images with water or rails.

# %%
if L.toy:
    tab = ["| trained on | context leak (val) | per pair |", "|---|---:|---|"]
    for k, r in ROWS.items():
        per = r["seg_report"].get("context_leak_per_pair", {})
        tab.append(f"| {r['title']} | {r['seg_context_leak']:.3f} | " + ", ".join(f"{p} {v:.3f}" for p, v in per.items()) + " |")
    display(Markdown("\n".join(tab)))
    ctx = [i for i in range(len(val_ds)) if (val_ds.get_raw(i)["context_mask"] > 0).any()][:4]
    pick = [k for k in ("cam", "eps", "full") if k in ROWS] or list(ROWS)[:2]
    raws_c = [val_ds.get_raw(i) for i in ctx]
    grid = [[r["image"] for r in raws_c], [viz.overlay(r["image"], r["mask"]) for r in raws_c]]
    grid += [[viz.overlay(r["image"], predict_one(k, i)) for i, r in zip(ctx, raws_c)] for k in pick]
    fig = viz.image_grid(grid, row_titles=["image", "true mask"] + [f"→ {comparison.METHODS[k].short}" for k in pick], size=1.6)
    viz.class_legend(fig, NAMES)
    display(fig)
else:
    print("the context study needs the toy scenes' ContextMask/ (water, rails); skipped on", L.data.kind)

# %% [markdown]
# The leak of the labels survives training: a segmenter is only as unbiased as its labels' *systematic*
# errors. This is why EPS's saliency loss (notebook 05) is worth its extra input, and why box methods,
# whose labels never put a boat outside its box, do not have this failure; theirs is the opposite one,
# background *inside* the box (notebook 04).

# %% [markdown]
# ## 9 Exercises
#
# Two graded exercises (6 points) and a written question (2 points). A missing or wrong answer never
# stops the lesson: it goes on with the library's result. Do not call the function you re-implement.
#
# ### Exercise 1 · per-class IoU pooled over a split (Eq. 4) (3 points)
#
# Write `per_class_iou(preds, gts, num_classes)`: lists of `(H, W)` integer maps (truth 255 = ignore, not
# counted), `num_classes` = $K + 1$ with the background. Accumulate $TP_k$, $FP_k$, $FN_k$ over *all*
# images, then return the `(K + 1,)` float64 array of $\mathrm{IoU}_k$, NaN for a class in neither the truth
# nor the prediction.

# %% nbgrader={"grade": false, "grade_id": "per_class_iou_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def per_class_iou(preds, gts, num_classes):
    """Lists of (H, W) predictions and truths (255 = ignore) → (num_classes,) pooled IoU, NaN if absent."""
    ### BEGIN SOLUTION
    conf = np.zeros((num_classes, num_classes), np.int64)
    for p, t in zip(preds, gts):
        p, t = np.asarray(p).ravel(), np.asarray(t).ravel()
        keep = t != 255
        conf += np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    return np.divide(tp, union, out=np.full(num_classes, np.nan), where=union > 0)
    ### END SOLUTION


# %%
from wsss_core.metrics import ConfusionMatrix


def per_class_iou_lib(preds, gts, num_classes):
    "The library's pooled per-class IoU, for the comparison."
    cm = ConfusionMatrix(num_classes)
    for pred, truth in zip(preds, gts):
        cm.update(pred, truth)
    return cm.iou()


for k in [k for k in ("full", "cam") if k in ROWS]:
    iou = grading.attempt(per_class_iou, per_class_iou_lib, [predict_one(k, i) for i in SHOW], [r["mask"] for r in raws], C + 1)
    print(f"→ {comparison.METHODS[k].short:10s} on the {len(SHOW)} images of §6: " + ", ".join(
        f"{n} {v:.2f}" for n, v in zip(NAMES, iou) if np.isfinite(v)))

# %% nbgrader={"grade": true, "grade_id": "per_class_iou", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
with grading.tests("per_class_iou"):
    p1, t1 = np.array([[0, 1, 1]]), np.array([[0, 1, 255]])
    p2, t2 = np.array([[1, 0]]), np.array([[1, 1]])
    out = per_class_iou([p1, p2], [t1, t2], 3)
    assert isinstance(out, np.ndarray) and out.shape == (3,), f"a (3,) array, got {type(out).__name__} {np.shape(out)}"
    assert out.dtype == np.float64, f"dtype {out.dtype}, expected float64"
    # pooled, the ignored pixel left out: class 0: TP 1, FP 1 (image 2), FN 0 → 1/2; class 1: TP 2, FN 1 → 2/3;
    # class 2 in neither → NaN
    assert np.allclose(out[:2], [1 / 2, 2 / 3]) and np.isnan(out[2]), f"{out} ≠ [1/2, 2/3, nan]"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = []
    for _ in range(5):
        n, K1, H, W = int(rng.integers(1, 4)), int(rng.integers(2, 6)), int(rng.integers(2, 9)), int(rng.integers(2, 9))
        gts = [rng.integers(0, K1 - 1, size=(H, W)) for _ in range(n)]                  # the last class never true
        for t in gts:
            t[rng.random((H, W)) < 0.15] = 255
        cases.append(([rng.integers(0, K1 - 1, size=(H, W)) for _ in range(n)], gts, K1))
    grading.check_against(per_class_iou, per_class_iou_lib, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.metrics.ConfusionMatrix.update", "wsss_core.metrics.ConfusionMatrix.iou",
                                  "wsss_core.metrics.ConfusionMatrix.miou", "wsss_core.metrics.miou",
                                  "wsss_core.evaluation.LabelMapEvaluator.update", "wsss_core.cams.miou_from_confusion"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2 · the context leak of §8 (3 points)
#
# Write `context_leak(preds, gts, contexts, c, k)`: lists of `(H, W)` maps (prediction, truth with 255 =
# ignore, context ids), a class `c` and a context id `k`. Over the images whose truth contains `c`, pool the
# pixels of context `k` whose truth is neither `c` nor 255, and return (a Python float) the share of them
# predicted `c`; NaN if there are none.

# %% nbgrader={"grade": false, "grade_id": "context_leak_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def context_leak(preds, gts, contexts, c, k):
    """Lists of (H, W) prediction / truth / context maps → share of context k's pixels predicted c (float)."""
    ### BEGIN SOLUTION
    num = den = 0
    for p, t, x in zip(preds, gts, contexts):
        p, t, x = np.asarray(p), np.asarray(t), np.asarray(x)
        if not (t == c).any():
            continue
        region = (x == k) & (t != 255) & (t != c)
        num += int((region & (p == c)).sum())
        den += int(region.sum())
    return float(num / den) if den else float("nan")
    ### END SOLUTION


# %%
from wsss_core.evaluation import LabelMapEvaluator


def context_leak_lib(preds, gts, contexts, c, k):
    "The library's pooled context leak of one pair, for the comparison."
    n = max([c] + [int(np.max(p)) for p in preds] + [int(np.max(np.where(t == 255, 0, t))) for t in gts])
    ev_ = LabelMapEvaluator(n, {"pair": (c, k)})
    for pred, truth, ctx in zip(preds, gts, contexts):
        ev_.update(pred, truth, context_mask=ctx)
    return ev_.summary().get("context_leak_per_pair", {}).get("pair", float("nan"))


if L.toy and ctx:
    for name, (c, k) in L.data.context_pairs.items():
        leaks = {m: grading.attempt(context_leak, context_leak_lib, [predict_one(m, i) for i in ctx],
                                    [r["mask"] for r in raws_c], [r["context_mask"] for r in raws_c], c, k) for m in pick}
        print(f"{name} on §8's {len(ctx)} images: " + ", ".join(f"→ {comparison.METHODS[m].short} {v:.3f}" for m, v in leaks.items()))

# %% nbgrader={"grade": true, "grade_id": "context_leak", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
with grading.tests("context_leak"):
    pr = np.array([[1, 1, 1, 0]])
    gt = np.array([[1, 0, 255, 0]])
    cx = np.array([[2, 2, 2, 2]])
    out = context_leak([pr, pr, pr], [gt, gt, np.zeros_like(gt)], [cx, cx, cx], 1, 2)
    assert isinstance(out, float), f"a Python float, not {type(out).__name__}"
    # images 1-2 contain class 1; their counted context pixels are 1 and 3 (0: truth is c, 2: ignored),
    # pixel 1 predicted 1 → 2 of 4; image 3 has no class 1 and is skipped
    assert abs(out - 0.5) < 1e-9, f"{out} ≠ 2 / 4"
    assert np.isnan(context_leak([pr], [gt], [cx], 1, 5)), "no pixel of the context: NaN"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = []
    for _ in range(5):
        n, H, W = int(rng.integers(1, 5)), int(rng.integers(2, 9)), int(rng.integers(2, 9))
        gts = [rng.integers(0, 4, size=(H, W)) * (rng.random() < 0.7) for _ in range(n)]
        for t in gts:
            t[rng.random((H, W)) < 0.1] = 255
        cases.append(([rng.integers(0, 4, size=(H, W)) for _ in range(n)], gts,
                      [rng.integers(0, 3, size=(H, W)) for _ in range(n)], int(rng.integers(1, 4)), int(rng.integers(1, 3))))
    grading.check_against(context_leak, context_leak_lib, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.evaluation.LabelMapEvaluator.update", "wsss_core.evaluation.LabelMapEvaluator.summary",
                                  "wsss_core.metrics.ConfusionRatio.update", "wsss_core.metrics.ConfusionRatio.leak"])
    ### END HIDDEN TESTS

# %% [markdown]
# ### Question · agreement labels (2 points, graded by hand)
#
# Write a folder of labels that keeps a pixel's class where two methods agree (e.g. `LABEL_DIRS["eps"]` and
# `LABEL_DIRS["affinity_rw"]`) and 255 where they disagree; score it with
# `comparison.label_dir_report(folder, train_true, L.data.context_pairs)` and train on it with
# `seg.run(seg_cfg, L.data, folder, L.out / "agreement")`. What share of the pixels became "ignore", how do
# the labels' precision and recall compare with either method's, and is the segmenter better? Why? Answer in
# 2–4 sentences below, with your numbers.

# %% [markdown] nbgrader={"grade": true, "grade_id": "agreement_labels", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# *Model answer.* Disagreement concentrates on object borders and on bodies one method misses, so a sizeable
# share of pixels becomes "ignore". The kept pixels are cleaner (higher precision), but recall drops because
# the ignored pixels are exactly the hard ones. The segmenter gains little or nothing over the better of the
# two: errors both methods share (a context leak, a blob around the badge) survive the agreement, and the
# network never learns the borders and bodies that were ignored.


# %% [markdown]
# ## 10 Summary
#
# * Every weakly supervised method ends the same way: a fully supervised network trained on its
#   pseudo-labels (Eq. 2 with an ignore label), evaluated on validation images (Eqs. 3–4).
# * With one network and schedule for all, the table of §7 ranks the *labels*, not the segmenters.
# * The network averages away inconsistent label noise (§7.2) and learns consistent mistakes (§8).
#
# Where to go from here: the `paper` profile runs this notebook on PASCAL VOC 2012 + SBD with DeepLab-v2
# ResNet-101 and multi-scale + flip + CRF at test time (README, "Run it on PASCAL VOC on a GPU"); the
# study notebook `study/06_segmentation_and_comparison_study` trains every segmenter with a second seed.
# This run's headline figures next to the papers' (toy scenes, compact CNN, CPU vs PASCAL VOC 2012, ResNet, GPU):

# %%
summary = [("upper bound: true masks, val mIoU", f"{100 * full:.1f}", "DeepLab-v2 R101 ≈ 76–77 [memory]")]
for what, b in (("image-label", best_img), ("box", best_box)):
    if b:
        p = comparison.METHODS[b["method"]].paper
        summary.append((f"best {what} method ({b['title']}), val mIoU · weak/full", f"{100 * b['seg_miou']:.1f} · {b['ratio']:.2f}",
                        f"{p.get('val') or '–'} ({p.get('source', '')})"))
display(Markdown("| | ours (this run) | papers, PASCAL VOC 2012 |\n|---|---|---|\n"
                 + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in summary)))
metrics = comparison.metrics_from_rows(rows)
metrics.update(profile=PROFILE, seed=SEED, seg_epochs=seg_cfg.train.epochs, seg_channels=seg_cfg.channels, crf=bool(seg_cfg.crf),
               stage_seconds=round(sum(STAGE_SECONDS.values()), 1), stage_seconds_per_method={k: round(v, 1) for k, v in STAGE_SECONDS.items()},
               n_val=len(val_ds), n_train=len(train_true))
lesson.finish(L, metrics)
