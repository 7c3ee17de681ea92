"""The Box2Seg losses (Kulharia et al., "Box2Seg: Attention Weighted Loss and Discriminative Feature
Learning for Weakly Supervised Segmentation", ECCV 2020) — **our reconstruction**.

No official code was released (``vivkul/Box2Seg`` holds a one-line README) and the paper body was not
available to us. What is verified (the authors' blog and abstract; ``reference/algorithms.md`` §5):
boxes are noisy labels, GrabCut gives pseudo ground truth, a per-class predicted attention multiplies
the per-pixel cross-entropy, a soft filling-rate constraint from the GrabCut output regularises the
attention, pixel embeddings are trained with a pairwise affinity objective, and only the segmentation
branch is used at test time. Every formula below is our reading of that description; the equation
numbers (B1)–(B6) are ours (notebook 04, §3), not the paper's.

Notation (one image; a batch sums the pixel terms and averages as stated):

* ``p_c(x)`` — softmax of the segmentation logits, ``c = 0`` background, ``1..C`` classes;
* ``Y(x)`` — the pseudo-label (GrabCut's), 255 = ignore;
* ``k(x)`` — the smallest box containing ``x`` (:func:`wsss_core.boxes.box_index_map`), ``c_k`` its
  class, ``Ω_k = {x : k(x) = k}`` its own pixels, ``Ω_B = ∪_k Ω_k`` all box pixels;
* ``A_c(x) = sigmoid(a_c(x))`` — the attention of class ``c`` (one channel per foreground class);
* ``ρ_k`` — the filling rate of box ``k`` from GrabCut (:func:`wsss_core.boxes.region_filling_rates`);
* ``e(x)`` — a unit embedding vector; ``a_ij = (1 + e_iᵀe_j) / 2`` the affinity of a pixel pair.

Losses:

(B1) ``L_ce  = −1/|Ω| Σ_x log p_{Y(x)}(x)`` — :func:`cross_entropy` (pixels with Y = 255 skipped);
(B1′) ``−1/|Ω| Σ_x w(x) log p_{Y(x)}(x)`` with ``w = 1 − A`` on GrabCut's background labels inside boxes
     and / or ``w = A`` on its object labels — :func:`gated_cross_entropy`; our experiment (not part of
     the description; it lost to (B1) on the toy scenes, notebook 04 §8);
(B2) ``L_awl = −1/|Ω_B| Σ_{x∈Ω_B} A_{c_k(x)}(x) · log p_{c_k(x)}(x)`` — :func:`attention_weighted_loss`;
     with ``A ≡ 1`` it is the plain cross-entropy against the *filled boxes* on box pixels;
(B3) ``L_fill = 1/K Σ_k ( 1/|Ω_k| Σ_{x∈Ω_k} A_{c_k}(x) − ρ_k )²`` — :func:`filling_rate_loss`;
(B4) ``L_pre = ¼ L_bg⁺ + ¼ L_fg⁺ + ½ L⁻`` with ``L⁺ = mean −log a_ij`` over pairs with the same
     GrabCut label (background / a class) and ``L⁻ = mean −log(1 − a_ij)`` over pairs with
     different labels — :func:`embedding_label_loss` (the balancing of PSA's AffinityNet loss);
(B5) ``P_ij = Σ_c p_c(i) p_c(j)`` — the probability that the segmentation gives i and j one label;
(B6) ``L_agr = −mean_ij [ P_ij log a_ij + (1 − P_ij) log(1 − a_ij) ]`` — :func:`embedding_agreement_loss`;
     gradients reach both the embeddings and the segmentation.

Pairs: pixel ``i`` and ``j = i + (dy, dx)`` on the embedding grid with ``0 < dy² + dx² < r²``, each
unordered pair once (:func:`pair_offsets`; PSA's radius-5 neighbourhood has 34 offsets).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE",
    "cross_entropy",
    "attention_weighted_loss",
    "gated_cross_entropy",
    "filling_rate_loss",
    "box_attention_means",
    "pair_offsets",
    "shift",
    "pair_affinity",
    "embedding_label_loss",
    "embedding_agreement_loss",
    "same_label_probability",
]

IGNORE = 255
_EPS = 1e-5


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (so ``backward`` works when a term has no pixel)."""
    return sum(t.sum() * 0.0 for t in tensors)


