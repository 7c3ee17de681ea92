"""The real course (issue 16): `course/build.py` generates the student release of every lesson with no
solution code and no hidden tests, and grades one lesson at the smoke profile for four submissions — the
instructor copy (full points), the unsolved release (runs to the end, 0 on every exercise), a submission whose
first exercise delegates to the library and one whose second exercise is wrong (0 on that exercise, full points
elsewhere). The exercises are found from the lesson's nbgrader metadata, so the test follows the lesson.

About a minute and a half on 2 cores. Run alone: `pytest -m course`. Skipped without nbgrader (extra `course`)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.course, pytest.mark.slow]
nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is not installed (pip install -e '.[course]')")
nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "course" / "nbgrader_config.py"
GRADED = "01_class_activation_maps"     # the lesson graded end to end (the cheapest at smoke with 3 exercises)
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def _load_build():
    spec = importlib.util.spec_from_file_location("course_build_lessons", REPO / "course" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def exercises(nb) -> list[dict]:
    """[{"name", "points", "library"}] of the autograded exercises: an answer cell ``<name>_answer`` defining
    ``def <name>(``, a test cell ``<name>`` with points, a call site ``grading.attempt(<name>, <library fn>``."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    out = []
    for c in nb.cells:
        m = _meta(c)
        if m.get("grade") and not m.get("solution") and c.cell_type == "code":
            name = m["grade_id"]
            site = re.search(rf"grading\.attempt\(\s*{re.escape(name)}\s*,\s*([\w.]+)", code)
            out.append({"name": name, "points": float(m["points"]), "library": site.group(1) if site else None})
    return out


def _answer_cell(nb, name: str):
    return next(c for c in nb.cells if _meta(c).get("grade_id") == f"{name}_answer")


WRONG = '''
def _off_by_one(v):
    if isinstance(v, (tuple, list)):
        return type(v)(_off_by_one(x) for x in v)
    if isinstance(v, dict):
        return {{k: _off_by_one(x) for k, x in v.items()}}
    if isinstance(v, bool):
        return not v
    return v + 1


def {name}(*args, **kwargs):  # a systematic error: everything off by one
    return _off_by_one(_{name}_reference(*args, **kwargs))
'''


def submissions(source: Path, release: Path, out: Path, aid: str, ex: list[dict]) -> None:
    def put(student, nb):
        d = out / student / aid
        d.mkdir(parents=True)
        nbformat.write(nb, d / f"{aid}.ipynb")

    put("instructor", nbformat.read(source, as_version=4))
    put("unsolved", nbformat.read(release, as_version=4))
    solved = nbformat.read(source, as_version=4)   # every answer right ...
    for c in solved.cells:
        if _meta(c).get("solution") and c.cell_type == "code":
            c.source = re.sub(r"^\s*### (BEGIN|END) SOLUTION\s*\n", "", c.source, flags=re.M)
    first, second = ex[0], ex[1]
    deleg = nbformat.from_dict(solved)             # ... but the first exercise calls the library
    _answer_cell(deleg, first["name"]).source = (f"def {first['name']}(*args, **kwargs):\n"
                                                 f"    return {first['library']}(*args, **kwargs)\n")
    put("delegating", deleg)
    wrong = nbformat.from_dict(solved)             # ... but the second is wrong
    cell = _answer_cell(wrong, second["name"])
    cell.source = re.sub(rf"\bdef {second['name']}\(", f"def _{second['name']}_reference(", cell.source, count=1)
    cell.source += WRONG.format(name=second["name"])
    put("wrong", wrong)


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    build = _load_build()
    course = build.Course.load(CONFIG)
    root = tmp_path_factory.mktemp("course")
    released = build.build_assignments(course, root)          # every lesson's release
    source = root / "source" / GRADED / f"{GRADED}.ipynb"
    ex = exercises(nbformat.read(source, as_version=4))
    subs = tmp_path_factory.mktemp("submissions")
    submissions(source, released[GRADED][0], subs, GRADED, ex)
    course.assignments = {GRADED: course.assignments[GRADED]}
    results = build.grade(course, root, subs, profile="smoke")
    return {"root": root, "released": released, "ex": ex, "results": {r.student: r for r in results}}


def test_every_lesson_has_graded_exercises():
    """Issue 16: 2-4 autograded exercises per lesson, at least 15 in all, and one written answer per lesson."""
    build = _load_build()
    course = build.Course.load(CONFIG)
    total = 0
    for aid, nbs in course.assignments.items():
        nb = nbformat.read(REPO / nbs[0], as_version=4)
        ex = exercises(nb)
        assert 2 <= len(ex) <= 4, f"{aid}: {len(ex)} autograded exercises"
        assert all(e["library"] for e in ex), f"{aid}: an exercise without a grading.attempt call site: {ex}"
        manual = [c for c in nb.cells if _meta(c).get("grade") and _meta(c).get("solution")]
        assert manual, f"{aid}: no written answer graded by hand"
        total += len(ex)
    assert total >= 15


def test_release_holds_no_solution_and_no_hidden_tests(course_run):
    for aid, paths in course_run["released"].items():
        for p in paths:
            text = p.read_text(encoding="utf-8")
            leaked = [m for m in MARKERS if m in text]
            assert not leaked, f"{p.name}: {leaked}"
            src = (REPO / "notebooks" / f"{p.stem}.py").read_text(encoding="utf-8")
            blocks = re.findall(r"### BEGIN (?:SOLUTION|HIDDEN TESTS)\n(.*?)### END", src, flags=re.S)
            # short lines (`return out`) may occur elsewhere by chance
            leaks = [line.strip() for block in blocks for line in block.splitlines()
                     if len(line.strip()) > 25 and line.strip() in text]
            assert not leaks, f"{p.name} leaks solution or hidden-test lines: {leaks}"


def test_grades(course_run):
    res, ex = course_run["results"], course_run["ex"]
    full = {e["name"]: e["points"] for e in ex}
    first, second = ex[0]["name"], ex[1]["name"]

    def auto(student):
        return {k: res[student].scores.get(k) for k in full}

    assert auto("instructor") == full, res["instructor"].notes
    assert auto("unsolved") == {k: 0 for k in full}, res["unsolved"].notes
    assert auto("delegating") == {**full, first: 0}, res["delegating"].notes
    assert auto("wrong") == {**full, second: 0}, res["wrong"].notes


def test_unsolved_release_runs_to_the_end(course_run):
    nb = nbformat.read(course_run["root"] / "autograded" / "unsolved" / GRADED / f"{GRADED}.ipynb", as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    finish = [c for c in nb.cells if c.cell_type == "code" and "lesson.finish(" in c.source]
    assert finish and finish[-1].execution_count is not None, "the lesson did not reach lesson.finish"
