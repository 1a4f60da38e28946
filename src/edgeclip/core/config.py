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
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise EdgeClipError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise EdgeClipError(f"{p}: the top level must be a mapping")
    return d


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


def build_dataclass(cls, d: dict[str, Any] | None, section: str | None = None):
    """``cls(**d)`` with unknown keys refused in one line ("did you mean"); ``section`` names where they sat
    (``train`` for ``train.epochz``)."""
    import difflib

    d = d or {}
    if not isinstance(d, dict):
        raise EdgeClipError(f"{section or cls.__name__} must be a mapping of keys to values, got {d!r}")
    fields = cls.__dataclass_fields__
    unknown = [k for k in d if k not in fields]
    if unknown:
        where = f"{section}." if section else ""
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" Did you mean: {where}{close[0]}?" if close else ""
        raise EdgeClipError(
            f"unknown {cls.__name__} keys: {', '.join(where + k for k in unknown)}.{hint} (known: {', '.join(fields)})"
        )
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
