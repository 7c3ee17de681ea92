"""What every lesson notebook does first and last, in one call each.

    from wsss_core import lesson
    L = lesson.setup("01_class_activation_maps", PROFILE, OUT_DIR, data_root=DATA_ROOT, device=DEVICE, seed=SEED)
    ...
    lesson.finish(L, {"cam_miou": 0.57, ...})     # OUT_DIR/01_class_activation_maps/metrics.json + seconds_total

``setup`` seeds everything, sets the figure style, makes (or finds) the profile's data, creates the
notebook's output folder, picks the device and prints one line for each of these, so that the
setup cell of a lesson stays a few lines long. ``finish`` writes ``metrics.json`` with the lesson's wall
time since ``setup`` (``seconds_total``), the figure the course budget is measured by.

Study results: a lesson that cites a figure of the ``study`` profile reads it with :func:`study_figure`,
which returns the value together with the command, profile and date that made it
(``benchmarks/baselines/study.json``), so no number is typed into markdown.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import profiles

__all__ = ["Lesson", "setup", "finish", "study_figure", "baseline_path"]

STYLE = {"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 9,
         "image.interpolation": "nearest"}


@dataclass
class Lesson:
    """What :func:`setup` made: ``data`` (a :class:`~wsss_core.profiles.DataSpec`), ``out`` (this
    notebook's output folder), ``device`` (a ``torch.device``), ``rng`` (a seeded numpy Generator)."""

    notebook: str
    profile: str
    seed: int
    device_name: str
    out_root: Path
    out: Path
    data: profiles.DataSpec
    device: object
    rng: np.random.Generator
    t0: float = field(default_factory=time.perf_counter)

    @property
    def toy(self) -> bool:
        "True on the toy scenes (they carry PartMask/ and ContextMask/), False on VOC-layout photos."
        return self.data.kind == "toy"

    def train(self, train_cfg, epochs=None):
        "A stage's ``TrainConfig`` with this lesson's seed and device (and ``epochs`` when given)."
        return train_cfg.replace(seed=self.seed, device=self.device_name,
                                 epochs=int(epochs) if epochs else train_cfg.epochs)

    def seconds(self) -> float:
        "Wall time since :func:`setup`."
        return time.perf_counter() - self.t0

    @staticmethod
    def rel(p) -> str:
        "A path relative to the working directory (notebooks/), for printing."
        try:
            return os.path.relpath(p)
        except ValueError:
            return str(p)


def setup(notebook: str, profile: str, out_dir, data_root=None, device: str = "auto", seed: int = 0,
          toy_overrides: dict | None = None, verbose: bool = True, data: profiles.DataSpec | None = None) -> Lesson:
    """Seed, style, data, output folder and device for one lesson; prints what it did.

    Parameters
    ----------
    notebook : the notebook's name (and its sub-folder of ``out_dir``), e.g. ``"02_affinitynet_random_walk"``
    profile : one of :data:`wsss_core.profiles.PROFILE_NAMES` (an unknown name raises, listing them)
    out_dir : the run folder shared by all notebooks (``OUT_DIR``)
    data_root : None for the profile's default tree (toy scenes are generated on first use)
    data : a :class:`~wsss_core.profiles.DataSpec` the lesson found itself (lesson 07's real photos:
        :func:`wsss_core.realphotos.msrc_data`); nothing is generated then. ``data.kind == "absent"``: the
        lesson runs without data (it says why and skips its sections).
    """
    import torch

    from . import engine

    profiles.check_profile(profile)
    engine.seed_everything(int(seed))
    _inline_figures()
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    if data is None:
        data = profiles.prepare_data(profile, data_root, toy_overrides=toy_overrides)
    out = Path(out_dir) / notebook
    out.mkdir(parents=True, exist_ok=True)
    L = Lesson(notebook=notebook, profile=profile, seed=int(seed), device_name=str(device), out_root=Path(out_dir),
               out=out, data=data, device=engine.select_device(device), rng=np.random.default_rng(int(seed)))
    if verbose:
        import wsss_core

        threads = torch.get_num_threads()
        print(f"profile {profile}, seed {seed}, device {L.device} ({threads} torch threads)")
        print(f"data: {L.rel(data.root)} ({data.kind})")
        print(f"outputs: {L.rel(out)}")
        print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
              f"wsss_core {wsss_core.__version__}")
    return L


def _inline_figures() -> None:
    """In a Jupyter kernel, ``%matplotlib inline``: figures (and the explorers' live figures) render as images
    rather than as ``<Figure size ...>`` text. Outside IPython (scripts, tests) nothing changes."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    ip = get_ipython()
    if ip is not None and getattr(ip, "kernel", None) is not None:
        ip.run_line_magic("matplotlib", "inline")


def finish(L: Lesson, metrics: dict) -> Path:
    """Write ``L.out/metrics.json`` (floats rounded, NaN as null) with ``seconds_total``, the lesson's wall
    time since :func:`setup`; returns the path."""
    from .stages.cam import write_metrics

    m = dict(metrics)
    m["seconds_total"] = round(L.seconds(), 1)
    return write_metrics(L.out / "metrics.json", m)


def baseline_path(profile: str = "study") -> Path | None:
    "``benchmarks/baselines/<profile>.json`` of the checkout, or None (an installed package has none)."
    root = profiles.project_root()
    p = root / "benchmarks" / "baselines" / f"{profile}.json" if root else None
    return p if p is not None and p.is_file() else None


def study_figure(notebook: str, key: str, path=None) -> dict:
    """A figure recorded by the ``study`` profile: ``{"value", "made_by", "made_on", "profile"}``.

    ``value`` is None (and ``made_by`` says why) where the baseline file or the key is absent, so a lesson
    can always print the provenance next to the number."""
    p = Path(path) if path else baseline_path("study")
    if p is None or not Path(p).is_file():
        return {"value": None, "made_by": "benchmarks/baselines/study.json not found (run `make study`)",
                "made_on": None, "profile": "study"}
    base = json.loads(Path(p).read_text())
    val = base.get("metrics", {}).get(notebook, {}).get(key)
    src = base.get("sources", {}).get(notebook, {})
    return {"value": val, "made_by": src.get("made_by", base.get("made_by")),
            "made_on": src.get("made_on", base.get("made_on")), "profile": base.get("profile", "study")}
