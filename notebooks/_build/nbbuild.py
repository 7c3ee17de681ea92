"""Shared by the notebook build scripts: collect cells, write a clean ``.ipynb``.

    from nbbuild import NotebookBuilder
    NB = NotebookBuilder("01_class_activation_maps")
    md, code = NB.md, NB.code
    md("# Title"); code("x = 1", tags=["parameters"])
    if __name__ == "__main__":
        NB.write()

The written notebook has no outputs and no execution counts, stable cell ids (``nb01-00`` …) and the
``python3`` kernel, so that ``git diff`` shows only real changes; ``tests/test_notebooks.py`` checks
that every committed notebook equals what its build script writes.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent


class NotebookBuilder:
    def __init__(self, name: str):
        self.name = name
        self.target = NOTEBOOKS / f"{name}.ipynb"
        self.cells: list = []

    def md(self, text: str) -> None:
        self.cells.append(new_markdown_cell(text.strip("\n")))

    def code(self, text: str, tags: list[str] | None = None) -> None:
        c = new_code_cell(text.strip("\n"))
        if tags:
            c.metadata["tags"] = list(tags)
        self.cells.append(c)

    def build(self) -> nbformat.NotebookNode:
        nb = new_notebook(cells=self.cells)
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
        for i, c in enumerate(nb.cells):
            c["id"] = f"nb{self.name[:2]}-{i:02d}"
            if c.cell_type == "code":
                c.outputs = []
                c.execution_count = None
        nbformat.validate(nb)
        return nb

    def text(self) -> str:
        return nbformat.writes(self.build()) + "\n"

    def write(self) -> Path:
        self.target.write_text(self.text(), encoding="utf-8")
        print(f"wrote notebooks/{self.target.name} ({len(self.cells)} cells)")
        return self.target
