"""Course tooling (instructors only; not part of the installed package): the student release and the
grade table, with nbgrader run locally (no Docker, no exchange).

    python course/build.py assignments [--config course/nbgrader_config.py] [--root runs/course]
    python course/build.py grade --submissions DIR [--config ...] [--root ...]

``make assignments`` / ``make grade SUBMISSIONS=DIR`` call these. Everything generated lives in the
temporary course root (default ``runs/course``, never committed)::

    runs/course/
      nbgrader_config.py            loads the course config, sets the root
      gradebook.db                  nbgrader's database (source cells, students, grades)
      source/<assignment>/<nb>.ipynb   the instructor notebooks, copied at build time
      release/<assignment>/<nb>.ipynb  the STUDENT RELEASE: stubs, visible tests, no hidden tests
      submitted/<student>/<assignment>/<nb>.ipynb   copied from SUBMISSIONS
      autograded/..., feedback/<student>/<assignment>/<nb>.html
      logs/<student>--<assignment>.log
      grades/grades.csv, grades/grades.md

The course config (``course/nbgrader_config.py``) is an nbgrader config file that also names the
assignments: ``ASSIGNMENTS = {assignment id: [instructor notebooks, repo-relative]}`` and the wall-clock
limit of one submission's autograding, ``SUBMISSION_TIMEOUT`` (seconds; nbgrader's own per-cell limit is
``c.Execute.timeout``).

Collect layout: ``DIR/<student>/<assignment>/<notebook>.ipynb`` — nbgrader's ``submitted`` layout; the
notebook keeps the release's file name. Bad input never stops the grading of the others; each case is
graded 0 with a reason in the table's ``notes`` column: a file that is not a valid notebook, a missing
notebook, a test cell deleted or renamed (its grade_id is gone), a cell that timed out, a submission whose
autograding failed or ran past ``SUBMISSION_TIMEOUT``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "course" / "nbgrader_config.py"
DEFAULT_ROOT = REPO / "runs" / "course"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


# --------------------------------------------------------------------------------------------------
# the course config
# --------------------------------------------------------------------------------------------------
@dataclass
class Course:
    config: Path
    assignments: dict[str, list[Path]]
    submission_timeout: float = 3600.0
    cell_timeout: float | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Course":
        from traitlets.config import Config

        path = Path(path).resolve()
        cfg = Config()
        ns = {"get_config": lambda: cfg, "load_subconfig": lambda *a, **k: None, "__file__": str(path)}
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), ns)
        raw = ns.get("ASSIGNMENTS")
        if not isinstance(raw, dict) or not raw:
            raise SystemExit(f"{path}: ASSIGNMENTS = {{assignment id: [notebooks]}} is missing or empty")
        assignments = {str(a): [(REPO / p).resolve() for p in nbs] for a, nbs in raw.items()}
        timeout = cfg.Execute.timeout if "timeout" in cfg.Execute else None
        return cls(path, assignments, float(ns.get("SUBMISSION_TIMEOUT", 3600)), timeout)


def _venv_on_path() -> None:
    """nbgrader runs the ``alembic`` command (its database migrations) from PATH: put this Python's
    ``bin`` first, as an activated virtual environment would."""
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _kill_tree(pid: int) -> None:
    """Kill a process and all its descendants: kernels run in sessions of their own, so killing the
    process group alone would leave a hung kernel behind (psutil comes with ipykernel)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = proc.children(recursive=True) + [proc]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _nbgrader(root: Path, *args: str, timeout: float | None = None, log: Path | None = None,
              env: dict | None = None) -> tuple[int | None, str]:
    """Run ``python -m nbgrader ARGS`` in the course root (killed with its kernels on timeout). Returns (exit status or None on timeout, combined output)."""
    cmd = [sys.executable, "-m", "nbgrader", *args]
    _venv_on_path()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, _ = proc.communicate()
        rc = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n{out}", encoding="utf-8")
    return rc, out


# --------------------------------------------------------------------------------------------------
# make assignments
# --------------------------------------------------------------------------------------------------
def _cell_key(cell) -> tuple:
    return (cell.cell_type, cell.source.strip("\n"), json.dumps(cell.metadata.get("nbgrader"), sort_keys=True))


