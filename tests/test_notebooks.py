"""The committed notebooks: equal to what their build scripts write, no outputs, a papermill
`parameters` cell with the standard names, no absolute paths. (Executing them is `make test`'s
second step: `python -m wsss_core.notebooks --profile smoke`.)"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
BUILD = NOTEBOOKS / "_build"
ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
REQUIRED_PARAMETERS = ("PROFILE", "DATA_ROOT", "DEVICE", "SEED", "OUT_DIR")


def _built_text(nb_path: Path) -> str:
    script = BUILD / f"build_{nb_path.name[:2]}.py"
    assert script.is_file(), f"{nb_path.name} has no build script {script.name}"
    sys.path.insert(0, str(BUILD))
    try:
        spec = importlib.util.spec_from_file_location(f"_build_{nb_path.name[:2]}", script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # collects the cells; writes nothing
    finally:
        sys.path.remove(str(BUILD))
    if hasattr(mod, "NB"):
        return mod.NB.text()
    return nbformat.writes(mod.build()) + "\n"


def test_there_are_notebooks():
    assert [p.name[:2] for p in ALL][:2] == ["00", "01"]


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_equals_its_build_script(path):
    assert path.read_text(encoding="utf-8") == _built_text(path), (
        f"{path.name} differs from what notebooks/_build/build_{path.name[:2]}.py writes: edit the script and "
        "run it; never edit the .ipynb by hand")


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
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


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_papermill_sees_every_parameter(path):
    """papermill's parameter inspection (``papermill --help-notebook``, regression jobs that list the
    parameters) drops a line it cannot parse — e.g. one with ``=`` in its comment — with only a warning."""
    papermill = pytest.importorskip("papermill")
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", "".join(cell["source"]), flags=re.M)
    assert list(papermill.inspect_notebook(str(path))) == names
