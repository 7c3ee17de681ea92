"""EPS (Lee et al., CVPR 2021): the loss on hand-made 2×2 maps, the overlap ratio, map selection, the
C + 1 classifier and its pseudo-mask maps, saliency sources and errors, the confusion ratio on a
hand-made confusion case, and the stage end to end on a tiny toy tree."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_core import engine, profiles
from wsss_core.cams import load_cams, save_cams
from wsss_core.data.palette import read_label_png, write_gray_png
from wsss_core.evaluation import LabelMapEvaluator
from wsss_core.losses import eps_loss
from wsss_core.metrics import ConfusionRatio
from wsss_core.models.backbones import CompactCNN
from wsss_core.models.eps import EPSClassifier, eps_background_fn, eps_cam_fn
from wsss_core.saliency import (find_saliency_dirs, overlap_ratio, predicted_saliency, region_masks, saliency_by_region,
                                saliency_error_masks, saliency_quality, select_maps)
from wsss_core.stages import cam as cam_stage
from wsss_core.stages import eps as stage

# ------------------------------------------------------------------------------------------------
# the hand-made 2×2 example: C = 3 classes + background (last), classes 1 and 2 present, 3 absent
# ------------------------------------------------------------------------------------------------
#   pixel:        a    b        class 1 is confident on a, c (both salient): overlap 2/(2 + 4e-4) > τ → fg
#                 c    d        class 2 is confident on b only (not salient): overlap 0 ≤ τ → folded into bg
P1 = [[0.7, 0.1], [0.6, 0.2]]
P2 = [[0.1, 0.6], [0.1, 0.1]]
P3 = [[0.1, 0.1], [0.1, 0.1]]   # absent class: neither foreground nor background
PBG = [[0.1, 0.2], [0.2, 0.6]]
S = [[1.0, 0.0], [0.8, 0.0]]
LABEL = [[1.0, 1.0, 0.0]]


def _example():
    probs = torch.tensor([[P1, P2, P3, PBG]], dtype=torch.float64)           # (1, 4, 2, 2), sums to 1 per pixel
    maps = torch.log(probs)                                                   # softmax(log P) = P
    return maps, torch.tensor([S], dtype=torch.float64), torch.tensor(LABEL, dtype=torch.float64)


def test_example_is_a_distribution():
    maps, _, _ = _example()
    assert torch.allclose(F.softmax(maps, 1).sum(1), torch.ones(1, 2, 2, dtype=torch.float64))


def test_eps_loss_on_the_hand_made_2x2_example():
    maps, sal, label = _example()
    logits = torch.tensor([[2.0, 0.0, -1.0, 5.0]], dtype=torch.float64)
    loss, parts = eps_loss(maps, sal, label, logits=logits, tau=0.4, lam=0.5, return_parts=True)
    # overlap ratios: class 1 → 2 / (2 + 4·1e-4), class 2 → 0 / (1 + 4e-4), class 3 → 0
    assert parts["overlap"][0].tolist() == pytest.approx([2 / 2.0004, 0.0, 0.0], abs=1e-12)
    assert parts["fg"].tolist() == [[True, False, False]]       # class 2 fails the overlap test ...
    assert parts["bg"].tolist() == [[False, True, False]]       # ... and is folded into the background
    # M_fg = P1; M_bg = P_bg + P2 = [[.2, .8], [.3, .7]]; Ŝ = ½ M_fg + ½ (1 − M_bg) = [[.75, .15], [.65, .25]]
    np.testing.assert_allclose(parts["m_fg"][0, 0].numpy(), P1, atol=1e-12)
    np.testing.assert_allclose(parts["m_bg"][0, 0].numpy(), [[0.2, 0.8], [0.3, 0.7]], atol=1e-12)
    np.testing.assert_allclose(parts["s_hat"][0, 0].numpy(), [[0.75, 0.15], [0.65, 0.25]], atol=1e-12)
    # L_sal = mean((Ŝ − S)²) = (.0625 + .0225 + .0225 + .0625) / 4
    assert float(parts["loss_sal"]) == pytest.approx(0.0425, abs=1e-12)
    # L_cls on the 3 foreground logits (2, 0, −1) with y = (1, 1, 0); the background logit 5 is ignored
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731  softplus: −log σ(−z)
    l_cls = (sp(-2.0) + sp(0.0) + sp(-1.0)) / 3
    assert float(parts["loss_cls"]) == pytest.approx(l_cls, abs=1e-12)
    assert float(loss) == pytest.approx(l_cls + 0.0425, abs=1e-12)
    loss_bg, _ = eps_loss(maps, sal, label, logits=logits * torch.tensor([[1, 1, 1, -3.0]], dtype=torch.float64),
                          return_parts=True)
    assert float(loss_bg) == pytest.approx(float(loss), abs=1e-15)


def test_eps_loss_strategies_and_lambda():
    maps, sal, label = _example()
    # naive: both present classes are foreground → M_fg = P1 + P2, M_bg = P_bg, Ŝ = [[.85, .75], [.75, .35]]
    _, naive = eps_loss(maps, sal, label, strategy="naive", return_parts=True)
    np.testing.assert_allclose(naive["s_hat"][0, 0].numpy(), [[0.85, 0.75], [0.75, 0.35]], atol=1e-12)
    assert float(naive["loss_sal"]) == pytest.approx((0.0225 + 0.5625 + 0.0025 + 0.1225) / 4, abs=1e-12)
    # predefined: class 1 (channel 0) always background, class 2 always foreground, whatever the overlap
    _, pre = eps_loss(maps, sal, label, strategy="predefined", predefined=[0], return_parts=True)
    assert pre["fg"].tolist() == [[False, True, False]] and pre["bg"].tolist() == [[True, False, False]]
    # λ = 1: Ŝ = M_fg; λ = 0: Ŝ = 1 − M_bg = M_fg + P_absent
    _, l1 = eps_loss(maps, sal, label, lam=1.0, return_parts=True)
    _, l0 = eps_loss(maps, sal, label, lam=0.0, return_parts=True)
    np.testing.assert_allclose(l1["s_hat"][0, 0].numpy(), P1, atol=1e-12)
    np.testing.assert_allclose(l0["s_hat"][0, 0].numpy(), np.add(P1, P3), atol=1e-12)
    # τ above the class-1 overlap: nothing is foreground, Ŝ = ½ (P3) everywhere... = ½ (1 − P_bg − P1 − P2)
    _, none = eps_loss(maps, sal, label, tau=0.99999, return_parts=True)
    assert none["fg"].sum() == 0
    np.testing.assert_allclose(none["s_hat"][0, 0].numpy(), 0.5 * np.asarray(P3), atol=1e-12)


def test_eps_loss_gradient_and_errors():
    maps, sal, label = _example()
    maps = maps.clone().requires_grad_(True)
    loss = eps_loss(maps, sal, label)
    loss.backward()
    loss = loss.detach()
    assert maps.grad is not None and torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0
    # the saliency may come at image size: it is resized with nearest interpolation (each pixel → 2×2)
    big = sal.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert float(eps_loss(maps.detach(), big, label)) == pytest.approx(float(loss), abs=1e-12)
    with pytest.raises(ValueError, match="label must be"):
        eps_loss(maps, sal, torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        eps_loss(maps, sal * 255, label)
    with pytest.raises(ValueError, match="unknown map-selection"):
        eps_loss(maps, sal, label, strategy="random")
    with pytest.raises(ValueError, match="needs the list"):
        eps_loss(maps, sal, label, strategy="predefined")


def test_overlap_ratio_rounding_and_epsilon():
    # class 0: one pixel above 0.5 and salient → 1 / (1 + 4·1e-4)
    # class 1: exactly 0.5 rounds to 0 (half to even) and 0.49 too → no confident pixel → 0
    # class 2: two confident pixels, one salient (S = 0.51 → 1), one not (S = 0.5 → 0) → 1 / (2 + 4e-4)
    p = torch.tensor([[[[0.9, 0.2], [0.1, 0.0]],
                       [[0.5, 0.49], [0.0, 0.5]],
                       [[0.6, 0.0], [0.0, 0.7]]]])
    s = torch.tensor([[[0.51, 0.0], [1.0, 0.5]]])
    o = overlap_ratio(p, s)
    assert o.shape == (1, 3)
    assert o[0].tolist() == pytest.approx([1 / 1.0004, 0.0, 1 / 2.0004], abs=1e-6)
    with pytest.raises(ValueError):
        overlap_ratio(p, torch.zeros(1, 3, 3))


def test_select_maps_and_predicted_saliency_identity():
    label = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]])
    ov = torch.tensor([[0.9, 0.9, 0.4, 0.41], [0.0, 0.1, 0.9, 0.9]])
    fg, bg = select_maps(label, ov, tau=0.4)
    assert fg.tolist() == [[True, False, False, True], [False, False, False, False]]   # O > τ is strict
    assert (fg | bg).tolist() == label.bool().tolist() and not (fg & bg).any()
    fg_n, bg_n = select_maps(label, None, strategy="naive")
    assert fg_n.tolist() == label.bool().tolist() and not bg_n.any()
    with pytest.raises(ValueError):
        select_maps(label, ov, strategy="predefined", predefined=[7])
    # 1 − M_bg = M_fg + Σ_absent P_c for any probabilities
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(2, 5, 3, 4, generator=g), 1)
    s_hat, m_fg, m_bg = predicted_saliency(probs, fg, bg, lam=0.3)
    absent = (probs[:, :4] * (~label.bool()).float()[:, :, None, None]).sum(1, keepdim=True)
    assert torch.allclose(1 - m_bg, m_fg + absent, atol=1e-6)
    assert torch.allclose(s_hat, 0.3 * m_fg + 0.7 * (1 - m_bg))


# ------------------------------------------------------------------------------------------------
# model and pseudo-mask maps
# ------------------------------------------------------------------------------------------------
def test_eps_classifier_background_last_and_maps():
    torch.manual_seed(0)
    model = EPSClassifier(CompactCNN(width=8), num_classes=4).eval()
    x = torch.randn(2, 3, 32, 40)
    logits, maps = model(x)
    assert logits.shape == (2, 5) and maps.shape == (2, 5, 4, 5) and model.background_index == 4
    assert torch.allclose(logits, maps.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(model.classify(x), logits[:, :4])
    probs = F.softmax(maps, 1)
    assert torch.allclose(eps_cam_fn(model, x), probs[:, :4], atol=1e-6)
    assert torch.allclose(eps_background_fn(model, x), probs[:, 4:], atol=1e-6)
    # pseudo-mask maps: softmax at feature resolution, bilinear up, flip back, sum, × label, max-norm
    label = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    got = stage.eps_maps(model, x, label, scales=(1.0,), flip=True)
    up = lambda t: F.interpolate(t, size=(32, 40), mode="bilinear", align_corners=False)  # noqa: E731
    want = up(eps_cam_fn(model, x)) + up(eps_cam_fn(model, x.flip(-1))).flip(-1)
    want = want * label[:, :, None, None]
    want = want / (want.amax(dim=(2, 3), keepdim=True) + 1e-5)
    assert torch.allclose(got, want, atol=1e-5)
    assert (got[label == 0] == 0).all() and got.max() <= 1.0
    with pytest.raises(ValueError):
        model(torch.randn(2, 1, 8, 8))


# ------------------------------------------------------------------------------------------------
# saliency sources, quality and errors
# ------------------------------------------------------------------------------------------------
def test_saliency_sources_and_quality(make_voc_tree):
    tree = make_voc_tree(saliency=True)
    assert list(find_saliency_dirs(tree.base)) == ["Saliency"]
    # the tree's saliency is the exact foreground, except pixel (0, 0) = 0.5 (background in every image)
    q = saliency_quality(tree.base, "train", "Saliency")
    assert q["n"] == 3
    # per image: one error of 128/255 (0.5 stored as 8 bits) at (0, 0), unless (0, 0) is an ignore pixel
    # (img_c's object touches the corner: its 255 ring covers it); MAE is the mean over images
    errs = [(128 / 255) / int((m != 255).sum()) if m[0, 0] == 0 else 0.0 for m in tree.masks.values()]
    assert sorted(e == 0.0 for e in errs) == [False, False, True]
    assert q["mae"] == pytest.approx(np.mean(errs), abs=1e-9)
    assert q["max_f"] == pytest.approx(1.0, abs=1e-9)   # thresholds above 0.502 separate fg perfectly
    fg = sum(int(((m > 0) & (m != 255)).sum()) for m in tree.masks.values())
    assert q["recall_at"] == 1.0 and q["precision_at"] == pytest.approx(fg / (fg + 2))   # S ≥ 0.5 adds 2 px
    # a folder of PNGs under another name is found too
    write_gray_png(tree.root / "SALImages" / "img_a.png", np.zeros((20, 30), np.float32))
    assert list(find_saliency_dirs(tree.base)) == ["SALImages", "Saliency"]


def test_saliency_error_masks_hand_made():
    gt = np.zeros((6, 10), np.uint8)
    gt[1:4, 1:4] = 1            # object, salient only on its first row
    gt[0, 0] = 255
    sal = np.zeros((6, 10), np.float32)
    sal[1, 1:4] = 0.9
    sal[4, 2] = 0.7             # 1 px below the object: blurred outline
    sal[3:6, 8:10] = 0.6        # far from the object: a salient distractor
    e = saliency_error_masks(sal, gt, threshold=0.5, near=3.0)
    assert int(e["missed"].sum()) == 6 and not e["missed"][1].any()
    assert int(e["false_near"].sum()) == 1 and e["false_near"][4, 2]
    assert int(e["false_far"].sum()) == 6 and e["false_far"][3:6, 8:10].all()


def test_saliency_by_region_hand_made(make_voc_tree):
    # one boat (rows 1-2, cols 1-2) whose badge is pixel (1, 1); water = row 3 and (2, 0); rails = (2, 3), (2, 4)
    items = {"im": {"size": (4, 5), "objects": [(1, (1, 1, 3, 3), False)]}}
    tree = make_voc_tree(items, class_names=["background", "boat"], ignore_border=False)
    part = np.zeros((4, 5), np.uint8)
    part[1, 1] = 1
    ctx = np.zeros((4, 5), np.uint8)
    ctx[3, :] = 1
    ctx[2, 0] = 1
    ctx[2, 3:] = 2
    tree.write_label("PartMask", "im", part)
    tree.write_label("ContextMask", "im", ctx)
    sal = np.zeros((4, 5), np.float32)
    sal[1, 1], sal[1, 2], sal[2, 1] = 1.0, 204 / 255, 51 / 255      # badge salient; body 0.8, 0.2, 0
    sal[3, 0] = 153 / 255                                              # one water pixel at 0.6
    sal[2, 3] = 1.0                                                    # one of two rails pixels
    sal[0, 0] = 102 / 255                                              # other background: one pixel at 0.4
    write_gray_png(tree.root / "Saliency" / "im.png", sal)
    masks = region_masks(tree.masks["im"], part, ctx, {"water": 1, "rails": 2})
    assert {k: int(m.sum()) for k, m in masks.items()} == {"part": 1, "body": 3, "water": 6, "rails": 2,
                                                           "other background": 8}
    assert sum(m.astype(int) for m in masks.values()).max() == 1        # disjoint
    r = saliency_by_region(tree.base, "train", "Saliency", context_pairs={"boat/water": (1, 1), "train/rails": (2, 2)})
    want = {"part": (1.0, 1.0), "body": (1 / 3, 1 / 3), "water": (0.1, 1 / 6), "rails": (0.5, 0.5),
            "other background": (0.05, 0.0)}
    for k, (mean, salient) in want.items():
        assert r[k]["mean"] == pytest.approx(mean, abs=1e-6) and r[k]["salient"] == pytest.approx(salient, abs=1e-9), k
    assert r["water"]["pixels"] == 6
    # without part and context masks: one object region and the rest
    plain = region_masks(tree.masks["im"])
    assert set(plain) == {"object", "other background"} and int(plain["other background"].sum()) == 16
    with pytest.raises(ValueError, match="context_mask"):
        region_masks(tree.masks["im"], context_regions={"water": 1})


# ------------------------------------------------------------------------------------------------
# the confusion ratio on a hand-made confusion case
# ------------------------------------------------------------------------------------------------
def test_confusion_ratio_hand_made():
    # boat = 1 on water (context id 1). 4 boat pixels, 3 found; 6 water pixels, 2 labelled boat → m/t = 2/3
    gt = np.array([[0, 0, 0, 0, 0],
                   [0, 1, 1, 0, 0],
                   [0, 1, 1, 0, 0],
                   [0, 0, 0, 0, 255]])
    ctx = np.array([[0, 0, 0, 0, 0],
                    [0, 0, 0, 0, 0],
                    [1, 0, 0, 1, 1],
                    [1, 1, 1, 1, 1]])
    pred = np.array([[0, 0, 0, 0, 0],
                     [0, 1, 1, 0, 0],
                     [1, 0, 1, 0, 0],
                     [0, 1, 0, 0, 1]])    # the 1 at (3, 4) lies on an ignore pixel: not counted
    pairs = {"boat/water": (1, 1)}
    cr = ConfusionRatio().update(pred, gt, ctx, pairs)
    assert cr.ratios()["boat/water"] == pytest.approx(2 / 3)
    assert cr.leak()["boat/water"] == pytest.approx(2 / 7)    # 7 valid water pixels
    ev = LabelMapEvaluator(1, pairs, ["background", "boat"]).update(pred, gt, context_mask=ctx)
    s = ev.summary()
    assert s["confusion_ratio"]["boat/water"] == pytest.approx(2 / 3)
    assert s["context_leak"] == pytest.approx(2 / 7)
    # a prediction that keeps off the water has ratio 0; one that also finds the 4th boat pixel 2/4
    assert ConfusionRatio().update(np.where(ctx == 1, 0, pred), gt, ctx, pairs).ratios()["boat/water"] == 0.0
    better = pred.copy()
    better[2, 2] = better[2, 1] = 1
    assert ConfusionRatio().update(better, gt, ctx, pairs).ratios()["boat/water"] == pytest.approx(2 / 4)


def test_stage_evaluate_confusion_ratio_from_maps(make_voc_tree, tmp_path):
    """The stage's evaluation path (maps on disk → constant background → evaluator) on the hand-made case."""
    items = {"im": {"size": (4, 5), "objects": [(1, (1, 1, 3, 3), False)]}}
    tree = make_voc_tree(items, class_names=["background", "boat"], ignore_border=False)
    ctx = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 1, 1], [1, 1, 1, 1, 1]], np.uint8)
    tree.write_label("ContextMask", "im", ctx)
    tree.write_label("PartMask", "im", np.zeros((4, 5), np.uint8))
    boat = np.array([[0, 0, 0, 0, 0], [0, 0.9, 0.8, 0, 0], [0.5, 0.1, 0.7, 0, 0], [0, 0.5, 0, 0, 0.1]], np.float32)
    save_cams(tmp_path / "maps" / "im.npz", boat[None], np.array([1.0]))
    cfg = stage.EPSStageConfig(thresholds=(0.2, 0.55), cache_images=False)
    ev = stage.evaluation_dataset(tree.base, "train", cfg)
    rep = stage.evaluate(tmp_path / "maps", ev, cfg, {"boat/water": (1, 1)}, threshold=0.2)
    assert rep["confusion_ratio"]["boat/water"] == pytest.approx(2 / 3)   # water (2,0), (3,1) labelled boat
    rep = stage.evaluate(tmp_path / "maps", ev, cfg, {"boat/water": (1, 1)})   # sweep: 0.55 drops the water
    assert rep["best_threshold"] == 0.55 and rep["confusion_ratio"]["boat/water"] == 0.0


