"""Run the notebooks with papermill and gather their metrics.

    python -m wsss_core.notebooks --profile smoke --out runs/smoke
    python -m wsss_core.notebooks --profile tutorial --out runs/tutorial --only 01
    python -m wsss_core.notebooks --profile smoke --out runs/smoke --baseline benchmarks/baselines/smoke.json
    python -m wsss_core.notebooks --profile tutorial --out runs/tutorial --write-baseline benchmarks/baselines/tutorial.json

Each notebook ``notebooks/NN_name.ipynb`` is executed with the parameters ``PROFILE``, ``OUT_DIR``,
``SEED`` and ``DEVICE`` injected; it writes ``OUT_DIR/NN_name/metrics.json`` (with ``seconds_total``, its
own wall time). The executed copy goes to ``OUT_DIR/NN_name.ipynb`` and, readable without Jupyter, to
``OUT_DIR/NN_name/NN_name.html``. ``--profile study`` runs the lessons *and* the study notebooks
(``notebooks/study/``), the experiments behind the lessons' claims; ``--study`` adds the study notebooks to
any other profile (``make test`` runs them at ``smoke``). The runner writes ``OUT_DIR/summary.json`` and
``OUT_DIR/summary.md`` (time per notebook, links to the HTML copies) and exits non-zero if a notebook
failed, a metrics file is missing, or (with ``--baseline``) a metric moved beyond its tolerance in the bad
direction.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from ..profiles import PROFILE_NAMES


def find_notebooks_dir(explicit: str | None = None) -> Path:
    """The folder of numbered notebooks: ``explicit``, else the repository's ``notebooks/`` next
    to the installed package (editable installs), else ``./notebooks``."""
    if explicit:
        p = Path(explicit)
        if not p.is_dir():
            raise SystemExit(f"notebooks folder {p} does not exist")
        return p.resolve()
    for cand in (Path(__file__).resolve().parents[2] / "notebooks", Path.cwd() / "notebooks"):
        if cand.is_dir() and any(cand.glob("[0-9][0-9]_*.ipynb")):
            return cand
    raise SystemExit("cannot find the notebooks/ folder; pass --notebooks DIR")


def list_notebooks(nb_dir: Path, only: list[str] | None = None, study: bool = False) -> list[Path]:
    """The numbered lessons of ``nb_dir`` (and, with ``study``, those of ``nb_dir/study`` after them);
    ``only`` keeps the names or prefixes given (``04`` takes the lesson and its study notebook)."""
    nbs = sorted(nb_dir.glob("[0-9][0-9]_*.ipynb"))
    if study:
        nbs += sorted((nb_dir / "study").glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.stem == o or p.stem.startswith(o) for o in only)]
        if not nbs:
            known = ", ".join(p.stem for p in sorted(nb_dir.glob("[0-9][0-9]_*.ipynb")))
            raise SystemExit(f"--only {' '.join(only)}: no notebook matches in {nb_dir} (known: {known})")
    return nbs


def write_html(executed: Path, target: Path) -> Path | None:
    """The executed notebook as one self-contained HTML page (nbconvert), or None if nbconvert fails."""
    try:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_filename(str(executed))
    except Exception as e:  # a report must not fail the run
        print(f"[wsss]   (no HTML copy of {executed.name}: {type(e).__name__}: {e})", file=sys.stderr)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body, encoding="utf-8")
    return target


def execute_notebook(nb: Path, out_dir: Path, profile: str, seed: int = 0, device: str = "auto",
                     timeout: int | None = None, extra: dict | None = None, kernel: str | None = None) -> dict:
    """Execute one notebook with papermill; returns ``{"notebook", "ok", "seconds", "error", "metrics"}``."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(PROFILE=profile, OUT_DIR=str(out_dir.resolve()), SEED=seed, DEVICE=device, **(extra or {}))
    # the notebooks here are the instructor copies (nbgrader solution regions filled in): a graded exercise whose
    # solution or hidden test fails must fail the run (wsss_core.grading.strict), not print and go on
    # (set for the kernel only: this process may go on to grade student work, which must not be strict)
    strict_before = os.environ.get("WSSS_STRICT_TESTS")
    os.environ.setdefault("WSSS_STRICT_TESTS", "1")
    os.environ.setdefault("WSSS_STATIC_WIDGETS", "1")  # executed copies keep static figures only
    # OpenMP threads that sleep instead of spinning while they wait: on 2 cores shared with other work, torch's
    # two spinning threads made training 3-4x slower (2 epochs of notebook 01: 150 s vs 42 s at load 8-10);
    # the kernels inherit it, and it changes no result
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t0 = time.perf_counter()
    rec = {"notebook": nb.stem, "ok": False, "seconds": None, "error": None, "metrics": None, "html": None}
    metrics_path = out_dir / nb.stem / "metrics.json"
    if metrics_path.exists():
        metrics_path.unlink()  # never report a previous run's numbers
    try:
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, cwd=str(nb.parent),
                            kernel_name=kernel or "python3", progress_bar=False, log_output=False,
                            execution_timeout=timeout, request_save_on_cell_execute=False)
        rec["ok"] = True
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
        rec["error"] = f"{type(e).__name__}: {str(e)[-3000:]}"
    finally:
        if strict_before is None:
            os.environ.pop("WSSS_STRICT_TESTS", None)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    if (out_dir / nb.name).is_file():  # also a failed run: its HTML shows where it stopped
        html = write_html(out_dir / nb.name, out_dir / nb.stem / f"{nb.stem}.html")
        rec["html"] = str(html.relative_to(out_dir)) if html else None
    if metrics_path.is_file():
        rec["metrics"] = json.loads(metrics_path.read_text())
    elif rec["ok"]:
        rec["ok"] = False
        rec["error"] = f"{metrics_path} was not written"
    return rec


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "…"
    return str(v)


