"""What every model kind shares: the ``Loaded`` triple and the two registries behind the one factory.

``CHECKPOINT_KINDS`` maps a checkpoint's ``format`` (``edgeclip-student/1``, ...) to the function that
rebuilds its model; ``MODEL_KINDS`` maps a model kind (``student``, ``pair-student``, ``captioner``) to its
constructor. Both are filled by the kind modules and used through ``edgeclip.models.factory``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeclip.core.errors import CheckpointError
from edgeclip.core.registry import Registry


@dataclass
class Loaded:
    """A model rebuilt from its checkpoint: the model (eval mode), its input preprocessing, and the
    checkpoint's metadata (format, config, teacher identity, provenance; the weights are in the model).

    Unpacks as ``model, preprocess, info = load_...(path)``.
    """

    model: Any
    preprocess: Any
    info: dict[str, Any] = field(default_factory=dict)
    kind: str = ""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.preprocess, self.info))

    def __getitem__(self, i: int) -> Any:
        return (self.model, self.preprocess, self.info)[i]


CHECKPOINT_KINDS: Registry[Callable[[dict, Path], Loaded]] = Registry("checkpoint format")
MODEL_KINDS: Registry[Callable[..., Any]] = Registry("model kind")


def load_weights(module, state_dict: Mapping[str, Any], path: str | Path, what: str) -> None:
    """``module.load_state_dict(state_dict)``; weights that do not fit the saved config are one line."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else "mismatch"
        raise CheckpointError(f"{path}: the {what} weights do not fit the saved config ({first})") from None
