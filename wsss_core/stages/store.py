"""One owner of a stage result's identity and completion, and of how its files are written.

A *result* is a folder (or one file) that a stage makes: a checkpoint folder, a folder of CAMs, a
folder of pseudo-labels, a report. This module answers, once for every stage:

* **identity** — what makes two results the same: the stage's config without the run-only fields
  (:data:`RUN_ONLY_FIELDS`: where and how verbosely it runs, not what it computes), the data set's
  fingerprint, the identities of the upstream results it was made from, and a per-stage format
  version (:func:`identity`, :func:`fingerprint`);
* **completion** — a result is *complete* when its marker file exists; the marker is written last
  (atomically), and removed first when a result is remade, so a result interrupted anywhere is read as
  *partial*, never as complete (:class:`Result`);
* **atomic writes** — every file goes to a temporary file in the same folder and is then renamed over
  the target (``os.replace``), so a reader sees the old file or the new one, never half of one
  (:func:`atomic_path`, :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`,
  from :mod:`wsss_core.atomic`).
  This protects against a killed process, not against a power cut (no ``fsync``);
* **locking** — two processes writing into one result folder would corrupt each other: :func:`lock`
  refuses with a message naming the holder (pid, host, start time); a lock left by a dead process is
  taken over.

Compatibility: the identities of the results made before this module existed are unchanged
(:func:`fingerprint` hashes the same JSON as before, and a stage's format version enters the hash only
from version 2 on), so cached checkpoints and CAMs stay valid.

This module imports only the standard library and :mod:`wsss_core.atomic` (whose writers it
re-exports); the engine uses it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

# the atomic writers live one layer down (the data writers use them too); re-exported here
from ..atomic import atomic_path, atomic_update_json, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401
from ..atomic import tmp_name as _tmp_name

# ------------------------------------------------------------------------------------------------
# identity
# ------------------------------------------------------------------------------------------------

RUN_ONLY_FIELDS = ("device", "progress", "num_workers", "checkpoint_dir", "resume", "desc")
"""Fields of :class:`wsss_core.engine.TrainConfig` that say where and how visibly a run happens, not
what it computes: they never enter a result's identity."""

RESUME_TOLERATED_FIELDS = frozenset(RUN_ONLY_FIELDS) | {"amp", "deterministic", "find_unused_parameters"}
"""Fields in which a checkpoint may differ from the run that resumes it (the engine's rule). Beyond
the run-only fields: mixed precision and deterministic kernels change the arithmetic, not the
computation, and ``find_unused_parameters`` is a DDP bookkeeping switch. They *are* part of a stage's
identity (a changed ``amp`` makes a new checkpoint folder); the engine alone tolerates them."""

MARKER = ".complete.json"
"""The default completion marker of a result folder."""

IDENTITY_NAME = "identity.json"
"""Written into a checkpoint folder by the stages' ``run``: the identity behind its name (``wsss status``
names the fields that differ from it)."""

LOCK_NAME = ".lock"


def _canon(v) -> str:
    """The canonical JSON of ``v`` (sorted keys, ``str`` for anything else): what is hashed and compared."""
    return json.dumps(v, sort_keys=True, default=str)


def fingerprint(obj: Any, n: int = 8) -> str:
    """The first ``n`` hex digits of the SHA-1 of ``obj`` as sorted-key JSON (``default=str``).

    Every stage's checkpoint folder name ends with it; the JSON is the one the stages hashed before
    this module existed, so old folder names are reproduced exactly.
    """
    return hashlib.sha1(_canon(obj).encode()).hexdigest()[:n]


def train_identity(train: Any) -> dict:
    """A :class:`~wsss_core.engine.TrainConfig` (or its dict) without :data:`RUN_ONLY_FIELDS`."""
    d = train.to_dict() if hasattr(train, "to_dict") else dict(train)
    return {k: v for k, v in d.items() if k not in RUN_ONLY_FIELDS}


def config_identity(config: Any, exclude=(), keep_train_run_fields: bool = False) -> dict:
    """A stage config as identity fields: its dict without the ``exclude`` fields (the stage's own
    inference-only fields) and, in its ``train`` field, without :data:`RUN_ONLY_FIELDS`.

    ``keep_train_run_fields=True`` keeps them: the segmentation stage's version-1 identity did, and
    dropping them now would rename its existing checkpoint folders.
    """
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {k: v for k, v in d.items() if k not in set(exclude)}
    if isinstance(out.get("train"), Mapping) and not keep_train_run_fields:
        out["train"] = train_identity(out["train"])
    return out


