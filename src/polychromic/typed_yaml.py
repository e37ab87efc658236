"""Typed YAML: plain YAML data into dataclasses, with every error at once and its dotted path.

What the config schema (`config.py`) and the experiment spec (`experiment/spec.py`) share:
`_build` converts a mapping into a dataclass tree, collecting unknown keys (with a suggestion),
wrong types and missing fields instead of stopping at the first; `read_yaml_tree` reads a file with
its `extends:` chain (deep merge); `parse_overrides` turns `key.sub=value` pairs into a mapping.
No torch, no knowledge of any one schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """Every problem found in a config, one per line, each with its dotted path."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = errors
        head = f"{source}: " if source else ""
        super().__init__(head + f"{len(errors)} config error(s):\n" + "\n".join(f"  {e}" for e in errors))


# ---------------------------------------------------------------------------------------------
# Generic typed conversion of plain YAML data into the dataclasses, collecting every error.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            sub: list[str] = []
            out = _convert(value, a, path, sub)
            if not sub:
                return out
        errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
            hint = f", did you mean {close[0]}?" if close else ""
        errors.append(f"{path}: must be {_type_name(tp)}, got {value!r}{hint}")
        return None
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return None
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return None
        key_tp, value_tp = typing.get_args(tp)
        return {_convert(k, key_tp, f"{path}: key", errors): _convert(v, value_tp, f"{path}.{k}", errors) for k, v in value.items()}
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-4` (no dot) as a string; accept numeric spellings.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                errors.append(f"{path}: must be a finite number, got {value!r}")
                return None
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema bug
        raise TypeError(f"unsupported schema type {tp!r} at {path}")
    errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return None


class _Problems(list):
    """The error lines of one config, plus the dotted paths of the fields that failed
    structurally (a wrong type, a bad Literal, not a mapping) and so kept their defaults: the
    cross-field rules skip those fields instead of judging a default the user never chose."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: set[str] = set()


def _mark_failed(errors: list[str], path: str) -> None:
    if isinstance(errors, _Problems):
        errors.failed.add(path)


def _keeps_partial(tp: Any) -> bool:
    """Sections (dataclasses) and lists of them are kept when some of their fields failed: the
    fields that did convert still reach the value and cross-field rules."""
    if dataclasses.is_dataclass(tp):
        return True
    return typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0])


def _build(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    prefix = f"{path}." if path else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path or '<root>'}: expected a mapping, got {data!r}")
        _mark_failed(errors, path or "<root>")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f", did you mean {close[0]}?" if close else f" (valid keys: {', '.join(fields)})"
            errors.append(f"{prefix}{key}: unknown key{hint}")
            continue
        before = len(errors)
        out = _convert(value, hints[key], f"{prefix}{key}", errors)
        if len(errors) == before or (out is not None and _keeps_partial(hints[key])):
            kwargs[key] = out
        else:
            _mark_failed(errors, f"{prefix}{key}")
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# YAML files with `extends:`, and command-line overrides.


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml_tree(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, resolving `extends:` (relative to the file) with a deep merge."""
    p = Path(path).resolve()
    if p in _chain:
        cycle = " -> ".join(str(c) for c in (*_chain, p))
        raise ConfigError([f"extends: cycle detected: {cycle}"], str(path))
    if not p.is_file():
        where = f" (extended from {_chain[-1]})" if _chain else ""
        raise ConfigError([f"config file not found: {path}{where}"])
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError([f"invalid YAML: {exc}"], str(p)) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping, got {type(data).__name__}"], str(p))
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(x, str) for x in parents):
        raise ConfigError([f"extends: expected a path or a list of paths, got {parents!r}"], str(p))
    merged: dict = {}
    for parent in parents:
        merged = _deep_merge(merged, read_yaml_tree(p.parent / parent, (*_chain, p)))
    return _deep_merge(merged, data)


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=value` pairs into a nested dict; values parsed as YAML scalars (`lr=1e-4`, `x=[a,b]`)."""
    out: dict = {}
    errors: list[str] = []
    for item in overrides:
        if "=" not in item:
            errors.append(f"{item}: override must look like key.sub=value")
            continue
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            errors.append(f"{item}: empty key segment")
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                errors.append(f"{key}: conflicts with an earlier override of {part}")
                break
            node = nxt
        else:
            node[parts[-1]] = value
    if errors:
        raise ConfigError(errors, "overrides")
    return out
