"""One segmentation network trained on every method's pseudo-labels: the comparison of notebook 06.

    from wsss_core import comparison, profiles
    data = profiles.prepare_data("tutorial")
    rows = comparison.compare(["cam", "eps", "full"], "tutorial", data, "runs/tutorial")
    comparison.table_markdown(rows)

Every method of notebooks 01–05 ends in a folder of pseudo-labels for the training images (one
palette PNG per image, 255 = ignore). :func:`pseudo_label_dir` finds that folder by calling the
method's stage with the profile's preset and the run's seed — each stage is idempotent, so when the
method's notebook already ran into the same ``OUT_DIR`` its classifier, maps and labels are reused
and nothing is retrained; otherwise the stage runs now. :func:`compare` then measures each folder
against the true masks of the training images (*pseudo-label mIoU*, the papers' "train" column),
trains the same DeepLab with the same schedule and seed on it (:mod:`wsss_core.stages.segmentation`)
and evaluates it on the validation split (*segmentation mIoU*, the papers' "val" column). The row
``full`` trains on the true masks: the upper bound, and the denominator of the *weak/full ratio*.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .atomic import atomic_write_json
from .evaluation import evaluate_label_dir
# every stage runs through the stage contract; MethodUnavailable is raised (and caught) there
from .stages.pipeline import MethodUnavailable, Run  # noqa: F401

NOTEBOOK = "06_segmentation_and_comparison"


@dataclass(frozen=True)
class Method:
    """A row of the comparison.

    Attributes
    ----------
    key : short name used in metrics keys (``seg_<key>_miou``).
    title : what the table prints; ``short``: what figures print.
    supervision : ``"image"`` (image labels), ``"image+saliency"``, ``"box"`` or ``"mask"``.
    notebook : the notebook that teaches it (and whose ``OUT_DIR`` folder the stage reuses).
    paper : the paper's PASCAL VOC 2012 figures in % (``pseudo`` = pseudo-label mIoU on train,
        ``val`` = segmentation mIoU on val; None = not reported) and where they come from.
    """

    key: str
    title: str
    supervision: str
    notebook: str
    paper: dict = field(default_factory=dict)
    short: str = ""


METHODS: dict[str, Method] = {m.key: m for m in [
    Method("cam", "CAM", "image", "01_class_activation_maps",
           {"pseudo": 48.0, "val": None, "source": "PSA README (ResNet-38 CAM, train)"}, short="CAM"),
    Method("affinity_rw", "AffinityNet + random walk (PSA)", "image", "02_affinitynet_random_walk",
           {"pseudo": 59.7, "val": 61.7, "source": "PSA, ResNet-38; DeepLab ResNet-38"}, short="AffinityNet RW"),
    Method("edam", "EDAM (no saliency)", "image", "03_edam",
           {"pseudo": None, "val": None, "source": "not reported without saliency"}, short="EDAM"),
    Method("edam_sal", "EDAM + saliency override", "image+saliency", "03_edam",
           {"pseudo": 68.1, "val": 71.0, "source": "EDAM README (CRF + PoolNet saliency); DeepLab-v2 R101"}, short="EDAM + sal."),
    Method("eps", "EPS", "image+saliency", "05_eps_saliency",
           {"pseudo": 69.4, "val": 70.9, "source": "EPS README/paper (PFAN saliency); DeepLab-v2 R101"}, short="EPS"),
    Method("grabcut", "GrabCut on boxes", "box", "04_box2seg",
           {"pseudo": 65.7, "val": None, "source": "BANA's table (GrabCut labels, train)"}, short="GrabCut"),
    Method("box2seg", "Box2Seg", "box", "04_box2seg",
           {"pseudo": None, "val": 76.4, "source": "Box2Seg (UPerNet R101; second-hand summary)"}, short="Box2Seg"),
    Method("full", "True masks (upper bound)", "mask", "06_segmentation_and_comparison",
           {"pseudo": 100.0, "val": 76.4, "source": "DeepLab-v2 R101 (Chen et al. 2018, 76.35 w/o COCO) [memory; re-check]"}, short="true masks"),
]}

DEFAULT_METHODS = tuple(METHODS)


def pseudo_label_dir(method: str, profile: str, data, out_root, seed: int = 0, device: str = "auto",
                     progress: bool = True, config_hook: Callable | None = None) -> Path | None:
    """The folder of ``method``'s pseudo-labels for ``data``'s training split (None for ``full``:
    the true masks), made by the method's stage or reused from its notebook's run in ``out_root``.

    The method's stage runs through :class:`wsss_core.stages.pipeline.Run` (its inputs first: the CAM
    stage before AffinityNet and EDAM). ``config_hook(stage, cfg) -> cfg`` edits a stage's preset before it
    runs (``stage`` is a :data:`~wsss_core.stages.pipeline.STAGES` name: ``"cam"``, ``"affinity"``,
    ``"edam"``, ``"eps"`` or ``"box2seg"``) — e.g. a small crop for a test; a changed config trains its own
    models next to the notebooks' (every stage fingerprints its config).

    Raises
    ------
    KeyError : unknown method (the message lists the known ones).
    """
    return Run(profile, out_root, data=data, seed=seed, device=device, progress=progress,
               config_hook=config_hook).labels(method)  # (its KeyError lists the methods: LABEL_SOURCES = METHODS)


def pseudo_label_dirs(methods: Sequence[str], profile: str, data, out_root, seed: int = 0, device: str = "auto",
                      progress: bool = True, config_hook: Callable | None = None) -> tuple[dict, dict, dict]:
    """:func:`pseudo_label_dir` for every method: ``(dirs, skipped, seconds)`` — ``{method: folder or None}``
    for the methods that could run, ``{method: why}`` for those that could not (:class:`MethodUnavailable`),
    and ``{method: seconds}`` the stage took here (a second or two when its notebook's outputs were
    reused from ``out_root``; minutes when the stage had to train)."""
    import time

    run = Run(profile, out_root, data=data, seed=seed, device=device, progress=progress, config_hook=config_hook)
    dirs, skipped, seconds = {}, {}, {}
    for m in methods:
        t0 = time.perf_counter()
        try:
            dirs[m] = run.labels(m)
        except MethodUnavailable as e:
            skipped[m] = str(e)
        seconds[m] = time.perf_counter() - t0
    return dirs, skipped, seconds


def method_keys(methods: Sequence[str] | None = None) -> list[str]:
    """The comparison's rows: ``methods`` (None: every method of :data:`METHODS`, in order) with ``"full"``
    appended when missing — the upper bound is the denominator of the weak/full ratio.

    Raises
    ------
    ValueError : an unknown key (the message lists the known ones).
    """
    keys = list(methods) if methods else list(DEFAULT_METHODS)
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    return keys if "full" in keys else keys + ["full"]


def label_dir_report(label_dir, dataset, context_pairs=None, progress: bool = False) -> dict:
    """:class:`~wsss_core.evaluation.LabelMapEvaluator` summary of the PNG label maps in ``label_dir``
    against ``dataset``'s true masks (every image of the dataset must have its ``<id>.png``);
    :func:`wsss_core.evaluation.evaluate_label_dir`."""
    return evaluate_label_dir(label_dir, dataset, context_pairs, progress=progress)


def weak_full_ratio(seg_miou: float, full_miou: float) -> float:
    """Segmentation mIoU with weak labels over the same network's with true masks (1.0 = no loss)."""
    return float(seg_miou) / float(full_miou) if full_miou and full_miou > 0 else float("nan")


