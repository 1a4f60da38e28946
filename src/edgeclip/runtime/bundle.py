"""Reading an edge bundle: the manifest (file hashes), labels.json, preprocess.json and the ONNX models.

A bundle is a folder::

    manifest.json      format, kind, file hashes + sizes, versions, teacher, parity, models
    model.onnx         fp32 image encoder: image (B,3,H,W) float32 -> embedding (B,D) (unnormalised)
    model.int8.onnx    the same, int8 (ONNX Runtime static QDQ, or dynamic for transformers)
    labels.json        label names, their teacher text embeddings (L,D), the prompt templates
    preprocess.json    resize / crop / normalisation (see edgeclip.runtime.preprocess)
    MODEL_CARD.md      source teacher, data, accuracy, size, latency

Only numpy, Pillow and onnxruntime are needed here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import sha256_file
from edgeclip.runtime.session import OnnxLoadError, ort_session

BUNDLE_FORMAT = "edgeclip-bundle/1"
MANIFEST = "manifest.json"
LABELS = "labels.json"
PREPROCESS = "preprocess.json"
MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
MODEL_CARD = "MODEL_CARD.md"


class BundleError(EdgeClipError):
    """A bundle with a missing, altered or inconsistent file."""


MAX_JSON_BYTES = 256 * 2**20  # a bundle's JSON file (labels.json of 10,000 labels x 1024-d is about 200 MB)
MAX_EMBED_DIM = 8192


def read_bundle_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise BundleError(
                f"{path} is {size / 2**20:.0f} MB: over the {MAX_JSON_BYTES // 2**20} MB a bundle file may be"
            )
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle file missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None


def read_manifest(root: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read ``manifest.json``; with ``verify`` every listed file must exist with its recorded sha256 and size."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle folder not found: {root}")
    man = read_bundle_json(root / MANIFEST)
    if not isinstance(man, dict) or man.get("format") != BUNDLE_FORMAT:
        fmt = man.get("format") if isinstance(man, dict) else type(man).__name__
        raise BundleError(
            f"{root / MANIFEST} is not an edgeclip bundle manifest (format {fmt!r}, want {BUNDLE_FORMAT!r})"
        )
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{root / MANIFEST} lists no files")
    if verify:
        for name, meta in files.items():
            p = root / name
            if not p.is_file():
                raise BundleError(f"bundle file missing: {p} (listed in the manifest)")
            if p.stat().st_size != meta.get("bytes"):
                raise BundleError(
                    f"bundle file altered: {p} has {p.stat().st_size} bytes, the manifest says {meta.get('bytes')}"
                )
            if sha256_file(p) != meta.get("sha256"):
                raise BundleError(f"bundle file altered: {p} does not match its sha256 in the manifest")
    return man


def read_kind(root: Path, kind: str, verify: bool = True, default_kind: str | None = None) -> dict[str, Any]:
    """The manifest of a bundle of ``kind`` (hashes verified); a bundle of another kind is one line.
    ``default_kind``: the kind of a manifest that records none (bundles of earlier releases)."""
    man = read_manifest(root, verify=verify)
    if man.get("kind", default_kind) != kind:
        raise BundleError(f"{root} is a {man.get('kind')!r} bundle, not a {kind!r} one")
    return man


@dataclass
class LabelSet:
    """Label names and their normalised text embeddings (L, D), with the templates that made them."""

    names: list[str]
    embeddings: np.ndarray
    templates: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.embeddings = normalise_rows(np.asarray(self.embeddings, dtype=np.float32), "label embeddings")
        if self.embeddings.shape[0] != len(self.names):
            raise EdgeClipError(f"{len(self.names)} label names but {self.embeddings.shape[0]} embeddings")
        if len(set(self.names)) != len(self.names):
            raise EdgeClipError("duplicate label names")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def index(self, names: Sequence[str]) -> list[int]:
        pos = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in pos]
        if missing:
            raise EdgeClipError(
                f"label(s) {', '.join(map(repr, missing[:5]))} have no embedding in this bundle "
                f"(it has: {', '.join(self.names[:20])}{' ...' if len(self.names) > 20 else ''})"
            )
        return [pos[n] for n in names]

    def subset(self, names: Sequence[str]) -> LabelSet:
        idx = self.index(names)
        return LabelSet([self.names[i] for i in idx], self.embeddings[idx], self.templates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.names),
            "templates": list(self.templates),
            "embed_dim": self.dim,
            "embeddings": [[round(float(v), 7) for v in row] for row in self.embeddings],
        }


def normalise_rows(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise EdgeClipError(f"{what}: expected a non-empty (N, D) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise EdgeClipError(f"{what}: contains NaN or infinite values")
    n = np.linalg.norm(a, axis=1, keepdims=True)
    if (n == 0).any():
        raise EdgeClipError(f"{what}: contains an all-zero vector")
    return (a / n).astype(np.float32)


def prototype(embeddings: np.ndarray) -> np.ndarray:
    """A label made from example images: the normalised mean of their normalised embeddings, (D,)."""
    e = normalise_rows(np.asarray(embeddings, dtype=np.float32), "example embeddings")
    return normalise_rows(e.mean(0, keepdims=True), "example prototype")[0]


def read_labels(path: str | os.PathLike) -> LabelSet:
    path = Path(path)
    d = read_bundle_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("labels"), list) or "embeddings" not in d:
        raise BundleError(f"{path}: expected {{'labels': [...], 'embeddings': [[...]], 'templates': [...]}}")
    from edgeclip.core.prompts import MAX_LABELS

    if len(d["labels"]) > MAX_LABELS:  # the cap holds at load time too, not only on edits
        raise BundleError(f"{path}: {len(d['labels'])} labels, over the cap of {MAX_LABELS}")
    try:
        emb = np.asarray(d["embeddings"], dtype=np.float32)
    except (TypeError, ValueError):
        raise BundleError(f"{path}: 'embeddings' is not a numeric (L, D) array") from None
    if emb.ndim != 2 or not 0 < emb.shape[1] <= MAX_EMBED_DIM:
        raise BundleError(f"{path}: embeddings must be (L, D) with 0 < D <= {MAX_EMBED_DIM}, got {emb.shape}")
    if "embed_dim" in d and emb.shape[1] != d["embed_dim"]:
        raise BundleError(f"{path}: embeddings are {emb.shape[1]}-d but embed_dim says {d['embed_dim']}")
    try:
        return LabelSet([str(n) for n in d["labels"]], emb, [str(t) for t in d.get("templates", [])])
    except EdgeClipError as e:
        raise BundleError(f"{path}: {e}") from None


def model_output_dim(session) -> int | None:
    """The embedding size an ONNX Runtime session declares (None if symbolic)."""
    shape = session.get_outputs()[0].shape
    return shape[-1] if shape and isinstance(shape[-1], int) else None


def make_session(path: str | os.PathLike, threads: int | None = None):
    """The bundle's model session (the shared factory); a file ONNX Runtime cannot open is a BundleError."""
    try:
        return ort_session(path, threads)
    except OnnxLoadError as e:
        raise BundleError(str(e)) from None


def pick_model(man: dict[str, Any], precision: str) -> str:
    """File name of the model for ``precision`` (auto: the default the export measured, ``default_precision``:
    int8 only where it was faster than fp32 within the fidelity gate; bundles without it: int8 when present)."""
    models = man.get("models") or {}
    if precision == "auto":
        precision = man.get("default_precision") or ("int8" if "int8" in models else "fp32")
        precision = precision if precision in models else "fp32"
    if precision not in ("fp32", "int8"):
        raise EdgeClipError(f"unknown precision {precision!r} (auto, fp32, int8)")
    if precision not in models:
        raise BundleError(f"this bundle has no {precision} model (it has: {', '.join(models) or 'none'})")
    return models[precision]
