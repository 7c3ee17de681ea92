"""Unit tests of wsss_core.affinity (PSA / AffinityNet) and wsss_core.models.affinitynet."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_core import affinity as A
from wsss_core.models.affinitynet import AffinityNet
from wsss_core.models.backbones import CompactCNN
from wsss_core.models.cam import CAMClassifier


# ------------------------------------------------------------------------------------------------
# pairs
# ------------------------------------------------------------------------------------------------

def test_pair_offsets_match_psa():
    # PSA's search_dist for radius 5: 4 on the same row, then rows 1..4 with dx² + dy² < 25
    offs = A.pair_offsets(5)
    assert len(offs) == 34
    assert offs[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert offs[4:13] == [(1, dx) for dx in range(-4, 5)]
    assert [o for o in offs if o[0] == 3] == [(3, dx) for dx in range(-3, 4)]
    assert [o for o in offs if o[0] == 4] == [(4, dx) for dx in range(-2, 3)]
    assert A.pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert len(A.neighbour_offsets(5)) == 69 and A.neighbour_offsets(5)[0] == (0, 0)
    with pytest.raises(ValueError, match="radius"):
        A.pair_offsets(1)


def test_pair_indices_full_and_psa_layouts():
    h, w, r = 6, 7, 3
    a, b = A.pair_indices((h, w), r)
    # brute force: every unordered pair of grid positions at squared distance in (0, r²)
    pos = [(y, x) for y in range(h) for x in range(w)]
    want = {(i, j) for i, (y1, x1) in enumerate(pos) for j, (y2, x2) in enumerate(pos)
            if i < j and 0 < (y1 - y2) ** 2 + (x1 - x2) ** 2 < r * r}
    got = {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist())}
    assert len(a) == len(want) == len(got) and got == want
    # the official cropped layout: 56×56 grid of a 448 crop → sources 52 × 48, 34 targets each
    src, to = A.pair_indices((56, 56), 5, layout="psa")
    assert src.shape == (52 * 48,) and to.shape == (34 * 52 * 48,)
    assert src[0] == 4 and to[0] == 5          # (0, 4) → (0, 5): first offset (0, 1)
    with pytest.raises(ValueError, match="layout"):
        A.pair_indices((5, 5), 2, layout="dense")


def test_pair_labels_on_a_hand_made_map():
    # radius 2 → offsets (0,1), (1,-1), (1,0), (1,1); counted by hand:
    #   (0,1): bg (0,0)-(0,1); neg (0,1)-(0,2), (2,1)-(2,2); fg (2,0)-(2,1)
    #   (1,-1): bg (0,1)-(1,0); neg (1,2)-(2,1)
    #   (1,0): bg (0,0)-(1,0); fg (0,2)-(1,2), (1,2)-(2,2); neg (1,0)-(2,0)
    #   (1,1): neg (0,1)-(1,2), (1,0)-(2,1)
    # 20 in-bounds pairs, the 8 touching the neutral centre are in no set.
    lab = torch.tensor([[0, 0, 1],
                        [0, 255, 1],
                        [2, 2, 1]])
    bg, fg, neg = A.pair_labels(lab, 2)
    assert bg.shape == (4, 3, 3)
    assert bg.sum(dim=(1, 2)).tolist() == [1, 1, 1, 0]
    assert fg.sum(dim=(1, 2)).tolist() == [1, 0, 2, 0]
    assert neg.sum(dim=(1, 2)).tolist() == [2, 1, 1, 2]
    assert bg[0, 0, 0] and fg[0, 2, 0] and neg[0, 0, 1] and fg[2, 0, 2] and neg[3, 1, 0]
    assert not (bg & fg).any() and not (bg & neg).any() and not (fg & neg).any()
    assert int(A.pair_validity((3, 3), 2).sum()) == 20
    # batched input gives the same per image
    bg2, fg2, neg2 = A.pair_labels(torch.stack([lab, lab]), 2)
    assert bg2.shape == (2, 4, 3, 3) and torch.equal(bg2[1], bg) and torch.equal(neg2[0], neg)


def test_downsample_labels_takes_cell_centres():
    lab = np.arange(64).reshape(8, 8)
    assert A.downsample_labels(lab, 4).tolist() == [[18, 22], [50, 54]]
    t = A.downsample_labels(torch.as_tensor(lab)[None], 4)
    assert t.shape == (1, 2, 2) and t[0].tolist() == [[18, 22], [50, 54]]
    assert A.downsample_labels(np.zeros((10, 9)), 4).shape == (3, 3)  # ⌈10/4⌉ × ⌈9/4⌉


# ------------------------------------------------------------------------------------------------
# affinity labels
# ------------------------------------------------------------------------------------------------

def test_affinity_labels_power_and_threshold_rules():
    # one class, four pixels: θ(α=4) ≈ 0.276, θ(α=32) ≈ 0.075
    cams = np.array([[[0.9, 0.2, 0.05, 0.0]]], np.float32)
    assert A.affinity_labels(cams, [1]).tolist() == [[1, 255, 0, 0]]
    # IRN's constants 0.30 / 0.05: 0.2 neutral; 0.05 ties with the background → background
    assert A.affinity_labels(cams, [1], fg_threshold=0.3, bg_threshold=0.05).tolist() == [[1, 255, 0, 0]]
    assert A.affinity_labels(cams, [1], fg_threshold=0.3, bg_threshold=0.04).tolist() == [[1, 255, 255, 0]]
    # several classes: the arg-max class keeps its index; absent classes never win
    cams = np.zeros((4, 1, 3), np.float32)
    cams[1, 0] = [0.9, 0.1, 0.0]
    cams[3, 0] = [0.2, 0.95, 0.0]
    cams[0, 0] = [1.0, 1.0, 1.0]  # absent class with a strong map
    assert A.affinity_labels(cams, [0, 1, 0, 1]).tolist() == [[2, 4, 0]]
    with pytest.raises(ValueError, match="smaller"):
        A.affinity_labels(cams, [0, 1, 0, 1], fg_alpha=32, bg_alpha=4)
    with pytest.raises(ValueError, match="both"):
        A.affinity_labels(cams, [0, 1, 0, 1], fg_threshold=0.3)


def test_crf_snaps_scores_to_colour_edges():
    if not A.crf_available():
        pytest.skip("pydensecrf (optional extra `crf`) is not installed: the dense CRF is skipped")
    img = np.zeros((24, 24, 3), np.uint8)
    img[:, 12:] = 255                                  # left black, right white
    fg = np.clip(np.linspace(-1.0, 1.2, 24), 0.01, 0.99)[None].repeat(24, 0)  # a ramp crossing the edge late
    q = A.crf_refine(img, np.stack([1 - fg, fg]).astype(np.float32), scale=1.0)
    assert q.shape == (2, 24, 24) and np.allclose(q.sum(0), 1, atol=1e-4)
    arg = q.argmax(0)
    assert (arg[:, :12] == 0).mean() > 0.9 and (arg[:, 12:] == 1).mean() > 0.9
    assert (fg > 0.5)[:, :12].sum() > 0 or (fg <= 0.5)[:, 12:].sum() > 0  # the raw scores did not follow the edge


# ------------------------------------------------------------------------------------------------
# affinities and loss
# ------------------------------------------------------------------------------------------------

def test_local_affinities_values_and_gradient():
    f = torch.zeros(1, 4, 3, 5)
    f[..., 3:] = 2.0                                  # columns 3-4 differ by 2 in every channel
    a = A.local_affinities(f, 2)                      # offsets (0,1), (1,-1), (1,0), (1,1)
    assert a.shape == (1, 4, 3, 5)
    assert torch.allclose(a[0, 0, :, :2], torch.ones(3, 2))           # same side
    assert torch.allclose(a[0, 0, :, 2], torch.full((3,), math.exp(-2.0)))  # across the edge
    assert (a[0, 0, :, 4] == 0).all() and (a[0, 2, 2] == 0).all()     # targets outside the grid
    assert torch.equal(A.local_affinities(f[0], 2), a[0])
    g = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: A.local_affinities(x, 2), (g,))


def test_affinity_loss_on_hand_computed_pairs():
    aff = torch.tensor([0.5, 0.25, 0.9, 0.2]).view(1, 1, 1, 4)
    bg = torch.tensor([1, 1, 0, 0], dtype=torch.bool).view(1, 1, 1, 4)
    fg = torch.tensor([0, 0, 1, 0], dtype=torch.bool).view(1, 1, 1, 4)
    neg = torch.tensor([0, 0, 0, 1], dtype=torch.bool).view(1, 1, 1, 4)
    out = A.affinity_loss(aff, bg, fg, neg)
    # L_bg = (ln 2 + ln 4)/2 = 1.039721, L_fg = −ln 0.9 = 0.105361, L⁻ = −ln 0.8 = 0.223144
    assert out["bg_loss"].item() == pytest.approx(1.039721, abs=1e-4)
    assert out["fg_loss"].item() == pytest.approx(0.105361, abs=1e-4)
    assert out["neg_loss"].item() == pytest.approx(0.223144, abs=1e-4)
    assert out["loss"].item() == pytest.approx(1.039721 / 4 + 0.105361 / 4 + 0.223144 / 2, abs=1e-4)  # 0.397842
    assert (out["bg_count"].item(), out["fg_count"].item(), out["neg_count"].item()) == (2, 1, 1)
    # an empty set contributes 0, and perfect affinities give (almost) zero loss
    none = torch.zeros_like(fg)
    assert A.affinity_loss(aff, bg, none, neg)["fg_loss"].item() == 0.0
    perfect = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 4)
    assert A.affinity_loss(perfect, bg, fg, neg)["loss"].item() < 1e-4
    with pytest.raises(ValueError, match="shapes"):
        A.affinity_loss(aff, bg[..., :3], fg, neg)


# ------------------------------------------------------------------------------------------------
# transition matrix and random walk
# ------------------------------------------------------------------------------------------------

def _random_aff(h, w, radius, seed=0, d=6):
    g = torch.Generator().manual_seed(seed)
    return A.local_affinities(torch.randn(d, h, w, generator=g), radius)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_transition_matrix_is_row_stochastic(kind):
    aff = _random_aff(6, 7, 3)
    T = A.transition_matrix(aff, 3, beta=8, kind=kind, dtype=torch.float64)
    Td = torch.as_tensor(T.toarray()) if kind == "sparse" else T
    assert Td.shape == (42, 42)
    assert torch.allclose(Td.sum(1), torch.ones(42, dtype=torch.float64), atol=1e-12)
    assert (Td >= 0).all()
    W = A.affinity_matrix_dense(aff, 3, beta=8, dtype=torch.float64)
    assert torch.equal(W, W.T) and torch.equal(torch.diag(W), torch.ones(42, dtype=torch.float64))
    assert torch.allclose(Td, W / W.sum(1, keepdim=True))           # T = D⁻¹ W^β
    n_pairs = len(A.pair_indices((6, 7), 3)[0])
    assert int((Td > 0).sum()) == 42 + 2 * n_pairs                     # banded: self + both directions
    assert A.sparse_matrix_bytes((6, 7), 3) < A.dense_matrix_bytes(42) * 2


def test_sparse_walk_matches_dense_reference():
    for (h, w), seed in [((7, 9), 0), ((12, 12), 1), ((16, 11), 2)]:
        aff = _random_aff(h, w, 5, seed)
        x = torch.rand(4, h, w, generator=torch.Generator().manual_seed(seed))
        dense = A.random_walk(x, aff, 5, beta=8, t=256, method="dense", dtype=torch.float64)
        sparse = A.random_walk(x, aff, 5, beta=8, t=256, method="sparse", dtype=torch.float64)
        tsparse = A.random_walk(x, aff, 5, beta=8, t=256, method="sparse", dtype=torch.float64, backend="torch")
        assert (dense - sparse).abs().max() < 1e-10 and (dense - tsparse).abs().max() < 1e-10
        # float32: both drift from the exact walk by the rounding of T's row sums (≈ t · 1e-7)
        s32 = A.random_walk(x, aff, 5, beta=8, t=256, method="sparse")
        d32 = A.random_walk(x, aff, 5, beta=8, t=256, method="dense")
        assert s32.dtype == torch.float32 and (s32.double() - dense).abs().max() < 5e-5
        assert (d32.double() - dense).abs().max() < 5e-5
    # t that is not a power of two, and t = 0
    aff = _random_aff(5, 6, 3)
    x = torch.rand(2, 5, 6)
    for t in (0, 1, 5, 37):
        d = A.random_walk(x, aff, 3, beta=2, t=t, method="dense", dtype=torch.float64)
        s = A.random_walk(x, aff, 3, beta=2, t=t, method="sparse", dtype=torch.float64)
        assert torch.allclose(d, s, atol=1e-12)
    assert torch.allclose(A.random_walk(x, aff, 3, t=0, dtype=torch.float64), x.double())


def test_one_step_by_hand():
    aff = _random_aff(4, 5, 2, seed=3)
    x = torch.rand(1, 4, 5, dtype=torch.float64)
    beta = 3.0
    got = A.random_walk(x, aff, 2, beta=beta, t=1, dtype=torch.float64)[0]
    want = torch.zeros(4, 5, dtype=torch.float64)
    for y in range(4):
        for xx in range(5):
            num, den = x[0, y, xx].item(), 1.0            # self-affinity 1
            for k, (dy, dx) in enumerate(A.pair_offsets(2)):
                for sgn in (1, -1):                        # forward and backward neighbours
                    ty, tx = y + sgn * dy, xx + sgn * dx
                    if 0 <= ty < 4 and 0 <= tx < 5:
                        a = aff[k, y, xx] if sgn == 1 else aff[k, ty, tx]
                        num += a.item() ** beta * x[0, ty, tx].item()
                        den += a.item() ** beta
            want[y, xx] = num / den
    assert torch.allclose(got, want, atol=1e-12)


def test_walk_keeps_constants_and_respects_boundaries():
    f = torch.zeros(3, 8, 8)
    f[:, :, 4:] = 50.0                                 # two regions: affinity across ≈ e^-50 → 0
    aff = A.local_affinities(f, 3)
    const = torch.full((1, 8, 8), 0.7)
    assert torch.allclose(A.random_walk(const, aff, 3, t=64), const, atol=1e-5)
    seed = torch.zeros(1, 8, 8)
    seed[0, 3, 1] = 1.0                                # one seed in the left region
    out = A.random_walk(seed, aff, 3, beta=8, t=256, dtype=torch.float64)[0]
    assert out[:, 4:].abs().max() < 1e-12              # nothing crosses the boundary
    assert out[:, :4].min() > 0.02                     # the seed spread over its whole region
    assert out[:, :4].max() / out[:, :4].min() < 1.5   # … almost evenly after 256 steps


def test_random_walk_labels_fill_the_region_of_the_seed():
    from wsss_core.cams import cams_to_labels

    H = W = 32
    stride, radius = 4, 3
    f = torch.zeros(2, H // stride, W // stride)
    f[:, 2:6, 2:6] = 30.0                              # an "object": 4 × 4 cells = pixels 8..23
    aff = A.local_affinities(f, radius)                # ≈ 0 across its border
    gt = np.zeros((H, W), np.int64)
    gt[8:24, 8:24] = 2
    yy, xx = np.mgrid[:H, :W]
    cams = np.zeros((2, H, W), np.float32)             # a CAM blob around a "badge" near the object's corner,
    cams[1] = np.exp(-((yy - 11) ** 2 + (xx - 11) ** 2) / (2 * 5.0 ** 2))   # spilling onto the background
    lab, scores = A.random_walk_labels(cams, [0, 1], aff, radius, stride, alpha=16, beta=8, t=256,
                                       return_scores=True)
    assert lab.shape == (H, W) and scores.shape == (3, H, W)
    assert set(np.unique(lab)) <= {0, 2}               # class 1 is absent: never predicted

    def iou(pred):
        return ((pred == 2) & (gt == 2)).sum() / ((pred == 2) | (gt == 2)).sum()

    before = cams_to_labels(cams, np.array([0, 1]), alpha=16)
    assert iou(before) < 0.45 and iou(lab) > 0.7       # measured: 0.40 → 0.77
    assert (lab[19:22, 19:22] == 2).all() and (before[19:22, 19:22] == 0).all()  # far corner reached
    assert (lab[:6] == 0).all() and (lab[:, :6] == 0).all()   # the spill onto the background is gone
    with pytest.raises(ValueError, match="grid"):
        A.random_walk_labels(cams, [0, 1], aff[:, :-1], radius, stride)


def test_walk_steps_stop_where_random_walk_labels_end_and_boundary_map():
    H = W = 32
    stride, radius = 4, 3
    f = torch.zeros(2, H // stride, W // stride)
    f[:, 2:6, 2:6] = 30.0
    aff = A.local_affinities(f, radius)
    yy, xx = np.mgrid[:H, :W]
    cams = np.zeros((3, H, W), np.float32)
    cams[1] = np.exp(-((yy - 11) ** 2 + (xx - 11) ** 2) / (2 * 5.0 ** 2))
    label = np.array([0, 1, 0])
    ws = A.walk_steps(cams, label, aff, radius, stride, [64, 0, 16], alpha=16, beta=8)
    assert list(ws) == [0, 16, 64] and ws[64].shape == (4, H, W)
    assert (ws[64][[1, 3]] == -1).all()                          # absent classes never win
    lab = A.random_walk_labels(cams, label, aff, radius, stride, alpha=16, beta=8, t=64)
    assert np.array_equal(ws[64].argmax(0).numpy(), lab)
    x0 = torch.nn.functional.interpolate(A.rw_scores(cams, label, stride, 16)[None], scale_factor=stride, mode="bilinear",
                                         align_corners=False)[0]
    assert torch.allclose(ws[0][[0, 2]], x0[[0, 2]])             # t = 0: the pooled input
    b = A.boundary_map(aff, radius)
    assert b.shape == (8, 8) and b[1, 3] > 0.99 and b[3, 3] < 1e-6 and b[7, 7] < 1e-6   # the object's edge, not its inside
    big = A.boundary_map(aff, radius, (H, W))
    assert big.shape == (H, W) and big[4 * 1 + 2, 4 * 3 + 1] == b[1, 3]


def test_rw_scores_pool_with_power_background():
    cams = np.zeros((2, 8, 8), np.float32)
    cams[0, :4, :4] = 1.0
    x = A.rw_scores(cams, [1, 0], stride=4, alpha=16)
    assert x.shape == (3, 2, 2)
    assert torch.allclose(x[1], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(x[0], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    assert (x[2] == 0).all()
    assert A.rw_scores(np.zeros((1, 9, 10), np.float32), [1], stride=4).shape == (2, 3, 3)  # padded


def test_input_validation():
    aff = _random_aff(4, 4, 3)
    with pytest.raises(ValueError, match="radius"):
        A.transition_matrix(aff, 5)
    with pytest.raises(ValueError, match="grid"):
        A.random_walk(torch.rand(2, 5, 4), aff, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.transition_matrix(aff * 2, 3)
    with pytest.raises(ValueError, match="non-negative"):
        A.propagate(A.transition_matrix(aff, 3), torch.rand(1, 4, 4), -1)


# ------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------

def test_affinitynet_shapes_init_and_frozen_backbone():
    torch.manual_seed(0)
    clf = CAMClassifier(CompactCNN(width=8, output_stride=8), 3)
    net = AffinityNet(CompactCNN(width=8, output_stride=4), (4, 8, 16), feature_stride=4)
    net.load_backbone_from(clf)                        # stride-8 weights fit the dilated stride-4 backbone
    for (k, v), (k2, v2) in zip(clf.backbone.state_dict().items(), net.backbone.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randn(2, 3, 32, 40)
    f = net(x)
    assert f.shape == (2, 28, 8, 10) and (f > -1).all()  # ELU output
    assert net.affinities(x, 5).shape == (2, 34, 8, 10)
    # from a stride-8 backbone the coarse level is upsampled to stride 4
    net8 = AffinityNet(CompactCNN(width=8, output_stride=8), (4, 8, 16), embed_dim=12, feature_stride=4)
    assert net8(x).shape == (2, 12, 8, 10)
    groups = net.param_groups(10.0)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    frozen = AffinityNet(CompactCNN(width=8, output_stride=8), (4, 8, 16), feature_stride=4, frozen_backbone=True)
    frozen.train()
    assert not frozen.backbone.training and frozen.fuse.weight.requires_grad
    frozen(x).sum().backward()
    assert all(p.grad is None for p in frozen.backbone.parameters())
    assert frozen.fuse.weight.grad is not None
    with pytest.raises(ValueError, match="do not fit"):
        net.load_backbone_from(CompactCNN(width=16).state_dict())


def test_affinitynet_shallow_levels_have_a_local_receptive_field():
    """``levels=("s2", "s4")`` (the tutorial's AffinityNet): features depend only on nearby pixels, so
    they cannot see a badge 30 px away; with the deep level they do."""
    torch.manual_seed(0)
    shallow = AffinityNet(CompactCNN(width=8, output_stride=8), (4, 8), feature_stride=4, levels=("s2", "s4")).eval()
    deep = AffinityNet(CompactCNN(width=8, output_stride=8), (4, 8, 16), feature_stride=4).eval()
    assert shallow.levels == ["s2", "s4"] and deep.levels == ["s2", "s4", "out"]
    x = torch.randn(1, 3, 64, 64)
    x2 = x.clone()
    x2[..., 48:] = torch.randn(1, 3, 64, 16)           # change only the 16 right-most columns
    with torch.no_grad():
        fs, fs2 = shallow(x), shallow(x2)
        fd, fd2 = deep(x), deep(x2)
    assert fs.shape == (1, 12, 16, 16)
    # grid columns 0-3 cover pixels 0-15; the shallow receptive field (19 px) stops far short of column 48
    assert torch.equal(fs[..., :4], fs2[..., :4]) and not torch.equal(fs[..., -4:], fs2[..., -4:])
    # the deep level (receptive field 43 px at stride 8, bilinearly upsampled) reaches further
    assert not torch.allclose(fd[..., 6:8], fd2[..., 6:8])
    with pytest.raises(ValueError, match="levels"):
        AffinityNet(CompactCNN(width=8), (4, 8), levels=("s2", "nope"))
