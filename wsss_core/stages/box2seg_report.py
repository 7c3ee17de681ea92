"""Box2Seg stage, evaluation and reports: inference, validation scores, per-object and attention
measurements, GrabCut's report, figures, and the predicted label folders for later notebooks.

:func:`predict_maps`, :func:`evaluation_dataset`, :func:`evaluate_segmenter`; per object
(:func:`object_flags`, :func:`object_category`, :func:`object_rows`, :func:`summarise_objects`); the
attention (:func:`attention_report`, :func:`attention_by_grabcut_error`, :func:`box_attention_map`);
:func:`grabcut_report`; figures (:func:`pick_examples`, :func:`attention_cell`, :func:`prediction_grid`,
:func:`image_tensor`); labels for notebook 06 (:func:`box_constrained_labels`,
:func:`write_predicted_labels`). Nothing here trains. Re-exported by :mod:`wsss_core.stages.box2seg`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from .. import engine
from ..boxes import box_index_map, filled_box_labels
from ..data.palette import read_label_png
from ..data.transforms import eval_transforms
from ..data.voc import VOCLayoutDataset
from ..evaluation import LabelMapEvaluator
from ..models.segnet import SegNet
from .box2seg_config import IGNORE, SegConfig

# ------------------------------------------------------------------------------------------------
# inference and evaluation
# ------------------------------------------------------------------------------------------------
def _resize_for_inference(x: torch.Tensor, long_side: int | None) -> torch.Tensor:
    if long_side is None:
        return x
    h, w = x.shape[-2:]
    s = long_side / max(h, w)
    if abs(s - 1) < 1e-6:
        return x
    return F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False,
                         antialias=s < 1)


@torch.no_grad()
def predict_maps(model: SegNet, images: torch.Tensor, long_side: int | None = None, heads: Sequence[str] = ("seg",)) -> dict:
    """Network outputs for normalised images ``(B, 3, H, W)``, upsampled to ``(H, W)``.

    Returns a dict with ``prob`` (B, C+1, H, W) softmax, and where asked and built ``att`` (B, C, H, W)
    attention in [0, 1] and ``emb`` (B, E, h, w) (left on the decoder grid).
    """
    model = engine.unwrap(model)
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        x = images.to(dev)
        H, W = x.shape[-2:]
        out = model(_resize_for_inference(x, long_side))
        res = {"prob": torch.softmax(F.interpolate(out["seg"].float(), size=(H, W), mode="bilinear", align_corners=False), 1)}
        if "att" in heads and "att" in out:
            res["att"] = torch.sigmoid(F.interpolate(out["att"].float(), size=(H, W), mode="bilinear", align_corners=False))
        if "emb" in heads and "emb" in out:
            res["emb"] = out["emb"].float()
        return res
    finally:
        model.train(was)


def evaluation_dataset(root, split, seg: SegConfig | None = None, **kw) -> VOCLayoutDataset:
    """Validation images (normalised) + masks (+ part/context masks of the toy scenes)."""
    return VOCLayoutDataset(root, split, saliency_dir=None, instance_dir=None, transforms=eval_transforms(),
                            cache=seg.cache_images if seg is not None else False, **kw)


def evaluate_segmenter(model: SegNet, dataset: VOCLayoutDataset, context_pairs=None, batch_size: int = 50,
                       long_side: int | None = None, progress: bool = False, keep: Sequence[int] = ()) -> tuple[dict, dict]:
    """Score the segmentation branch on ``dataset`` (eval transforms, masks).

    Returns ``(summary, kept)``: :meth:`LabelMapEvaluator.summary` (mIoU, per-class IoU, fg precision /
    recall, part / body recall, context leak where available) and ``{index: (H, W) uint8 prediction}``
    for the indices in ``keep``.
    """
    from ..data.voc import collate_samples

    ev = LabelMapEvaluator(dataset.num_classes, context_pairs, dataset.class_names)
    same = (Path(dataset.root) / "toyscenes.json").is_file()
    bs = batch_size if same else 1
    keep = set(int(k) for k in keep)
    kept: dict[int, np.ndarray] = {}
    counter = [0]

    def fn(m, batch, dev):
        prob = predict_maps(m, batch["image"], long_side)["prob"]
        pred = prob.argmax(1).to(torch.uint8).cpu().numpy()
        for p in pred:
            i = counter[0]
            counter[0] += 1
            ev.update_from_sample(p, dataset.get_raw(i))
            if i in keep:
                kept[i] = p
        return None

    # fn pairs the k-th prediction with dataset.get_raw(k): every rank scores the whole split, in order
    engine.predict(model, dataset, fn, batch_size=bs, collate_fn=collate_samples, progress=progress, desc="evaluate",
                   shard=False)
    return ev.summary(), kept



# ------------------------------------------------------------------------------------------------
# per-object measurements (toy scenes: camouflaged / non-convex flags in the XML)
# ------------------------------------------------------------------------------------------------
def object_flags(dataset: VOCLayoutDataset, i: int) -> list[dict]:
    """The XML flags of item ``i``'s objects (:func:`wsss_core.boxes.read_object_flags`; [] without XML)."""
    from ..boxes import read_object_flags

    if dataset.annotation_dir is None:
        return []
    p = dataset.annotation_dir / f"{dataset.ids[i]}.xml"
    return read_object_flags(p) if p.is_file() else []


