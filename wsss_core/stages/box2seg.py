"""The box stage: GrabCut pseudo-labels from boxes, then a segmentation network trained on them —
plainly (cross-entropy) or with Box2Seg's losses (Kulharia et al., ECCV 2020; our reconstruction,
see :mod:`wsss_core.losses_box2seg`).

Notebook ``04_box2seg`` and the CLI use these functions::

    cfg = config_for_profile("tutorial")
    gc = ensure_grabcut(cfg, data, out_dir)                      # GrabCut labels of the training split (cached)
    store = build_targets("grabcut", train_ds_raw, gc_dir, cfg)   # per-image targets, box maps, filling rates
    res = run_setting("box2seg", cfg, data, out_dir)             # train (or reload) + evaluate on validation

Settings (one network, one schedule, one seed; only the target and the loss change):

============== ==================================== ============================================
name           target of the cross-entropy (B1)     extra terms
============== ==================================== ============================================
box_ce         filled boxes                         –
grabcut_ce     GrabCut                              –
box2seg        GrabCut                              attention-weighted loss (B2), filling rate (B3),
                                                    embeddings (B4 then B6)
box2seg_no_fill GrabCut                             B2, B4/B6 (no filling-rate constraint)
box2seg_no_emb GrabCut                              B2, B3 (no embeddings)
box2seg_no_awl GrabCut                              B4/B6 only (embeddings without attention)
box2seg_class_rho GrabCut                           all terms, B3's target = the mean GrabCut ρ of the box's
                                                    class (BCM's per-class filling rate; our improvement)
full_ce        true masks with a share of objects   –
               removed (all boxes kept)
full_awl       the same                             B2, B3 (ρ from GrabCut)
============== ==================================== ============================================

``LossConfig(gate=...)`` (off in every preset) is our experiment of letting the attention weight (B1) too
(B1′, :func:`wsss_core.losses_box2seg.gated_cross_entropy`); notebook 04 §8 reports what it measured.

Where things live (this module re-exports every public name of them: ``box2seg.<name>`` works for all):

* :mod:`~wsss_core.stages.box2seg_config` — the configs, :func:`setting` and :func:`config_for_profile`;
* :mod:`~wsss_core.stages.box2seg_targets` — GrabCut over a split, the training targets, the dataset;
* :mod:`~wsss_core.stages.box2seg_train` — the network, the training step, checkpoint folders, training;
* :mod:`~wsss_core.stages.box2seg_report` — inference, validation scores, object / attention / GrabCut
  reports, figures and the predicted label folders;
* here — the stage's data (:func:`prepare`), one or several settings trained (or reloaded) and scored
  idempotently (:func:`run_setting`, :func:`run_settings`), and the whole stage (:func:`run`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import engine
from ..boxes import GrabCutConfig
from ..data.palette import read_label_png
from ..data.transforms import eval_transforms
from ..data.voc import VOCLayoutDataset
from ..models.segnet import SegNet
from . import store as result_store  # (here `store` names a TargetStore)
# re-exported: box2seg.<name> reaches every public name of the stage, wherever it is defined
from .box2seg_config import (ALL_SETTINGS, DESCRIPTIONS, GATES, IGNORE, TARGETS, TUTORIAL_SETTINGS,
                             Box2SegStageConfig, LossConfig, RealDataConfig, SegConfig, config_for_profile, setting)
from .box2seg_report import (ERROR_KINDS, attention_by_grabcut_error, attention_cell, attention_report,
                             box_attention_map, box_constrained_labels, evaluate_segmenter, evaluation_dataset,
                             grabcut_report, image_tensor, object_category, object_flags, object_rows, pick_examples,
                             predict_maps, prediction_grid, summarise_objects, write_predicted_labels)
from .box2seg_targets import (BoxSupervisionDataset, TargetStore, build_targets, collate_boxes, ensure_grabcut,
                              grabcut_dir, missing_objects, raw_dataset, remove_objects, training_dataset)
from .box2seg_train import (FORMAT_VERSION, STAGE, build_model, checkpoint_dir_for, classifier_backbone,
                            data_identity, make_step, train_segmenter)

NOTEBOOK = "04_box2seg"
"""The notebook (and OUT_DIR sub-folder) that owns this stage's artifacts."""


# ------------------------------------------------------------------------------------------------
# the stage's data, and one setting, idempotent
# ------------------------------------------------------------------------------------------------
@dataclass
class StageData:
    """A training split with its GrabCut labels, the validation split, and target stores made on demand.

    Attributes
    ----------
    base : the training split (:func:`raw_dataset`, with instance masks where they exist)
    val : the validation split (:func:`evaluation_dataset`)
    gc_dir, gc_manifest : the GrabCut labels of ``base`` and their manifest (filling rates, time)
    missing : ``{id: [instance ids]}`` erased in the missing-annotation experiment
    context_pairs : for the evaluator (toy scenes: boat/water, train/rails)
    identity : what the checkpoints' fingerprints record about the data (and the backbone's initialisation)
    backbone_state : initial backbone weights for every setting (None: the backbone's own)
    """

    base: VOCLayoutDataset
    val: VOCLayoutDataset
    gc_dir: Path
    gc_manifest: dict
    missing: dict
    context_pairs: dict
    identity: dict
    backbone_state: dict | None = None
    _stores: dict = field(default_factory=dict)

    def store(self, kind: str) -> TargetStore:
        """The :class:`TargetStore` of ``kind`` (built once)."""
        if kind not in self._stores:
            self._stores[kind] = build_targets(kind, self.base, self.gc_dir, self.missing)
        return self._stores[kind]


def _subset(root, split, n, **kw):
    ds = VOCLayoutDataset(root, split, **kw)
    if n is not None and n < len(ds):
        ds = VOCLayoutDataset(root, ds.ids[:n], **kw)
        ds.split = f"{split}{n}"
    return ds


def prepare(cfg: Box2SegStageConfig, data, out_dir, seg: SegConfig | None = None, grabcut: GrabCutConfig | None = None,
            max_train: int | None = None, max_val: int | None = None, backbone: tuple[dict, str] | None = None,
            progress: bool = True) -> StageData:
    """Load the splits of ``data`` (a :class:`wsss_core.profiles.DataSpec`), make (or reuse) the GrabCut
    labels of the training split, and draw the objects the missing-annotation experiment erases.

    ``seg`` / ``grabcut`` override ``cfg.seg`` / ``cfg.grabcut`` (the horses use ``cfg.real``);
    ``max_train`` / ``max_val`` take the first images only (smoke runs); ``backbone`` = ``(state_dict,
    name)`` of the initial backbone weights (:func:`classifier_backbone`), required when
    ``seg.backbone_init`` is set.
    """
    if (seg or cfg.seg).backbone_init is not None and backbone is None:
        raise ValueError(f"seg.backbone_init={((seg or cfg.seg).backbone_init)!r} needs backbone=(state_dict, name): "
                         "use stage.classifier_backbone(...)")
    seg = seg or cfg.seg
    grabcut = grabcut or cfg.grabcut
    from ..data.voc import resolve_voc_root

    root = Path(data.root)
    has_inst = (resolve_voc_root(root) / "SegmentationObject").is_dir()
    base = _subset(root, data.train_split, max_train, saliency_dir=None, extra_dirs=None,
                   instance_dir="SegmentationObject" if has_inst else None, cache=seg.cache_images,
                   mask_dir=getattr(data, "mask_dir", "SegmentationClass"))
    val = _subset(root, data.val_split, max_val, saliency_dir=None, instance_dir=None, transforms=eval_transforms(),
                  cache=seg.cache_images)
    gdir, man = ensure_grabcut(base, out_dir, grabcut, workers=cfg.grabcut_workers, progress=progress)
    n_obj = [len(base.get_raw(i)["boxes"]) for i in range(len(base))]
    missing = missing_objects(base.ids, n_obj, cfg.missing_share, cfg.missing_seed) if has_inst else {}
    identity = {"data": data_identity(data), "train": base.split, "n_train": len(base), "grabcut": grabcut.fingerprint(),
                "backbone_init": backbone[1] if backbone is not None else None}
    return StageData(base, val, gdir, man, missing, dict(getattr(data, "context_pairs", {}) or {}), identity,
                     backbone[0] if backbone is not None else None)


