#!/usr/bin/env python
"""README's results section, checked against (or refreshed from) the baseline files.

Every figure of README's "## Results" section is a link to the JSON file that holds it,
``[0.664](benchmarks/baselines/tutorial.json "02_affinitynet_random_walk.rw_miou")``; tests/test_readme.py
fails when a printed value is not the recorded one at its printed precision.

    python benchmarks/readme_figures.py            # list the figures that disagree (exit 1 if any)
    python benchmarks/readme_figures.py --write    # rewrite them from the baselines, same precision

Run ``--write`` after re-recording a baseline (e.g. ``make study``), then read the sentences around every
changed figure: a figure can move enough to change what the sentence claims (the script prints each change).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# [value](path "title"); value may carry a sign and a trailing %, title is "notebook.key" or a dotted path
LINK = re.compile(r'\[([-+−]?\d+(?:\.\d+)?)(%?)\]\(([\w./-]+\.json) "([^"]+)"\)')
BARE = re.compile(r"(?<![\w.\[])0\.\d{2,}(?![\d\]])")


def results_bounds(text: str) -> tuple[int, int]:
    """Start and end offsets of the "## Results" section."""
    start = text.index("\n## Results")
    end = text.find("\n## ", start + 1)
    return start, (end if end > 0 else len(text))


def results_section(text: str) -> str:
    a, b = results_bounds(text)
    return text[a:b]


def walk(cur, parts: list[str]):
    for part in parts:
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def lookup(data: dict, title: str):
    """``notebook.key[.sub…]`` in a baseline's ``metrics`` (``05_eps_saliency.eps_confusion_ratio_per_pair.boat/water``),
    else a dotted path through the JSON (``notebooks.0.seconds``)."""
    nb, _, key = title.partition(".")
    if "metrics" in data and nb in data["metrics"]:
        figures = data["metrics"][nb]   # a baseline records per-pair figures flat: "key_per_pair.boat/water"
        return figures[key] if key in figures else walk(figures, key.split("."))
    return walk(data, title.split("."))


def printed_matches(printed: str, percent: bool, value: float) -> bool:
    text = printed.replace("−", "-")
    decimals = len(text.split(".")[1]) if "." in text else 0
    shown = float(text)
    want = 100 * value if percent else value
    return abs(round(want, decimals) - shown) <= 0.51 * 10 ** -decimals


def reprint(printed: str, percent: bool, value: float) -> str:
    """``value`` printed as ``printed`` was: same decimals, same sign style."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    want = 100 * value if percent else value
    out = f"{want:.{decimals}f}"
    if printed.startswith("+") and want >= 0:
        out = "+" + out
    if printed.startswith("−"):
        out = out.replace("-", "−")
    return out


def refresh(text: str, repo: Path = REPO) -> tuple[str, list[str]]:
    """``text`` with every disagreeing linked figure of the results section rewritten; and one line per change."""
    a, b = results_bounds(text)
    cache: dict[str, dict] = {}
    changes: list[str] = []

    def sub(m: re.Match) -> str:
        printed, pct, path, title = m.groups()
        data = cache.setdefault(path, json.loads((repo / path).read_text()))
        value = float(lookup(data, title))
        if printed_matches(printed, bool(pct), value):
            return m.group(0)
        new = reprint(printed, bool(pct), value)
        changes.append(f"{title}: {printed}{pct} -> {new}{pct}")
        return f'[{new}{pct}]({path} "{title}")'

    return text[:a] + LINK.sub(sub, text[a:b]) + text[b:], changes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite README.md")
    a = ap.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new, changes = refresh(text)
    print("\n".join(changes) if changes else "README's figures agree with the baselines")
    if a.write and changes:
        README.write_text(new, encoding="utf-8")
        print(f"{len(changes)} figures rewritten in {README}: read the sentences around them")
        return 0
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main())
