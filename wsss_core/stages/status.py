"""``wsss status OUT_DIR``: what a run folder holds, and what a rerun of a profile would recompute.

It only reads. Three kinds of results are recognised wherever they lie under ``OUT_DIR``:

* a **checkpoint** folder (``last.pt``): complete when the engine marked it ``finished``, partial
  otherwise (a rerun resumes from its last epoch); the stage follows from its parent folder
  (``classifier`` → cam or eps, ``affinitynet``, ``edam``, ``segmenters`` → box2seg, else segmentation);
* a folder of **maps** (``*.npz``: CAMs, EPS maps, DA masks), complete with its ``source.json``;
* a folder of **labels** (``*.png``), complete with its ``.complete.json`` or ``source.json``.

The identity column is a checkpoint's fingerprint (the 8 hex digits ending its name) or, for maps and
labels, that of the checkpoint that made them. With a profile (:func:`plan`), the CAM, EPS, AffinityNet
and EDAM checkpoints that profile's notebooks would use — and notebook 06's segmenter of every pseudo-label
folder already there (``segmentation:<method>``) — are computed from the stage contract
(:mod:`wsss_core.stages.pipeline`), and each row says whether a rerun
reuses it, resumes it, or — for a checkpoint it would need and does not find — why it trains a new one
(the fields that differ from a folder's recorded ``identity.json``, where one was recorded).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from . import store

_HASH = re.compile(r"-([0-9a-f]{8})$")
_PARENT_STAGE = {"affinitynet": "affinity", "edam": "edam", "segmenters": "box2seg"}
_LABEL_MARKERS = (store.MARKER, "source.json", "grabcut.json")  # the last: wsss_core.boxes.MANIFEST


@dataclasses.dataclass
class Row:
    """One result under a run folder."""

    stage: str
    kind: str      # "checkpoint" | "maps" | "labels"
    folder: Path
    identity: str  # 8 hex digits or "-"
    state: str     # "complete" | "partial" | "absent"
    note: str = ""
    rerun: str = ""


def _checkpoint_state(folder: Path) -> tuple[str, str]:
    import torch

    p = folder / "last.pt"
    if not p.is_file():
        return store.PARTIAL, "no last.pt yet"
    try:
        ck = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return store.PARTIAL, f"last.pt unreadable ({type(e).__name__})"
    done = len(ck.get("history", {}).get("epochs", [])) if isinstance(ck.get("history"), dict) else None
    if ck.get("finished"):
        return store.COMPLETE, ""
    return store.PARTIAL, f"stopped after epoch {done}" if done is not None else "not finished"


def _stage_of_checkpoint(folder: Path) -> str:
    parent = folder.parent.name
    if parent == "classifier":
        return "eps" if folder.name.startswith("eps-") else "cam"
    if folder.name == "classifier":  # `wsss cam --out DIR` trains into DIR/classifier
        return "cam"
    if parent == "edam" and not folder.name.startswith(("cma-", "nocma-")):
        return "segmentation"  # notebook 06 trains the segmenter of EDAM's labels into .../edam/
    return _PARENT_STAGE.get(parent, "segmentation")


def _is_label_png(path: Path) -> bool:
    """A palette or grey PNG (a label map), not a figure (RGB / RGBA)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in ("P", "L")
    except OSError:
        return True  # unreadable: a broken label file is worth a row


def _short(name: str) -> str:
    m = _HASH.search(name or "")
    return m.group(1) if m else "-"


