"""Joint image / mask / saliency / box augmentation built on ``torchvision.transforms.v2``.

A *sample* is the dict that :class:`wsss_core.data.voc.VOCLayoutDataset` returns::

    {"id": str,
     "image": tv_tensors.Image        (3, H, W) uint8,
     "mask": tv_tensors.Mask          (H, W) int64, 0..C or 255 (ignore),
     "instance_mask": tv_tensors.Mask (H, W) int64,
     "saliency": Saliency             (H, W) float32 in [0, 1]   (a tv_tensors.Mask subclass),
     "boxes": tv_tensors.BoundingBoxes (K, 4) float32 XYXY,
     "box_labels": Tensor (K,) int64, "box_difficult": Tensor (K,) bool,
     "box_instance_ids": Tensor (K,) int64,
     "label": Tensor (C,) float32, ... extra masks ...}

Because every spatial entry is a ``tv_tensor``, one v2 transform moves them together: images are
resampled bilinearly, every ``Mask`` (class, instance, saliency, extras) with nearest neighbour, boxes
are scaled/flipped/shifted and clipped. Plain tensors (``label``, ``box_labels``) and strings pass
through untouched.

Padding convention (the one of PSA / EPS / DeepLab training code):

* class / instance / extra masks are padded with **255 = ignore**, so padded pixels carry no loss;
* saliency maps are padded with **0** (not salient). Saliency is a float map but is stored as a
  :class:`Saliency` (a ``tv_tensors.Mask`` subclass) so geometric transforms use nearest neighbour, as
  EPS's loader does, while the fill dict can still tell it apart from label masks;
* the image is normalised *before* cropping and padded with 0, i.e. with the ImageNet mean colour
  after normalisation (as PSA and EPS do: ``Normalize`` then ``RandomCrop`` on a zero canvas).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE0_MEAN",
    "LITE0_STD",
    "Saliency",
    "AsSaliency",
    "RandomScale",
    "RandomResizeLong",
    "SanitizeBoxes",
    "PER_BOX_KEYS",
    "mask_fill",
    "train_transforms",
    "eval_transforms",
    "denormalize",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The TensorFlow EfficientNet-Lite weights' normalisation, (pixel − 127) / 128, on [0, 1] images. The
#: ``lite0-imagenet`` backbone converts ImageNet-normalised input itself (its default ``input_norm``), so
#: the stages keep IMAGENET_MEAN/STD; pass these with ``input_norm="lite0"`` (wsss_core.models.lite0).
LITE0_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE0_STD: tuple[float, float, float] = (128 / 255,) * 3

#: Sample keys holding one entry per box; they are filtered together with the boxes.
PER_BOX_KEYS: tuple[str, ...] = ("box_labels", "box_difficult", "box_instance_ids")


class Saliency(tv_tensors.Mask):
    """A saliency map ``(H, W) float32`` in [0, 1].

    A subclass of :class:`torchvision.tv_tensors.Mask`, so every v2 geometric kernel treats it like a
    mask (nearest-neighbour resampling, as in EPS) and ``isinstance(x, tv_tensors.Mask)`` holds; being
    its own type lets fill dicts pad it with 0 while label masks are padded with 255.
    """


class AsSaliency(torch.nn.Module):
    """Re-tag ``sample[key]`` as :class:`Saliency` if it is a plain ``Mask`` (or tensor).

    Guards the padding rule when a sample was built by hand with ``tv_tensors.Mask`` for saliency.

    Parameters
    ----------
    key : str
        Dict key of the saliency map.
    """

    def __init__(self, key: str = "saliency") -> None:
        super().__init__()
        self.key = key

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        if isinstance(sample, dict) and self.key in sample:
            sal = sample[self.key]
            if isinstance(sal, torch.Tensor) and not isinstance(sal, Saliency):
                sample = dict(sample)
                sample[self.key] = Saliency(sal.as_subclass(torch.Tensor))
        return sample


def mask_fill(image_fill: float = 0.0, mask_fill_value: int = 255, saliency_fill: float = 0.0) -> dict:
    """The ``fill`` dict used for padding: image 0, masks 255 (ignore), saliency 0.

    Returns
    -------
    dict
        ``{tv_tensors.Image: image_fill, tv_tensors.Mask: mask_fill_value, Saliency: saliency_fill,
        "others": 0}`` — torchvision looks fills up by exact type.
    """
    return {
        tv_tensors.Image: image_fill,
        tv_tensors.Video: image_fill,
        tv_tensors.Mask: mask_fill_value,
        Saliency: saliency_fill,
        "others": 0,
    }


class RandomScale(v2.Transform):
    """Resize every spatial entry by one random factor ``s ~ U(scale[0], scale[1])``.

    The output size is ``(round(H * s), round(W * s))`` (at least 1 px); images are resized
    bilinearly with antialiasing, masks with nearest neighbour, boxes are scaled.

    Parameters
    ----------
    scale : (float, float)
        Range of the factor, e.g. ``(0.7, 1.3)``.
    """

    def __init__(self, scale: Sequence[float] = (0.7, 1.3)) -> None:
        super().__init__()
        lo, hi = float(scale[0]), float(scale[1])
        if not (0 < lo <= hi):
            raise ValueError(f"scale must satisfy 0 < lo <= hi, got {scale}")
        self.scale = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        s = float(torch.empty(1).uniform_(self.scale[0], self.scale[1]))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class RandomResizeLong(v2.Transform):
    """Resize so the longer side is a random integer in ``[min_long, max_long]`` (PSA / EPS style,
    e.g. ``(448, 768)`` for VOC), keeping the aspect ratio.

    Parameters
    ----------
    min_long, max_long : int
        Inclusive range of the longer side after resizing.
    """

    def __init__(self, min_long: int, max_long: int) -> None:
        super().__init__()
        if not (0 < min_long <= max_long):
            raise ValueError(f"need 0 < min_long <= max_long, got {min_long}, {max_long}")
        self.min_long, self.max_long = int(min_long), int(max_long)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        target = int(torch.randint(self.min_long, self.max_long + 1, (1,)))
        s = target / max(h, w)
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class _PerBoxGetter:
    """Picklable ``labels_getter`` (a lambda would break DataLoader workers under ``spawn``)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def __call__(self, sample: dict) -> tuple:
        return tuple(sample[k] for k in self.keys if k in sample)


