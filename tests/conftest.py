"""Generic test fixtures: a factory for small VOC-layout trees, and the location of the real data."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from PIL import Image

from wsss_core.data.palette import write_gray_png, write_label_png

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------
def shared_data_dir() -> Path:
    """Where the real datasets live: ``$WSSS_SHARED_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("WSSS_SHARED_DATA")
    return Path(env).expanduser() if env else (REPO.parent / "shared" / "data").resolve()


def require_shared_data(name: str | None = None) -> Path:
    """Return the shared data folder (or its sub-folder ``name``); ``pytest.skip`` naming the path
    tried if it is absent."""
    base = shared_data_dir()
    path = base / name if name else base
    if not path.is_dir():
        how = "WSSS_SHARED_DATA" if os.environ.get("WSSS_SHARED_DATA") else "<repo>/../shared/data"
        pytest.skip(f"real data not found at {path} (from {how}; set WSSS_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (skips the test if absent)."""
    return require_shared_data()


# --------------------------------------------------------------------------------------------------
# small VOC trees
# --------------------------------------------------------------------------------------------------
def voc_xml(filename: str, width: int, height: int, objects: Sequence[dict[str, Any]]) -> str:
    """A VOC annotation. ``objects``: dicts with ``name`` and raw VOC ``bndbox`` (xmin, ymin, xmax,
    ymax; 1-based inclusive), optional ``difficult``."""
    objs = []
    for o in objects:
        xmin, ymin, xmax, ymax = o["bndbox"]
        objs.append(
            f"""  <object>
    <name>{o['name']}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>{int(o.get('difficult', False))}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
  </object>"""
        )
    return (
        f"<annotation>\n  <folder>VOC2012</folder>\n  <filename>{filename}</filename>\n"
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
        f"  <segmented>1</segmented>\n" + "\n".join(objs) + "\n</annotation>\n"
    )


#: default items: id → (H, W) and objects (class index, 0-based exclusive box x1, y1, x2, y2, difficult)
DEFAULT_ITEMS: dict[str, dict[str, Any]] = {
    "img_a": {"size": (20, 30), "objects": [(15, (2, 3, 12, 10), False), (7, (16, 5, 28, 18), True)]},
    "img_b": {"size": (24, 24), "objects": [(3, (4, 6, 14, 22), False)]},
    "img_c": {"size": (18, 22), "objects": [(15, (1, 1, 8, 9), False), (15, (10, 2, 21, 17), False),
                                            (20, (0, 12, 6, 18), False)]},
}


@dataclass
class VOCTree:
    """A VOC-layout tree written by :func:`make_voc_tree`.

    ``base`` is the path to pass as ``root``; ``root`` the folder holding ``JPEGImages/``; ``items`` the
    spec it was drawn from; ``class_names`` the names used for XML objects.
    """

    base: Path
    root: Path
    items: dict[str, dict[str, Any]]
    class_names: list[str]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    instances: dict[str, np.ndarray] = field(default_factory=dict)

    def path(self, folder: str, id_: str, ext: str = ".png") -> Path:
        return self.root / folder / f"{id_}{ext}"

    def write_xml(self, id_: str, objects: Sequence[dict[str, Any]], size: tuple[int, int] | None = None) -> Path:
        h, w = size or self.items[id_]["size"]
        p = self.path("Annotations", id_, ".xml")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(voc_xml(f"{id_}.jpg", w, h, objects))
        return p

    def write_label(self, folder: str, id_: str, arr: np.ndarray) -> Path:
        p = self.path(folder, id_)
        write_label_png(p, arr)
        return p

    def write_image(self, id_: str, hw: tuple[int, int], seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        p = self.path("JPEGImages", id_, ".jpg")
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(p, quality=95)
        return p


@pytest.fixture
def make_voc_tree(tmp_path):
    """Factory writing a small VOC-layout tree; returns a :class:`VOCTree`.

    Keyword arguments: ``items`` (see ``DEFAULT_ITEMS``), ``nest`` (None, ``"VOC2012"`` or
    ``"VOCdevkit"``), ``splits`` ({name: ids}; default train = all ids), ``class_names`` (written to
    class_names.txt if given; default the VOC names), ``mask_dir``, ``instances``, ``xml``,
    ``saliency``, ``extras`` (PartMask/ContextMask), ``ignore_border`` (255 ring around objects).

    Masks paint objects in order (k-th object → instance id k); the XML boxes are the 1-based
    inclusive form of the given 0-based exclusive boxes.
    """
    from wsss_core.data.voc import VOC_CLASSES

    counter = [0]

    def make(items=None, *, nest=None, splits=None, class_names=None, mask_dir="SegmentationClass",
             instances=True, xml=True, saliency=False, extras=False, ignore_border=True) -> VOCTree:
        counter[0] += 1
        base = tmp_path / f"tree{counter[0]}"
        root = base if nest is None else base / ("VOC2012" if nest == "VOC2012" else "VOCdevkit/VOC2012")
        items = DEFAULT_ITEMS if items is None else items
        names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        tree = VOCTree(base=base, root=root, items={k: dict(v) for k, v in items.items()}, class_names=names)
        for n, (id_, spec) in enumerate(items.items()):
            h, w = spec["size"]
            tree.write_image(id_, (h, w), seed=n)
            sem = np.zeros((h, w), np.uint8)
            inst = np.zeros((h, w), np.uint8)
            for k, (c, (x1, y1, x2, y2), _d) in enumerate(spec["objects"], start=1):
                if ignore_border:  # a 1-px ignore ring outside the object, like VOC's boundaries
                    ring = (slice(max(y1 - 1, 0), y2 + 1), slice(max(x1 - 1, 0), x2 + 1))
                    sem[ring] = np.where(sem[ring] == 0, 255, sem[ring])
                    inst[ring] = np.where(inst[ring] == 0, 255, inst[ring])
                sem[y1:y2, x1:x2] = c
                inst[y1:y2, x1:x2] = k
            tree.masks[id_], tree.instances[id_] = sem, inst
            if mask_dir:
                tree.write_label(mask_dir, id_, sem)
            if instances:
                tree.write_label("SegmentationObject", id_, inst)
            if xml:
                tree.write_xml(id_, [
                    {"name": names[c], "bndbox": (x1 + 1, y1 + 1, x2, y2), "difficult": d}
                    for c, (x1, y1, x2, y2), d in spec["objects"]
                ])
            if saliency:
                sal = np.where((sem > 0) & (sem < 255), 1.0, 0.0).astype(np.float32)
                sal[0, 0] = 0.5
                write_gray_png(root / "Saliency" / f"{id_}.png", sal)
            if extras:
                part = np.zeros((h, w), np.uint8)
                for c, (x1, y1, _x2, _y2), _d in spec["objects"]:
                    part[y1:y1 + 2, x1:x1 + 2] = c
                ctx = np.zeros((h, w), np.uint8)
                ctx[-3:, :] = 2
                tree.write_label("PartMask", id_, part)
                tree.write_label("ContextMask", id_, ctx)
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        for split, ids in (splits or {"train": list(items)}).items():
            (sets / f"{split}.txt").write_text("\n".join(ids) + "\n\n")
        if class_names is not None:
            (root / "class_names.txt").write_text("\n".join(names) + "\n")
        return tree

    return make
