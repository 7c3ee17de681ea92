"""EDAM (Wu et al., "Embedded Discriminative Attention Mechanism for Weakly Supervised Semantic
Segmentation", CVPR 2021), following the official code (allenwu97/EDAM,
``network/resnet38_EDAM_cls.py``, ``network/transformer.py``, ``network/embedding/``).

Equation numbers are those of notebook ``03_edam`` §3, which writes the method out (the paper's PDF
was not available to check its own numbering; its Sec. 3.1 is the DA layer, Sec. 3.2 the CMA).

The network has two parts:

1. **Discriminative activation (DA) layer** (paper Sec. 3.1; Eq. 1). A convolution maps the
   backbone features ``f(x)`` to ``C + 1`` maps, which are L2-normalised across channels at every
   pixel and made non-negative:

   .. math:: m(x) = \\left| \\frac{W * f(x)}{\\max(\\lVert W * f(x) \\rVert_2, \\epsilon)} \\right|
             \\in [0, 1]^{C+1}, \\qquad \\lVert m(x) \\rVert_2 = 1.

   Channels ``0 .. C-1`` are the class masks ``m_c``; channel ``C`` is an extra channel that is never
   read, it only takes a share of the unit norm (a "sink": a pixel can give its norm to it instead
   of to any class). Official: a 3×3 conv 4096 → 21 without bias, then ``F.normalize`` and
   ``torch.abs``. The masks are what EDAM uses at inference (``forward_cam``), in place of CAMs.

2. **Class-specific features and collaborative multi-attention (CMA)** (Sec. 3.2; Eqs. 2-7).
   A 1×1 conv reduces the features to ``d`` channels, ``z(x)``; class ``c``'s features are
   ``F_c(x) = z(x) · m_c(x)`` (Eq. 2). For a *group* of ``G`` images that share a class (the official
   code: ``G = 2``, a pair), the ``h·w`` positions of ``F_c`` of all ``G`` images become one sequence
   of ``G·h·w`` tokens, plus a sinusoidal positional encoding (the position inside its image) and a
   learned segment embedding (which image), and go through a **class-specific** one-layer
   transformer (pre-LN, multi-head self-attention + GELU feed-forward; 20 separate stacks for VOC).
   Self-attention over the joint sequence lets each token of one image attend to the tokens of the
   other image (Eqs. 3-5). Each image's tokens are then average-pooled and a class-specific linear
   map gives the logit ``s_{n,c}`` (Eq. 6), trained with binary cross-entropy against the image
   label (:func:`edam_loss`, Eq. 7).

Details taken from the official code (where the paper is silent or, as far as we could check,
says otherwise, the code wins): the DA layer is a 3×3 conv; the extra (C+1)-th channel is used only in the normalisation; the class list of a pair is
*all* classes (present ones first, then absent ones shuffled; :func:`wsss_core.stages.edam.pair_class_list`)
so absent classes get negative targets through their own transformer; the transformer block ends
with an extra dropout; the loss is BCE-with-logits averaged over the ``G × K`` logits of a group.

Differences from the official code, all deliberate: positions are encoded for any ``h × w ≤
max_positions`` (the official table is fixed at 46 × 46, which forces 368-px crops); the segment
embedding has ``G`` rows (official: 5 rows, 2 used); ``nn.LayerNorm`` (the official BERT-pytorch
LayerNorm divides by the unbiased std + 1e-6; same role); groups are batched (``P`` groups per
step; the official code runs one pair per GPU); the class-specific classifiers are stored as one
``(C, d)`` weight (equivalent to 20 bias-free 1×1 convs ``d → 1``).

Shapes: ``P`` groups (pairs) per batch, ``G`` images per group, ``K`` classes per group, ``C``
foreground classes, ``d`` token width, ``h × w`` feature grid, ``N = P·G`` images.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "da_normalize",
    "da_normalize_without_sink",
    "DALayer",
    "class_specific_features",
    "SinusoidalPositionalEncoding",
    "attention_weights",
    "cross_image_share",
    "mean_cross_image_share",
    "MultiHeadSelfAttention",
    "TransformerBlock",
    "CollaborativeMultiAttention",
    "EDAMNet",
    "edam_loss",
    "group_targets",
]


# --------------------------------------------------------------------------------------------------
# DA layer
# --------------------------------------------------------------------------------------------------
def da_normalize(logits: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The DA layer's normalisation (Eq. 1; official ``F.normalize(mask)`` then ``torch.abs``).

    Parameters
    ----------
    logits : (B, C + 1, h, w) float
        The DA convolution's output.
    eps : float
        Lower bound of the norm (``F.normalize``'s default), so an all-zero pixel stays zero.

    Returns
    -------
    (B, C + 1, h, w) float
        ``|v| / max(‖v‖₂, eps)`` per pixel: non-negative, unit L2 norm across channels.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected (B, C+1, h, w) maps, got shape {tuple(logits.shape)}")
    return F.normalize(logits, p=2.0, dim=1, eps=eps).abs()


def da_normalize_without_sink(logits: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 1 without the sink: the DA normalisation over the ``C`` class channels only (the ablation of
    notebook ``03_edam`` §9; EDAM itself normalises over ``C + 1``).

    Parameters
    ----------
    logits : (B, C + 1, h, w) float
        The DA convolution's output; its last channel (the sink) is dropped.
    eps : float
        Lower bound of the norm, as in :func:`da_normalize`.

    Returns
    -------
    (B, C, h, w) float
        ``|v_c| / max(‖(v_1 … v_C)‖₂, eps)``: every pixel with any class activation has unit norm over
        the classes, so its largest class mask is at least ``1/√C`` — a pixel can no longer give its
        norm away.
    """
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"expected (B, C+1, h, w) maps with C >= 1, got shape {tuple(logits.shape)}")
    return da_normalize(logits[:, :-1], eps)