def data_identity(data, with_split: bool = True) -> dict:
    """What identifies a data set (a :class:`wsss_core.profiles.DataSpec` or anything with ``manifest``,
    ``root`` and ``train_split``): the toy generator's version and config, or else the root folder's
    name (and the training split, with ``with_split``)."""
    man = getattr(data, "manifest", None)
    if man:
        return {"generator_version": man["generator_version"], "config": man["config"]}
    out = {"root": Path(data.root).name}
    if with_split:
        out["split"] = data.train_split
    return out


@dataclasses.dataclass(frozen=True)
class Identity:
    """A result's identity: the ``fields`` that are hashed, and the stage and format version.

    ``hash`` is :func:`fingerprint` of the fields (8 hex digits), the suffix of a checkpoint folder.
    """

    stage: str
    fields: dict
    version: int = 1

    @property
    def hash(self) -> str:
        return fingerprint(self.fields)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "version": self.version, "hash": self.hash, "fields": self.fields}


def identity(stage: str, config: Any, data: Any = None, upstream: Mapping | None = None,
             version: int = 1, exclude=(), keep_train_run_fields: bool = False) -> Identity:
    """The identity of a result of ``stage``.

    Parameters
    ----------
    config : a stage config (``to_dict()``) or a dict of identity fields already chosen (used as is,
        apart from ``exclude``).
    data : the data set (a :class:`wsss_core.profiles.DataSpec`); its :func:`data_identity` → field
        ``"data"`` (None: left out).
    upstream : named identities of the upstream results, e.g. ``{"classifier": "<checkpoint name>"}``,
        merged into the fields under those names.
    version : the stage's format version. Version 1 is the format of the results made before this
        module; it is not hashed, so their names are unchanged. Bump it when a stage's output changes
        meaning for the same config: every result of the stage is then remade.
    exclude : config fields that do not change the result (the stage's inference-only fields).
    keep_train_run_fields : see :func:`config_identity` (the segmentation stage's version 1).
    """
    fields = config_identity(config, exclude, keep_train_run_fields)
    if data is not None:
        fields["data"] = data_identity(data)
    for k, v in dict(upstream or {}).items():
        if k in fields:
            raise ValueError(f"identity of stage {stage!r}: upstream name {k!r} clashes with a config field")
        fields[k] = v
    if version != 1:
        fields["format_version"] = int(version)
    return Identity(stage, fields, int(version))


def record_identity(folder, ident: Identity) -> Path:
    """Write ``folder/identity.json`` (atomically) — call it from one process (rank 0 under torchrun).
    An identical file is left as it is (a rerun that reuses everything writes nothing)."""
    path = Path(folder) / IDENTITY_NAME
    atomic_update_json(path, ident.to_dict(), default=str)
    return path


