"""``wsss data fetch NAME``: download a real dataset, check it, extract it into ``data/`` in VOC layout.

    wsss data fetch --list                  # what it knows: names, archives, sizes, checksums
    wsss data fetch voc2012                 # → data/VOCdevkit/VOC2012 (1.9 GB download)
    wsss data fetch sbd                     # + SegmentationClassAug/ and train_aug.txt (needs voc2012 first)

Archives go to ``<data>/downloads/<file name>`` (``<data>`` = ``--data-root``, else ``$WSSS_DATA``, else
the checkout's ``data/``). A download in progress is ``<file name>.part``; an interrupted one resumes
where it stopped (an HTTP ``Range`` request) when the command is run again. A file you downloaded
yourself and put at ``<data>/downloads/<file name>`` is used as it is when its checksum is right.

Checksums: every archive's SHA-256 is checked before anything is extracted; a wrong one removes the
downloaded file and stops (nothing extracted). Where the SHA-256 is not published, the registry says so
and another published digest (MD5) is checked instead; where no digest is known at all, the command prints
the SHA-256 it computed and extracts nothing unless ``--trust-unknown-checksum`` is given.

Extraction goes through a staging folder beside the target and ends in one rename, so an interrupted
or failed extraction leaves no half-made dataset.

MSRC-v2 is known but not fetched: its raw archive (Windows bitmaps, masks as MATLAB files) is not in VOC
layout and the converter is not part of wsss; the command says where the VOC-layout copy and its README are.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A fetch failed; the message is one line saying what to do."""


@dataclass(frozen=True)
class Archive:
    """One file to download. ``sha256`` None = not published (then ``md5``, if given, is checked)."""

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    archives: tuple[Archive, ...]
    target: str  # where it ends up, relative to the data folder
    install: Callable[["DatasetSpec", list[Path], Path], None] | None = None  # (spec, archive paths, data dir)
    refuse: str | None = None  # fetch is refused with this message
    requires: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------------
# download: resumable, with a progress bar, checksums
# ------------------------------------------------------------------------------------------------

