"""Plotting helpers shared by every notebook: overlays, heat maps, image grids, boxes, legends, sweeps.

Arrays in, arrays or matplotlib objects out; nothing here calls ``plt.show()``.

* :func:`overlay`, :func:`heatmap` return ``(H, W, 3) uint8`` images (blend a label map in the VOC
  palette / a score map in a colour map over a photo).
* :func:`image_grid` returns a :class:`matplotlib.figure.Figure`.
* :func:`draw_boxes`, :func:`class_legend`, :func:`plot_sweep`, :func:`bar_table` draw into an
  ``Axes`` (a new one on a new figure when ``ax`` is None) and return that ``Axes``
  (``ax.figure`` is its figure).

Figures are made with :class:`matplotlib.figure.Figure`, not with ``pyplot``: they never pile up in
pyplot's list of open figures, and in Jupyter a figure is shown once — when it is a cell's last
value or passed to ``display(fig)`` — rather than again by the inline backend at the end of the
cell. ``fig.savefig(path)`` works as usual.

Label conventions (see :mod:`wsss_core`): ``0`` = background, ``1..C`` = classes, ``255`` = ignore,
all drawn with the PASCAL VOC palette (:data:`wsss_core.data.palette.VOC_PALETTE`; 255 is its
cream colour ``(224, 224, 192)``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .data.palette import VOC_PALETTE, colorize

__all__ = [
    "IGNORE_COLOR",
    "as_image",
    "overlay",
    "heatmap",
    "image_grid",
    "draw_boxes",
    "class_legend",
    "plot_sweep",
    "bar_table",
    "new_axes",
    "palette_color",
]

IGNORE = 255
IGNORE_COLOR = tuple(int(v) for v in VOC_PALETTE[IGNORE])
"""The VOC palette's colour of label 255 ("ignore"/"void"): cream ``(224, 224, 192)``."""


