"""The committed notebooks: each `.ipynb` in sync with its jupytext source (`.py`, percent format), no
outputs, a papermill `parameters` cell with the standard names, no absolute paths. (Executing them is
`make test`'s second step: `python -m wsss_core.notebooks --profile smoke`.)"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
STUDY = sorted((NOTEBOOKS / "study").glob("[0-9][0-9]_*.ipynb"))
ALL = LESSONS + STUDY
IDS = [p.relative_to(NOTEBOOKS).with_suffix("").as_posix() for p in ALL]
REQUIRED_PARAMETERS = ("PROFILE", "DATA_ROOT", "DEVICE", "SEED", "OUT_DIR")


def _cells(nb) -> list[tuple]:
    "What a person edits: cell type, source, tags and nbgrader's metadata (ids, outputs and counts are not content)."
    return [(c["cell_type"], "".join(c["source"]).strip("\n"), tuple(c.get("metadata", {}).get("tags", [])),
             json.dumps(c.get("metadata", {}).get("nbgrader"), sort_keys=True)) for c in nb["cells"]]


def test_there_are_notebooks():
    assert [p.name[:2] for p in LESSONS][:2] == ["00", "01"]


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_notebook_is_in_sync_with_its_jupytext_source(path):
    jupytext = pytest.importorskip("jupytext")
    src = path.with_suffix(".py")
    assert src.is_file(), f"{path.name} has no jupytext source {src.name} (make sync-notebooks pairs them)"
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"].get("jupytext", {}).get("formats") == "ipynb,py:percent", "not paired with py:percent"
    assert _cells(jupytext.read(src)) == _cells(nb), (
        f"{path.name} and {src.name} differ: run `make sync-notebooks` (jupytext --sync) after editing either")


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "outputs committed"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = "".join(tagged[0]["source"])
    names = re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", params, flags=re.M)
    for required in REQUIRED_PARAMETERS:
        assert required in names, f"parameters cell lacks {required}"
    # literals only: papermill overrides them by name
    for line in params.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.match(r"^[A-Z_][A-Z0-9_]*\s*=\s*(None|True|False|-?[\d.e]+|\"[^\"]*\"|'[^']*'|\([^()]*\)|\[[^\[\]]*\])\s*(#.*)?$",
                            line), f"not a literal assignment: {line!r}"
    assert code.index(tagged[0]) <= 1, "the parameters cell comes first (after at most one setup cell)"
    src = "".join("".join(c["source"]) for c in nb["cells"])
    assert not re.search(r"[\"'](/work|/home|/tmp|/Users|[A-Z]:\\)", src), "absolute path in a notebook"


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_papermill_sees_every_parameter(path):
    """papermill's parameter inspection (``papermill --help-notebook``, regression jobs that list the
    parameters) drops a line it cannot parse — e.g. one with ``=`` in its comment — with only a warning."""
    papermill = pytest.importorskip("papermill")
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", "".join(cell["source"]), flags=re.M)
    assert list(papermill.inspect_notebook(str(path))) == names


# the lesson standard (../shared/NOTEBOOKS.md, issue 15): a lesson is read in a lab session
MAX_PROSE_WORDS = 1800      # "about 1,500 words of prose or fewer"; formulas count as one word
MAX_SETUP_LINES = 15
MAX_CELL_LINES = 40


def prose_words(nb) -> int:
    text = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", " x ", text, flags=re.S)
    return len(re.findall(r"[A-Za-z0-9][\w'’-]*", text))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_is_light(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = ["".join(c["source"]).rstrip("\n") for c in nb["cells"] if c["cell_type"] == "code"]
    setup = [c for c in code if "lesson.setup(" in c]
    assert len(setup) == 1, "a lesson has one setup cell calling wsss_core.lesson.setup"
    assert len(setup[0].splitlines()) <= MAX_SETUP_LINES, f"setup cell of {len(setup[0].splitlines())} lines"
    longest = max(code, key=lambda c: len(c.splitlines()))
    assert len(longest.splitlines()) <= MAX_CELL_LINES, f"a code cell of {len(longest.splitlines())} lines:\n{longest[:300]}"
    assert prose_words(nb) <= MAX_PROSE_WORDS, f"{prose_words(nb)} words of prose"


def test_prose_words_counts_words_not_formulas():
    nb = {"cells": [{"cell_type": "markdown", "source": ["Random walk, $T = D^{-1}A$ (Eq. 3):\n", "$$x^2$$ it's"]},
                    {"cell_type": "code", "source": ["not prose"]}]}
    assert prose_words(nb) == 7   # "Random", "walk", x (the formula), "Eq", "3", x, "it's"; code is not prose