def read_instructor_notebook(path: Path):
    """The instructor notebook as nbformat v4: a jupytext ``.py`` source, or an ``.ipynb`` — which, if it
    has a ``.py`` pair, must agree with it cell by cell, nbgrader metadata included."""
    import jupytext
    import nbformat

    if path.suffix == ".py":
        nb = jupytext.read(path)
    else:
        nb = nbformat.read(path, as_version=4)
        pair = path.with_suffix(".py")
        if pair.is_file():
            other = jupytext.read(pair)
            if [_cell_key(c) for c in nb.cells] != [_cell_key(c) for c in other.cells]:
                raise SystemExit(f"{path.name} and {pair.name} differ (cells or nbgrader metadata): "
                                 f"run `make sync-notebooks` first")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("lines_to_next_cell", None)
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    return nb


def write_root_config(course: Course, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(
        "# generated by course/build.py: the course config, with this folder as the course root\n"
        "c = get_config()  # noqa: F821\n"
        f"load_subconfig({str(course.config)!r})  # noqa: F821\n"
        f"c.CourseDirectory.root = {str(root)!r}\n", encoding="utf-8")


def build_assignments(course: Course, root: Path) -> dict[str, list[Path]]:
    """Copy the instructor notebooks into ``root/source`` and run ``nbgrader generate_assignment``;
    check the release holds no solution or hidden-test marker. Returns {assignment: release notebooks}."""
    import nbformat

    root = root.resolve()
    write_root_config(course, root)
    shutil.rmtree(root / "source", ignore_errors=True)  # generated: only this config's assignments
    for aid, notebooks in course.assignments.items():
        src = root / "source" / aid
        src.mkdir(parents=True)
        for path in notebooks:
            nbformat.write(read_instructor_notebook(path), src / (path.stem + ".ipynb"))
        shutil.rmtree(root / "release" / aid, ignore_errors=True)
    # one nbgrader process for all assignments (it starts in seconds, not tens of seconds, per call)
    rc, out = _nbgrader(root, "generate_assignment", "*", "--force", log=root / "logs" / "generate.log")
    if rc != 0:
        raise SystemExit(f"nbgrader generate_assignment failed (rc={rc}), see {root / 'logs' / 'generate.log'}:\n"
                         f"{out[-3000:]}")
    released = {}
    for aid, notebooks in course.assignments.items():
        rel = sorted((root / "release" / aid).glob("*.ipynb"))
        if len(rel) != len(notebooks):
            raise SystemExit(f"release/{aid}: {len(rel)} notebooks for {len(notebooks)} in the config")
        for nb in rel:
            text = nb.read_text(encoding="utf-8")
            leaks = [m for m in MARKERS if m in text]
            if leaks:
                raise SystemExit(f"{nb}: the release still contains {leaks}")
        released[aid] = rel
        print(f"[assignments] {aid}: {', '.join(p.name for p in rel)} → {root / 'release' / aid}")
    return released


# --------------------------------------------------------------------------------------------------
# make grade
# --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    student: str
    assignment: str
    scores: dict[str, float | None] = field(default_factory=dict)  # grade_id → points (None: manual, pending)
    notes: list[str] = field(default_factory=list)
    zeroed: set[str] = field(default_factory=set)  # grade_ids graded 0 whatever nbgrader says
    failed: bool = False  # not autograded (no valid notebook, or autograding failed): every exercise 0


def _grade_cells(nb) -> list[dict]:
    return [c.metadata["nbgrader"] for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade") and "grade_id" in c.metadata["nbgrader"]]


def _precheck(path: Path, source_nb, res: Result) -> bool:
    """Check one submitted notebook (in the course root's copy) and sanitize it so that nbgrader can
    grade the rest: a test cell whose grade_id is gone is graded 0; a cell carrying an unknown grade_id
    (a renamed test cell) loses its nbgrader metadata (nbgrader would refuse the whole notebook).
    Returns False (and removes the file) if the notebook cannot be graded at all."""
    import nbformat

    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*.ipynb"))
        res.notes.append(f"{path.name}: not submitted" + (f" (found {', '.join(others)})" if others else ""))
        return False
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 — NotJSONError, ValidationError, UnicodeDecodeError, …
        msg = (str(err).strip().splitlines() or [""])[0][:120]
        res.notes.append(f"{path.name}: not a valid notebook ({type(err).__name__}{': ' + msg if msg else ''})")
        path.unlink()
        return False
    known = {c.metadata["nbgrader"].get("grade_id") for c in source_nb.cells if c.metadata.get("nbgrader")}
    want = {m["grade_id"] for m in _grade_cells(source_nb)}
    have, changed = set(), False
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid is None:
            continue
        if gid in known:
            have.add(gid)
        else:
            res.notes.append(f"unknown grade_id '{gid}' (a renamed cell): its nbgrader metadata removed")
            del cell.metadata["nbgrader"]
            changed = True
    for gid in sorted(want - have):
        res.notes.append(f"test cell '{gid}' deleted or renamed: 0 points")
        res.zeroed.add(gid)
    if changed:
        nbformat.write(nb, path)
    return True


def set_parameters(path: Path, values: dict) -> list[str]:
    """Set ``NAME = value`` lines of the notebook's ``parameters`` cell (as papermill would inject them) in
    the course root's copy of a submission; returns the names set. The parameters cell is not graded, so
    nbgrader keeps it as submitted; a notebook without one is left alone."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    done = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            lines = cell.source.splitlines()
            for name, value in values.items():
                for i, line in enumerate(lines):
                    if re.match(rf"{name}\s*=", line):
                        lines[i] = f"{name} = {value!r}  # set by course/build.py grade"
                        done.append(name)
            cell.source = "\n".join(lines)
            break
    nbformat.write(nb, path)
    return done


def _timeouts(path: Path, cell_timeout: float | None) -> list[str]:
    """Cells of an autograded notebook that ran past nbgrader's per-cell limit (or killed the kernel)."""
    import nbformat

    if not path.is_file():
        return []
    notes = []
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") in ("CellTimeoutError", "DeadKernelError"):
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                which = f"cell {i}" + (f" ('{gid}')" if gid else "")
                limit = f" after {cell_timeout:g} s" if cell_timeout else ""
                what = f"timed out{limit} and was interrupted" if out["ename"] == "CellTimeoutError" \
                    else "killed the kernel"
                notes.append(f"{which} {what}")
                break
    return notes


_STARTED = re.compile(r"Creating/updating student with ID '(?P<sid>[^']+)'")
_FAILED = re.compile(r"There was an error processing assignment: .*[/\\](?P<sid>[^/\\]+)[/\\][^/\\]+$")


def _autograde(root: Path, aid: str, students: list[str], limit: float, log: Path) -> dict[str, str]:
    """``nbgrader autograde`` of ``students`` in one process (nbgrader starts once), watched: a student
    whose autograding runs past ``limit`` seconds has the process group killed (kernel included) and
    the others go on in a fresh process. Returns {student: failure reason} (absent: graded)."""
    failures: dict[str, str] = {}
    done: set[str] = set()
    todo = list(students)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as logf:
        while todo:
            exclude = [s for s in students if s not in todo]
            cmd = [sys.executable, "-m", "nbgrader", "autograde", aid, "--force"]
            if exclude:
                cmd.append("--CourseDirectory.student_id_exclude=" + ",".join(exclude))
            logf.write(f"$ {' '.join(cmd)}\n")
            _venv_on_path()
            # student work is graded leniently: a failing test reports and the notebook goes on (never strict)
            proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, env={**os.environ, "WSSS_STRICT_TESTS": "0",
                                                                  "WSSS_STATIC_WIDGETS": "1"})
            lines: queue.Queue = queue.Queue()
            reader = threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True)
            reader.start()
            current, since, last_error_for, tail = None, time.time(), None, []
            killed = None
            while True:
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    line = None
                if line is not None:
                    logf.write(line)
                    tail = (tail + [line.rstrip()])[-40:]
                    m = _STARTED.search(line)
                    if m:
                        if current:
                            done.add(current)
                        current, since = m["sid"], time.time()
                        tail = []
                    m = _FAILED.search(line.strip())
                    if m:
                        last_error_for = m["sid"]
                    if last_error_for and line.strip() and not line.startswith("[") and last_error_for not in done:
                        failures[last_error_for] = line.strip()[:200]  # the traceback's last line wins
                    if "the kernel became unresponsive" in line and current:
                        failures[current] = "the kernel became unresponsive (could not be interrupted)"
                    continue
                if proc.poll() is not None and not reader.is_alive() and lines.empty():
                    break
                if current and time.time() - since > limit:
                    killed = current
                    _kill_tree(proc.pid)
                    proc.wait()
                    reader.join(timeout=5)
                    break
            if current:
                done.add(current)
            if killed:
                failures[killed] = f"ran past SUBMISSION_TIMEOUT = {limit:.0f} s and was stopped"
                logf.write(f"\n[build.py] killed: {killed} ran past {limit:.0f} s\n")
                todo = [s for s in todo if s not in done]
            else:
                todo = []
    return failures


