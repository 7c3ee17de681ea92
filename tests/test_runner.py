"""The papermill notebook runner and the `wsss` CLI, on tiny notebooks and trees built here."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from wsss_core import cli
from wsss_core.notebooks import compare_to_baseline, main as runner_main, merge_baselines

pytestmark = pytest.mark.slow


def _notebook(path: Path, body: str) -> None:
    params = new_code_cell('PROFILE = "tutorial"\nOUT_DIR = "out"\nSEED = 0\nDEVICE = "auto"')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


WRITE_METRICS = """
import json, pathlib, os
out = pathlib.Path(OUT_DIR) / "{name}"
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({{"score": 0.8 if PROFILE == "smoke" else 0.9, "seed": SEED,
    "strict": os.environ.get("WSSS_STRICT_TESTS"), "static": os.environ.get("WSSS_STATIC_WIDGETS")}}))
"""


def test_runner_executes_gathers_and_fails_on_error(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_good.ipynb", WRITE_METRICS.format(name="00_good"))
    _notebook(nbs / "01_bad.ipynb", "raise RuntimeError('boom')")
    out = tmp_path / "runs"
    rc = runner_main(["--profile", "smoke", "--out", str(out), "--notebooks", str(nbs), "--keep-going"])
    assert rc == 1  # one notebook failed
    summary = json.loads((out / "summary.json").read_text())
    recs = {r["notebook"]: r for r in summary["notebooks"]}
    assert recs["00_good"]["ok"] and not recs["01_bad"]["ok"]
    assert "boom" in recs["01_bad"]["error"]
    # parameters were injected (profile, seed); the kernel runs with strict grading tests and static widgets
    assert summary["metrics"]["00_good"] == {"score": 0.8, "seed": 0, "strict": "1", "static": "1"}
    assert (out / "00_good.ipynb").is_file()
    md = (out / "summary.md").read_text()
    assert "00_good" in md and "FAILED" in md and "`score`" in md


def test_runner_ok_and_baseline_regression(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_good.ipynb", WRITE_METRICS.format(name="00_good"))
    out = tmp_path / "runs"
    assert runner_main(["--profile", "smoke", "--out", str(out), "--notebooks", str(nbs)]) == 0
    # the smoke score is 0.8: a baseline of 0.81 passes at tolerance 0.02, one of 0.9 fails
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"metrics": {"00_good": {"score": 0.81}}}))
    assert runner_main(["--profile", "smoke", "--out", str(out), "--notebooks", str(nbs),
                        "--baseline", str(ok), "--tolerance", "0.02"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metrics": {"00_good": {"score": 0.9}}}))
    assert runner_main(["--profile", "smoke", "--out", str(out), "--notebooks", str(nbs),
                        "--baseline", str(bad), "--tolerance", "0.02"]) == 1
    assert "00_good.score" in json.loads((out / "summary.json").read_text())["regressions"][0]


def test_compare_to_baseline_directions_and_missing():
    recs = [{"notebook": "01", "metrics": {"miou": 0.50, "leak": 0.30}}]
    base = {"metrics": {"01": {"miou": 0.55, "leak": 0.20, "gone": 1.0}}, "lower_is_better": ["leak"],
            "tolerances": {"miou": 0.1}}
    probs = compare_to_baseline(recs, base, default_tol=0.05)
    # miou dropped 0.05 ≤ its own tolerance 0.1: fine; leak rose 0.10 > 0.05: regression; gone: missing
    assert len(probs) == 2
    assert any(p.startswith("01.leak") for p in probs) and any(p.startswith("01.gone: missing") for p in probs)


def test_per_pair_figures_are_recorded_and_checked():
    from wsss_core.notebooks import make_baseline

    rec = {"notebook": "05", "metrics": {"eps_confusion_ratio_per_pair": {"boat/water": 0.12, "train/rails": 0.08},
                                         "eps_miou": 0.68, "cam_miou_per_pair": "not a dict"}}
    base = make_baseline([rec], "tutorial", 0.03)
    assert base["metrics"]["05"] == {"eps_confusion_ratio_per_pair.boat/water": 0.12,
                                     "eps_confusion_ratio_per_pair.train/rails": 0.08, "eps_miou": 0.68}
    assert "eps_confusion_ratio_per_pair.boat/water" in base["lower_is_better"]
    assert compare_to_baseline([rec], base, 0.03) == []
    worse = {"notebook": "05", "metrics": {"eps_confusion_ratio_per_pair": {"boat/water": 0.2, "train/rails": 0.08},
                                           "eps_miou": 0.68}}
    assert compare_to_baseline([worse], base, 0.03) == [
        "05.eps_confusion_ratio_per_pair.boat/water: 0.2 vs baseline 0.12 (tolerance 0.03)"]
    gone = {"notebook": "05", "metrics": {"eps_miou": 0.68}}
    assert len(compare_to_baseline([gone], base, 0.03)) == 2


def test_a_notebook_that_skipped_for_missing_data_is_not_a_regression(capsys):
    base = {"metrics": {"07": {"cam_miou": 0.55}, "01": {"cam_miou": 0.5}}}
    recs = [{"notebook": "07", "metrics": {"skipped": "MSRC-v2 not found at /x", "cam_miou": None}},
            {"notebook": "01", "metrics": {"skipped": None}}]
    assert compare_to_baseline(recs, base, 0.02) == ["01.cam_miou: missing (baseline 0.5)"]
    assert "07: not checked against the baseline: skipped (MSRC-v2 not found at /x)" in capsys.readouterr().err


def test_cli_generates_and_validates_toy_tree(tmp_path, capsys):
    from wsss_core.data.toyscenes import ToySceneConfig, ensure_toyscenes

    root = tmp_path / "toy"
    ensure_toyscenes(root, ToySceneConfig(n_train=6, n_val=3), workers=1, progress=False)
    assert cli.main(["data", "validate", str(root), "--split", "val"]) == 0
    assert "3 items" in capsys.readouterr().out
    (root / "JPEGImages" / "toy_000007.jpg").write_bytes(b"not a jpeg")
    # a bad file: exit status 1 and one line naming it (no traceback)
    assert cli.main(["data", "validate", str(root), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "toy_000007.jpg: cannot read image" in err and "Traceback" not in err


def test_rerecording_one_notebook_keeps_the_others():
    old = {"metrics": {"00": {"miou": 0.5, "leak": 0.2}, "01": {"miou": 0.6, "old_key": 0.1}},
           "tolerances": {"leak": 0.05, "old_key": 0.2, "gone": 0.3}, "lower_is_better": ["leak"],
           "optional": ["horse_iou"], "note": "hand-written", "made_by": "x"}
    new = {"metrics": {"01": {"miou": 0.7, "horse_iou": 0.4}}, "tolerances": {}, "lower_is_better": [],
           "optional": ["horse_iou"], "made_by": "run --only 01"}
    got = merge_baselines(old, new, ran=["01"])
    # 00 kept as it was, 01 replaced (its dropped key and that key's tolerance go)
    assert got["metrics"] == {"00": {"miou": 0.5, "leak": 0.2}, "01": {"miou": 0.7, "horse_iou": 0.4}}
    assert got["tolerances"] == {"leak": 0.05}
    assert got["lower_is_better"] == ["leak"] and got["optional"] == ["horse_iou"]
    assert got["note"] == "hand-written" and got["made_by"] == "run --only 01"
    # each notebook says which run made its figures
    assert got["sources"] == {"00": {"made_by": "x", "made_on": None}, "01": {"made_by": "run --only 01", "made_on": None}}
    again = merge_baselines(got, {"metrics": {"02": {"miou": 0.1}}, "made_by": "y", "made_on": "d"}, ran=["02"])
    assert again["sources"]["00"]["made_by"] == "x" and again["sources"]["02"] == {"made_by": "y", "made_on": "d"}
    # a full run replaces everything
    full = merge_baselines(old, {"metrics": {"00": {"miou": 0.9}}, "made_by": "all"}, ran=["00", "01"])
    assert full["metrics"] == {"00": {"miou": 0.9}} and full["made_by"] == "all"
    assert full["sources"] == {"00": {"made_by": "all", "made_on": None}}


def test_runner_writes_html_links_it_and_runs_study_notebooks(tmp_path):
    nbs = tmp_path / "nbs"
    (nbs / "study").mkdir(parents=True)
    _notebook(nbs / "00_good.ipynb", WRITE_METRICS.format(name="00_good"))
    _notebook(nbs / "study" / "00_good_study.ipynb", WRITE_METRICS.format(name="00_good_study"))
    out = tmp_path / "runs"
    assert runner_main(["--profile", "smoke", "--out", str(out), "--notebooks", str(nbs)]) == 0
    assert not (out / "00_good_study").exists()  # lessons only, unless --study or --profile study
    assert runner_main(["--profile", "study", "--out", str(out), "--notebooks", str(nbs)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["notebook"] for r in summary["notebooks"]] == ["00_good", "00_good_study"]
    assert summary["metrics"]["00_good_study"]["score"] == 0.9  # PROFILE="study" was injected
    html = out / "00_good" / "00_good.html"
    assert html.is_file() and "<html" in html.read_text()[:2000].lower()
    assert "[html](00_good/00_good.html)" in (out / "summary.md").read_text()


def test_runner_rejects_unknown_profile_and_empty_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        runner_main(["--profile", "tutorail", "--out", str(tmp_path / "r")])
    assert e.value.code == 2 and "smoke, tutorial, study, paper" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_good.ipynb", WRITE_METRICS.format(name="00_good"))
    with pytest.raises(SystemExit, match="--only 99: no notebook matches .*known: 00_good"):
        runner_main(["--profile", "smoke", "--out", str(tmp_path / "r"), "--notebooks", str(nbs), "--only", "99"])


def test_lesson_setup_and_finish(tmp_path, capsys):
    from wsss_core import lesson

    with pytest.raises(ValueError, match="the profiles are: smoke, tutorial, study, paper"):
        lesson.setup("00_x", "tutorail", tmp_path)
    root = tmp_path / "toy"
    from wsss_core.data.toyscenes import ToySceneConfig, ensure_toyscenes

    ensure_toyscenes(root, ToySceneConfig(n_train=4, n_val=2), workers=1, progress=False)
    L = lesson.setup("00_x", "smoke", tmp_path / "runs", data_root=root, device="cpu", seed=3)
    out = capsys.readouterr().out
    assert "profile smoke, seed 3, device cpu" in out and L.out.is_dir() and L.toy
    from wsss_core.engine import TrainConfig

    tc = L.train(TrainConfig(epochs=5), epochs=2)
    assert (tc.seed, tc.device, tc.epochs) == (3, "cpu", 2)
    m = json.loads(lesson.finish(L, {"a": 0.5}).read_text())
    assert m["a"] == 0.5 and 0 <= m["seconds_total"] < 600


def test_study_figure_reads_value_and_provenance(tmp_path):
    from wsss_core import lesson

    p = tmp_path / "study.json"
    p.write_text(json.dumps({"profile": "study", "made_by": "make study", "made_on": "2026-12-05",
                             "metrics": {"04_x_study": {"k": 0.5}},
                             "sources": {"04_x_study": {"made_by": "older run", "made_on": "2026-12-03"}}}))
    f = lesson.study_figure("04_x_study", "k", path=p)
    assert f == {"value": 0.5, "made_by": "older run", "made_on": "2026-12-03", "profile": "study"}
    assert lesson.study_figure("04_x_study", "absent", path=p)["value"] is None
    assert lesson.study_figure("04_x_study", "k", path=tmp_path / "none.json")["value"] is None


def test_lesson_budget_benchmark_reads_a_summary():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lesson_budget", Path(__file__).parents[1] / "benchmarks" / "lesson_budget.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary = {"profile": "tutorial", "notebooks": [
        {"notebook": "01_x", "ok": True, "seconds": 250.0, "metrics": {"seconds_total": 249.0}},
        {"notebook": "06_segmentation_and_comparison", "ok": True, "seconds": 400.0, "metrics": {}},
        {"notebook": "02_y", "ok": True, "seconds": 301.0, "metrics": None},
        {"notebook": "04_z_study", "ok": True, "seconds": 9999.0, "metrics": None}]}
    got = mod.lesson_budget(summary)
    assert got["total_s"] == 951.0  # the study notebook has no budget and is not counted
    nb = got["notebooks"]
    assert nb["01_x"]["within_budget"] and nb["01_x"]["seconds_total"] == 249.0
    assert nb["06_segmentation_and_comparison"]["within_budget"]  # 400 s ≤ its own 480 s
    assert not nb["02_y"]["within_budget"] and not got["within_budget"]
