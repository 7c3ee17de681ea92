"""Tests of wsss_core.cams: multi-scale/flip CAM inference, background scores, pseudo-labels,
threshold sweeps and CAM storage, against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.cams import (
    background_power,
    cams_to_labels,
    load_cams,
    miou_from_confusion,
    multiscale_cams,
    save_cams,
    threshold_sweep,
    with_background,
)
from wsss_core.metrics import ConfusionMatrix

EPS = 1e-5  # the normalisation constant of PSA/IRN: M = S / (max S + 1e-5)


# --------------------------------------------------------------------------------------------------
# hand-made "models": only .cam(x) is used by multiscale_cams
# --------------------------------------------------------------------------------------------------
class PointwiseCAM(nn.Module):
    """CAM_c(x) = ReLU(Σ_k W[c, k] x_k): a 1×1 convolution with known weights (flip-equivariant)."""

    def __init__(self, weight):
        super().__init__()
        w = torch.as_tensor(weight, dtype=torch.float32)
        self.conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(w[:, :, None, None])
        self.calls = []

    def cam(self, x):
        self.calls.append(tuple(x.shape))
        return F.relu(self.conv(x))


class RampCAM(nn.Module):
    """Ignores the content: CAM_c(x)[i, j] = (c + 1) · j, a left→right ramp (not flip-equivariant)."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes

    def cam(self, x):
        B, _, H, W = x.shape
        ramp = torch.arange(W, dtype=torch.float32).expand(H, W)
        scale = torch.arange(1, self.num_classes + 1, dtype=torch.float32)[:, None, None]
        return (scale * ramp).expand(B, self.num_classes, H, W).clone()


def _images(B=2, H=6, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, H, W, generator=g)


# --------------------------------------------------------------------------------------------------
# multiscale_cams
# --------------------------------------------------------------------------------------------------
def test_single_scale_no_flip_is_the_relu_cam():
    W = [[1.0, 0.0, 0.0], [0.0, -2.0, 1.0]]  # class 0 = channel 0; class 1 = ReLU(x2 - 2 x1)
    model = PointwiseCAM(W)
    x = _images()
    out = multiscale_cams(model, x, scales=(1.0,), flip=False, normalize=False)
    expected = torch.stack([x[:, 0], (x[:, 2] - 2 * x[:, 1]).clamp(min=0)], 1)
    assert out.shape == (2, 2, 6, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert model.calls == [(2, 3, 6, 8)]  # one pass, no flipped copy


def test_normalisation_divides_each_class_map_by_its_max_plus_1e5():
    model = PointwiseCAM([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 4.0], [2.0, 0.0]])  # class 0 max 4
    x[0, 1] = torch.tensor([[0.5, 0.0], [0.25, 0.0]])  # class 1: 1.5, 0, 0.75, 0 → max 1.5
    out = multiscale_cams(model, x, scales=(1.0,), flip=False)
    exp0 = torch.tensor([[1.0, 4.0], [2.0, 0.0]]) / (4 + EPS)
    exp1 = torch.tensor([[1.5, 0.0], [0.75, 0.0]]) / (1.5 + EPS)
    torch.testing.assert_close(out[0, 0], exp0, rtol=0, atol=1e-7)
    torch.testing.assert_close(out[0, 1], exp1, rtol=0, atol=1e-7)
    assert out[0, 0].max().item() == pytest.approx(4 / (4 + EPS), abs=1e-7)
    assert out.max() < 1.0  # the +1e-5 keeps every value strictly below 1


