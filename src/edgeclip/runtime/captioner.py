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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeclip.runtime.bundle import BundleError, make_session, read_kind
from edgeclip.runtime.decode import Decoding, decode, decode_words
from edgeclip.runtime.preprocess import NumpyPreprocess

CAPTION_META = "caption_meta.json"


class ImageCaptioner(Protocol):
    """What the captioning loop needs of a captioner (ONNX bundle or torch model): ``prepare`` one image (a PIL
    image) for the model, and caption a list of prepared images."""

    def prepare(self, image: Any) -> Any: ...

    def caption_prepared(self, xs: list) -> list[str]: ...


def caption_records(
    captioner: ImageCaptioner, records: Iterable, batch_size: int = 16, on_skip: Callable[[str], None] = print
) -> list[dict[str, str]]:
    """The one images -> captions loop: ``records`` (anything with ``.load()`` and ``.name``, e.g. an image
    source's) prepared and captioned ``batch_size`` at a time; an unreadable image goes to ``on_skip`` (its one
    line) and the loop goes on. -> ``[{"image": name, "caption": text}]`` in order."""
    from edgeclip.core.errors import ImageLoadError

    rows: list[dict[str, str]] = []
    names: list[str] = []
    xs: list = []

    def flush() -> None:
        if xs:
            rows.extend(
                {"image": n, "caption": c} for n, c in zip(names, captioner.caption_prepared(list(xs)))
            )
            names.clear()
            xs.clear()

    for r in records:
        try:
            xs.append(captioner.prepare(r.load()))
            names.append(r.name)
        except ImageLoadError as e:
            on_skip(str(e))
        if len(xs) >= batch_size:
            flush()
    flush()
    return rows


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
        self._decoding = Decoding()  # what the ImageCaptioner methods use (:meth:`decoding`)

    def _step(self, words, dyn, static):
        logp, h, c = self.dec.run(
            None,
            {"word": words.astype(np.int64), "h": dyn[0], "c": dyn[1], "feats": static[0], "keys": static[1]},
        )
        return logp, (h, c)

    def caption_arrays(self, x, d: Decoding | None = None, **decoding) -> list[str]:
        """Captions of a normalised (B, 3, H, W) float batch (numpy, or anything with ``.numpy()``); ``d`` and/or
        :class:`~edgeclip.runtime.decode.Decoding` fields, over the bundle's own decoding (:meth:`decoding`)."""
        x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        feats, keys, h, c = self.enc.run(None, {"image": x.astype(np.float32)})
        d = Decoding.of(d or self._decoding, **decoding)
        return [decode_words(self.words, r) for r in decode(self._step, (h, c), (feats, keys), x.shape[0], d)]

    def decoding(self, d: Decoding) -> CaptionerBundle:
        """Set the decoding the :class:`ImageCaptioner` methods use; -> self."""
        self._decoding = d
        return self

    def prepare(self, image: Any) -> np.ndarray:
        return self.preprocess(image)

    def caption_prepared(self, xs: list) -> list[str]:
        return self.caption_arrays(np.stack(xs))

    def caption_batch(self, images: Sequence[Any], d: Decoding | None = None, **decoding) -> list[str]:
        """Captions of images (paths, bytes or PIL images); ``d`` and/or Decoding fields as :meth:`caption_arrays`."""
        from edgeclip.runtime.labeler import to_image

        if not len(images):
            return []
        return self.caption_arrays(self.preprocess.batch([to_image(i) for i in images]), d, **decoding)

    def caption(self, image: Any, d: Decoding | None = None, **decoding) -> str:
        return self.caption_batch([image], d, **decoding)[0]

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
