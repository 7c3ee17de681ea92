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
# # 00 · study: the data behind lesson 00's claims
#
# Checks and measurements that back `notebooks/00_weak_supervision` (run with `PROFILE = "study"`, the
# tutorial's scenes; `make study`), or `smoke` for CI:
#
# * **S1 Data checks** — the weak signals stored in the XML are the ones Eqs. 1–2 derive from the masks
#   (image labels exactly; boxes up to the 255 outline drawn after them).
# * **S2 The badge is all a classifier needs** — the image label from the badges alone, the badge shape
#   per class, and the body colour, one distribution for all classes.
# * **S3 Clutter and unsupervised saliency** — distractors, camouflaged and non-convex bodies, and where
#   OpenCV's saliency responds (badges, bodies, distractors, background): the lesson's claim that it
#   finds badges, not bodies.
# * **S4 Real photos** — the GrabCut benchmark and the Weizmann horses, read by the same reader, and
#   OpenCV's saliency on the horses (skipped where `../shared/data` is absent).

# %% tags=["parameters"]
PROFILE = "study"           # "study" (the tutorial scenes; ≈ 1 min on 2 CPU cores) | "smoke" (CI, seconds)
DATA_ROOT = None            # None: the profile's toy scenes
DEVICE = "auto"             # unused (nothing is trained)
SEED = 0
OUT_DIR = "../../runs/study"
N_RENDER = 400              # scenes re-rendered for the distractor and clutter statistics (smoke: 64)

# %%
import colorsys, dataclasses
import cv2, numpy as np
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from wsss_core import lesson, profiles, viz
from wsss_core.data import toyscenes
from wsss_core.data.palette import read_gray_png, read_label_png
from wsss_core.data.voc import VOCLayoutDataset
from wsss_core.metrics import SaliencyStats