class DALayer(nn.Module):
    """Discriminative activation layer: conv ``in_channels → num_classes + 1`` (no bias, Xavier
    init), then :func:`da_normalize`.

    ``x``: (B, in_channels, h, w) → masks (B, num_classes + 1, h, w) in [0, 1], unit L2 norm per
    pixel; channel ``num_classes`` is the sink.
    """

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same-size output), got {kernel_size}")
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_channels, num_classes + 1, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return da_normalize(self.conv(x))


def class_specific_features(z: torch.Tensor, masks: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
    """``F_c = z ⊙ m_c`` for the listed classes (Eq. 2; official loop over ``label_idx``).

    Parameters
    ----------
    z : (N, d, h, w)
        Reduced features (official ``d_d``: 1×1 conv 4096 → 128).
    masks : (N, C + 1, h, w)
        DA masks.
    class_idx : (N, K) or (K,) int64
        Class channels to take per image (0-based, ``< C``).

    Returns
    -------
    (N, K, d, h, w)
    """
    if z.ndim != 4 or masks.ndim != 4 or z.shape[0] != masks.shape[0] or z.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"z {tuple(z.shape)} and masks {tuple(masks.shape)} must be (N, d, h, w) and (N, C+1, h, w)")
    N = z.shape[0]
    idx = class_idx.to(masks.device, torch.long)
    if idx.ndim == 1:
        idx = idx.unsqueeze(0).expand(N, -1)
    if idx.shape[0] != N:
        raise ValueError(f"class_idx has {idx.shape[0]} rows for {N} images")
    if idx.numel() and (idx.min() < 0 or idx.max() >= masks.shape[1] - 1):
        raise ValueError(f"class indices must lie in 0..{masks.shape[1] - 2} (the sink channel is not a class)")
    m = masks.gather(1, idx[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))  # (N, K, h, w)
    return z.unsqueeze(1) * m.unsqueeze(2)


# --------------------------------------------------------------------------------------------------
# transformer parts
# --------------------------------------------------------------------------------------------------
class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sine/cosine table of Vaswani et al. (official ``PositionalEmbedding``):
    ``PE[p, 2i] = sin(p / 10000^{2i/d})``, ``PE[p, 2i+1] = cos(p / 10000^{2i/d})``.

    ``forward(n)`` → (n, d): the encodings of positions ``0 .. n-1`` (raster order of one image's
    ``h × w`` grid, as in the official code).
    """

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even for sine/cosine pairs, got {d_model}")
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.max_len = max_len

    def forward(self, n: int) -> torch.Tensor:
        if n > self.max_len:
            raise ValueError(f"{n} positions per image but the table holds {self.max_len}: raise max_positions "
                             "(the feature grid h·w of the training crops must fit)")
        return self.pe[:n]


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention weights ``softmax(q kᵀ / √d_k)`` (Eq. 4), row-wise.

    ``q``, ``k``: (..., L, d_k) → (..., L, L); every row sums to 1.
    """
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)


