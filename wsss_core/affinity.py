"""Pixel affinities from CAMs and the random walk that spreads CAMs along them (PSA / AffinityNet).

Ahn & Kwak, *Learning Pixel-level Semantic Affinity with Image-level Supervision*, CVPR 2018
(official code: ``jiwoon-ahn/psa``), and its successor IRN (Ahn, Cho & Kwak, CVPR 2019,
``jiwoon-ahn/irn``). The pipeline, with the paper's symbols:

1. **Affinity labels** (:func:`affinity_labels`). From the CAMs ``M_c`` (max-normalised, present
   classes) two background scores ``M_bg = (1 − max_c M_c)^α`` are made: a *low* α (PSA 4) gives a
   large background, so the foreground that survives is *confident*; a *high* α (PSA 32, the paper
   24) gives a small background, so the background that survives is confident. IRN uses two
   constant thresholds instead (0.30 and 0.05). Optionally each score stack is refined by a dense
   CRF (PSA; needs ``pydensecrf``). Pixels that are neither confident foreground nor confident
   background are *neutral* (255) and take part in no pair.
2. **Pairs** (:func:`pair_offsets`, :func:`pair_indices`, :func:`pair_labels`). On the feature
   grid, every pair of positions closer than the radius γ (PSA: 5 at stride 8) is a pair
   (paper Eq. 4); a pair is *background-positive* when both ends are confident background,
   *foreground-positive* when both carry the same class, *negative* when they differ (Eqs. 5–6).
3. **Affinity** (:func:`local_affinities`). ``a_ij = exp(−mean_d |f_i^d − f_j^d|)`` from the
   AffinityNet features ``f`` (paper Eq. 3 writes the L1 norm; the official code averages over the
   channels, a constant scale that training absorbs — we follow the code).
4. **Loss** (:func:`affinity_loss`). ``L = ¼ L_bg⁺ + ¼ L_fg⁺ + ½ L⁻`` with each term averaged over
   its own pairs in the batch (official ``train_aff.py``; the paper's Eq. 10 writes
   ``L_fg⁺ + L_bg⁺ + 2 L⁻``, the same up to a factor ¼).
5. **Random walk** (:func:`transition_matrix`, :func:`propagate`, :func:`random_walk`).
   ``T = D⁻¹ W^{∘β}`` with ``W`` the affinities (1 on the diagonal), ``D_ii = Σ_j W_ij^β`` (Eq. 11);
   the class maps — background ``(1 − max_c M_c)^{α=16}`` in front — are average-pooled to the grid
   and propagated ``vec(M*_c) = T^t vec(M_c)`` with β = 8, t = 256 (Eq. 12), upsampled and arg-maxed
   (:func:`random_walk_labels`).

**Sparse, not dense.** The official code builds a dense N × N matrix (N grid positions) and squares
it log₂ t = 8 times: memory O(N²) (1 GiB at N = 16 384 in float32) and O(N³) time per squaring.
Each row of ``T`` has at most |offsets| + 1 non-zeros (69 for radius 5), so we keep ``T`` sparse
(CSR, O(N·r²) memory) and apply it t times: repeated squaring would fill the matrix in.
:func:`random_walk` with ``method="dense"`` is the official algorithm, kept as the reference that the
tests compare the sparse walk with.

**Pairs at the border.** PSA's ``get_indices_of_pairs`` only takes *source* positions whose every
forward target lies inside the grid (it crops ``radius − 1`` columns left and right and rows at the
bottom), so pairs between two border positions are dropped — an implementation convenience of
fixed-size index arrays. On a 24 × 24 grid that would drop a third of the positions, so we keep every
in-bounds pair (``layout="full"``); ``pair_indices(..., layout="psa")`` reproduces the official set.

Equation numbers follow our reading of the CVPR 2018 paper (Eqs. 1–2 CAM and background, 3 affinity,
4–6 pair sets, 7–10 loss, 11 transition matrix, 12 random walk); the notation is the paper's.

Shapes: CAM stacks ``(C, H, W)`` over the foreground classes (channel ``c`` ↔ class ``c + 1``);
affinity-label maps ``(H, W)`` uint8 with 0 = background, ``c`` = class, 255 = neutral / ignore;
affinities ``(B, K, h, w)`` or ``(K, h, w)``: entry ``[k, y, x]`` is the affinity between grid
positions ``(y, x)`` and ``(y + dy_k, x + dx_k)`` for the k-th forward offset, 0 where that target
lies outside the grid.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from . import IGNORE_INDEX

__all__ = [
    "pair_offsets",
    "neighbour_offsets",
    "pair_indices",
    "pair_validity",
    "offset_slices",
    "affinity_labels",
    "confident_regions",
    "crf_available",
    "crf_refine",
    "downsample_labels",
    "pair_labels",
    "local_affinities",
    "affinity_loss",
    "affinity_matrix_dense",
    "transition_matrix",
    "propagate",
    "random_walk",
    "rw_scores",
    "random_walk_labels",
    "walk_steps",
    "boundary_map",
    "dense_matrix_bytes",
    "sparse_matrix_bytes",
]

PSA_CRF = dict(iters=10, gauss_sxy=3.0, gauss_compat=3.0, bi_sxy=80.0, bi_srgb=13.0, bi_compat=10.0)
"""PSA's dense-CRF parameters (``tool/imutils.crf_inference``), for ~500-px VOC photos."""


