"""A captioner bundle on the device: the exported encoder and decoder step in ONNX Runtime, greedy or beam search
in numpy (:mod:`edgeclip.runtime.decode`, the same decoder the torch model uses). No torch.

    from edgeclip.runtime import load_bundle
    cap = load_bundle("caption_bundle/")          # kind "captioner" in its manifest
    cap.caption("photo.jpg")                      # 'a dog runs on the grass'
    cap.caption_batch(["a.jpg", "b.jpg"], beam=5)

A bundle folder: ``caption_encoder.onnx``, ``caption_decoder_step.onnx``, ``caption_meta.json`` (vocabulary,
model config), ``preprocess.json`` and ``manifest.json`` (file hashes), written by ``edgeclip caption export``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.runtime.bundle import BundleError, make_session, read_kind
from edgeclip.runtime.decode import beam_decode, decode_words, greedy_decode
from edgeclip.runtime.preprocess import NumpyPreprocess

CAPTION_META = "caption_meta.json"


class CaptionerBundle:
    """An exported captioner. ``verify``: check the manifest's file hashes (folders exported before bundles had a
    manifest load without it)."""

    kind = "captioner"

    def __init__(
        self,
        path: str | os.PathLike,
        precision: str = "auto",
        threads: int | None = None,
        verify: bool = True,
    ):
        self.root = Path(path)
        # folders exported before captioner bundles had a manifest load without one
        self.manifest = (
            read_kind(self.root, self.kind, verify) if (self.root / "manifest.json").is_file() else {}
        )
        mp = self.root / CAPTION_META
        if not mp.is_file():
            raise BundleError(f"{self.root} is not an exported captioner (no {CAPTION_META})")
        try:
            meta = json.loads(mp.read_text(encoding="utf-8"))
            self.words = [str(w) for w in meta["vocab"]["words"]]
            self.preprocess = NumpyPreprocess.from_dict(meta["preprocess"])
            enc, dec = meta["encoder"], meta["decoder_step"]
        except (ValueError, KeyError, TypeError) as e:
            raise BundleError(f"{mp} is not a captioner description ({e})") from None
        self.config = meta.get("config") or {}
        self.enc = make_session(self.root / enc, threads)
        self.dec = make_session(self.root / dec, threads)
        self.threads = threads
        self.precision = "fp32"
        self.name = f"captioner:{self.root.name}"

    def _step(self, words, dyn, static):
        logp, h, c = self.dec.run(
            None,
            {"word": words.astype(np.int64), "h": dyn[0], "c": dyn[1], "feats": static[0], "keys": static[1]},
        )
        return logp, (h, c)

    def caption_arrays(
        self, x, beam: int = 5, max_len: int = 20, length_penalty: float = 1.0, allow_unk: bool = False
    ) -> list[str]:
        """Captions of a normalised (B, 3, H, W) float batch (numpy, or anything with ``.numpy()``)."""
        x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        feats, keys, h, c = self.enc.run(None, {"image": x.astype(np.float32)})
        n = x.shape[0]
        if beam <= 1:
            ids = greedy_decode(self._step, (h, c), (feats, keys), n, max_len, allow_unk)
        else:
            ids, _ = beam_decode(
                self._step, (h, c), (feats, keys), n, beam, max_len, length_penalty, allow_unk
            )
        return [decode_words(self.words, r) for r in ids]

    def caption_batch(self, images: Sequence[Any], beam: int = 5, max_len: int = 20, **kw) -> list[str]:
        """Captions of images (paths, bytes or PIL images)."""
        from edgeclip.runtime.labeler import to_image

        if not len(images):
            return []
        return self.caption_arrays(self.preprocess.batch([to_image(i) for i in images]), beam, max_len, **kw)

    def caption(self, image: Any, beam: int = 5, max_len: int = 20, **kw) -> str:
        return self.caption_batch([image], beam, max_len, **kw)[0]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bundle": self.root.name,
            "precision": self.precision,
            "input_size": self.preprocess.size,
            "vocab_size": len(self.words),
            "student": self.config.get("arch"),
            "teacher": (self.manifest.get("teacher") or {}).get("id"),
            "labels": None,
            "threads": self.threads,
        }
