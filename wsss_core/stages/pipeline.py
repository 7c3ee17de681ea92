"""The stage contract: every stage by name, what it needs, what it makes, and one way to run it.

    from wsss_core.stages import pipeline
    run = pipeline.Run("smoke", "runs/smoke")      # a profile and a run folder (OUT_DIR)
    res = run.result("eps")                          # the CAM baseline, then EPS: run, or reused
    run.labels("affinity_rw")                        # the random walk's pseudo-label folder

A stage (:class:`Stage`) declares

* its **inputs**: named upstream stage results (``affinity`` and ``edam`` receive the ``cam`` stage's
  result object, not a folder name; ``segmentation`` receives the pseudo-label folder of the
  :data:`LABEL_SOURCES` entry it is asked for);
* its **config**: the profile's preset, ``<stage module>.config_for_profile(profile)`` for every stage
  (:meth:`Stage.preset`), with the run's seed and device;
* its **outputs**: the attributes of the result object its ``run`` returns, and where they live:
  ``OUT_DIR/<notebook>/`` (the folder the stage's notebook uses, so a notebook and the CLI share
  their results).

Reuse is not decided here: each stage's ``run`` is idempotent and asks :mod:`wsss_core.stages.store`
(one identity rule, completion markers written last, atomic files, a lock per folder) whether a
checkpoint, a map folder or a label folder may be reused. :class:`Run` only resolves the inputs in
order, once per run (``result`` is memoised), so the whole chain is reused when nothing changed and
the first stale result and everything downstream of it are remade when something did.

``wsss run STAGE --profile P --out DIR`` (:mod:`wsss_core.cli`), ``comparison.pseudo_label_dir``
(notebook 06) and ``wsss status --profile P`` (:mod:`wsss_core.stages.status`) go through this module.
"""
from __future__ import annotations

import importlib
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

