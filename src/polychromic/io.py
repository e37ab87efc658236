"""Atomic file writes and JSONL helpers: a crash never leaves a half-written file behind.

Every result, manifest and checkpoint file goes through `atomic_write_*`: write to a temporary
file in the same folder, fsync, then os.replace (atomic on POSIX). Append-only logs
(`samples.jsonl`, `metrics.jsonl`) use `append_jsonl`, which writes whole lines with one write
call and fsyncs; a reader skips nothing silently: a torn last line is reported by `read_jsonl`.
"""

from __future__ import annotations

import json
import os
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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
