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
# # 07 · Real photos — study: EPS and EDAM on MSRC-v2
#
# The lesson (`notebooks/07_real_photos`) fine-tunes the CAM classifier from ImageNet, looks at its
# failures and refines it with the random walk; EPS and EDAM do not fit its 8 minutes. This notebook runs
# them on the same photos, from the lesson's classifier (reused from `OUT_DIR/07_real_photos` when the
# lesson ran with the same settings):
#
# * §S1 two saliency sources for EPS: OpenCV's **spectral residual** (unsupervised: no training, no
#   labels) and an **oracle** from the true masks (an upper bound, not a method);
# * §S2 EPS (lesson 05) with each: the C + 1 classifier trained with the saliency loss;
# * §S3 EDAM (lesson 03) initialised from the lesson's classifier, and lesson 03's test of its claim:
#   does EDAM recall more object pixels than CAM **at the same precision**?
#
# Every network uses the lesson's recipe (Lite0 from ImageNet, output stride 16, 192-px crops, Adam,
# one-cycle, the lesson's epochs). It runs at `study` (about 15 min on 2 CPU cores) and at `smoke`
# (16 photos, seconds, numbers meaningless). Without the photos it says why and writes `metrics.json`
# with the reason.

# %% tags=["parameters"]
PROFILE = "study"           # "study" (≈ 15 min on 2 CPU cores) | "smoke" (CI, seconds) | "tutorial"
DATA_ROOT = None            # None: $WSSS_SHARED_DATA/msrc_voc/VOC2012, else ../shared/data/msrc_voc/VOC2012
DEVICE = "auto"
SEED = 0
OUT_DIR = "../../runs/study"
EPOCHS = None               # None: the profile's classifier epochs (rp.cam_configs); EPS and EDAM use the same
RUN_EPS = True              # §S2: two EPS trainings (unsupervised and oracle saliency)
RUN_EDAM = True             # §S3: one EDAM training

# %%
import numpy as np
from IPython.display import Markdown, display
from wsss_core import lesson, realphotos as rp, saliency as wsal
from wsss_core.stages import cam as stage, edam as edam_stage, eps as eps_stage

MSRC, SKIP = rp.msrc_data(DATA_ROOT)
L = lesson.setup("07_real_photos_study", PROFILE, OUT_DIR, device=DEVICE, seed=SEED, data=MSRC)
metrics = {"data": "absent" if SKIP else "msrc-v2", "skipped": SKIP}
if SKIP:
    print(f"SKIPPED: {SKIP}.")
else:
    TRAIN_IDS, VAL_IDS = rp.splits(PROFILE, MSRC.root)
    cfg = rp.cam_configs(PROFILE)["imagenet"]
    cfg = cfg.replace(train=L.train(cfg.train, EPOCHS))
    LESSON = L.out_root / "07_real_photos"                    # the lesson's classifier and CAMs
    ckpt = stage.checkpoint_dir_for(cfg, LESSON, MSRC)
    print(f"{'reusing' if (ckpt / 'last.pt').exists() else 'training'} the lesson's classifier {L.rel(ckpt)}")
    model, _ = stage.train_classifier(cfg, stage.classification_dataset(MSRC.root, TRAIN_IDS, cfg), ckpt)
    ev = stage.evaluation_dataset(MSRC.root, TRAIN_IDS, cfg)
    CAM_DIR = LESSON / "cams_imagenet"
    stage.ensure_cams(model, ev, CAM_DIR, cfg, ckpt.name, progress=False)
    CAM = stage.evaluate_cams(CAM_DIR, ev, cfg)
    print(f"CAM (ImageNet, {cfg.train.epochs} epochs): mIoU {CAM['miou']:.3f} at θ* = {CAM['best_threshold']:g}")

# %% [markdown]
# ## S1 Saliency on photos
#
# `rp.saliency_tree` links MSRC's folders into `OUT_DIR/07_real_photos_study/msrc` and adds both saliency
# folders there (nothing is written into the shared data). Their quality against the true foreground
# (`wsss_core.saliency.saliency_quality`: MAE, F-measure with β² = 0.3):

# %%
if not SKIP:
    TREE = rp.saliency_tree(MSRC.root, L.out / "msrc", TRAIN_IDS)
    rows = []
    for name, folder in rp.SALIENCY_SOURCES.items():
        q = wsal.saliency_quality(TREE, TRAIN_IDS, folder)
        metrics[f"saliency_{name}_mae"], metrics[f"saliency_{name}_max_f"] = q["mae"], q["max_f"]
        rows.append(f"| {name} ({folder}) | {q['mae']:.3f} | {q['max_f']:.3f} |")
    display(Markdown("| saliency | MAE | max F-measure |\n|---|---:|---:|\n" + "\n".join(rows)))

# %% [markdown]
# ## S2 EPS with each saliency map
#
# The lesson's recipe with EPS's C + 1 outputs and its loss (τ 0.4, λ 0.5, adaptive map selection);
# maps at scale 1 + flip, scored as the CAMs are (sweep, oracle θ*).

