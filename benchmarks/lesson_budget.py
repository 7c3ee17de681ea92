#!/usr/bin/env python
"""The course's time budget, read off a notebook run: one JSON object with each lesson's first-run seconds.

    make tutorial                                   # from an empty runs/ (rm -rf runs/tutorial first)
    python benchmarks/lesson_budget.py runs/tutorial/summary.json [runs/tutorial07/summary.json] > benchmarks/baselines/lesson_budget.json

Budget (../shared/NOTEBOOKS.md): each lesson ≤ 300 s, the comparison notebook (06) and the real-photo lesson
(07) ≤ 480 s, the seven toy lessons ≤ 2100 s (+ 480 s with 07), measured from an empty run folder on 2 CPU cores. This is a benchmark, not a test: it never fails
on time; ``within_budget`` says how the run fared, and the load average says how busy the machine was.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

BUDGET_S = 300.0
# 07 (real photos, issue 17) fine-tunes an ImageNet backbone on MSRC-v2: 8 min, like the comparison notebook
BUDGET_OVERRIDES_S = {"06_segmentation_and_comparison": 480.0, "07_real_photos": 480.0}
BUDGET_TOTAL_S = 2100.0 + 480.0   # the seven toy lessons (35 min, issue 15) + the real-photo lesson


def budget_of(notebook: str) -> float:
    return BUDGET_OVERRIDES_S.get(notebook, BUDGET_S)


def lesson_budget(summary: dict) -> dict:
    """Per-notebook seconds (the runner's wall time, and the notebook's own ``seconds_total``) against the budget."""
    rows, total = {}, 0.0
    for r in summary.get("notebooks", []):
        nb = r["notebook"]
        if nb.endswith("_study"):
            continue  # the study profile has no time budget
        sec = float(r["seconds"] or 0.0)
        total += sec
        own = (r.get("metrics") or {}).get("seconds_total")
        rows[nb] = {"seconds": sec, "seconds_total": own, "budget_s": budget_of(nb), "ok": r.get("ok", False),
                    "within_budget": bool(r.get("ok")) and sec <= budget_of(nb)}
    return {"profile": summary.get("profile"), "notebooks": rows, "total_s": round(total, 1),
            "total_budget_s": BUDGET_TOTAL_S,
            "within_budget": all(v["within_budget"] for v in rows.values()) and total <= BUDGET_TOTAL_S}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summary", nargs="+", help="summary.json written by python -m wsss_core.notebooks (several: "
                    "runs of different notebooks, e.g. runs/tutorial and a run of 07 alone; a later file wins)")
    a = ap.parse_args(argv)
    merged: dict = {"notebooks": []}
    for name in a.summary:
        p = Path(name)
        if not p.is_file():
            print(f"{p}: no such file (run `make tutorial` first)", file=sys.stderr)
            return 2
        summary = json.loads(p.read_text())
        seen = {r["notebook"] for r in summary.get("notebooks", [])}
        merged["notebooks"] = [r for r in merged["notebooks"] if r["notebook"] not in seen] + summary.get("notebooks", [])
        merged["profile"] = summary.get("profile")
    out = lesson_budget(merged)
    out["made_by"] = (f"python benchmarks/lesson_budget.py {' '.join(a.summary)} "
                      "(the runner's summaries of runs from empty folders)")
    out["made_on"] = datetime.date.today().isoformat()
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
                      "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
