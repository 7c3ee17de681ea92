"""Class activation maps: multi-scale inference, background scores, pseudo-labels, threshold sweeps.

The recipe follows the official code of PSA (``infer_cls.py``) and IRN (``step/make_cam.py``):

1. for every scale s and for the image and its horizontal flip, ``CAM = ReLU(w_cᵀ f(x))``;
2. each map is bilinearly resized to a common size, flipped back and **summed**;
3. only the classes in the image label are kept, each divided by its spatial maximum:
   ``M_c = Σ CAM_c / (max_x Σ CAM_c + 1e-5)``  → values in [0, 1];
4. a background score is added — a constant threshold (PSA/EPS 0.2, IRN 0.15) or PSA's
   ``bg(x) = (1 − max_c M_c(x))^α`` (Ahn & Kwak 2018, Eq. 3 of the AffinityNet paper) — and
   the pseudo-label is the arg-max over ``[bg, M_1..M_C]``.

Shapes: a CAM stack is ``(C, H, W)`` float32 over the *foreground* classes, channel ``c`` for class
``c + 1``; label maps are ``(H, W)`` int with 0 = background, 255 = ignore.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import IGNORE_INDEX
from .atomic import atomic_path


def default_cam_fn(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.cam(x)`` → (B, C, h, w) non-negative maps (ReLU CAMs for :class:`CAMClassifier`)."""
    return model.cam(x)


@torch.no_grad()
def multiscale_cams(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                    size: tuple[int, int] | None = None, cam_fn: Callable = default_cam_fn,
                    normalize: bool = True) -> torch.Tensor:
    """Multi-scale, flip-augmented CAMs for a batch (IRN ``make_cam``; PSA ``infer_cls``).

    Parameters
    ----------
    images : (B, 3, H, W) float, normalised as for training.
    labels : (B, C) multi-hot; absent classes are zeroed (``None`` keeps all classes).
    scales : image scales; each pass is resized back to ``size`` and summed.
    flip : also run the horizontally flipped image and flip its CAMs back.
    size : output (h, w); default the input size (IRN's ``high_res``). Give ``(ceil(H/4), ceil(W/4))``
        for IRN's stride-4 ``cam`` used by random walks.
    cam_fn : ``cam_fn(model, x) -> (B, C, h, w)`` non-negative maps.
    normalize : divide each class map by its spatial max + 1e-5.

    Returns
    -------
    (B, C, h, w) float32 on the images' device, in [0, 1] when ``normalize``.
    """
    B, _, H, W = images.shape
    size = tuple(size) if size is not None else (H, W)
    total = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False,
                                                   recompute_scale_factor=False)
        xs = torch.cat([x, x.flip(-1)], 0) if flip else x
        cam = cam_fn(model, xs).float()
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        if flip:
            cam = cam[:B] + cam[B:].flip(-1)
        total = cam if total is None else total + cam
    if labels is not None:
        total = total * labels[:, :, None, None].to(total)
    if normalize:
        total = total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)
    return total


def background_power(cams: torch.Tensor | np.ndarray, alpha: float):
    """PSA's background score ``bg(x) = (1 − max_c M_c(x))^α``.

    ``cams``: (..., C, H, W) in [0, 1] → (..., H, W). Small α (PSA ``la``: 4) ⇒ large background, so the
    remaining foreground is *confident*; large α (``ha``: 32, paper 24) ⇒ small background, so the
    remaining background is confident; α = 16 is used for the random walk.
    """
    if isinstance(cams, np.ndarray):
        m = cams.max(axis=-3) if cams.shape[-3] > 0 else np.zeros(cams.shape[:-3] + cams.shape[-2:], cams.dtype)
        return np.power(1.0 - m, alpha)
    m = cams.amax(dim=-3) if cams.shape[-3] > 0 else cams.new_zeros(cams.shape[:-3] + cams.shape[-2:])
    return torch.pow(1.0 - m, alpha)