# ------------------------------------------------------------------------------------------------
# pairs
# ------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _pair_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    offs = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offs.append((dy, dx))
    return tuple(offs)


def pair_offsets(radius: int) -> list[tuple[int, int]]:
    """The *forward* offsets ``(dy, dx)`` of PSA's pair set (paper Eq. 4), in the official order.

    Every position is paired with the positions ``(y + dy, x + dx)`` for ``0 < dy² + dx² < radius²``
    with ``dy > 0``, or ``dy = 0`` and ``dx > 0``; the symmetric offsets are the same pairs seen from
    the other end. Radius 5 gives 34 offsets (4 on the same row, then 9, 9, 7, 5 on rows 1–4).

    Parameters
    ----------
    radius : int ≥ 2
        γ of the paper (PSA and IRN's walk: 5; IRN's training: 10).

    Returns
    -------
    list of (int, int)
    """
    if int(radius) != radius or radius < 2:
        raise ValueError(f"radius must be an integer >= 2, got {radius!r}")
    return list(_pair_offsets(int(radius)))


def neighbour_offsets(radius: int, include_self: bool = True) -> list[tuple[int, int]]:
    """All offsets of the neighbourhood: ``(0, 0)`` (optional), the forward offsets of
    :func:`pair_offsets`, then their negatives — the non-zero pattern of one row of ``T``
    (69 entries for radius 5)."""
    fwd = pair_offsets(radius)
    return ([(0, 0)] if include_self else []) + fwd + [(-dy, -dx) for dy, dx in fwd]


def offset_slices(d: int, n: int) -> tuple[slice, slice]:
    """Source and target slices along one axis for offset ``d`` on a length-``n`` axis: ``x[src]`` and
    ``x[tgt]`` are the positions ``i`` and ``i + d`` that both lie on the axis (empty when ``|d| >= n``)."""
    if d >= 0:
        return slice(0, max(n - d, 0)), slice(d, n)
    return slice(-d, n), slice(0, max(n + d, 0))


def pair_validity(size: tuple[int, int], radius: int, device=None) -> torch.Tensor:
    """``(K, h, w)`` bool: whether the k-th forward target of each position lies inside the grid."""
    h, w = size
    offs = pair_offsets(radius)
    valid = torch.zeros(len(offs), h, w, dtype=torch.bool, device=device)
    for k, (dy, dx) in enumerate(offs):
        sy, _ = offset_slices(dy, h)
        sx, _ = offset_slices(dx, w)
        valid[k, sy, sx] = True
    return valid


def pair_indices(size: tuple[int, int], radius: int, layout: str = "full") -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``(from, to)`` of the pairs on an ``h × w`` grid (row-major positions).

    Parameters
    ----------
    size : (h, w)
    radius : int
    layout : {"full", "psa"}
        ``"full"``: every in-bounds pair once, offset by offset (what this project trains and walks
        with). ``"psa"``: the official ``get_indices_of_pairs`` — sources restricted to the window
        ``[0, h − r + 1) × [r − 1, w − r + 1)`` so that every target is in bounds; ``from`` then has one
        entry per source and ``to`` one per (offset, source), offset-major, as in the official code.

    Returns
    -------
    (np.ndarray, np.ndarray) of int64
        ``"full"``: two (P,) arrays. ``"psa"``: (S,) and (K·S,).
    """
    h, w = int(size[0]), int(size[1])
    offs = pair_offsets(radius)
    full = np.arange(h * w, dtype=np.int64).reshape(h, w)
    if layout == "psa":
        rf = radius - 1
        if h <= rf or w <= 2 * rf:
            raise ValueError(f"grid {h}×{w} too small for PSA's cropped pair layout with radius {radius}")
        ch, cw = h - rf, w - 2 * rf
        src = full[:-rf, rf:w - rf].reshape(-1)
        to = [full[dy:dy + ch, rf + dx:rf + dx + cw].reshape(-1) for dy, dx in offs]
        return src, np.concatenate(to)
    if layout != "full":
        raise ValueError(f"layout must be 'full' or 'psa', got {layout!r}")
    a, b = [], []
    for dy, dx in offs:
        sy, ty = offset_slices(dy, h)
        sx, tx = offset_slices(dx, w)
        a.append(full[sy, sx].reshape(-1))
        b.append(full[ty, tx].reshape(-1))
    return np.concatenate(a), np.concatenate(b)


# ------------------------------------------------------------------------------------------------
# affinity labels from CAMs
# ------------------------------------------------------------------------------------------------

def crf_available() -> bool:
    """Whether the optional dense CRF (``pip install pydensecrf2``, module ``pydensecrf``) imports."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except Exception:  # ImportError, or a broken binary build
        return False
    return True