def compare(methods: Sequence[str], profile: str, data, out_root, seg_cfg=None, seed: int = 0,
            device: str = "auto", progress: bool = True, log: Callable[[str], None] | None = print,
            score_train: bool = True, config_hook: Callable | None = None, seg_root=None) -> list[dict]:
    """Train and evaluate one segmenter per method; returns one row (dict) per method, in order.

    Each row: ``method``, ``title``, ``supervision``, ``pseudo_miou`` (train; 1.0 for ``full``),
    ``pseudo_fg_precision``/``_recall``, ``seg_miou`` (val), ``seg_fg_precision``/``_recall``,
    ``seg_context_leak``, ``ratio`` (weak/full; NaN without a ``full`` row), ``train_seconds``,
    ``label_dir``, ``seg_report`` (the full evaluator summary) and ``status`` ("ok" or why it was
    skipped), and — not written to metrics — ``model`` and ``history``. With ``score_train`` the
    segmenter is also scored on the *training* images against their true masks (``seg_train_miou``):
    the same images as ``pseudo_miou``, so the two say whether the network corrected its labels.
    Segmenters are cached under ``seg_root/<method>/`` (default ``out_root/06_segmentation_and_comparison``).
    """
    run = Run(profile, out_root, data=data, seed=seed, device=device, progress=progress, config_hook=config_hook)
    if seg_cfg is None:
        seg_cfg = Run(profile, out_root, data=data, seed=seed, device=device).cfg("segmentation")  # (no hook: as before)
    out = Path(seg_root) if seg_root is not None else Path(out_root) / NOTEBOOK
    images = _TrainImages(data, seg_cfg)  # the training images with their true masks, built once
    rows, dirs = [], {}
    for m in methods:
        meta = METHODS[m]
        row = {"method": m, "title": meta.title, "supervision": meta.supervision, "status": "ok"}
        rows.append(row)
        try:
            dirs[m] = run.labels(m)
        except MethodUnavailable as e:
            row["status"] = f"skipped: {e}"
            if log:
                log(f"[{m}] {row['status']}")
    _train_side_by_side(dirs, seg_cfg, data, out, score_train, progress, log)
    for row in rows:
        m = row["method"]
        if row["status"] != "ok":
            continue
        # here on all of this process's threads (the thread count is for the worker processes)
        row.update(_score(m, dirs[m], seg_cfg.replace(torch_threads=None), data, out, score_train, progress, images))
        if log:
            log(f"[{m}] pseudo-label mIoU {row['pseudo_miou']:.3f} (train) -> segmentation mIoU "
                f"{row['seg_miou']:.3f} (val), trained in {row['train_seconds']:.0f} s")
    full = next((r["seg_miou"] for r in rows if r["method"] == "full" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] == "ok":
            r["ratio"] = weak_full_ratio(r["seg_miou"], full) if full else float("nan")
    return rows


class _TrainImages:
    """The training split with its true masks (evaluation transforms), built on first use."""

    def __init__(self, data, seg_cfg):
        self.data, self.seg_cfg, self.ds = data, seg_cfg, None

    def __call__(self):
        from .stages import segmentation as seg

        if self.ds is None:
            self.ds = seg.label_dataset(self.data.root, self.data.train_split, self.seg_cfg, None, train=False,
                                        true_mask_dir=getattr(self.data, "mask_dir", "SegmentationClass"))
        return self.ds


def _score(m: str, d, seg_cfg, data, out: Path, score_train: bool, progress: bool, images) -> dict:
    """One row's figures: train (or reload) the segmenter on ``d``, its validation report, the pseudo-label
    report and (``score_train``) the segmenter on the training images — each cached next to the checkpoint
    (its folder is fingerprinted by the label folder, so the cached reports stay valid)."""
    import torch

    from .stages import segmentation as seg

    res = seg.run(seg_cfg, data, d, out / m, progress=progress)
    row = {"label_dir": str(d) if d is not None else None}
    if d is None:
        row.update(pseudo_miou=1.0, pseudo_fg_precision=1.0, pseudo_fg_recall=1.0)
    else:
        rep = _cached(res.checkpoint_dir / "pseudo_report.json",
                      lambda: label_dir_report(d, images(), data.context_pairs, progress=progress))
        row.update(pseudo_miou=rep["miou"], pseudo_fg_precision=rep["fg_precision"], pseudo_fg_recall=rep["fg_recall"])
    r = res.report
    row.update(seg_miou=r["miou"], seg_fg_precision=r["fg_precision"], seg_fg_recall=r["fg_recall"],
               seg_context_leak=r.get("context_leak", float("nan")), train_seconds=res.train_seconds,
               checkpoint_dir=str(res.checkpoint_dir), seg_report=r, model=res.model, history=res.history)
    if score_train:
        tag = f"s{'-'.join(f'{v:g}' for v in seg_cfg.eval_scales)}{'-flip' if seg_cfg.eval_flip else ''}{'-crf' if seg_cfg.crf else ''}"
        old = torch.get_num_threads()
        if seg_cfg.torch_threads:
            torch.set_num_threads(int(seg_cfg.torch_threads))
        try:
            tr = _cached(res.checkpoint_dir / f"train_report_{tag}.json",
                         lambda: seg.evaluate(res.model, images(), seg_cfg, data.context_pairs, progress=progress))
        finally:
            torch.set_num_threads(old)
        row["seg_train_miou"] = tr["miou"]
    return row


def _segmenter_worker(m: str, d, seg_cfg, data, out: Path, score_train: bool, threads: int):
    """One row in a worker process of :func:`_train_side_by_side`: train, score, write the cached reports."""
    import os
    import time

    import torch

    os.environ["TQDM_DISABLE"] = "1"  # the parent shows one bar over the segmenters; a worker's bars go nowhere useful
    torch.set_num_threads(max(1, int(threads)))
    t0 = time.perf_counter()
    _score(m, d, seg_cfg.replace(torch_threads=None), data, out, score_train, False, _TrainImages(data, seg_cfg))
    return m, time.perf_counter() - t0


def _train_side_by_side(dirs: dict, seg_cfg, data, out: Path, score_train: bool, progress: bool, log) -> None:
    """Train the segmenters that are not finished yet ``seg_cfg.train_workers`` at a time, in worker
    processes with ``seg_cfg.torch_threads`` threads each (CPU only; otherwise nothing happens here and
    :func:`compare` trains them one after the other). The workers leave finished checkpoints and cached
    reports, which :func:`compare` then reloads; the checkpoints are those of a serial run (same folders;
    thread counts change the last digits of the weights, not the run's identity)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch
    from tqdm.auto import tqdm

    from . import engine
    from .stages import segmentation as seg

    workers = int(getattr(seg_cfg, "train_workers", 1) or 1)
    todo = [m for m, d in dirs.items() if not seg.is_finished(seg.checkpoint_dir_for(seg_cfg, d, out / m))]
    if workers <= 1 or len(todo) <= 1 or engine.select_device(seg_cfg.train.device).type != "cpu":
        return
    n = min(workers, len(todo))
    threads = seg_cfg.torch_threads or max(1, torch.get_num_threads() // n)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads (Jupyter, torch)
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as ex:
        futs = [ex.submit(_segmenter_worker, m, dirs[m], seg_cfg, data, out, score_train, threads) for m in todo]
        for f in tqdm(as_completed(futs), total=len(futs), desc=f"segmenters, {n} at a time", disable=not progress):
            m, sec = f.result()  # re-raises a worker's error here
            if log:
                log(f"[{m}] segmenter trained and scored in a worker process ({sec:.0f} s)")


def _cached(path: Path, compute: Callable[[], dict]) -> dict:
    """``compute()``, stored as JSON at ``path`` and read from there next time."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    atomic_write_json(path, result, default=float)
    return result


def best_of(rows: Sequence[dict], supervision: Sequence[str]) -> dict | None:
    """The row with the highest segmentation mIoU among the given kinds of supervision."""
    cand = [r for r in rows if r.get("status") == "ok" and r["supervision"] in supervision]
    return max(cand, key=lambda r: r["seg_miou"]) if cand else None


def metrics_from_rows(rows: Sequence[dict]) -> dict:
    """The notebook's ``metrics.json``: flat keys per method (``pseudo_<m>_miou``, ``seg_<m>_miou``,
    ``ratio_<m>``), ``full_miou``, the best image-label and box methods with their weak/full ratios,
    and ``rows`` (every row without its bulky fields)."""
    out: dict = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        m = r["method"]
        if m == "full":
            out["full_miou"] = round(r["seg_miou"], 6)
            continue
        out[f"pseudo_{m}_miou"] = round(r["pseudo_miou"], 6)
        out[f"seg_{m}_miou"] = round(r["seg_miou"], 6)
        out[f"ratio_{m}"] = round(r["ratio"], 6)
    for kind, sup in (("image", ("image", "image+saliency")), ("box", ("box",))):
        b = best_of(rows, sup)
        if b is not None:
            out[f"best_{kind}_method"] = b["method"]
            out[f"best_{kind}_miou"] = round(b["seg_miou"], 6)
            out[f"best_{kind}_ratio"] = round(b["ratio"], 6)
    keep = ("method", "title", "supervision", "status", "pseudo_miou", "pseudo_fg_precision", "pseudo_fg_recall",
            "seg_train_miou", "seg_miou", "seg_fg_precision", "seg_fg_recall", "seg_context_leak", "ratio", "train_seconds")
    out["rows"] = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k in keep} for r in rows]
    return out


