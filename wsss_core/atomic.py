"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every writer goes to a temporary file in the target's folder (``.<name>.<pid>.tmp``) and renames it over
the target with ``os.replace`` (atomic on one file system). This protects against a killed process, not
against a power cut (no ``fsync``). The lowest layer of the package: the data writers (label PNGs, CAM
files), the engine's checkpoints and the stage store (:mod:`wsss_core.stages.store`, which adds
identities, completion markers and locks on top) all write through it. Standard library only.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_update_json", "tmp_name"]


def tmp_name(path: Path) -> Path:
    "The temporary name of ``path`` while this process writes it (``sweep_temp`` parses the pid back)."
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error it replaces
    ``path`` (``os.replace``, atomic on one file system), otherwise it is deleted and ``path`` is left
    as it was; an ``OSError`` (a full disk, a read-only folder) is raised again naming ``path``. Folders
    are made as needed.

        with atomic_path(out / "x.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, a=a)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # e.g. a full disk: say which file, and that nothing half-written was left
        raise type(e)(e.errno, f"{path}: {e.strerror or e} (not written; any previous file is unchanged)") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj: Any, indent: int | None = 2, **kw) -> Path:
    """``json.dumps(obj)`` to ``path`` atomically (the object is serialised before the file is touched:
    an unserialisable object leaves the old file in place)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kw))


def atomic_update_json(path, obj: Any, indent: int | None = 2, **kw) -> bool:
    """:func:`atomic_write_json`, unless ``path`` already holds the same JSON (then the file is left
    untouched, its time stamp too, so that a rerun which reuses everything writes nothing).
    Returns whether it wrote."""
    text = json.dumps(obj, indent=indent, **kw)
    try:
        if json.loads(Path(path).read_text()) == json.loads(text):
            return False
    except (OSError, ValueError):
        pass
    atomic_write_text(path, text)
    return True