def summary_markdown(records: list[dict], profile: str) -> str:
    lines = [f"# Notebook run — profile `{profile}`", "",
             "| notebook | status | seconds (runner) | `seconds_total` (notebook) | executed copy |",
             "|---|---|---|---|---|"]
    for r in records:
        own = (r["metrics"] or {}).get("seconds_total", "–")
        link = f"[html]({r['html']})" if r.get("html") else "–"
        lines.append(f"| {r['notebook']} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']} | {own} | {link} |")
    total = sum(r["seconds"] or 0 for r in records)
    lines += ["", f"All {len(records)} notebooks: {total:.0f} s ({total / 60:.1f} min)."]
    for r in records:
        if r["metrics"]:
            lines += ["", f"## {r['notebook']}", "", "| metric | value |", "|---|---|"]
            lines += [f"| `{k}` | {_fmt(v)} |" for k, v in r["metrics"].items() if not isinstance(v, (dict, list))]
        if r["error"]:
            lines += ["", f"**{r['notebook']} failed:**", "", "```", r["error"][-1500:], "```"]
    return "\n".join(lines) + "\n"


def compare_to_baseline(records: list[dict], baseline: dict, default_tol: float) -> list[str]:
    """Regressions against a baseline ``{"metrics": {nb: {key: value}}, "tolerances": {key: tol},
    "lower_is_better": [keys]}``. A metric regresses when it is worse than the baseline by more
    than its absolute tolerance (``default_tol`` unless listed); a missing metric is a regression unless
    the baseline lists it under ``"optional"`` (figures that need ``../shared/data``). A notebook whose metrics
    say ``"skipped": "<reason>"`` (all its figures need data that is absent) is not checked."""
    problems = []
    tols = baseline.get("tolerances", {})
    lower = set(baseline.get("lower_is_better", []))
    optional = set(baseline.get("optional", []))
    got = {r["notebook"]: (r["metrics"] or {}) for r in records}
    for nb, expected in baseline.get("metrics", {}).items():
        if nb not in got:
            continue  # not run this time (--only)
        if got[nb].get("skipped"):   # e.g. 07_real_photos where ../shared/data is absent: it says why
            print(f"[wsss] {nb}: not checked against the baseline: skipped ({got[nb]['skipped']})", file=sys.stderr)
            continue
        for key, ref in expected.items():
            tol = float(tols.get(key, default_tol))
            val = metric_value(got[nb], key)
            if val is None or (isinstance(val, float) and math.isnan(val)):
                if key not in optional:
                    problems.append(f"{nb}.{key}: missing (baseline {ref})")
                continue
            worse = (val - ref) if key in lower else (ref - val)
            if worse > tol:
                problems.append(f"{nb}.{key}: {val:.4g} vs baseline {ref:.4g} (tolerance {tol:g})")
    return problems


