"""Tests of wsss_core.viz (overlays, grids, sweeps) and wsss_core.widgets (headless explorers)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from wsss_core import viz, widgets
from wsss_core.data.palette import VOC_PALETTE


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)


@pytest.fixture
def label():
    lab = np.zeros((10, 12), np.int64)
    lab[2:5, 3:7] = 1
    lab[6:9, 1:4] = 15
    lab[5, :] = 255
    return lab


# ---- overlay ---------------------------------------------------------------------------------------
def test_overlay_background_unchanged_and_class_blend(image, label):
    alpha = 0.55
    out = viz.overlay(image, label, alpha=alpha)
    assert out.shape == image.shape and out.dtype == np.uint8
    bg = label == 0
    np.testing.assert_array_equal(out[bg], image[bg])
    for c in (1, 15):
        m = label == c
        want = np.round((1 - alpha) * image[m].astype(np.float64) + alpha * VOC_PALETTE[c].astype(np.float64))
        np.testing.assert_array_equal(out[m], want.astype(np.uint8))
    # the two classes get different colours: the blend moved the pixels towards the palette
    assert not np.array_equal(out[label == 1], image[label == 1])


def test_overlay_ignore_is_palette_cream(image, label):
    out = viz.overlay(image, label, alpha=0.3)
    assert tuple(VOC_PALETTE[255]) == viz.IGNORE_COLOR == (224, 224, 192)
    assert (out[label == 255] == np.array(viz.IGNORE_COLOR, np.uint8)).all()
    # a translucent ignore band blends like a class
    half = viz.overlay(image, label, alpha=0.3, ignore_alpha=0.5)
    m = label == 255
    want = np.round(0.5 * image[m].astype(np.float64) + 0.5 * VOC_PALETTE[255].astype(np.float64))
    np.testing.assert_array_equal(half[m], want.astype(np.uint8))


def test_overlay_accepts_chw_tensor_and_alpha_limits(image, label):
    torch = pytest.importorskip("torch")
    chw = torch.from_numpy(image.transpose(2, 0, 1).copy())
    np.testing.assert_array_equal(viz.overlay(chw, torch.from_numpy(label)), viz.overlay(image, label))
    np.testing.assert_array_equal(viz.overlay(image, label, alpha=0.0, ignore_alpha=0.0), image)
    full = viz.overlay(image, label, alpha=1.0)
    np.testing.assert_array_equal(full[label == 15], np.broadcast_to(VOC_PALETTE[15], full[label == 15].shape))
    with pytest.raises(ValueError, match="shape"):
        viz.overlay(image, label[:-1])


# ---- heatmap ---------------------------------------------------------------------------------------
def test_heatmap_shape_dtype_and_blend(image):
    score = np.linspace(0, 1, 10 * 12, dtype=np.float32).reshape(10, 12)
    out = viz.heatmap(image, score, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    colour = matplotlib.colormaps["jet"](score)[..., :3] * 255
    want = np.round(0.5 * image + 0.5 * colour).astype(np.uint8)
    np.testing.assert_array_equal(out, want)
    # a coarse (stride-2) score map is resized to the image
    small = viz.heatmap(image, score[::2, ::2], alpha=0.5)
    assert small.shape == image.shape and small.dtype == np.uint8
    np.testing.assert_array_equal(viz.heatmap(image, score, alpha=0.0), image)


# ---- grids and plots ---------------------------------------------------------------------------------
def test_image_grid_axes_count_and_grey(image, label):
    grey = np.random.default_rng(1).random((10, 12)).astype(np.float32)
    fig = viz.image_grid([[image, grey, viz.overlay(image, label)], [image, None]],
                         col_titles=["a", "b", "c"], row_titles=["r0", "r1"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6
    ax0 = fig.axes[0]
    assert ax0.get_title() == "a" and ax0.get_ylabel() == "r0"
    assert list(ax0.get_xticks()) == [] and list(ax0.get_yticks()) == []
    # grey floats in [0, 1] are shown on the fixed range [0, 1]
    im = fig.axes[1].images[0]
    assert im.get_clim() == (0.0, 1.0)
    assert len(fig.axes[3].images) == 1  # second row: image, None (blank), missing (blank)
    assert len(fig.axes[4].images) == 0 and len(fig.axes[5].images) == 0
    fig.canvas.draw()  # renders without error on Agg


def test_plot_sweep_marks_argmax():
    sweep = {0.1: 0.30, 0.2: 0.45, 0.3: 0.52, 0.4: 0.49, 0.5: 0.40}
    ax = viz.plot_sweep(sweep, label="CAM")
    best = [ln for ln in ax.lines if ln.get_gid() == "best"]
    assert len(best) == 1
    assert best[0].get_xdata()[0] == pytest.approx(0.3)
    assert best[0].get_ydata()[0] == pytest.approx(0.52)
    # an explicit best is honoured, drawn into a given axes
    fig = Figure()
    ax2 = fig.add_subplot()
    assert viz.plot_sweep(sweep, best=0.2, ax=ax2) is ax2
    b2 = [ln for ln in ax2.lines if ln.get_gid() == "best"][0]
    assert b2.get_xdata()[0] == pytest.approx(0.2) and b2.get_ydata()[0] == pytest.approx(0.45)


def test_draw_boxes_legend_and_bar_table(image):
    ax = viz.new_axes()
    ax.imshow(image)
    viz.draw_boxes(ax, np.array([[1, 2, 5, 7], [0, 0, 12, 10]], np.float32), np.array([1, 15]),
                   class_names=[f"c{i}" for i in range(21)])
    rects = ax.patches
    assert len(rects) == 2
    assert rects[0].get_xy() == (0.5, 1.5) and rects[0].get_width() == 4 and rects[0].get_height() == 5
    assert np.allclose(rects[1].get_edgecolor()[:3], VOC_PALETTE[15] / 255)
    assert [t.get_text() for t in ax.texts] == ["c1", "c15"]
    leg = viz.class_legend(ax, ["bg", "a", "b"], ids=[1, 2], ignore=True)
    assert [t.get_text() for t in leg.get_texts()] == ["1 a", "2 b", "255 ignore"]
    ax3 = viz.bar_table({"x": 0.5, "y": 0.25}, title="t")
    assert len(ax3.patches) == 2 and ax3.get_title() == "t"
    with pytest.raises(ValueError):
        viz.draw_boxes(ax, np.zeros((2, 4)), np.array([1]))


# ---- widgets ---------------------------------------------------------------------------------------
def test_explore_static_renders_defaults_once():
    calls = []

    def render(index, layer, alpha, title):
        calls.append(dict(index=index, layer=layer, alpha=alpha, title=title))
        fig = Figure()
        fig.add_subplot().set_title(f"{index}-{layer}-{alpha}")
        return fig

    fig = widgets.explore(render, interactive=False, index=(0, 10, 1, 3), layer=["mask", "image"],
                          alpha=(0.0, 1.0, 0.1, 0.5), title="fixed")
    assert isinstance(fig, Figure)
    assert calls == [dict(index=3, layer="mask", alpha=0.5, title="fixed")]
    assert fig.axes[0].get_title() == "3-mask-0.5"


def test_explore_interactive_detection(monkeypatch):
    monkeypatch.setenv(widgets.STATIC_ENV, "1")
    assert widgets.is_interactive() is False
    assert widgets.is_interactive(True) is True
    monkeypatch.delenv(widgets.STATIC_ENV)
    assert widgets.is_interactive() is False  # plain Python: no kernel
    assert widgets.control_defaults(a=(0, 5, 1), b={"x": 2, "y": 3}, c=[("one", 1), ("two", 2)]) == \
        dict(a=0, b=2, c=1)
    with pytest.raises(ValueError, match="outside"):
        widgets.control_defaults(a=(0, 5, 1, 9))
    with pytest.raises(ValueError, match="tuple"):
        widgets.control_defaults(a=("x", "y"))


def test_outline_error_map_region_overlay():
    from wsss_core import viz

    img = np.zeros((6, 7, 3), np.uint8)
    m = np.zeros((6, 7), bool)
    m[1:5, 2:6] = True
    out = viz.outline(img, m, colour=(255, 0, 0))
    drawn = (out == (255, 0, 0)).all(-1)
    assert drawn[1, 2] and drawn[4, 5] and not drawn[2, 3] and not drawn[0, 0]   # the rim, not the inside
    assert (drawn <= m).all()
    mask = np.array([[0, 1, 255]], np.uint8)
    e = viz.error_map(np.full((1, 3, 3), 100, np.uint8), np.array([[True, False, True]]), mask)
    assert tuple(e[0, 0]) == (230, 40, 40) and tuple(e[0, 1]) == (40, 90, 255) and tuple(e[0, 2]) == (35, 35, 35)
    t = viz.region_overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0, 1]]), {1: (200, 100, 0)}, alpha=0.5)
    assert tuple(t[0, 0]) == (0, 0, 0) and tuple(t[0, 1]) == (100, 50, 0)
