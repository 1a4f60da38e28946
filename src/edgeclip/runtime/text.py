"""A bundle's text tower on the device: any new text -> teacher text embedding, with ``tokenizers`` and ONNX
Runtime (no torch). Present when the bundle was exported with ``--text-encoder`` (see ``text.json``).

    enc = TextTower("bundle/")                  # precision: the one the export chose (int8 where it agrees)
    enc.embed(["a dog running on grass"])       # (1, D) L2-normalised float32
    enc.classifier(["dog", "truck"], ["a photo of a {}."])   # template-ensembled label embeddings (L, D)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import prompt_ensemble
from edgeclip.runtime.bundle import BundleError, make_session, normalise_rows

TEXT_CONFIG = "text.json"
TEXT_FORMAT = "edgeclip-text-tower/1"


def has_text_tower(root: str | os.PathLike) -> bool:
    return (Path(root) / TEXT_CONFIG).is_file()


def run_texts(tokenizer, session, texts: Sequence[str], per_text: bool, batch: int = 64) -> np.ndarray:
    """Raw (N, D) float32 outputs of a text ONNX model for ``texts``, batch-independent.

    A dynamically quantized (int8) model computes its activation scales over the whole input tensor, so a text
    batched with others, or padded to a longer one, would get another answer (cosine 0.990 was seen for a query
    alone vs among 7 others). ``per_text`` runs each text alone at its own length, so its embedding never
    depends on the call; fp32 models run in batches (their padded tokens are masked out: the same answer within
    float rounding)."""
    inputs = [i.name for i in session.get_inputs()]
    step = 1 if per_text else max(1, int(batch))
    out = []
    for i in range(0, len(texts), step):
        enc = tokenizer.encode_batch(list(texts[i : i + step]))
        arrays = {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
        }
        out.append(session.run(None, {k: arrays[k] for k in inputs})[0])
    return np.concatenate(out).astype(np.float32)


def default_reason(config: dict) -> str:
    """Why a text tower runs the precision it runs by default: the gate that precision passed, with its figure.
    One sentence, read from ``text.json`` alone, so the bundle's manifest and its card say the same."""
    default = config.get("default", "fp32")
    moved = config.get("default_moved")
    if moved:
        return (
            f"{moved['precision']}: on {moved.get('measured', 'a measure')}, {float(moved['value']):.4f} vs "
            f"{float(moved['reference']):.4f}, a ratio of {float(moved['ratio']):.3f} (passes the gate >= "
            f"{moved.get('min_ratio', 0.99)})"
        )
    gate = config.get("int8_gate") or {}
    p8 = (config.get("parity") or {}).get("int8") or {}
    z, n = p8.get("zero_shot_agreement"), p8.get("zero_shot_images", 0)
    need = f">= {gate.get('zero_shot_agreement', 0.99)} on >= {gate.get('min_images', 20)} images"
    if z is None:
        return "fp32: int8's zero-shot agreement was not measured" if default == "fp32" else default
    verdict = "passes" if default == "int8" else "misses"
    return f"{default}: int8's zero-shot agreement with torch is {z:.3f} on {n} images ({verdict} the gate {need})"


class TextTower:
    """The bundled text tower. ``precision``: auto (the export's measured choice) | fp32 | int8."""

    def __init__(self, root: str | os.PathLike, precision: str = "auto", threads: int | None = None):
        import tokenizers

        self.root = Path(root)
        try:
            self.config = json.loads((self.root / TEXT_CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(
                f"{self.root} has no text tower (export it with `edgeclip export --text-encoder`)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{self.root / TEXT_CONFIG} is not valid JSON: {e}") from None
        if self.config.get("format") != TEXT_FORMAT:
            raise BundleError(f"{self.root / TEXT_CONFIG} is not an edgeclip text tower ({TEXT_FORMAT})")
        models = self.config.get("models") or {}
        self.precision = self.config.get("default", "fp32") if precision == "auto" else precision
        if self.precision not in models:
            raise BundleError(
                f"this bundle's text tower has no {self.precision} model (it has: {', '.join(models) or 'none'})"
            )
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(self.root / self.config["tokenizer"]))
        except Exception as e:  # a tokenizers error is a Rust exception type
            raise BundleError(f"cannot read the bundle's tokenizer: {str(e).splitlines()[0][:200]}") from None
        self.session = make_session(self.root / models[self.precision], threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.embed_dim = int(self.config.get("embed_dim", 0))

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, D) L2-normalised float32 text embeddings; each text's embedding is the same whatever else is in the
        call (see :func:`run_texts`)."""
        texts = [str(t) for t in texts]
        if not texts:
            raise EdgeClipError("no texts to embed")
        raw = run_texts(
            self.tokenizer, self.session, texts, per_text=self.precision != "fp32", batch=batch_size
        )
        return normalise_rows(raw, "text embeddings")

    def classifier(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Per label, the normalised mean over templates of the normalised embeddings of its prompts (L, D): the
        same prompt ensemble the bundle's own labels were made with."""
        return normalise_rows(prompt_ensemble(self.embed, labels, list(templates)), "label embeddings")

    def describe(self) -> dict:
        c = self.config
        return {
            "kind": c.get("kind"),
            "precision": self.precision,
            "bytes": (c.get("bytes") or {}).get(self.precision),
            "parity": (c.get("parity") or {}).get(self.precision),
            "default": c.get("default", "fp32"),
            "default_why": default_reason(c),
        }
