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
# # 04 · Box2Seg — study: what the lesson's verdict rests on
#
# The lesson (`notebooks/04_box2seg`) trains GrabCut + CE and Box2Seg for a few epochs and cites one
# figure from here: **trained three times longer, on two seeds, Box2Seg with a per-class filling rate
# beats GrabCut + CE, and Box2Seg as described ties with it** (§S5). This notebook makes that figure and
# everything that qualifies it:
#
# * §S1–S2 every setting on the lesson's schedule (filled boxes + CE, the ablations of each Box2Seg
#   term, our per-class filling rate);
# * §S3 the same from a random backbone; §S4 a second seed; §S5 the long schedule (both seeds);
# * §S6 fully supervised training with missing objects (the authors' second claim);
# * §S7 which objects each network recovers on the validation split (camouflaged, non-convex, plain);
# * §S8 real photos (GrabCut benchmark, Weizmann horses) and which way GrabCut errs on them;
# * §S9 toy scenes redrawn so that GrabCut errs as on photos; §S10 the embedding losses by hand;
# * §S11 what changed the verdict, and the experiments that did not (recorded, not rerun).
#
# It runs at `study` (hours on 2 CPU cores: about 25 trainings, two at a time) and at `smoke` (seconds,
# tiny settings, numbers meaningless). Stage artifacts (GrabCut labels, checkpoints) live in the lesson's
# folder `OUT_DIR/04_box2seg`, so the lesson's runs are reused; the figures and `metrics.json` go to
# `OUT_DIR/04_box2seg_study`.

# %% tags=["parameters"]
PROFILE = "study"           # "study" (hours on 2 CPU cores) | "smoke" (CI, seconds) | "tutorial" | "paper"
DATA_ROOT = None            # None: the profile's default data folder
DEVICE = "auto"
SEED = 0
OUT_DIR = "../../runs/study"
EPOCHS = None               # None: the profile's epochs per setting
MISSING_SHARE = None        # None: the profile's share of objects erased from the masks in §S6
REAL_DATA = True            # §S8 on ../shared/data (GrabCut benchmark, Weizmann horses) when it is there
COMPARE_INIT = True         # §S3: GrabCut + CE and Box2Seg from a random backbone (2 trainings)
SEED_CHECK = True           # §S4 (and §S5): the settings again with seed SEED + 1
LONG_SCHEDULE = 3           # §S5: GrabCut + CE and both Box2Seg variants for 3 times the epochs (0 skips it)
PHOTO_LIKE = True           # §S9: the comparison on photo-like toy scenes (2 trainings)
N_SHOW = 4                  # images in the example figures

# %%
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from matplotlib.figure import Figure

from wsss_core import boxes, lesson, profiles
from wsss_core import losses_box2seg as losses
from wsss_core.data.palette import read_label_png
from wsss_core.metrics import ConfusionMatrix
from wsss_core.stages import box2seg as stage

