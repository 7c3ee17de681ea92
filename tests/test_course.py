"""The course tooling end to end (issue 16), on the two-exercise demo course (course/examples/): the
student release is generated without solutions or hidden tests, and `course/build.py grade` autogrades
nine submissions — the instructor copy, the unsolved release, a delegating, a wrong and a hard-coded
answer, and three bad inputs — into the grade table. About a minute and a half on 2 busy cores.

Run alone: `pytest -m course`. Skipped where nbgrader (the `course` extra) is not installed."""
from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.course, pytest.mark.slow]
nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is not installed (pip install -e '.[course]')")
nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "course" / "examples" / "nbgrader_config.py"
AID = NB = "grading_demo"

GOOD_BG = "def background_score(cams, alpha):\n    return (1.0 - cams.amax(dim=0)) ** alpha\n"
GOOD_MIOU = ("def miou(conf):\n    conf = np.asarray(conf, dtype=float)\n    tp = np.diag(conf)\n"
             "    u = conf.sum(0) + conf.sum(1) - tp\n    return float(np.mean(tp[u > 0] / u[u > 0]))\n")
DELEGATING_BG = "def background_score(cams, alpha):\n    return background_power(cams, alpha)\n"
HARDCODED_BG = "def background_score(cams, alpha):\n    return torch.tensor([[0.0, 0.25]])\n"
WRONG_MIOU = ("def miou(conf):  # counts a class absent from truth and prediction as IoU 0\n"
              "    conf = np.asarray(conf, dtype=float)\n    tp = np.diag(conf)\n"
              "    return float(np.mean(tp / (conf.sum(0) + conf.sum(1) - tp + 1e-12)))\n")
HANGING_MIOU = "import time\nwhile True:\n    time.sleep(0.1)\n" + GOOD_MIOU

# student → (background_score points, miou points, a word the notes must contain or None)
EXPECTED = {
    "instructor": (2, 3, None),
    "unsolved": (0, 0, None),
    "delegating": (0, 3, None),
    "wrong": (2, 0, None),
    "hardcoded": (0, 3, None),
    "not_a_notebook": (0, 0, "not a valid notebook"),
    "deleted_test": (0, 3, "'background_score' deleted or renamed"),
    "renamed_test": (2, 0, "'miou' deleted or renamed"),
    "timeout": (2, 0, "timed out"),
}


def _load_build():
    spec = importlib.util.spec_from_file_location("course_build", REPO / "course" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _answer(nb, gid: str, code: str):
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)
    cell.source = code
    return nb


def _solved(release: Path, bg: str = GOOD_BG, m: str = GOOD_MIOU):
    return _answer(_answer(nbformat.read(release, as_version=4), "background_score_answer", bg), "miou_answer", m)


def _write_submissions(release: Path, source: Path, out: Path) -> None:
    """DIR/<student>/<assignment>/<notebook>.ipynb, as an instructor collects them."""
    def put(student, nb):
        d = out / student / AID
        d.mkdir(parents=True)
        if isinstance(nb, str):
            (d / f"{NB}.ipynb").write_text(nb, encoding="utf-8")
        else:
            nbformat.write(nb, d / f"{NB}.ipynb")

    put("instructor", nbformat.read(source, as_version=4))
    put("unsolved", nbformat.read(release, as_version=4))
    put("delegating", _solved(release, bg=DELEGATING_BG))
    put("wrong", _solved(release, m=WRONG_MIOU))
    put("hardcoded", _solved(release, bg=HARDCODED_BG))
    put("not_a_notebook", GOOD_BG)  # a .py saved under the notebook's name
    nb = _solved(release)
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "background_score"]
    put("deleted_test", nb)
    nb = _solved(release)
    next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "miou").metadata.nbgrader[
        "grade_id"] = "miou_tests"
    put("renamed_test", nb)
    put("timeout", _solved(release, m=HANGING_MIOU))


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    build = _load_build()
    course = build.Course.load(CONFIG)
    root = tmp_path_factory.mktemp("course")
    released = build.build_assignments(course, root)
    release = released[AID][0]
    subs = tmp_path_factory.mktemp("submissions")
    _write_submissions(release, root / "source" / AID / f"{NB}.ipynb", subs)
    results = build.grade(course, root, subs)
    return {"root": root, "release": release, "results": {r.student: r for r in results}}


def _text_lines(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    return "\n".join(c.source for c in nb.cells)


def test_release_has_stubs_and_no_solution_or_hidden_tests(course_run):
    release = course_run["release"]
    text = release.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    instructor = (REPO / "course" / "examples" / "grading_demo.py").read_text(encoding="utf-8")
    hidden = re.findall(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", instructor, flags=re.S)
    assert len(hidden) == 4
    for _, block in hidden:
        for line in block.splitlines():
            if line.strip():
                assert line.strip() not in text, f"the release leaks: {line.strip()}"
    src = _text_lines(release)
    assert src.count("raise NotImplementedError()") == 2
    assert src.count("with grading.tests(") == 2  # the visible tests are there


def test_package_holds_no_nbgrader_solution_regions():
    region = re.compile(r"^\s*### BEGIN SOLUTION\s*$", re.M)
    leaks = [p for p in (REPO / "wsss_core").rglob("*") if p.suffix in (".py", ".ipynb")
             and region.search(p.read_text(encoding="utf-8"))]
    assert not leaks


def test_package_ships_no_solution_modules():
    """Issue 16: the exercises' solutions live only in the instructor notebooks (nbgrader regions)."""
    assert not list((REPO / "wsss_core").rglob("solutions*.py"))
    assert not (REPO / "wsss_core" / "exercises").exists()


@pytest.mark.parametrize("student", list(EXPECTED))
def test_grade_table_row(course_run, student):
    bg, m, why = EXPECTED[student]
    res = course_run["results"][student]
    assert res.scores == {"background_score": bg, "miou": m}, res.notes
    notes = "; ".join(res.notes)
    if why:
        assert why in notes
    else:
        assert not res.notes, notes


def test_unsolved_release_runs_to_the_end(course_run):
    nb = nbformat.read(course_run["root"] / "autograded" / "unsolved" / AID / f"{NB}.ipynb", as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors  # no cell raised: Run All goes on
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "lesson finished" in last
    said = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert said.count("the lesson goes on with the library's result") == 2


def test_delegating_answer_is_told_why(course_run):
    nb = nbformat.read(course_run["root"] / "autograded" / "delegating" / AID / f"{NB}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "background_score")
    err = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")
    assert "DelegationError" in err and "wsss_core.cams.background_power" in err


def test_tables_and_feedback_are_written(course_run):
    root = course_run["root"]
    rows = list(csv.DictReader((root / "grades" / "grades.csv").open(encoding="utf-8")))
    by = {r["student"]: r for r in rows}
    assert by["(max)"]["total"] == "5"
    assert by["instructor"]["total"] == "5" and by["unsolved"]["total"] == "0"
    assert set(EXPECTED) <= set(by)
    md = (root / "grades" / "grades.md").read_text(encoding="utf-8")
    assert md.startswith("| student | background_score | miou | total | notes |")
    assert (root / "feedback" / "instructor" / AID / f"{NB}.html").is_file()
    assert not (root / "feedback" / "not_a_notebook").exists()