def test_saliency_error_study_hand_made(make_voc_tree, tmp_path):
    """Missed object pixels, salient distractors and the blurred outline, counted for two label makers."""
    items = {"im": {"size": (6, 10), "objects": [(1, (1, 1, 4, 4), False)]}}     # boat: rows 1-3, cols 1-3
    tree = make_voc_tree(items, class_names=["background", "boat"], ignore_border=False)
    sal = np.zeros((6, 10), np.float32)
    sal[1, 1:4] = 0.9          # only the boat's first row is salient: 6 missed px, mean S 0.3 → a missed object
    sal[4, 2] = 0.7            # blurred outline, 1 px below the boat
    sal[3:6, 8:10] = 0.6       # a salient distractor far from the boat: 6 px
    write_gray_png(tree.root / "Saliency" / "im.png", sal)
    whole = np.zeros((6, 10), np.float32)
    whole[1:4, 1:4] = 1.0      # "A" labels the whole boat and half of the distractor
    whole[3:6, 8] = 0.6
    part = np.zeros((6, 10), np.float32)
    part[1, 1:4] = 1.0         # "B" labels the salient row only
    save_cams(tmp_path / "A" / "im.npz", whole[None], np.array([1.0]))
    save_cams(tmp_path / "B" / "im.npz", part[None], np.array([1.0]))
    ev = stage.evaluation_dataset(tree.base, "train", None, saliency_dir="Saliency")
    st = stage.saliency_error_study({"A": (tmp_path / "A", 0.5), "B": (tmp_path / "B", 0.5)}, ev)
    assert st["regions"] == {"missed": 6, "false_far": 6, "false_near": 1, "objects_missed": 1}
    assert st["A"] == {"missed_recall": 1.0, "false_far_fg": 0.5, "false_near_fg": 0.0, "objects_missed_found": 1.0}
    assert st["B"] == {"missed_recall": 0.0, "false_far_fg": 0.0, "false_near_fg": 0.0, "objects_missed_found": 0.0}
    assert st["per_image"]["A"] == {"missed_ok": [6], "far_fg": [3], "objects_found": [1]}
    assert st["per_image"]["missed"] == [6] and st["per_image"]["objects_missed"] == [1]
    with pytest.raises(KeyError, match="saliency"):
        stage.saliency_error_study({"A": (tmp_path / "A", 0.5)}, stage.evaluation_dataset(tree.base, "train", None))


