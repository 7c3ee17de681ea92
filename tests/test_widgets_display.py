"""``widgets.explore`` shows a picture in a kernel whether or not matplotlib's inline backend is active
(a notebook that only makes ``matplotlib.figure.Figure`` objects and never runs ``%matplotlib inline``
used to get the text ``<Figure size ...>`` in the explorer, seen in JupyterLab by tests/browser)."""
from __future__ import annotations

import pytest

SETUP = {"no inline backend": "import matplotlib.pyplot as plt", "inline backend": "%matplotlib inline"}
EXPLORE = """\
from matplotlib.figure import Figure
from wsss_core import widgets

def render(index):
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().set_title(str(index))
    return fig

widgets.explore(render, interactive=False, index=(0, 3, 1, 1));
"""


@pytest.mark.slow
@pytest.mark.parametrize("setup", list(SETUP.values()), ids=list(SETUP))
def test_explore_displays_an_image_in_a_kernel(setup):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(EXPLORE)]
    nbclient.NotebookClient(nb, timeout=120).execute()
    outputs = nb.cells[1].outputs
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    assert "image/png" in outputs[0].data, f"the explorer's figure shows as {dict(outputs[0].data)}"