class SanitizeBoxes(torch.nn.Module):
    """Drop boxes that became empty (cropped away or thinner than ``min_size``), together with their
    per-box entries (``box_labels``, ``box_difficult``, ``box_instance_ids``).

    Uses :class:`torchvision.transforms.v2.SanitizeBoundingBoxes` on a sub-dict holding only the boxes
    and the per-box keys: torchvision's version would also try to index every ``Mask`` in the sample by
    box (it expects per-instance ``(K, H, W)`` masks), which would corrupt a ``(H, W)`` semantic mask
    whose height happened to equal the number of boxes. Samples without boxes pass through.

    Parameters
    ----------
    min_size : float
        Boxes with width or height below this (pixels) are removed (torchvision requires >= 1).
    keys : tuple of str
        Per-box keys filtered together with ``sample["boxes"]``.
    """

    def __init__(self, min_size: float = 1.0, keys: Sequence[str] = PER_BOX_KEYS) -> None:
        super().__init__()
        self.keys = tuple(keys)
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=min_size, labels_getter=_PerBoxGetter(self.keys))

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        if not isinstance(sample, dict) or not isinstance(sample.get("boxes"), tv_tensors.BoundingBoxes):
            return sample
        sub = {"boxes": sample["boxes"]}
        sub.update({k: sample[k] for k in self.keys if k in sample})
        out = self._sanitize(sub)
        sample = dict(sample)
        sample.update(out)
        return sample