def alpha_to_threshold(alpha: float, iterations: int = 60) -> float:
    """The constant background that PSA's power rule amounts to for the arg-max: the root
    ``θ(α)`` of ``(1 − θ)^α = θ`` (bisection on [0, 1]).

    A pixel with ``m = max_c M_c`` is background under :func:`background_power` exactly when
    ``(1 − m)^α ≥ m``, and ``(1 − m)^α − m`` decreases in ``m``: so :func:`cams_to_labels` with
    ``alpha=α`` and with ``threshold=θ(α)`` give the same labels (up to float rounding at the
    boundary). θ(4) ≈ 0.276, θ(16) ≈ 0.123, θ(32) ≈ 0.077.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    lo, hi = 0.0, 1.0
    for _ in range(int(iterations)):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - mid) ** alpha > mid else (lo, mid)
    return (lo + hi) / 2


def with_background(cams, label=None, *, threshold: float | None = 0.2, alpha: float | None = None):
    """Stack a background score in front of the class maps: (C, H, W) → (C + 1, H, W).

    Exactly one of ``threshold`` (constant background, PSA/EPS 0.2, IRN 0.15) and ``alpha``
    (:func:`background_power`) is used; ``alpha`` wins if given. Channels of classes absent from
    ``label`` (C,) are set to −1 so they can never win an arg-max.
    """
    is_np = isinstance(cams, np.ndarray)
    if is_np:  # numpy in, numpy out, without torch: per-image label making stays cheap on a busy CPU
        return _with_background_np(cams, label, threshold, alpha)
    t = torch.as_tensor(cams, dtype=torch.float32)
    present = None
    if label is not None:
        lab = torch.as_tensor(np.asarray(label) if is_np else label).to(t.device).bool()
        present = lab.reshape(lab.shape + (1, 1))
    if alpha is not None:  # from the present classes only, as PSA's infer_cls does
        bg = background_power(t if present is None else t * present, alpha)
    elif threshold is not None:
        bg = torch.full(t.shape[:-3] + t.shape[-2:], float(threshold), dtype=t.dtype, device=t.device)
    else:
        raise ValueError("give a background threshold or an alpha")
    if present is not None:
        t = torch.where(present, t, torch.full_like(t, -1.0))
    out = torch.cat([bg.unsqueeze(-3), t], dim=-3)
    return out.numpy() if is_np else out


def _with_background_np(cams, label, threshold, alpha) -> np.ndarray:
    "The numpy branch of :func:`with_background` (float32, the same values as the torch branch)."
    t = np.asarray(cams, dtype=np.float32)
    present = None
    if label is not None:
        present = np.asarray(label).astype(bool).reshape(np.shape(label) + (1, 1))
    if alpha is not None:
        bg = background_power(t if present is None else t * present, alpha).astype(np.float32)
    elif threshold is not None:
        bg = np.full(t.shape[:-3] + t.shape[-2:], float(threshold), np.float32)
    else:
        raise ValueError("give a background threshold or an alpha")
    if present is not None:
        t = np.where(present, t, np.float32(-1.0))
    return np.concatenate([bg[..., None, :, :], t], axis=-3)


def cams_to_labels(cams, label=None, *, threshold: float | None = 0.2, alpha: float | None = None):
    """Pseudo-label map from CAMs: arg-max over ``[background, M_1 … M_C]`` (ties → background).

    ``cams``: (C, H, W) or (B, C, H, W) numpy/torch → (H, W) / (B, H, W) int64 with values 0..C.
    """
    scores = with_background(cams, label, threshold=threshold, alpha=alpha)
    if isinstance(scores, np.ndarray):
        return scores.argmax(axis=-3).astype(np.int64)
    return scores.argmax(dim=-3)


def threshold_sweep(samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int,
                    thresholds: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)),
                    ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Confusion matrices of constant-background pseudo-labels at many thresholds in one pass.

    ``samples`` yields ``(cams (C, H, W), label (C,), gt (H, W))``. A pixel is class ``argmax_c M_c``
    (over present classes) if ``max_c M_c > t``, else background — the same rule as
    :func:`cams_to_labels` with ``threshold=t``.

    Returns ``(T, K, K)`` int64 confusion matrices (rows = truth, K = num_classes + 1).
    """
    K = num_classes + 1
    th = np.asarray(thresholds, dtype=np.float32)
    T = len(th)
    out = np.zeros((T, K, K), np.int64)
    for cams, label, gt in samples:
        cams = np.asarray(cams, dtype=np.float32)
        lab = np.asarray(label).astype(bool)
        gt = np.asarray(gt).reshape(-1)
        masked = np.where(lab[:, None, None], cams, -1.0).reshape(cams.shape[0], -1)
        if masked.shape[0] == 0 or not lab.any():
            mx = np.full(gt.shape, -1.0, np.float32)
            arg = np.zeros(gt.shape, np.int64)
        else:
            mx = masked.max(0)
            arg = masked.argmax(0) + 1
        keep = gt != ignore_index
        gt_k, mx_k, arg_k = gt[keep].astype(np.int64), mx[keep], arg[keep]
        if gt_k.size and gt_k.max() >= K:
            raise ValueError(f"ground-truth value {gt_k.max()} outside 0..{K - 1} (and not {ignore_index})")
        pred = np.where(mx_k[None, :] > th[:, None], arg_k[None, :], 0)  # (T, P)
        idx = (np.arange(T)[:, None] * K * K + gt_k[None, :] * K + pred).reshape(-1)
        out += np.bincount(idx, minlength=T * K * K).reshape(T, K, K)
    return out


def miou_from_confusion(mat: np.ndarray) -> np.ndarray:
    """mIoU from (..., K, K) confusion matrices; classes absent from truth and prediction are skipped."""
    mat = np.asarray(mat, dtype=np.float64)
    tp = np.diagonal(mat, axis1=-2, axis2=-1)
    union = mat.sum(-1) + mat.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return np.nanmean(iou, axis=-1)


# ----------------------------------------------------------------------------------------------
# storage: one file per image, present classes only (as IRN's make_cam does)
# ----------------------------------------------------------------------------------------------

def save_cams(path: str | os.PathLike, cams: np.ndarray | torch.Tensor, label) -> None:
    """Store the present classes' maps of ``cams`` (C, H, W) as float16 in ``<path>.npz``
    (keys: ``keys`` = present class channels, ``cams`` = (K, H, W), ``num_classes``), atomically."""
    cams = cams.detach().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
    lab = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label).astype(bool)
    keys = np.nonzero(lab)[0]
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a killed writer leaves no half file behind
        np.savez(f, keys=keys.astype(np.int64), cams=cams[keys].astype(np.float16),
                 num_classes=np.int64(cams.shape[0]))


def load_cams(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`save_cams`: ``(cams (C, H, W) float32 with zeros for absent classes,
    label (C,) float32)``."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with np.load(path) as z:
        keys, small, C = z["keys"], z["cams"].astype(np.float32), int(z["num_classes"])
    if not np.isfinite(small).all():  # NaN would pass every threshold comparison as "no" and hide as background
        from .data.palette import DatasetError

        raise DatasetError(f"{path}: CAM file holds {int((~np.isfinite(small)).sum())} non-finite (NaN/inf) "
                           "values; remake it (delete the file and rerun the CAM stage)")
    cams = np.zeros((C,) + small.shape[1:], np.float32)
    cams[keys] = small
    label = np.zeros(C, np.float32)
    label[keys] = 1
    return cams, label
