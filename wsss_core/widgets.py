"""Explorers for the notebooks that also work headless (papermill, nbconvert, plain Python).

    fig = widgets.explore(render, index=(0, 63, 1, 0), layer=["image", "mask"], alpha=(0.0, 1.0, 0.05, 0.5))

``render(**values)`` draws one matplotlib ``Figure`` for one setting of the controls. :func:`explore`

1. always renders the figure for the *default* values and displays it as an ordinary cell output,
   so an executed notebook (papermill, nbconvert, a static viewer such as GitHub) keeps a picture;
2. then, only in a live Jupyter kernel with ``ipywidgets`` installed, shows the controls (sliders,
   dropdowns); moving one re-renders into an ``ipywidgets.Output`` under the controls (and the
   static picture above is blanked so that exactly one figure is visible).

Whether step 2 happens is decided by :func:`is_interactive`: the ``interactive`` argument when it is
True / False; otherwise the environment variable ``WSSS_STATIC_WIDGETS=1`` forces the static
picture only (set it for batch runs, e.g. in the notebook runner or in CI); otherwise the controls
are shown when ``ipywidgets`` imports and the code runs inside an IPython *kernel*. A kernel driven
by papermill has no frontend to draw the controls: they are then inert outputs, and nothing waits
for them, so a run can neither hang nor fail because of them.
"""
from __future__ import annotations

import numbers
import os
import warnings
from typing import Any, Callable

__all__ = ["explore", "is_interactive", "control_defaults", "STATIC_ENV"]

STATIC_ENV = "WSSS_STATIC_WIDGETS"
"""Environment variable: ``1`` (or ``true``/``yes``/``on``) makes every explorer static."""