# ------------------------------------------------------------------------------------------------
# the stages
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes
    ----------
    name : the stage's name (``wsss run NAME``; the key of :data:`STAGES`)
    module : the module holding its config, preset, ``run`` and ``NOTEBOOK``
    inputs : names of the upstream results it receives (``"labels"``: the pseudo-label folder of
        :attr:`Run.labels_from`)
    outputs : ``{attribute of the result object: what it is}``
    summary : one line for ``wsss run -h``
    label_folders : ``{attribute: folder under the stage's folder}`` for the pseudo-label folders whose place
        does not depend on the config (what ``wsss status`` looks at without running anything)
    """

    name: str
    module: str
    inputs: tuple[str, ...]
    outputs: Mapping[str, str]
    summary: str
    _make: Callable = field(repr=False, compare=False, default=None)
    _metrics: Callable = field(repr=False, compare=False, default=None)
    label_folders: Mapping[str, str] = field(default_factory=dict)

    def load(self):
        """The stage's module (imported on first use: ``import wsss_core`` stays light)."""
        return importlib.import_module(self.module)

    @property
    def notebook(self) -> str:
        """The notebook that teaches the stage; its results live in ``OUT_DIR/<notebook>/``."""
        return self.load().NOTEBOOK

    def preset(self, profile: str):
        """The stage's config for ``profile`` (the notebooks' preset)."""
        from .. import profiles

        profiles.check_profile(profile)
        return self.load().config_for_profile(profile)

    def metrics(self, result, run: "Run") -> dict:
        """The stage's headline figures (flat, JSON-able), as its notebook names them."""
        return self._metrics(result, run)


def _make_cam(run: "Run", cfg, up: dict):
    from . import cam

    return cam.run(cfg, run.data, run.out_dir("cam"), progress=run.progress)


def _cam_metrics(res, run: "Run") -> dict:
    rep = res.report
    m = {"cls_map": res.val_map, "cam_miou": rep["miou"], "cam_best_threshold": float(rep["best_threshold"]),
         "cam_fg_precision": rep["fg_precision"], "cam_fg_recall": rep["fg_recall"]}
    for k in ("part_recall", "body_recall", "context_leak", "background_leak"):
        if k in rep:
            m[f"cam_{k}"] = rep[k]
    return m


def _make_affinity(run: "Run", cfg, up: dict):
    from ..affinity import crf_available
    from . import affinity

    if cfg.crf and not crf_available():  # as notebook 02 does: without the optional extra, labels without CRF
        warnings.warn("the affinity labels' dense CRF needs the optional extra (pip install -e .[crf]); making them "
                      "without it — notebook 02 measured a much weaker random walk that way", stacklevel=3)
        cfg = cfg.replace(crf=False)
    return affinity.run(cfg, run.data, run.out_dir("affinity"), cam_result=up["cam"], progress=run.progress)


def _affinity_metrics(res, run: "Run") -> dict:
    r = res.report
    return {"rw_miou": r["rw"]["miou"], "rw_fg_precision": r["rw"]["fg_precision"],
            "rw_fg_recall": r["rw"]["fg_recall"], "rw_cam_alpha_miou": r["cam_alpha"]["miou"],
            "cam_miou": r["cam_best"]["miou"], "rw_gain": r["rw"]["miou"] - r["cam_best"]["miou"]}


def _make_edam(run: "Run", cfg, up: dict):
    from . import edam

    return edam.run(cfg, run.data, run.out_dir("edam"), cam_result=up["cam"], progress=run.progress)


def _edam_metrics(res, run: "Run") -> dict:
    m = {"edam_miou": res.report["miou"], "edam_best_threshold": float(res.report["best_threshold"]),
         "edam_fg_precision": res.report["fg_precision"], "edam_fg_recall": res.report["fg_recall"],
         "cam_miou": res.cam.report["miou"]}
    if res.sal_report is not None:
        m["edam_sal_miou"] = res.sal_report["miou"]
    return m


def _eps_upstream(run: "Run", cfg) -> dict:
    """EPS's ``cam`` input is its CAM baseline (notebook 05): notebook 01's CAM stage when EPS's preset
    trains the same classifier, else a CAM stage of its own under ``05_eps_saliency/cam_baseline``."""
    from . import eps

    cam01 = run.cfg("cam")
    cam01 = cam01.replace(train=cam01.train.replace(epochs=cfg.train.epochs))  # as notebook 05 asks for it
    _, folder, _ = eps.baseline_location(cfg, run.data, run.out_root, cam01)
    base = run.timed("cam (EPS's baseline)", folder, lambda: eps.run_cam_baseline(
        cfg, run.data, run.out_root, notebook_01_cfg=cam01, progress=run.progress))
    return {"cam": base.result}


def _make_eps(run: "Run", cfg, up: dict):
    from . import eps

    res = eps.run(cfg, run.data, run.out_dir("eps"), progress=run.progress)
    res.cam = up["cam"]  # the baseline it is compared with (notebook 05)
    return res


def _eps_metrics(res, run: "Run") -> dict:
    from . import eps

    cam_rep = eps.cached_report(res.cam.cam_dir, res.train_dataset, res.cfg, run.data.context_pairs,
                                run.out_dir("eps") / "cam_baseline_report.json")
    m = eps.comparison_metrics(cam_rep, res.report)
    m.update(cam_val_map=res.cam.val_map, eps_val_map=res.val_map)
    return m


def _box2seg_upstream(run: "Run", cfg) -> dict:
    # the backbone starts from the CAM stage's classifier when the preset says so
    return {"cam": run.result("cam")} if cfg.seg.backbone_init == "cam_classifier" else {}


def _make_box2seg(run: "Run", cfg, up: dict):
    from . import box2seg

    # box2seg.run reloads the CAM stage's finished classifier from its folder (the same checkpoint)
    kw = {"cam_out_dir": run.out_dir("cam"), "cam_cfg": up["cam"].cfg} if "cam" in up else {}
    return box2seg.run(cfg, run.data, run.out_dir("box2seg"), seed=run.seed, device=run.device,
                       progress=run.progress, **kw)


def _box2seg_metrics(res, run: "Run") -> dict:
    return {k: v for k, v in res.report.items() if isinstance(v, (int, float, str))}


def _segmentation_upstream(run: "Run", cfg) -> dict:
    return {"labels": run.labels(run.labels_from)}


def _make_segmentation(run: "Run", cfg, up: dict):
    from . import segmentation

    return segmentation.run(cfg, run.data, up["labels"], run.out_dir("segmentation") / run.labels_from,
                            progress=run.progress)


def _segmentation_metrics(res, run: "Run") -> dict:
    r = res.report
    return {"seg_miou": r["miou"], "seg_fg_precision": r["fg_precision"], "seg_fg_recall": r["fg_recall"],
            "train_seconds": res.train_seconds, "labels": run.labels_from, "checkpoint": res.checkpoint_dir.name}


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("cam", "wsss_core.stages.cam", (),
          {"checkpoint_dir": "the classifier", "cam_dir": "CAMs of the training split (.npz)",
           "label_dir": "pseudo-labels at the best threshold (.png)", "report": "cam_report.json"},
          "CAM classifier, CAMs, pseudo-labels (notebook 01)", _make_cam, _cam_metrics, {"label_dir": "pseudo_labels"}),
    Stage("affinity", "wsss_core.stages.affinity", ("cam",),
          {"label_dir": "affinity labels from the CAMs", "checkpoint_dir": "AffinityNet",
           "rw_dir": "random-walk pseudo-labels (.png)", "report": "rw_report.json"},
          "AffinityNet + random walk on the CAM stage's CAMs (notebook 02)", _make_affinity, _affinity_metrics,
          {"rw_dir": "rw_labels"}),
    Stage("edam", "wsss_core.stages.edam", ("cam",),
          {"checkpoint_dir": "EDAM", "mask_dir": "DA masks (.npz)", "label_dir": "pseudo-labels (.png)",
           "sal_label_dir": "pseudo-labels with the saliency override (.png; None without saliency)"},
          "EDAM from the CAM stage's classifier (notebook 03)", _make_edam, _edam_metrics,
          {"label_dir": "pseudo_labels", "sal_label_dir": "pseudo_labels_sal"}),
    Stage("eps", "wsss_core.stages.eps", ("cam",),
          {"checkpoint_dir": "EPS classifier", "cam_dir": "EPS maps (.npz)", "label_dir": "pseudo-labels (.png)",
           "report": "eps_report.json", "cam": "the CAM baseline's result"},
          "EPS with saliency, against its CAM baseline (notebook 05)", _make_eps, _eps_metrics,
          {"label_dir": "pseudo_labels"}),
    Stage("box2seg", "wsss_core.stages.box2seg", ("cam",),
          {"grabcut_label_dir": "GrabCut pseudo-labels (.png)", "box2seg_label_dir": "Box2Seg's box-constrained "
           "predictions (.png)", "report": "train/val mIoU per setting"},
          "GrabCut and Box2Seg from boxes (notebook 04; 'cam' only when the backbone starts from it)",
          _make_box2seg, _box2seg_metrics, {"box2seg_label_dir": "box2seg_labels"}),
    Stage("segmentation", "wsss_core.stages.segmentation", ("labels",),
          {"checkpoint_dir": "DeepLab", "report": "val mIoU (report.json beside the checkpoint)"},
          "DeepLab on one method's pseudo-labels, or the true masks (notebook 06)",
          _make_segmentation, _segmentation_metrics),
]}

_UPSTREAM: dict[str, Callable] = {"eps": _eps_upstream, "box2seg": _box2seg_upstream,
                                  "segmentation": _segmentation_upstream}

LABEL_SOURCES: dict[str, tuple[str, str] | None] = {
    "cam": ("cam", "label_dir"), "affinity_rw": ("affinity", "rw_dir"), "edam": ("edam", "label_dir"),
    "edam_sal": ("edam", "sal_label_dir"), "eps": ("eps", "label_dir"), "grabcut": ("box2seg", "grabcut_label_dir"),
    "box2seg": ("box2seg", "box2seg_label_dir"), "full": None,
}
"""A pseudo-label folder by the method's name (notebook 06's rows): ``(stage, attribute)`` of the stage
result that holds it; ``full`` is the true masks (no folder)."""


class MethodUnavailable(RuntimeError):
    """The method cannot run on this data (e.g. no boxes or no saliency maps)."""


def stage(name: str) -> Stage:
    """The :class:`Stage` called ``name``.

    Raises
    ------
    KeyError : unknown name (the message lists the stages).
    """
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; the stages are: {', '.join(STAGES)}")
    return STAGES[name]


# ------------------------------------------------------------------------------------------------
# one run: a profile, a data set, a run folder
# ------------------------------------------------------------------------------------------------

