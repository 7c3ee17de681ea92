"""The one reader for PASCAL-VOC-layout trees.

One code path serves real PASCAL VOC 2012, SBD's ``SegmentationClassAug`` (as an alternative mask
folder), the project's generated toy scenes and the real datasets converted to this layout
(``grabcut_voc``, ``weizmann_horse_voc``)::

    <root>/                       (or <root>/VOC2012/, or <root>/VOCdevkit/VOC2012/)
        JPEGImages/<id>.jpg                RGB photo
        SegmentationClass/<id>.png         palette PNG, class index per pixel, 255 = ignore
        SegmentationObject/<id>.png        palette PNG, k = k-th object of the XML, 255 = ignore
        Annotations/<id>.xml               VOC XML: object names and 1-based inclusive boxes
        ImageSets/Segmentation/<split>.txt one id per line
        class_names.txt                    optional, one name per line, line 0 = background
        Saliency/<id>.png                  optional grey saliency maps
        PartMask/<id>.png, ContextMask/<id>.png   optional (toy scenes)

Every bad file raises :class:`~wsss_core.data.palette.DatasetError` naming the file and the problem,
when the item is loaded; :meth:`VOCLayoutDataset.validate` loads everything and reports all problems
at once.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from .palette import DatasetError, read_gray_png, read_image, read_label_png
from .transforms import PER_BOX_KEYS, Saliency

__all__ = [
    "VOC_CLASSES",
    "VOCLayoutDataset",
    "collate_samples",
    "resolve_voc_root",
    "read_class_names",
    "parse_voc_xml",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

IGNORE = 255
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_AUTO_EXTRAS = {"part_mask": "PartMask", "context_mask": "ContextMask"}
_DEFAULT_MASK_DIR = "SegmentationClass"
_DEFAULT_INSTANCE_DIR = "SegmentationObject"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def resolve_voc_root(root: str | os.PathLike) -> Path:
    """Find the folder holding ``JPEGImages/``: ``root`` itself, ``root/VOC2012`` or
    ``root/VOCdevkit/VOC2012``.

    Raises
    ------
    DatasetError
        Naming ``root`` and the places looked at, if none holds ``JPEGImages/``.
    """
    root = Path(root).expanduser()
    candidates = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
    for c in candidates:
        if (c / "JPEGImages").is_dir():
            return c
    if not root.exists():
        raise DatasetError(f"{root}: dataset root does not exist")
    looked = ", ".join(str(c / "JPEGImages") for c in candidates)
    raise DatasetError(f"{root}: not a VOC-layout tree; looked for a JPEGImages/ folder at {looked}")


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Read ``class_names.txt``: one name per line, blank lines ignored, line 0 = background."""
    path = Path(path)
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read class names ({e})") from e
    if len(names) < 2:
        raise DatasetError(f"{path}: needs at least 2 class names (background + 1 class), got {names}")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DatasetError(f"{path}: duplicate class names {dups}")
    return names


