"""README's results agree with the baseline files (issue 15): every figure of the "## Results" section is a
link to the JSON file that holds it, ``[0.664](benchmarks/baselines/tutorial.json "02_affinitynet_random_walk.rw_miou")``,
and the printed value is the recorded one at the printed precision. A bare 0.ddd figure in that section fails
(papers' VOC numbers are written in percent, e.g. "PSA 61.7", and are not ours to check)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_spec = importlib.util.spec_from_file_location("readme_figures", REPO / "benchmarks" / "readme_figures.py")
_rf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rf)
LINK, BARE, results_section, lookup, printed_matches = _rf.LINK, _rf.BARE, _rf.results_section, _rf.lookup, _rf.printed_matches


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


def test_refresh_rewrites_a_stale_figure_at_its_precision(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"metrics": {"04": {"m": 0.71994, "g": -2.14}}}))
    text = ('x\n## Results\nBox2Seg [0.743](b.json "04.m"), [74%](b.json "04.m"), gain [−2.1](b.json "04.g") '
            '[+0.720](b.json "04.m")\n## Next\n[0.1](b.json "04.m")')
    new, changes = _rf.refresh(text, tmp_path)
    assert new == ('x\n## Results\nBox2Seg [0.720](b.json "04.m"), [72%](b.json "04.m"), gain [−2.1](b.json "04.g") '
                   '[+0.720](b.json "04.m")\n## Next\n[0.1](b.json "04.m")')   # outside the section: untouched
    assert changes == ["04.m: 0.743 -> 0.720", "04.m: 74% -> 72%"]


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
