"""Atomic file writes and JSONL helpers: a crash never leaves a half-written file behind.

Every result, manifest and checkpoint file goes through `atomic_write_*`: write to a temporary
file in the same folder, fsync, then os.replace (atomic on POSIX). Append-only logs
(`samples.jsonl`, `metrics.jsonl`) use `append_jsonl`, which writes whole lines with one write
call and fsyncs; a reader skips nothing silently: a torn last line is reported by `read_jsonl`.

A full disk (ENOSPC) raises `DiskFullError` naming the file, the bytes the write needed and the
space left; the previous version of the file stays as it was (an atomic write removes its
temporary file, an append cuts its partial rows off again), so a rerun or `--resume` continues
once there is space.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def _to_jsonable(obj: Any) -> Any:
    # numpy scalars and arrays (the prior system lost hours to a numpy bool in json.dump)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, **kw) -> str:
    return json.dumps(obj, default=_to_jsonable, ensure_ascii=False, allow_nan=False, **kw)


class DiskFullError(OSError):
    """No space left on the device while writing a file (errno ENOSPC); the message names the
    file, the space the write needed and the space left."""

    def __str__(self) -> str:
        return str(self.strerror)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: str | Path) -> int | None:
    """Free space on the filesystem holding `path` (its nearest existing ancestor)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: str | Path, needed: int, kept: str) -> DiskFullError:
    """The DiskFullError for `path`: `needed` bytes to write, `kept` says what stayed intact."""
    free = free_bytes(path)
    left = f"{format_bytes(free)} free" if free is not None else "free space unknown"
    msg = f"{path}: no space left on the device: the write needs about {format_bytes(needed)}, {left}; {kept}"
    return DiskFullError(errno.ENOSPC, msg, str(path))


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short, e.g. when the disk fills)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            kept = "the previous version is unchanged" if path.exists() else "nothing was written"
            raise disk_full(path, len(data), kept) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(dumps(r) + "\n" for r in rows))


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException as exc:
            # Cut the rows of this call off again: the file keeps whole rows only (and the
            # freed bytes are the space the error message reports).
            os.ftruncate(fd, start)
            if is_disk_full(exc):
                raise disk_full(path, len(data), f"the file is unchanged ({start} bytes, whole rows only)") from exc
            raise
    finally:
        os.close(fd)


class JsonlError(ValueError):
    pass


def read_json_object(path: str | Path) -> dict:
    """A JSON file that must hold an object; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_jsonl(path: str | Path, allow_torn_tail: bool = False) -> Iterator[dict]:
    """Rows of a JSONL file. A malformed line raises JsonlError naming file and line; with
    allow_torn_tail, a final line without a newline (a write cut by a crash) is dropped, since
    append-only logs are rewritten from that point on resume."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines = lines[:-1]
    for i, line in enumerate(lines, start=1):
        if torn and i == len(lines) and allow_torn_tail:
            return
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JsonlError(f"{path}: line {i}: invalid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise JsonlError(f"{path}: line {i}: expected a JSON object, got {type(row).__name__}")
        yield row