L = lesson.setup("00_weak_supervision_study", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
cfg = toyscenes.ToySceneConfig.from_dict(L.data.manifest["config"])
train = VOCLayoutDataset(L.data.root, L.data.train_split)
NAMES, C, N = train.class_names, train.num_classes, min(len(train), 64 if PROFILE == "smoke" else N_RENDER)
metrics = {}

# %% [markdown]
# ## S1 Data checks
#
# Image labels (Eq. 1) from the class masks vs from the XML, on every training image; and the tight box
# (Eq. 2) of each object's visible, non-255 pixels vs its XML box. Like VOC, the masks carry a 255 outline
# drawn after the boxes were taken, so a tight box may be a little smaller, never larger.

# %%
label_ok, shrink = [], []
for i in range(len(train)):
    r = train.get_raw(i)
    present = np.unique(r["mask"])
    present = present[(present >= 1) & (present <= C)]
    y = np.zeros(C, np.float32)
    y[present - 1] = 1
    label_ok.append(np.array_equal(y, r["label"]))
    for box, k in zip(r["boxes"], r["box_instance_ids"]):
        ys, xs = np.nonzero(r["instance_mask"] == k)
        tb = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        assert (tb[:2] >= box[:2]).all() and (tb[2:] <= box[2:]).all(), (r["id"], k, tb, box)
        shrink.append(int(np.abs(tb - box).max()))
shrink = np.array(shrink)
metrics["labels_from_masks_match_share"] = float(np.mean(label_ok))
metrics["boxes_within_3px_share"] = float(np.mean(shrink <= 3))
print(f"image labels from masks == XML labels on {np.mean(label_ok):.1%} of {len(train)} images")
print(f"{len(shrink)} objects, every tight box inside its XML box; largest side difference: "
      + ", ".join(f"{d} px: {n}" for d, n in enumerate(np.bincount(shrink)) if n))

# %% [markdown]
# ## S2 The badge is all a classifier needs
#
# Eq. 1 applied to `PartMask/` instead of the class mask; badges cut out of the first scenes, one row per
# class; and the hue of every object's body colour (badge and its rim excluded), by class.

# %%
K3 = np.ones((3, 3), np.uint8)
badge_ok, hues, per_class = [], {c: [] for c in range(1, C + 1)}, {c: [] for c in range(1, C + 1)}
for i in range(len(train)):
    r = train.get_raw(i)
    present = np.unique(r["part_mask"])
    badge_ok.append(set(present[(present >= 1) & (present <= C)] - 1) == set(np.flatnonzero(r["label"])))
    no_badge = cv2.dilate((r["part_mask"] > 0).astype(np.uint8), K3) == 0
    for c, k in zip(r["box_labels"], r["box_instance_ids"]):
        body = (r["instance_mask"] == k) & no_badge
        if body.any():
            hues[int(c)].append(colorsys.rgb_to_hsv(*(r["image"][body].mean(axis=0) / 255))[0])
        b = (r["part_mask"] == c) & (r["instance_mask"] == k)
        if i < N and b.any() and len(per_class[int(c)]) < 10:
            ys, xs = np.nonzero(b)
            crop = r["image"][max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3]
            per_class[int(c)].append(cv2.resize(crop, (20, 20), interpolation=cv2.INTER_NEAREST))
metrics["label_from_badges_accuracy"] = float(np.mean(badge_ok))
print(f"image label from the badges alone == image label on {np.mean(badge_ok):.1%} of the images; "
      f"badge colour mode: {getattr(cfg, 'badge_colour', 'class')!r}")
display(viz.image_grid([per_class[c] or [None] for c in range(1, C + 1)], row_titles=NAMES[1:], size=0.55, fontsize=7))
fig = Figure(figsize=(5.5, 2.3), layout="constrained")
ax = fig.add_subplot()
for c in range(1, C + 1):
    ax.hist(hues[c], bins=np.linspace(0, 1, 13), histtype="step", lw=1.6, density=True, color=viz.palette_color(c), label=NAMES[c])
ax.set(xlabel="hue of the object's mean body colour", ylabel="density", title="body colour by class: one distribution for all")
ax.legend(fontsize=7, ncols=3)
display(fig)

# %% [markdown]
# ## S3 Clutter and unsupervised saliency
#
# The first `N_RENDER` scenes rendered again with a saliency stand-in that never misses and always fires
# on distractors (the image is drawn first, so it is the same): its map marks every distractor body.
# Then OpenCV's saliency, averaged over badges, bodies, distractors and all background.

# %%
oracle = dataclasses.replace(cfg, sal_p_miss=0.0, sal_p_distractor=1.0, sal_blur_sigma=0.0)
flags, n_distractors, d_share, region = [], [], [], {"badges": [], "bodies": [], "distractors": [], "background": []}
for i in range(N):
    sc = toyscenes.render_scene(oracle, i)
    r = train.get_raw(i)
    assert np.array_equal(sc.cls, read_label_png(train.root / "SegmentationClass" / f"{train.ids[i]}.png"))
    flags += [(o["camouflaged"], o["nonconvex"]) for o in sc.objects]
    dm = (sc.saliency > 0.3) & (sc.cls == 0)
    valid = r["mask"] != 255
    fg, part = valid & (r["mask"] > 0), r["part_mask"] > 0
    n_distractors.append(cv2.connectedComponents(dm.astype(np.uint8))[0] - 1)
    d_share.append((dm.sum(), (valid & ~fg).sum()))
    unsup = read_gray_png(train.root / "SaliencyUnsupervised" / f"{r['id']}.png")
    for name, m in (("badges", part), ("bodies", fg & (cv2.dilate(part.astype(np.uint8), K3) == 0)), ("distractors", dm),
                    ("background", valid & ~fg)):
        if m.any():
            region[name].append(float(unsup[m].mean()))
flags = np.array(flags, bool)
metrics.update(distractors_per_image=float(np.mean(n_distractors)), camouflaged_share_rendered=float(flags[:, 0].mean()),
               nonconvex_share=float(flags[:, 1].mean()),
               distractor_share_of_background=float(sum(a for a, _ in d_share) / max(sum(b for _, b in d_share), 1)))
metrics.update({f"opencv_saliency_on_{k}": float(np.mean(v)) if v else None for k, v in region.items()})
display(Markdown("| first scenes | value |\n|---|---:|\n" + "\n".join(
    f"| `{k}` | {v:.3f} |" for k, v in metrics.items() if k.startswith(("distractor", "camouflaged", "nonconvex", "opencv")) and v is not None)))

# %% [markdown]
# OpenCV's spectral-residual saliency is highest on the badges, the same small saturated marks a
# classifier learns, and much lower on the bodies: it tells where objects are, not how far they extend.
#
# ## S4 Real photos, read by the same reader
#
# The GrabCut benchmark (one foreground class, an *unknown* band marked 255) and the Weizmann horses
# (class 13 = horse), in the VOC layout under `../shared/data` (not shipped with the package).

# %%
SHARED = profiles.shared_data_dir()
if SHARED is None:
    print("skipped: no real-photo folder (set WSSS_SHARED_DATA, or put the data in ../shared/data)")
else:
    grabcut = VOCLayoutDataset(SHARED / "grabcut_voc", "all")
    horses = VOCLayoutDataset(SHARED / "weizmann_horse_voc", "val")
    n_gc = len(grabcut) if PROFILE != "smoke" else min(len(grabcut), 10)
    band = np.array([float((grabcut.get_raw(i)["mask"] == 255).mean()) for i in range(n_gc)])
    metrics.update(grabcut_benchmark_with_band_share=float(np.mean(band > 0)), grabcut_benchmark_band_pixels=float(band.mean()))
    rows, titles = [], []
    for ds, idx in ((grabcut, sorted(np.argsort(band)[::-1][:3])), (horses, [0, 1, 2])):
        for i in idx:
            r = ds.get_raw(int(i))
            m = r["mask"]
            edge = (m == 255) if (m == 255).any() else (m != cv2.erode(m, K3))   # the 255 band, else the outline
            ys, xs = np.nonzero(edge)
            j = np.argmin((ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2)
            half = max(16, min(m.shape) // 10)
            y0, x0 = max(int(ys[j]) - half, 0), max(int(xs[j]) - half, 0)
            over = viz.overlay(r["image"], m)
            rows.append([r["image"], over, over[y0:y0 + 2 * half, x0:x0 + 2 * half]])
            titles.append([f"{ds.root.name}/{r['id']}", "mask (cream = 255)", "zoom on the mask edge"])
    fig = viz.image_grid(rows, titles=titles, size=2.0)
    fig.savefig(L.out / "real_photos.png")
    display(fig)
    st = SaliencyStats()
    for i in range(len(horses) if PROFILE != "smoke" else min(len(horses), 10)):
        r = horses.get_raw(i)
        valid = r["mask"] != 255
        st.update(toyscenes.opencv_saliency(r["image"])[valid], (r["mask"] > 0)[valid])
    metrics.update(horse_opencv_saliency_mae=st.value["mae"], horse_opencv_saliency_max_f=st.value["max_f"])
    print(f"GrabCut benchmark: {np.mean(band > 0):.0%} of {n_gc} masks have a 255 band ({band.mean():.2%} of the pixels); "
          f"OpenCV saliency on the horses: MAE {st.value['mae']:.3f}, max F {st.value['max_f']:.3f}")

# %% [markdown]
# The real masks follow the same conventions (palette PNG, 0 background, 255 ignore), so every stage
# runs on them unchanged; OpenCV's saliency is no better on real horses than on the toy scenes.

# %%
print(f"written: {L.rel(lesson.finish(L, metrics))}")