def parse_voc_xml(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse the ``<object>`` entries of a VOC annotation.

    Only direct ``<object>/<name>`` children are read (person-layout ``<part>`` names are ignored).

    Returns
    -------
    list of dict
        One dict per object, in file order: ``name`` (str), ``bbox`` ((4,) float: the raw 1-based
        inclusive ``xmin, ymin, xmax, ymax``) or None if the object has no ``<bndbox>``,
        ``difficult`` (bool).

    Raises
    ------
    DatasetError
        If the file cannot be parsed or a box coordinate is missing / not a number.
    """
    path = Path(path)
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise DatasetError(f"{path}: malformed XML annotation ({e})") from e
    objs = []
    for k, obj in enumerate(tree.getroot().findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{path}: object {k} has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip()
        bb = obj.find("bndbox")
        bbox = None
        if bb is not None:
            vals = []
            for tag in ("xmin", "ymin", "xmax", "ymax"):
                txt = bb.findtext(tag)
                try:
                    vals.append(float(txt))
                except (TypeError, ValueError):
                    raise DatasetError(
                        f"{path}: object {k} ({name!r}) has a missing or non-numeric <{tag}> ({txt!r})"
                    ) from None
            bbox = np.array(vals, dtype=np.float32)
        try:
            diff = bool(int(float(difficult)))
        except ValueError:
            raise DatasetError(f"{path}: object {k} ({name!r}) has <difficult>{difficult}</difficult>") from None
        objs.append({"name": name, "bbox": bbox, "difficult": diff})
    return objs


def _size_str(hw: Sequence[int]) -> str:
    return f"{hw[1]}x{hw[0]} (WxH)"


def _boxes_from_instances(inst: np.ndarray, sem: np.ndarray | None):
    """Tight boxes ``(K, 4)`` float32 0-based XYXY (exclusive x2/y2) of each instance id (not 0/255),
    their ids ``(K,)`` and labels ``(K,)`` (the majority class of ``sem`` under the instance)."""
    ids = [int(v) for v in np.unique(inst) if v not in (0, IGNORE)]
    boxes, labels, keep = [], [], []
    for v in ids:
        ys, xs = np.nonzero(inst == v)
        lab = 0
        if sem is not None:
            cls = sem[ys, xs]
            cls = cls[(cls != 0) & (cls != IGNORE)]
            if cls.size:
                lab = int(np.bincount(cls).argmax())
        if lab == 0:
            continue  # an instance whose class is unknown cannot give a labelled box
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(lab)
        keep.append(v)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(keep, np.int64),
            np.asarray(labels, np.int64))


# --------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------
class VOCLayoutDataset(torch.utils.data.Dataset):
    """A PASCAL-VOC-layout tree as a dataset of sample dicts.

    Parameters
    ----------
    root : path
        The folder holding ``JPEGImages/`` etc., or a parent with ``VOC2012/`` or
        ``VOCdevkit/VOC2012/`` in it.
    split : str or sequence of str
        Name of ``ImageSets/Segmentation/<split>.txt`` (one id per line), or the ids themselves.
    mask_dir : str or None
        Class-mask folder: ``"SegmentationClass"`` (VOC) or ``"SegmentationClassAug"`` (SBD). If the
        default folder is absent samples have no ``"mask"``; a non-default folder must exist.
    instance_dir : str or None
        Instance-mask folder (``"SegmentationObject"``); used where the folder / file exists.
    saliency_dir : "auto", str or None
        ``"auto"`` uses ``Saliency/`` if present; a name must exist; None disables saliency.
    extra_dirs : "auto", dict or None
        ``"auto"`` loads ``PartMask/`` → ``"part_mask"`` and ``ContextMask/`` → ``"context_mask"``
        where present; a dict ``{key: folder}`` names them explicitly (folders must exist).
    class_names : sequence of str, optional
        Overrides ``class_names.txt`` / the 21 VOC names; index 0 is background.
    transforms : callable, optional
        Applied to the sample dict last (e.g. :func:`wsss_core.data.transforms.train_transforms`).
    require_masks : bool
        If True a listed id whose mask file is missing is an error; if False its mask is all 255.
    annotation_dir : str or None
        XML folder (``"Annotations"``); used where the folder / file exists.
    cache : bool
        Keep every decoded item (numpy arrays, before transforms) in memory after its first load:
        for small datasets such as the toy scenes (2 500 images of 96×96 ≈ 70 MB with all masks),
        so that epochs after the first cost no file reads. Each DataLoader worker has its own cache.

    Attributes
    ----------
    root : Path
        The resolved folder holding ``JPEGImages/``.
    ids : list of str
    class_names : list of str
        Including background at index 0.
    num_classes : int
        Number of foreground classes (20 for VOC).

    Notes
    -----
    ``dataset[i]`` returns::

        id             str
        image          tv_tensors.Image  (3, H, W) uint8
        mask           tv_tensors.Mask   (H, W) int64, 0..num_classes or 255     (if masks exist)
        instance_mask  tv_tensors.Mask   (H, W) int64, 0 bg, k = k-th object, 255 (if present)
        boxes          tv_tensors.BoundingBoxes (K, 4) float32 XYXY, 0-based, x2/y2 exclusive,
                       i.e. (xmin - 1, ymin - 1, xmax, ymax) of the VOC XML
        box_labels     (K,) int64 in 1..num_classes
        box_difficult  (K,) bool (difficult objects are kept)
        box_instance_ids (K,) int64: the instance id of each box (k for the k-th XML object)
        label          (num_classes,) float32 multi-hot; index c - 1 is class c
        saliency       Saliency (a tv_tensors.Mask) (H, W) float32 in [0, 1]    (if used)
        part_mask, context_mask, ...  tv_tensors.Mask (H, W) int64              (if present)

    Without an XML, boxes are the tight boxes of the instance mask's ids (labelled by the class mask)
    and the label is the set of classes present in the mask.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | Sequence[str] = "train",
        *,
        mask_dir: str | None = _DEFAULT_MASK_DIR,
        instance_dir: str | None = _DEFAULT_INSTANCE_DIR,
        saliency_dir: str | None = "auto",
        extra_dirs: str | Mapping[str, str] | None = "auto",
        class_names: Sequence[str] | None = None,
        transforms: Callable[[dict], dict] | None = None,
        require_masks: bool = True,
        annotation_dir: str | None = "Annotations",
        cache: bool = False,
    ) -> None:
        self.root = resolve_voc_root(root)
        self.cache = cache
        self._raw_cache: dict[int, dict[str, Any]] = {}
        self.split = split if isinstance(split, str) else None
        self.transforms = transforms
        self.require_masks = require_masks

        # ids
        if isinstance(split, str):
            self.ids = self._read_split(split)
        else:
            self.ids = [str(s) for s in split]

        # classes
        if class_names is not None:
            self.class_names = [str(c) for c in class_names]
            if len(self.class_names) < 2:
                raise DatasetError(f"class_names needs background + at least 1 class, got {self.class_names}")
        elif (self.root / "class_names.txt").is_file():
            self.class_names = read_class_names(self.root / "class_names.txt")
        else:
            self.class_names = list(VOC_CLASSES)
        self.num_classes = len(self.class_names) - 1
        self._class_index = {n: i for i, n in enumerate(self.class_names)}

        # folders
        self.image_dir = self.root / "JPEGImages"
        self.mask_dir = self._opt_dir(mask_dir, _DEFAULT_MASK_DIR, "mask_dir")
        self.instance_dir = self._opt_dir(instance_dir, _DEFAULT_INSTANCE_DIR, "instance_dir")
        self.annotation_dir = self._opt_dir(annotation_dir, "Annotations", "annotation_dir")
        if saliency_dir == "auto":
            self.saliency_dir = self.root / "Saliency" if (self.root / "Saliency").is_dir() else None
        else:
            self.saliency_dir = self._opt_dir(saliency_dir, None, "saliency_dir")
        self.extra_dirs: dict[str, Path] = {}
        if extra_dirs == "auto":
            for key, folder in _AUTO_EXTRAS.items():
                if (self.root / folder).is_dir():
                    self.extra_dirs[key] = self.root / folder
        elif extra_dirs is not None:
            for key, folder in dict(extra_dirs).items():
                self.extra_dirs[key] = self._opt_dir(folder, None, f"extra_dirs[{key!r}]")
        self._labels_cache: torch.Tensor | None = None

    # ---------------------------------------------------------------------------------------------
    def _read_split(self, split: str) -> list[str]:
        sets = self.root / "ImageSets" / "Segmentation"
        path = sets / f"{split}.txt"
        if not path.is_file():
            avail = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
            hint = f"available splits: {avail}" if avail else f"no split lists in {sets}"
            raise DatasetError(f"{path}: split list for split {split!r} does not exist; {hint}")
        try:
            ids = [ln.strip().split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: cannot read split list ({e})") from e
        if not ids:
            raise DatasetError(f"{path}: split list is empty")
        return ids

    def _opt_dir(self, name: str | None, default: str | None, what: str) -> Path | None:
        """Resolve an optional folder: None → None; the default name → None if absent; any other
        name (relative to root, or absolute) must exist."""
        if name is None:
            return None
        p = Path(name)
        p = p if p.is_absolute() else self.root / p
        if p.is_dir():
            return p
        if default is not None and name == default:
            return None
        raise DatasetError(f"{p}: folder given as {what}={name!r} does not exist")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        parts = [f"root={str(self.root)!r}", f"split={self.split!r}", f"n={len(self)}",
                 f"num_classes={self.num_classes}"]
        for nm in ("mask_dir", "instance_dir", "saliency_dir"):
            d = getattr(self, nm)
            if d is not None:
                parts.append(f"{nm}={d.name!r}")
        if self.extra_dirs:
            parts.append(f"extra_dirs={ {k: v.name for k, v in self.extra_dirs.items()} }")
        return f"VOCLayoutDataset({', '.join(parts)})"

    # ---------------------------------------------------------------------------------------------
    # paths
    def image_path(self, i: int) -> Path:
        """Path of item ``i``'s image (``JPEGImages/<id>.jpg``; ``.jpeg``/``.png`` also accepted)."""
        id_ = self.ids[i]
        for ext in _IMAGE_EXTS:
            p = self.image_dir / f"{id_}{ext}"
            if p.is_file():
                return p
        raise DatasetError(
            f"{self.image_dir / (id_ + '.jpg')}: no image file for id {id_!r} "
            f"(looked for {id_}.jpg/.jpeg/.png in {self.image_dir})"
        )

    def _file(self, folder: Path | None, i: int, ext: str) -> Path | None:
        if folder is None:
            return None
        return folder / f"{self.ids[i]}{ext}"

    # ---------------------------------------------------------------------------------------------
    # checks
    def _check_size(self, arr: np.ndarray, path: Path, img_hw, img_path: Path, what: str) -> None:
        if img_hw is not None and tuple(arr.shape[:2]) != tuple(img_hw):
            raise DatasetError(
                f"{path}: {what} size {_size_str(arr.shape[:2])} differs from image "
                f"{img_path.name} size {_size_str(img_hw)}"
            )

    def _check_classes(self, arr: np.ndarray, path: Path, what: str) -> None:
        bad = arr[(arr > self.num_classes) & (arr != IGNORE)]
        if bad.size:
            vals = sorted(int(v) for v in np.unique(bad))
            raise DatasetError(
                f"{path}: {what} contains class index {vals[0] if len(vals) == 1 else vals}; allowed "
                f"0..{self.num_classes} or {IGNORE} (ignore) for {self.num_classes + 1} classes"
            )

    def _xml_objects(self, i: int, img_hw=None) -> list[dict[str, Any]] | None:
        """Parsed and checked XML objects of item ``i`` (None if there is no XML): each gets
        ``label`` (int) and ``box`` ((4,) float32 0-based XYXY exclusive, or None)."""
        path = self._file(self.annotation_dir, i, ".xml")
        if path is None or not path.is_file():
            return None
        objs = parse_voc_xml(path)
        for k, o in enumerate(objs, start=1):
            if o["name"] not in self._class_index or self._class_index[o["name"]] == 0:
                raise DatasetError(
                    f"{path}: object {k} has class name {o['name']!r}, not among the foreground "
                    f"class names {self.class_names[1:]}"
                )
            o["label"] = self._class_index[o["name"]]
            o["box"] = None
            if o["bbox"] is not None:
                xmin, ymin, xmax, ymax = (float(v) for v in o["bbox"])
                box = np.array([xmin - 1, ymin - 1, xmax, ymax], dtype=np.float32)
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise DatasetError(
                        f"{path}: object {k} ({o['name']!r}) has an empty box: xmin,ymin,xmax,ymax = "
                        f"{xmin:g},{ymin:g},{xmax:g},{ymax:g} (1-based inclusive) gives x2<=x1 or y2<=y1"
                    )
                if img_hw is not None:
                    h, w = img_hw
                    if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
                        raise DatasetError(
                            f"{path}: object {k} ({o['name']!r}) box xmin,ymin,xmax,ymax = "
                            f"{xmin:g},{ymin:g},{xmax:g},{ymax:g} (1-based inclusive) lies outside the "
                            f"image {_size_str(img_hw)} (valid: 1..{w}, 1..{h})"
                        )
                o["box"] = box
        return objs

    # ---------------------------------------------------------------------------------------------
    # loading
    def _load_raw(self, i: int, errors: list[str] | None = None) -> dict[str, Any]:
        """Load item ``i`` as numpy arrays. With ``errors`` given, problems are appended to it and
        loading goes on with the other files; otherwise the first problem raises."""

        def attempt(fn, *args):
            try:
                return fn(*args)
            except DatasetError as e:
                if errors is None:
                    raise
                errors.append(str(e))
                return None

        id_ = self.ids[i]
        out: dict[str, Any] = {"id": id_}
        img_path = attempt(self.image_path, i)
        image = attempt(read_image, img_path) if img_path is not None else None
        img_hw = image.shape[:2] if image is not None else None
        out["image"] = image

        def load_map(key, folder, reader, what, check_classes=False, required=True) -> None:
            path = self._file(folder, i, ".png")
            if path is None:
                return
            if not path.is_file():
                if required:
                    attempt(self._raise, f"{path}: {what} file for id {id_!r} does not exist")
                elif key == "mask" and img_hw is not None:
                    out["mask"] = np.full(img_hw, IGNORE, np.uint8)  # unlabelled: all ignore
                return
            arr = attempt(self._read_map, path, reader, what, img_hw, img_path, check_classes)
            if arr is not None:
                out[key] = arr

        if self.mask_dir is not None:
            load_map("mask", self.mask_dir, read_label_png, "mask", True, self.require_masks)
        if self.instance_dir is not None:
            load_map("instance_mask", self.instance_dir, read_label_png, "instance mask", required=False)
        if self.saliency_dir is not None:
            load_map("saliency", self.saliency_dir, read_gray_png, "saliency map")
        for key, folder in self.extra_dirs.items():
            load_map(key, folder, read_label_png, f"{key} ({folder.name}/)")

        # boxes and labels
        objs = attempt(self._xml_objects, i, img_hw)
        label = np.zeros(self.num_classes, np.float32)
        xml_path = self._file(self.annotation_dir, i, ".xml")
        has_xml = xml_path is not None and xml_path.is_file()
        if objs is not None:
            with_box = [(k, o) for k, o in enumerate(objs, start=1) if o["box"] is not None]
            out["boxes"] = np.array([o["box"] for _, o in with_box], np.float32).reshape(-1, 4)
            out["box_labels"] = np.array([o["label"] for _, o in with_box], np.int64)
            out["box_difficult"] = np.array([o["difficult"] for _, o in with_box], bool)
            out["box_instance_ids"] = np.array([k for k, _ in with_box], np.int64)
            for o in objs:
                label[o["label"] - 1] = 1.0
        elif not has_xml:
            if "instance_mask" in out and "mask" in out:
                b, ids, labs = _boxes_from_instances(out["instance_mask"], out["mask"])
            else:
                b, ids, labs = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
            out["boxes"], out["box_labels"], out["box_instance_ids"] = b, labs, ids
            out["box_difficult"] = np.zeros(len(b), bool)
            if "mask" in out:
                label = self._label_from_mask(out["mask"])
        out["label"] = label
        return out

    @staticmethod
    def _raise(msg: str) -> None:
        raise DatasetError(msg)

    def _read_map(self, path: Path, reader, what: str, img_hw, img_path, check_classes: bool) -> np.ndarray:
        arr = reader(path)
        self._check_size(arr, path, img_hw, img_path, what)
        if check_classes:
            self._check_classes(arr, path, what)
        return arr

    def _label_from_mask(self, mask: np.ndarray) -> np.ndarray:
        label = np.zeros(self.num_classes, np.float32)
        vals = np.unique(mask)
        vals = vals[(vals > 0) & (vals <= self.num_classes)]
        label[vals.astype(np.int64) - 1] = 1.0
        return label

    def get_raw(self, i: int) -> dict[str, Any]:
        """Item ``i`` as numpy arrays, untransformed, for visualisation.

        Returns
        -------
        dict
            ``id`` str; ``image`` (H, W, 3) uint8; ``mask``/``instance_mask``/extras (H, W) uint8;
            ``saliency`` (H, W) float32 in [0, 1]; ``boxes`` (K, 4) float32 0-based XYXY (x2/y2
            exclusive); ``box_labels`` (K,) int64; ``box_difficult`` (K,) bool;
            ``box_instance_ids`` (K,) int64; ``label`` (num_classes,) float32. Keys whose files do
            not exist are absent.
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = i % len(self)
        if not self.cache:
            return self._load_raw(i)
        if i not in self._raw_cache:
            self._raw_cache[i] = self._load_raw(i)
        return dict(self._raw_cache[i])

    def load(self, i: int, transform: bool = True) -> dict[str, Any]:
        """Item ``i`` as a dict of tensors / tv_tensors (see the class notes); ``transform=False``
        skips ``self.transforms``."""
        raw = self.get_raw(i)
        h, w = raw["image"].shape[:2]
        s: dict[str, Any] = {"id": raw["id"],
                             "image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(raw["image"].transpose(2, 0, 1))))}
        if "mask" in raw:
            s["mask"] = tv_tensors.Mask(torch.from_numpy(raw["mask"].astype(np.int64)))
        if "instance_mask" in raw:
            s["instance_mask"] = tv_tensors.Mask(torch.from_numpy(raw["instance_mask"].astype(np.int64)))
        s["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(raw["boxes"]), format="XYXY", canvas_size=(h, w))
        s["box_labels"] = torch.from_numpy(raw["box_labels"])
        s["box_difficult"] = torch.from_numpy(raw["box_difficult"])
        s["box_instance_ids"] = torch.from_numpy(raw["box_instance_ids"])
        s["label"] = torch.from_numpy(raw["label"])
        if "saliency" in raw:
            s["saliency"] = Saliency(torch.from_numpy(raw["saliency"].astype(np.float32)))
        for key in self.extra_dirs:
            if key in raw:
                s[key] = tv_tensors.Mask(torch.from_numpy(raw[key].astype(np.int64)))
        if transform and self.transforms is not None:
            s = self.transforms(s)
        return s

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.load(i, transform=True)

    # ---------------------------------------------------------------------------------------------
    def image_label(self, i: int) -> np.ndarray:
        """Multi-hot label ``(num_classes,) float32`` of item ``i`` from its XML (or its mask),
        without reading the image."""
        objs = self._xml_objects(i)
        if objs is not None:
            lab = np.zeros(self.num_classes, np.float32)
            for o in objs:
                lab[o["label"] - 1] = 1.0
            return lab
        path = self._file(self.mask_dir, i, ".png")
        if path is not None and path.is_file():
            mask = read_label_png(path)
            self._check_classes(mask, path, "mask")
            return self._label_from_mask(mask)
        return np.zeros(self.num_classes, np.float32)

    def image_labels(self) -> torch.Tensor:
        """All image labels, ``(N, num_classes) float32`` multi-hot, computed once and cached."""
        if self._labels_cache is None:
            labs = np.stack([self.image_label(i) for i in range(len(self))]) if len(self) else \
                np.zeros((0, self.num_classes), np.float32)
            self._labels_cache = torch.from_numpy(labs)
        return self._labels_cache

    def _check_has_label(self, i: int, raw: Mapping[str, Any], errors: list[str]) -> None:
        """An image whose XML lists no object, or (without XML) whose mask has no foreground class, has
        no image label: a weakly supervised classifier cannot learn from it. Only :meth:`validate` checks
        this (an item without any label source, e.g. a test image, is not reported)."""
        if raw["label"].any():
            return
        xml = self._file(self.annotation_dir, i, ".xml")
        mask = self._file(self.mask_dir, i, ".png")
        if xml is not None and xml.is_file():
            errors.append(f"{xml}: no <object>, so image {raw['id']!r} has no class label")
        elif mask is not None and mask.is_file():
            errors.append(f"{mask}: no foreground class (only background / ignore), so image "
                          f"{raw['id']!r} has no class label")

    def validate(self, progress: bool = True) -> int:
        """Load every item and check every file; report all problems at once.

        Parameters
        ----------
        progress : bool
            Show a tqdm progress bar (if tqdm is installed).

        Returns
        -------
        int
            Number of items checked (all good).

        Raises
        ------
        DatasetError
            One error listing every bad file (one line each); an image without any class label counts.
        """
        it = range(len(self))
        if progress:
            try:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"validating {self.root.name}/{self.split or 'ids'}", leave=False)
            except ImportError:  # pragma: no cover
                pass
        problems: list[str] = []
        bad_items = 0
        for i in it:
            errs: list[str] = []
            try:
                raw = self._load_raw(i, errs)
                if not errs:
                    self._check_has_label(i, raw, errs)
            except Exception as e:  # anything unexpected still gets reported with its id
                errs.append(f"{self.ids[i]}: unexpected error {type(e).__name__}: {e}")
            if errs:
                bad_items += 1
                problems += errs
        if problems:
            raise DatasetError(
                f"{self.root}: {bad_items} of {len(self)} items in split {self.split!r} have problems "
                f"({len(problems)} in all):\n" + "\n".join(f"  - {p}" for p in problems)
            )
        return len(self)


# --------------------------------------------------------------------------------------------------
_LIST_KEYS = ("id", "boxes", "instance_mask") + PER_BOX_KEYS


def collate_samples(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate sample dicts for a DataLoader.

    Tensors of equal shape under the same key (``image`` (B, 3, H, W), ``mask`` (B, H, W),
    ``label`` (B, C), ``saliency`` (B, H, W), extra masks) are stacked into plain tensors; ids,
    boxes, per-box entries, instance masks, and any key whose shapes differ (or that some samples
    lack: their entry is None) stay lists.

    Parameters
    ----------
    batch : sequence of dict

    Returns
    -------
    dict
    """
    keys: list[str] = []
    for s in batch:
        keys += [k for k in s if k not in keys]
    out: dict[str, Any] = {}
    for k in keys:
        vals = [s.get(k) for s in batch]
        if (
            k not in _LIST_KEYS
            and all(isinstance(v, torch.Tensor) for v in vals)
            and len({tuple(v.shape) for v in vals}) == 1
        ):
            out[k] = torch.stack([v.as_subclass(torch.Tensor) for v in vals])
        else:
            out[k] = vals
    return out