# %%
EPS = {}
if not SKIP and RUN_EPS:
    for name, folder in rp.SALIENCY_SOURCES.items():
        ecfg = eps_stage.EPSStageConfig(
            backbone=cfg.backbone, backbone_kwargs=cfg.backbone_kwargs, lr_mult_new=cfg.lr_mult_new, crop_size=cfg.crop_size,
            scale=cfg.scale, train=cfg.train.replace(desc=f"EPS ({name})"), saliency_dir=folder, cam_scales=(1.0,),
            cam_batch_size=1, min_val_map=0.0, val_every_epoch=False)
        ck = eps_stage.checkpoint_dir_for(ecfg, L.out, MSRC)
        m, _ = eps_stage.train_eps(ecfg, eps_stage.training_dataset(TREE, TRAIN_IDS, ecfg), ck)
        d = L.out / f"eps_maps_{name}"
        eps_stage.ensure_eps_cams(m, ev, d, ecfg, ck.name, progress=False)
        EPS[name] = eps_stage.evaluate(d, ev, ecfg)
        metrics[f"eps_miou_{name}"] = EPS[name]["miou"]
    metrics["eps_miou"] = EPS["unsupervised"]["miou"]
    metrics["eps_miou_saliency"] = "unsupervised (OpenCV spectral residual); eps_miou_oracle: saliency from the true masks"
    display(Markdown("| pseudo-labels | mIoU (θ*) | fg precision | fg recall |\n|---|---:|---:|---:|\n"
                     + f"| CAM | {CAM['miou']:.3f} | {CAM['fg_precision']:.3f} | {CAM['fg_recall']:.3f} |\n"
                     + "\n".join(f"| EPS, {n} saliency | {r['miou']:.3f} | {r['fg_precision']:.3f} | {r['fg_recall']:.3f} |"
                                 for n, r in EPS.items())))

# %% [markdown]
# ## S3 EDAM and its claim
#
# EDAM (lesson 03) from the lesson's classifier's backbone: a CMA of d = 32, 2 heads, FFN 128 over pairs
# of photos that share a class, 8 pairs per step, the lesson's epochs. Lesson 03's test of the claim
# "EDAM covers more of each object": the foreground recall of both, interpolated along their threshold
# sweeps, at the foreground precision CAM reaches at its own θ* — or, where EDAM never gets that precise,
# at the highest precision EDAM reaches.

# %%
if not SKIP and RUN_EDAM:
    dcfg = edam_stage.EDAMStageConfig(
        backbone=cfg.backbone, backbone_kwargs=cfg.backbone_kwargs, init_from_classifier=True, d_model=32, heads=2, ffn=128,
        attn_dropout=0.0, lr_mult_new=cfg.lr_mult_new, crop_size=cfg.crop_size, scale=cfg.scale,
        train=cfg.train.replace(batch_size=8, desc="EDAM"), mask_scales=(1.0,), mask_batch_size=1)
    ck = edam_stage.checkpoint_dir_for(dcfg, L.out, ckpt.name, MSRC)
    dm, _ = edam_stage.train_edam(dcfg, edam_stage.pair_dataset(MSRC.root, TRAIN_IDS, dcfg), ck, classifier=model)
    mask_dir = L.out / "edam_masks"
    edam_stage.ensure_masks(dm, ev, mask_dir, dcfg, ck.name, progress=False)
    EDAM = edam_stage.evaluate_masks(mask_dir, ev, dcfg)
    curves = {n: edam_stage.sweep_curves(d, ev, cfg.thresholds) for n, d in (("CAM", CAM_DIR), ("EDAM", mask_dir))}
    p_cam, r_cam = CAM["fg_precision"], CAM["fg_recall"]
    p_max = float(np.nanmax(curves["EDAM"]["fg_precision"]))
    p_ref = min(p_cam, p_max)          # CAM's precision, or the highest EDAM reaches if it never reaches CAM's
    r_ref = {n: edam_stage.recall_at_precision(c, p_ref) for n, c in curves.items()}
    holds = bool(np.isfinite(r_ref["EDAM"]) and r_ref["EDAM"] - r_ref["CAM"] > 0.02)   # lesson 03's margin
    metrics.update({"edam_miou": EDAM["miou"], "edam_best_threshold": EDAM["best_threshold"], "cam_miou": CAM["miou"],
                    "cam_fg_precision": p_cam, "cam_fg_recall": r_cam, "edam_max_precision": p_max, "precision_ref": p_ref,
                    "cam_recall_at_precision": r_ref["CAM"], "edam_recall_at_cam_precision": r_ref["EDAM"],
                    "edam_claim_holds": holds})
    display(Markdown(f"| pseudo-labels | mIoU (θ*) | fg precision (θ*) | fg recall (θ*) | highest precision | recall at precision {p_ref:.3f} |\n|---|---:|---:|---:|---:|---:|\n"
                     + f"| CAM | {CAM['miou']:.3f} | {p_cam:.3f} | {r_cam:.3f} | {float(np.nanmax(curves['CAM']['fg_precision'])):.3f} | {r_ref['CAM']:.3f} |\n"
                     + f"| EDAM | {EDAM['miou']:.3f} | {EDAM['fg_precision']:.3f} | {EDAM['fg_recall']:.3f} | {p_max:.3f} | {r_ref['EDAM']:.3f} |"))
    print(f"EDAM's claim on MSRC: at precision {p_ref:.3f}{' (the highest EDAM reaches; CAM reaches ' + format(p_cam, '.3f') + ')' if p_max < p_cam else ''} "
          f"EDAM recalls {r_ref['EDAM']:.3f}, CAM {r_ref['CAM']:.3f} → {'holds' if holds else 'does not hold'} here "
          f"(mIoU {EDAM['miou']:.3f} vs {CAM['miou']:.3f})")

# %% [markdown]
# ## S4 What these figures rest on
#
# One seed, the lesson's short schedule, single-scale maps, no CRF, on 344 photos: read differences of a
# point or two as noise. The oracle saliency is not a method: it says how much EPS could gain from a
# perfect saliency detector, and the unsupervised one what it gains without any.

# %%
print(f"written: {L.rel(lesson.finish(L, metrics))}")