def object_category(flags: Mapping[str, int]) -> str:
    """``"camouflaged"``, ``"non-convex"`` (and not camouflaged) or ``"plain"``."""
    if flags.get("camouflaged"):
        return "camouflaged"
    if flags.get("nonconvex"):
        return "non-convex"
    return "plain"


def object_rows(raw: Mapping[str, Any], pred, flags: Sequence[Mapping[str, int]] | None = None,
                fill: Sequence[float] | None = None) -> list[dict]:
    """One record per object of an image: how much of it ``pred`` recovers and how much it over-takes.

    Parameters
    ----------
    raw : ``VOCLayoutDataset.get_raw`` sample with ``mask``, ``instance_mask``, ``boxes``, ``box_labels``,
        ``box_instance_ids``
    pred : (H, W) label map (GrabCut's, or a segmenter's)
    flags : per box, the XML flags (:func:`object_flags`)
    fill : per box, a filling rate to carry along (GrabCut's ρ from the manifest)

    Returns
    -------
    list of dict
        ``id``, ``k`` (box index), ``cls``, ``category``, ``area`` (object pixels), ``box_area``,
        ``true_fill`` (object pixels / box pixels), ``recall`` (object pixels given its class),
        ``taken`` (background pixels of the box given the class / background pixels of the box),
        and ``fill`` if given.
    """
    from ..boxes import box_pixels

    mask, inst = np.asarray(raw["mask"]), np.asarray(raw["instance_mask"])
    pred = np.asarray(pred)
    rows = []
    for k, (box, c, iid) in enumerate(zip(raw["boxes"], raw["box_labels"], raw["box_instance_ids"])):
        x1, y1, x2, y2 = box_pixels(box, mask.shape)
        obj = inst == iid
        m_box, p_box = mask[y1:y2, x1:x2], pred[y1:y2, x1:x2]
        bg = m_box == 0
        r = {"id": raw["id"], "k": k, "cls": int(c),
             "category": object_category(flags[k]) if flags is not None and k < len(flags) else "plain",
             "area": int(obj.sum()), "box_area": int((x2 - x1) * (y2 - y1)),
             "true_fill": float(obj[y1:y2, x1:x2].sum()) / max(1, (x2 - x1) * (y2 - y1)),
             "recall": float((pred[obj] == c).mean()) if obj.any() else float("nan"),
             "taken": float((p_box[bg] == c).mean()) if bg.any() else float("nan")}
        if fill is not None and k < len(fill):
            r["fill"] = float(fill[k])
        rows.append(r)
    return rows