HIGHER_IS_BETTER = ("miou", "map", "recall", "precision", "iou", "max_f", "boundary_f", "ratio_", "_ratio", "accuracy")
LOWER_IS_BETTER = ("leak", "confusion_ratio", "mae", "error")
REAL_DATA_KEYS = ("grabcut_benchmark", "horse_")   # written only where ../shared/data exists


def flat_figures(metrics: dict) -> dict:
    """A notebook's numeric figures, one level flat: ``{"cam_miou": 0.57, "cam_confusion_ratio_per_pair.boat/water": 0.38}``.
    Per-pair dicts (keys ending in ``_per_pair``, e.g. EPS's confusion ratio of each class/context pair) carry
    a lesson's claim as much as the pooled figure, so they are recorded as ``key.pair``."""
    out = {}
    for key, val in metrics.items():
        if key.endswith("_per_pair") and isinstance(val, dict):
            out.update({f"{key}.{sub}": v for sub, v in val.items()})
        else:
            out[key] = val
    return out


def metric_value(metrics: dict, key: str):
    """``metrics[key]``, or for ``key.pair`` (see :func:`flat_figures`) ``metrics[key][pair]``; None if absent."""
    if key in metrics:
        return metrics[key]
    base, _, sub = key.partition(".")
    inner = metrics.get(base) if sub else None
    return inner.get(sub) if isinstance(inner, dict) else None


def quality_direction(key: str) -> str | None:
    """``"lower"``, ``"higher"`` or None (not a quality figure: timings, counts, thresholds, settings).
    Decided by the key's name, lower-is-better patterns first (``cam_confusion_ratio`` is lower)."""
    k = key.lower()
    if any(t in k for t in ("seconds", "per_second", "time", "threshold")) or k.startswith("n_") or "_n_" in k:
        return None
    if any(t in k for t in LOWER_IS_BETTER):
        return "lower"
    if any(t in k for t in HIGHER_IS_BETTER):
        return "higher"
    return None


def merge_baselines(old: dict, new: dict, ran) -> dict:
    """Re-record ``new`` over ``old``: the notebooks that ran (``ran``) take ``new``'s figures, the others
    (a run with ``--only``, or one stopped half-way) keep ``old``'s; hand-tuned per-key tolerances of keys
    still present and ``old``'s note survive; ``lower_is_better`` / ``optional`` cover the keys of both.
    ``sources`` says, per notebook, which command and date made its figures (``made_by`` / ``made_on`` at the
    top: the latest run)."""
    ran = set(ran)
    out = dict(new)
    metrics = {nb: m for nb, m in old.get("metrics", {}).items() if nb not in ran}
    metrics.update(new.get("metrics", {}))
    out["metrics"] = dict(sorted(metrics.items()))
    keys = {k for m in metrics.values() for k in m}
    out["tolerances"] = {k: v for k, v in old.get("tolerances", {}).items() if k in keys}
    for field in ("lower_is_better", "optional"):
        out[field] = sorted(k for k in set(old.get(field, [])) | set(new.get(field, [])) if k in keys)
    if "note" in old:
        out["note"] = old["note"]
    old_src = old.get("sources", {})
    sources = {nb: old_src.get(nb, {"made_by": old.get("made_by"), "made_on": old.get("made_on")})
               for nb in metrics if nb not in ran}
    sources.update({nb: {"made_by": new.get("made_by"), "made_on": new.get("made_on")} for nb in new.get("metrics", {})})
    out["sources"] = dict(sorted(sources.items()))
    return out


def make_baseline(records: list[dict], profile: str, tolerance: float, command: str | None = None) -> dict:
    """A baseline from a run's records: every numeric top-level metric whose name says it is a quality
    figure (:func:`quality_direction`), one absolute ``tolerance`` for all (edit the file to tune keys)."""
    import datetime
    import platform

    metrics, lower, optional = {}, set(), set()
    for r in records:
        for key, val in flat_figures(r.get("metrics") or {}).items():
            if isinstance(val, bool) or not isinstance(val, (int, float)) or math.isnan(float(val)):
                continue
            d = quality_direction(key)
            if d is None:
                continue
            metrics.setdefault(r["notebook"], {})[key] = round(float(val), 6)
            if d == "lower":
                lower.add(key)
            if any(t in key for t in REAL_DATA_KEYS):
                optional.add(key)
    return {"profile": profile, "made_by": command or f"python -m wsss_core.notebooks --profile {profile}",
            "made_on": f"{datetime.date.today().isoformat()}, {platform.machine()}, python {platform.python_version()}",
            "default_tolerance": tolerance, "tolerances": {}, "lower_is_better": sorted(lower),
            "optional": sorted(optional), "metrics": metrics}