def grade(course: Course, root: Path, submissions: Path, out_dir: Path | None = None,
          profile: str | None = None) -> list[Result]:
    """Autograde every ``submissions/<student>/<assignment>/`` folder, generate the feedback, write
    ``grades.csv`` and ``grades.md`` into ``out_dir`` (default ``root/grades``).

    ``profile`` (e.g. ``"smoke"``): grade every lesson at that profile instead of the one in the submission's
    parameters cell, with ``OUT_DIR`` shared by all submissions (``root/lesson_runs/<profile>``), so the
    lessons' upstream models are trained once. The exercises' tests do not depend on the profile."""
    import nbformat

    root, submissions = root.resolve(), submissions.resolve()
    if not submissions.is_dir():
        raise SystemExit(f"SUBMISSIONS={submissions}: no such folder (layout: DIR/<student>/<assignment>/<nb>.ipynb)")
    if not (root / "gradebook.db").is_file() or any(not (root / "release" / a).is_dir() for a in course.assignments):
        build_assignments(course, root)
    else:
        write_root_config(course, root)
    for sub in ("submitted", "autograded", "feedback"):
        shutil.rmtree(root / sub, ignore_errors=True)
    out_dir = (out_dir or root / "grades").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {aid: {p.stem: nbformat.read(root / "source" / aid / (p.stem + ".ipynb"), as_version=4) for p in nbs}
               for aid, nbs in course.assignments.items()}

    students = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    results: dict[tuple[str, str], Result] = {}
    for sid in students:
        for extra in sorted(p.name for p in (submissions / sid).iterdir() if p.is_dir() and p.name not in sources):
            print(f"[grade] {sid}/{extra}: not an assignment of this course, ignored")
        for aid, nbs in sources.items():
            res = results[(sid, aid)] = Result(sid, aid)
            got = submissions / sid / aid
            if not got.is_dir():
                res.notes.append("no submission")
                res.failed = True
                continue
            dest = root / "submitted" / sid / aid
            shutil.copytree(got, dest)
            gradable = [name for name, src_nb in nbs.items() if _precheck(dest / f"{name}.ipynb", src_nb, res)]
            if profile:
                for name in gradable:
                    set_parameters(dest / f"{name}.ipynb",
                                   {"PROFILE": profile, "OUT_DIR": str(root / "lesson_runs" / profile)})
            if not gradable:
                shutil.rmtree(dest)
                res.failed = True

    for aid, nbs in sources.items():
        batch = [sid for sid in students if not results[(sid, aid)].failed]
        if not batch:
            continue
        t0 = time.time()
        failures = _autograde(root, aid, batch, course.submission_timeout, root / "logs" / f"autograde--{aid}.log")
        print(f"[grade] {aid}: {len(batch)} submissions autograded in {time.time() - t0:.0f} s")
        for sid in batch:
            res = results[(sid, aid)]
            if sid in failures or not (root / "autograded" / sid / aid).is_dir():
                res.failed = True
                res.notes.append(f"autograding failed: {failures.get(sid, 'no autograded notebook')}: 0 points")
            else:
                for name in nbs:
                    res.notes += [f"{name}.ipynb: {n}" for n in
                                  _timeouts(root / "autograded" / sid / aid / f"{name}.ipynb", course.cell_timeout)]
        graded = [sid for sid in batch if not results[(sid, aid)].failed]
        if graded:
            rc, out = _nbgrader(root, "generate_feedback", aid, "--force",
                                *([f"--CourseDirectory.student_id_exclude={','.join(set(students) - set(graded))}"]
                                  if set(students) - set(graded) else []),
                                log=root / "logs" / f"feedback--{aid}.log")
            if rc != 0:
                print(f"[grade] {aid}: generate_feedback failed (see {root / 'logs' / f'feedback--{aid}.log'})")

    ordered = [results[k] for k in sorted(results)]
    _read_scores(root, ordered, sources)
    for res in ordered:
        if res.notes:
            print(f"[grade] {res.student}/{res.assignment}: {'; '.join(res.notes)}")
    write_tables(ordered, sources, out_dir)
    return ordered