def scan(out_dir) -> list[Row]:
    """Every checkpoint, map and label folder under ``out_dir``, in path order."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such run folder")
    rows = []
    for d in sorted([out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]):
        names = {p.name for p in d.iterdir()}
        if "last.pt" in names or any(n.startswith(".last.pt.") for n in names):
            state, note = _checkpoint_state(d)
            rows.append(Row(_stage_of_checkpoint(d), "checkpoint", d, _short(d.name), state, note))
        elif any(n.endswith(".npz") for n in names):
            res = store.Result(d, marker="source.json")
            rec = res.record() or {}
            n = sum(n.endswith(".npz") for n in names)
            rows.append(Row("maps", "maps", d, _short(rec.get("classifier", "")), res.state(),
                            f"{n} files" + (f", by {rec['classifier']}" if rec.get("classifier") else ", no marker")))
        elif (pngs := sorted(n for n in names if n.endswith(".png"))) and _is_label_png(d / pngs[0]):
            marker = next((m for m in _LABEL_MARKERS if m in names), store.MARKER)
            res = store.Result(d, marker=marker)
            rec = res.record() or {}
            source = rec.get("source") if isinstance(rec.get("source"), dict) else {}
            maps = rec.get("maps") if isinstance(rec.get("maps"), dict) else {}  # EPS labels record their maps'
            src = rec.get("classifier") or source.get("checkpoint") or maps.get("classifier") or ""
            n = sum(n.endswith(".png") for n in names)
            rows.append(Row("labels", "labels", d, _short(src or ""), res.state(),
                            f"{n} files" + ("" if rec else ", no marker")))
    return rows


def _data_spec(profile: str, data_root=None):
    """The profile's :class:`~wsss_core.profiles.DataSpec` without generating anything (None if the toy
    scenes are not there yet)."""
    from .. import profiles
    from ..data.toyscenes import context_pairs, load_manifest

    if profile in profiles.TOY_DATA:
        root = Path(data_root) if data_root else profiles.default_data_dir() / "toy" / profiles.TOY_DATA[profile]
        man = load_manifest(root)
        return profiles.DataSpec("toy", root, context_pairs=context_pairs(man), manifest=man) if man else None
    return profiles.prepare_data(profile, data_root)


def expected_checkpoints(profile: str, out_dir, data, seed: int = 0) -> dict[str, tuple[Path, store.Identity]]:
    """The checkpoint folders (and identities) the profile's notebooks 01, 02, 03 and 05 would train or reuse,
    and notebook 06's segmenters of the pseudo-labels already there: the stage contract's presets and folders
    (:class:`wsss_core.stages.pipeline.Run`)."""
    from . import affinity, cam, edam, eps
    from .pipeline import Run

    run = Run(profile, out_dir, data=data, seed=seed, progress=False)
    cc, ac, ec, pc = (run.cfg(s) for s in ("cam", "affinity", "edam", "eps"))
    c = cam.checkpoint_dir_for(cc, run.out_dir("cam"), data)
    return {
        "cam": (c, cam.classifier_identity(cc, data)),
        "affinity": (affinity.checkpoint_dir_for(ac, run.out_dir("affinity"), c.name, data),
                     affinity.affinitynet_identity(ac, c.name, data)),
        "edam": (edam.checkpoint_dir_for(ec, run.out_dir("edam"), c.name, data), edam.edam_identity(ec, c.name, data)),
        "eps": (eps.checkpoint_dir_for(pc, run.out_dir("eps"), data), eps.classifier_identity(pc, data)),
        **_expected_segmenters(run),
    }


def _expected_segmenters(run) -> dict[str, tuple[Path, store.Identity]]:
    """Notebook 06's segmenters (``segmentation:<method>``) whose pseudo-labels are already there: the
    checkpoint each would train into if its labels stay as they are (the identity counts their files)."""
    from . import segmentation
    from .pipeline import LABEL_SOURCES

    cfg, out = run.cfg("segmentation"), run.out_dir("segmentation")
    found = {}
    for m in LABEL_SOURCES:
        d = run.label_folder(m)
        if m != "full" and (d is None or not any(d.glob("*.png"))):
            continue
        found[f"segmentation:{m}"] = (segmentation.checkpoint_dir_for(cfg, d, out / m),
                                      segmentation.segmenter_identity(cfg, d))
    return found


def _why(stage: str, want: Path, ident: store.Identity, rows: list[Row]) -> str:
    """Why no existing checkpoint of ``stage`` serves: the fields that differ from the recorded ones."""
    stage = stage.split(":")[0]  # segmentation:<method>
    others = [r for r in rows if r.kind == "checkpoint" and r.stage == stage and r.folder.parent == want.parent]
    if not others:
        return "none there yet"
    diffs = []
    for r in others:
        rec = store.read_json(r.folder / store.IDENTITY_NAME)
        if rec and isinstance(rec.get("fields"), dict):
            diffs.append(f"{r.identity}: {', '.join(store.diff_fields(rec['fields'], ident.fields)) or 'same fields'}")
        else:
            diffs.append(f"{r.identity}: another identity (fields not recorded)")
    return "; ".join(diffs)


def plan(rows: list[Row], profile: str, out_dir, data_root=None, seed: int = 0) -> list[Row]:
    """Fill in each row's ``rerun`` for ``profile``; adds an *absent* row for every checkpoint the
    profile needs and does not find."""
    from . import cam

    data = _data_spec(profile, data_root)
    if data is None:
        for r in rows:
            r.rerun = "?"
        rows.append(Row("data", "data", Path(data_root or "<default data folder>"), "-", store.ABSENT,
                        f"no toy scenes of profile {profile} there (pass --data-root)", "generate, then make everything"))
        return rows
    expected = expected_checkpoints(profile, out_dir, data, seed)
    want = {s: p for s, (p, _) in expected.items()}
    wanted = {p.resolve(): s for s, p in want.items()}
    for r in rows:
        if r.kind == "checkpoint":
            if r.folder.resolve() in wanted:
                r.rerun = "reuse" if r.state == store.COMPLETE else "resume from its last epoch"
            elif any(r.folder.parent.resolve() == p.parent.resolve() for p in want.values()):
                r.rerun = f"not used by {profile}"
        elif r.folder.parent.resolve() == (Path(out_dir) / cam.NOTEBOOK).resolve():
            need = want["cam"].name
            rec = (store.Result(r.folder, marker="source.json" if r.kind == "maps" else store.MARKER).record() or {})
            made_by = rec.get("classifier")
            if r.state == store.COMPLETE and made_by == need:
                r.rerun = "reuse"
            else:
                r.rerun = f"remake ({'made by ' + made_by if made_by else 'no marker'}; needs {need})"
    found = {r.folder.resolve() for r in rows}
    for stage, (p, ident) in expected.items():
        if p.resolve() not in found:
            new = Row(stage, "checkpoint", p, _short(p.name), store.ABSENT)
            new.rerun = f"train ({_why(stage, p, ident, rows)})"
            rows.append(new)
    return rows


def format_table(rows: list[Row], out_dir, with_rerun: bool) -> str:
    """A Markdown table, folders relative to ``out_dir``."""
    out_dir = Path(out_dir)
    head = ["stage", "folder", "identity", "state", "note"] + (["rerun"] if with_rerun else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        try:
            rel = r.folder.relative_to(out_dir).as_posix() or "."
        except ValueError:
            rel = str(r.folder)
        cells = [r.stage, rel, r.identity, r.state, r.note] + ([r.rerun] if with_rerun else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