def _to_float_normalize(mean, std, normalize: bool) -> list:
    steps: list = [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Video: torch.float32,
                               "others": None}, scale=True)]
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return steps


def train_transforms(
    crop_size: int | Sequence[int],
    scale: Sequence[float] | None = (0.7, 1.3),
    hflip: bool = True,
    color_jitter: Sequence[float] | None = (0.3, 0.3, 0.3, 0.1),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
    *,
    long_side: Sequence[int] | None = None,
    min_box_size: float = 1.0,
) -> v2.Compose:
    """Training augmentation for a sample dict.

    Steps: (saliency re-tag) → random rescale → horizontal flip (p = 0.5) → colour jitter (image only)
    → ``ToDtype(float32, scale=True)`` → ``Normalize`` (image only) → pad-if-needed + random crop to
    ``crop_size`` (image fill 0, i.e. the mean colour after normalising; masks 255; saliency 0) →
    drop boxes that left the crop.

    Parameters
    ----------
    crop_size : int or (int, int)
        Output ``(H, W)`` (an int gives a square).
    scale : (float, float) or None
        Range of the random resize factor; None disables it.
    hflip : bool
        Random horizontal flip with probability 0.5.
    color_jitter : (brightness, contrast, saturation, hue) or None
        Arguments of :class:`torchvision.transforms.v2.ColorJitter`.
    mean, std : 3 floats
        Normalisation statistics (ImageNet by default).
    normalize : bool
        If False the image ends as float32 in [0, 1].
    long_side : (int, int), optional
        PSA/EPS-style alternative to ``scale``: resize so the longer side lies in this range.
    min_box_size : float
        Boxes thinner than this after cropping are removed with their labels.

    Returns
    -------
    torchvision.transforms.v2.Compose
        Callable ``sample -> sample``: ``image`` (3, h, w) float32, masks (h, w), boxes clipped.
    """
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    steps: list = [AsSaliency()]
    if long_side is not None:
        steps.append(RandomResizeLong(*long_side))
    elif scale is not None:
        steps.append(RandomScale(scale))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter is not None:
        steps.append(v2.ColorJitter(*color_jitter))
    steps += _to_float_normalize(mean, std, normalize)
    steps.append(v2.RandomCrop(tuple(crop_size), pad_if_needed=True, fill=mask_fill(), padding_mode="constant"))
    steps.append(SanitizeBoxes(min_size=min_box_size))
    return v2.Compose(steps)


def eval_transforms(
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
) -> v2.Compose:
    """Evaluation transform: optional resize, then float32 in [0, 1] and normalisation.

    Parameters
    ----------
    size : int, (int, int) or None
        An int resizes the shorter side to ``size`` (aspect kept), a pair gives the exact ``(H, W)``;
        None keeps the original size (the usual choice when scoring masks).
    mean, std, normalize
        As in :func:`train_transforms`.

    Returns
    -------
    torchvision.transforms.v2.Compose
    """
    steps: list = [AsSaliency()]
    if size is not None:
        steps.append(v2.Resize(size if isinstance(size, int) else list(size), antialias=True))
    steps += _to_float_normalize(mean, std, normalize)
    return v2.Compose(steps)


def denormalize(
    img: torch.Tensor | np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Undo :func:`train_transforms`' normalisation for plotting.

    Parameters
    ----------
    img : (3, H, W) or (B, 3, H, W) tensor or array
        Normalised float image(s); a uint8 input is only transposed.
    mean, std : 3 floats
        The statistics used to normalise; pass ``mean=(0, 0, 0), std=(1, 1, 1)`` for images that are
        only scaled to [0, 1].

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8.
    """
    t = torch.as_tensor(np.asarray(img) if isinstance(img, np.ndarray) else img.as_subclass(torch.Tensor))
    t = t.detach().cpu()
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        out = t
    else:
        m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        out = ((t.float() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    return out.movedim(-3, -1).numpy()