def summarise_objects(rows: Sequence[Mapping[str, Any]], key: str = "category") -> dict:
    """Pool :func:`object_rows` records by ``key``: ``{group: {"n", "recall", "taken"}}`` (means over
    objects) plus an ``"all"`` entry."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    groups["all"] = list(rows)
    out = {}
    for g, rs in groups.items():
        rec = [r["recall"] for r in rs if not math.isnan(r["recall"])]
        tak = [r["taken"] for r in rs if not math.isnan(r["taken"])]
        out[g] = {"n": len(rs), "recall": float(np.mean(rec)) if rec else float("nan"),
                  "taken": float(np.mean(tak)) if tak else float("nan")}
    return out


ERROR_KINDS = ("object_kept", "background_taken", "object_missed", "background_left")
"""The four kinds of box pixel by GrabCut's label (object / background) and the truth, for
:func:`attention_by_grabcut_error`: ``background_taken`` = over-estimation, ``object_missed`` =
under-estimation."""


def attention_report(model: SegNet, dataset: VOCLayoutDataset, gc_dir, n: int | None = None,
                     long_side: int | None = None, flags: Mapping[int, Sequence[Mapping[str, int]]] | None = None,
                     batch_size: int = 50) -> dict:
    """Box2Seg's attention against GrabCut's labels and the truth, over the first ``n`` images of ``dataset``.

    ``dataset`` is a :func:`raw_dataset` with true masks. For every box ``k`` of class ``c`` and its own
    pixels ``Ω_k`` (the pixels whose smallest box it is; ignore pixels skipped):

    * ``by_error``: the mean attention ``A_c`` on four kinds of box pixel (:data:`ERROR_KINDS`):
      ``object_kept`` (GrabCut ``c``, truth ``c``), ``background_taken`` (GrabCut ``c``, truth not ``c``:
      a wrong foreground label), ``object_missed`` (GrabCut not ``c``, truth ``c``: a wrong background
      label) and ``background_left`` (neither) — ``{kind: {"attention", "pixels"}}`` (NaN if no pixel);
    * ``boxes``: one record per box, ``attention`` (mean ``A_c`` on ``Ω_k``), ``rho`` (GrabCut's filling rate
      of ``Ω_k``, the target of B3), ``true_fill`` (the truth's) and ``category`` (:func:`object_category`
      from ``flags[i]``, else ``"plain"``).

    Same-sized images (the toy scenes) go through the network ``batch_size`` at a time; ``long_side``
    resizes photos for inference (:func:`predict_maps`), the attention is scored at full size.
    """
    if getattr(engine.unwrap(model), "att_head", None) is None:
        raise ValueError("the model has no attention head (train a setting with awl_weight or fill_weight > 0)")
    sums = dict.fromkeys(ERROR_KINDS, 0.0)
    counts = dict.fromkeys(ERROR_KINDS, 0)
    records = []
    n = len(dataset) if n is None else min(n, len(dataset))
    root = getattr(dataset, "root", None)
    same = root is not None and (Path(root) / "toyscenes.json").is_file()
    bs = max(1, batch_size) if same else 1
    for s0 in range(0, n, bs):
        raws = [dataset.get_raw(i) for i in range(s0, min(n, s0 + bs))]
        x = torch.stack([image_tensor(r["image"]) for r in raws])
        att_b = predict_maps(model, x, long_side, heads=("att",))["att"].numpy()
        for j, raw in enumerate(raws):
            i, att = s0 + j, att_b[j]
            gc = read_label_png(Path(gc_dir) / f"{raw['id']}.png")
            m = raw["mask"]
            bmap = box_index_map(raw["boxes"], m.shape)
            fl = (flags or {}).get(i) or []
            for k, c in enumerate(raw["box_labels"]):
                region = bmap == k
                own = region & (m != IGNORE)
                g, t = gc == c, m == c
                for kind, sel in (("object_kept", g & t), ("background_taken", g & ~t), ("object_missed", ~g & t),
                                  ("background_left", ~g & ~t)):
                    sel = sel & own
                    sums[kind] += float(att[c - 1][sel].sum())
                    counts[kind] += int(sel.sum())
                if region.any():
                    records.append({"id": raw["id"], "k": k, "cls": int(c),
                                    "attention": float(att[c - 1][region].mean()),
                                    "rho": float(g[region].mean()), "true_fill": float(t[own].mean()) if own.any() else math.nan,
                                    "category": object_category(fl[k]) if k < len(fl) else "plain"})
    by_error = {k: {"attention": sums[k] / counts[k] if counts[k] else math.nan, "pixels": counts[k]} for k in ERROR_KINDS}
    return {"by_error": by_error, "boxes": records, "n_images": n}


def attention_by_grabcut_error(model: SegNet, dataset: VOCLayoutDataset, gc_dir, n: int | None = None,
                               long_side: int | None = None) -> dict:
    """Mean attention ``A_c`` of each box's class on the box's own pixels, by what GrabCut did there:
    ``{kind: {"attention": mean A (NaN if no pixel), "pixels": count}}`` for the kinds of
    :data:`ERROR_KINDS` (:func:`attention_report`'s ``by_error``)."""
    return attention_report(model, dataset, gc_dir, n, long_side)["by_error"]


def box_attention_map(model: SegNet, raw: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(A, box_map)``: the attention of each pixel's (smallest) box class, ``(H, W)`` float with NaN outside
    every box, and :func:`wsss_core.boxes.box_index_map` of the image's boxes."""
    att = predict_maps(model, image_tensor(raw["image"])[None], heads=("att",))["att"][0].numpy()
    bmap = box_index_map(raw["boxes"], raw["mask"].shape)
    out = np.full(bmap.shape, np.nan, np.float32)
    for k, c in enumerate(raw["box_labels"]):
        out[bmap == k] = att[c - 1][bmap == k]
    return out, bmap


def grabcut_report(dataset: VOCLayoutDataset, gc_dir, fill: Mapping[str, Sequence[float]] | None = None,
                   flags: Mapping[int, Sequence[Mapping[str, int]]] | None = None, progress: bool = False) -> dict:
    """GrabCut's labels (``gc_dir``) and the filled boxes against the true masks of ``dataset`` (a
    :func:`raw_dataset`; with instance masks, per object as well).

    Returns
    -------
    dict
        ``box`` / ``grabcut``: ``{"miou", "fg_precision", "fg_recall", **GrabCutStats.summary()}`` (miss
        rate = under-estimation, take rate = over-estimation inside boxes); ``objects``: GrabCut's
        :func:`object_rows` (with ``fill`` = its ρ from the manifest's ``fill`` when given) and
        ``by_category``: :func:`summarise_objects` of them.
    """
    from tqdm.auto import tqdm

    from ..boxes import GrabCutStats
    from ..metrics import ConfusionMatrix

    C1 = dataset.num_classes + 1
    cms = {"box": ConfusionMatrix(C1), "grabcut": ConfusionMatrix(C1)}
    stats = {"box": GrabCutStats(), "grabcut": GrabCutStats()}
    rows = []
    for i in tqdm(range(len(dataset)), desc="score GrabCut", disable=not progress):
        r = dataset.get_raw(i)
        labs = {"grabcut": read_label_png(Path(gc_dir) / f"{r['id']}.png"),
                "box": filled_box_labels(r["boxes"], r["box_labels"], r["mask"].shape)}
        for k, lab in labs.items():
            cms[k].update(lab, r["mask"])
            stats[k].update(lab, r["mask"], r["boxes"])
        if "instance_mask" in r:
            rows += object_rows(r, labs["grabcut"], (flags or {}).get(i), (fill or {}).get(r["id"]))
    out = {k: {"miou": float(cms[k].miou()), "fg_precision": float(cms[k].fg_precision()),
               "fg_recall": float(cms[k].fg_recall()), **stats[k].summary()} for k in cms}
    out["objects"] = rows
    out["by_category"] = summarise_objects(rows) if rows else {}
    return out


def pick_examples(n: int, n_images: int, rng: np.random.Generator,
                  flags: Mapping[int, Sequence[Mapping[str, int]]] | None = None) -> list[int]:
    """``n`` image indices for the figures: one with a camouflaged object and one with a non-convex object
    where ``flags`` (``{index: object_flags}``) has them, the rest drawn with ``rng``; sorted."""
    chosen: list[int] = []
    for want in ("camouflaged", "nonconvex"):
        cand = [i for i, fl in (flags or {}).items() if any(f.get(want) for f in fl) and i not in chosen]
        if cand and len(chosen) < n:
            chosen.append(int(rng.choice(cand)))
    rest = [i for i in range(n_images) if i not in chosen]
    k = max(0, min(n, n_images) - len(chosen))
    chosen += [int(i) for i in rng.choice(rest, size=k, replace=False)] if k else []
    return sorted(chosen[:n])


def attention_cell(image, attention) -> np.ndarray:
    """The attention inside the boxes as a heat map (blue 0 → red 1) on the image; outside the boxes
    (NaN) the image dimmed."""
    from .. import viz

    a = np.asarray(attention)
    hm = viz.heatmap(image, np.nan_to_num(a), alpha=0.65)
    dim = (0.35 * viz.as_image(image)).astype(np.uint8)
    return np.where(np.isnan(a)[..., None], dim, hm)


def prediction_grid(dataset: VOCLayoutDataset, indices: Sequence[int], models: Mapping[str, SegNet],
                    long_side: int | None = None, n_classes: int | None = None, size: float = 1.8):
    """A figure with one row per image: the image, its true mask and each model's prediction (the
    segmentation branch; with ``n_classes`` the image's mIoU in each title). ``dataset`` yields
    normalised images (:func:`evaluation_dataset`)."""
    from .. import viz
    from ..metrics import ConfusionMatrix

    cells, titles = [], []
    for i in indices:
        r = dataset.get_raw(int(i))
        row, t = [r["image"], viz.overlay(r["image"], r["mask"])], [r["id"], "true mask"]
        for name, model in models.items():
            p = predict_maps(model, dataset[int(i)]["image"][None], long_side)["prob"][0].argmax(0).numpy()
            row.append(viz.overlay(r["image"], p))
            t.append(name if n_classes is None else
                     f"{name}\nimage mIoU {ConfusionMatrix(n_classes).update(p, r['mask']).miou():.2f}")
        cells.append(row)
        titles.append(t)
    return viz.image_grid(cells, titles=titles, size=size)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """A raw ``(H, W, 3) uint8`` image as the network's input ``(3, H, W)`` float (eval transforms)."""
    x = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))))
    return eval_transforms()({"image": x})["image"].as_subclass(torch.Tensor)



