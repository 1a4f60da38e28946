"""The watcher's event machine: frames scored against the rules' queries, smoothed scores turned into events
(start, kept frames, end) written to ``events.jsonl`` with the frames in ``frames/``, and an exact checkpoint of
all of it after each batch (so a resumed run equals an uninterrupted one)."""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path
from edgeclip.runtime.bundle import LabelSet, prototype
from edgeclip.runtime.sources import Frame, file_frame
from edgeclip.runtime.watch.rules import Rule, Rules, safe_name


@dataclass
class _RuleState:
    rule: Rule
    smoothed: float | None = None
    above_since: float | None = None
    active: bool = False
    event: int = 0
    kept: int = 0
    start: float = 0.0
    peak: float = 0.0
    cool_until: float = -1.0
    frames_above: int = 0
    pending: collections.deque = field(default_factory=collections.deque)  # pre-roll: (frame, score)


class Watcher:
    """Scores frames against the rules' queries and turns smoothed scores into events and kept frames."""

    def __init__(self, labeler, rules: Rules, out: str | os.PathLike, log: Callable[[str], None] = print):
        self.labeler, self.rules, self.out, self.log = labeler, rules, Path(out), log
        self.labels = self._queries()
        self.state = {r.name: _RuleState(r) for r in rules.rules}
        self.frames_dir = self.out / "frames"
        self.kept_total = self.kept_bytes = 0
        self.stats = {"decoded": 0, "sampled": 0, "events": 0, "kept_frames": 0, "dropped_by_caps": 0}
        self.latencies: list[float] = []
        self.batch_ms: list[float] = []

    def _queries(self) -> LabelSet:
        lab, names, embs = self.labeler, [], []
        for r in self.rules.rules:
            if r.query is not None:
                known = r.query in set(lab.known.names)
                e = lab.known.subset([r.query]).embeddings[0] if known else None
                if e is None:
                    if not lab.has_text_tower:
                        raise EdgeClipError(
                            f"rule {r.name!r}: {r.query!r} is not a label of this bundle, and the bundle has no "
                            "text tower (export it with --text-encoder, or use examples)"
                        )
                    e = lab.embed_labels([r.query])[0]
            else:
                missing = [p for p in r.examples if not Path(p).is_file()]
                if missing:
                    raise EdgeClipError(f"rule {r.name!r}: example image not found: {missing[0]}")
                e = prototype(lab.embed(list(r.examples)))  # read as the bundle reads its input
            names.append(f"rule:{r.name}")
            embs.append(e)
        if self.rules.background:
            names += [f"background:{b}" for b in self.rules.background]
            embs += list(
                lab.embed_labels(self.rules.background)
                if lab.has_text_tower
                else lab.known.subset(self.rules.background).embeddings
            )
        return LabelSet(names, np.stack(embs))

    # ---- scoring
    def scores(self, images) -> np.ndarray:
        """(B, R): each rule's score per frame (softmax over queries + background, or cosine)."""
        cos = self.labeler.embed(images) @ self.labels.embeddings.T
        if self.rules.score == "cosine":
            return cos[:, : len(self.rules.rules)]
        z = (self.rules.scale or self.labeler.logit_scale) * cos
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True))[:, : len(self.rules.rules)]

    def process(self, frames: list[Frame], decoded_at: list[float], images: list) -> None:
        t0 = time.perf_counter()
        s = self.scores(images)
        now = time.perf_counter()
        self.batch_ms.append((now - t0) * 1000)
        self.latencies += [(now - d) * 1000 for d in decoded_at]
        for j, fr in enumerate(frames):
            for i, st in enumerate(self.state.values()):
                self._step(st, fr, float(s[j, i]))

    def _step(self, st: _RuleState, fr: Frame, x: float) -> None:
        r, a = st.rule, self.rules.smoothing
        st.smoothed = x if st.smoothed is None else a * x + (1 - a) * st.smoothed
        v = st.smoothed
        if v >= r.threshold:
            st.frames_above += 1
            if st.above_since is None:
                st.above_since = fr.t
            if st.active:
                st.peak = max(st.peak, v)
                self._keep(st, fr, v)
            elif fr.t >= st.cool_until:
                st.pending.append((fr, v))
                while st.pending and st.pending[0][0].t < st.above_since:
                    st.pending.popleft()
                while len(st.pending) > max(1, r.max_frames):  # the ring buffer of the min_duration window
                    st.pending.popleft()
                if fr.t - st.above_since >= r.min_duration:
                    self._start(st, fr, v)
        else:
            st.above_since = None
            st.pending.clear()
            if st.active:
                self._end(st, fr.t)

    def _start(self, st: _RuleState, fr: Frame, v: float) -> None:
        st.active, st.event, st.kept, st.start, st.peak = True, st.event + 1, 0, st.above_since or fr.t, v
        self.stats["events"] += 1
        self._write(
            {
                "type": "start",
                "rule": st.rule.name,
                "event": st.event,
                "t": round(st.start, 3),
                "fired_at": round(fr.t, 3),
                "score": round(v, 4),
            }
        )
        for pf, pv in st.pending:
            self._keep(st, pf, pv)
        st.pending.clear()

    def _end(self, st: _RuleState, t: float) -> None:
        st.active = False
        st.cool_until = t + st.rule.cooldown
        self._write(
            {
                "type": "end",
                "rule": st.rule.name,
                "event": st.event,
                "t": round(t, 3),
                "duration": round(t - st.start, 3),
                "peak": round(st.peak, 4),
                "frames_kept": st.kept,
            }
        )

    def _keep(self, st: _RuleState, fr: Frame, v: float) -> None:
        if st.kept >= st.rule.max_frames:
            return
        if self.kept_total >= self.rules.max_frames or self.kept_bytes >= self.rules.max_bytes:
            self.stats["dropped_by_caps"] += 1
            return
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        path = self.frames_dir / f"{safe_name(st.rule.name)}_{st.event:04d}_{int(round(fr.t * 1000)):09d}.jpg"
        with atomic_path(path) as tmp:
            fr.full().save(tmp, format="JPEG", quality=self.rules.quality)
        st.kept += 1
        self.kept_total += 1
        self.kept_bytes += path.stat().st_size
        self.stats["kept_frames"] += 1
        self._write(
            {
                "type": "frame",
                "rule": st.rule.name,
                "event": st.event,
                "t": round(fr.t, 3),
                "score": round(v, 4),
                "file": f"frames/{path.name}",
            }
        )

    def _write(self, rec: dict) -> None:
        with open(self.out / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

    def close(self, t: float) -> None:
        for st in self.state.values():
            if st.active:
                self._end(st, t)

    # ---- the checkpoint: everything a resumed run needs to go on exactly as an uninterrupted one
    RULE_FIELDS = (
        "smoothed",
        "above_since",
        "active",
        "event",
        "kept",
        "start",
        "peak",
        "cool_until",
        "frames_above",
    )

    def checkpoint(self) -> dict[str, Any]:
        """The watcher's state after the last whole batch: totals, each rule's smoother, event and pre-roll (the
        pending frames, saved losslessly in ``.pending/`` so a resumed run keeps the same pixels), and how long
        events.jsonl was (what a later, unfinished batch wrote past it is rolled back)."""
        pend_dir = self.out / ".pending"
        keep_files: set[str] = set()
        rules = {}
        for name, st in self.state.items():
            pending = []
            for fr, v in st.pending:
                fname = f"{safe_name(name)}_{int(round(fr.t * 1000)):09d}.png"
                if not (pend_dir / fname).is_file():
                    pend_dir.mkdir(parents=True, exist_ok=True)
                    with atomic_path(pend_dir / fname) as tmp:
                        fr.full().save(tmp, format="PNG")
                keep_files.add(fname)
                pending.append({"t": fr.t, "index": fr.index, "score": v, "file": fname})
            rules[name] = {**{k: getattr(st, k) for k in self.RULE_FIELDS}, "pending": pending}
        ev = self.out / "events.jsonl"
        return {
            "rules": rules,
            "kept_total": self.kept_total,
            "kept_bytes": self.kept_bytes,
            "stats": dict(self.stats),
            "events_bytes": ev.stat().st_size if ev.is_file() else 0,
            "_pending_files": sorted(keep_files),
        }

    def restore(self, ck: dict[str, Any]) -> None:
        """Go back to a checkpoint: events.jsonl cut to its length, kept frames it no longer names removed, the
        rules' state and the totals as they were."""
        ev = self.out / "events.jsonl"
        if ev.is_file():
            with open(ev, "r+b") as fh:
                fh.truncate(int(ck.get("events_bytes", 0)))
        named = set()
        if ev.is_file():
            for line in ev.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if rec.get("file"):
                    named.add(Path(rec["file"]).name)
        if self.frames_dir.is_dir():
            for p in self.frames_dir.glob("*.jpg"):
                if p.name not in named:
                    p.unlink()
        self.kept_total, self.kept_bytes = int(ck["kept_total"]), int(ck["kept_bytes"])
        self.stats.update(ck.get("stats") or {})
        for name, saved in (ck.get("rules") or {}).items():
            st = self.state.get(name)
            if st is None:
                raise EdgeClipError(f"--resume: the rules changed (no rule {name!r} now); use another --out")
            for k in self.RULE_FIELDS:
                setattr(st, k, saved[k])
            st.pending = collections.deque(
                (
                    file_frame(self.out / ".pending" / p["file"], int(p["index"]), float(p["t"])),
                    float(p["score"]),
                )
                for p in saved.get("pending", [])
            )
