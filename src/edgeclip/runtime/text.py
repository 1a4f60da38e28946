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
from edgeclip.runtime.bundle import BundleError, _normalise, make_session

TEXT_CONFIG = "text.json"
TEXT_FORMAT = "edgeclip-text-tower/1"


def has_text_tower(root: str | os.PathLike) -> bool:
    return (Path(root) / TEXT_CONFIG).is_file()


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
        """(N, D) L2-normalised float32 text embeddings."""
        texts = [str(t) for t in texts]
        if not texts:
            raise EdgeClipError("no texts to embed")
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(texts[i : i + batch_size])
            arrays = {
                "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            }
            out.append(self.session.run(None, {k: arrays[k] for k in self.inputs})[0])
        return _normalise(np.concatenate(out).astype(np.float32), "text embeddings")

    def classifier(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Per label, the normalised mean over templates of the normalised embeddings of its prompts (L, D): the
        same prompt ensemble the bundle's own labels were made with."""
        templates = list(templates) or ["{}"]
        per_t = [self.embed([t.format(lb) for lb in labels]) for t in templates]
        return _normalise(np.mean(per_t, axis=0), "label embeddings")

    def describe(self) -> dict:
        c = self.config
        return {
            "kind": c.get("kind"),
            "precision": self.precision,
            "bytes": (c.get("bytes") or {}).get(self.precision),
            "parity": (c.get("parity") or {}).get(self.precision),
        }