# ------------------------------------------------------------------------------------------------
# the whole stage for later notebooks (06): pseudo-label folders of the training split
# ------------------------------------------------------------------------------------------------
def box_constrained_labels(prob: np.ndarray, boxes, box_labels) -> np.ndarray:
    """A segmenter's prediction restricted by the image's boxes (what a box annotation allows).

    Pixels outside every box are background; a pixel inside boxes takes the most probable of
    background and the classes of the boxes that contain it. (Our choice for turning a box-supervised
    network's output into training labels; not from the paper.)

    Parameters
    ----------
    prob : (C+1, H, W) float class probabilities (index 0 = background)
    boxes : (K, 4) XYXY, 0-based, exclusive
    box_labels : (K,) int classes (1..C)

    Returns
    -------
    (H, W) uint8 label map
    """
    from ..boxes import box_pixels

    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise ValueError(f"prob must be (C+1, H, W), got shape {prob.shape}")
    allowed = np.zeros(prob.shape, bool)
    allowed[0] = True
    for box, c in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(box_labels).reshape(-1)):
        if not 0 < int(c) < prob.shape[0]:
            raise ValueError(f"box class {int(c)} outside 1..{prob.shape[0] - 1}")
        x1, y1, x2, y2 = box_pixels(box, prob.shape[1:])
        allowed[int(c), y1:y2, x1:x2] = True
    return np.where(allowed, prob, -1.0).argmax(0).astype(np.uint8)


