"""One tiny registry class, used for every pluggable kind (teachers, students, losses, ...).

Modelled on timm's ``@register_model``: register a factory under a name, then build by name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from edgeclip.core.errors import EdgeClipError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, *, help: str = "", **meta: Any) -> Callable[[T], T]:
        """Register under ``name``; ``meta`` is data that travels with the entry (e.g. a teacher kind's
        spec prefixes, a checkpoint format's model kind)."""

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._items[key] = fn
            self._meta[key] = dict(meta)
            self._help[key] = (
                help or (fn.__doc__ or "").strip().splitlines()[0:1][0] if (help or fn.__doc__) else ""
            )
            return fn

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise EdgeClipError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            ) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)  # unknown names: the one-line error with "did you mean"
        return self._meta[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        return {k: self._help.get(k, "") for k in sorted(self._items)}
