"""Backbones: torchvision ResNets with dilation (output stride 8/16/32) and a compact CNN for CPUs.

Every backbone returns an ordered ``dict`` of feature maps, finest first, whose last entry is
``"out"``; it exposes ``channels`` (name → channels), ``strides`` (name → stride) and
``out_channels``. Heads (CAM classifier, AffinityNet, EPS, EDAM, segmentation) only use that
contract, so the same head runs on a ResNet-50 on a GPU and on :class:`CompactCNN` on a laptop.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class FixedBatchNorm(nn.BatchNorm2d):
    """BatchNorm that always uses its running statistics (IRN's ``FixedBatchNorm``): WSSS batches
    are small, so batch statistics would be noisy; the ImageNet statistics are kept."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1, norm=nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):
    """A small CNN for CPU work: six 3×3 conv-BN-ReLU layers in three stages, each stage opening with
    a stride-2 convolution; output stride 8 (or 4).

    ``x``: (B, 3, H, W) → features ``{"s2": (B, w, H/2, W/2), "s4": (B, 2w, H/4, W/4),
    "out": (B, 4w, H/stride, W/stride)}``. With ``width=32`` it has ≈0.29 M parameters, a receptive
    field of 43 px, ≈86 MFLOPs per 96×96 image.
    With ``output_stride=4`` the last stage keeps stride 4 and uses dilation 2 (finer CAMs, ≈2× time).
    ``freeze_bn=True`` uses :class:`FixedBatchNorm` (per-sample computation: no batch statistics, so a
    batch split across DDP processes computes exactly what one process computes on the whole batch —
    the distributed tests use it; CPU DDP has no SyncBatchNorm).
    """

    def __init__(self, width: int = 32, output_stride: int = 8, in_channels: int = 3, freeze_bn: bool = False):
        super().__init__()
        if output_stride not in (4, 8):
            raise ValueError(f"CompactCNN supports output_stride 4 or 8, got {output_stride}")
        w = width
        s3, d3 = (2, 1) if output_stride == 8 else (1, 2)
        n = FixedBatchNorm if freeze_bn else nn.BatchNorm2d
        self.stage1 = nn.Sequential(_conv_bn(in_channels, w, stride=2, norm=n), _conv_bn(w, w, norm=n))
        self.stage2 = nn.Sequential(_conv_bn(w, 2 * w, stride=2, norm=n), _conv_bn(2 * w, 2 * w, norm=n))
        self.stage3 = nn.Sequential(_conv_bn(2 * w, 4 * w, stride=s3, dilation=1, norm=n),
                                    _conv_bn(4 * w, 4 * w, dilation=d3, norm=n))
        self.channels = OrderedDict(s2=w, s4=2 * w, out=4 * w)
        self.strides = OrderedDict(s2=2, s4=4, out=output_stride)
        self.out_channels = 4 * w
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        f2 = self.stage1(x)
        f4 = self.stage2(f2)
        out = self.stage3(f4)
        return OrderedDict(s2=f2, s4=f4, out=out)


_RESNETS = {
    18: ("resnet18", "ResNet18_Weights"),
    34: ("resnet34", "ResNet34_Weights"),
    50: ("resnet50", "ResNet50_Weights"),
    101: ("resnet101", "ResNet101_Weights"),
}


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were requested but cannot be loaded (offline, or a bad local file)."""


def _load_resnet_weights(net: nn.Module, depth: int, weights) -> None:
    import torchvision

    name, enum_name = _RESNETS[depth]
    if isinstance(weights, (str, os.PathLike)) and str(weights).lower() not in ("imagenet", "default", "imagenet1k_v1", "imagenet1k_v2"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{path}: weights file does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsUnavailableError(f"{path}: cannot load weights ({e})") from e
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    else:
        wenum = getattr(torchvision.models, enum_name)
        w = wenum.DEFAULT if str(weights).lower() in ("imagenet", "default") else getattr(wenum, str(weights).upper())
        try:
            state = w.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # URLError, socket errors, HTTP errors: all mean "not here"
            fname = Path(w.url).name
            hub = Path(torch.hub.get_dir()) / "checkpoints" / fname
            raise WeightsUnavailableError(
                f"Could not load torchvision's ImageNet weights for {name} ({w.url}): {e}.\n"
                f"Without network access, download the file elsewhere and put it at {hub} "
                f"(or pass weights='/path/to/{fname}'), or use weights=None to train from scratch."
            ) from e
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise WeightsUnavailableError(f"weights for {name} do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet as a dilated feature extractor.

    ``output_stride`` 8 dilates layer3 and layer4, 16 dilates layer4 (IRN's ResNet-50 CAM network
    uses strides (2, 2, 2, 1) ⇒ 16), 32 is the plain network.
    ``weights``: None (random init), ``"imagenet"`` (torchvision's default ImageNet weights, from the
    torch hub cache or downloaded; a clear :class:`WeightsUnavailableError` offline) or a path to a
    ``.pth`` state dict. ``freeze_bn`` replaces every BatchNorm by :class:`FixedBatchNorm` (IRN);
    ``frozen_stages`` = k detaches conv1 … layer``k`` (IRN detaches up to layer2, PSA freezes conv1).

    ``x``: (B, 3, H, W) → ``{"layer1": stride 4, "layer2": 8, "layer3": 8|16, "out": layer4}``.
    """

    def __init__(self, depth: int = 50, output_stride: int = 16, weights=None, freeze_bn: bool = False,
                 frozen_stages: int = 0):
        super().__init__()
        import torchvision

        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        dil = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
        if output_stride not in dil:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if freeze_bn and weights is None:
            import warnings

            warnings.warn("freeze_bn=True keeps BatchNorm's stored statistics, which only mean something with "
                          "pretrained weights (loaded here or later); training a random ResNet with frozen BN "
                          "statistics diverges: use freeze_bn=False to train from scratch", stacklevel=2)
        if depth < 50 and output_stride != 32:
            raise ValueError("dilation needs Bottleneck blocks: use depth 50/101 for output_stride 8/16")
        norm = FixedBatchNorm if freeze_bn else nn.BatchNorm2d
        net = getattr(torchvision.models, _RESNETS[depth][0])(weights=None, replace_stride_with_dilation=dil[output_stride],
                                                              norm_layer=norm)
        if weights is not None:
            _load_resnet_weights(net, depth, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        exp = 4 if depth >= 50 else 1
        self.channels = OrderedDict(layer1=64 * exp, layer2=128 * exp, layer3=256 * exp, out=512 * exp)
        s3 = 8 if output_stride == 8 else 16
        self.strides = OrderedDict(layer1=4, layer2=8, layer3=s3, out=output_stride)
        self.out_channels = 512 * exp
        self.output_stride = output_stride
        self.frozen_stages = frozen_stages
        if frozen_stages > 0:
            for mod in [self.stem, self.layer1, self.layer2, self.layer3, self.layer4][: frozen_stages + 1]:
                for p in mod.parameters():
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(x)
        f1 = self.layer1(x)
        if self.frozen_stages >= 1:
            f1 = f1.detach()
        f2 = self.layer2(f1)
        if self.frozen_stages >= 2:
            f2 = f2.detach()
        f3 = self.layer3(f2)
        if self.frozen_stages >= 3:
            f3 = f3.detach()
        return OrderedDict(layer1=f1, layer2=f2, layer3=f3, out=self.layer4(f3))


def build_backbone(name: str = "compact", **kw) -> nn.Module:
    """``"compact"`` → :class:`CompactCNN`; ``"resnet50"`` / ``"resnet101"`` / … → :class:`ResNetBackbone`;
    ``"lite0-imagenet"`` → :class:`~wsss_core.models.lite0.Lite0Backbone` with the ImageNet weights of the
    optional extra ``pretrained`` (``"lite0"``: the same network, random init)."""
    if name == "compact":
        return CompactCNN(**kw)
    if name.startswith("resnet"):
        return ResNetBackbone(depth=int(name[len("resnet"):]), **kw)
    if name in ("lite0-imagenet", "lite0"):
        from .lite0 import Lite0Backbone

        kw.setdefault("weights", "imagenet" if name == "lite0-imagenet" else None)
        return Lite0Backbone(**kw)
    raise ValueError(f"unknown backbone {name!r}: use 'compact', 'resnet18/34/50/101' or 'lite0-imagenet'")
