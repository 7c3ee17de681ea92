"""Tests of wsss_core.models: backbones (CompactCNN, dilated ResNets, weight loading) and the CAM
classifier (the CAM identity, ReLU maps, the multi-label loss)."""
from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from wsss_core.models.backbones import (
    CompactCNN,
    FixedBatchNorm,
    ResNetBackbone,
    WeightsUnavailableError,
    build_backbone,
)
from wsss_core.models.cam import CAMClassifier, multilabel_loss


def _x(B=1, H=64, W=64, seed=0):
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# CompactCNN
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("os_, out_hw", [(8, 8), (4, 16)])
def test_compact_cnn_features(os_, out_hw):
    net = CompactCNN(width=32, output_stride=os_).eval()
    with torch.no_grad():
        f = net(_x())
    assert list(f) == ["s2", "s4", "out"]  # finest first, "out" last
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "s2": (1, 32, 32, 32), "s4": (1, 64, 16, 16), "out": (1, 128, out_hw, out_hw)}
    assert dict(net.channels) == {"s2": 32, "s4": 64, "out": 128} and net.out_channels == 128
    assert dict(net.strides) == {"s2": 2, "s4": 4, "out": os_} and net.output_stride == os_
    for k, v in f.items():  # strides are what the maps show
        assert 64 // v.shape[-1] == net.strides[k] and v.shape[1] == net.channels[k]
    assert (f["out"] >= 0).all()  # ends in ReLU


def _compact_params(w: int) -> int:
    # six 3×3 convs without bias (9·cin·cout) + BatchNorm weight and bias (2·cout)
    layers = [(3, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)]
    return sum(9 * ci * co + 2 * co for ci, co in layers)


def test_compact_cnn_parameter_count():
    n32 = sum(p.numel() for p in CompactCNN(width=32).parameters())
    # 864 + 9216 + 18432 + 36864 + 73728 + 147456 conv weights + 896 BN parameters
    assert n32 == _compact_params(32) == 287_456
    assert sum(p.numel() for p in CompactCNN(width=8).parameters()) == _compact_params(8)
    # the stride-4 variant only changes strides and dilation, not the parameters
    assert sum(p.numel() for p in CompactCNN(width=32, output_stride=4).parameters()) == n32


def test_compact_cnn_rejects_bad_output_stride():
    with pytest.raises(ValueError, match="output_stride"):
        CompactCNN(output_stride=16)
    assert isinstance(build_backbone("compact", width=8), CompactCNN)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")


# --------------------------------------------------------------------------------------------------
# ResNet backbones
# --------------------------------------------------------------------------------------------------
def test_resnet50_dilated_output_strides():
    """The one ResNet-50 test (two small constructions): OS 16 (IRN) and OS 8 (PSA/DeepLab)."""
    x = _x()
    shapes = {}
    for os_ in (16, 8):
        net = ResNetBackbone(depth=50, output_stride=os_).eval()
        with torch.no_grad():
            f = net(x)
        shapes[os_] = {k: tuple(v.shape) for k, v in f.items()}
        assert dict(net.channels) == {"layer1": 256, "layer2": 512, "layer3": 1024, "out": 2048}
        assert net.out_channels == 2048 and net.output_stride == os_
        for k, v in f.items():
            assert 64 // v.shape[-1] == net.strides[k], k
    assert shapes[16] == {"layer1": (1, 256, 16, 16), "layer2": (1, 512, 8, 8),
                          "layer3": (1, 1024, 4, 4), "out": (1, 2048, 4, 4)}
    assert shapes[8] == {"layer1": (1, 256, 16, 16), "layer2": (1, 512, 8, 8),
                         "layer3": (1, 1024, 8, 8), "out": (1, 2048, 8, 8)}


def test_resnet18_plain_stride_32():
    net = build_backbone("resnet18", output_stride=32).eval()
    assert isinstance(net, ResNetBackbone)
    with torch.no_grad():
        f = net(_x())
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "layer1": (1, 64, 16, 16), "layer2": (1, 128, 8, 8), "layer3": (1, 256, 4, 4), "out": (1, 512, 2, 2)}
    assert dict(net.strides) == {"layer1": 4, "layer2": 8, "layer3": 16, "out": 32}