def crf_refine(image: np.ndarray, scores: np.ndarray, iters: int = 10, gauss_sxy: float = 3.0,
               gauss_compat: float = 3.0, bi_sxy: float = 80.0, bi_srgb: float = 13.0,
               bi_compat: float = 10.0, scale: float = 1.0) -> np.ndarray:
    """PSA's dense CRF on a score stack (``tool/imutils.crf_inference``).

    Unary ``−log(scores)`` (``pydensecrf.utils.unary_from_softmax``; the scores are *not*
    renormalised, as in PSA), a Gaussian kernel (``gauss_sxy``, ``gauss_compat``) and a bilateral
    kernel (``bi_sxy``, ``bi_srgb``, ``bi_compat``), mean-field for ``iters`` iterations. PSA's
    values (3/3, 80/13/10, 10 iterations) are for ~500-px photos: ``scale`` divides both spatial
    widths (``sxy``), e.g. ``scale = 500 / 96`` for the 96-px toy scenes.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB.
    scores : (L, H, W) float, non-negative (e.g. ``[M_bg, M_c1, M_c2, ...]``).

    Returns
    -------
    (L, H, W) float32 marginals (sum to 1 over L at every pixel).

    Raises
    ------
    ImportError
        ``pydensecrf`` is not installed (it is optional: ``pip install pydensecrf2``).
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except Exception as e:  # pragma: no cover - depends on the environment
        raise ImportError("the dense CRF needs the optional package pydensecrf2 (`pip install pydensecrf2`, "
                          "or `pip install -e .[crf]`); run without CRF (crf=None) otherwise") from e
    image = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    scores = np.asarray(scores, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or scores.ndim != 3 or scores.shape[1:] != image.shape[:2]:
        raise ValueError(f"expected image (H, W, 3) and scores (L, H, W) of the same H, W; got {image.shape} "
                         f"and {scores.shape}")
    n, h, w = scores.shape
    d = dcrf.DenseCRF2D(w, h, n)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    d.addPairwiseGaussian(sxy=gauss_sxy / scale, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy / scale, srgb=bi_srgb, rgbim=np.copy(image), compat=bi_compat)
    q = d.inference(int(iters))
    return np.asarray(q, dtype=np.float32).reshape(n, h, w)


def _bg_stack(cams: np.ndarray, present: np.ndarray, *, alpha: float | None, threshold: float | None) -> np.ndarray:
    """``[bg, M_c for present c]`` (L, H, W): PSA power background or a constant (IRN)."""
    sub = cams[present]
    if alpha is not None:
        bg = np.power(1.0 - (sub.max(0) if len(sub) else np.zeros(cams.shape[1:], np.float32)), alpha)
    else:
        bg = np.full(cams.shape[1:], threshold, np.float32)
    return np.concatenate([bg[None].astype(np.float32), sub.astype(np.float32)], 0)


def confident_regions(cams, label, *, fg_alpha: float | None = 4.0, bg_alpha: float | None = 32.0,
                      fg_threshold: float | None = None, bg_threshold: float | None = None,
                      image: np.ndarray | None = None, crf: dict | bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two hard label maps behind :func:`affinity_labels`: ``(fg_conf, bg_conf)``, each (H, W)
    int64 in ``0..C`` (0 = background).

    ``fg_conf`` is the arg-max over ``[bg_low, M]`` with the *large* background (α = ``fg_alpha``, or
    the constant ``fg_threshold``): its foreground is confident. ``bg_conf`` uses the *small*
    background (``bg_alpha`` / ``bg_threshold``): its background is confident. With ``crf`` each score
    stack goes through :func:`crf_refine` first (PSA). See :func:`affinity_labels`.
    """
    cams = np.asarray(cams.detach().cpu() if isinstance(cams, torch.Tensor) else cams, dtype=np.float32)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (C, H, W), got shape {cams.shape}")
    present = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label).astype(bool).reshape(-1)
    if present.shape[0] != cams.shape[0]:
        raise ValueError(f"label has {present.shape[0]} entries but cams has {cams.shape[0]} channels")
    use_thr = fg_threshold is not None or bg_threshold is not None
    if use_thr and (fg_threshold is None or bg_threshold is None):
        raise ValueError("give both fg_threshold and bg_threshold (IRN: 0.30 and 0.05), or neither")
    if not use_thr and (fg_alpha is None or bg_alpha is None):
        raise ValueError("give fg_alpha and bg_alpha (PSA: 4 and 32) or fg_threshold and bg_threshold")
    if use_thr and not (bg_threshold < fg_threshold):
        raise ValueError(f"the confident-background threshold ({bg_threshold}) must be below the confident-"
                         f"foreground one ({fg_threshold})")
    if not use_thr and not (fg_alpha < bg_alpha):
        raise ValueError(f"fg_alpha ({fg_alpha}) must be smaller than bg_alpha ({bg_alpha}): a small α gives a "
                         "large background, so the foreground left is the confident one")
    keys = np.flatnonzero(present)
    out = []
    for a, t in ((fg_alpha, fg_threshold), (bg_alpha, bg_threshold)):
        stack = _bg_stack(cams, present, alpha=None if use_thr else a, threshold=t if use_thr else None)
        if crf:
            if image is None:
                raise ValueError("the dense CRF needs the image (H, W, 3) uint8")
            params = dict(PSA_CRF)
            if isinstance(crf, dict):
                params.update(crf)
            stack = crf_refine(image, stack, **params)
        arg = stack.argmax(0)  # ties → background (index 0)
        lab = np.zeros(arg.shape, np.int64)
        fg = arg > 0
        lab[fg] = keys[arg[fg] - 1] + 1
        out.append(lab)
    return out[0], out[1]