def test_lesson_helpers_example_table_and_metrics(make_voc_tree, tmp_path):
    """Notebook 05's helpers on the hand-made boat/water case: the context-leak example, the report table
    and the flat metrics (the baseline keys)."""
    items = {"im": {"size": (4, 5), "objects": [(1, (1, 1, 3, 3), False)]}}
    tree = make_voc_tree(items, class_names=["background", "boat"], ignore_border=False)
    ctx = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 1, 1], [1, 1, 1, 1, 1]], np.uint8)
    tree.write_label("ContextMask", "im", ctx)
    tree.write_label("PartMask", "im", np.zeros((4, 5), np.uint8))
    boat = np.array([[0, 0, 0, 0, 0], [0, 0.9, 0.8, 0, 0], [0.5, 0.1, 0.7, 0, 0], [0, 0.5, 0, 0, 0.1]], np.float32)
    save_cams(tmp_path / "maps" / "im.npz", boat[None], np.array([1.0]))
    cfg = stage.EPSStageConfig(thresholds=(0.2, 0.55), cache_images=False)
    ev = stage.evaluation_dataset(tree.base, "train", cfg)
    pairs = {"boat/water": (1, 1)}
    ex = stage.context_leak_example(tmp_path / "maps", 0.2, ev, pairs)
    assert ex == {"index": 0, "class_id": 1, "context_id": 1, "leak": 2}
    assert stage.context_leak_example(tmp_path / "maps", 0.2, ev, {})["leak"] == 0
    maps, label, pred = stage.pseudo_label(tmp_path / "maps", "im", 0.2)
    assert maps.shape == (1, 4, 5) and label.tolist() == [1.0] and pred[2, 0] == 1 and pred[0, 0] == 0
    rep = stage.evaluate(tmp_path / "maps", ev, cfg, pairs, fixed_threshold=0.2, boundary_tolerance=1.0)
    table = stage.report_table({"CAM": rep, "EPS": rep}, pairs)
    assert table.splitlines()[0] == "| measure | CAM, θ* | CAM, θ = 0.2 | EPS, θ* | EPS, θ = 0.2 |"
    assert "| confusion ratio boat/water ↓ | 0.000 | 0.667 | 0.000 | 0.667 |" in table
    m = stage.comparison_metrics(rep, rep)
    assert m["cam_miou"] == rep["miou"] and m["eps_confusion_ratio_fixed_per_pair"]["boat/water"] == pytest.approx(2 / 3)
    assert m["fixed_threshold"] == 0.2 and m["eps_boundary_f"] == rep["boundary"]["f"]
    json.dumps(m)