@pytest.mark.parametrize("kw, match", [
    (dict(depth=50, output_stride=12), "output_stride"),
    (dict(depth=18, output_stride=16), "depth 50/101"),
    (dict(depth=34, output_stride=8), "depth 50/101"),
    (dict(depth=20, output_stride=32), "depth"),
])
def test_resnet_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ResNetBackbone(**kw)


def test_frozen_stages_have_no_grad():
    torch.manual_seed(0)
    net = ResNetBackbone(depth=18, output_stride=32, frozen_stages=2)
    frozen = [net.stem, net.layer1, net.layer2]
    for mod in frozen:
        assert all(not p.requires_grad for p in mod.parameters())
    for mod in (net.layer3, net.layer4):
        assert all(p.requires_grad for p in mod.parameters())
    f = net(_x(B=2, H=32, W=32))
    assert not f["layer1"].requires_grad and not f["layer2"].requires_grad  # detached (IRN)
    f["out"].sum().backward()
    for mod in frozen:
        assert all(p.grad is None for p in mod.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.layer4.parameters())
    # the CAM classifier's optimiser groups only hold trainable backbone parameters
    clf = CAMClassifier(net, num_classes=3)
    groups = clf.param_groups(lr_mult_new=10.0)
    n_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert sum(p.numel() for p in groups[0]["params"]) == n_trainable
    assert groups[1]["lr_mult"] == 10.0 and groups[1]["params"][0] is clf.classifier.weight


def test_freeze_bn_uses_running_statistics_in_train_mode():
    torch.manual_seed(0)
    net = ResNetBackbone(depth=18, output_stride=32, freeze_bn=True)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FixedBatchNorm) for m in bns)
    for m in bns:  # non-trivial running statistics
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
    before = [m.running_mean.clone() for m in bns]
    x = _x(B=2, H=32, W=32)
    net.train()
    with torch.no_grad():
        y_train = net(x)["out"]
    net.eval()
    with torch.no_grad():
        y_eval = net(x)["out"]
    torch.testing.assert_close(y_train, y_eval)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))  # not updated
    # a plain BatchNorm in train mode would normalise by the batch statistics instead
    bn = FixedBatchNorm(3).train()
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    z = torch.randn(4, 3, 5, 5) * 3 + 7
    torch.testing.assert_close(bn(z), (z - 1.0) / math.sqrt(4.0 + bn.eps))


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------
def test_imagenet_weights_offline_raise_a_helpful_error(monkeypatch, tmp_path):
    from torchvision.models import _api

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # never touch the network: every way the torchvision weights could be fetched fails like offline
    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(_api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(WeightsUnavailableError) as ei:
        ResNetBackbone(depth=18, output_stride=32, weights="imagenet")
    assert calls, "the patched loader was not reached"
    msg = str(ei.value)
    fname = Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / fname
    assert str(expected) in msg
    assert "weights=None" in msg and "resnet18" in msg
    assert isinstance(ei.value.__cause__, urllib.error.URLError)


def _rename(backbone_state: dict) -> dict:
    """Backbone parameter names → torchvision ResNet names (stem.0 = conv1, stem.1 = bn1)."""
    out = {}
    for k, v in backbone_state.items():
        k = k.replace("stem.0.", "conv1.", 1) if k.startswith("stem.0.") else k
        k = k.replace("stem.1.", "bn1.", 1) if k.startswith("stem.1.") else k
        out[k] = v
    return out


@pytest.fixture(scope="module")
def r18_state():
    """A resnet18 state dict with a seeded init and non-default BN statistics (buffers are checked)."""
    torch.manual_seed(123)
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    return ref.state_dict()


def test_local_weights_file_loads_exactly(tmp_path, r18_state):
    expected = {k: v for k, v in r18_state.items() if not k.startswith("fc.")}
    for wrap in (None, "state_dict", "model"):  # plain, {"state_dict": …}, {"model": …}
        path = tmp_path / f"r18_{wrap}.pth"
        torch.save(r18_state if wrap is None else {wrap: r18_state}, path)
        torch.manual_seed(999)  # a different random init that loading must overwrite
        net = ResNetBackbone(depth=18, output_stride=32, weights=str(path) if wrap else path)
        got = _rename(net.state_dict())
        assert set(got) == set(expected)
        for k, v in expected.items():
            assert torch.equal(got[k], v), (wrap, k)


def test_missing_or_mismatched_weights_file(tmp_path, r18_state):
    missing = tmp_path / "nope" / "resnet50.pth"
    with pytest.raises(WeightsUnavailableError, match="does not exist") as ei:
        ResNetBackbone(depth=18, output_stride=32, weights=str(missing))
    assert str(missing) in str(ei.value)
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot load") as ei:
        ResNetBackbone(depth=18, output_stride=32, weights=bad)
    assert str(bad) in str(ei.value)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in r18_state.items() if k != "layer4.1.conv2.weight"}, partial)
    with pytest.raises(WeightsUnavailableError, match="do not match.*layer4.1.conv2.weight"):
        ResNetBackbone(depth=18, output_stride=32, weights=partial)