def affinity_labels(cams, label, *, fg_alpha: float | None = 4.0, bg_alpha: float | None = 32.0,
                    fg_threshold: float | None = None, bg_threshold: float | None = None,
                    image: np.ndarray | None = None, crf: dict | bool | None = None) -> np.ndarray:
    """Confident foreground, confident background and a neutral band, from CAMs (PSA §3.2; IRN).

    ``label = fg_conf``; where ``fg_conf`` is background → 255 (neutral); where ``bg_conf`` is
    background → 0 (confident background) — the order of the official ``VOC12AffDataset`` (PSA) and
    ``cam_to_ir_label`` (IRN). With the power rule a pixel is confident foreground when
    ``max_c M_c > θ(α_low)`` and confident background when ``max_c M_c ≤ θ(α_high)``, with
    ``(1 − θ)^α = θ``: θ(4) ≈ 0.28, θ(32) ≈ 0.075 (IRN's constants: 0.30 and 0.05).

    Parameters
    ----------
    cams : (C, H, W) float in [0, 1]
        Max-normalised CAMs (:func:`wsss_core.cams.load_cams`); absent classes are ignored.
    label : (C,) multi-hot image label.
    fg_alpha, bg_alpha : float
        PSA's low and high α (official defaults 4 and 32; the CVPR paper used 4 and 24).
    fg_threshold, bg_threshold : float, optional
        IRN's constant backgrounds instead of α (``conf_fg_thres`` 0.30, ``conf_bg_thres`` 0.05).
    image : (H, W, 3) uint8, optional
        Needed with ``crf``.
    crf : bool or dict, optional
        Refine both score stacks with :func:`crf_refine` (PSA); a dict overrides :data:`PSA_CRF`
        (e.g. ``{"scale": 5.2}`` for small images). Needs ``pydensecrf``; :func:`crf_available`.

    Returns
    -------
    (H, W) uint8: 0 confident background, ``c`` confident class c, 255 neutral.
    """
    fg_conf, bg_conf = confident_regions(cams, label, fg_alpha=fg_alpha, bg_alpha=bg_alpha,
                                         fg_threshold=fg_threshold, bg_threshold=bg_threshold, image=image, crf=crf)
    out = fg_conf.astype(np.uint8)
    out[fg_conf == 0] = IGNORE_INDEX
    out[bg_conf == 0] = 0
    return out


def downsample_labels(labels: torch.Tensor | np.ndarray, stride: int):
    """Label map(s) ``(..., H, W)`` → the feature grid ``(..., ⌈H/s⌉, ⌈W/s⌉)`` by taking the label at
    the centre of each ``s × s`` cell (IRN rescales its label maps with nearest neighbour).

    The grid is the one a network of output stride ``s`` produces from the image padded to a
    multiple of ``s`` (what :func:`random_walk_labels` assumes too).
    """
    s = int(stride)
    if s < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if s == 1:
        return labels
    c = s // 2  # the centre pixel of each cell (the lower-right of the middle four for even s)
    H, W = labels.shape[-2:]
    ys = np.minimum(np.arange(c, math.ceil(H / s) * s, s), H - 1)
    xs = np.minimum(np.arange(c, math.ceil(W / s) * s, s), W - 1)
    if isinstance(labels, torch.Tensor):
        return labels[..., torch.as_tensor(ys, device=labels.device)[:, None], torch.as_tensor(xs, device=labels.device)[None, :]]
    return np.asarray(labels)[..., ys[:, None], xs[None, :]]