def test_labels_from_maps_is_the_cams_to_labels_rule():
    from wsss_core.cams import cams_to_labels

    rng = np.random.default_rng(0)
    for k in range(6):
        label = rng.integers(0, 2, 4).astype(np.float32)
        label[k % 4] = 1.0
        cams = rng.random((4, 7, 9)).astype(np.float32).round(1) * label[:, None, None]   # ties, values = θ
        for t in (0.0, 0.2, 0.5):
            np.testing.assert_array_equal(stage.labels_from_maps(cams, label, t), cams_to_labels(cams, label, threshold=t))
    assert (stage.labels_from_maps(np.ones((3, 2, 2), np.float32), np.zeros(3), 0.2) == 0).all()


# ------------------------------------------------------------------------------------------------
# config and stage
# ------------------------------------------------------------------------------------------------
def test_presets_and_cam_baseline_identity():
    for p in ("smoke", "tutorial", "paper"):
        cfg = stage.config_for_profile(p)
        assert (cfg.tau, cfg.lam, cfg.strategy, cfg.eval_threshold) == (0.4, 0.5, "adaptive", 0.2)
        assert stage.EPSStageConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    paper = stage.config_for_profile("paper")
    assert paper.train.lr == 0.01 and paper.train.weight_decay == 5e-4 and paper.train.batch_size == 8
    assert paper.crop_size == 448 and paper.long_side == (256, 512) and paper.color_jitter == (0.3, 0.3, 0.3, 0.1)
    # the tutorial's CAM baseline is notebook 01's classifier: same checkpoint fingerprint, same scales
    data = profiles.DataSpec("toy", profiles.default_data_dir() / "toy" / "tutorial", manifest=None)
    for p in ("smoke", "tutorial"):
        base = stage.cam_baseline_config(stage.config_for_profile(p))
        nb01 = profiles.cam_config(p)
        assert cam_stage.checkpoint_dir_for(base, "x", data) == cam_stage.checkpoint_dir_for(nb01, "x", data)
        assert base.cam_scales == nb01.cam_scales
    # EPS's own checkpoint folder changes with τ, λ, the strategy and the saliency source
    cfg = stage.config_for_profile("tutorial")
    names = {stage.checkpoint_dir_for(c, "x").name for c in
             (cfg, cfg.replace(tau=0.5), cfg.replace(lam=0.3), cfg.replace(strategy="naive"),
              cfg.replace(saliency_dir="SaliencyUnsupervised"))}
    assert len(names) == 5
    assert stage.checkpoint_dir_for(cfg.replace(eval_threshold=0.3), "x") == stage.checkpoint_dir_for(cfg, "x")
    # the tutorial trains the study's network (same checkpoint), only without the per-epoch validation curve
    study = stage.config_for_profile("study")
    assert study.val_every_epoch and not cfg.val_every_epoch
    assert stage.checkpoint_dir_for(cfg, "x") == stage.checkpoint_dir_for(study, "x")
    with pytest.raises(ValueError):
        stage.EPSStageConfig(strategy="predefined")
    with pytest.raises(ValueError):
        stage.EPSStageConfig(lam=1.5)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from wsss_core.data.toyscenes import ToySceneConfig, context_pairs, ensure_toyscenes

    root = tmp_path_factory.mktemp("toy_eps")
    man = ensure_toyscenes(root, ToySceneConfig(n_train=24, n_val=8), workers=1, progress=False)
    return profiles.DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)