# --------------------------------------------------------------------------------------------------
# CAM classifier
# --------------------------------------------------------------------------------------------------
def _classifier(C=3, width=8, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return CAMClassifier(CompactCNN(width=width), num_classes=C, dropout=dropout)


def test_logits_are_the_spatial_mean_of_the_class_maps():
    model = _classifier().eval()
    x = _x(B=2, H=48, W=40, seed=1)
    with torch.no_grad():
        logits = model(x)
        maps = model.classifier(model.features(x))  # pre-ReLU class maps w_cᵀ f
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 6, 5)
    torch.testing.assert_close(logits, maps.mean((2, 3)), rtol=1e-5, atol=1e-6)
    # some pre-ReLU values are negative, so GAP(ReLU(·)) would differ: the identity is not trivial
    assert (maps < 0).any()
    # dropout is inactive in eval mode: the identity still holds
    drop = _classifier(dropout=0.5).eval()
    with torch.no_grad():
        torch.testing.assert_close(drop(x), drop.classifier(drop.features(x)).mean((2, 3)),
                                   rtol=1e-5, atol=1e-6)
    assert model.classifier.bias is None


def test_cam_is_relu_of_class_maps():
    model = _classifier().eval()
    x = _x(B=2, H=64, W=64, seed=2)
    with torch.no_grad():
        cam = model.cam(x)
        maps = model.classifier(model.features(x))
    assert cam.shape == (2, 3, 8, 8)
    assert (cam >= 0).all() and (cam > 0).any()
    torch.testing.assert_close(cam, maps.clamp(min=0))
    # differentiable (used by EPS/EDAM-style losses)
    model.train()
    model.cam(x).sum().backward()
    assert model.classifier.weight.grad is not None


def test_multilabel_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g) * 3
    y = (torch.rand(4, 5, generator=g) > 0.5).float()
    s = torch.sigmoid(logits.double())
    hand = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
    assert multilabel_loss(logits, y.long()).item() == pytest.approx(hand.item(), rel=1e-5)
    # a tiny worked case: logits 0 → σ = 1/2 → loss log 2 whatever the labels
    assert multilabel_loss(torch.zeros(2, 3), torch.tensor([[1, 0, 1], [0, 0, 0]])).item() == \
        pytest.approx(math.log(2), rel=1e-6)


def test_a_few_optimisation_steps_reduce_the_loss():
    model = _classifier(C=2, width=8, seed=0)
    x = torch.zeros(2, 3, 32, 32)
    x[0, 0, 8:20, 8:20] = 2.0  # a red square → class 0
    x[1, 1, 12:28, 4:16] = 2.0  # a green square → class 1
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = multilabel_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert pred.tolist() == [0, 1]
