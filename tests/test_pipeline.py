"""The stage contract (wsss_core/stages/pipeline.py) and ``wsss run STAGE``."""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
from pathlib import Path

import pytest

from wsss_core import cli, comparison
from wsss_core.stages import pipeline

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_every_stage_declares_a_runnable_contract():
    """Each stage names a module with the contract's parts, inputs that are stages (or the label
    input), and outputs that are fields of the result its ``run`` returns."""
    results = {"cam": "CAMStageResult", "affinity": "AffinityStageResult", "edam": "EDAMStageResult",
               "eps": "EPSStageResult", "box2seg": "Box2SegStageResult", "segmentation": "SegResult"}
    assert list(pipeline.STAGES) == list(results)
    for name, st in pipeline.STAGES.items():
        mod = importlib.import_module(st.module)
        assert mod.STAGE == name and isinstance(mod.FORMAT_VERSION, int) and callable(mod.run)
        assert (NOTEBOOKS / f"{mod.NOTEBOOK}.ipynb").is_file(), mod.NOTEBOOK  # the lesson that teaches it
        assert set(st.inputs) <= set(pipeline.STAGES) | {"labels"}
        fields = {f.name for f in dataclasses.fields(getattr(mod, results[name]))}
        assert set(st.outputs) <= fields, (name, set(st.outputs) - fields)
        assert st.preset("smoke") is not None
    for method, where in pipeline.LABEL_SOURCES.items():
        if where is not None:
            mod = pipeline.STAGES[where[0]].load()
            assert where[1] in {f.name for f in dataclasses.fields(getattr(mod, results[where[0]]))}, method
    assert set(pipeline.LABEL_SOURCES) == set(comparison.METHODS)  # one row of notebook 06 per source


def test_run_config_applies_hook_then_seed_and_device():
    seen = []

    def hook(name, cfg):
        seen.append(name)
        return cfg.replace(train=cfg.train.replace(epochs=7, seed=99)) if hasattr(cfg, "train") else cfg

    run = pipeline.Run("smoke", "/nonexistent", seed=3, device="cpu", config_hook=hook)
    cfg = run.cfg("affinity")
    assert (cfg.train.epochs, cfg.train.seed, cfg.train.device) == (7, 3, "cpu")  # the run's seed wins
    assert run.cfg("box2seg") is not None and seen == ["affinity", "box2seg"]
    assert run.out_dir("edam").name == "03_edam" and run.out_dir("segmentation").name == "06_segmentation_and_comparison"


def test_unknown_names_are_listed():
    with pytest.raises(KeyError, match=r"unknown stage 'affinty'; the stages are: cam, affinity, edam, eps, box2seg"):
        pipeline.stage("affinty")
    with pytest.raises(KeyError, match=r"unknown pseudo-label source 'crf'; known: cam, affinity_rw"):
        pipeline.Run("smoke", "/nonexistent", labels_from="crf")
    with pytest.raises(ValueError, match=r"unknown profile 'huge'"):
        pipeline.Run("huge", "/nonexistent")
    assert pipeline.Run("smoke", "/nonexistent").labels("full") is None  # the true masks: nothing runs


@pytest.mark.bad_input
def test_wsss_run_unknown_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "affinty", "--profile", "smoke", "--out", "out"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument stage: invalid choice: 'affinty'" in err and "'cam', 'affinity', 'edam'" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_wsss_run_eps_runs_its_cam_stage_then_reuses_everything(tmp_path, capsys):
    """From a clean folder ``wsss run eps`` trains the CAM baseline (notebook 01's folder: the smoke
    presets share it) and EPS; a second call writes no file in any stage folder and prints the same
    figures (read back from the stages' reports)."""
    data = tmp_path / "data"
    argv = ["run", "eps", "--profile", "smoke", "--out", str(tmp_path / "runs"), "--data-root", str(data)]
    assert cli.main(argv) == 0
    first = json.loads((tmp_path / "runs" / "05_eps_saliency" / "stage_eps.json").read_text())
    assert [s["stage"] for s in first["stages"]] == ["cam (EPS's baseline)", "eps"]
    assert first["stages"][0]["folder"].endswith("01_class_activation_maps")
    assert all(s["files_written"] > 0 for s in first["stages"])
    m = first["metrics"]
    assert 0.0 <= m["cam_miou"] <= 1.0 and 0.0 <= m["eps_miou"] <= 1.0
    assert {"eps_confusion_ratio", "cam_confusion_ratio", "eps_val_map"} <= set(m)
    capsys.readouterr()

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[cam (EPS's baseline)] reused" in out and "[eps] reused" in out
    again = json.loads((tmp_path / "runs" / "05_eps_saliency" / "stage_eps.json").read_text())
    assert [s["files_written"] for s in again["stages"]] == [0, 0]
    assert again["metrics"] == first["metrics"]