def pair_labels(labels: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three pair sets of PSA (paper Eqs. 5–6; official ``ExtractAffinityLabelInRadius``) for every
    forward pair of a label grid.

    Parameters
    ----------
    labels : (B, h, w) or (h, w) integer tensor: 0 background, c > 0 class, 255 neutral/ignore.
    radius : int

    Returns
    -------
    bg_pos, fg_pos, neg : (B, K, h, w) bool (no batch dim for a 2-D input)
        ``bg_pos``: both ends background; ``fg_pos``: both ends the same class > 0; ``neg``: both ends
        valid (≠ 255) and different. Pairs touching 255 or leaving the grid are in none of them.
    """
    squeeze = labels.dim() == 2
    lab = labels[None] if squeeze else labels
    if lab.dim() != 3:
        raise ValueError(f"labels must be (h, w) or (B, h, w), got shape {tuple(labels.shape)}")
    lab = lab.long()
    B, h, w = lab.shape
    offs = pair_offsets(radius)
    out = [torch.zeros(B, len(offs), h, w, dtype=torch.bool, device=lab.device) for _ in range(3)]
    for k, (dy, dx) in enumerate(offs):
        sy, ty = offset_slices(dy, h)
        sx, tx = offset_slices(dx, w)
        a, b = lab[:, sy, sx], lab[:, ty, tx]
        valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
        same = (a == b) & valid
        out[0][:, k, sy, sx] = same & (a == 0)
        out[1][:, k, sy, sx] = same & (a != 0)
        out[2][:, k, sy, sx] = valid & (a != b)
    if squeeze:
        return out[0][0], out[1][0], out[2][0]
    return out[0], out[1], out[2]


# ------------------------------------------------------------------------------------------------
# affinities and their loss
# ------------------------------------------------------------------------------------------------

class _LocalL1Affinity(torch.autograd.Function):
    """``exp(−mean_d |f_i − f_j|)`` for the forward offsets, with a hand-written backward that keeps only
    ``f`` and the output (autograd would keep two ``B × D × h × w`` buffers per offset: 68 of them for
    radius 5, most of the training step's time and memory on a CPU)."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, radius: int) -> torch.Tensor:
        B, _, h, w = f.shape
        offs = pair_offsets(radius)
        out = f.new_zeros(B, len(offs), h, w)
        for k, (dy, dx) in enumerate(offs):
            sy, ty = offset_slices(dy, h)
            sx, tx = offset_slices(dx, w)
            out[:, k, sy, sx] = torch.exp(-(f[:, :, sy, sx] - f[:, :, ty, tx]).abs_().mean(1))
        ctx.save_for_backward(f, out)
        ctx.radius = radius
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f, out = ctx.saved_tensors
        _, D, h, w = f.shape
        # a = exp(−m), m = mean_d |f_i − f_j|:  ∂L/∂f_i = −g·a·sign(f_i − f_j)/D = −∂L/∂f_j
        coef = -(grad * out) / D
        gf = torch.zeros_like(f)
        for k, (dy, dx) in enumerate(pair_offsets(ctx.radius)):
            sy, ty = offset_slices(dy, h)
            sx, tx = offset_slices(dx, w)
            t = torch.sign(f[:, :, sy, sx] - f[:, :, ty, tx]).mul_(coef[:, k, sy, sx].unsqueeze(1))
            gf[:, :, sy, sx] += t
            gf[:, :, ty, tx] -= t
        return gf, None


def local_affinities(features: torch.Tensor, radius: int) -> torch.Tensor:
    """``a_ij = exp(−mean_d |f_i^d − f_j^d|)`` for every forward pair within ``radius`` (paper Eq. 3,
    with the official code's channel mean instead of the sum).

    Parameters
    ----------
    features : (B, D, h, w) or (D, h, w) float tensor (differentiable; computed in float32).
    radius : int

    Returns
    -------
    (B, K, h, w) (or (K, h, w)) float32 in (0, 1]; 0 where the k-th target leaves the grid.
    """
    squeeze = features.dim() == 3
    f = features[None] if squeeze else features
    if f.dim() != 4:
        raise ValueError(f"features must be (D, h, w) or (B, D, h, w), got shape {tuple(features.shape)}")
    pair_offsets(radius)  # validates the radius
    f = f if f.dtype == torch.float64 else f.float()
    out = _LocalL1Affinity.apply(f.contiguous(), int(radius))
    return out[0] if squeeze else out


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                  eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """PSA's affinity loss (official ``train_aff.py``; paper Eqs. 7–10):

    ``L_bg⁺ = −Σ_{bg⁺} log(a + ε) / (|P_bg⁺| + ε)``, ``L_fg⁺`` likewise over the foreground-positive
    pairs, ``L⁻ = −Σ_{neg} log(1 + ε − a) / (|P⁻| + ε)``, and ``L = L_bg⁺/4 + L_fg⁺/4 + L⁻/2``.
    Every term is averaged over its *own* pairs, pooled over the whole batch, so the rare
    foreground pairs weigh as much as the plentiful background ones.

    Parameters
    ----------
    aff : (B, K, h, w) affinities in [0, 1] (:func:`local_affinities`).
    bg_pos, fg_pos, neg : (B, K, h, w) bool pair masks (:func:`pair_labels`).
    eps : ε of the official code.

    Returns
    -------
    dict with ``loss`` (scalar tensor) and the detached ``bg_loss``, ``fg_loss``, ``neg_loss``,
    ``bg_count``, ``fg_count``, ``neg_count``.
    """
    if not (aff.shape == bg_pos.shape == fg_pos.shape == neg.shape):
        raise ValueError(f"shapes differ: aff {tuple(aff.shape)}, bg_pos {tuple(bg_pos.shape)}, "
                         f"fg_pos {tuple(fg_pos.shape)}, neg {tuple(neg.shape)}")
    aff = aff.float()
    bg, fg, ng = bg_pos.to(aff.dtype), fg_pos.to(aff.dtype), neg.to(aff.dtype)
    nb, nf, nn_ = bg.sum(), fg.sum(), ng.sum()
    l_bg = -(bg * torch.log(aff + eps)).sum() / (nb + eps)
    l_fg = -(fg * torch.log(aff + eps)).sum() / (nf + eps)
    l_ng = -(ng * torch.log(1.0 + eps - aff)).sum() / (nn_ + eps)
    loss = l_bg / 4 + l_fg / 4 + l_ng / 2
    return {"loss": loss, "bg_loss": l_bg.detach(), "fg_loss": l_fg.detach(), "neg_loss": l_ng.detach(),
            "bg_count": nb.detach(), "fg_count": nf.detach(), "neg_count": nn_.detach()}


# ------------------------------------------------------------------------------------------------
# transition matrix and random walk
# ------------------------------------------------------------------------------------------------

def _check_aff(aff, radius: int) -> torch.Tensor:
    aff = torch.as_tensor(aff)
    if aff.dim() != 3:
        raise ValueError(f"affinities must be (K, h, w) for one image, got shape {tuple(aff.shape)}")
    K = len(pair_offsets(radius))
    if aff.shape[0] != K:
        raise ValueError(f"affinities have {aff.shape[0]} offsets but radius {radius} has {K}: use the radius "
                         "they were computed with")
    if torch.is_floating_point(aff) and ((aff < 0).any() or (aff > 1 + 1e-6).any()):
        raise ValueError("affinities must lie in [0, 1]")
    return aff


def _coo(aff: torch.Tensor, radius: int, beta: float, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Row, column and value arrays of ``W^β`` (symmetric, diagonal 1), numpy, for N = h·w."""
    K, h, w = aff.shape
    N = h * w
    a = aff.detach().to("cpu", torch.float64).numpy()
    full = np.arange(N, dtype=np.int64).reshape(h, w)
    rows, cols, vals = [np.arange(N)], [np.arange(N)], [np.ones(N)]
    for k, (dy, dx) in enumerate(pair_offsets(radius)):
        sy, ty = offset_slices(dy, h)
        sx, tx = offset_slices(dx, w)
        i, j, v = full[sy, sx].reshape(-1), full[ty, tx].reshape(-1), a[k, sy, sx].reshape(-1) ** beta
        rows += [i, j]
        cols += [j, i]
        vals += [v, v]
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(dtype), N


def affinity_matrix_dense(aff, radius: int, beta: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """The dense ``N × N`` matrix ``W^{∘β}`` of one image's affinities (official ``to_dense=True``):
    the forward pairs, their transposes and 1 on the diagonal; 0 beyond the radius. Memory N² —
    for teaching and tests on small grids."""
    aff = _check_aff(aff, radius)
    r, c, v, N = _coo(aff, radius, beta, np.float64)
    W = torch.zeros(N, N, dtype=torch.float64)
    W[torch.from_numpy(r), torch.from_numpy(c)] = torch.from_numpy(v)
    return W.to(dtype)


def transition_matrix(aff, radius: int, beta: float = 8.0, kind: str = "sparse", dtype=torch.float32,
                      backend: str = "auto"):
    """``T = D⁻¹ W^{∘β}``, ``D_ii = Σ_j W_ij^β`` (paper Eq. 11): row-stochastic.

    Parameters
    ----------
    aff : (K, h, w) affinities of one image (:func:`local_affinities`), in [0, 1].
    radius : the radius the affinities were computed with.
    beta : β (PSA 8, IRN 10): ``a^β`` sharpens — weak affinities vanish, strong ones stay ≈ 1.
    kind : {"sparse", "dense"}
        ``"sparse"``: CSR with ≤ 2K + 1 non-zeros per row, memory O(N·r²). ``"dense"``: an
        ``N × N`` tensor (the official code), memory O(N²).
    dtype : torch.float32 or torch.float64.
    backend : {"auto", "scipy", "torch"}
        For ``"sparse"``: a ``scipy.sparse.csr_matrix`` (fastest on CPUs) or a torch sparse CSR tensor
        (runs on GPUs). ``"auto"``: scipy for CPU affinities, torch for CUDA ones.

    Returns
    -------
    scipy.sparse.csr_matrix, torch sparse CSR tensor or dense torch tensor, shape (N, N), N = h·w.
    """
    aff = _check_aff(aff, radius)
    if kind not in ("sparse", "dense"):
        raise ValueError(f"kind must be 'sparse' or 'dense', got {kind!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if kind == "dense":
        W = affinity_matrix_dense(aff, radius, beta, dtype=torch.float64)
        return (W / W.sum(1, keepdim=True)).to(dtype=dtype, device=aff.device)
    npdt = np.float64 if dtype == torch.float64 else np.float32
    r, c, v, N = _coo(aff, radius, beta, np.float64)
    deg = np.bincount(r, weights=v, minlength=N)
    v = (v / deg[r]).astype(npdt)
    if backend == "auto":
        backend = "scipy" if aff.device.type == "cpu" else "torch"
    if backend == "scipy":
        import scipy.sparse as sp

        return sp.csr_matrix((v, (r, c)), shape=(N, N))
    if backend != "torch":
        raise ValueError(f"backend must be 'auto', 'scipy' or 'torch', got {backend!r}")
    idx = torch.from_numpy(np.stack([r, c]))
    T = torch.sparse_coo_tensor(idx, torch.from_numpy(v), (N, N), check_invariants=False).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return T.to_sparse_csr().to(aff.device)


def propagate(T, x, t: int = 256) -> torch.Tensor:
    """``vec(M*) = T^t vec(M)`` for every channel of ``x`` (paper Eq. 12).

    Parameters
    ----------
    T : transition matrix from :func:`transition_matrix` (scipy CSR, torch sparse CSR or dense).
    x : (C, h, w) or (C, N) scores on the grid (numpy or torch).
    t : number of steps (PSA/IRN: 256 = 2⁸).

    Returns
    -------
    torch.Tensor, same shape as ``x``, float (T's dtype).

    Notes
    -----
    A dense ``T`` is raised to the power t by repeated squaring (binary exponentiation; for t = 2^k
    exactly the official k squarings), then applied once. A sparse ``T`` is applied t times:
    squaring a banded matrix widens its band, so after a few squarings it is dense.
    """
    if int(t) != t or t < 0:
        raise ValueError(f"t must be a non-negative integer, got {t!r}")
    t = int(t)
    xt = torch.as_tensor(x)
    shape = xt.shape
    v = xt.reshape(shape[0], -1)
    is_scipy = not isinstance(T, torch.Tensor)
    N = T.shape[0]
    if v.shape[1] != N:
        raise ValueError(f"x has {v.shape[1]} positions but T is {N} × {N}")
    if is_scipy:
        y = np.ascontiguousarray(v.detach().cpu().numpy().T.astype(T.dtype))  # (N, C)
        for _ in range(t):
            y = T @ y
        return torch.from_numpy(np.ascontiguousarray(y.T)).reshape(shape)
    y = v.to(device=T.device, dtype=T.dtype).T.contiguous()  # (N, C)
    if T.layout == torch.strided:
        P, base, e = None, T, t
        while e:
            if e & 1:
                P = base if P is None else P @ base
            e >>= 1
            if e:
                base = base @ base
        out = y if P is None else P @ y
        return out.T.reshape(shape)
    for _ in range(t):
        y = T @ y
    return y.T.reshape(shape)


def random_walk(x, aff, radius: int, beta: float = 8.0, t: int = 256, method: str = "sparse",
                dtype=torch.float32, backend: str = "auto") -> torch.Tensor:
    """Propagate grid scores ``x`` (C, h, w) along one image's affinities (K, h, w):
    :func:`transition_matrix` then :func:`propagate` (paper Eqs. 11–12).

    ``method="sparse"`` (default) keeps ``T`` in CSR and applies it t times: memory O(N·r²).
    ``method="dense"`` is the official algorithm (dense N × N, repeated squaring): memory O(N²), the
    reference the tests compare with. Both give the same result up to float rounding.
    """
    aff = _check_aff(aff, radius)
    x = torch.as_tensor(x)
    if x.dim() != 3 or tuple(x.shape[1:]) != tuple(aff.shape[1:]):
        raise ValueError(f"x must be (C, h, w) on the affinity grid {tuple(aff.shape[1:])}, got {tuple(x.shape)}")
    T = transition_matrix(aff, radius, beta, kind=method, dtype=dtype, backend=backend)
    return propagate(T, x, t)


def rw_scores(cams, label, stride: int, alpha: float = 16.0) -> torch.Tensor:
    """The random walk's input: ``[M_bg, M_1, …, M_C]`` with ``M_bg = (1 − max_c M_c)^α`` (PSA's
    ``infer_aff.py``: α = 16), computed at full resolution, zero-padded to a multiple of ``stride``
    and average-pooled by ``stride`` onto the feature grid. Absent classes are 0.

    Parameters
    ----------
    cams : (C, H, W) in [0, 1]; label : (C,) multi-hot.

    Returns
    -------
    (C + 1, ⌈H/s⌉, ⌈W/s⌉) float32 tensor.
    """
    m = torch.as_tensor(np.asarray(cams.detach().cpu() if isinstance(cams, torch.Tensor) else cams), dtype=torch.float32)
    lab = torch.as_tensor(np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label), dtype=torch.float32)
    if m.dim() != 3 or lab.numel() != m.shape[0]:
        raise ValueError(f"expected cams (C, H, W) and label (C,), got {tuple(m.shape)} and {tuple(lab.shape)}")
    m = m * lab.reshape(-1, 1, 1)
    bg = torch.pow(1.0 - (m.amax(0) if m.shape[0] else torch.zeros(m.shape[1:])), alpha)
    s = torch.cat([bg[None], m], 0)
    H, W = s.shape[-2:]
    ph, pw = (-H) % stride, (-W) % stride
    s = F.pad(s, (0, pw, 0, ph))
    return F.avg_pool2d(s[None], stride, stride)[0] if stride > 1 else s


def random_walk_labels(cams, label, aff, radius: int, stride: int, *, alpha: float = 16.0, beta: float = 8.0,
                       t: int = 256, method: str = "sparse", return_scores: bool = False, backend: str = "auto"):
    """PSA's pseudo-label (``infer_aff.py``): :func:`rw_scores` → :func:`random_walk` → bilinear
    upsampling by ``stride`` → crop to (H, W) → arg-max over background and the present classes.

    Parameters
    ----------
    cams : (C, H, W) max-normalised CAMs; label : (C,) multi-hot.
    aff : (K, ⌈H/s⌉, ⌈W/s⌉) affinities on the grid of the image padded to a multiple of ``stride``.
    radius, stride : of the affinities.
    alpha, beta, t : PSA's 16, 8, 256.

    Returns
    -------
    (H, W) int64 labels in 0..C (and the propagated full-resolution scores (C + 1, H, W) if
    ``return_scores``).
    """
    cams_np = np.asarray(cams.detach().cpu() if isinstance(cams, torch.Tensor) else cams, dtype=np.float32)
    H, W = cams_np.shape[-2:]
    x = rw_scores(cams_np, label, stride, alpha)
    aff = _check_aff(aff, radius)
    if tuple(aff.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"affinity grid {tuple(aff.shape[1:])} does not match the CAM grid {tuple(x.shape[1:])} "
                         f"(image {H}×{W} padded to a multiple of stride {stride})")
    present = np.concatenate([[True], np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
                              .astype(bool).reshape(-1)])
    keep = torch.from_numpy(np.flatnonzero(present))
    # absent classes are all-zero and stay zero under T (PSA propagates all 21 channels): skip them
    rw = random_walk(x[keep], aff.cpu() if backend == "scipy" else aff, radius, beta, t, method=method, backend=backend)
    rw = rw.float().cpu()
    up = F.interpolate(rw[None], scale_factor=stride, mode="bilinear", align_corners=False)[0, :, :H, :W] \
        if stride > 1 else rw[:, :H, :W]
    lab = keep[up.argmax(0)].numpy().astype(np.int64)  # ties → the lowest index, background first
    if return_scores:
        full = torch.zeros((len(present),) + tuple(up.shape[1:]), dtype=up.dtype)
        full[keep] = up
        return lab, full
    return lab


def walk_steps(cams, label, aff, radius: int, stride: int, steps, *, alpha: float = 16.0,
               beta: float = 8.0) -> dict[int, torch.Tensor]:
    """The walk of :func:`random_walk_labels` stopped after each ``t`` in ``steps``, for figures and
    explorers: one transition matrix, applied incrementally.

    Returns
    -------
    ``{t: (C + 1, H, W) float32}``: background and class scores, bilinearly upsampled to the image and
    cropped; absent classes are −1, so ``.argmax(0)`` is the walk's label map after ``t`` steps
    (``t = 0``: the pooled CAM input of :func:`rw_scores`).
    """
    cams_np = np.asarray(cams.detach().cpu() if isinstance(cams, torch.Tensor) else cams, dtype=np.float32)
    H, W = cams_np.shape[-2:]
    present = np.concatenate([[True], np.asarray(label).astype(bool).reshape(-1)])
    keep = torch.from_numpy(np.flatnonzero(present))
    T = transition_matrix(_check_aff(aff, radius), radius, beta)
    out, done, cur = {}, 0, rw_scores(cams_np, label, stride, alpha)[keep]   # absent classes stay 0: skip them
    for t in sorted(int(t) for t in steps):
        cur = propagate(T, cur, t - done).float()
        done = t
        up = F.interpolate(cur[None], scale_factor=stride, mode="bilinear", align_corners=False)[0, :, :H, :W] \
            if stride > 1 else cur[:, :H, :W]
        full = torch.full((len(present),) + tuple(up.shape[1:]), -1.0)
        full[keep] = up
        out[t] = full
    return out


def boundary_map(aff, radius: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """What AffinityNet calls an edge: ``1 − min(affinity to the right, affinity below)`` at every grid
    position (white where the network says "different"), nearest-upsampled to ``size`` (H, W) if given.

    Parameters
    ----------
    aff : (K, h, w) forward affinities of one image (:func:`local_affinities`).

    Returns
    -------
    (h, w) or (H, W) float32 in [0, 1].
    """
    aff = torch.as_tensor(aff).float().cpu()
    offs = pair_offsets(radius)
    k01, k10 = offs.index((0, 1)), offs.index((1, 0))
    a = torch.ones(aff.shape[1:])
    a[:, :-1] = torch.minimum(a[:, :-1], aff[k01, :, :-1])
    a[:-1] = torch.minimum(a[:-1], aff[k10, :-1])
    b = (1 - a).numpy().astype(np.float32)
    if size is None:
        return b
    H, W = size
    ys = np.minimum((np.arange(H) * b.shape[0]) // H, b.shape[0] - 1)
    xs = np.minimum((np.arange(W) * b.shape[1]) // W, b.shape[1] - 1)
    return b[ys[:, None], xs[None, :]]


# ------------------------------------------------------------------------------------------------
# sizes (for the benchmark and the notebook's memory figure)
# ------------------------------------------------------------------------------------------------

def dense_matrix_bytes(n_nodes: int, itemsize: int = 4) -> int:
    """Bytes of one dense N × N matrix (the official walk holds ~3: W, T and T²)."""
    return int(n_nodes) ** 2 * itemsize


def sparse_matrix_bytes(size: tuple[int, int], radius: int, itemsize: int = 4, index_size: int = 4) -> int:
    """Bytes of the CSR transition matrix of an ``h × w`` grid: values + column indices + row pointers."""
    h, w = size
    nnz = h * w
    for dy, dx in pair_offsets(radius):
        nnz += 2 * max(h - abs(dy), 0) * max(w - abs(dx), 0)
    return nnz * (itemsize + index_size) + (h * w + 1) * index_size
