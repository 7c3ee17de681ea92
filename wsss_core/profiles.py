"""Profiles: presets of every stage's config for ``smoke`` (CI), ``tutorial`` (the lesson: minutes on a
laptop CPU), ``study`` (the experiments behind the lessons' claims: the same toy scenes, longer schedules)
and ``paper`` (PASCAL VOC 2012 on a GPU, the papers' hyper-parameters).

    from wsss_core import profiles
    data = profiles.prepare_data("tutorial")      # generates the toy scenes once, returns DataSpec
    cam_cfg = profiles.cam_config("tutorial")     # CAMStageConfig

Notebooks and the CLI read the same presets, so a number in a notebook can be reproduced from the
command line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


PROFILE_NAMES = ("smoke", "tutorial", "study", "paper")
TOY_DATA = {"smoke": "smoke", "tutorial": "tutorial", "study": "tutorial"}
"""The toy-scene tree each profile reads: ``study`` runs on the tutorial's scenes (one tree, one cache)."""


def check_profile(profile: str) -> str:
    """``profile`` if it is known, else a ValueError naming the profiles that exist."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; the profiles are: {', '.join(PROFILE_NAMES)}")
    return profile


_check = check_profile


def project_root() -> Path | None:
    """The repository root when the package runs from a checkout (editable install), else None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def default_data_dir() -> Path:
    """Where generated and downloaded data go: ``$WSSS_DATA`` if set, else ``<repo>/data``, else
    ``~/.cache/wsss-lab``."""
    env = os.environ.get("WSSS_DATA")
    if env:
        return Path(env).expanduser()
    root = project_root()
    return root / "data" if root is not None else Path.home() / ".cache" / "wsss-lab"


def shared_data_location() -> tuple[Path, str]:
    """Where the shared real data are looked for first, and what says so: ``($WSSS_SHARED_DATA,
    "$WSSS_SHARED_DATA")`` when that variable is set, else ``(<repo>/../shared/data, "<repo>/../shared/data")``
    (``../shared/data`` outside a checkout). The folder may not exist."""
    env = os.environ.get("WSSS_SHARED_DATA")
    if env:
        return Path(env).expanduser(), "$WSSS_SHARED_DATA"
    root = project_root()
    base = root.parent / "shared" / "data" if root is not None else Path("../shared/data")
    return base.resolve(), "<repo>/../shared/data"


def shared_data_dir() -> Path | None:
    """The two small real datasets (GrabCut benchmark, Weizmann horses): ``$WSSS_SHARED_DATA`` or
    ``<repo>/../shared/data``; None where absent."""
    env = os.environ.get("WSSS_SHARED_DATA")
    cands = [Path(env).expanduser()] if env else []
    root = project_root()
    if root is not None:
        cands.append(root.parent / "shared" / "data")
    for c in cands:
        if c.is_dir():
            return c
    return None


@dataclass
class DataSpec:
    """Which tree to read and how."""

    kind: str  # "toy" | "voc"
    root: Path
    train_split: str = "train"
    val_split: str = "val"
    mask_dir: str = "SegmentationClass"
    context_pairs: dict = field(default_factory=dict)
    manifest: dict | None = None


def prepare_data(profile: str, data_root: str | os.PathLike | None = None, progress: bool = True,
                 toy_overrides: dict | None = None) -> DataSpec:
    """Make sure the profile's dataset exists and describe it.

    ``smoke`` / ``tutorial``: the toy scenes under ``data_root`` (default ``<data>/toy/<profile>``),
    generated on first use (seconds). ``toy_overrides`` changes fields of the profile's
    :class:`~wsss_core.data.toyscenes.ToySceneConfig` (e.g. ``{"p_legged": 0.8}``, notebook 04's
    photo-like boxes); such a variant lives next to the profile's tree by default
    (``<data>/toy/<profile>-p_legged0.8``). ``paper``: PASCAL VOC 2012 with SBD's train_aug under
    ``data_root`` (default ``<data>/VOCdevkit/VOC2012``); nothing is downloaded — a clear error says
    where to put it (see the README section "Run it on PASCAL VOC on a GPU").
    """
    _check(profile)
    if profile in TOY_DATA:
        from .data.toyscenes import config_for_profile, context_pairs, ensure_toyscenes

        over = dict(toy_overrides or {})
        name = TOY_DATA[profile] + "".join(f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}" for k, v in sorted(over.items()))
        root = Path(data_root) if data_root else default_data_dir() / "toy" / name
        man = ensure_toyscenes(root, config_for_profile(TOY_DATA[profile], **over), progress=progress)
        return DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man)
    if toy_overrides:
        raise ValueError(f"toy_overrides apply to the toy scenes (smoke / tutorial), not to profile {profile!r}")
    root = Path(data_root) if data_root else default_data_dir() / "VOCdevkit" / "VOC2012"
    aug = root / "SegmentationClassAug"
    lists = root / "ImageSets" / "Segmentation"
    if not (root / "JPEGImages").is_dir():
        raise FileNotFoundError(
            f"{root}: PASCAL VOC 2012 not found (no JPEGImages/). Put VOCdevkit/VOC2012 there (or pass DATA_ROOT), "
            "add SBD's SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt; see README 'Run it on PASCAL VOC on a GPU'.")
    train_split = "train_aug" if (lists / "train_aug.txt").is_file() and aug.is_dir() else "train"
    return DataSpec("voc", root, train_split=train_split, val_split="val",
                    mask_dir="SegmentationClassAug" if train_split == "train_aug" else "SegmentationClass")


def cam_config(profile: str):
    """The CAM stage's preset: :func:`wsss_core.stages.cam.config_for_profile` (kept here because
    notebooks and scripts call it by this name; the preset lives beside its stage, as every stage's)."""
    from .stages.cam import config_for_profile

    return config_for_profile(profile)
