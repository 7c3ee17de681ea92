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
    "What a person edits: cell type, source and tags (ids, outputs and counts are not content)."
    return [(c["cell_type"], "".join(c["source"]).strip("\n"), tuple(c.get("metadata", {}).get("tags", [])))
            for c in nb["cells"]]


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