class Run:
    """The stages of one profile under one run folder, each run at most once (its inputs first).

    Parameters
    ----------
    profile : ``smoke`` | ``tutorial`` | ``study`` | ``paper``
    out_root : the run folder (the notebooks' ``OUT_DIR``); stage ``s`` lives in ``out_root/<notebook>/``
    data : a :class:`wsss_core.profiles.DataSpec` (default: the profile's, prepared on first use)
    data_root : where the profile's data is (default: where the notebooks put it)
    seed, device : set in every stage's ``TrainConfig`` as the notebooks set them (None keeps the preset's)
    progress : progress bars
    config_hook : ``hook(stage_name, cfg) -> cfg`` edits a preset before it runs (e.g. a tiny crop in a
        test); a changed config makes its own checkpoints next to the notebooks' (identities differ)
    labels_from : the :data:`LABEL_SOURCES` entry the ``segmentation`` stage trains on
    count_files : log how many files each stage wrote (two walks of its folder; ``wsss run`` prints it)
    """

    def __init__(self, profile: str, out_root, data=None, data_root=None, seed: int | None = None,
                 device: str | None = None, progress: bool = True, config_hook: Callable | None = None,
                 labels_from: str = "full", count_files: bool = False):
        from .. import profiles

        self.profile = profiles.check_profile(profile)
        if labels_from not in LABEL_SOURCES:
            raise KeyError(f"unknown pseudo-label source {labels_from!r}; known: {', '.join(LABEL_SOURCES)}")
        self.out_root = Path(out_root)
        self._data, self.data_root = data, data_root
        self.seed, self.device, self.progress = seed, device, progress
        self.config_hook, self.labels_from, self.count_files = config_hook, labels_from, count_files
        self._results: dict[str, Any] = {}
        self.log: list[dict] = []  # one entry per stage run here: name, seconds, files written

    @property
    def data(self):
        if self._data is None:
            from .. import profiles

            self._data = profiles.prepare_data(self.profile, self.data_root, progress=self.progress)
        return self._data

    def cfg(self, name: str):
        """Stage ``name``'s preset after the ``config_hook``, with this run's seed and device (Box2Seg's
        config has no ``train``: its ``run`` takes them)."""
        cfg = stage(name).preset(self.profile)
        if self.config_hook is not None:
            cfg = self.config_hook(name, cfg)
        if not hasattr(cfg, "train"):
            return cfg
        kw = {k: v for k, v in (("seed", None if self.seed is None else int(self.seed)), ("device", self.device))
              if v is not None}
        return cfg.replace(train=cfg.train.replace(**kw)) if kw else cfg

    def out_dir(self, name: str) -> Path:
        """Where stage ``name``'s results live: ``out_root/<its notebook>``."""
        return self.out_root / stage(name).notebook

    def upstream(self, name: str, cfg=None) -> dict:
        """Stage ``name``'s inputs, each run or reused: ``{input name: result}``."""
        st = stage(name)
        cfg = self.cfg(name) if cfg is None else cfg
        if name in _UPSTREAM:
            return _UPSTREAM[name](self, cfg)
        return {i: self.result(i) for i in st.inputs}

    def result(self, name: str):
        """Stage ``name``'s result object (its ``run``'s return value), its inputs resolved first; run
        once per :class:`Run`, and by the stage's own reuse rules only as far as something changed."""
        key = name if name != "segmentation" else f"segmentation:{self.labels_from}"
        if key not in self._results:
            cfg = self.cfg(name)
            up = self.upstream(name, cfg)
            self._results[key] = self.timed(name, self.out_dir(name), lambda: stage(name)._make(self, cfg, up))
        return self._results[key]

    def timed(self, name: str, folder: Path, fn: Callable):
        """``fn()``, logged in :attr:`log` with its seconds and, with ``count_files``, the number of files
        it wrote under ``folder`` (0: everything was reused; None: not counted)."""
        before = _files(folder) if self.count_files else None
        t0 = time.perf_counter()
        out = fn()
        self.log.append({"stage": name, "seconds": time.perf_counter() - t0, "folder": str(folder),
                         "files_written": None if before is None else _written(before, _files(folder))})
        return out

    def labels(self, source: str) -> Path | None:
        """The pseudo-label folder of :data:`LABEL_SOURCES` entry ``source`` (None for ``full``).

        Raises
        ------
        KeyError : unknown source; :class:`MethodUnavailable` : the data cannot give it (no saliency maps).
        """
        if source not in LABEL_SOURCES:
            raise KeyError(f"unknown method {source!r}; known: {', '.join(LABEL_SOURCES)}")
        where = LABEL_SOURCES[source]
        if where is None:
            return None
        d = getattr(self.result(where[0]), where[1])
        if d is None:
            raise MethodUnavailable(f"{source}: the {where[0]} stage made no {where[1]} on this data "
                                    "(a saliency folder is needed and none was found)")
        return Path(d)


    def label_folder(self, source: str) -> Path | None:
        """Where :data:`LABEL_SOURCES` entry ``source``'s pseudo-labels live, without running anything
        (None for ``full`` and for folders whose place depends on the config, e.g. GrabCut's)."""
        where = LABEL_SOURCES[source]
        if where is None or where[1] not in stage(where[0]).label_folders:
            return None
        return self.out_dir(where[0]) / stage(where[0]).label_folders[where[1]]


def _files(folder: Path) -> dict[str, int]:
    """``{path: mtime_ns}`` of every file under ``folder`` (empty if absent)."""
    out = {}
    if folder.is_dir():
        for root, _, names in os.walk(folder):
            for n in names:
                p = os.path.join(root, n)
                try:
                    out[p] = os.stat(p).st_mtime_ns
                except FileNotFoundError:  # (a temp file renamed meanwhile)
                    pass
    return out


def _written(before: Mapping[str, int], after: Mapping[str, int]) -> int:
    """How many files are new or were rewritten (the lock file aside)."""
    return sum(1 for p, t in after.items() if before.get(p) != t and not p.endswith(os.sep + ".lock"))