def write_predicted_labels(model: SegNet, dataset: VOCLayoutDataset, out_dir, long_side: int | None = None,
                           constrain_to_boxes: bool = True, progress: bool = True) -> dict:
    """Write the segmentation branch's prediction for every image of ``dataset`` (a :func:`raw_dataset`)
    as ``out_dir/<id>.png`` (palette PNG of class indices), and score them against the masks.

    Returns ``{"miou", "fg_precision", "fg_recall", "n"}`` of the written labels.
    """
    from tqdm.auto import tqdm

    from ..data.palette import write_label_png
    from ..metrics import ConfusionMatrix

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = ConfusionMatrix(dataset.num_classes + 1)
    for i in tqdm(range(len(dataset)), desc="Box2Seg labels", disable=not progress):
        raw = dataset.get_raw(i)
        prob = predict_maps(model, image_tensor(raw["image"])[None], long_side)["prob"][0].numpy()
        lab = (box_constrained_labels(prob, raw["boxes"], raw["box_labels"]) if constrain_to_boxes
               else prob.argmax(0).astype(np.uint8))
        write_label_png(out_dir / f"{raw['id']}.png", lab)
        if "mask" in raw:
            cm.update(lab, raw["mask"])
    return {"miou": float(cm.miou()), "fg_precision": float(cm.fg_precision()), "fg_recall": float(cm.fg_recall()),
            "n": len(dataset)}