def table_markdown(rows: Sequence[dict], paper: bool = True) -> str:
    """The comparison table as Markdown (toy figures, and the papers' VOC figures when ``paper``)."""
    def pct(v):
        return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"

    head = "| method | supervision | pseudo-labels, train mIoU | segmenter, val mIoU | weak / full |"
    sep = "|---|---|---:|---:|---:|"
    if paper:
        head += " paper: pseudo (train) | paper: val | source |"
        sep += "---:|---:|---|"
    lines = [head, sep]
    for r in rows:
        meta = METHODS[r["method"]]
        if r.get("status") != "ok":
            cells = [meta.title, meta.supervision, r["status"], "", ""]
        else:
            cells = [meta.title, meta.supervision, pct(r["pseudo_miou"]), pct(r["seg_miou"]), f"{r['ratio']:.2f}"]
        if paper:
            p = meta.paper
            cells += ["–" if p.get("pseudo") is None else f"{p['pseudo']:.1f}",
                      "–" if p.get("val") is None else f"{p['val']:.1f}", p.get("source", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_metrics(path, rows: Sequence[dict], extra: dict | None = None) -> dict:
    """Write ``metrics_from_rows(rows)`` (+ ``extra``) as JSON to ``path``; returns the dict."""
    m = metrics_from_rows(rows)
    if extra:
        m.update(extra)
    atomic_write_json(path, m, default=float)
    return m