def _check_maps(logits: torch.Tensor, box_map: torch.Tensor, what: str) -> None:
    if logits.ndim != 4:
        raise ValueError(f"{what}: expected (B, K, H, W) scores, got shape {tuple(logits.shape)}")
    if box_map.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"{what}: box_map shape {tuple(box_map.shape)} does not match scores "
                         f"{tuple(logits.shape)} (expected (B, H, W) = {(logits.shape[0], *logits.shape[2:])})")
    if box_map.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what}: box_map must be an integer tensor (-1 = no box), got {box_map.dtype}")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel cross-entropy (B1), the base loss on GrabCut (or any) pseudo-labels.

    Parameters
    ----------
    logits : (B, C + 1, H, W) float
    target : (B, H, W) int64 in 0..C or 255 (ignored)
    weight : (B, H, W) float, optional
        Per-pixel weights; the loss is then ``Σ w·ce / Σ w`` over the non-ignored pixels.

    Returns
    -------
    scalar tensor
        Mean over the non-ignored pixels (0 with a graph if there are none).
    """
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"cross_entropy: logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    valid = target != IGNORE
    if not bool(valid.any()):
        return _zero(logits)
    ce = F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE, reduction="none")
    if weight is None:
        return ce[valid].mean()
    w = weight.float() * valid
    return (ce * w).sum() / w.sum().clamp_min(_EPS)


def _box_class_map(box_map: torch.Tensor, box_classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inside (B, H, W) bool, cls (B, H, W) int64)``: the class of each pixel's box (0 outside)."""
    inside = box_map >= 0
    if bool(inside.any()) and int(box_map.max()) >= box_classes.numel():
        raise ValueError(f"box_map refers to box {int(box_map.max())} but only {box_classes.numel()} box classes are given")
    bc = box_classes.to(box_map.device).long()
    if bc.numel() == 0:
        return inside, torch.zeros_like(box_map)
    cls = torch.where(inside, bc[box_map.clamp_min(0)], torch.zeros_like(box_map))
    return inside, cls


def _gather_class(scores: torch.Tensor, cls: torch.Tensor, offset: int) -> torch.Tensor:
    """``scores[b, cls[b, y, x] - offset, y, x]`` as (B, H, W) (channel clamped to 0 where cls < offset)."""
    return scores.gather(1, (cls - offset).clamp_min(0)[:, None]).squeeze(1)


def attention_weighted_loss(logits: torch.Tensor, attention: torch.Tensor, box_map: torch.Tensor,
                            box_classes: torch.Tensor) -> torch.Tensor:
    """Box2Seg's attention-weighted loss (B2), our reconstruction.

    ``L_awl = −1/|Ω_B| Σ_{x ∈ Ω_B} A_{c(x)}(x) · log p_{c(x)}(x)``, where ``c(x)`` is the class of the
    smallest box containing ``x``: every box pixel is a (noisy) vote for the box's class, and the
    predicted attention decides how much that vote counts. Background pixels inside a box (wrong
    foreground labels) can be switched off by a low attention; the filling-rate constraint
    (:func:`filling_rate_loss`) stops the trivial ``A ≡ 0``. With ``A ≡ 1`` it is exactly the
    cross-entropy against the filled boxes over the box pixels.

    Parameters
    ----------
    logits : (B, C + 1, H, W) float
        Segmentation logits (background = channel 0).
    attention : (B, C, H, W) float in [0, 1]
        ``A_c = sigmoid(att_c)``; channel ``c − 1`` is class ``c``.
    box_map : (B, H, W) int64
        Index (into ``box_classes``) of the smallest box containing each pixel; ``-1`` outside every
        box or ignored.
    box_classes : (N,) int64 in 1..C
        Class of every box of the batch.

    Returns
    -------
    scalar tensor
        Mean over box pixels (0 with a graph if there are none).
    """
    _check_maps(logits, box_map, "attention_weighted_loss")
    if attention.shape != (logits.shape[0], logits.shape[1] - 1, *logits.shape[2:]):
        raise ValueError(f"attention_weighted_loss: attention {tuple(attention.shape)} must be (B, C, H, W) for "
                         f"logits {tuple(logits.shape)}")
    if not bool((box_map >= 0).any()):
        return _zero(logits, attention)
    inside, cls = _box_class_map(box_map, box_classes)
    logp = _gather_class(F.log_softmax(logits.float(), dim=1), cls, offset=0)
    a = _gather_class(attention.float(), cls, offset=1)
    return -(a * logp)[inside].mean()


