"""Box2Seg (our reconstruction): the losses by hand, the three-head network, the stage's targets and
dataset, and a tiny end-to-end run (GrabCut → targets → train → evaluate → reuse)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_core import engine
from wsss_core import losses_box2seg as L
from wsss_core.models.segnet import SegNet, build_segnet


def _boxes_batch(seed=0, B=2, C=3, H=5, W=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C + 1, H, W, generator=g)
    box_map = torch.full((B, H, W), -1, dtype=torch.long)
    box_map[0, 1:4, 1:5] = 0
    box_map[0, 2:3, 2:4] = 1          # nested, smaller: wins
    box_map[1, 0:3, 0:3] = 2
    classes = torch.tensor([1, 3, 2])
    return logits, box_map, classes


# --------------------------------------------------------------------------------------------------
# (B2) attention-weighted loss
# --------------------------------------------------------------------------------------------------
def test_awl_equals_plain_ce_on_filled_boxes_when_attention_is_one():
    logits, box_map, classes = _boxes_batch()
    A = torch.ones(2, 3, 5, 6)
    target = torch.where(box_map >= 0, classes[box_map.clamp_min(0)], torch.full_like(box_map, 255))
    want = F.cross_entropy(logits, target, ignore_index=255)
    got = L.attention_weighted_loss(logits, A, box_map, classes)
    assert torch.allclose(got, want, atol=1e-6), (got, want)
    # linear in the attention: A = 0.5 halves it, A = 0 switches it off
    assert torch.allclose(L.attention_weighted_loss(logits, A * 0.5, box_map, classes), want / 2, atol=1e-6)
    assert L.attention_weighted_loss(logits, A * 0, box_map, classes).item() == 0.0


def test_awl_by_hand_and_its_gradient():
    # one image, 1x2 pixels, 2 classes; pixel 0 in a box of class 2, pixel 1 outside
    logits = torch.tensor([[[[0.0, 5.0]], [[1.0, 0.0]], [[2.0, 0.0]]]], requires_grad=True)   # (1, 3, 1, 2)
    att = torch.tensor([[[[0.9, 0.1]], [[0.25, 0.7]]]], requires_grad=True)                  # (1, 2, 1, 2)
    box_map = torch.tensor([[[0, -1]]])
    loss = L.attention_weighted_loss(logits, att, box_map, torch.tensor([2]))
    p2 = math.exp(2) / (1 + math.e + math.exp(2))
    assert loss.item() == pytest.approx(-0.25 * math.log(p2), rel=1e-6)
    loss.backward()
    # dL/dA_c(x) = -log p_c(x) >= 0 on the box's class at box pixels, 0 elsewhere
    want = torch.zeros(1, 2, 1, 2)
    want[0, 1, 0, 0] = -math.log(p2)
    assert torch.allclose(att.grad, want, atol=1e-6)
    assert logits.grad[0, :, 0, 1].abs().sum() == 0               # the outside pixel gets no gradient


def test_gated_ce_equals_plain_ce_when_attention_is_zero():
    logits, box_map, classes = _boxes_batch(seed=3)
    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[1, 4, :] = 255
    want = L.cross_entropy(logits, target)
    got = L.gated_cross_entropy(logits, target, torch.zeros(2, 3, 5, 6), box_map, classes)
    assert torch.allclose(got, want, atol=1e-6), (got, want)
    # A = 1 switches off exactly the in-box background pixels (normaliser unchanged)
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = target != 255
    off = (box_map >= 0) & (target == 0)
    want1 = ce[valid & ~off].sum() / valid.sum()
    got1 = L.gated_cross_entropy(logits, target, torch.ones(2, 3, 5, 6), box_map, classes)
    assert off.any() and torch.allclose(got1, want1, atol=1e-6)


def test_gated_ce_by_hand_and_its_gradient():
    # 1x3 pixels, 2 classes: pixel 0 in a box of class 2 with target 0 (gated), pixel 1 in the box with
    # target 2 (not gated), pixel 2 outside every box with target 0 (not gated)
    logits = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 1.0, 0.0]], [[2.0, 2.0, 0.0]]]])
    att = torch.tensor([[[[0.9, 0.9, 0.9]], [[0.25, 0.6, 0.8]]]], requires_grad=True)
    box_map = torch.tensor([[[0, 0, -1]]])
    target = torch.tensor([[[0, 2, 0]]])
    loss = L.gated_cross_entropy(logits, target, att, box_map, torch.tensor([2]))
    lse = lambda v: math.log(sum(math.exp(t) for t in v))
    ce0, ce1, ce2 = lse([1, 0, 2]) - 1, lse([0, 1, 2]) - 2, lse([3, 0, 0]) - 3
    assert loss.item() == pytest.approx(((1 - 0.25) * ce0 + ce1 + ce2) / 3, rel=1e-6)
    loss.backward()
    want = torch.zeros(1, 2, 1, 3)
    want[0, 1, 0, 0] = -ce0 / 3            # dL/dA = log p_0 / N <= 0: the attention is pushed up
    assert torch.allclose(att.grad, want, atol=1e-6)


def test_gated_ce_per_box_mean_one_redistributes_within_each_box():
    # 1x4 pixels, one box of class 1 over pixels 0-2; GrabCut: object at 0, 1, background at 2, 3
    logits = torch.tensor([[[[0.0, 0.5, 1.0, 2.0]], [[1.0, 0.0, 0.5, 0.0]]]])
    target = torch.tensor([[[1, 1, 0, 0]]])
    box_map = torch.tensor([[[0, 0, 0, -1]]])
    ce = F.cross_entropy(logits, target, reduction="none")[0, 0]
    att = torch.tensor([[[[0.2, 0.6, 0.7, 0.9]]]])
    got = L.gated_cross_entropy(logits, target, att, box_map, torch.tensor([1]), gate_background=True,
                                gate_object=True, per_box_mean_one=True)
    # object pixels: A / mean A = 0.2 / 0.4, 0.6 / 0.4; the box's only background pixel: (1 - A) / mean = 1
    want = (0.5 * ce[0] + 1.5 * ce[1] + 1.0 * ce[2] + 1.0 * ce[3]) / 4
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # a uniform attention changes nothing: the plain cross-entropy
    flat = L.gated_cross_entropy(logits, target, torch.full_like(att, 0.3), box_map, torch.tensor([1]),
                                 gate_background=True, gate_object=True, per_box_mean_one=True)
    assert flat.item() == pytest.approx(L.cross_entropy(logits, target).item(), rel=1e-6)


def test_awl_without_box_pixels_is_zero_with_a_graph():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    att = torch.rand(1, 2, 4, 4, requires_grad=True)
    loss = L.attention_weighted_loss(logits, att, torch.full((1, 4, 4), -1), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()


def test_awl_shape_checks():
    logits, box_map, classes = _boxes_batch()
    with pytest.raises(ValueError, match="attention"):
        L.attention_weighted_loss(logits, torch.ones(2, 4, 5, 6), box_map, classes)
    with pytest.raises(ValueError, match="box_map"):
        L.attention_weighted_loss(logits, torch.ones(2, 3, 5, 6), box_map[:, :4], classes)
    with pytest.raises(ValueError, match="box classes"):
        L.attention_weighted_loss(logits, torch.ones(2, 3, 5, 6), box_map, classes[:2])


# --------------------------------------------------------------------------------------------------
# (B3) filling rate
# --------------------------------------------------------------------------------------------------
def test_filling_rate_penalty_by_hand():
    att = torch.zeros(1, 2, 2, 3)
    att[0, 0] = torch.tensor([[0.2, 0.4, 0.9], [0.0, 0.0, 0.9]])   # class 1
    att[0, 1] = torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1]])   # class 2
    box_map = torch.tensor([[[0, 0, 1], [0, 0, 1]]])
    classes = torch.tensor([1, 2])
    means, counts = L.box_attention_means(att, box_map, classes)
    assert torch.allclose(means, torch.tensor([0.15, 0.1])) and counts.tolist() == [4.0, 2.0]
    rho = torch.tensor([0.35, 0.6])
    got = L.filling_rate_loss(att, box_map, classes, rho)
    assert got.item() == pytest.approx(((0.15 - 0.35) ** 2 + (0.1 - 0.6) ** 2) / 2, rel=1e-6)
    # a box without a target (NaN) is skipped; attention at the target costs nothing
    assert L.filling_rate_loss(att, box_map, classes, torch.tensor([0.15, math.nan])).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="rho"):
        L.filling_rate_loss(att, box_map, classes, torch.tensor([0.1]))


def test_filling_rate_stops_the_trivial_zero_attention():
    """With L_awl alone the attention's gradient is -log p >= 0 everywhere: it only goes down. The
    filling-rate term pushes the box mean back up to rho."""
    logits, box_map, classes = _boxes_batch(B=2)
    a = torch.full((2, 3, 5, 6), -3.0, requires_grad=True)            # attention ≈ 0.047
    rho = torch.tensor([0.6, 0.5, 0.7])
    total = L.attention_weighted_loss(logits, torch.sigmoid(a), box_map, classes) + \
        10 * L.filling_rate_loss(torch.sigmoid(a), box_map, classes, rho)
    total.backward()
    g = a.grad[box_map[:, None].expand_as(a) >= 0]
    assert (g[g != 0] < 0).all()          # gradient descent raises the attention inside boxes


# --------------------------------------------------------------------------------------------------
# pairs and embeddings (B4-B6)
# --------------------------------------------------------------------------------------------------
def test_pair_offsets_match_psa():
    offs = pair_offs = L.pair_offsets(5)
    assert len(offs) == 34 and len(set(offs)) == 34
    assert all(0 < dy * dy + dx * dx < 25 and (dy > 0 or dx > 0) for dy, dx in offs)
    assert L.pair_offsets(1.5) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert not {(-dy, -dx) for dy, dx in pair_offs} & set(pair_offs)
    with pytest.raises(ValueError):
        L.pair_offsets(1.0)


def test_shift():
    x = torch.arange(12.0).reshape(3, 4)
    s = L.shift(x, 1, -1, fill=-1)
    assert s.tolist() == [[-1, 4, 5, 6], [-1, 8, 9, 10], [-1, -1, -1, -1]]


def test_pair_affinity_is_half_one_plus_cosine():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).T.reshape(1, 2, 1, 3)   # e0=(1,0) e1=(0,1) e2=(-1,0)
    aff, valid = L.pair_affinity(e, [(0, 1), (0, 2)])
    assert torch.allclose(aff[0, 0, 0, :2], torch.tensor([0.5, 0.5]))       # orthogonal neighbours
    assert aff[0, 1, 0, 0].item() == pytest.approx(0.0)                       # opposite
    assert valid.tolist() == [[[True, True, False]], [[True, False, False]]]


def test_embedding_label_loss_by_hand():
    # 1x3 grid, labels bg bg fg; e0 = e1 = (1, 0), e2 = (0, 1); radius 1.5 → only the horizontal pairs exist
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 1]]])
    got = L.embedding_label_loss(e, labels, radius=1.5)
    # bg+ pair (0,1): a = 1 → -log(1 - 1e-5); no fg+ pair; neg pair (1,2): a = 0.5 → -log 0.5
    want = 0.25 * -math.log(1 - 1e-5) + 0.5 * math.log(2)
    assert got.item() == pytest.approx(want, rel=1e-4)
    # pairs touching 255 are skipped
    assert L.embedding_label_loss(e, torch.tensor([[[0, 0, 255]]]), radius=1.5).item() == pytest.approx(
        0.25 * -math.log(1 - 1e-5), abs=1e-6)


def test_embedding_agreement_by_hand_and_gradients():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2).requires_grad_(True)  # a_01 = 0.5
    seg = torch.tensor([[[[10.0, -10.0]], [[-10.0, 10.0]]]], requires_grad=True)            # p(0) ≈ bg, p(1) ≈ cls 1
    P = L.same_label_probability(torch.softmax(seg, 1), [(0, 1)])
    assert P[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    got = L.embedding_agreement_loss(e, seg, radius=1.5)
    assert got.item() == pytest.approx(math.log(2), rel=1e-4)       # -[0·log .5 + 1·log .5]
    got.backward()
    assert e.grad.abs().sum() > 0 and seg.grad is not None
    seg2 = seg.detach().clone().requires_grad_(True)
    L.embedding_agreement_loss(e, seg2, radius=1.5, detach_segmentation=True).backward()
    assert seg2.grad is None or seg2.grad.abs().sum() == 0
    # agreement is cheap where the affinities already match the segmentation
    e_same = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)
    seg_same = torch.tensor([[[[10.0, 10.0]], [[-10.0, -10.0]]]])
    assert L.embedding_agreement_loss(e_same, seg_same, radius=1.5).item() < 1e-3


def test_cross_entropy_ignores_255_and_weights():
    logits = torch.randn(2, 3, 4, 4)
    t = torch.randint(0, 3, (2, 4, 4))
    t[0, 0] = 255
    assert torch.allclose(L.cross_entropy(logits, t), F.cross_entropy(logits, t, ignore_index=255))
    w = torch.ones(2, 4, 4)
    assert torch.allclose(L.cross_entropy(logits, t, w), F.cross_entropy(logits, t, ignore_index=255))
    assert L.cross_entropy(logits, torch.full_like(t, 255)).item() == 0.0


# --------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------
def test_segnet_heads_and_shapes():
    torch.manual_seed(0)
    net = build_segnet("compact", {"width": 8, "output_stride": 8}, 5, channels=16, decoder_stride=4,
                       attention=True, embedding=True, embed_dim=6)
    x = torch.randn(2, 3, 40, 48)
    out = net(x)
    assert out["seg"].shape == (2, 6, 10, 12) and out["att"].shape == (2, 5, 10, 12) and out["emb"].shape == (2, 6, 10, 12)
    assert torch.allclose(out["emb"].norm(dim=1), torch.ones(2, 10, 12), atol=1e-5)
    assert net.segment(x).shape == (2, 6, 40, 48)
    groups = net.param_groups(10.0)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    plain = build_segnet("compact", {"width": 8, "output_stride": 8}, 5, channels=16)
    assert set(plain(x)) == {"seg"}
    # stride 2 decoder uses the finest level too
    fine = build_segnet("compact", {"width": 8, "output_stride": 8}, 5, channels=16, decoder_stride=2)
    assert fine(x)["seg"].shape[-2:] == (20, 24)
    with pytest.raises(ValueError, match="decoder_stride"):
        build_segnet("compact", {"width": 8}, 5, decoder_stride=3)


# --------------------------------------------------------------------------------------------------
# stage: targets, dataset, a tiny run
# --------------------------------------------------------------------------------------------------
def test_remove_objects_erases_object_and_its_outline():
    from wsss_core.stages import box2seg as S

    inst = np.zeros((6, 9), np.uint8)
    inst[1:4, 1:4] = 1
    inst[1:4, 5:8] = 2
    mask = np.where(inst == 1, 3, np.where(inst == 2, 4, 0)).astype(np.uint8)
    mask[0, 1:4] = 255          # outline of object 1 only
    mask[1:4, 4] = 255          # between the two objects
    out = S.remove_objects(mask, inst, [1])
    assert (out[inst == 1] == 0).all() and (out[inst == 2] == 4).all()
    assert (out[0, 1:4] == 0).all()          # outline touching only the removed object is gone
    assert (out[1:4, 4] == 255).all()        # outline shared with a kept object stays
    assert S.missing_objects(["a", "b"], [3, 1], 0.5, 0) == S.missing_objects(["a", "b"], [3, 1], 0.5, 0)
    assert sum(len(v) for v in S.missing_objects(["a", "b"], [3, 1], 0.5, 0).values()) == 2


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from wsss_core.data.toyscenes import ToySceneConfig, context_pairs, ensure_toyscenes

    root = tmp_path_factory.mktemp("toy")
    man = ensure_toyscenes(root, ToySceneConfig(n_train=16, n_val=8), workers=1, progress=False)
    return root, context_pairs(man)


def _tiny_cfg():
    from wsss_core.stages import box2seg as S

    seg = S.SegConfig(backbone_kwargs={"width": 8, "output_stride": 8}, backbone_init=None, channels=16, embed_dim=4,
                      train=engine.TrainConfig(epochs=2, batch_size=8, lr=3e-3, optimizer="adam", schedule="onecycle",
                                               progress=False))
    return S.Box2SegStageConfig(seg=seg, grabcut_workers=0,
                                box2seg=S.LossConfig(awl_weight=1.0, fill_weight=1.0, emb_weight=0.1, emb_pretrain_epochs=1))


def test_targets_dataset_and_collate(toy, tmp_path):
    from wsss_core.boxes import box_index_map
    from wsss_core.stages import box2seg as S

    root, _ = toy
    cfg = _tiny_cfg()
    base = S.raw_dataset(root, "train", instances=True)
    gdir, man = S.ensure_grabcut(base, tmp_path, cfg.grabcut, workers=0, progress=False)
    assert man["ids"] == base.ids
    raw = base.get_raw(0)
    box = S.build_targets("box", base, gdir)
    gc = S.build_targets("grabcut", base, gdir)
    full = S.build_targets("mask", base, gdir)
    t = box.items[raw["id"]]
    np.testing.assert_array_equal(t["box_map"], box_index_map(raw["boxes"], raw["mask"].shape))
    assert ((t["target"] > 0) == (t["box_map"] >= 0)).all()       # a filled box covers exactly the box pixels
    np.testing.assert_array_equal(full.items[raw["id"]]["target"], raw["mask"])
    np.testing.assert_array_equal(gc.items[raw["id"]]["rho"], box.items[raw["id"]]["rho"])  # ρ always from GrabCut
    n_obj = [len(base.get_raw(i)["boxes"]) for i in range(len(base))]
    miss = S.missing_objects(base.ids, n_obj, 0.5, 0)
    mm = S.build_targets("mask_missing", base, gdir, miss)
    removed = sum(len(v) for v in miss.values())
    assert removed == round(0.5 * sum(n_obj))
    changed = [i for i in base.ids if not np.array_equal(mm.items[i]["target"], full.items[i]["target"])]
    assert set(changed) == set(miss)
    with pytest.raises(ValueError, match="unknown target"):
        S.build_targets("boxes", base, gdir)

    # BCM's per-class filling rate: the mean ρ of the class over the split, carried into every item
    cm = gc.class_mean_rho()
    ds_cm = S.training_dataset(base, gc, cfg.seg, rho="class_mean")
    it = ds_cm[0]
    np.testing.assert_allclose(it["rho"].numpy(), [cm[int(c)] for c in it["box_classes"]], rtol=1e-6)
    with pytest.raises(ValueError, match="rho"):
        S.training_dataset(base, gc, cfg.seg, rho="per_box")

    ds = S.training_dataset(base, gc, cfg.seg)
    items = [ds[i] for i in range(3)]
    b = S.collate_boxes(items)
    assert b["image"].shape == (3, 3, 96, 96) and b["target"].shape == (3, 96, 96)
    k0 = len(items[0]["box_classes"])
    assert b["box_map"].max() < len(b["box_classes"]) and len(b["rho"]) == len(b["box_classes"])
    inside1 = items[1]["box_map"] >= 0
    assert torch.equal(b["box_map"][1][inside1], items[1]["box_map"][inside1] + k0)
    assert (b["box_map"][b["target"] == 255] == -1).all()   # padding (GrabCut labels have no 255): no box


def test_class_mean_rho_by_hand():
    from wsss_core.stages import box2seg as S

    z = np.zeros((2, 2), np.uint8)
    items = {"a": {"target": z, "box_map": z.astype(np.int16), "box_classes": np.array([1, 2]), "rho": np.array([0.2, 0.5], np.float32)},
             "b": {"target": z, "box_map": z.astype(np.int16), "box_classes": np.array([1, 2]), "rho": np.array([0.6, np.nan], np.float32)}}
    cm = S.TargetStore("grabcut", items).class_mean_rho()
    assert cm.keys() == {1, 2}
    assert cm[1] == pytest.approx(0.4) and cm[2] == pytest.approx(0.5)      # NaN (a box without pixels) is skipped
    with pytest.raises(ValueError, match="rho"):
        S.LossConfig(rho="mean")
    t = S.config_for_profile("tutorial")
    assert S.setting("box2seg_class_rho", t)[1].rho == "class_mean" and S.setting("box2seg", t)[1].rho == "box"


def test_gate_switch_validation_and_fingerprints(tmp_path):
    from wsss_core.stages import box2seg as S

    with pytest.raises(ValueError, match="gate must be"):
        S.LossConfig(awl_weight=1.0, gate="yes")
    with pytest.raises(ValueError, match="attention head"):
        S.LossConfig(gate="both")
    seg = S.SegConfig()
    full = S.config_for_profile("tutorial").box2seg
    plain = S.checkpoint_dir_for("box2seg", "grabcut", full, seg, tmp_path)
    # the switch at its default leaves the fingerprint of earlier runs alone; any other value makes a new folder
    assert plain == S.checkpoint_dir_for("box2seg", "grabcut", dataclasses.replace(full, gate="off"), seg, tmp_path)
    gated = {S.checkpoint_dir_for("box2seg", "grabcut", dataclasses.replace(full, **kw), seg, tmp_path)
             for kw in ({"gate": "both"}, {"gate": "both", "gate_detach": True}, {"gate": "object"})}
    assert len(gated) == 3 and plain not in gated


def test_tiny_end_to_end_run_and_reuse(toy, tmp_path):
    from wsss_core.profiles import DataSpec
    from wsss_core.stages import box2seg as S

    root, pairs = toy
    cfg = _tiny_cfg()
    sd = S.prepare(cfg, DataSpec("toy", root, context_pairs=pairs), tmp_path, progress=False)
    assert len(sd.base) == 16 and len(sd.val) == 8 and sd.gc_manifest["ids"] == sd.base.ids
    res = S.run_setting("box2seg", cfg, sd, tmp_path, progress=False)
    h = res.history
    assert len(h.epochs) == 2 and not res.reused
    assert "emb_pre" in h.epochs[0] and "emb_agr" in h.epochs[1]          # pre-training, then agreement
    assert {"awl", "fill", "ce", "att_mean"} <= set(h.epochs[1])
    assert 0.0 <= res.val["miou"] <= 1.0 and (res.checkpoint_dir / "val.json").is_file()
    again = S.run_setting("box2seg", cfg, sd, tmp_path, progress=False)
    assert again.reused and again.val == res.val
    for p1, p2 in zip(res.model.parameters(), again.model.parameters()):
        assert torch.equal(p1, p2)
    # another setting trains in another folder
    other = S.checkpoint_dir_for("grabcut_ce", "grabcut", S.LossConfig(), cfg.seg, tmp_path, sd.identity)
    assert other != res.checkpoint_dir
    maps = S.predict_maps(res.model, sd.val[0]["image"][None], heads=("seg", "att", "emb"))
    assert maps["prob"].shape == (1, 7, 96, 96) and maps["att"].shape == (1, 6, 96, 96)
    assert torch.allclose(maps["prob"].sum(1), torch.ones(1, 96, 96), atol=1e-5)
    # the first images only (smoke runs)
    small = S.prepare(cfg, DataSpec("toy", root, context_pairs=pairs), tmp_path, max_train=5, max_val=3, progress=False)
    assert len(small.base) == 5 and len(small.val) == 3 and small.identity != sd.identity
    # the stage in one call (notebook 06's contract): reuses the trained network, writes the label folders
    from wsss_core.data.palette import read_label_png

    stage_res = S.run(cfg, DataSpec("toy", root, context_pairs=pairs), tmp_path, seed=0, device="cpu", progress=False)
    assert stage_res.results["box2seg"].reused and stage_res.report["box2seg_checkpoint"] == res.checkpoint_dir.name
    for d in (stage_res.grabcut_label_dir, stage_res.box2seg_label_dir):
        assert sorted(p.stem for p in d.glob("*.png")) == sorted(sd.base.ids)
    raw = sd.base.get_raw(0)
    lab = read_label_png(stage_res.box2seg_label_dir / f"{raw['id']}.png")
    assert lab.shape == raw["mask"].shape and lab.dtype == np.uint8
    from wsss_core.boxes import box_index_map
    assert (lab[box_index_map(raw["boxes"], lab.shape) < 0] == 0).all()     # outside every box: background
    assert 0.0 <= stage_res.report["box2seg_train_miou"] <= 1.0 and 0.0 <= stage_res.report["grabcut_train_miou"] <= 1.0
    stamp = (stage_res.box2seg_label_dir / "source.json").stat().st_mtime_ns
    again2 = S.run(cfg, DataSpec("toy", root, context_pairs=pairs), tmp_path, progress=False)      # idempotent
    assert (again2.box2seg_label_dir / "source.json").stat().st_mtime_ns == stamp and again2.report == stage_res.report


def test_box_constrained_labels_by_hand():
    from wsss_core.stages import box2seg as S

    prob = np.zeros((4, 4, 5), np.float32)          # background + 3 classes, 4×5 image
    prob[2] = 0.6                                   # class 2 is the most probable everywhere
    prob[1] = 0.3
    prob[0] = 0.1
    boxes = np.array([[0, 0, 2, 2], [1, 1, 4, 3]])  # XYXY exclusive
    lab = S.box_constrained_labels(prob, boxes, [1, 2])
    want = np.zeros((4, 5), np.uint8)
    want[0:2, 0:2] = 1                              # only class 1 (or background) allowed in box 0
    want[1:3, 1:4] = 2                              # box 1 allows class 2, which wins where both boxes overlap
    np.testing.assert_array_equal(lab, want)
    with pytest.raises(ValueError, match="class"):
        S.box_constrained_labels(prob, boxes, [1, 4])


def test_backbone_from_the_cam_classifier(toy, tmp_path):
    from wsss_core.profiles import DataSpec
    from wsss_core.stages import box2seg as S
    from wsss_core.stages.cam import CAMStageConfig

    root, pairs = toy
    data = DataSpec("toy", root, context_pairs=pairs)
    cam_cfg = CAMStageConfig(backbone_kwargs={"width": 8, "output_stride": 8}, cam_scales=(1.0,),
                             train=engine.TrainConfig(epochs=1, batch_size=8, lr=3e-3, progress=False))
    state, name = S.classifier_backbone(data, tmp_path / "01", cam_cfg)
    state2, name2 = S.classifier_backbone(data, tmp_path / "01", cam_cfg)       # reloaded, not retrained
    assert name == name2 and all(torch.equal(state[k], state2[k]) for k in state)
    cfg = _tiny_cfg()
    seg = cfg.seg.replace(backbone_init="cam_classifier")
    with pytest.raises(ValueError, match="backbone"):
        S.prepare(cfg, data, tmp_path, seg=seg, progress=False)
    sd = S.prepare(cfg, data, tmp_path, seg=seg, backbone=(state, name), progress=False)
    assert sd.identity["backbone_init"] == name
    model = S.build_model(seg, 6)
    model.backbone.load_state_dict(sd.backbone_state)                           # the shapes fit the SegNet's backbone
    ck_a = S.checkpoint_dir_for("grabcut_ce", "grabcut", S.LossConfig(), seg, tmp_path, sd.identity)
    ck_b = S.checkpoint_dir_for("grabcut_ce", "grabcut", S.LossConfig(), seg, tmp_path, {**sd.identity, "backbone_init": None})
    assert ck_a != ck_b


def test_config_for_profile():
    from wsss_core.stages import box2seg as S

    for p in ("smoke", "tutorial", "paper"):
        cfg = S.config_for_profile(p)
        for name in cfg.settings:
            S.setting(name, cfg)
    t = S.config_for_profile("tutorial")
    assert S.setting("box2seg_no_fill", t)[1].fill_weight == 0 and S.setting("box2seg_no_emb", t)[1].emb_weight == 0
    assert S.setting("full_awl", t)[0] == "mask_missing" and S.setting("grabcut_ce", t)[1].awl_weight == 0
    with pytest.raises(ValueError):
        S.config_for_profile("huge")
    with pytest.raises(ValueError):
        S.setting("nope", t)
    # §7.6's photo-like scenes: toy profiles only, settings that exist, valid generator fields
    from wsss_core.data.toyscenes import config_for_profile as toy_config
    for p in ("smoke", "tutorial"):
        cfg = S.config_for_profile(p)
        assert toy_config(p, **cfg.photo_like).p_legged > 0
        for name in cfg.photo_like_settings:
            S.setting(name, cfg)
    assert S.config_for_profile("paper").photo_like == {}


def test_prepare_data_with_toy_overrides(tmp_path, monkeypatch):
    from wsss_core import profiles

    monkeypatch.setenv("WSSS_DATA", str(tmp_path))
    monkeypatch.setitem(__import__("wsss_core.data.toyscenes", fromlist=["PROFILES"]).PROFILES, "smoke", dict(n_train=3, n_val=2))
    d = profiles.prepare_data("smoke", progress=False, toy_overrides={"p_legged": 1.0, "p_shadow": 0.5})
    assert d.root == tmp_path / "toy" / "smoke-p_legged1-p_shadow0.5"
    assert d.manifest["config"]["p_legged"] == 1.0 and d.manifest["config"]["p_shadow"] == 0.5
    plain = profiles.prepare_data("smoke", progress=False)
    assert plain.root == tmp_path / "toy" / "smoke" and "p_legged" not in plain.manifest["config"]
    with pytest.raises(ValueError, match="toy_overrides apply to the toy scenes"):
        profiles.prepare_data("paper", tmp_path, toy_overrides={"p_legged": 1.0})


def test_attention_by_grabcut_error_by_hand(tmp_path, monkeypatch):
    from wsss_core.data.palette import write_label_png
    from wsss_core.stages import box2seg as S
    from wsss_core.stages import box2seg_report

    # one 1x6 image, one box of class 2 over pixels 0-4; truth: object at 0-2; GrabCut: object at 1-3
    mask = np.array([[2, 2, 2, 0, 0, 0]], np.uint8)
    gc = np.array([[0, 2, 2, 2, 0, 0]], np.uint8)
    write_label_png(tmp_path / "a.png", gc)

    class One:
        def __len__(self):
            return 1

        def get_raw(self, i):
            return {"id": "a", "image": np.zeros((1, 6, 3), np.uint8), "mask": mask,
                    "boxes": np.array([[0, 0, 5, 1]]), "box_labels": np.array([2])}

    att = torch.zeros(1, 2, 1, 6)
    att[0, 1, 0] = torch.tensor([0.6, 0.8, 0.9, 0.1, 0.05, 0.99])   # class 2's channel; pixel 5 is outside the box
    # attention_report calls predict_maps in the module that defines both (box2seg re-exports them)
    monkeypatch.setattr(box2seg_report, "predict_maps", lambda model, x, long_side=None, heads=("seg",): {"att": att})
    model = build_segnet("compact", {"width": 8, "output_stride": 8}, 2, channels=8, attention=True)
    got = S.attention_by_grabcut_error(model, One(), tmp_path)
    assert got["object_kept"]["pixels"] == 2 and got["object_kept"]["attention"] == pytest.approx(0.85)
    assert got["background_taken"]["pixels"] == 1 and got["background_taken"]["attention"] == pytest.approx(0.1)
    assert got["object_missed"]["pixels"] == 1 and got["object_missed"]["attention"] == pytest.approx(0.6)
    assert got["background_left"]["pixels"] == 1 and got["background_left"]["attention"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="attention head"):
        S.attention_by_grabcut_error(build_segnet("compact", {"width": 8, "output_stride": 8}, 2, channels=8), One(), tmp_path)
    # the per-box record of the same pass: mean attention on the box's own pixels, GrabCut's ρ, the truth's
    rep = S.attention_report(model, One(), tmp_path, flags={0: [{"camouflaged": 1}]})
    assert rep["by_error"] == got and rep["n_images"] == 1
    (box,) = rep["boxes"]
    assert box["attention"] == pytest.approx((0.6 + 0.8 + 0.9 + 0.1 + 0.05) / 5)
    assert box["rho"] == pytest.approx(3 / 5) and box["true_fill"] == pytest.approx(3 / 5)
    assert box["category"] == "camouflaged" and box["cls"] == 2


def test_run_settings_trains_two_at_once_then_reuses(toy, tmp_path):
    from wsss_core.profiles import DataSpec
    from wsss_core.stages import box2seg as S

    root, pairs = toy
    cfg = _tiny_cfg().replace(train_workers=2)
    sd = S.prepare(cfg, DataSpec("toy", root, context_pairs=pairs), tmp_path, progress=False)
    res = S.run_settings(["grabcut_ce", "box2seg"], cfg, sd, tmp_path, progress=False)   # two worker processes
    assert list(res) == ["grabcut_ce", "box2seg"] and not any(r.reused for r in res.values())
    for n, r in res.items():
        assert r.checkpoint_dir == S.setting_checkpoint(n, cfg, sd, tmp_path)
        assert len(r.history.epochs) == 2 and (r.checkpoint_dir / "val.json").is_file() and 0 <= r.val["miou"] <= 1
    assert "awl" in res["box2seg"].history.epochs[0] and "awl" not in res["grabcut_ce"].history.epochs[0]
    again = S.run_settings(["box2seg", "grabcut_ce"], cfg, sd, tmp_path, progress=False)
    assert all(r.reused for r in again.values()) and again["box2seg"].val == res["box2seg"].val
    for p1, p2 in zip(res["box2seg"].model.parameters(), again["box2seg"].model.parameters()):
        assert torch.equal(p1, p2)
    # one setting left to train, or workers=1: in this process (same folders)
    one = S.run_settings(["box_ce", "grabcut_ce"], cfg, sd, tmp_path, workers=1, progress=False)
    assert not one["box_ce"].reused and one["grabcut_ce"].reused


def test_grabcut_report_and_pick_examples(toy, tmp_path):
    from wsss_core.profiles import DataSpec
    from wsss_core.stages import box2seg as S

    root, pairs = toy
    cfg = _tiny_cfg()
    sd = S.prepare(cfg, DataSpec("toy", root, context_pairs=pairs), tmp_path, progress=False)
    raw = S.raw_dataset(root, "train", instances=True)
    flags = {i: S.object_flags(raw, i) for i in range(len(raw))}
    rep = S.grabcut_report(raw, sd.gc_dir, sd.gc_manifest["fill"], flags)
    assert rep["box"]["take_rate"] == pytest.approx(1.0)          # a filled box takes all its background
    assert 0 < rep["grabcut"]["miou"] <= 1 and rep["grabcut"]["take_rate"] < 1
    assert rep["by_category"]["all"]["n"] == len(rep["objects"]) == sum(len(raw.get_raw(i)["boxes"]) for i in range(len(raw)))
    assert all("fill" in o for o in rep["objects"])
    pick = S.pick_examples(4, len(raw), np.random.default_rng(0), flags)
    assert len(pick) == 4 == len(set(pick)) and pick == sorted(pick)
    if any(f.get("camouflaged") for fl in flags.values() for f in fl):
        assert any(any(f.get("camouflaged") for f in flags[i]) for i in pick)
    assert S.pick_examples(3, 2, np.random.default_rng(0)) == [0, 1]


def test_box2seg_re_exports_its_modules():
    """``box2seg`` is split into box2seg_config / _targets / _train / _report; every public name of those
    modules is reachable as ``box2seg.<name>`` and is the same object."""
    from wsss_core.stages import box2seg, box2seg_config, box2seg_report, box2seg_targets, box2seg_train

    for mod in (box2seg_config, box2seg_targets, box2seg_train, box2seg_report):
        own = [k for k, v in vars(mod).items() if not k.startswith("_") and getattr(v, "__module__", mod.__name__) == mod.__name__
               and not isinstance(v, type(box2seg))]
        assert own, mod.__name__
        for k in own:
            assert getattr(box2seg, k) is getattr(mod, k), f"box2seg.{k} is not {mod.__name__}.{k}"
    assert (box2seg.NOTEBOOK, box2seg.STAGE, box2seg.FORMAT_VERSION) == ("04_box2seg", "box2seg", 1)
