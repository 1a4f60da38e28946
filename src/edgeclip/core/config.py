"""Experiments as YAML files (torchdistill style) with ``key.sub=value`` command-line overrides."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from edgeclip.core.errors import EdgeClipError

SHIPPED = Path(__file__).resolve().parents[1] / "configs"  # package data: edgeclip/configs/*.yaml


def shipped_configs() -> list[str]:
    """Names of the experiment files that ship inside the package (usable by name, e.g. ``edgevl_qat``)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def load_config(path: str | Path | None) -> dict[str, Any]:
    """A YAML file by path, or a shipped config by name (``edgevl_qat`` or ``edgevl_qat.yaml``)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file() and p.parent == Path("."):
        p = SHIPPED / (p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml")
    if not p.is_file():
        import difflib

        close = difflib.get_close_matches(Path(path).stem, shipped_configs(), n=2)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Shipped: {', '.join(shipped_configs())}"
        raise EdgeClipError(f"config file not found: {path}.{hint}")
    d = read_yaml(p, "config file") or {}
    if not isinstance(d, dict):
        raise EdgeClipError(f"{p}: the top level must be a mapping")
    return d


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """A YAML (or JSON) file's content; a missing, unreadable or malformed file is one line naming it."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeClipError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeClipError(f"cannot read {what} {path}: {e}") from None
    except yaml.YAMLError as e:
        raise EdgeClipError(f"{path} is not valid YAML: {' '.join(str(e).split())[:200]}") from None


def set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {}
        cur = cur[k]
    cur[keys[-1]] = value


def apply_overrides(d: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    d = copy.deepcopy(d)
    for o in overrides or []:
        if "=" not in o:
            raise EdgeClipError(f"override {o!r} must look like key.sub=value")
        k, v = o.split("=", 1)
        set_path(d, k.strip(), yaml.safe_load(v) if v.strip() else None)
    return d


def _type_error(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (str, int, float, bool, list[X], dict, X | None, Any), or
    None when it fits. A bool is not a number, a float is not an int, and a number must be finite."""
    import math
    import types
    import typing

    if hint is Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errs = [_type_error(value, a) for a in args if a is not type(None)]
        return None if any(e is None for e in errs) else errs[0]
    if origin is list:
        if not isinstance(value, list):
            return f"must be a list, got {value!r}"
        for i, v in enumerate(value):
            e = _type_error(v, args[0]) if args else None
            if e:
                return f"item {i + 1} {e}"
        return None
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else f"must be a mapping, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if hint is int:
        return (
            None
            if isinstance(value, int) and not isinstance(value, bool)
            else f"must be a whole number, got {value!r}"
        )
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"must be a number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"must be text, got {value!r}"
    return None


def build_dataclass(
    cls, d: dict[str, Any] | None, section: str | None = None, typed: bool = False, what: str | None = None
):
    """The one strict reader: ``cls(**d)`` with unknown keys refused in one line ("did you mean"); ``section``
    names where they sat (``train`` for ``train.epochz``), or, with ``what`` (``"experiment"``), the file or entry
    the keys came from (``x.yaml: unknown experiment keys: stagse``). ``typed``: each value is also checked
    against its field's annotation (:func:`_type_error`), one line naming the key."""
    import difflib

    d = d or {}
    if not isinstance(d, dict):
        raise EdgeClipError(f"{section or cls.__name__} must be a mapping of keys to values, got {d!r}")
    fields = cls.__dataclass_fields__
    unknown = [k for k in d if k not in fields]
    if unknown:
        where = f"{section}." if section and not what else ""
        lead = f"{section}: " if section and what else ""
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" Did you mean: {where}{close[0]}?" if close else ""
        raise EdgeClipError(
            f"{lead}unknown {what or cls.__name__} keys: {', '.join(where + k for k in unknown)}.{hint} "
            f"(known: {', '.join(fields)})"
        )
    if typed:
        import typing

        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            err = _type_error(v, hints.get(k, Any))
            if err:
                raise EdgeClipError(f"{section + (': ' if what else '.') if section else ''}{k} {err}")
    return cls(**d)


def config_from_cli(cls, path: str | Path | None, options: Iterable[tuple], overrides: Iterable[str]):
    """YAML file (optional) -> CLI options given as (dotted key, value) pairs -> ``--set`` overrides -> ``cls``.

    Options left at None (or empty) do not override the file.
    """
    d = load_config(path)
    for k, v in options:
        if v is not None and v != [] and v != {}:
            set_path(d, k, v)
    return build_dataclass(cls, apply_overrides(d, overrides))
