"""edgeclip checkpoints: safetensors files of tensors + JSON metadata, written atomically, read without
unpickling anything; torch files (earlier releases, third-party weights) only through torch's weights-only
unpickler. Every checkpoint kind (teacher, student, pair student, captioner) goes through here."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeclip.core.errors import CheckpointError
from edgeclip.core.io import atomic_path, json_default

CHECKPOINT_META_KEY = "edgeclip"


def save_checkpoint(path: str | os.PathLike, fmt: str, state_dict: Mapping[str, Any], **meta: Any) -> None:
    """Write an edgeclip checkpoint atomically as a safetensors file: tensors + JSON metadata, no code.

    ``meta`` (configs, preprocessing, teacher identity, provenance) must be JSON data; tensors inside it
    (an EdgeVL adapter's weights, say) are stored as tensors under ``__meta__.<path>`` and put back on load.
    A checkpoint never carries a Python object that loading would have to construct.
    """
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory (tied weights): each is stored as its own copy
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = _tensors_out(meta, META_TENSOR_PREFIX, tensors)
    header = json.dumps({"format": fmt, **meta}, default=json_default)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CHECKPOINT_META_KEY: header})


META_TENSOR_PREFIX = "__meta__"


def _tensors_out(obj: Any, key: str, tensors: dict) -> Any:
    """``obj`` with each tensor replaced by {"__tensor__": name}, the tensor moved into ``tensors``."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        return {k: _tensors_out(v, f"{key}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tensors_out(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _tensors_in(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"} and obj["__tensor__"] in tensors:
            return tensors[obj["__tensor__"]]
        return {k: _tensors_in(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tensors_in(v, tensors) for v in obj]
    return obj


def _is_safetensors(p: Path) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then ``{``."""
    with open(p, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= p.stat().st_size - 8


def read_checkpoint(path: str | os.PathLike, fmt: str | None, what: str, map_location: str = "cpu") -> dict:
    """Load an edgeclip checkpoint of format ``fmt`` (None: any edgeclip format) -> {"format", "state_dict", **meta}.

    Nothing in the file is executed: safetensors files are parsed as tensors + JSON; checkpoints of earlier
    releases (torch zip files) go through ``torch.load(weights_only=True)``, which only rebuilds tensors and
    plain containers. Anything else is one CheckpointError line.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} checkpoint not found: {p}")
    try:
        if _is_safetensors(p):
            ck = _read_safetensors(p, map_location)
        elif zipfile.is_zipfile(p):  # torch's file format since 1.6: a zip holding a pickle and the tensors
            ck = _read_legacy(p, map_location)
        else:
            raise CheckpointError(
                f"cannot read {p} as an edgeclip {what} checkpoint: neither a safetensors nor a torch file"
            )
    except CheckpointError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {p} as an edgeclip {what} checkpoint: {msg[:300]}") from None
    ok = isinstance(ck, dict) and (
        ck.get("format") == fmt if fmt else str(ck.get("format")).startswith("edgeclip-")
    )
    if not ok:
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{p} is not an edgeclip {what} checkpoint (format: {got!r})")
    if not isinstance(ck.get("state_dict"), dict):
        raise CheckpointError(f"{p}: the {what} checkpoint holds no weights")
    return ck


def _read_safetensors(p: Path, map_location: str) -> dict:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt", device=map_location) as f:
        header = (f.metadata() or {}).get(CHECKPOINT_META_KEY)
        if header is None:
            raise CheckpointError(
                f"{p} is a safetensors file without edgeclip metadata (plain weights, "
                "not an edgeclip checkpoint)"
            )
        sd = {k: f.get_tensor(k) for k in f.keys()}
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: corrupt checkpoint metadata ({e.msg})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p}: corrupt checkpoint metadata (not a JSON object)")
    meta = _tensors_in(meta, sd)
    return {**meta, "state_dict": {k: v for k, v in sd.items() if not k.startswith(META_TENSOR_PREFIX + ".")}}


def _legacy_safe_globals() -> list:
    """Plain-data types that checkpoints of earlier releases may hold besides tensors (numpy scalars in
    metrics, paths in provenance). Each is rebuilt from its data alone: no callable of the file's choosing."""
    import pathlib

    import numpy as np

    types = [np.dtype, pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath]
    types += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [scalar, *types]


def unsafe_content_error(p: Path, e: Exception):
    """The one-line CheckpointError for a file that torch's weights-only unpickler refused."""
    text = " ".join(str(e).split())
    why = (
        text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation")[0].strip()
        or "unsafe content"
    )
    why = why.split(" was not an allowed global")[0]
    return CheckpointError(
        f"{p} holds Python objects beyond tensors and plain data ({why[:160]}), which edgeclip "
        "never unpickles: it was not written by edgeclip, or has been tampered with"
    )


def safe_torch_load(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """``torch.load`` through torch's restricted (weights-only) unpickler: tensors and plain data only.

    Used for every torch file edgeclip reads (checkpoints of earlier releases, backbone weights, the
    training loop's resume state); a file that asks for anything else is one CheckpointError line.
    """
    import pickle

    import torch

    p = Path(path)
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise unsafe_content_error(p, e) from None


def _read_legacy(p: Path, map_location: str) -> dict:
    """A torch zip checkpoint of an earlier release."""
    return safe_torch_load(p, map_location)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False) -> str:
    """Re-save any edgeclip checkpoint (e.g. a torch file of an earlier release) as safetensors; -> its format.
    ``half``: store its floating-point weights as float16 (half the size; loading casts them back into the
    model's float32 parameters) and record the source file's sha256 as ``converted_from``, so that a shipped
    fp16 teacher keeps the identity of the fp32 teacher its students were distilled from."""
    from edgeclip.core.io import sha256_file

    ck = read_checkpoint(src, None, "edgeclip")
    fmt, sd = ck.pop("format"), ck.pop("state_dict")
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        ck["stored_dtype"] = "float16"
        ck.setdefault("converted_from", {"sha256": sha256_file(src), "name": Path(src).name})
    save_checkpoint(dst, fmt, sd, **ck)
    return fmt