def cross_image_share(weights: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """For every query token, the share of its attention that goes to the *other* images' tokens.

    ``weights``: (..., G·T, G·T) attention weights over a group's joint sequence (image ``g`` owns
    tokens ``g·T .. (g+1)·T − 1``); returns (..., G·T). 0 means a token attends only to its own image;
    with uniform attention it is ``(G − 1) / G``.
    """
    L = weights.shape[-1]
    if L % tokens_per_image:
        raise ValueError(f"{L} tokens is not a multiple of {tokens_per_image} tokens per image")
    img = torch.arange(L, device=weights.device) // tokens_per_image
    other = (img[:, None] != img[None, :]).to(weights.dtype)
    return (weights * other).sum(-1)


def mean_cross_image_share(q: torch.Tensor, k: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Mean share of the attention (Eq. 4) that a group's tokens give to the *other* images' tokens,
    for every head separately (notebook ``03_edam`` §9).

    ``q``, ``k``: (..., G·T, d_k), e.g. (heads, G·T, d_k) — image ``g`` owns tokens ``g·T .. (g+1)·T − 1``
    (``T = tokens_per_image``) → (...,): :func:`cross_image_share` of :func:`attention_weights`,
    averaged over the ``G·T`` query tokens. 0: each image attends only to itself; uniform attention
    gives ``(G − 1) / G``.
    """
    return cross_image_share(attention_weights(q, k), tokens_per_image).mean(-1)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention (official ``MultiHeadedAttention``: q, k, v and output linear
    layers with bias; softmax(q kᵀ / √d_k) v per head; dropout on the attention weights).

    ``forward(x (B, L, d), need_weights=False)`` → ``(out (B, L, d), weights (B, heads, L, L) or None)``.
    Without weights it uses :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels);
    with them the same computation is written out.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.1):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads, self.d_k = heads, d_model // heads
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        B, L, d = x.shape
        q, k, v = (lin(x).view(B, L, self.heads, self.d_k).transpose(1, 2) for lin in (self.q, self.k, self.v))
        p = self.dropout if self.training else 0.0
        if need_weights:
            w = attention_weights(q, k)
            y = F.dropout(w, p, self.training) @ v
        else:
            w = None
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, L, d)), w


class TransformerBlock(nn.Module):
    """One pre-LN transformer block (official ``TransformerBlock`` with ``SublayerConnection``):

    ``x ← x + Dropout(MHSA(LN(x)))``; ``x ← x + Dropout(FFN(LN(x)))``; ``x ← Dropout(x)``, with
    ``FFN(u) = W₂ Dropout(GELU(W₁ u))``. ``attn_dropout`` (default: ``dropout``; official 0.1) is the
    dropout on the attention weights; on a CPU it costs about as much as the rest of the block
    (PyTorch's fused attention kernel has no dropout), so the tutorial profile turns it off.
    """

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float = 0.1, attn_dropout: float | None = None):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model, eps=1e-6), nn.LayerNorm(d_model, eps=1e-6)
        self.attn = MultiHeadSelfAttention(d_model, heads, dropout if attn_dropout is None else attn_dropout)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d_model))
        self.drop1, self.drop2, self.drop_out = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        a, w = self.attn(self.norm1(x), need_weights=need_weights)
        x = x + self.drop1(a)
        x = x + self.drop2(self.ffn(self.norm2(x)))
        return self.drop_out(x), w


class CollaborativeMultiAttention(nn.Module):
    """Class-specific transformers over the tokens of a group of images (EDAM Sec. 3.2; Eqs. 3-5).

    Parameters
    ----------
    num_classes : C — one transformer stack per class.
    d_model, heads, ffn, layers, dropout : transformer sizes (official: 128, 2, 512, 1, 0.1).
    attn_dropout : dropout on the attention weights (default ``dropout``; see :class:`TransformerBlock`).
    group_size : G, images per group (official: 2); the segment embedding has G rows.
    max_positions : size of the positional table (≥ h·w of the training feature grid).

    ``forward(feats (P, G, K, d, h, w), class_idx (P, K))`` → ``(P, G, K, d, h, w)``: class
    ``class_idx[p, k]``'s transformer applied to the ``G·h·w`` tokens of slot ``k`` of group ``p``
    (features + positional encoding + segment embedding, then dropout). With
    ``return_attention=True`` also a dict ``{class: (n, heads, G·h·w, G·h·w)}`` of the last layer's
    attention weights for the ``n`` (group, slot) entries of that class, in row-major order of
    ``class_idx == class``.
    """

    def __init__(self, num_classes: int, d_model: int = 128, heads: int = 2, ffn: int = 512, layers: int = 1,
                 dropout: float = 0.1, group_size: int = 2, max_positions: int = 4096, attn_dropout: float | None = None):
        super().__init__()
        self.num_classes, self.d_model, self.group_size = num_classes, d_model, group_size
        self.position = SinusoidalPositionalEncoding(d_model, max_positions)
        self.segment = nn.Embedding(group_size, d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.stacks = nn.ModuleList([
            nn.ModuleList([TransformerBlock(d_model, heads, ffn, dropout, attn_dropout) for _ in range(layers)])
            for _ in range(num_classes)])
        # official init: Xavier on every transformer / embedding parameter with dim > 1
        for p in list(self.stacks.parameters()) + list(self.segment.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """(P, G, K, d, h, w) → tokens (P, K, G·h·w, d) with positional + segment embeddings."""
        P, G, K, d, h, w = feats.shape
        if G != self.group_size:
            raise ValueError(f"groups of {G} images, but the module was built for group_size={self.group_size}")
        if d != self.d_model:
            raise ValueError(f"features have {d} channels, the transformer expects d_model={self.d_model}")
        tok = feats.permute(0, 2, 1, 4, 5, 3).reshape(P, K, G, h * w, d)
        tok = tok + self.position(h * w).to(tok.dtype)[None, None, None]
        tok = tok + self.segment.weight.to(tok.dtype)[None, None, :, None, :]
        return self.embed_dropout(tok.reshape(P, K, G * h * w, d))

    def forward(self, feats: torch.Tensor, class_idx: torch.Tensor, return_attention: bool = False):
        if feats.ndim != 6:
            raise ValueError(f"expected features (P, G, K, d, h, w), got shape {tuple(feats.shape)}")
        P, G, K, d, h, w = feats.shape
        class_idx = class_idx.to(feats.device, torch.long)
        if class_idx.shape != (P, K):
            raise ValueError(f"class_idx must be (P, K) = {(P, K)}, got {tuple(class_idx.shape)}")
        tokens = self.embed(feats)                                    # (P, K, L, d)
        out = torch.empty_like(tokens)
        attention = {}
        for c in torch.unique(class_idx).tolist():
            if not 0 <= c < self.num_classes:
                raise ValueError(f"class index {c} outside 0..{self.num_classes - 1}")
            sel = class_idx == c                                       # (P, K) bool
            x = tokens[sel]                                            # (n, L, d)
            w_last = None
            for block in self.stacks[c]:
                x, w_last = block(x, need_weights=return_attention)
            out[sel] = x
            if return_attention:
                attention[c] = w_last
        out = out.reshape(P, K, G, h, w, d).permute(0, 2, 1, 5, 3, 4)  # (P, G, K, d, h, w)
        return (out, attention) if return_attention else out


# --------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------
class EDAMNet(nn.Module):
    """EDAM classifier: backbone → DA masks and reduced features → class-specific features →
    (optional) collaborative multi-attention → GAP → class-specific logits.

    Parameters
    ----------
    backbone : module returning a dict of features with ``"out"`` and having ``out_channels``
        (:mod:`wsss_core.models.backbones`).
    num_classes : C (20 for VOC).
    d_model, heads, ffn, layers, dropout, attn_dropout : CMA transformer sizes and dropouts.
    da_kernel : DA conv kernel size (official 3).
    group_size : images per group (official 2).
    use_cma : False drops the transformer (the ablation "EDAM without CMA": logits from GAP of
        ``F_c`` directly, per image).
    max_positions : positional table size (≥ h·w of the training crops' feature grid).

    Methods
    -------
    ``forward(images, class_idx)``: images (P, G, 3, H, W) normalised, class_idx (P, K) int64 →
    logits (P, G, K).
    ``masks(x)``: (B, 3, H, W) → DA masks (B, C + 1, h, w) (official ``forward_cam``).
    ``cam(x)``: the class channels of ``masks(x)``, (B, C, h, w) — the hook used by
    :func:`wsss_core.cams.multiscale_cams`, so EDAM masks go through the same inference as CAMs.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, d_model: int = 128, heads: int = 2, ffn: int = 512,
                 layers: int = 1, dropout: float = 0.1, da_kernel: int = 3, group_size: int = 2, use_cma: bool = True,
                 max_positions: int = 4096, attn_dropout: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.d_model, self.group_size, self.use_cma = num_classes, d_model, group_size, use_cma
        cin = backbone.out_channels
        self.da = DALayer(cin, num_classes, da_kernel)
        self.reduce = nn.Conv2d(cin, d_model, 1, bias=False)          # official d_d
        nn.init.xavier_uniform_(self.reduce.weight)
        self.cma = (CollaborativeMultiAttention(num_classes, d_model, heads, ffn, layers, dropout, group_size,
                                                max_positions, attn_dropout) if use_cma else None)
        # class-specific classifiers (official fc_list: 20 bias-free 1×1 convs d → 1, Xavier)
        self.classifier = nn.Parameter(torch.empty(num_classes, d_model))
        bound = math.sqrt(6.0 / (d_model + 1))
        nn.init.uniform_(self.classifier, -bound, bound)

    # ------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)["out"]

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """DA masks (B, C + 1, h, w) of images (B, 3, H, W) (official ``forward_cam``)."""
        return self.da(self.features(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class masks without the sink channel, (B, C, h, w) in [0, 1]."""
        return self.masks(x)[:, : self.num_classes]

    def class_features(self, images: torch.Tensor, class_idx: torch.Tensor):
        """``(F (P, G, K, d, h, w), masks (P·G, C + 1, h, w))`` for a batch of groups."""
        if images.ndim != 5:
            raise ValueError(f"expected images (P, G, 3, H, W), got shape {tuple(images.shape)}")
        P, G = images.shape[:2]
        if G != self.group_size:
            raise ValueError(f"groups of {G} images, the model was built for group_size={self.group_size}")
        class_idx = class_idx.to(images.device, torch.long)
        if class_idx.ndim != 2 or class_idx.shape[0] != P:
            raise ValueError(f"class_idx must be (P, K) with P = {P}, got {tuple(class_idx.shape)}")
        f = self.features(images.flatten(0, 1))                         # (N, cin, h, w)
        m = self.da(f)
        z = self.reduce(f)
        feats = class_specific_features(z, m, class_idx.repeat_interleave(G, dim=0))   # (N, K, d, h, w)
        return feats.view(P, G, *feats.shape[1:]), m

    def forward(self, images: torch.Tensor, class_idx: torch.Tensor, return_attention: bool = False):
        feats, _ = self.class_features(images, class_idx)
        attention = None
        if self.cma is not None:
            if return_attention:
                feats, attention = self.cma(feats, class_idx, return_attention=True)
            else:
                feats = self.cma(feats, class_idx)
        pooled = feats.mean(dim=(-2, -1))                                # (P, G, K, d): GAP per image
        w = self.classifier[class_idx.to(pooled.device, torch.long)]     # (P, K, d)
        logits = (pooled * w[:, None].to(pooled.dtype)).sum(-1)          # (P, G, K)
        return (logits, attention) if return_attention else logits

    # ------------------------------------------------------------------------------------------
    def param_groups(self, lr_mult_new: float = 10.0) -> list[dict]:
        """Official groups (``get_parameter_groups``): backbone 1×; the new layers (DA conv, the
        reduction conv, the class classifiers) ``lr_mult_new``× (official 10×); transformer and
        embeddings 1×. (The official 2× / 20× groups are conv *biases*; our convs have none.)"""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for p in list(self.da.parameters()) + list(self.reduce.parameters()) + [self.classifier]
               if p.requires_grad]
        groups = [dict(params=back, lr_mult=1.0), dict(params=new, lr_mult=lr_mult_new)]
        if self.cma is not None:
            groups.append(dict(params=[p for p in self.cma.parameters() if p.requires_grad], lr_mult=1.0))
        return groups


def group_targets(labels: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
    """Targets of the ``(P, G, K)`` logits: ``labels[p, g, class_idx[p, k]]``.

    ``labels``: (P, G, C) multi-hot; ``class_idx``: (P, K) → (P, G, K) float.
    """
    P, G, _ = labels.shape
    idx = class_idx.to(labels.device, torch.long)[:, None, :].expand(P, G, -1)
    return labels.gather(2, idx).float()


def edam_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits (Eq. 7), averaged over all ``P × G × K`` logits (official
    ``torch.nn.BCEWithLogitsLoss`` on the flattened ``2 × 20`` logits of a pair):

    ``L = −1/(PGK) Σ [t log σ(s) + (1 − t) log(1 − σ(s))]``.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