def test_flip_of_an_equivariant_cam_doubles_the_sum_and_keeps_normalised_maps():
    model = PointwiseCAM([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    x = _images(B=2, seed=3)  # two different images: the un-flip must not mix batch items
    raw1 = multiscale_cams(model, x, scales=(1.0,), flip=False, normalize=False)
    raw2 = multiscale_cams(model, x, scales=(1.0,), flip=True, normalize=False)
    torch.testing.assert_close(raw2, 2 * raw1, rtol=1e-6, atol=1e-6)
    assert model.calls[-1] == (4, 3, 6, 8)  # image and its flip in one batch of 2B
    norm = multiscale_cams(model, x, scales=(1.0,), flip=True)
    mx = raw1.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(norm, 2 * raw1 / (2 * mx + EPS), rtol=1e-6, atol=1e-7)


def test_flip_sum_of_an_asymmetric_map_is_symmetric():
    model = RampCAM(num_classes=2)
    x = _images(B=1, H=3, W=5)
    one = multiscale_cams(model, x, scales=(1.0,), flip=False, normalize=False)
    assert not torch.equal(one, one.flip(-1))  # the ramp itself is asymmetric
    both = multiscale_cams(model, x, scales=(1.0,), flip=True, normalize=False)
    torch.testing.assert_close(both, both.flip(-1))
    # j + (W - 1 - j) = W - 1 = 4 everywhere, times (c + 1)
    torch.testing.assert_close(both[0, 0], torch.full((3, 5), 4.0))
    torch.testing.assert_close(both[0, 1], torch.full((3, 5), 8.0))


def test_absent_classes_are_zeroed_and_labels_none_keeps_all():
    model = PointwiseCAM([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    x = _images(B=2) + 0.1  # strictly positive maps for all classes
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    out = multiscale_cams(model, x, labels, scales=(1.0, 0.5), flip=True)
    for b in range(2):
        for c in range(3):
            if labels[b, c]:
                assert out[b, c].max().item() == pytest.approx(1.0, abs=1e-4)
                assert out[b, c].min() > 0
            else:
                assert torch.count_nonzero(out[b, c]) == 0
    every = multiscale_cams(model, x, None, scales=(1.0, 0.5), flip=True)
    torch.testing.assert_close(every * labels[:, :, None, None], out)
    assert (every.amax(dim=(2, 3)) > 0.99).all()


def test_scales_are_resized_back_and_summed():
    model = PointwiseCAM([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # a constant image: every scale gives the same constant map, so the sum is len(scales) × it
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0], x[0, 1] = 0.5, 2.0
    out = multiscale_cams(model, x, scales=(1.0, 0.5, 1.5, 2.0), flip=True, normalize=False)
    torch.testing.assert_close(out[0, 0], torch.full((8, 8), 0.5 * 8))
    torch.testing.assert_close(out[0, 1], torch.full((8, 8), 2.0 * 8))
    assert sorted(model.calls) == sorted([(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 12, 12), (2, 3, 16, 16)])
    # a varying image: scale 0.5 is a bilinear down-sampling whose map is bilinearly resized back
    x = _images(B=1, H=8, W=8, seed=5)
    out = multiscale_cams(model, x, scales=(1.0, 0.5), flip=False, normalize=False)
    half = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    back = F.interpolate(half[:, :2], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, x[:, :2] + back, rtol=1e-6, atol=1e-6)


def test_output_size_argument():
    model = RampCAM(num_classes=1)
    x = _images(B=2, H=4, W=8)
    out = multiscale_cams(model, x, scales=(1.0,), flip=False, size=(4, 4), normalize=False)
    assert out.shape == (2, 1, 4, 4)
    # 8 → 4 bilinear (align_corners=False) samples at 2j + 0.5: the mean of columns 2j and 2j + 1
    torch.testing.assert_close(out[0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]).expand(4, 4))
    out = multiscale_cams(model, x, scales=(1.0,), flip=False, size=(4, 4))
    torch.testing.assert_close(out[1, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]) / (6.5 + EPS))


def test_custom_cam_fn_is_used():
    model = PointwiseCAM([[1.0, 0.0, 0.0]])
    x = _images(B=1)
    out = multiscale_cams(model, x, scales=(1.0,), flip=False, normalize=False,
                          cam_fn=lambda m, xs: 3.0 * m.cam(xs))
    torch.testing.assert_close(out[0, 0], 3.0 * x[0, 0])


# --------------------------------------------------------------------------------------------------
# background score and pseudo-labels
# --------------------------------------------------------------------------------------------------
# 1×3 example: class 1 = [0.1, 0.5, 0.3], class 2 = [0.3, 0.2, 0.9] (channel c ↔ class c + 1)
CAMS = np.array([[[0.1, 0.5, 0.3]], [[0.3, 0.2, 0.9]]], np.float32)


def test_background_power_by_hand_numpy_and_torch_agree():
    # max over classes = [0.3, 0.5, 0.9]
    np.testing.assert_allclose(background_power(CAMS, 1), [[0.7, 0.5, 0.1]], rtol=1e-6)
    np.testing.assert_allclose(background_power(CAMS, 2), [[0.49, 0.25, 0.01]], rtol=1e-5)
    np.testing.assert_allclose(background_power(CAMS, 4), [[0.2401, 0.0625, 0.0001]], rtol=1e-4)
    t = background_power(torch.from_numpy(CAMS), 4)
    assert isinstance(t, torch.Tensor) and t.shape == (1, 3)
    np.testing.assert_allclose(t.numpy(), background_power(CAMS, 4), rtol=1e-6)
    # batched (B, C, H, W) → (B, H, W); no classes → max 0 → background 1
    batch = np.stack([CAMS, CAMS[::-1]])
    assert background_power(batch, 2).shape == (2, 1, 3)
    np.testing.assert_allclose(background_power(np.zeros((0, 2, 2), np.float32), 4), np.ones((2, 2)))
    np.testing.assert_allclose(background_power(torch.zeros(0, 2, 2), 4).numpy(), np.ones((2, 2)))


def test_with_background_stacks_bg_and_marks_absent_classes():
    out = with_background(CAMS, [1, 0], threshold=0.25)
    assert isinstance(out, np.ndarray) and out.shape == (3, 1, 3)
    np.testing.assert_allclose(out[0], 0.25)
    np.testing.assert_allclose(out[1], CAMS[0])
    np.testing.assert_allclose(out[2], -1.0)  # absent: can never win
    out = with_background(torch.from_numpy(CAMS), torch.tensor([1, 1]), alpha=2)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out[0].numpy(), [[0.49, 0.25, 0.01]], rtol=1e-5)
    with pytest.raises(ValueError):
        with_background(CAMS, threshold=None, alpha=None)


@pytest.mark.parametrize("kw, expected", [
    (dict(threshold=0.2), [2, 1, 2]),
    (dict(threshold=0.4), [0, 1, 2]),  # pixel 0's best is 0.3 < 0.4
    (dict(threshold=0.3), [0, 1, 2]),  # pixel 0: a tie 0.3 = 0.3 goes to background
    (dict(threshold=0.95), [0, 0, 0]),
    (dict(alpha=1), [0, 0, 2]),  # bg = [0.7, 0.5, 0.1]; pixel 1 is a tie 0.5 = 0.5 → background
    (dict(alpha=4), [2, 1, 2]),  # bg = [0.24, 0.06, 0.0001]
    (dict(threshold=0.99, alpha=4), [2, 1, 2]),  # alpha wins over threshold
])
def test_cams_to_labels_by_hand(kw, expected):
    got = cams_to_labels(CAMS, [1, 1], **kw)
    assert got.dtype == np.int64 and got.shape == (1, 3)
    assert got.tolist() == [expected]
    got_t = cams_to_labels(torch.from_numpy(CAMS), torch.tensor([1.0, 1.0]), **kw)
    assert got_t.tolist() == [expected]


def test_absent_classes_never_win():
    # class 2 is absent: pixel 2 (0.9 for class 2) must not become class 2
    assert cams_to_labels(CAMS, [1, 0], threshold=0.2).tolist() == [[0, 1, 1]]
    assert cams_to_labels(CAMS, [0, 1], threshold=0.2).tolist() == [[2, 0, 2]]
    # no class present: all background, even at a threshold of 0
    assert cams_to_labels(CAMS, [0, 0], threshold=0.0).tolist() == [[0, 0, 0]]
    # label None keeps every class
    assert cams_to_labels(CAMS, None, threshold=0.2).tolist() == [[2, 1, 2]]
    # alpha mode with the absent class already zeroed (as multiscale_cams delivers it)
    zeroed = CAMS.copy()
    zeroed[1] = 0
    assert cams_to_labels(zeroed, [1, 0], alpha=1).tolist() == [[0, 0, 0]]  # bg 0.9, 0.5(tie), 0.7
    assert cams_to_labels(zeroed, [1, 0], alpha=4).tolist() == [[0, 1, 1]]  # bg 0.66, 0.06, 0.24


def test_alpha_background_ignores_absent_classes():
    # absent class 2 has 0.9 at pixel 2 → bg = (1 - 0.9)^1 = 0.1 < 0.3 → class 1 wins; with only the
    # present class, bg = (1 - 0.3)^1 = 0.7 → background (PSA infer_cls: bg from present classes)
    assert cams_to_labels(CAMS, [1, 0], alpha=1).tolist() == [[0, 0, 0]]


def test_batched_torch_labels():
    cams = torch.from_numpy(np.stack([CAMS, CAMS]))
    lab = torch.tensor([[1, 1], [1, 0]])
    got = cams_to_labels(cams, lab, threshold=0.2)
    assert got.shape == (2, 1, 3) and got.dtype == torch.int64
    assert got.tolist() == [[[2, 1, 2]], [[0, 1, 1]]]


# --------------------------------------------------------------------------------------------------
# threshold sweep
# --------------------------------------------------------------------------------------------------
def _sweep_samples(seed=0, C=3, H=5, W=7, n=6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cams = rng.random((C, H, W)).astype(np.float32)
        cams[:, 0, 0] = [0.5, 0.25, 0.1]  # exact ties with thresholds 0.5 / 0.25
        cams[:, 0, 1] = [0.25, 0.0, 0.25]
        label = (rng.random(C) < 0.6).astype(np.float32)
        if i == 0:
            label[:] = 0  # an image with no present class
        if i == 1:
            label[:] = 1
        gt = rng.integers(0, C + 1, (H, W)).astype(np.uint8)
        gt[rng.random((H, W)) < 0.2] = 255
        out.append((cams, label, gt))
    return out


def test_threshold_sweep_equals_confusion_of_cams_to_labels():
    samples = _sweep_samples()
    ths = (0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 0.95)
    mats = threshold_sweep(iter(samples), num_classes=3, thresholds=ths)
    assert mats.shape == (len(ths), 4, 4) and mats.dtype == np.int64
    n_valid = sum(int((gt != 255).sum()) for _, _, gt in samples)
    for k, t in enumerate(ths):
        cm = ConfusionMatrix(4)
        for cams, label, gt in samples:
            cm.update(cams_to_labels(cams, label, threshold=t), gt)
        np.testing.assert_array_equal(mats[k], cm.mat, err_msg=f"threshold {t}")
        assert mats[k].sum() == n_valid
        assert miou_from_confusion(mats[k]) == pytest.approx(cm.miou(), rel=1e-12)
    np.testing.assert_allclose(miou_from_confusion(mats),
                               [miou_from_confusion(m) for m in mats], rtol=1e-12)
    # higher thresholds only move pixels into the background column
    fg_pred = mats[:, :, 1:].sum((1, 2))
    assert (np.diff(fg_pred) <= 0).all() and fg_pred[0] > fg_pred[-1]


def test_threshold_sweep_default_thresholds():
    samples = _sweep_samples(seed=1)
    mats = threshold_sweep(samples, num_classes=3)
    assert mats.shape == (19, 4, 4)  # 0.05, 0.10, …, 0.95
    cm = ConfusionMatrix(4)
    for cams, label, gt in samples:
        cm.update(cams_to_labels(cams, label, threshold=0.35), gt)
    np.testing.assert_array_equal(mats[6], cm.mat)


def test_threshold_sweep_rejects_out_of_range_ground_truth():
    cams, label, gt = _sweep_samples(n=1)[0]
    gt = gt.copy()
    gt[2, 3] = 4  # K = 4 labels: 0..3 valid, 255 ignored
    with pytest.raises(ValueError, match="4"):
        threshold_sweep([(cams, label, gt)], num_classes=3, thresholds=(0.2, 0.4))


def test_miou_from_confusion_by_hand():
    # rows = truth: class 0 IoU 2/(3+3-2) = 0.5; class 1 IoU 1/(2+2-1) = 1/3; class 2 absent → skipped
    mat = np.array([[2, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert miou_from_confusion(mat) == pytest.approx((0.5 + 1 / 3) / 2)
    cm = ConfusionMatrix(3)
    cm.mat = mat.astype(np.int64)
    assert miou_from_confusion(mat) == pytest.approx(cm.miou())


# --------------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    cams = rng.random((4, 6, 5)).astype(np.float32)  # all channels non-zero
    label = np.array([1, 0, 1, 0], np.float32)
    save_cams(tmp_path / "sub" / "img_1", cams, label)
    assert (tmp_path / "sub" / "img_1.npz").is_file()
    with np.load(tmp_path / "sub" / "img_1.npz") as z:
        assert z["keys"].tolist() == [0, 2] and z["cams"].dtype == np.float16
        assert z["cams"].shape == (2, 6, 5) and int(z["num_classes"]) == 4
    got, lab = load_cams(tmp_path / "sub" / "img_1")
    assert got.dtype == np.float32 and got.shape == (4, 6, 5)
    np.testing.assert_array_equal(lab, label)
    # float16 keeps 11 significant bits: |error| ≤ 2^-12 for values in [0.5, 1)
    np.testing.assert_allclose(got[[0, 2]], cams[[0, 2]], rtol=0, atol=2.5e-4)
    assert not np.array_equal(got[[0, 2]], cams[[0, 2]])  # it really is float16
    assert np.count_nonzero(got[[1, 3]]) == 0  # absent classes are not stored
    # torch input and an explicit .npz path
    save_cams(tmp_path / "t.npz", torch.from_numpy(cams), torch.tensor([0, 1, 0, 0]))
    got, lab = load_cams(tmp_path / "t.npz")
    assert lab.tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(got[1], cams[1], atol=2.5e-4)
    assert np.count_nonzero(got[[0, 2, 3]]) == 0


def test_save_load_dotted_name(tmp_path):
    cams = np.ones((2, 3, 3), np.float32)
    save_cams(tmp_path / "frame.0001", cams, [1, 0])
    got, lab = load_cams(tmp_path / "frame.0001")
    assert lab.tolist() == [1, 0]


def test_alpha_to_threshold_is_the_root_and_gives_the_same_labels():
    from wsss_core.cams import alpha_to_threshold

    for alpha in (1.0, 4.0, 16.0, 32.0):
        t = alpha_to_threshold(alpha)
        assert abs((1 - t) ** alpha - t) < 1e-9
    assert abs(alpha_to_threshold(1.0) - 0.5) < 1e-12
    rng = np.random.default_rng(0)
    cams = rng.random((3, 20, 20)).astype(np.float32)
    label = np.array([1, 0, 1], np.float32)
    a = cams_to_labels(cams, label, alpha=16.0)
    b = cams_to_labels(cams, label, threshold=alpha_to_threshold(16.0))
    assert (a == b).mean() > 0.999
    with pytest.raises(ValueError):
        alpha_to_threshold(0.0)


def test_numpy_and_torch_branches_agree():
    "with_background / cams_to_labels on numpy run without torch; labels must equal the torch branch's."
    rng = np.random.default_rng(1)
    for trial in range(60):
        C = int(rng.integers(1, 7))
        cams = rng.random((C, 9, 11)).astype(np.float32)
        if trial % 3 == 0:
            cams = np.round(cams * 4) / 4          # ties between classes and with the background
        lab = (rng.random(C) > 0.4).astype(np.float32)
        for kw in ({"threshold": 0.25}, {"alpha": 16.0}):
            a = cams_to_labels(cams, lab, **kw)
            b = cams_to_labels(torch.from_numpy(cams), torch.from_numpy(lab), **kw).numpy()
            assert a.dtype == np.int64 and np.array_equal(a, b)
            x = with_background(cams, lab, **kw)
            assert isinstance(x, np.ndarray)
            assert np.allclose(x, with_background(torch.from_numpy(cams), torch.from_numpy(lab), **kw).numpy(),
                               rtol=1e-6, atol=1e-7)
    batch = rng.random((3, 4, 8, 8)).astype(np.float32)
    assert np.array_equal(cams_to_labels(batch, None, threshold=0.3),
                          cams_to_labels(torch.from_numpy(batch), None, threshold=0.3).numpy())