# --------------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------------
def _np(x) -> np.ndarray:
    """numpy view of an array-like or a (CPU / GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_image(image) -> np.ndarray:
    """Any image-like → ``(H, W, 3) uint8`` RGB.

    Accepts ``(H, W, 3)`` or ``(3, H, W)`` (a torch tensor as the datasets return it), ``(H, W)``
    grey, uint8 in 0..255 or float in [0, 1].
    """
    a = _np(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3), (3, H, W) or (H, W) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0 + 1e-6:
        a = a * 255.0
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def palette_color(class_id: int) -> tuple[float, float, float]:
    """The VOC palette colour of ``class_id`` as an RGB tuple in [0, 1] (for matplotlib)."""
    return tuple(float(v) / 255.0 for v in VOC_PALETTE[int(class_id) % 256])


def overlay(image, label, alpha: float = 0.55, ignore_alpha: float = 1.0) -> np.ndarray:
    """Blend a label map, coloured with the VOC palette, over an image.

    For a pixel with label ``c``: ``out = round((1 - a) * image + a * palette[c])`` with
    ``a = alpha`` for classes ``1..254``, ``a = ignore_alpha`` for ``255`` (by default the ignore
    band is drawn opaque in the palette's cream colour), and ``a = 0`` for background ``0`` (the
    pixel is left exactly as the image).

    Parameters
    ----------
    image : (H, W, 3) uint8 (or anything :func:`as_image` accepts)
    label : (H, W) int; 0 = background, 1..C classes, 255 = ignore
    alpha : float in [0, 1]
    ignore_alpha : float in [0, 1]

    Returns
    -------
    (H, W, 3) uint8
    """
    img = as_image(image)
    lab = _np(label)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"label shape {lab.shape} differs from image shape {img.shape[:2]}")
    lab = np.clip(lab.astype(np.int64), 0, 255)
    a = np.where(lab == 0, 0.0, np.where(lab == IGNORE, float(ignore_alpha), float(alpha)))[..., None]
    out = (1.0 - a) * img.astype(np.float64) + a * colorize(lab).astype(np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def heatmap(image, score, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """A CAM-style overlay: ``score`` through a colour map, blended over the image.

    ``out = round((1 - alpha) * image + alpha * 255 * cmap(score)[..., :3])``.

    Parameters
    ----------
    image : (H, W, 3) uint8 (or anything :func:`as_image` accepts)
    score : (h, w) float in [0, 1] (clipped); bilinearly resized to (H, W) if its size differs
        (e.g. a stride-8 CAM)
    alpha : float in [0, 1]
    cmap : str, a matplotlib colour-map name

    Returns
    -------
    (H, W, 3) uint8
    """
    import matplotlib

    img = as_image(image)
    s = _np(score).astype(np.float32)
    if s.ndim != 2:
        raise ValueError(f"score must be (H, W), got shape {s.shape}")
    if s.shape != img.shape[:2]:
        import cv2

        s = cv2.resize(s, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    s = np.clip(np.nan_to_num(s), 0.0, 1.0)
    colour = matplotlib.colormaps[cmap](s)[..., :3] * 255.0
    out = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------
def _bare(ax) -> None:
    """No ticks, no frame (but keep the y label usable for row titles)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def new_axes(figsize=(4.0, 3.0), ax=None):
    """``ax`` itself, or a new ``Axes`` on a new (non-pyplot) :class:`Figure` of ``figsize``."""
    if ax is not None:
        return ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], col_titles: Sequence[str] | None = None,
               row_titles: Sequence[str] | None = None, size: float = 1.6, cmap: str = "gray",
               titles: Sequence[Sequence[str]] | None = None, fontsize: float = 8) -> Figure:
    """A compact grid of images without ticks.

    Parameters
    ----------
    rows : list of rows, each a list of arrays
        ``(H, W, 3)`` (uint8, or float in [0, 1]) shown as RGB; ``(H, W)`` shown with ``cmap``
        (a float map with values in [0, 1] on the fixed range [0, 1]; anything else on its own
        range). ``None`` leaves a cell blank. Rows may be shorter than the longest row.
    col_titles : list of str, optional
        Written above the first row.
    row_titles : list of str, optional
        Written at the left of each row.
    size : float
        Inches per cell.
    cmap : str
        Colour map for grey arrays.
    titles : list of lists of str, optional
        A title per cell (same nesting as ``rows``), e.g. an image id or a number; in the first row
        it goes under the column title.

    Returns
    -------
    Figure
        With ``len(rows) * max(len(r) for r in rows)`` axes (row-major).
    """
    nrows = len(rows)
    ncols = max((len(r) for r in rows), default=0)
    if nrows == 0 or ncols == 0:
        raise ValueError("image_grid needs at least one image")
    fig = Figure(figsize=(ncols * size, nrows * size + 0.25 * bool(col_titles)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r, c]
            _bare(ax)
            arr = rows[r][c] if c < len(rows[r]) else None
            if arr is not None:
                a = _np(arr)
                if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
                    a = np.moveaxis(a, 0, -1)
                if a.ndim == 3 and a.shape[-1] == 1:
                    a = a[..., 0]
                if a.ndim == 2:
                    kw = {}
                    if np.issubdtype(a.dtype, np.floating) and a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
                        kw = dict(vmin=0.0, vmax=1.0)
                    ax.imshow(a, cmap=cmap, interpolation="nearest", **kw)
                else:
                    ax.imshow(as_image(a), interpolation="nearest")
            head = [col_titles[c]] if r == 0 and col_titles is not None and c < len(col_titles) else []
            if titles is not None and r < len(titles) and c < len(titles[r]) and titles[r][c]:
                head.append(str(titles[r][c]))
            if head:
                ax.set_title("\n".join(head), fontsize=fontsize)
            if c == 0 and row_titles is not None and r < len(row_titles):
                ax.set_ylabel(row_titles[r], fontsize=fontsize)
    return fig


def draw_boxes(ax, boxes, labels, class_names: Sequence[str] | None = None, linewidth: float = 1.5,
               show_names: bool = True, fontsize: float = 7):
    """Draw boxes in each class's VOC palette colour, with the class name at the top-left corner.

    Parameters
    ----------
    ax : matplotlib Axes showing the image (pixel centres at integer coordinates, as ``imshow``)
    boxes : (K, 4) float XYXY, 0-based, x2/y2 exclusive (the datasets' convention); the rectangle
        is drawn on the pixel edges, so it encloses exactly the pixels ``x1..x2-1`` × ``y1..y2-1``
    labels : (K,) int class indices (1..C)
    class_names : list of str, optional (index 0 = background); without it the index is written
    linewidth : float
    show_names : bool
        Write the class name above the box's top-left corner (inside the box when the box touches
        the top of the image).

    Returns
    -------
    Axes
    """
    b = _np(boxes).reshape(-1, 4).astype(float)
    lab = _np(labels).reshape(-1).astype(int)
    if len(b) != len(lab):
        raise ValueError(f"{len(b)} boxes but {len(lab)} labels")
    y_lo, y_hi = sorted(ax.get_ylim())
    near_top = y_lo + 0.08 * (y_hi - y_lo)  # a name above a box this close to the top would be cut off
    for (x1, y1, x2, y2), c in zip(b, lab):
        col = palette_color(c)
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=col,
                               linewidth=linewidth))
        if show_names:
            name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            inside = y1 - 0.5 < near_top
            ax.text(x1 - 0.5, y1 - 0.5, name, color="white", fontsize=fontsize, va="top" if inside else "bottom",
                    ha="left", bbox=dict(facecolor=col, edgecolor="none", pad=0.8, alpha=0.9), clip_on=True)
    return ax