def gated_cross_entropy(logits: torch.Tensor, target: torch.Tensor, attention: torch.Tensor, box_map: torch.Tensor,
                        box_classes: torch.Tensor, gate_background: bool = True, gate_object: bool = False,
                        per_box_mean_one: bool = False) -> torch.Tensor:
    """(B1) with the attention arbitrating inside boxes (B1′), our experiment on top of the reconstruction.

    ``L = −1/|Ω| Σ_x w(x) log p_{Y(x)}(x)`` where, for a pixel of box ``k`` (class ``c_k``):

    * ``gate_background``: ``w = 1 − A_{c_k}(x)`` where GrabCut says background — where the attention says
      "object", GrabCut's under-estimate no longer pulls the pixel to background; ``∂L/∂A = log p_0 ≤ 0``
      pushes the attention *up* where the segmentation finds no background;
    * ``gate_object``: ``w = A_{c_k}(x)`` where GrabCut says ``c_k`` — a wrong foreground label is damped
      where the attention is low;
    * ``per_box_mean_one``: each box's gated pixels are rescaled to a mean weight of one (the attention
      redistributes the weight within a box instead of removing it);

    and ``w = 1`` everywhere else. With the background gate alone and ``A ≡ 0`` it is exactly
    :func:`cross_entropy`; so is any gate with ``per_box_mean_one`` and a uniform ``A``.

    Shapes as in :func:`cross_entropy` and :func:`attention_weighted_loss`; the mean is over the
    non-ignored pixels (the weights do not enter the normaliser).
    """
    _check_maps(logits, box_map, "gated_cross_entropy")
    if target.shape != box_map.shape:
        raise ValueError(f"gated_cross_entropy: target {tuple(target.shape)} and box_map {tuple(box_map.shape)} differ")
    valid = target != IGNORE
    if not bool(valid.any()):
        return _zero(logits, attention)
    ce = F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE, reduction="none")
    inside, cls = _box_class_map(box_map, box_classes)
    a = _gather_class(attention.float(), cls, offset=1)
    w = torch.ones_like(a)
    for on, sel, g in ((gate_background, inside & (target == 0), 1.0 - a), (gate_object, inside & (target == cls), a)):
        if not on:
            continue
        if per_box_mean_one and bool(sel.any()):
            # each box's gated pixels keep a mean weight of one: the attention redistributes, not removes
            k = box_map[sel]
            means, _ = _box_means(g[sel], k, box_classes.numel())
            g = g.clone()
            g[sel] = g[sel] / means.clamp_min(_EPS)[k]
        w = torch.where(sel, g, w)
    return (w * ce)[valid].sum() / valid.sum()