def _read_scores(root: Path, results: list[Result], sources: dict) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    _venv_on_path()
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for res in results:
            for name, src_nb in sources[res.assignment].items():
                for meta in _grade_cells(src_nb):
                    gid = meta["grade_id"]
                    score: float | None = 0.0
                    if not res.failed and gid not in res.zeroed and \
                            (root / "autograded" / res.student / res.assignment / f"{name}.ipynb").is_file():
                        try:
                            g = gb.find_grade(gid, name, res.assignment, res.student)
                            score = None if g.needs_manual_grade and g.manual_score is None else float(g.score)
                        except MissingEntry:
                            score = 0.0
                    res.scores[gid] = score


def _columns(sources: dict) -> list[tuple[str, str, float]]:
    """(assignment, grade_id, max points) in notebook order."""
    cols = []
    for aid, nbs in sources.items():
        for nb in nbs.values():
            cols += [(aid, m["grade_id"], float(m.get("points", 0))) for m in _grade_cells(nb)]
    return cols


def write_tables(results: list[Result], sources: dict, out_dir: Path) -> tuple[Path, Path]:
    cols = _columns(sources)
    multi = len(sources) > 1
    head = [f"{a}/{g}" if multi else g for a, g, _ in cols]
    students = sorted({r.student for r in results})
    by = {(r.student, r.assignment): r for r in results}
    maximum = sum(p for *_, p in cols)

    def row(sid):
        cells, total, notes, pending = [], 0.0, [], False
        for aid, gid, _ in cols:
            s = by[(sid, aid)].scores.get(gid, 0.0) if (sid, aid) in by else 0.0
            pending |= s is None
            total += s or 0.0
            cells.append(s)
        for aid in sources:
            r = by.get((sid, aid))
            if r and r.notes:
                notes.append((f"{aid}: " if multi else "") + "; ".join(r.notes))
        if pending:
            notes.append("written answers not graded yet (nbgrader formgrader)")
        return cells, total, " | ".join(notes)

    def fmt(v):
        return "pending" if v is None else f"{v:g}"

    csv_path, md_path = out_dir / "grades.csv", out_dir / "grades.md"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", *head, "total", "max", "notes"])
        w.writerow(["(max)", *[f"{p:g}" for *_, p in cols], f"{maximum:g}", f"{maximum:g}", ""])
        for sid in students:
            cells, total, notes = row(sid)
            w.writerow([sid, *["" if v is None else f"{v:g}" for v in cells], f"{total:g}", f"{maximum:g}", notes])
    lines = ["| student | " + " | ".join(head) + " | total | notes |",
             "|---|" + "---:|" * len(head) + "---:|---|",
             "| *(max)* | " + " | ".join(f"{p:g}" for *_, p in cols) + f" | {maximum:g} | |"]
    for sid in students:
        cells, total, notes = row(sid)
        lines.append(f"| {sid} | " + " | ".join(fmt(v) for v in cells) + f" | {total:g} | {notes.replace('|', '/')} |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"[grade] {csv_path}\n[grade] {md_path}\n" + "\n".join(lines))
    return csv_path, md_path


# --------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["assignments", "grade"])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="course config (nbgrader config + ASSIGNMENTS)")
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="temporary course root (generated; not committed)")
    ap.add_argument("--submissions", help="grade: DIR/<student>/<assignment>/<notebook>.ipynb")
    ap.add_argument("--out", help="grade: folder for grades.csv / grades.md (default ROOT/grades)")
    ap.add_argument("--profile", help="grade: run every lesson at this profile (e.g. smoke: minutes, not hours)")
    args = ap.parse_args(argv)
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        print("nbgrader is not installed: pip install -e '.[course]'", file=sys.stderr)
        return 2
    course = Course.load(args.config)
    if args.command == "assignments":
        build_assignments(course, Path(args.root))
    else:
        if not args.submissions:
            ap.error("grade needs --submissions DIR")
        if args.profile:
            from wsss_core.profiles import check_profile

            try:
                check_profile(args.profile)
            except ValueError as err:
                ap.error(str(err))
        grade(course, Path(args.root), Path(args.submissions), Path(args.out) if args.out else None, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
