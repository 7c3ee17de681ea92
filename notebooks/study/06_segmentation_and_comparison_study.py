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
# # 06 study · How much of the comparison is the segmenter's schedule and seed?
#
# Lesson 06 trains one segmenter per method with a short schedule (`tutorial`) and one seed, and reads
# the table as a ranking of the *labels*. Two experiments back (or limit) that reading:
#
# 1. **A second seed** for every segmenter (weights and data order): which differences between rows are
#    larger than the seed's own spread? (keys `seg_<method>_miou_seed<n>`, `seed_spread_max`)
# 2. **The lesson's short schedule against the study's** (10 epochs, 64 channels, flip at test time):
#    what the tutorial budget costs each row (keys `seg_<method>_miou_tutorial_preset`).
#
# Run it after the lessons with the same `OUT_DIR` (`make study` does): every method's pseudo-labels
# and the lesson's segmenters (seed `SEED`, this profile's preset) are reused; the others are stored here.

# %% tags=["parameters"]
PROFILE = "study"           # "study" (tutorial scenes; about 40 min on 2 CPU cores after the lessons) | "smoke" (CI, seconds)
DATA_ROOT = None            # None: the profile's default data folder
DEVICE = "auto"             # "auto" | "cpu" | "cuda" | "mps"
SEED = 0                    # the lesson's seed (its segmenters are reused)
OUT_DIR = "../../runs/study"
USE_SOLUTIONS = False       # (no exercises here; the runner passes it to every notebook)
SECOND_SEED = 1             # another seed for every segmenter (None: skip section 1)
METHODS = None              # None: every method (smoke: CAM, EPS and the true masks)

# %%
import numpy as np
from IPython.display import Markdown, display
from wsss_core import comparison, lesson
from wsss_core.stages import segmentation as seg

L = lesson.setup("06_segmentation_and_comparison_study", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
KEYS = comparison.method_keys(METHODS or (["cam", "eps"] if PROFILE == "smoke" else None))
seg_cfg = seg.config_for_profile(PROFILE)
seg_cfg = seg_cfg.replace(train=L.train(seg_cfg.train))                   # the lesson's segmenters: reused
run = dict(seed=SEED, device=DEVICE, log=None, progress=False)
rows = comparison.compare(KEYS, PROFILE, L.data, OUT_DIR, seg_cfg=seg_cfg, **run)   # the lesson's segmenters
metrics = {"seg_epochs": seg_cfg.train.epochs, "seg_channels": seg_cfg.channels}


def miou(rows_):
    return {r["method"]: r["seg_miou"] for r in rows_ if r["status"] == "ok"}


# %% [markdown]
# ## 1 A second seed

# %%
if SECOND_SEED is not None:
    s = int(SECOND_SEED)
    cfg_s = seg_cfg.replace(train=seg_cfg.train.replace(seed=s, epochs=1 if PROFILE == "smoke" else seg_cfg.train.epochs))
    rows_s = comparison.compare(KEYS, PROFILE, L.data, OUT_DIR, seg_cfg=cfg_s, seg_root=L.out / f"seed{s}", **run)
    a, b = miou(rows), miou(rows_s)
    spread = {k: abs(a[k] - b[k]) for k in a if k in b}
    display(Markdown(f"| method | val mIoU, seed {SEED} | seed {s} | difference |\n|---|---:|---:|---:|\n" + "\n".join(
        f"| {comparison.METHODS[k].title} | {100 * a[k]:.1f} | {100 * b[k]:.1f} | {100 * (b[k] - a[k]):+.1f} |" for k in spread)))
    order_a, order_b = sorted(spread, key=a.get), sorted(spread, key=b.get)
    print(f"largest seed difference {100 * max(spread.values()):.1f} points; same ranking of the rows: {order_a == order_b}")
    metrics.update({f"seg_{k}_miou_seed{s}": v for k, v in b.items()})
    metrics.update(seed_spread_max=max(spread.values()), same_ranking=order_a == order_b)

# %% [markdown]
# ## 2 The lesson's short schedule against the study's
#
# The lesson trains with `seg.config_for_profile("tutorial")`; this profile's preset (`study`) is the
# longer one the lesson's figures were first measured with. (At `smoke` both are the smoke preset.)

# %%
fast = seg.config_for_profile("tutorial" if PROFILE == "study" else PROFILE)
fast = fast.replace(train=L.train(fast.train, 1 if PROFILE == "smoke" else None))
rows_f = comparison.compare(KEYS, PROFILE, L.data, OUT_DIR, seg_cfg=fast, seg_root=L.out / "tutorial_preset", **run)
a, f = miou(rows), miou(rows_f)
display(Markdown(f"| method | val mIoU, {PROFILE} preset ({seg_cfg.train.epochs} epochs, {seg_cfg.channels} ch.) | "
                 f"tutorial preset ({fast.train.epochs} epochs, {fast.channels} ch.) | difference |\n|---|---:|---:|---:|\n" + "\n".join(
    f"| {comparison.METHODS[k].title} | {100 * a[k]:.1f} | {100 * f[k]:.1f} | {100 * (f[k] - a[k]):+.1f} |" for k in a if k in f)))
metrics.update({f"seg_{k}_miou_tutorial_preset": v for k, v in f.items()})

# %%
lesson.finish(L, metrics)