def diff_fields(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """The dotted names of the fields that differ between two identity dicts (``train.epochs``,
    ``data.config.n_train``, ``classifier``), sorted; a field present on one side only counts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += diff_fields(a, b, f"{prefix}{k}.")
        elif _canon(a) != _canon(b):  # (1, 2) as stored in JSON is [1, 2]
            out.append(f"{prefix}{k}")
    return out


# ------------------------------------------------------------------------------------------------
# completion
# ------------------------------------------------------------------------------------------------

COMPLETE, PARTIAL, ABSENT = "complete", "partial", "absent"


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is absent, unreadable or not an object."""
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


@dataclasses.dataclass
class Result:
    """A result folder whose completion marker (``marker``, a JSON file) is written last.

    ``begin()`` removes the marker before anything in the folder is (re)made; ``complete(record)``
    writes it, atomically, when everything is in place. The folder is then *complete*; with files but
    no marker it is *partial* (a run died, or is running); with no files it is *absent*.
    """

    folder: Path
    marker: str = MARKER

    def __post_init__(self):
        self.folder = Path(self.folder)

    @property
    def marker_path(self) -> Path:
        return self.folder / self.marker

    def record(self) -> dict | None:
        """The marker's content (None when absent or unreadable)."""
        return read_json(self.marker_path)

    def state(self) -> str:
        """:data:`COMPLETE`, :data:`PARTIAL` or :data:`ABSENT`."""
        if self.record() is not None:
            return COMPLETE
        if self.folder.is_dir() and any(p.name != LOCK_NAME and not _is_temp(p) for p in self.folder.iterdir()):
            return PARTIAL
        return ABSENT

    def is_complete(self, expect: Mapping | None = None) -> bool:
        """Complete, and (given ``expect``) its record agrees with every key of ``expect``."""
        rec = self.record()
        return rec is not None and all(rec.get(k) == v for k, v in dict(expect or {}).items())

    def begin(self) -> None:
        """Mark the folder as being (re)made: the marker goes first."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker_path.unlink(missing_ok=True)
        sweep_temp(self.folder)

    def complete(self, record: Mapping) -> Path:
        """Write the marker (atomically) with ``record`` and the time it was written."""
        rec = {**dict(record), "completed": _now()}
        return atomic_write_json(self.marker_path, rec, default=str)


def _is_temp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".tmp")


@contextlib.contextmanager
def writing(folder, main: bool = True) -> Iterator[Path]:
    """What a stage's ``run`` holds while it writes into ``folder``: the folder's :func:`lock`, and the
    half files of killed writers swept first (:func:`sweep_temp`, recursive). ``main=False`` (a
    non-zero rank under torchrun, whose rank 0 holds the lock) does neither."""
    folder = Path(folder)
    if not main:
        yield folder
        return
    with lock(folder):
        sweep_temp(folder, recursive=True)
        yield folder


def sweep_temp(folder, recursive: bool = False) -> list[Path]:
    """Delete the temporary files (:func:`atomic_path`) that dead processes of this host left in
    ``folder`` (and its sub-folders, with ``recursive``): a killed writer's half file. Returns them;
    files of live processes are kept."""
    gone = []
    folder = Path(folder)
    for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        pid = p.name[:-4].rsplit(".", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------
# locking
# ------------------------------------------------------------------------------------------------

class ResultLocked(RuntimeError):
    """Another live process holds the lock of a result folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


_HELD: dict[Path, int] = {}


def _describe(holder: Mapping | None) -> str:
    if not holder:
        return "an unknown process (unreadable lock file)"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


def _create_whole(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists (False then); never leaves it half-written where
    hard links work (written to a temporary file, then linked to the name)."""
    tmp = _tmp_name(path)
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: exclusive create
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _stale(path: Path, holder: Mapping | None, host: str) -> bool:
    """A lock of a dead process of this host, or an unreadable one older than a minute."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return False
    pid = holder.get("pid")
    return holder.get("host") == host and isinstance(pid, int) and pid > 0 and not _pid_alive(pid)


@contextlib.contextmanager
def lock(folder, wait: float = 0.0, poll: float = 0.2) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the block: ``{"pid", "host", "started"}``, created whole (written to a
    temporary file, then hard-linked to the name, which fails if the name exists).

    If another live process on this host holds it, wait up to ``wait`` seconds, then raise
    :class:`ResultLocked` naming the holder. A lock whose pid is dead on this host (a killed run) is
    taken over, as is an unreadable lock file older than a minute; a lock from another host is never
    presumed dead (delete it by hand if it is). The same process may take a lock it already holds
    (re-entrant).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_NAME).resolve()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
    deadline = time.monotonic() + wait
    while True:
        if _create_whole(path, json.dumps(me)):
            break
        holder = read_json(path)
        stale = _stale(path, holder, me["host"])
        if stale:  # a killed run's lock: take it over (move it aside first, so that two takers cannot both win)
            grave = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.replace(path, grave)
            except FileNotFoundError:
                continue
            if read_json(grave) != holder:  # it was replaced by a live lock meanwhile: put that one back
                with contextlib.suppress(FileExistsError):
                    os.link(grave, path)
            grave.unlink(missing_ok=True)
            continue
        if time.monotonic() >= deadline:
            raise ResultLocked(
                f"{path}: held by {_describe(holder)}; another run is writing into {folder}. Wait for it, use "
                f"another output folder, or delete {path.name} if that process is gone.")
        time.sleep(poll)
    _HELD[path] = 1
    try:
        yield path
    finally:
        del _HELD[path]
        if (read_json(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