def class_legend(ax_or_fig, class_names: Sequence[str], ids: Sequence[int] | None = None,
                 ignore: bool = False, **legend_kw):
    """A legend of palette patches, one per class.

    Parameters
    ----------
    ax_or_fig : Axes or Figure
    class_names : list of str (index 0 = background)
    ids : class indices to list (default: all of ``class_names``)
    ignore : also list 255 ("ignore") in its cream colour
    **legend_kw : passed to ``legend`` (default ``fontsize=7``, ``loc="upper right"`` on an
        Axes / ``"outside right upper"`` on a Figure)

    Returns
    -------
    matplotlib.legend.Legend
    """
    ids = list(range(len(class_names))) if ids is None else [int(i) for i in ids]
    handles = [Patch(facecolor=palette_color(i), edgecolor="0.3", label=f"{i} {class_names[i]}") for i in ids]
    if ignore:
        handles.append(Patch(facecolor=palette_color(IGNORE), edgecolor="0.3", label="255 ignore"))
    kw = dict(fontsize=7)
    if isinstance(ax_or_fig, Figure):
        kw["loc"] = "outside right upper" if ax_or_fig.get_layout_engine() is not None else "upper right"
    else:
        kw["loc"] = "upper right"
    kw.update(legend_kw)
    return ax_or_fig.legend(handles=handles, **kw)