def _env_static() -> bool:
    return os.environ.get(STATIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _in_kernel() -> bool:
    """True inside an IPython kernel (Jupyter, VS Code, Colab), False in a terminal or plain Python."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def is_interactive(interactive: bool | None = None) -> bool:
    """Whether :func:`explore` shows live controls.

    ``interactive`` True / False decides; None: False if ``$WSSS_STATIC_WIDGETS`` is set (to 1,
    true, yes, on), False if ``ipywidgets`` does not import, else True exactly inside an IPython
    kernel.
    """
    if interactive is not None:
        return bool(interactive)
    if _env_static():
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return _in_kernel()


def _is_widget(obj) -> bool:
    try:
        import ipywidgets
    except ImportError:
        return False
    return isinstance(obj, ipywidgets.ValueWidget) or (isinstance(obj, ipywidgets.Widget) and hasattr(obj, "value"))


def _first_option(options):
    first = options[0] if not isinstance(options, dict) else next(iter(options.values()))
    if isinstance(options, (list, tuple)) and isinstance(first, tuple) and len(first) == 2:
        return first[1]  # (label, value) pairs
    return first


def _spec_default(name: str, spec) -> Any:
    """The default value of one control specification (see :func:`explore`)."""
    if _is_widget(spec):
        return spec.value
    if isinstance(spec, tuple) and len(spec) in (3, 4) and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                              for v in spec):
        lo, hi, step = spec[:3]
        default = spec[3] if len(spec) == 4 else lo
        if not lo <= default <= hi:
            raise ValueError(f"control {name!r}: default {default} outside [{lo}, {hi}]")
        if step <= 0:
            raise ValueError(f"control {name!r}: step must be > 0, got {step}")
        return default
    if isinstance(spec, dict):
        if not spec:
            raise ValueError(f"control {name!r}: empty dict of options")
        return _first_option(spec)
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"control {name!r}: empty list of options")
        return _first_option(spec)
    if isinstance(spec, tuple):
        raise ValueError(f"control {name!r}: a tuple must be (min, max, step) or (min, max, step, default) "
                         f"of numbers, got {spec!r}; use a list for a dropdown")
    return spec  # a fixed value (str, number, bool, object): passed through as is


def control_defaults(**controls) -> dict[str, Any]:
    """The values :func:`explore` renders first, one per control."""
    return {k: _spec_default(k, v) for k, v in controls.items()}


def _make_widget(name: str, spec, default):
    """An ipywidgets control for ``spec``, or None for a fixed value."""
    import ipywidgets as W

    style = {"description_width": "initial"}
    if _is_widget(spec):
        return spec
    if isinstance(spec, tuple):
        lo, hi, step = spec[:3]
        ints = all(isinstance(v, numbers.Integral) for v in (lo, hi, step, default))
        cls = W.IntSlider if ints else W.FloatSlider
        return cls(value=default, min=lo, max=hi, step=step, description=name, continuous_update=False,
                   style=style)
    if isinstance(spec, (list, dict)):
        return W.Dropdown(options=spec, value=default, description=name, style=style)
    if isinstance(spec, bool):
        return W.Checkbox(value=spec, description=name, indent=False)
    return None


def _release(fig) -> None:
    """Detach a figure from pyplot if ``render`` made it with pyplot (so the inline backend does not
    show it a second time at the end of the cell, and it does not leak)."""
    if getattr(fig, "canvas", None) is not None and getattr(fig.canvas, "manager", None) is not None:
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:  # pragma: no cover - closing is best effort
            pass


def _displayable(fig):
    """What to ``display`` for ``fig``: the figure itself where IPython has an image formatter for it
    (matplotlib's inline backend is active: ``%matplotlib inline``, or a pyplot figure was made), else
    a PNG :class:`IPython.display.Image` of it. Without that, a notebook that never activated the
    inline backend (no ``%matplotlib inline``, only ``matplotlib.figure.Figure``) would show the
    explorer's figure as the text ``<Figure size ... with N Axes>`` (seen in JupyterLab)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return fig
    if not isinstance(fig, Figure):
        return fig
    from IPython import get_ipython

    ip = get_ipython()
    if ip is not None:
        for mime in ("image/png", "image/svg+xml"):
            formatter = ip.display_formatter.formatters.get(mime)
            try:
                if formatter is not None and formatter.lookup(fig) is not None:
                    return fig
            except KeyError:
                pass
    from IPython.core.pylabtools import print_figure
    from IPython.display import Image

    return Image(data=print_figure(fig, "png", bbox_inches="tight"))  # as the inline backend draws it


def explore(render: Callable[..., Any], interactive: bool | None = None, **controls):
    """Draw ``render(**defaults)`` now, and in a live kernel add controls that re-render it.

    Parameters
    ----------
    render : callable
        ``render(**values) -> matplotlib.figure.Figure`` (a pyplot figure is fine too).
    interactive : bool or None
        True / False force the live controls on / off; None decides with :func:`is_interactive`
        (``$WSSS_STATIC_WIDGETS=1`` → static).
    **controls
        One per keyword argument of ``render``:

        * ``(min, max, step, default)`` or ``(min, max, step)`` (default = min): a slider, an
          integer slider when all four are ints;
        * a list ``[a, b, ...]`` (or of ``(label, value)`` pairs) or a dict ``{label: value}``:
          a dropdown, default = the first value;
        * an ``ipywidgets`` widget: used as is, default = its ``value``;
        * a bool: a checkbox; any other value: passed to ``render`` unchanged.

    Returns
    -------
    Figure
        The figure drawn for the defaults. It has already been displayed (in IPython), so end the
        line with ``;`` or assign the result if it is the last line of a cell, or IPython shows it
        twice.
    """
    values = control_defaults(**controls)
    fig = render(**values)
    _release(fig)
    live = is_interactive(interactive)
    if not _in_ipython():
        if live and interactive:
            warnings.warn("explore(interactive=True) outside IPython: showing no controls", stacklevel=2)
        return fig
    from IPython.display import HTML, display

    handle = display(_displayable(fig), display_id=True)
    if not live:
        return fig
    try:
        import ipywidgets as W
    except ImportError:
        warnings.warn("ipywidgets is not installed: the explorer stays static (pip install ipywidgets)",
                      stacklevel=2)
        return fig

    ctrls = {k: _make_widget(k, spec, values[k]) for k, spec in controls.items()}
    ctrls = {k: w for k, w in ctrls.items() if w is not None}
    if not ctrls:
        return fig
    out = W.Output()
    state = {"blanked": False}

    def rerender(_change=None):
        vals = dict(values)
        vals.update({k: w.value for k, w in ctrls.items()})
        with out:
            out.clear_output(wait=True)
            try:
                f = render(**vals)
                _release(f)
                display(_displayable(f))
            except Exception as e:  # show the error in the output area, keep the controls alive
                print(f"render({vals}) failed: {type(e).__name__}: {e}")
        if not state["blanked"] and handle is not None:
            handle.update(HTML("<small>(the figure for the default values was here; the live one is below "
                               "the controls)</small>"))
            state["blanked"] = True

    for w in ctrls.values():
        w.observe(rerender, names="value")
    box = W.VBox([W.HBox(list(ctrls.values()), layout=W.Layout(flex_flow="row wrap")), out])
    display(box)
    return fig