def file_digests(path: Path) -> dict[str, str]:
    """``{"sha256": hex, "md5": hex}`` of a file, read in 1 MiB chunks."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def verify(path: Path, archive: Archive) -> tuple[bool | None, str]:
    """(True: a published digest matches | False: one differs | None: none is known, computed SHA-256)."""
    d = file_digests(path)
    if archive.sha256:
        return d["sha256"] == archive.sha256.lower(), d["sha256"]
    if archive.md5:
        return d["md5"] == archive.md5.lower(), d["sha256"]
    return None, d["sha256"]


def _offline_message(archive: Archive, dest: Path, why) -> str:
    return (f"cannot download {archive.url} ({why}); download it yourself and put it at {dest} "
            f"(a partial download in {dest.name}.part resumes when you run the command again)")


def download(archive: Archive, dest: Path, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``archive.url`` to ``dest``, resuming ``dest.part`` if there is one; no checksum check here.

    The server is asked for ``Range: bytes=<part size>-``; a 206 reply is appended, a 200 reply (no
    range support) starts again from zero. On success ``dest.part`` is renamed to ``dest``. A network
    failure keeps the part file and raises :class:`FetchError` (one line naming the URL and ``dest``).
    """
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(archive.url, headers={"User-Agent": "wsss-lab"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and (archive.size is None or have == archive.size):  # the part is whole
            part.replace(dest)
            return dest
        raise FetchError(_offline_message(archive, dest, f"HTTP {e.code} {e.reason}")) from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(_offline_message(archive, dest, getattr(e, "reason", e))) from e
    with resp:
        if have and resp.status != 206:
            have = 0  # no range support: start again
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else archive.size
        got = have
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=archive.filename, disable=not progress or None, leave=False)
        try:
            with open(part, "ab" if have else "wb") as f:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (http.client.HTTPException, OSError, socket.timeout) as e:
            raise FetchError(_offline_message(archive, dest, f"interrupted after {got} bytes: {e!r}")) from e
        finally:
            bar.close()
    if total is not None and got < total:
        raise FetchError(_offline_message(archive, dest, f"connection closed after {got} of {total} bytes"))
    part.replace(dest)
    return dest


def obtain(archive: Archive, downloads: Path, trust_unknown: bool = False, progress: bool = True,
           log=print) -> Path:
    """The archive, checked: a file already at ``downloads/<filename>`` (placed by hand or fetched
    before) or a (resumed) download. Raises :class:`FetchError` on a checksum mismatch (a downloaded
    file is removed; a file found in place is left for you to look at) or an unknown checksum without
    ``trust_unknown``."""
    dest = downloads / archive.filename
    found = dest.is_file()
    if not found:
        log(f"downloading {archive.url} → {dest}")
        download(archive, dest, progress=progress)
    ok, sha = verify(dest, archive)
    algo = "SHA-256" if archive.sha256 else "MD5"
    if ok is False:
        if found:
            raise FetchError(f"{dest}: checksum does not match the published {algo} of {archive.url}; "
                             f"delete the file and run the command again (its SHA-256 is {sha})")
        dest.unlink()
        raise FetchError(f"{archive.url}: the downloaded file's {algo} does not match the published one; "
                         f"removed it, nothing was extracted (SHA-256 of what came: {sha})")
    if ok is None:
        log(f"{dest.name}: SHA-256 {sha} (no published checksum to compare with)")
        if not trust_unknown:
            raise FetchError(f"{dest}: no published checksum is known for {archive.url}; nothing was extracted. "
                             f"Check the SHA-256 above against a source you trust, then rerun with "
                             f"--trust-unknown-checksum")
    else:
        log(f"{dest.name}: {algo} verified")
    return dest


# ------------------------------------------------------------------------------------------------
# extraction into the VOC layout
# ------------------------------------------------------------------------------------------------

def _staging(data: Path, name: str) -> Path:
    st = data / f".fetch-{name}.tmp"
    if st.exists():
        shutil.rmtree(st)
    st.mkdir(parents=True)
    return st


def _extract(archive: Path, into: Path, members: Callable[[str], bool] | None = None) -> None:
    if archive.name.endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(archive) as z:
            for m in z.namelist():
                if members is None or members(m):
                    z.extract(m, into)
        return
    with tarfile.open(archive) as t:
        sel = [m for m in t.getmembers() if members is None or members(m.name)]
        if hasattr(tarfile, "data_filter"):  # Python ≥ 3.11.4 / 3.10.12: refuses links and paths out of `into`
            t.extractall(into, members=sel, filter="data")
            return
        root = into.resolve()
        for m in sel:
            if not (m.isfile() or m.isdir()) or not (root / m.name).resolve().is_relative_to(root):
                raise FetchError(f"{archive}: refusing the unsafe member {m.name!r}")
        t.extractall(into, members=sel)


def install_voc2012(spec: DatasetSpec, paths: list[Path], data: Path) -> None:
    """``VOCtrainval_11-May-2012.tar`` holds ``VOCdevkit/VOC2012/...``: extract, move into place."""
    st = _staging(data, spec.name)
    try:
        _extract(paths[0], st)
        src = st / "VOCdevkit" / "VOC2012"
        if not (src / "JPEGImages").is_dir():
            raise FetchError(f"{paths[0]}: no VOCdevkit/VOC2012/JPEGImages inside; is it the VOC 2012 trainval tar?")
        target = data / spec.target
        target.parent.mkdir(parents=True, exist_ok=True)
        src.replace(target)
    finally:
        shutil.rmtree(st, ignore_errors=True)


def _read_ids(path: Path) -> list[str]:
    return [s.split()[0] for s in path.read_text().splitlines() if s.strip()]


def install_sbd(spec: DatasetSpec, paths: list[Path], data: Path) -> None:
    """SBD's ``benchmark.tgz`` → ``VOC2012/SegmentationClassAug/*.png`` and ``train_aug.txt``, as the
    papers (DeepLab, PSA, IRN) use them: SBD's class masks (``dataset/cls/<id>.mat``, ``GTcls.Segmentation``)
    as VOC-palette PNGs, VOC's own ``SegmentationClass`` PNG for images SBD lacks; ``train_aug`` =
    (SBD train ∪ SBD val ∪ VOC train) − VOC val (10 582 ids for the real data)."""
    import numpy as np
    from scipy.io import loadmat

    from .palette import write_label_png

    voc = data / spec.target
    if not (voc / "ImageSets" / "Segmentation" / "val.txt").is_file():
        raise FetchError(f"{voc}: VOC 2012 is not there; run `wsss data fetch voc2012` first")
    st = _staging(data, spec.name)
    try:
        _extract(paths[0], st, members=lambda n: "/dataset/cls/" in n or n.endswith(("dataset/train.txt", "dataset/val.txt")))
        ds = next(st.glob("*/dataset"), None)
        if ds is None or not (ds / "cls").is_dir():
            raise FetchError(f"{paths[0]}: no benchmark_RELEASE/dataset/cls inside; is it SBD's benchmark.tgz?")
        out = st / "SegmentationClassAug"
        out.mkdir()
        from tqdm.auto import tqdm

        mats = sorted((ds / "cls").glob("*.mat"))
        for m in tqdm(mats, desc="SBD masks → PNG", leave=False, disable=None):
            seg = loadmat(m, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
            write_label_png(out / f"{m.stem}.png", np.asarray(seg, dtype=np.uint8))
        lists = voc / "ImageSets" / "Segmentation"
        for png in (voc / "SegmentationClass").glob("*.png"):
            if not (out / png.name).exists():
                shutil.copyfile(png, out / png.name)
        val = set(_read_ids(lists / "val.txt"))
        ids = set(_read_ids(ds / "train.txt")) | set(_read_ids(ds / "val.txt")) | set(_read_ids(lists / "train.txt"))
        aug = sorted(i for i in ids - val if (out / f"{i}.png").exists())
        (st / "train_aug.txt").write_text("\n".join(aug) + "\n")
        if (voc / "SegmentationClassAug").exists():
            shutil.rmtree(voc / "SegmentationClassAug")
        out.replace(voc / "SegmentationClassAug")
        (st / "train_aug.txt").replace(lists / "train_aug.txt")
    finally:
        shutil.rmtree(st, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------

_MSRC_REFUSAL = (
    "msrc-v2: not fetched: MSRC-v2's raw archive (bitmaps, masks as MATLAB files of Malisiewicz and Efros) is not "
    "in VOC layout and its converter is not part of wsss. The VOC-layout copy the lessons read is "
    "../shared/data/msrc_voc (or $WSSS_SHARED_DATA/msrc_voc); its README.md names the source, the class mapping "
    "and the splits.")

REGISTRY: dict[str, DatasetSpec] = {
    "voc2012": DatasetSpec(
        "voc2012", "PASCAL VOC 2012 trainval (17 125 images; 2 913 with masks: train 1 464, val 1 449)",
        (Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                 "VOCtrainval_11-May-2012.tar", size=1_999_639_040,
                 sha256="e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
                 md5="6cd6e144f989b92b3379bac3b3de84fd"),),
        target="VOCdevkit/VOC2012", install=install_voc2012),
    "sbd": DatasetSpec(
        "sbd", "SBD (Hariharan et al. 2011) → VOC2012/SegmentationClassAug/ + train_aug.txt (10 582 ids)",
        (Archive("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                 "benchmark.tgz", size=None, sha256=None, md5="82b4d87ceb2ed10f6038a1cba92111cb",
                 note="the MD5 published with torchvision's SBDataset"),),
        target="VOCdevkit/VOC2012", install=install_sbd, requires=("voc2012",)),
    "msrc-v2": DatasetSpec(
        "msrc-v2", "MSRC-v2 (591 photos, 14 object classes + scene background) — known, not fetched",
        (Archive("https://github.com/TonyZZX/MultiGraph_MultiLabel_Learning/archive/"
                 "df10559f6a45e2ba7ea85296647e01a2518a37f6.tar.gz",
                 "MultiGraph_MultiLabel_Learning-df10559f.tar.gz",
                 note="the source of ../shared/data/msrc_voc (its folder MSRC_v2)"),),
        target="msrc_voc/VOC2012", refuse=_MSRC_REFUSAL),
}


def describe(registry: dict[str, DatasetSpec] | None = None) -> str:
    """The text of ``wsss data fetch --list``."""
    lines = []
    for spec in (registry or REGISTRY).values():
        state = "refused (see below)" if spec.refuse else f"→ <data>/{spec.target}"
        lines.append(f"{spec.name:9s} {spec.description} {state}")
        for a in spec.archives:
            if spec.refuse:
                lines.append(f"          source: {a.url}; {a.note}")
                continue
            size = f"{a.size / 1e9:.2f} GB" if a.size else "size unknown"
            digest = (f"sha256 {a.sha256}" if a.sha256 else f"md5 {a.md5} (SHA-256 not published)" if a.md5
                      else "no published checksum (--trust-unknown-checksum)")
            lines.append(f"          {a.url}\n          {a.filename}, {size}, {digest}" + (f"; {a.note}" if a.note else ""))
        if spec.refuse:
            lines.append(f"          {spec.refuse}")
    return "\n".join(lines)


def fetch(name: str, data: Path, trust_unknown: bool = False, progress: bool = True, log=print,
          registry: dict[str, DatasetSpec] | None = None) -> Path:
    """Fetch dataset ``name`` into the data folder ``data``; returns where it is. Already there: nothing
    is downloaded (the check is the target's marker file ``.wsss-fetched-<name>``)."""
    reg = registry or REGISTRY
    if name not in reg:
        raise FetchError(f"unknown dataset {name!r}: known are {', '.join(reg)} (wsss data fetch --list)")
    spec = reg[name]
    if spec.refuse:
        raise FetchError(spec.refuse)
    target = data / spec.target
    marker = target / f".wsss-fetched-{name}"
    if marker.is_file():
        log(f"{name}: already in {target} (delete {marker} to fetch it again)")
        return target
    if spec.install is install_voc2012 and (target / "JPEGImages").is_dir():
        raise FetchError(f"{target} exists but was not made by `wsss data fetch`; move it away to fetch {name}")
    paths = [obtain(a, data / "downloads", trust_unknown=trust_unknown, progress=progress, log=log)
             for a in spec.archives]
    log(f"{name}: extracting into {target}")
    spec.install(spec, paths, data)
    marker.write_text("".join(f"{a.filename}\n" for a in spec.archives))
    log(f"{name}: ready in {target} (check: wsss data validate {target} --split train); "
        f"the archives in {data / 'downloads'} may be deleted")
    return target