@pytest.mark.slow
def test_stage_end_to_end_and_idempotent(toy, tmp_path, monkeypatch):
    cfg = stage.EPSStageConfig(
        backbone_kwargs={"width": 8, "output_stride": 8}, cam_scales=(1.0,), cam_batch_size=8,
        train=engine.TrainConfig(epochs=1, batch_size=8, lr=3e-3, optimizer="adam", schedule="onecycle",
                                 progress=False, desc="eps"))
    res = stage.run(cfg, toy, tmp_path / "eps", progress=False)
    assert (res.checkpoint_dir / engine.CHECKPOINT_NAME).is_file()
    hist = res.history
    assert len(hist.iters) == 3 and all(k in hist.iters[0] for k in ("loss", "loss_cls", "loss_sal", "fg_share"))
    assert all(abs(r["loss"] - r["loss_cls"] - r["loss_sal"]) < 1e-5 for r in hist.iters)
    ids = res.train_dataset.ids
    assert sorted(p.stem for p in res.cam_dir.glob("*.npz")) == sorted(ids)
    assert sorted(p.stem for p in res.label_dir.glob("*.png")) == sorted(ids)
    cams, label = load_cams(res.cam_dir / f"{ids[0]}.npz")
    assert cams.shape == (6, 96, 96) and (cams[label == 0] == 0).all() and cams.max() <= 1.0 + 1e-3
    # notebook 06 reads res.label_dir: class indices of the maps at the sweep's best threshold
    for iid in ids[:3]:
        cams, label = load_cams(res.cam_dir / f"{iid}.npz")
        np.testing.assert_array_equal(read_label_png(res.label_dir / f"{iid}.png"),
                                      stage.labels_from_maps(cams, label, res.report["best_threshold"]))
    rep = res.report
    assert rep["fixed"]["best_threshold"] == 0.2 and set(rep["confusion_ratio"]) == {"boat/water", "train/rails"}
    assert 0.0 <= rep["boundary"]["f"] <= 1.0 and rep["boundary"]["n"] == len(ids)
    assert rep["miou"] == pytest.approx(max(v for v in rep["sweep"].values() if v is not None), abs=1e-6)

    # a second run reloads everything: no training step, no new maps, the same report
    def no_training(*a, **k):
        raise AssertionError("the stage retrained a finished checkpoint")

    monkeypatch.setattr(stage, "make_step", lambda *a, **k: no_training)
    mtimes = sorted(p.stat().st_mtime_ns for p in res.cam_dir.glob("*.npz"))
    res2 = stage.run(cfg, toy, tmp_path / "eps", progress=False)
    assert sorted(p.stat().st_mtime_ns for p in res.cam_dir.glob("*.npz")) == mtimes
    assert res2.report == res.report
    monkeypatch.undo()

    # the saliency-error study on the same maps: shares in [0, 1], regions counted
    ev = stage.evaluation_dataset(toy.root, "train", cfg, saliency_dir="Saliency")
    st = stage.saliency_error_study({"EPS": (res.cam_dir, 0.2)}, ev)
    assert st["regions"]["missed"] > 0
    for v in st["EPS"].values():
        assert math.isnan(v) or 0.0 <= v <= 1.0


