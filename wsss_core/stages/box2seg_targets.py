"""Box2Seg stage, label making: GrabCut over a split, the per-image training targets and the dataset
that feeds them to the network.

:func:`raw_dataset`, :func:`grabcut_dir` / :func:`ensure_grabcut` (GrabCut labels, made once),
:func:`remove_objects` / :func:`missing_objects` (the missing-annotation experiment),
:class:`TargetStore` / :func:`build_targets` (target label map, box map, classes and filling rate ρ of
every box), :class:`BoxSupervisionDataset`, :func:`collate_boxes` and :func:`training_dataset`.
Re-exported by :mod:`wsss_core.stages.box2seg`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from ..boxes import (GrabCutConfig, box_index_map, filled_box_labels, make_grabcut_labels,
                     region_filling_rates)
from ..data.palette import read_label_png
from ..data.transforms import train_transforms
from ..data.voc import VOCLayoutDataset
from .box2seg_config import IGNORE, TARGETS, SegConfig

# ------------------------------------------------------------------------------------------------
# GrabCut over a split
# ------------------------------------------------------------------------------------------------
def raw_dataset(root, split, instances: bool = False, cache: bool = True, **kw) -> VOCLayoutDataset:
    """Images, masks and boxes (no transforms, no saliency); ``instances`` also reads instance masks."""
    return VOCLayoutDataset(root, split, saliency_dir=None, instance_dir="SegmentationObject" if instances else None,
                            cache=cache, **kw)


def grabcut_dir(out_dir, cfg: GrabCutConfig, split: str) -> Path:
    """``out_dir/grabcut/<split>-<fingerprint>``: one folder per GrabCut configuration."""
    return Path(out_dir) / "grabcut" / f"{split}-{cfg.fingerprint()}"


def ensure_grabcut(dataset: VOCLayoutDataset, out_dir, cfg: GrabCutConfig, workers: int | None = None,
                   progress: bool = True) -> tuple[Path, dict]:
    """GrabCut labels of ``dataset`` under :func:`grabcut_dir` (made once, then reused).

    Returns ``(folder, manifest)`` (see :func:`wsss_core.boxes.make_grabcut_labels`).
    """
    d = grabcut_dir(out_dir, cfg, dataset.split or f"n{len(dataset)}")
    man = make_grabcut_labels(dataset, d, cfg, workers=workers, progress=progress)
    return d, man


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
def remove_objects(mask, instance_mask, remove_ids) -> np.ndarray:
    """A class mask with some objects erased (set to background), as if the annotator had missed them.

    Pixels of the removed instances become 0; so do the 255 outline pixels that touch a removed object
    and no kept one (otherwise the ignore outline would betray the missing object).

    Parameters
    ----------
    mask : (H, W) uint8 class mask (255 = ignore)
    instance_mask : (H, W) uint8 instance ids (k = k-th object, 0 background, 255 outline)
    remove_ids : iterable of int instance ids

    Returns
    -------
    (H, W) uint8
    """
    import cv2

    mask = np.asarray(mask).copy()
    inst = np.asarray(instance_mask)
    rem = np.isin(inst, list(remove_ids))
    if not rem.any():
        return mask
    kept = (inst > 0) & (inst != IGNORE) & ~rem
    k3 = np.ones((3, 3), np.uint8)
    near_removed = cv2.dilate(rem.astype(np.uint8), k3) > 0
    near_kept = cv2.dilate(kept.astype(np.uint8), k3) > 0
    mask[rem] = 0
    mask[(mask == IGNORE) & near_removed & ~near_kept] = 0
    return mask


def missing_objects(ids: Sequence[str], n_objects: Sequence[int], share: float, seed: int) -> dict[str, list[int]]:
    """Which objects the missing-annotation experiment erases: ``round(share × total)`` objects drawn
    without replacement over the whole split (seeded), as ``{id: [instance ids]}``."""
    pool = [(iid, k) for iid, n in zip(ids, n_objects) for k in range(1, int(n) + 1)]
    rng = np.random.default_rng(seed)
    n_rem = int(round(share * len(pool)))
    pick = rng.choice(len(pool), size=n_rem, replace=False) if n_rem else []
    out: dict[str, list[int]] = {}
    for j in sorted(int(p) for p in pick):
        iid, k = pool[j]
        out.setdefault(iid, []).append(k)
    return out


@dataclass
class TargetStore:
    """Per-image training targets (numpy, in memory): ``target`` (H, W) uint8 label map,
    ``box_map`` (H, W) int16 (smallest box, −1 outside), ``box_classes`` (K,) int64, ``rho`` (K,) float32
    (GrabCut's filling rate of each box on its own pixels; NaN if none)."""

    kind: str
    items: dict[str, dict[str, np.ndarray]]

    def __len__(self) -> int:
        return len(self.items)

    def class_mean_rho(self) -> dict[int, float]:
        """``{class: mean ρ over the training boxes of that class}`` (BCM's per-class filling rate)."""
        vals: dict[int, list] = {}
        for t in self.items.values():
            for c, r in zip(t["box_classes"], t["rho"]):
                if np.isfinite(r):
                    vals.setdefault(int(c), []).append(float(r))
        return {c: float(np.mean(v)) for c, v in vals.items()}


def build_targets(kind: str, dataset: VOCLayoutDataset, gc_dir=None, missing: Mapping[str, list[int]] | None = None,
                  progress: bool = False) -> TargetStore:
    """Targets of every image of ``dataset`` (a :func:`raw_dataset`).

    Parameters
    ----------
    kind : {"box", "grabcut", "mask", "mask_missing"}
        The label map the cross-entropy uses: filled boxes, GrabCut labels (``gc_dir``), true masks,
        or true masks with the objects of ``missing`` removed (needs instance masks).
    gc_dir : path
        GrabCut labels (``<id>.png``); they also give every box's filling rate ρ (all kinds).
    missing : {id: [instance ids]}, for ``mask_missing``.

    Returns
    -------
    TargetStore
    """
    from tqdm.auto import tqdm

    if kind not in TARGETS:
        raise ValueError(f"unknown target kind {kind!r}; choose one of {TARGETS}")
    if gc_dir is None:
        raise ValueError("build_targets needs gc_dir: the GrabCut labels give every box's filling rate")
    items = {}
    for i in tqdm(range(len(dataset)), desc=f"targets ({kind})", disable=not progress):
        raw = dataset.get_raw(i)
        iid, shape = raw["id"], raw["image"].shape[:2]
        boxes, labels = raw["boxes"], raw["box_labels"]
        gc = read_label_png(Path(gc_dir) / f"{iid}.png")
        bmap = box_index_map(boxes, shape)
        if kind == "box":
            target = filled_box_labels(boxes, labels, shape)
        elif kind == "grabcut":
            target = gc
        elif kind == "mask":
            target = raw["mask"]
        else:
            if "instance_mask" not in raw:
                raise ValueError("mask_missing needs instance masks: build the dataset with raw_dataset(..., instances=True)")
            target = remove_objects(raw["mask"], raw["instance_mask"], (missing or {}).get(iid, []))
        items[iid] = {"target": np.asarray(target, np.uint8), "box_map": bmap.astype(np.int16),
                      "box_classes": np.asarray(labels, np.int64),
                      "rho": region_filling_rates(gc, bmap, labels).astype(np.float32)}
    return TargetStore(kind, items)


class BoxSupervisionDataset(torch.utils.data.Dataset):
    """Images with a training target, a box map and per-box classes / filling rates, augmented jointly.

    Each item: ``image`` (3, h, w) float (normalised), ``target`` (h, w) int64 (255 = ignore / padding),
    ``box_map`` (h, w) int64 (0..K−1 the image's boxes, −1 none or padding), ``box_classes`` (K,) int64,
    ``rho`` (K,) float32, ``id`` str. :func:`collate_boxes` turns a list of them into a batch with
    batch-wide box indices.
    """

    def __init__(self, base: VOCLayoutDataset, store: TargetStore, transforms=None, rho: str = "box"):
        missing = [i for i in base.ids if i not in store.items]
        if missing:
            raise ValueError(f"{len(missing)} images have no target (first: {missing[0]})")
        if rho not in ("box", "class_mean"):
            raise ValueError(f"rho must be 'box' or 'class_mean', got {rho!r}")
        self.base, self.store, self.transforms = base, store, transforms
        self.ids = base.ids
        self.rho_mode = rho
        self._class_rho = store.class_mean_rho() if rho == "class_mean" else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        raw = self.base.get_raw(i)
        t = self.store.items[raw["id"]]
        s = {"image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(raw["image"].transpose(2, 0, 1)))),
             "target": tv_tensors.Mask(torch.from_numpy(t["target"].astype(np.int64))),
             # box ids shifted by one so that padding (255) and "no box" (0) are both < 1 after the shift back
             "box_map": tv_tensors.Mask(torch.from_numpy(t["box_map"].astype(np.int64) + 1))}
        if self.transforms is not None:
            s = self.transforms(s)
        bm = s["box_map"].as_subclass(torch.Tensor).long()
        bm = torch.where(bm == IGNORE, torch.zeros_like(bm), bm) - 1
        rho = t["rho"]
        if self._class_rho is not None:
            rho = np.array([self._class_rho.get(int(c), np.nan) for c in t["box_classes"]], np.float32)
        return {"id": raw["id"], "image": s["image"].as_subclass(torch.Tensor),
                "target": s["target"].as_subclass(torch.Tensor).long(), "box_map": bm,
                "box_classes": torch.from_numpy(t["box_classes"]), "rho": torch.from_numpy(rho)}


def collate_boxes(batch: Sequence[dict]) -> dict:
    """Stack images / targets; concatenate boxes and offset each image's box ids into batch-wide ids."""
    out = {"id": [b["id"] for b in batch], "image": torch.stack([b["image"] for b in batch]),
           "target": torch.stack([b["target"] for b in batch])}
    maps, offset = [], 0
    for b in batch:
        bm = b["box_map"]
        maps.append(torch.where(bm >= 0, bm + offset, bm))
        offset += len(b["box_classes"])
    out["box_map"] = torch.stack(maps)
    out["box_classes"] = torch.cat([b["box_classes"] for b in batch]) if batch else torch.zeros(0, dtype=torch.long)
    out["rho"] = torch.cat([b["rho"] for b in batch]) if batch else torch.zeros(0)
    return out


def training_dataset(base: VOCLayoutDataset, store: TargetStore, seg: SegConfig, rho: str = "box") -> BoxSupervisionDataset:
    """:class:`BoxSupervisionDataset` with the joint training augmentation of ``seg`` (``rho``: see
    :class:`LossConfig`)."""
    tf = train_transforms(seg.crop_size, scale=seg.scale, long_side=seg.long_side, hflip=seg.hflip,
                          color_jitter=seg.color_jitter)
    return BoxSupervisionDataset(base, store, tf, rho=rho)