def box_attention_means(attention: torch.Tensor, box_map: torch.Tensor, box_classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attention of each box's class over the box's own pixels.

    Returns
    -------
    means : (N,) float
        ``1/|Ω_k| Σ_{x∈Ω_k} A_{c_k}(x)`` (0 for a box without pixels).
    counts : (N,) float
        ``|Ω_k|``.
    """
    _check_maps(attention, box_map, "box_attention_means")
    inside, cls = _box_class_map(box_map, box_classes)
    return _box_means(_gather_class(attention.float(), cls, offset=1)[inside], box_map[inside], box_classes.numel())


def _box_means(values: torch.Tensor, box: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means (n,), counts (n,))`` of ``values`` (M,) grouped by box index ``box`` (M,) (mean 0 for an empty box)."""
    sums = torch.zeros(n, device=values.device, dtype=torch.float32).index_add(0, box, values.float())
    counts = torch.zeros(n, device=values.device, dtype=torch.float32).index_add(0, box, torch.ones_like(values, dtype=torch.float32))
    return sums / counts.clamp_min(1.0), counts


def filling_rate_loss(attention: torch.Tensor, box_map: torch.Tensor, box_classes: torch.Tensor,
                      rho: torch.Tensor) -> torch.Tensor:
    """Soft filling-rate constraint (B3), our reconstruction.

    ``L_fill = 1/K Σ_k (mean_{x∈Ω_k} A_{c_k}(x) − ρ_k)²`` over the K boxes that have pixels: the
    attention of a box must cover the share ``ρ_k`` of it that GrabCut found to be object — so it
    cannot vanish, and it has to *choose* which ``ρ_k`` of the box to trust.

    Parameters
    ----------
    attention : (B, C, H, W) float in [0, 1]
    box_map : (B, H, W) int64, −1 = no box
    box_classes : (N,) int64 in 1..C
    rho : (N,) float in [0, 1]; NaN = no target (the box is skipped)

    Returns
    -------
    scalar tensor
    """
    if rho.shape != box_classes.shape:
        raise ValueError(f"filling_rate_loss: rho {tuple(rho.shape)} and box_classes {tuple(box_classes.shape)} differ")
    means, counts = box_attention_means(attention, box_map, box_classes)
    rho = rho.to(means.device, torch.float32)
    use = (counts > 0) & torch.isfinite(rho)
    if not bool(use.any()):
        return _zero(attention)
    return ((means[use] - rho[use]) ** 2).mean()


# --------------------------------------------------------------------------------------------------
# pixel pairs and embeddings
# --------------------------------------------------------------------------------------------------
def pair_offsets(radius: float) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx)`` of the pairs within ``radius``: ``0 < dy² + dx² < radius²``, one of each
    ``±`` pair (``dy > 0``, or ``dy = 0`` and ``dx > 0``), as in PSA's ``get_indices_of_pairs``
    (radius 5 → 34 offsets)."""
    r = int(math.ceil(radius))
    out = []
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if (dy > 0 or dx > 0) and 0 < dy * dy + dx * dx < radius * radius:
                out.append((dy, dx))
    if not out:
        raise ValueError(f"radius {radius} gives no pixel pair (needs radius > 1)")
    return out


def shift(x: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> torch.Tensor:
    """``out[..., y, x] = x[..., y + dy, x + dx]`` (``fill`` where that lies outside). Works on (..., H, W)."""
    H, W = x.shape[-2:]
    out = torch.full_like(x, fill)
    ys, yd = (slice(dy, H), slice(0, H - dy)) if dy >= 0 else (slice(0, H + dy), slice(-dy, H))
    xs, xd = (slice(dx, W), slice(0, W - dx)) if dx >= 0 else (slice(0, W + dx), slice(-dx, W))
    if H - abs(dy) > 0 and W - abs(dx) > 0:
        out[..., yd, xd] = x[..., ys, xs]
    return out


def _in_bounds(shape, dy: int, dx: int, device) -> torch.Tensor:
    H, W = shape
    m = torch.zeros(H, W, dtype=torch.bool, device=device)
    m[max(0, -dy):min(H, H - dy), max(0, -dx):min(W, W - dx)] = True
    return m


def pair_affinity(emb: torch.Tensor, offsets) -> tuple[torch.Tensor, torch.Tensor]:
    """Affinities ``a_ij = (1 + e_iᵀ e_j) / 2`` of every pixel with its neighbours.

    Parameters
    ----------
    emb : (B, E, H, W) float, unit vectors along E (``SegNet``'s ``emb``)
    offsets : list of (dy, dx) (:func:`pair_offsets`)

    Returns
    -------
    aff : (B, P, H, W) float in [0, 1]
        ``aff[:, p, y, x]`` is the affinity of ``(y, x)`` and ``(y + dy_p, x + dx_p)``.
    valid : (P, H, W) bool
        Where the second pixel lies inside the map.
    """
    if emb.ndim != 4:
        raise ValueError(f"emb must be (B, E, H, W), got shape {tuple(emb.shape)}")
    emb = emb.float()
    affs, valids = [], []
    for dy, dx in offsets:
        affs.append(((1.0 + (emb * shift(emb, dy, dx)).sum(1)) / 2).clamp(0.0, 1.0))
        valids.append(_in_bounds(emb.shape[-2:], dy, dx, emb.device))
    return torch.stack(affs, 1), torch.stack(valids, 0)


def embedding_label_loss(emb: torch.Tensor, labels: torch.Tensor, radius: float = 3.0) -> torch.Tensor:
    """Embedding pre-training loss (B4): pairs with the same (GrabCut) label similar, others dissimilar.

    ``L_pre = ¼ mean_{bg⁺}(−log a) + ¼ mean_{fg⁺}(−log a) + ½ mean_{−}(−log(1 − a))`` over the pairs
    within ``radius``: bg⁺ = both background, fg⁺ = both the same class, − = different labels;
    pairs touching 255 are skipped; each term is averaged over its own pairs (PSA ``train_aff.py``'s
    balancing) and a term without pairs counts 0.

    Parameters
    ----------
    emb : (B, E, h, w) unit vectors
    labels : (B, h, w) int64 (labels at the embedding's resolution; 255 = ignore)
    radius : float

    Returns
    -------
    scalar tensor
    """
    if labels.shape != (emb.shape[0], *emb.shape[2:]):
        raise ValueError(f"embedding_label_loss: labels {tuple(labels.shape)} must be (B, h, w) of emb {tuple(emb.shape)}")
    offs = pair_offsets(radius)
    aff, inb = pair_affinity(emb, offs)
    lab = labels.long()
    terms = {"bg": [], "fg": [], "neg": []}
    for p, (dy, dx) in enumerate(offs):
        lj = shift(lab, dy, dx, fill=IGNORE)
        ok = (lab != IGNORE) & (lj != IGNORE) & inb[p]
        same = lab == lj
        a = aff[:, p].clamp(_EPS, 1 - _EPS)
        terms["bg"].append(-torch.log(a)[ok & same & (lab == 0)])
        terms["fg"].append(-torch.log(a)[ok & same & (lab != 0)])
        terms["neg"].append(-torch.log(1 - a)[ok & ~same])
    out = _zero(emb)
    for name, w in (("bg", 0.25), ("fg", 0.25), ("neg", 0.5)):
        v = torch.cat(terms[name])
        if v.numel():
            out = out + w * v.mean()
    return out


def same_label_probability(prob: torch.Tensor, offsets) -> torch.Tensor:
    """(B5) ``P_ij = Σ_c p_c(i) p_c(j)`` for every offset: ``(B, P, h, w)`` (0 where j is outside)."""
    return torch.stack([(prob * shift(prob, dy, dx)).sum(1) for dy, dx in offsets], 1)


def embedding_agreement_loss(emb: torch.Tensor, seg_logits: torch.Tensor, radius: float = 3.0,
                             ignore: torch.Tensor | None = None, detach_segmentation: bool = False) -> torch.Tensor:
    """Embedding–segmentation agreement (B6): a cross-entropy between the affinities and ``P_ij``.

    ``L_agr = −mean_ij [P_ij log a_ij + (1 − P_ij) log(1 − a_ij)]`` with ``P_ij`` of (B5) from the
    softmax of ``seg_logits``. Its gradient pulls ``a_ij`` towards ``P_ij`` (the embeddings learn the
    segmentation's grouping) and — unless ``detach_segmentation`` — ``P_ij`` towards ``a_ij``
    (∂L/∂P = −logit(a): the segmentation is asked to give one label to pixels the embeddings group
    together, and different labels to pixels they separate).

    Parameters
    ----------
    emb : (B, E, h, w) unit vectors
    seg_logits : (B, C + 1, h, w) float (same grid as ``emb``)
    radius : float
    ignore : (B, h, w) bool, optional
        Pixels whose pairs are skipped (e.g. padding).
    detach_segmentation : bool

    Returns
    -------
    scalar tensor
    """
    if seg_logits.shape[0] != emb.shape[0] or seg_logits.shape[2:] != emb.shape[2:]:
        raise ValueError(f"embedding_agreement_loss: seg_logits {tuple(seg_logits.shape)} and emb {tuple(emb.shape)} "
                         "must share batch and grid")
    offs = pair_offsets(radius)
    aff, inb = pair_affinity(emb, offs)
    prob = torch.softmax(seg_logits.float(), dim=1)
    if detach_segmentation:
        prob = prob.detach()
    P = same_label_probability(prob, offs).clamp(0.0, 1.0)
    ok = inb[None].expand_as(aff)
    if ignore is not None:
        keep = ~ignore.bool()
        ok = ok & keep[:, None] & torch.stack([shift(keep, dy, dx, fill=False) for dy, dx in offs], 1)
    if not bool(ok.any()):
        return _zero(emb, seg_logits)
    a = aff.clamp(_EPS, 1 - _EPS)
    ce = -(P * torch.log(a) + (1 - P) * torch.log(1 - a))
    return ce[ok].mean()