@pytest.mark.slow
def test_paper_profile_code_path_on_a_small_voc_tree(make_voc_tree, tmp_path):
    """The ``paper`` preset (ResNet-50 at stride 8, SGD + poly, resize-long + colour jitter + crop, images of
    different sizes → batch 1 at inference, a user-provided saliency folder) runs end to end on a tiny
    VOC-like tree. Shrunk only in size (crop 48, 1 epoch; no ImageNet weights offline)."""
    items = {f"im{i}": {"size": (36 + 6 * i, 52 - 4 * i), "objects": [(1 + 4 * i, (4, 5, 26, 28), False)]}
             for i in range(4)}
    tree = make_voc_tree(items, nest="VOCdevkit", splits={"train": list(items), "val": list(items)[:2]}, saliency=True)
    cfg = stage.config_for_profile("paper")
    assert cfg.backbone == "resnet50" and cfg.backbone_kwargs["output_stride"] == 8 and cfg.cam_batch_size == 1
    cfg = cfg.replace(backbone_kwargs={**cfg.backbone_kwargs, "weights": None, "freeze_bn": False}, crop_size=48,
                      long_side=(40, 56), cam_scales=(1.0, 0.5),
                      train=cfg.train.replace(epochs=1, batch_size=2, num_workers=0, progress=False))
    data = profiles.DataSpec("voc", tree.root)
    res = stage.run(cfg, data, tmp_path / "eps", progress=False)
    assert res.train_dataset.num_classes == 20 and len(res.history.iters) == 2
    for i, iid in enumerate(res.train_dataset.ids):
        cams, label = load_cams(res.cam_dir / f"{iid}.npz")
        assert cams.shape == (20,) + items[iid]["size"] and label.sum() == 1 and label[4 * i] == 1
    assert 0.0 <= res.report["miou"] <= 1.0 and "confusion_ratio" not in res.report