def plot_sweep(sweep: Mapping[float, float], best: float | None = None, ax=None, label: str | None = None,
               xlabel: str = "background threshold", ylabel: str = "mIoU", color=None):
    """A threshold sweep (e.g. mIoU of CAM pseudo-labels vs the background threshold), the best marked.

    Parameters
    ----------
    sweep : {threshold: value}
    best : the threshold to mark; default the arg-max of ``sweep``
    ax : Axes, optional (a new figure otherwise)
    label : legend label of the curve

    Returns
    -------
    Axes
        The best point is a star marker (``gid="best"``) annotated with its value.
    """
    if not sweep:
        raise ValueError("empty sweep")
    ax = new_axes(ax=ax)
    xs = sorted(float(k) for k in sweep)
    vals = {float(k): float(v) for k, v in sweep.items()}
    ys = [vals[x] for x in xs]
    if best is None:
        best = max(xs, key=lambda x: (vals[x] if np.isfinite(vals[x]) else -np.inf))
    best = float(best)
    (line,) = ax.plot(xs, ys, "-o", ms=3, label=label, color=color)
    by = vals.get(best, float(np.interp(best, xs, ys)))
    ax.plot([best], [by], marker="*", ms=12, color=line.get_color(), markeredgecolor="k", linestyle="none",
            gid="best")
    ax.annotate(f"{by:.3f} @ {best:g}", (best, by), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if label:
        ax.legend(fontsize=8)
    return ax


def bar_table(values: Mapping[str, float], ax=None, title: str | None = None, fmt: str = "{:.3f}",
              color=None, xlim: tuple[float, float] | None = None):
    """Horizontal bars, one per entry, each with its value written at its end.

    Parameters
    ----------
    values : {name: number}, drawn top to bottom in the given order
    ax : Axes, optional
    title : str, optional
    fmt : format of the written values

    Returns
    -------
    Axes
    """
    names = list(values)
    ax = new_axes(figsize=(4.5, 0.35 * len(names) + 0.8), ax=ax)
    vals = [float(values[n]) for n in names]
    ys = np.arange(len(names))
    ax.barh(ys, vals, color=color if color is not None else "tab:blue", alpha=0.85)
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    hi = max([abs(v) for v in vals if np.isfinite(v)], default=1.0) or 1.0
    for y, v in zip(ys, vals):
        ax.text(v + 0.01 * hi if np.isfinite(v) else 0, y, fmt.format(v), va="center", fontsize=8)
    if xlim is not None:
        ax.set_xlim(*xlim)
    else:
        ax.set_xlim(min(0.0, min(vals, default=0.0)), hi * 1.2)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return ax


# --------------------------------------------------------------------------------------------------
# image helpers of notebooks 00 and 01 (outlines, error maps, region tints)
# --------------------------------------------------------------------------------------------------
def outline(image, mask, colour=(255, 255, 255)) -> np.ndarray:
    """A copy of ``image`` with the 1-px inner outline of the ``(H, W)`` bool ``mask`` drawn in ``colour``
    (the mask's pixels with one of their 8 neighbours outside it; outside the image counts as outside).

    Returns
    -------
    (H, W, 3) uint8
    """
    out = as_image(image).copy()
    m = _np(mask).astype(bool)
    p = np.pad(m, 1, constant_values=False)
    H, W = m.shape
    inner = np.ones_like(m)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= p[dy:dy + H, dx:dx + W]
    out[m & ~inner] = colour
    return out


def error_map(image, pred, mask, dim: float = 0.35) -> np.ndarray:
    """A binary foreground prediction against the foreground of a label map, as colours:
    red = predicted but background (over-estimation), blue = object but not predicted
    (under-estimation), grey = right; everything else (and label 255) the image dimmed by ``dim``.

    Parameters
    ----------
    image : (H, W, 3) uint8
    pred : (H, W) bool, the predicted foreground
    mask : (H, W) int label map (0 background, 1..C objects, 255 ignored)
    """
    out = (dim * as_image(image)).astype(np.uint8)
    mask = _np(mask)
    valid = mask != IGNORE
    fg, pred = (mask > 0) & valid, _np(pred).astype(bool) & valid
    out[pred & ~fg] = (230, 40, 40)
    out[~pred & fg] = (40, 90, 255)
    out[pred & fg] = (200, 200, 200)
    return out


def region_overlay(image, regions, colours: Mapping[int, Sequence[int]], alpha: float = 0.6) -> np.ndarray:
    """Tint the pixels of each region id ``k`` of the ``(H, W)`` int map ``regions`` with ``colours[k]``
    (RGB 0..255) at opacity ``alpha``; ids without a colour (0 included) are left as they are. For maps
    whose ids are not classes, e.g. the toy scenes' context regions (water, rails)."""
    out = as_image(image).astype(np.float32)
    regions = _np(regions)
    for k, rgb in colours.items():
        sel = regions == k
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(rgb, np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