@dataclass
class SettingResult:
    """A trained setting: the model, its history, where it lives, and its validation figures."""

    name: str
    target: str
    loss: LossConfig
    model: SegNet
    history: engine.History
    checkpoint_dir: Path
    val: dict
    train_seconds: float
    reused: bool


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``with torch_threads(1): ...`` runs the block with ``n`` torch intra-op threads and restores the
    previous count (None: unchanged)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_setting(name: str, cfg: Box2SegStageConfig, sd: StageData, out_dir, seg: SegConfig | None = None,
                progress: bool = True, callbacks: Sequence[Any] = ()) -> SettingResult:
    """Train (or reload) one setting and score it on the validation split; the score is cached in
    ``checkpoint_dir/val.json`` next to the checkpoint.

    Parameters
    ----------
    name : a setting of :func:`setting`
    sd : :func:`prepare`'s result
    seg : overrides ``cfg.seg`` (the horses use ``cfg.real.seg``)
    """
    target, loss = setting(name, cfg)
    seg = seg or cfg.seg
    store = sd.store(target)
    ckpt = setting_checkpoint(name, cfg, sd, out_dir, seg)
    reused = engine.is_finished(ckpt)  # reloaded, not trained: by state, not timing
    with torch_threads(cfg.torch_threads):
        model, history = train_segmenter(name, target, loss, seg, training_dataset(sd.base, store, seg, loss.rho),
                                         sd.base.num_classes, ckpt, backbone_state=sd.backbone_state, callbacks=callbacks)
    seconds = float(sum(r["seconds"] for r in history.epochs))
    vpath = ckpt / "val.json"
    ident = {"val": sd.val.split, "n_val": len(sd.val), "long_side": seg.eval_long_side, "pairs": sorted(sd.context_pairs)}
    val = None
    if vpath.is_file():
        stored = json.loads(vpath.read_text())
        if stored.get("ident") == ident:
            val = stored["summary"]
    if val is None:
        with torch_threads(cfg.torch_threads):
            val, _ = evaluate_segmenter(model, sd.val, sd.context_pairs, seg.eval_batch_size, seg.eval_long_side,
                                        progress=progress)
        val = _jsonable(val)  # NaN → None, as it is stored (a reloaded result equals a fresh one)
        if engine.get_dist_info().is_main:
            result_store.atomic_write_json(vpath, {"ident": ident, "summary": val}, indent=1)
    return SettingResult(name, target, loss, model, history, ckpt, val, seconds, reused)


def setting_checkpoint(name: str, cfg: Box2SegStageConfig, sd: StageData, out_dir, seg: SegConfig | None = None) -> Path:
    """The checkpoint folder :func:`run_setting` trains ``name`` into (same fingerprint)."""
    target, loss = setting(name, cfg)
    extra = dict(sd.identity)
    if target == "mask_missing":
        extra["missing"] = result_store.fingerprint(sd.missing)
    return checkpoint_dir_for(name, target, loss, seg or cfg.seg, out_dir, extra)


class _QueueProgress:
    """Engine callback in a worker process: sends ``(name, done, total, loss)`` to the parent's queue."""

    def __init__(self, queue, name: str, every: int = 5):
        self.queue, self.name, self.every = queue, name, every

    def on_train_start(self, state) -> None:
        self.total = state.iters_per_epoch * state.cfg.epochs
        self.queue.put((self.name, 0, self.total, None))

    def on_iter_end(self, state) -> None:
        done = state.iteration + 1
        if done % self.every == 0 or done == self.total:
            self.queue.put((self.name, done, self.total, float(state.history.iters[-1]["loss"])))


def _setting_worker(name, cfg, sd, out_dir, seg, queue, threads):
    """One setting in a worker process of :func:`run_settings` (train, score, write ``val.json``)."""
    torch.set_num_threads(max(1, int(threads)))
    cfg = cfg.replace(torch_threads=None)  # this process's count, set above
    seg = seg.replace(train=seg.train.replace(progress=False))
    res = run_setting(name, cfg, sd, out_dir, seg=seg, progress=False, callbacks=[_QueueProgress(queue, name)])
    return name, res.train_seconds


