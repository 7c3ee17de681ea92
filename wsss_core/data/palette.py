"""Label PNGs in the PASCAL VOC convention: palette ("P" mode) images whose pixel values are class
indices, 255 = ignore (drawn cream-white in the VOC palette)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent. The message names the file."""


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(n, 3) uint8``; index ``i``'s colour interleaves the bits of ``i``."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


VOC_PALETTE = voc_palette()


def colorize(label: np.ndarray) -> np.ndarray:
    """``(H, W)`` integer label map → ``(H, W, 3) uint8`` RGB in the VOC palette (255 = ignore)."""
    label = np.asarray(label)
    return VOC_PALETTE[np.clip(label, 0, 255).astype(np.uint8)]


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Save an ``(H, W)`` label map with values in 0..255 as a VOC palette PNG (atomically)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{path}: label map must be 2-D, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"{path}: label values must lie in 0..255, got {label.min()}..{label.max()}")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(VOC_PALETTE.reshape(-1).tolist())
    with atomic_path(path) as tmp:  # a killed writer leaves no half PNG behind
        img.save(tmp, format="PNG", optimize=False)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as ``(H, W) uint8`` class indices.

    Palette images give their indices; single-channel ("L") images (e.g. SBD's
    ``SegmentationClassAug``) give their grey values. An RGB image is refused: colours are not
    indices, and guessing would silently corrupt labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: label file does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L", "I", "I;16"):
                arr = np.array(img)
            else:
                raise DatasetError(
                    f"{path}: label PNG has mode {mode!r}; expected a palette ('P') or grey ('L') "
                    "image whose values are class indices"
                )
    except DatasetError:
        raise
    except Exception as e:  # PIL raises several types for corrupt files
        raise DatasetError(f"{path}: cannot read label image ({e})") from e
    if arr.dtype != np.uint8:
        if arr.max() > 255 or arr.min() < 0:
            raise DatasetError(f"{path}: label values {arr.min()}..{arr.max()} do not fit 0..255")
        arr = arr.astype(np.uint8)
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image as ``(H, W, 3) uint8``; a clear :class:`DatasetError` if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            return np.array(img)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e


def read_gray_png(path: str | os.PathLike) -> np.ndarray:
    """Read a grey-level map (e.g. saliency) as ``(H, W) float32`` in [0, 1]. RGB maps are averaged
    over channels, as EPS's loader does."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file does not exist")
    try:
        with Image.open(path) as img:
            arr = np.array(img.convert("L") if img.mode not in ("L", "RGB") else img)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e
    arr = arr.astype(np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    return arr / 255.0


def write_gray_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Save a ``(H, W)`` map in [0, 1] as an 8-bit grey PNG."""
    arr = np.clip(np.asarray(arr, dtype=np.float32), 0.0, 1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L").save(path)
