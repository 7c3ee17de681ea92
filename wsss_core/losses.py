"""Losses of the methods, one function each, with the paper's equation in its docstring.

A flat module of functions (more methods' losses will join). Shapes: maps ``(B, K, h, w)``, labels
``(B, C)`` multi-hot over the foreground classes, saliency ``(B, H, W)`` or ``(B, 1, H, W)`` in [0, 1].
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from .saliency import overlap_ratio, predicted_saliency, resize_saliency, select_maps

__all__ = ["eps_loss"]


def eps_loss(maps: torch.Tensor, saliency: torch.Tensor, label: torch.Tensor, logits: torch.Tensor | None = None,
             tau: float = 0.4, lam: float = 0.5, strategy: str = "adaptive",
             predefined: Iterable[int] | torch.Tensor | None = None, return_parts: bool = False):
    """EPS (Lee et al., CVPR 2021): classification loss on the C foreground logits + the saliency loss.

    Following the official ``eps.py: get_eps_loss`` and ``module/train.py: train_eps`` (equation
    numbers as we recall them from Sec. 3 of the paper — check against the PDF before quoting):

    1. the saliency map S is resized to the maps' size (h, w) with **nearest** interpolation;
    2. ``P = softmax(maps)`` over the C + 1 channels, background **last**;
    3. overlap ratio of each present class (no gradient, :func:`wsss_core.saliency.overlap_ratio`)
       ``O_c = Σ ⌊P_c⌉⌊S⌉ / Σ (⌊P_c⌉ + 1e-4)``; with the adaptive strategy class c is foreground
       iff ``O_c > τ`` (:func:`wsss_core.saliency.select_maps`);
    4. ``M_fg = Σ_{c fg} P_c``, ``M_bg = P_{C+1} + Σ_{c present, not fg} P_c``  (Eq. 2);
    5. ``Ŝ = λ M_fg + (1 − λ)(1 − M_bg)``  (Eq. 1);
    6. ``L_sal = 1/(B h w) Σ (Ŝ − S)²`` — ``F.mse_loss``, the mean over pixels and batch  (Eq. 3);
    7. ``L_cls`` = multi-label soft margin on the first C logits (the background logit is excluded),
       and ``L = L_cls + L_sal``  (Eq. 4).

    Parameters
    ----------
    maps : (B, C + 1, h, w) float
        The classifier's raw maps (:meth:`wsss_core.models.eps.EPSClassifier.forward`), background last.
    saliency : (B, H, W) or (B, 1, H, W) float in [0, 1]
        Saliency maps (any size; resized here). Padding from random crops should be 0.
    label : (B, C) multi-hot
    logits : (B, C + 1) float, optional
        The image logits; default the spatial mean of ``maps`` (what the EPS network computes).
    tau : float
        Overlap threshold of the adaptive rule (official script 0.4).
    lam : float
        λ, the blend of the foreground and background maps (official 0.5).
    strategy : ``"adaptive"`` | ``"naive"`` | ``"predefined"``
    predefined : background classes of the ``"predefined"`` strategy (0-based channel indices).
    return_parts : bool
        Also return the intermediates.

    Returns
    -------
    loss : scalar tensor ``L_cls + L_sal``
    parts : dict, only with ``return_parts``
        ``loss_cls``, ``loss_sal`` (scalars), ``s_hat``, ``m_fg``, ``m_bg``, ``saliency`` (the resized
        target) (B, 1, h, w), ``overlap`` (B, C), ``fg``, ``bg`` (B, C) bool, ``probs`` (B, C + 1, h, w).

    Raises
    ------
    ValueError
        On inconsistent shapes, a saliency map outside [0, 1], or an unknown strategy.
    """
    if maps.ndim != 4:
        raise ValueError(f"maps must be (B, C + 1, h, w), got shape {tuple(maps.shape)}")
    B, K, h, w = maps.shape
    C = K - 1
    label = torch.as_tensor(label, device=maps.device)
    if tuple(label.shape) != (B, C):
        raise ValueError(f"label must be (B, C) = ({B}, {C}) for maps with C + 1 = {K} channels (background last), "
                         f"got {tuple(label.shape)}")
    sal = resize_saliency(torch.as_tensor(saliency, device=maps.device), (h, w))
    if sal.shape[0] != B:
        raise ValueError(f"saliency has batch size {sal.shape[0]}, maps {B}")
    if sal.numel() and (float(sal.min()) < 0.0 or float(sal.max()) > 1.0):
        raise ValueError(f"saliency must lie in [0, 1], got values in [{float(sal.min()):.3g}, {float(sal.max()):.3g}]")
    if logits is None:
        logits = maps.mean(dim=(2, 3))
    if tuple(logits.shape) != (B, K):
        raise ValueError(f"logits must be (B, C + 1) = ({B}, {K}), got {tuple(logits.shape)}")

    probs = F.softmax(maps if maps.dtype in (torch.float32, torch.float64) else maps.float(), dim=1)
    overlap = overlap_ratio(probs[:, :C], sal)
    fg, bg = select_maps(label, overlap, tau=tau, strategy=strategy, predefined=predefined)
    s_hat, m_fg, m_bg = predicted_saliency(probs, fg, bg, lam)
    loss_sal = F.mse_loss(s_hat, sal.to(s_hat.dtype))
    logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    loss_cls = F.multilabel_soft_margin_loss(logits[:, :C], label.to(logits.dtype))
    loss = loss_cls + loss_sal
    if not return_parts:
        return loss
    return loss, {"loss_cls": loss_cls, "loss_sal": loss_sal, "s_hat": s_hat, "m_fg": m_fg, "m_bg": m_bg,
                  "saliency": sal, "overlap": overlap, "fg": fg, "bg": bg, "probs": probs}