def write_baseline(path: Path, records: list[dict], profile: str, tolerance: float | None, argv) -> None:
    """Merge the quality figures of ``records`` (notebooks that ran to the end) into the baseline ``path``:
    their keys are re-recorded; other notebooks, hand-tuned per-key tolerances and notes are kept."""
    cmd = "python -m wsss_core.notebooks " + " ".join(argv if argv is not None else sys.argv[1:])
    base = make_baseline(records, profile, tolerance if tolerance is not None else 0.02, cmd)
    if path.is_file():
        base = merge_baselines(json.loads(path.read_text()), base, ran=[r["notebook"] for r in records])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(base, indent=2) + "\n")
    tmp.replace(path)  # never a half-written baseline


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wsss_core.notebooks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke", help=f"one of {', '.join(PROFILE_NAMES)}")
    ap.add_argument("--study", action="store_true",
                    help="also run the study notebooks (notebooks/study/); implied by --profile study")
    ap.add_argument("--out", required=True, help="output folder (executed notebooks, metrics, summary)")
    ap.add_argument("--only", nargs="*", help="notebook names or prefixes, e.g. 00 01")
    ap.add_argument("--notebooks", help="folder holding the notebooks (default: the repository's notebooks/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--kernel", default=None, help="Jupyter kernel name (default python3)")
    ap.add_argument("--baseline", help="JSON baseline; fail on regressions beyond tolerance")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="default absolute tolerance (default: the baseline's default_tolerance, else 0.02)")
    ap.add_argument("--write-baseline", metavar="FILE", help="after a successful run, write its quality metrics as a baseline")
    ap.add_argument("--keep-going", action="store_true", help="run later notebooks after a failure")
    a = ap.parse_args(argv)
    if a.profile not in PROFILE_NAMES:
        ap.error(f"unknown profile {a.profile!r}; the profiles are: {', '.join(PROFILE_NAMES)}")

    out = Path(a.out)
    nbs = list_notebooks(find_notebooks_dir(a.notebooks), a.only, study=a.study or a.profile == "study")
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for nb in nbs:
        print(f"[wsss] running {nb.name} (profile {a.profile}) ...", flush=True)
        rec = execute_notebook(nb, out, a.profile, seed=a.seed, device=a.device, timeout=a.timeout, kernel=a.kernel)
        records.append(rec)
        status = "ok" if rec["ok"] else "FAILED"
        print(f"[wsss]   {status} in {rec['seconds']} s", flush=True)
        if a.write_baseline and rec["ok"]:  # notebook by notebook: a long run stopped half-way keeps what it made
            write_baseline(Path(a.write_baseline), [rec], a.profile, a.tolerance, argv)
        if not rec["ok"]:
            print(rec["error"], file=sys.stderr)
            if not a.keep_going:
                break
    summary = {"profile": a.profile, "notebooks": records,
               "metrics": {r["notebook"]: r["metrics"] for r in records if r["metrics"]}}
    failed = [r["notebook"] for r in records if not r["ok"]]
    if a.baseline:
        base = json.loads(Path(a.baseline).read_text())
        tol = a.tolerance if a.tolerance is not None else float(base.get("default_tolerance", 0.02))
        regressions = compare_to_baseline(records, base, tol)
        summary["regressions"] = regressions
        for p in regressions:
            print(f"[wsss] REGRESSION {p}", file=sys.stderr)
    else:
        regressions = []
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(records, a.profile))
    print(f"[wsss] summary: {out / 'summary.md'}")
    if a.write_baseline:
        done = [r["notebook"] for r in records if r["ok"]]
        print(f"[wsss] baseline {a.write_baseline}: figures of {len(done)} of {len(nbs)} notebooks recorded"
              + (f"; not recorded: {', '.join(p.stem for p in nbs if p.stem not in done)}" if len(done) < len(nbs) else ""))
    return 1 if failed or regressions or len(records) < len(nbs) else 0
