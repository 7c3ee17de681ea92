"""EDAM (wsss_core.models.edam, wsss_core.stages.edam): the DA normalisation, the pair sampler, the
collaborative multi-attention module, the saliency override, and the stage end to end on a tiny tree."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_core import engine
from wsss_core.cams import load_cams
from wsss_core.models.backbones import CompactCNN
from wsss_core.models.edam import (CollaborativeMultiAttention, DALayer, EDAMNet, MultiHeadSelfAttention,
                                   SinusoidalPositionalEncoding, class_specific_features, da_normalize,
                                   da_normalize_without_sink, edam_loss, group_targets, mean_cross_image_share)
from wsss_core.stages import edam as stage


# --------------------------------------------------------------------------------------------------
# DA layer
# --------------------------------------------------------------------------------------------------
def test_da_normalize_hand_computed():
    v = torch.zeros(1, 3, 1, 3)
    v[0, :, 0, 0] = torch.tensor([3.0, -4.0, 0.0])      # norm 5 → (0.6, 0.8, 0)
    v[0, :, 0, 1] = torch.tensor([-1.0, -1.0, -1.0])    # → 1/√3 each, sign dropped
    # pixel 2 stays all zero: no division by zero, stays zero
    m = da_normalize(v)
    assert torch.allclose(m[0, :, 0, 0], torch.tensor([0.6, 0.8, 0.0]))
    assert torch.allclose(m[0, :, 0, 1], torch.full((3,), 1 / math.sqrt(3)))
    assert torch.equal(m[0, :, 0, 2], torch.zeros(3))
    with pytest.raises(ValueError):
        da_normalize(torch.zeros(3, 4, 5))


def test_da_normalize_without_sink_hand_computed():
    v = torch.zeros(1, 3, 1, 3)
    v[0, :, 0, 0] = torch.tensor([3.0, -4.0, 12.0])     # classes (3, −4), sink 12 → (0.6, 0.8), the sink ignored
    v[0, :, 0, 1] = torch.tensor([0.0, 0.0, 5.0])       # only the sink: the classes stay 0 (no division by zero)
    v[0, :, 0, 2] = torch.tensor([0.1, 0.0, 9.0])       # faint, one class: 1 without the sink (0.011 with it)
    m = da_normalize_without_sink(v)
    assert m.shape == (1, 2, 1, 3)
    assert torch.allclose(m[0, :, 0], torch.tensor([[0.6, 0.0, 1.0], [0.8, 0.0, 0.0]]))
    assert float(da_normalize(v)[0, 0, 0, 2]) == pytest.approx(0.1 / math.hypot(0.1, 9.0))
    with pytest.raises(ValueError):
        da_normalize_without_sink(torch.zeros(1, 1, 2, 2))


def test_da_layer_unit_norm_and_non_negative():
    torch.manual_seed(0)
    layer = DALayer(16, num_classes=5)
    m = layer(torch.randn(2, 16, 7, 9))
    assert m.shape == (2, 6, 7, 9)                       # C + 1 channels: 5 classes + the sink
    assert (m >= 0).all() and (m <= 1).all()
    assert torch.allclose(m.pow(2).sum(1), torch.ones(2, 7, 9), atol=1e-5)
    assert layer.conv.bias is None and layer.conv.kernel_size == (3, 3)


def test_class_specific_features():
    z = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    m = torch.rand(2, 4, 2, 2)
    idx = torch.tensor([[2, 0], [1, 2]])
    f = class_specific_features(z, m, idx)
    assert f.shape == (2, 2, 3, 2, 2)
    assert torch.equal(f[0, 0], z[0] * m[0, 2])
    assert torch.equal(f[1, 0], z[1] * m[1, 1])
    with pytest.raises(ValueError, match="sink"):
        class_specific_features(z, m, torch.tensor([3]))   # channel C is the sink, not a class


# --------------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------------
def _labels(n=60, c=5, seed=3):
    rng = np.random.default_rng(seed)
    lab = (rng.random((n, c)) < 0.3).astype(np.float32)
    lab[0] = 0                 # no class: never an anchor
    lab[1] = 0
    lab[1, c - 1] = 1          # the only image of the last class: cannot be paired through it
    lab[2:, c - 1] = 0
    return lab


def test_pair_sampler_shares_a_class_and_is_seeded():
    lab = _labels()
    p = stage.sample_pairs(lab, seed=7)
    assert p.dtype == np.int64 and p.shape[1] == 3
    a, b, c = p.T
    assert (a != b).all()
    assert (lab[a, c] == 1).all() and (lab[b, c] == 1).all()          # every pair shares its class
    eligible = [i for i in range(len(lab)) if (lab[i, :-1] > 0).any()]
    assert a.tolist() == eligible                                     # each eligible image anchors once
    assert np.array_equal(p, stage.sample_pairs(torch.from_numpy(lab), seed=7))   # deterministic
    q = stage.sample_pairs(lab, seed=8)
    assert q.shape == p.shape and not np.array_equal(p, q)            # another seed: other partners
    assert not np.array_equal(p, stage.sample_pairs(lab, seed=7, epoch=1))
    with pytest.raises(ValueError, match="share"):
        stage.sample_pairs(np.eye(4))


def test_pair_class_list():
    a = np.array([1, 0, 0, 1, 0, 0], np.float32)
    b = np.array([0, 0, 0, 1, 0, 1], np.float32)
    full = stage.pair_class_list(a, b, rng=np.random.default_rng(0))
    assert full[:3].tolist() == [0, 3, 5] and sorted(full.tolist()) == list(range(6))
    assert stage.pair_class_list(a, b, 2).tolist() == [0, 3]          # truncated: present classes first
    assert stage.pair_class_list(a, b, 4)[:3].tolist() == [0, 3, 5]
    with pytest.raises(ValueError):
        stage.pair_class_list(a, b, 7)


# --------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------
def test_positional_encoding_values():
    pe = SinusoidalPositionalEncoding(8, max_len=10)(3)
    assert pe.shape == (3, 8)
    assert torch.allclose(pe[0], torch.tensor([0.0, 1.0] * 4))
    assert math.isclose(pe[1, 0].item(), math.sin(1.0), abs_tol=1e-6)
    assert math.isclose(pe[1, 3].item(), math.cos(1.0 / 10000 ** (2 / 8)), abs_tol=1e-6)
    with pytest.raises(ValueError):
        SinusoidalPositionalEncoding(8, max_len=10)(11)


def test_attention_weights_path_equals_fused_path():
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(8, 2, dropout=0.1).eval()
    x = torch.randn(3, 5, 8)
    y1, w = att(x, need_weights=True)
    y2, none = att(x)
    assert none is None and w.shape == (3, 2, 5, 5)
    assert torch.allclose(w.sum(-1), torch.ones(3, 2, 5), atol=1e-6)
    assert torch.allclose(y1, y2, atol=1e-5)


def test_cma_shapes_and_cross_image_attention():
    torch.manual_seed(0)
    P, G, K, d, h, w = 3, 2, 4, 8, 3, 5
    cma = CollaborativeMultiAttention(num_classes=4, d_model=d, heads=2, ffn=16, dropout=0.0).eval()
    feats = torch.randn(P, G, K, d, h, w)
    idx = torch.stack([torch.randperm(K) for _ in range(P)])
    out, att = cma(feats, idx, return_attention=True)
    assert out.shape == (P, G, K, d, h, w)
    assert sorted(att) == [0, 1, 2, 3]
    assert all(a.shape == (P, 2, G * h * w, G * h * w) for a in att.values())    # one entry per pair
    # collaborative: image 1's tokens change image 0's output...
    feats2 = feats.clone()
    feats2[:, 1] += 1.0
    out2 = cma(feats2, idx)
    assert not torch.allclose(out2[:, 0], out[:, 0])
    # ...and the same class in another slot order gives the same result (class-specific stacks)
    perm = torch.tensor([2, 0, 3, 1])
    out3 = cma(feats[:, :, perm], idx[:, perm])
    assert torch.allclose(out3, out[:, :, perm], atol=1e-5)
    with pytest.raises(ValueError):
        cma(feats, idx[:, :2])


def test_mean_cross_image_share_per_head():
    # one key dimension, two images of one token: k = (1, 0); head 0: q = (ln 3, 0) → token 0 attends
    # softmax(ln 3, 0) = (3/4, 1/4), so 1/4 to image 2; token 1 (q = 0) uniform, 1/2 to image 1 → mean 3/8.
    # head 1: q = 0 → uniform → 1/2
    q = torch.tensor([[[math.log(3.0)], [0.0]], [[0.0], [0.0]]])
    k = torch.tensor([[[1.0], [0.0]], [[1.0], [0.0]]])
    got = mean_cross_image_share(q, k, 1)
    assert got.shape == (2,)
    assert torch.allclose(got, torch.tensor([3 / 8, 1 / 2]))
    # three images, uniform attention: (G − 1) / G of it leaves each image
    assert torch.allclose(mean_cross_image_share(torch.zeros(4, 6, 3), torch.randn(4, 6, 3), 2), torch.full((4,), 2 / 3))
    with pytest.raises(ValueError):
        mean_cross_image_share(torch.zeros(1, 5, 2), torch.zeros(1, 5, 2), 2)


def test_edam_net_shapes_loss_and_ablation():
    torch.manual_seed(0)
    C = 5
    x = torch.randn(2, 2, 3, 32, 32)
    idx = torch.stack([torch.randperm(C) for _ in range(2)])
    labels = torch.zeros(2, 2, C)
    labels[0, :, 1] = labels[1, 0, 3] = labels[1, 1, 3] = labels[1, 1, 0] = 1
    net = EDAMNet(CompactCNN(8), C, d_model=8, heads=2, ffn=16, dropout=0.0).eval()
    logits = net(x, idx)
    assert logits.shape == (2, 2, C)
    t = group_targets(labels, idx)
    assert torch.equal(t[1, 1], labels[1, 1][idx[1]])
    assert torch.allclose(edam_loss(logits, t), F.binary_cross_entropy_with_logits(logits, t))
    assert net.masks(x[0]).shape == (2, C + 1, 4, 4) and net.cam(x[0]).shape == (2, C, 4, 4)
    # without CMA: logit = w_c · GAP(z ⊙ m_c), per image, independent of the other image
    abl = EDAMNet(CompactCNN(8), C, d_model=8, use_cma=False).eval()
    with torch.no_grad():
        f = abl.features(x[0])
        z, m = abl.reduce(f), abl.da(f)
        want = torch.stack([(z * m[:, c:c + 1]).mean((2, 3)) @ abl.classifier[c] for c in idx[0].tolist()], 1)
        assert torch.allclose(abl(x, idx)[0], want, atol=1e-5)
        x2 = x.clone()
        x2[:, 1] = torch.randn_like(x2[:, 1])
        assert torch.allclose(abl(x2, idx)[:, 0], abl(x, idx)[:, 0], atol=1e-6)
    assert len(net.param_groups()) == 3 and len(abl.param_groups()) == 2


# --------------------------------------------------------------------------------------------------
# saliency override
# --------------------------------------------------------------------------------------------------
def test_saliency_override_official_rule():
    masks = np.zeros((3, 1, 6), np.float32)
    masks[0, 0] = [0.5, 0.5, 1.0, 0.0, 0.3, 0.9]
    masks[1, 0] = [0.6, 0.2, 0.0, 0.0, 0.4, 0.0]   # class 2 absent from the label: never wins
    masks[2, 0] = [0.1, 0.7, 0.0, 0.0, 0.2, 0.0]
    label = np.array([1, 0, 1], np.float32)
    sal = np.array([[200, 200, 10, 200, 20, 21]], np.uint8)
    got = stage.saliency_override(masks, label, sal, theta=0.2)
    # salient → arg-max of the present classes; score 1.0 > β wins even where not salient;
    # nothing activated → background; saliency 20 ≤ 0.2·100 → background; 21 > 20 → class
    assert got.tolist() == [[1, 3, 1, 0, 0, 1]]
    assert np.array_equal(stage.saliency_override(masks, label, sal / 255.0, theta=0.2), got)
    with pytest.raises(ValueError):
        stage.saliency_override(masks, label[:2], sal)


def test_salient_and_active_labels():
    masks = np.zeros((2, 1, 5), np.float32)
    masks[0, 0] = [0.9, 0.3, 0.9, 0.2, 0.8]
    masks[1, 0] = [0.1, 0.6, 0.1, 0.4, 0.0]
    sal = np.array([[200, 200, 10, 200, 20]], np.uint8)
    # salient and active → the present class; not salient (10, and 20 ≤ 0.2·100) → 0; max 0.4 ≤ θ → 0
    got = stage.salient_and_active_labels(masks, np.array([1, 1]), sal, theta=0.5, sal_theta=0.2)
    assert got.dtype == np.int64 and got.tolist() == [[1, 2, 0, 0, 0]]
    # class 2 absent: pixel 1 only has class 1's 0.3 ≤ θ → background; a float map gives the same
    assert stage.salient_and_active_labels(masks, np.array([1, 0]), sal / 255.0, 0.5).tolist() == [[1, 0, 0, 0, 0]]
    # the official override keeps pixel 3 (salient, max mask 0.4): there the masks cannot veto the detector
    assert stage.saliency_override(masks, np.array([1, 1]), sal, theta=0.2).tolist() == [[1, 2, 0, 2, 0]]
    with pytest.raises(ValueError):
        stage.salient_and_active_labels(masks, np.array([1]), sal, 0.5)


def test_recall_at_precision_interpolates():
    curves = {"fg_precision": np.array([0.5, 0.7, np.nan, 0.9]), "fg_recall": np.array([0.9, 0.7, 0.1, 0.3])}
    assert stage.recall_at_precision(curves, 0.8) == pytest.approx(0.5)
    assert stage.recall_at_precision(curves, 0.5) == pytest.approx(0.9)
    assert math.isnan(stage.recall_at_precision(curves, 0.95))


# --------------------------------------------------------------------------------------------------
# the stage on a tiny toy tree
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from wsss_core.data.toyscenes import ToySceneConfig, context_pairs, ensure_toyscenes
    from wsss_core.profiles import DataSpec

    root = tmp_path_factory.mktemp("toy")
    man = ensure_toyscenes(root, ToySceneConfig(n_train=24, n_val=8), workers=1, progress=False)
    return DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)


def test_stage_end_to_end(toy, tmp_path, monkeypatch):
    from wsss_core.stages import cam as cam_stage

    tc = dict(epochs=1, batch_size=8, lr=1e-3, optimizer="adam", schedule="onecycle", progress=False)
    cam_cfg = cam_stage.CAMStageConfig(backbone_kwargs={"width": 8, "output_stride": 8}, cam_scales=(1.0,),
                                       train=engine.TrainConfig(desc="classifier", **tc))
    cfg = stage.config_for_profile("smoke").replace(
        backbone_kwargs={"width": 8, "output_stride": 8}, d_model=8, ffn=16, train=engine.TrainConfig(desc="edam", **tc))
    pairs = stage.pair_dataset(toy.root, "train", cfg)
    item = pairs[0]
    assert item["image"].shape == (2, 3, 96, 96) and item["label"].shape == (2, 6) and item["class_idx"].shape == (6,)
    assert (item["label"][:, int(item["common"])] == 1).all()
    first = pairs.pairs.copy()
    pairs.set_epoch(1)
    assert not np.array_equal(first, pairs.pairs)

    out = tmp_path / "runs"
    res = stage.run(cfg, toy, out / stage.NOTEBOOK, cam_cfg=cam_cfg, progress=False)
    ev = res.cam.train_dataset
    assert (res.checkpoint_dir / engine.CHECKPOINT_NAME).is_file()
    masks, label = load_cams(res.mask_dir / f"{ev.ids[0]}.npz")
    assert masks.shape == (6, 96, 96) and np.allclose(masks.max((1, 2))[label > 0], 1.0, atol=1e-3)
    assert res.report["best_threshold"] in cfg.thresholds and 0 <= res.report["miou"] <= 1
    assert len(list(res.label_dir.glob("*.png"))) == len(ev) == len(list(res.sal_label_dir.glob("*.png")))
    sal = res.sal_report["saliency"]
    assert 0 <= sal["mae"] <= 1 and 0 < sal["max_f"] <= 1 and 0 <= res.sal_report["miou"] <= 1

    # the one-pass threshold curves agree with the evaluator at the best threshold
    cv = stage.sweep_curves(res.mask_dir, ev, [0.2, res.report["best_threshold"]])
    for k in ("miou", "fg_precision", "fg_recall", "part_recall", "body_recall"):
        assert cv[k][1] == pytest.approx(res.report[k], abs=6e-7), k  # the report as stored: 6 digits

    # a second run reuses everything: no training step, same report
    def no_training(*a, **k):
        raise AssertionError("EDAM retrained a finished checkpoint")

    monkeypatch.setattr(stage, "edam_step", no_training)
    res2 = stage.run(cfg, toy, out / stage.NOTEBOOK, cam_cfg=cam_cfg, progress=False)
    assert res2.checkpoint_dir == res.checkpoint_dir
    assert res2.report["best_threshold"] == res.report["best_threshold"]
    assert res2.report["miou"] == pytest.approx(res.report["miou"], abs=1e-6)   # stored rounded to 6 digits
    # the stored evaluation is only reused for the same checkpoint, saliency threshold and sweep
    here = out / stage.NOTEBOOK
    assert stage.read_report(here, res.checkpoint_dir.name, cfg) is not None
    assert stage.read_report(here, res.checkpoint_dir.name, cfg.replace(sal_theta=0.5)) is None
    assert stage.read_report(here, res.checkpoint_dir.name, cfg.replace(thresholds=(0.5,))) is None
    assert stage.read_report(here, "another-checkpoint", cfg) is None


def test_paper_profile_model_builds_on_resnet50():
    cfg = stage.config_for_profile("paper")
    assert (cfg.d_model, cfg.heads, cfg.ffn, cfg.layers, cfg.crop_size) == (128, 2, 512, 1, 368)
    assert cfg.train.warmup_iters == 2000 and cfg.train.momentum == 0.9 and cfg.mask_scales == (1.0, 0.5, 1.5, 2.0)
    # no download in tests: the same network without ImageNet weights, on a small input
    cfg = cfg.replace(backbone_kwargs={**cfg.backbone_kwargs, "weights": None, "freeze_bn": False})
    torch.manual_seed(0)
    net = stage.build_model(cfg, 20).eval()
    with torch.no_grad():
        logits = net(torch.randn(1, 2, 3, 64, 64), torch.arange(20)[None])
        masks = net.masks(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 2, 20) and masks.shape == (1, 21, 8, 8)        # output stride 8, like ResNet-38's
    assert [g["lr_mult"] for g in net.param_groups(cfg.lr_mult_new)] == [1.0, 10.0, 1.0]
