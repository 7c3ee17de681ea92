"""DeepLab heads, multi-scale inference, the segmentation stage (train on a label folder, evaluate)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_core.data.palette import write_label_png
from wsss_core.models.backbones import CompactCNN, ResNetBackbone
from wsss_core.models.deeplab import ASPPv2, DeepLab, dense_crf, multiscale_predict
from wsss_core.stages import segmentation as seg


def test_deeplab_heads_shapes():
    x = torch.randn(2, 3, 40, 56)
    for head in ("v2", "v3plus"):
        m = DeepLab(CompactCNN(8), num_classes=5, head=head, rates=(1, 2, 3, 4), channels=16).eval()
        assert m(x).shape == (2, 5, 40, 56)
    r = DeepLab(ResNetBackbone(18, output_stride=32), num_classes=3, head="v3plus", rates=(1, 2, 3)).eval()
    assert r.low_level == "layer1" and r(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="no feature"):
        DeepLab(CompactCNN(8), 3, head="v3plus", low_level="layer1")


def test_aspp_v2_sums_its_dilated_branches():
    torch.manual_seed(0)
    a = ASPPv2(4, 3, rates=(1, 2))
    x = torch.randn(1, 4, 9, 9)
    manual = sum(F.conv2d(x, b.weight, b.bias, padding=r, dilation=r) for b, r in zip(a.branches, (1, 2)))
    assert torch.allclose(a(x), manual, atol=1e-6)


def test_param_groups_split_backbone_and_head():
    m = DeepLab(CompactCNN(8), 3, head="v2", rates=(1,))
    g = m.param_groups(10.0)
    assert g[1]["lr_mult"] == 10.0
    n_back = sum(p.numel() for p in m.backbone.parameters())
    assert sum(p.numel() for p in g[0]["params"]) == n_back
    assert sum(p.numel() for p in g[1]["params"]) == sum(p.numel() for p in m.parameters()) - n_back


class _LeftRight(torch.nn.Module):
    """Class 1 where x > mean, else class 0: a left-right asymmetric toy 'segmenter'."""

    def forward(self, x):
        s = x[:, :1] - x[:, :1].mean(dim=(2, 3), keepdim=True)
        return torch.cat([-s, s], 1) * 10


def test_multiscale_predict_is_a_probability_average():
    x = torch.zeros(1, 3, 4, 6)
    x[..., 3:] = 1.0
    p = multiscale_predict(_LeftRight(), x, scales=(1.0, 0.5), flip=False)
    assert torch.allclose(p.sum(1), torch.ones(1, 4, 6), atol=1e-6)
    assert (p[0, 1, :, 4:] > 0.9).all() and (p[0, 1, :, :2] < 0.1).all()
    # with flip the prediction for the flipped image is flipped back: still right = class 1
    pf = multiscale_predict(_LeftRight(), x, scales=(1.0,), flip=True)
    assert (pf[0, 1, :, 4:] > 0.9).all()


def test_segmentation_step_ignores_255():
    class Const(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            out[:, 1] = 2.0
            return out

    mask = torch.tensor([[[0, 1], [255, 2]]])
    loss = seg.segmentation_step(Const(), {"image": torch.zeros(1, 3, 2, 2), "mask": mask}, "cpu")["loss"]
    lp = torch.log_softmax(torch.tensor([0.0, 2.0, 0.0]), 0)
    assert loss.item() == pytest.approx(float(-(lp[0] + lp[1] + lp[2]) / 3), abs=1e-6)


def test_dense_crf_keeps_a_confident_labelling():
    pytest.importorskip("pydensecrf.densecrf", reason="optional extra 'crf' (pydensecrf2) not installed")
    img = np.zeros((12, 12, 3), np.uint8)
    img[:, 6:] = 255
    probs = np.full((2, 12, 12), 0.1, np.float32)
    probs[0, :, :6] = 0.9
    probs[1, :, 6:] = 0.9
    out = dense_crf(img, probs, iterations=5)
    assert out.shape == (2, 12, 12)
    assert (out.argmax(0) == probs.argmax(0)).all()


@pytest.mark.slow
def test_stage_trains_on_a_label_folder_and_reuses_its_checkpoint(tmp_path):
    from wsss_core.data.toyscenes import ToySceneConfig, context_pairs, ensure_toyscenes
    from wsss_core.data.voc import VOCLayoutDataset
    from wsss_core.profiles import DataSpec

    root = tmp_path / "toy"
    man = ensure_toyscenes(root, ToySceneConfig(n_train=16, n_val=8), workers=1, progress=False)
    data = DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)
    # a "pseudo-label" folder: the true masks with every foreground pixel of class 3 erased
    labels = tmp_path / "labels"
    ds = VOCLayoutDataset(root, "train", saliency_dir=None, extra_dirs=None)
    for i in range(len(ds)):
        m = ds.get_raw(i)["mask"].copy()
        m[m == 3] = 0
        write_label_png(labels / f"{ds.ids[i]}.png", m)
    cfg = seg.config_for_profile("smoke").replace(train=seg.config_for_profile("smoke").train.replace(
        epochs=1, batch_size=8, progress=False))
    train_ds = seg.label_dataset(root, "train", cfg, labels)
    assert not any((train_ds[i]["mask"] == 3).any() for i in range(len(train_ds)))  # reads the label folder
    res = seg.run(cfg, data, labels, tmp_path / "out", progress=False)
    assert {"miou", "fg_precision", "context_leak", "per_class_iou"} <= set(res.report)
    assert res.report["n_images"] == 8  # the validation split, with true masks
    stored = json.loads((res.checkpoint_dir / "report.json").read_text())
    assert stored["report"]["miou"] == pytest.approx(res.report["miou"])
    again = seg.run(cfg, data, labels, tmp_path / "out", progress=False)
    assert again.checkpoint_dir == res.checkpoint_dir
    for a, b in zip(res.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    full = seg.run(cfg, data, None, tmp_path / "out", progress=False)  # the upper bound: another network
    assert full.checkpoint_dir != res.checkpoint_dir


def test_channels_last_is_a_layout_not_a_model():
    """The tutorial's NHWC layout computes what NCHW computes and keeps the checkpoint's fingerprint."""
    torch.manual_seed(0)
    cfg = seg.config_for_profile("smoke").replace(channels=16, backbone_kwargs={"width": 8, "output_stride": 8})
    a = seg.build_model(cfg, 3).eval()
    b = seg.build_model(cfg, 3).eval()
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)
    assert seg.segmenter_identity(cfg) == seg.segmenter_identity(cfg.replace(channels_last=True, eval_flip=False))
    assert seg.config_for_profile("study").channels_last is False

