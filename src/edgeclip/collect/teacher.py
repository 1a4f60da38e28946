"""The collector's teacher: a second opinion on every frame the students kept, and the search.

A background thread takes events the teacher has not seen (oldest first, a batch at a time), embeds their JPEGs
with the teacher's image tower, scores each against its rule's query and background texts the way the device
scored it (softmax at the teacher's logit scale, or cosine) and stores the teacher's embedding, score and verdict
(``confirmed`` / ``rejected``; ``no-query`` for rules by example; ``unreadable``), and the event's near-duplicate
group: the group of the closest earlier event (any device) within ``dedup_distance``, else a group of its own.
Once that row is written the event is searchable by text and by example.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.prompts import DEFAULT_TEMPLATES
from edgeclip.core.worker import Worker
from edgeclip.serve.app import DEFAULT_MAX_PIXELS

DEDUP_DISTANCE = 0.05  # cosine distance between teacher embeddings under which two frames are one scene
MAX_VERDICT_TEXTS, MAX_TEXT_CHARS = 64, 300  # what one event's record may ask the teacher to embed
MAX_MEMO = 20_000  # text embeddings kept in memory (a device cannot grow the collector without bound)


class TeacherSide:
    """The teacher's image and text towers as numpy in, numpy out (one lock: torch runs one batch at a time)."""

    def __init__(self, spec: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        import torch

        from edgeclip.models.teachers import load_teacher

        self.torch = torch
        self.t = load_teacher(spec, device="cpu").eval()
        self.id, self.dim, self.logit_scale = self.t.id, int(self.t.embed_dim), float(self.t.logit_scale)
        self.max_pixels = max_pixels
        self.lock = threading.Lock()
        self._text: dict[str, np.ndarray] = {}

    def images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> (B, D) normalised embeddings."""
        with self.lock, self.torch.no_grad():
            x = self.torch.stack([self.t.preprocess(im) for im in images])
            return self.t.encode_image(x).float().numpy()

    def decode(self, data: bytes):
        from edgeclip.runtime.labeler import to_image

        return to_image(data, self.max_pixels)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(L, D) template-ensembled text embeddings, memoised per text."""
        from edgeclip.zeroshot.text import text_embeddings

        new = [s for s in dict.fromkeys(texts) if s not in self._text]
        if len(self._text) + len(new) > MAX_MEMO:
            self._text.clear()
        if new:
            with self.lock:
                emb = text_embeddings(self.t, new, DEFAULT_TEMPLATES).float().numpy()
            self._text.update(zip(new, emb))
        return np.stack([self._text[s] for s in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def verdict(self, emb: np.ndarray, meta: dict[str, Any]) -> tuple[float | None, str]:
        """The teacher's score for the event's rule, scored as the device scored it, and its verdict."""
        query = meta.get("query")
        if not query or not isinstance(query, str):
            return None, "no-query"
        query = query[:MAX_TEXT_CHARS]
        bg = meta.get("background") if isinstance(meta.get("background"), list) else []
        background = [b[:MAX_TEXT_CHARS] for b in bg if isinstance(b, str) and b.strip()][:MAX_VERDICT_TEXTS]
        cos = self.texts([query, *background]) @ emb
        if meta.get("score_kind") == "cosine" or not background:
            score = float(cos[0])
        else:
            z = self.logit_scale * cos
            z = np.exp(z - z.max())
            score = float(z[0] / z.sum())
        threshold = meta.get("threshold")
        threshold = float(threshold) if isinstance(threshold, (int, float)) else 0.5
        return score, "confirmed" if score >= threshold else "rejected"


class Rescorer(Worker):
    """The thread that gives every stored event the teacher's embedding, verdict and near-duplicate group."""

    thread_name = "edgeclip-rescore"

    def __init__(
        self,
        store,
        blobs,
        teacher: TeacherSide,
        batch: int = 16,
        dedup_distance: float = DEDUP_DISTANCE,
        log: Callable[[str], None] = print,
    ):
        super().__init__()
        self.store, self.blobs, self.teacher, self.batch = store, blobs, teacher, batch
        self.dedup_distance, self.log = dedup_distance, log
        self.done = 0

    def run(self) -> None:
        while not self.stopping:
            try:
                n = self.step()
            except EdgeClipError as e:  # the database went away for a moment: try again shortly
                self.log(f"rescoring: {e}")
                n = 0
            if not n:
                self.idle(0.5)

    def step(self) -> int:
        """Rescore one batch of waiting events; -> how many."""
        todo = self.store.pending(self.batch)
        if not todo:
            return 0
        images, ok = [], []
        for ev in todo:
            try:
                images.append(self.teacher.decode(self.blobs.get(ev["blob"])))
                ok.append(ev)
            except (OSError, ImageLoadError):
                self.store.set_teacher(ev["id"], None, None, "unreadable", ev["id"])
        if ok:
            emb = self.teacher.images(images)
            for ev, e in zip(ok, emb):
                score, verdict = self.teacher.verdict(e, ev["meta"])
                group = self.store.nearest_group(e, ev["id"], self.dedup_distance)
                self.store.set_teacher(ev["id"], e, score, verdict, ev["id"] if group is None else group)
        self.done += len(todo)
        return len(todo)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no event waits for the teacher (tests, the benchmark); -> whether that happened."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.store.pending(1):
                return True
            self.wake()
            time.sleep(0.1)
        return False
