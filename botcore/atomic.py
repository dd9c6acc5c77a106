"""Atomic file writes: write to a temporary file in the same folder, fsync, then ``os.replace``.

A crash or Ctrl-C at any moment leaves the target either with its old content or with the new one,
never half-written. The temporary file is removed when the write fails.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from botcore.redact import redact


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    For writers that insist on a file name (``torch.save``, ``DataFrame.to_csv``, ``savefig``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the file the mode open() would
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_folder(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; best effort where the OS cannot."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Call ``writer(fh)`` on a temporary file and move it over ``path`` when it returns."""
    with atomic_path(path) as tmp:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with open(tmp, mode, **kwargs) as fh:
            writer(fh)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (NaN and infinities become ``null``, so the file is strict JSON; secrets are
    masked, see :func:`to_jsonable`)."""
    text = json.dumps(to_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and non-finite floats into plain JSON values, with secrets masked
    by :func:`botcore.redact.redact` (every JSON file the toolkit writes goes through here)."""
    return redact(_plain(obj))


def _plain(obj: Any) -> Any:
    import math

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _plain(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return obj


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


STALE_TEMP_SECONDS = 600.0


def remove_stale_temp_files(folder: str | os.PathLike[str], prefix: str = "",
                            older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the temporary files (``.{name}.XXXXXXXX.tmp``) that :func:`atomic_path` leaves in ``folder`` when
    its process is killed mid-write (``kill -9``, a power cut), once they are ``older_than`` seconds old: a
    write in progress keeps its file fresh, so concurrent writers are not disturbed. Not recursive.

    :param prefix: only the temporary files of targets whose name starts with this.
    :return: the removed files (the caller says so in its log).
    """
    import time

    cutoff = time.time() - older_than
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not (entry.name.startswith(f".{prefix}") and entry.name.endswith(".tmp")):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed
