"""README's results agree with the baseline files (issue 15): every figure of the "## Results" section is a
link to the JSON file that holds it, ``[0.664](benchmarks/baselines/tutorial.json "02_affinitynet_random_walk.rw_miou")``,
and the printed value is the recorded one at the printed precision. A bare 0.ddd figure in that section fails
(papers' VOC numbers are written in percent, e.g. "PSA 61.7", and are not ours to check)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# [value](path "title"); value may carry a sign and a trailing %, title is "notebook.key" or a dotted path
LINK = re.compile(r'\[([-+−]?\d+(?:\.\d+)?)(%?)\]\(([\w./-]+\.json) "([^"]+)"\)')
BARE = re.compile(r"(?<![\w.\[])0\.\d{2,}(?![\d\]])")


def results_section(text: str) -> str:
    start = text.index("\n## Results")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


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


def test_link_check_catches_a_wrong_figure():
    assert printed_matches("0.664", False, 0.66412)
    assert not printed_matches("0.665", False, 0.66412)
    assert printed_matches("66.4", True, 0.66412)
    assert printed_matches("179", False, 178.8)
    assert not printed_matches("0.66", False, 0.671)
    assert lookup({"metrics": {"02_rw": {"rw_miou": 0.5}}}, "02_rw.rw_miou") == 0.5
    assert lookup({"notebooks": [{"seconds": 3}]}, "notebooks.0.seconds") == 3
    assert lookup({"metrics": {"05": {"per_pair": {"boat/water": 0.1}}}}, "05.per_pair.boat/water") == 0.1
    assert BARE.findall("CAM 0.553 and [0.664](x.json \"a.b\") PSA 61.7") == ["0.553"]


def test_readme_results_are_linked_to_the_baselines():
    section = results_section(README.read_text(encoding="utf-8"))
    links = LINK.findall(section)
    assert len(links) >= 20, f"the results section links only {len(links)} figures to the baseline files"
    cache: dict[str, dict] = {}
    wrong = []
    for printed, pct, path, title in links:
        f = REPO / path
        assert f.is_file(), f"README links {path}, which does not exist"
        data = cache.setdefault(path, json.loads(f.read_text()))
        try:
            value = lookup(data, title)
        except (KeyError, IndexError, ValueError):
            wrong.append(f"{printed}: {path} has no {title!r}")
            continue
        if not printed_matches(printed, bool(pct), float(value)):
            wrong.append(f"{printed}{pct}: {path} {title} is {value}")
    assert not wrong, "README figures that disagree with the baseline files:\n" + "\n".join(wrong)
    bare = BARE.findall(LINK.sub("", section))
    assert not bare, f"figures in README's results without a link to a baseline file: {bare}"