def run_settings(names: Sequence[str], cfg: Box2SegStageConfig, sd: StageData, out_dir, seg: SegConfig | None = None,
                 workers: int | None = None, progress: bool = True) -> dict[str, SettingResult]:
    """:func:`run_setting` for several settings, training up to ``workers`` of them at once.

    Settings whose checkpoint is not finished are trained in ``workers`` processes (default
    ``cfg.train_workers``) with ``cfg.torch_threads`` torch threads each (default: this process's threads
    shared out) — on a CPU of few cores two small networks side by side use the cores better than one
    network on two threads (profiled for notebook 04: with the machine shared, two threads per network were
    up to 16× slower per step than one). A pool costs a few seconds to start, so the ``smoke`` preset
    trains its tiny runs here, one thread each. Each worker trains,
    scores its network on the validation split and writes both next to the checkpoint; this process then
    reloads every setting (:func:`run_setting`) and shows one progress bar per training. With a GPU, one
    setting to train or ``workers <= 1`` everything runs here, one setting after the other. The
    checkpoints are the same either way (same folders and fingerprints; thread counts change the last
    digits of the weights, not the run's identity).

    Returns
    -------
    {name: SettingResult} in the order of ``names``
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    names = list(dict.fromkeys(names))
    seg = seg or cfg.seg
    workers = cfg.train_workers if workers is None else workers
    todo = [n for n in names if not engine.is_finished(setting_checkpoint(n, cfg, sd, out_dir, seg))]
    fresh: dict[str, float] = {}
    if (workers or 0) > 1 and len(todo) > 1 and engine.select_device(seg.train.device).type == "cpu":
        for n in todo:  # targets are built once here and shipped to the workers with sd
            sd.store(setting(n, cfg)[0])
        threads = cfg.torch_threads or max(1, (torch.get_num_threads() or 1) // min(workers, len(todo)))
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads (Jupyter, torch)
        with ctx.Manager() as mgr, ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as ex:
            queue = mgr.Queue()
            futs = {ex.submit(_setting_worker, n, cfg, sd, out_dir, seg, queue, threads): n for n in todo}
            bars = {n: tqdm(total=1, desc=n, disable=not progress) for n in todo}
            pending = set(futs)

            def drain():
                while not queue.empty():
                    n, done, total, loss = queue.get()
                    b = bars[n]
                    if b.total != total:
                        b.reset(total=total)
                    b.update(done - b.n)
                    if loss is not None:
                        b.set_postfix(loss=f"{loss:.3f}", refresh=False)

            try:
                while pending:
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    drain()
                    for f in finished:
                        n, sec = f.result()  # re-raises a worker's error here
                        fresh[n] = sec
                drain()
            finally:
                for b in bars.values():
                    b.close()
    out = {}
    for n in names:
        r = run_setting(n, cfg, sd, out_dir, seg=seg, progress=progress)
        out[n] = dataclasses.replace(r, reused=False) if n in fresh else r
    return out


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v



@dataclass
class Box2SegStageResult:
    """What :func:`run` leaves behind (paths under ``out_dir``).

    Attributes
    ----------
    grabcut_label_dir : GrabCut pseudo-labels of the training split (``<id>.png``, class indices)
    box2seg_label_dir : the trained Box2Seg network's predictions on the training split, restricted to
        the boxes (:func:`box_constrained_labels`), ``<id>.png``
    report : ``{"grabcut_train_miou", "box2seg_train_miou", "box2seg_val_miou", "grabcut_ce_val_miou"?,
        "grabcut_images_per_second", "box2seg_checkpoint", ...}``
    results : ``{setting: SettingResult}`` of the settings run
    stage_data : :func:`prepare`'s result
    """

    cfg: Box2SegStageConfig
    grabcut_label_dir: Path
    box2seg_label_dir: Path
    report: dict
    results: dict
    stage_data: StageData


def run(cfg: Box2SegStageConfig, data, out_dir, settings: Sequence[str] = ("box2seg",), cam_out_dir=None,
        cam_cfg=None, label_setting: str = "box2seg", seed: int | None = None, device: str | None = None,
        progress: bool = True) -> Box2SegStageResult:
    """The box stage as one idempotent call (for notebook 06 and the CLI)::

        cfg = stage.config_for_profile(profile)
        res = stage.run(cfg, data, Path(OUT_DIR) / stage.NOTEBOOK)
        res.grabcut_label_dir, res.box2seg_label_dir, res.report

    Makes (or reuses) the GrabCut labels of the training split, trains (or reloads — the same
    checkpoint folders as notebook 04) the ``settings`` (``label_setting`` is always among them), and
    writes that network's box-constrained predictions on the training split to
    ``out_dir/box2seg_labels`` (redone only when the checkpoint changed; ``source.json`` records it).

    Parameters
    ----------
    cfg : :class:`Box2SegStageConfig` (``config_for_profile``)
    data : :class:`wsss_core.profiles.DataSpec`
    out_dir : normally ``OUT_DIR/04_box2seg``
    settings : settings to train / reload and score on the validation split
    cam_out_dir : where notebook 01's classifier lives (default ``out_dir/../01_class_activation_maps``);
        used when ``cfg.seg.backbone_init == "cam_classifier"``
    cam_cfg : the CAM stage config (default ``profiles.cam_config(cfg.profile)``)
    label_setting : the setting whose network writes ``box2seg_label_dir``: ``"box2seg"`` (the method as
        described) or ``"box2seg_class_rho"`` (our per-class filling rate; see notebook 04 §7.3)
    seed, device : override ``cfg.seg.train``'s seed / device (and the default ``cam_cfg``'s), as
        notebook 04 sets them from its SEED / DEVICE parameters; None keeps the config's
    """
    with result_store.writing(out_dir, main=engine.is_main_process()):  # a lock; killed writers' half files swept
        return _run(cfg, data, Path(out_dir), settings, cam_out_dir, cam_cfg, label_setting, seed, device, progress)


def _run(cfg: Box2SegStageConfig, data, out_dir, settings: Sequence[str] = ("box2seg",), cam_out_dir=None,
         cam_cfg=None, label_setting: str = "box2seg", seed: int | None = None, device: str | None = None,
         progress: bool = True) -> Box2SegStageResult:
    from ..metrics import ConfusionMatrix

    out_dir = Path(out_dir)
    run_kw = {k: v for k, v in (("seed", None if seed is None else int(seed)), ("device", device)) if v is not None}
    if run_kw:
        cfg = cfg.replace(seg=cfg.seg.replace(train=cfg.seg.train.replace(**run_kw)))
    setting(label_setting, cfg)  # validates the name
    settings = list(dict.fromkeys([label_setting, *settings]))
    backbone = None
    if cfg.seg.backbone_init == "cam_classifier":
        if cam_cfg is None:
            if cfg.profile is None:
                raise ValueError("cfg.profile is None: pass cam_cfg (the CAM stage config whose classifier initialises "
                                 "the backbone), or build cfg with config_for_profile")
            from .. import profiles

            cam_cfg = profiles.cam_config(cfg.profile)
            if run_kw:
                cam_cfg = cam_cfg.replace(train=cam_cfg.train.replace(**run_kw))
        backbone = classifier_backbone(data, Path(cam_out_dir) if cam_out_dir else out_dir.parent / "01_class_activation_maps",
                                       cam_cfg)
    elif cfg.seg.backbone_init is not None:
        raise ValueError(f"unknown seg.backbone_init {cfg.seg.backbone_init!r}")
    sd = prepare(cfg, data, out_dir, backbone=backbone, progress=progress)
    results = {n: run_setting(n, cfg, sd, out_dir, progress=progress) for n in settings}
    b2s = results[label_setting]
    label_dir = out_dir / "box2seg_labels"
    labels = result_store.Result(label_dir, marker="source.json")  # written last, removed first
    source = {"checkpoint": b2s.checkpoint_dir.name, "split": sd.base.split, "n": len(sd.base), "constrain_to_boxes": True}
    stored = labels.record()
    n_png = len(list(label_dir.glob("*.png"))) if label_dir.is_dir() else 0
    if stored is not None and stored.get("source") == source and n_png == len(sd.base):
        lab_scores = stored["scores"]
    else:
        labels.begin()
        for p in label_dir.glob("*.png"):
            p.unlink()
        lab_scores = write_predicted_labels(b2s.model, sd.base, label_dir, cfg.seg.eval_long_side, progress=progress)
        labels.complete({"source": source, "scores": lab_scores})
    cm = ConfusionMatrix(sd.base.num_classes + 1)
    for i in range(len(sd.base)):
        raw = sd.base.get_raw(i)
        cm.update(read_label_png(sd.gc_dir / f"{raw['id']}.png"), raw["mask"])
    report = {"grabcut_train_miou": float(cm.miou()), "grabcut_images_per_second": sd.gc_manifest["images_per_second"],
              "box2seg_train_miou": lab_scores["miou"], "box2seg_checkpoint": b2s.checkpoint_dir.name,
              "label_setting": label_setting,
              "n_train": len(sd.base), "n_val": len(sd.val)}
    for n, r in results.items():
        report[f"{n}_val_miou"] = r.val["miou"]
    return Box2SegStageResult(cfg, sd.gc_dir, label_dir, report, results, sd)