L = lesson.setup("04_box2seg_study", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
OUT = L.out_root / stage.NOTEBOOK                      # the lesson's folder: GrabCut labels and checkpoints are shared
cfg = stage.config_for_profile(PROFILE)
cfg = cfg.replace(seg=cfg.seg.replace(train=L.train(cfg.seg.train, EPOCHS)),
                  real=dataclasses.replace(cfg.real, seg=cfg.real.seg.replace(train=L.train(cfg.real.seg.train))),
                  missing_share=float(MISSING_SHARE) if MISSING_SHARE is not None else cfg.missing_share)
D = stage.DESCRIPTIONS
backbone = None
if cfg.seg.backbone_init == "cam_classifier":
    cam_cfg = profiles.cam_config(PROFILE)
    backbone = stage.classifier_backbone(L.data, L.out_root / "01_class_activation_maps", cam_cfg.replace(train=L.train(cam_cfg.train)))
sd = stage.prepare(cfg, L.data, OUT, backbone=backbone)
train_raw = stage.raw_dataset(L.data.root, L.data.train_split, instances=L.toy)
NAMES, C = train_raw.class_names, train_raw.num_classes
FLAGS = {i: stage.object_flags(train_raw, i) for i in range(len(train_raw))} if L.toy else {}


def f3(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# %% [markdown]
# ## S1 Every setting on the lesson's schedule
#
# One network, one schedule, one seed; only the target of the cross-entropy and the extra terms change
# (`stage.setting`). `stage.run_settings` trains two at a time and reuses the lesson's checkpoints.

# %%
RUN = list(stage.ALL_SETTINGS)
results = stage.run_settings(RUN, cfg, sd, OUT)
ref = results["grabcut_ce"].val["miou"]
ORDER = [n for n in ("box_ce", "grabcut_ce", "box2seg_no_emb", "box2seg_no_fill", "box2seg", "box2seg_class_rho") if n in results]
lines = ["| setting | mIoU (val) | fg precision | fg recall | body recall | Δ vs GrabCut + CE | train s |", "|---|---:|---:|---:|---:|---:|---:|"]
for n in ORDER:
    v = results[n].val
    d = "" if n == "grabcut_ce" else f"{v['miou'] - ref:+.3f}"
    lines.append(f"| {D[n]} | **{v['miou']:.3f}** | {f3(v['fg_precision'])} | {f3(v['fg_recall'])} | {f3(v.get('body_recall'))} | "
                 f"{d} | {results[n].train_seconds:.0f} |")
display(Markdown("\n".join(lines)))
display(Markdown("Per-class IoU (val):\n\n| setting | " + " | ".join(NAMES) + " |\n|---|" + "---:|" * len(NAMES) + "\n" + "\n".join(
    f"| {n} | " + " | ".join(f3(results[n].val["per_class_iou"].get(c)) for c in NAMES) + " |" for n in ORDER)))

# %% [markdown]
# ## S2 Which term does what (ablation)
#
# Each row removes one term from the full method; the last column is what the full method gains by
# having it. The last row is our one change: B3's target $\rho_k$ becomes the mean GrabCut filling rate of
# the box's *class* (BCM's per-class filling rate, `LossConfig(rho="class_mean")`), so a box where GrabCut
# collapsed no longer tells the attention to cover a sliver; its column is its gain over the full method.

# %%
full = results["box2seg"].val["miou"]
rows_ = [("box2seg", "all terms (B1 + B2 + B3 + B4/B6)"), ("box2seg_no_fill", "without the filling rate B3"),
         ("box2seg_no_emb", "without the embeddings B4/B6"), ("grabcut_ce", "none: GrabCut + CE (B1 only)"),
         ("box2seg_class_rho", "all terms, B3 with the per-class mean ρ (our change)")]
lines = ["| Box2Seg | mIoU (val) | contribution of the removed term(s) |", "|---|---:|---:|"]
for n, text in rows_:
    if n in results:
        m = results[n].val["miou"]
        d = m - full if n == "box2seg_class_rho" else full - m
        lines.append(f"| {text} | {m:.3f} | {'' if n == 'box2seg' else f'{d:+.3f}'} |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## S3 From a random backbone
#
# Every setting starts from notebook 01's classifier backbone. The same two settings trained from a
# *random* backbone (same schedule and seed) tell whether Box2Seg's extra terms matter more when the
# network has not yet learned what the classes look like. These runs are chaotic on a CPU: two runs of
# the same preset and seed have differed by 0.2 mIoU.

# %%
init_rows = {}
if COMPARE_INIT and cfg.seg.backbone_init is not None:
    cfg_rand = cfg.replace(seg=cfg.seg.replace(backbone_init=None))
    sd_rand = dataclasses.replace(sd, identity={**sd.identity, "backbone_init": None}, backbone_state=None, _stores=sd._stores)
    rand = stage.run_settings(["grabcut_ce", "box2seg"], cfg_rand, sd_rand, OUT)
    init_rows = {n: {"classifier": results[n].val["miou"], "random": r.val["miou"]} for n, r in rand.items()}
    lines = ["| backbone at the start | GrabCut + CE | Box2Seg | Box2Seg − GrabCut + CE |", "|---|---:|---:|---:|"]
    for k, text in (("classifier", "notebook 01's CAM classifier"), ("random", "random (seeded)")):
        a, b = init_rows["grabcut_ce"][k], init_rows["box2seg"][k]
        lines.append(f"| {text} | {a:.3f} | {b:.3f} | **{b - a:+.3f}** |")
    display(Markdown("\n".join(lines)))

# %% [markdown]
# ## S4 Is one seed enough?
#
# The gaps above are a few hundredths of mIoU. The same settings with the next seed (new initialisation
# of decoder and heads, new batch order and augmentation) show how much the seed alone moves them.

# %%
seed_rows = {}
SEED_SETTINGS = [n for n in ("grabcut_ce", "box2seg", "box2seg_class_rho") if n in results]
if SEED_CHECK:
    cfg_s = cfg.replace(seg=cfg.seg.replace(train=cfg.seg.train.replace(seed=SEED + 1)))
    res_s = stage.run_settings(SEED_SETTINGS, cfg_s, sd, OUT)
    seed_rows = {n: (results[n].val["miou"], r.val["miou"]) for n, r in res_s.items()}
    ref_ = np.mean(seed_rows["grabcut_ce"])
    lines = [f"| setting | seed {SEED} | seed {SEED + 1} | mean | mean − GrabCut + CE |", "|---|---:|---:|---:|---:|"]
    for n, (a, b) in seed_rows.items():
        lines.append(f"| {D[n]} | {a:.3f} | {b:.3f} | **{(a + b) / 2:.3f}** | {'' if n == 'grabcut_ce' else f'{(a + b) / 2 - ref_:+.3f}'} |")
    display(Markdown("\n".join(lines)))

# %% [markdown]
# ## S5 Is the schedule long enough? (the figure the lesson cites)
#
# Learning from noisy labels has two phases: a network first fits what the labels agree on, and only later
# memorises their mistakes; a short schedule compares the methods in the first phase only. GrabCut + CE
# and both Box2Seg variants trained for `LONG_SCHEDULE` times the epochs (the one-cycle schedule stretched;
# with `SEED_CHECK` both seeds).

# %%
long_rows, long_seed_rows, long_epochs = {}, {}, None
if LONG_SCHEDULE and LONG_SCHEDULE > 1:
    long_epochs = int(round(cfg.seg.train.epochs * LONG_SCHEDULE))
    cfg_l = cfg.replace(seg=cfg.seg.replace(train=cfg.seg.train.replace(epochs=long_epochs)))
    for seed_ in ([SEED, SEED + 1] if SEED_CHECK else [SEED]):
        cfg_ls = cfg_l.replace(seg=cfg_l.seg.replace(train=cfg_l.seg.train.replace(seed=seed_)))
        (long_rows if seed_ == SEED else long_seed_rows).update(stage.run_settings(SEED_SETTINGS, cfg_ls, sd, OUT))
    ref_ = np.mean([r["grabcut_ce"].val["miou"] for r in (long_rows, long_seed_rows) if r])
    lines = [f"| setting | {cfg.seg.train.epochs} epochs, seed {SEED} | {long_epochs} epochs, seed {SEED} | {long_epochs} epochs, seed {SEED + 1} "
             f"| {long_epochs} epochs, mean | mean − GrabCut + CE | fg precision / recall ({long_epochs} ep., seed {SEED}) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for n in SEED_SETTINGS:
        b = long_rows[n].val
        c = long_seed_rows[n].val["miou"] if long_seed_rows else math.nan
        mean_ = np.nanmean([b["miou"], c])
        lines.append(f"| {D[n]} | {results[n].val['miou']:.3f} | {b['miou']:.3f} | {f3(c)} | **{mean_:.3f}** | "
                     f"{'' if n == 'grabcut_ce' else f'{mean_ - ref_:+.3f}'} | {b['fg_precision']:.3f} / {b['fg_recall']:.3f} |")
    display(Markdown("\n".join(lines)))
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for j, (n, r_) in enumerate(long_rows.items()):
        y = r_.history.series("ce", "epochs")[1]
        ax1.plot(np.arange(1, len(y) + 1), y, "o-", ms=3, color=f"C{j}", label=D[n])
        if n != "grabcut_ce":
            y = r_.history.series("att_mean", "epochs")[1]
            ax2.plot(np.arange(1, len(y) + 1), y, "o-", ms=3, color=f"C{j}", label=D[n])
    ax1.set(xlabel="epoch", ylabel="B1: cross-entropy on GrabCut's labels", title=f"{long_epochs} epochs: fitting GrabCut's labels")
    ax2.set(xlabel="epoch", ylim=(0, 1), ylabel="mean attention of a box's class", title="the attention in boxes")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(L.out / "long_schedule.png")
    display(fig)

# %% [markdown]
# ## S6 Fully supervised, with missing objects
#
# The true masks with a share of the objects erased (`stage.remove_objects`), every box kept.
# Cross-entropy alone learns "these objects are background"; the attention-weighted loss lets the boxes
# of the erased objects still vote for their class. The erased objects' own pixels in the training
# images are counted as well: how much of them does each network label correctly?

# %%
missing_rows = {}
if {"full_ce", "full_awl"} <= set(results):
    n_obj = sum(len(train_raw.get_raw(i)["boxes"]) for i in range(len(train_raw)))
    n_rem = sum(len(v) for v in sd.missing.values())
    rec = {n: [] for n in ("full_ce", "full_awl")}
    for iid, ks in sd.missing.items():
        r = train_raw.get_raw(train_raw.ids.index(iid))
        for n in rec:
            p = stage.predict_maps(results[n].model, stage.image_tensor(r["image"])[None])["prob"][0].argmax(0).numpy()
            rec[n] += [float((p[r["instance_mask"] == k] == r["box_labels"][k - 1]).mean()) for k in ks if (r["instance_mask"] == k).any()]
    lines = ["| training target | loss | mIoU (val) | fg recall (val) | erased objects recovered (train) |", "|---|---|---:|---:|---:|"]
    for n, loss_txt in (("full_ce", "CE"), ("full_awl", "CE + attention-weighted + filling rate")):
        v = results[n].val
        missing_rows[n] = {"miou": v["miou"], "erased_recall": float(np.mean(rec[n])) if rec[n] else math.nan}
        lines.append(f"| masks, {n_rem / max(n_obj, 1):.0%} objects erased | {loss_txt} | **{v['miou']:.3f}** | {f3(v['fg_recall'])} | "
                     f"{f3(missing_rows[n]['erased_recall'])} |")
    display(Markdown("\n".join(lines)))

# %% [markdown]
# ## S7 Which objects each network recovers (validation)
#
# A camouflaged body is a body with a badge too, and the network sees many plain ones: does it generalise
# to the camouflaged objects whose GrabCut labels collapsed, and do Box2Seg's box votes help there?

# %%
val_recall = {}
if L.toy:
    val_inst = stage.raw_dataset(L.data.root, sd.val.ids, instances=True)
    cols = [n for n in ("box_ce", "grabcut_ce", "box2seg", "box2seg_class_rho") if n in results]
    per = {}
    for n in cols:
        _, kept = stage.evaluate_segmenter(results[n].model, sd.val, None, cfg.seg.eval_batch_size, keep=range(len(sd.val)))
        per[n] = stage.summarise_objects([o for i in range(len(val_inst)) for o in
                                          stage.object_rows(val_inst.get_raw(i), kept[i], stage.object_flags(val_inst, i))])
    lines = ["| objects (val): recall | n | " + " | ".join(D[n] for n in cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    lines += [f"| {cat} | {per[cols[0]][cat]['n']} | " + " | ".join(f"{per[n][cat]['recall']:.3f}" for n in cols) + " |"
              for cat in ("plain", "non-convex", "camouflaged", "all") if cat in per[cols[0]]]
    display(Markdown("\n".join(lines)))
    val_recall = {n: {c: v["recall"] for c, v in per[n].items()} for n in cols}

# %% [markdown]
# ## S8 Real photos
#
# Where `../shared/data` holds them: **GrabCut benchmark** — our GrabCut from the tight boxes of its 50
# photos, scored with the benchmark's error rate (misclassified over scored pixels, per image, averaged)
# and foreground IoU; **Weizmann horses** — the box-supervised networks trained on `train.txt` (GrabCut on
# its photos, crops of a fixed size) and scored on `val.txt` at full size. Absent data are skipped.

# %%
real, bench_errors = {}, {}
shared = profiles.shared_data_dir()
if REAL_DATA and shared is not None and (shared / "grabcut_voc").is_dir():
    bench = stage._subset(shared / "grabcut_voc", "all", cfg.real.grabcut_max_images, saliency_dir=None, cache=False)
    bdir = OUT / "real" / f"grabcut_benchmark-{cfg.real.grabcut.fingerprint()}-n{len(bench)}"
    man = boxes.make_grabcut_labels(bench, bdir, cfg.real.grabcut, workers=cfg.grabcut_workers)
    errs, ious, stats = [], [], boxes.GrabCutStats()
    for i in range(len(bench)):
        rr = bench.get_raw(i)
        lab = read_label_png(bdir / f"{rr['id']}.png")
        e = boxes.grabcut_errors(lab, rr["mask"])
        errs.append(e["errors"] / e["valid"])
        ious.append(ConfusionMatrix(2).update(lab, rr["mask"]).iou()[1])
        stats.update(lab, rr["mask"], rr["boxes"])
    real = {"grabcut_benchmark_error": float(np.mean(errs)), "grabcut_benchmark_fg_iou": float(np.mean(ious)),
            "grabcut_benchmark_images_per_second": man["images_per_second"]}
    bench_errors = stats.summary()
    print(f"GrabCut benchmark ({len(bench)} photos): mean error rate {real['grabcut_benchmark_error']:.2%}, mean foreground IoU "
          f"{real['grabcut_benchmark_fg_iou']:.3f}; plain OpenCV GrabCut from tight boxes is usually quoted at ≈ 4.3 % / 0.86 (DESIGN.md)")
elif REAL_DATA:
    print("skipped: the GrabCut benchmark was not found (looked for $WSSS_SHARED_DATA, then <repo>/../shared/data)")

# %%
horse, horse_errors, horse_att = {}, {}, {}
if REAL_DATA and shared is not None and (shared / "weizmann_horse_voc").is_dir():
    hdata = profiles.DataSpec("voc", shared / "weizmann_horse_voc", "train", "val")
    HOUT = OUT / "horses"
    hsd = stage.prepare(cfg, hdata, HOUT, seg=cfg.real.seg, grabcut=cfg.real.grabcut,
                        max_train=cfg.real.horse_max_train, max_val=cfg.real.horse_max_val)
    hcm, hstats = ConfusionMatrix(hsd.base.num_classes + 1), boxes.GrabCutStats()
    for i in range(len(hsd.base)):
        rr = hsd.base.get_raw(i)
        lab = read_label_png(hsd.gc_dir / f"{rr['id']}.png")
        hcm.update(lab, rr["mask"])
        hstats.update(lab, rr["mask"], rr["boxes"])
    horse["grabcut_train_fg_iou"] = float(hcm.iou()[hsd.base.class_names.index("horse")])
    horse_errors = hstats.summary()
    hres = stage.run_settings(cfg.real.settings, cfg, hsd, HOUT, seg=cfg.real.seg)
    horse.update({n: r.val["per_class_iou"]["horse"] for n, r in hres.items()})
    display(Markdown("| horses (val, full size) | horse IoU | fg precision | fg recall |\n|---|---:|---:|---:|\n" + "\n".join(
        f"| {D[n]} | **{horse[n]:.3f}** | {r.val['fg_precision']:.3f} | {r.val['fg_recall']:.3f} |" for n, r in hres.items())))
    print(f"horses: GrabCut's foreground IoU on {len(hsd.base)} training photos {horse['grabcut_train_fg_iou']:.3f}")
    if "box2seg" in hres:
        horse_att = stage.attention_by_grabcut_error(hres["box2seg"].model, hsd.base, hsd.gc_dir, long_side=cfg.real.seg.eval_long_side)
        print("Box2Seg's attention on GrabCut's box pixels (train): " + ", ".join(f"{k.replace('_', ' ')} {v['attention']:.2f}" for k, v in horse_att.items()))
    fig = stage.prediction_grid(hsd.val, range(min(N_SHOW, len(hsd.val))), {n: r.model for n, r in hres.items()},
                                long_side=cfg.real.seg.eval_long_side, size=1.9)
    fig.savefig(L.out / "horses.png")
    display(fig)
elif REAL_DATA:
    print("skipped: the Weizmann horses were not found")

# %% [markdown]
# **Which way does GrabCut err — on our scenes and on photos?** Box2Seg's attention is built to damp
# *wrong foreground* labels (background GrabCut took inside a box). Object pixels missed and box background
# taken, both per object pixel, and how much background a box holds per object pixel (`boxes.GrabCutStats`).

# %%
def error_profile_table(rows):
    "GrabCut's error profile per data set, as Markdown; rows: (name, boxes.GrabCutStats().summary())."
    lines = ["| GrabCut from tight boxes | object pixels missed | box background taken (per object pixel) | box background per object pixel | taken ÷ missed |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {s['miss_rate']:.3f} | {s['take_share']:.3f} | {s['box_background'] / max(s['object'], 1):.2f} | "
              f"**{s['take_share'] / max(s['miss_rate'], 1e-9):.2f}** |" for n, s in rows]
    return Markdown("\n".join(lines))


gr = stage.grabcut_report(train_raw, sd.gc_dir)
profile_rows = [("toy scenes (train)", gr["grabcut"])] + [(n, s) for n, s in (("GrabCut benchmark", bench_errors),
                                                                                ("Weizmann horses (train)", horse_errors)) if s]
display(error_profile_table(profile_rows))

# %% [markdown]
# ## S9 Photo-like boxes: does Box2Seg win when GrabCut errs as on photos?
#
# Our scenes and the photos differ in *which way* GrabCut errs. So we change the scenes, not the method:
# `ToySceneConfig(p_legged=0.8, p_shadow=0.8)` draws most bodies as a torso on thin legs (background
# between them, as between a horse's) with a dark, body-tinted shadow (`cfg.photo_like`; a tree of its own).

# %%
photo, photo_res = {}, {}
if PHOTO_LIKE and L.toy and cfg.photo_like:
    pdata = profiles.prepare_data(PROFILE, DATA_ROOT, toy_overrides=cfg.photo_like)
    POUT = OUT / "photo_like"
    psd = stage.prepare(cfg, pdata, POUT, backbone=backbone)
    pgr = stage.grabcut_report(psd.base, psd.gc_dir)
    photo.update(box_miou=pgr["box"]["miou"], grabcut_miou=pgr["grabcut"]["miou"],
                 grabcut_miss_rate=pgr["grabcut"]["miss_rate"], grabcut_take_share=pgr["grabcut"]["take_share"])
    display(error_profile_table(profile_rows[:1] + [("photo-like toy scenes (train)", pgr["grabcut"])] + profile_rows[1:]))
    photo_res = stage.run_settings(cfg.photo_like_settings, cfg, psd, POUT)
    photo.update({f"seg_{n}_miou": r.val["miou"] for n, r in photo_res.items()})
    ref_p = photo_res["grabcut_ce"].val["miou"] if "grabcut_ce" in photo_res else math.nan
    dp = {n: "" if n == "grabcut_ce" else f"{r.val['miou'] - ref_p:+.3f}" for n, r in photo_res.items()}
    display(Markdown("| photo-like scenes (val) | mIoU | fg precision | fg recall | Δ vs GrabCut + CE |\n|---|---:|---:|---:|---:|\n" + "\n".join(
        f"| {D[n]} | **{r.val['miou']:.3f}** | {r.val['fg_precision']:.3f} | {r.val['fg_recall']:.3f} | {dp[n]} |"
        for n, r in photo_res.items())))
    fig = stage.prediction_grid(psd.val, L.rng.choice(len(psd.val), size=min(N_SHOW, len(psd.val)), replace=False),
                                {n: r.model for n, r in photo_res.items()}, size=1.9)
    fig.savefig(L.out / "photo_like.png")
    display(fig)

# %% [markdown]
# ## S10 The embedding losses by hand (B5, B6)
#
# The lesson checks B2 and B3 against loops; here the agreement loss of the embeddings, pair by pair.

# %%
g = torch.Generator().manual_seed(SEED)
emb_q = F.normalize(torch.randn(1, 4, 3, 4, generator=g), dim=1)
prob_q = torch.softmax(torch.randn(1, 3, 3, 4, generator=g), dim=1)
ce_all = []
for (dy, dx) in losses.pair_offsets(1.5):
    a = (1 + (emb_q * losses.shift(emb_q, dy, dx)).sum(1)) / 2                          # a_ij
    P = (prob_q * losses.shift(prob_q, dy, dx)).sum(1)                                  # B5
    ok = losses.pair_affinity(emb_q, [(dy, dx)])[1][0]
    ce_all.append((-(P * torch.log(a.clamp(1e-5, 1 - 1e-5)) + (1 - P) * torch.log((1 - a).clamp(1e-5, 1))))[0][ok])
ce_all = torch.cat(ce_all).mean()
lib = losses.embedding_agreement_loss(emb_q, torch.log(prob_q), radius=1.5)
assert torch.allclose(ce_all, lib, atol=1e-5)
print(f"agreement loss by hand {ce_all:.6f}, library {lib:.6f}; radius {cfg.box2seg.emb_radius:g} on the stride-"
      f"{cfg.seg.decoder_stride} grid gives {len(losses.pair_offsets(cfg.box2seg.emb_radius))} offsets per pixel")

# %% [markdown]
# ## S11 What changed the verdict, and what did not
#
# * **The kind of noise is not the reason.** On the photo-like scenes (§S9) GrabCut takes box background
#   about as often as on the photos, and Box2Seg as described still trails GrabCut + CE at the lesson's
#   schedule, with the same signature: more recall, less precision.
# * **The schedule is.** With three times the epochs (§S5) both networks gain about 0.05 mIoU; Box2Seg as
#   described draws level with GrabCut + CE, and Box2Seg with the per-class filling rate beats it on both
#   seeds, mostly through recall (camouflaged bodies whose GrabCut $\rho$ collapsed get box votes for the
#   class's usual share of the box). On the horses — one class, so the per-class $\rho$ is just the mean
#   over all boxes, and GrabCut's dominant error there is *taking* background — it does not help (§S8).
# * **The attention knows where GrabCut is wrong, but the loss does not listen.** (B1) still pulls every
#   pixel to GrabCut's label with weight one and (B2) only *adds* box votes weighted by $A$: a wrongly taken
#   pixel gets $1 + A$ votes for the object instead of 1, a missed one $A$ votes against 1 for background.
#
# Development runs not rerun here (same stage code, the lesson's schedule, validation mIoU, seed 0 /
# seed 1; in the same runs GrabCut + CE made 0.819 / 0.808 and Box2Seg 0.803 / 0.806). Letting the
# attention gate (B1) too — (B1′), `LossConfig(gate=...)` — lost every way we tried:
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
# | `gate="both", gate_detach=True, gate_renorm=True` | 0.692 | 0.664 | the same |
# | no gate, `fill_weight=10` (the attention held hard to $\rho$) | 0.678 | – | precision 0.69: the attention covers $\rho$ of every box |
#
# Other schedules tried once (seed 0): 48 epochs, GrabCut + CE 0.877 and Box2Seg 0.874 (fg precision /
# recall 0.960 / 0.893 vs 0.948 / 0.901); losses at full resolution (`SegConfig(loss_stride=1)`, 8 epochs)
# 0.813 vs 0.809; photo-like scenes at 24 epochs 0.760 vs 0.753, per-class $\rho$ 0.785; photo-like scenes
# with a backbone from a classifier trained on them, 0.727 / 0.723 vs 0.718 / 0.711. Each is one
# `stage.run_setting(...)` away. What the paper does to keep its attention from collapsing we could not
# check (no code, no paper body).

# %%
metrics = {"epochs": cfg.seg.train.epochs, "n_train": len(sd.base), "n_val": len(sd.val), "backbone_init": cfg.seg.backbone_init,
           "settings": {n: {k: r.val[k] for k in ("miou", "fg_precision", "fg_recall")} | {"train_seconds": r.train_seconds}
                        for n, r in results.items()}}
metrics.update({f"seg_{n}_miou" if not n.startswith("full") else f"{n}_miou": r.val["miou"] for n, r in results.items()})
metrics.update({f"seg_{n}_random_init_miou": v["random"] for n, v in init_rows.items()})
for n, (a, b) in seed_rows.items():
    metrics.update({f"seg_{n}_seed{SEED + 1}_miou": b, f"seg_{n}_two_seed_mean_miou": (a + b) / 2})
if long_rows:
    metrics["long_epochs"] = long_epochs
    metrics.update({f"seg_{n}_long_miou": r.val["miou"] for n, r in long_rows.items()})
    for n, r in long_seed_rows.items():
        metrics.update({f"seg_{n}_long_seed{SEED + 1}_miou": r.val["miou"],
                        f"seg_{n}_long_two_seed_mean_miou": (long_rows[n].val["miou"] + r.val["miou"]) / 2})
if missing_rows:
    metrics.update(missing_share=cfg.missing_share, full_ce_erased_recall=missing_rows["full_ce"]["erased_recall"],
                   full_awl_erased_recall=missing_rows["full_awl"]["erased_recall"])
metrics["val_object_recall"] = val_recall
metrics.update(real)
metrics.update({f"horse_{k}" if k == "grabcut_train_fg_iou" else f"horse_{k}_fg_iou": v for k, v in horse.items()})
for prefix, e in (("grabcut_benchmark_", bench_errors), ("horse_grabcut_", horse_errors)):
    if e:
        metrics.update({f"{prefix}miss_rate": e["miss_rate"], f"{prefix}take_share": e["take_share"]})
metrics.update({f"horse_attention_{k}": v["attention"] for k, v in horse_att.items()})
metrics.update({f"photo_like_{k}": v for k, v in photo.items()})
print(f"written {L.rel(lesson.finish(L, metrics))}; this run took {L.seconds():.0f} s")
