"""Files shipped inside the package: configs, experiment specs, calibration numbers, the result.

Everything here is package data, so an installed wheel finds it from any directory. A shipped
config or spec is addressed by its name: its path under `configs/` (or `experiments/`) without
`.yaml`, e.g. `polychromic_1.0_moderate` or `demo/baseline`. Names starting with `_` are shared
fragments that others `extends:`; they are listed too.
"""

from __future__ import annotations

import difflib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
KINDS = ("configs", "experiments")


def shipped(kind: str = "configs") -> dict[str, Path]:
    """Name -> file for every shipped YAML of `kind`, sorted by name."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped file {kind!r}; expected one of {KINDS}")
    base = ROOT / kind
    if not base.is_dir():
        return {}
    return {str(p.relative_to(base).with_suffix("")): p for p in sorted(base.rglob("*.yaml"))}


def resolve(name_or_path: str | Path, kind: str = "configs") -> Path:
    """An existing path as given, else the shipped file of that name; a clear error otherwise."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    table = shipped(kind)
    key = str(name_or_path).removesuffix(".yaml")
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; `polychromic {kind} list` shows the shipped names"
    raise FileNotFoundError(f"{name_or_path}: no such file, and no shipped {kind[:-1]} of that name{hint}")


def calibration_dir() -> Path:
    """Preflight's measured throughput numbers, one JSON file per GPU model."""
    return ROOT / "calibration"
