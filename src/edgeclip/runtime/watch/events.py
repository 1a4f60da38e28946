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
    pending: collections.deque = field(
        default_factory=collections.deque
    )  # pre-roll: (frame, score, embedding)
    memory: collections.deque = field(default_factory=collections.deque)  # embeddings of recent kept frames
    kept_times: collections.deque = field(default_factory=collections.deque)  # stream times kept, last hour


def event_key(run: str, rule: str, event: int, t: float) -> str:
    """The idempotency key of a kept frame: the same run, rule, event and frame time give the same key, so a
    frame kept again after a resume is one event to the collector."""
    import hashlib

    return hashlib.sha1(f"{run}|{rule}|{event}|{int(round(t * 1000))}".encode()).hexdigest()[:32]


class Watcher:
    """Scores frames against the rules' queries and turns smoothed scores into events and kept frames."""

    def __init__(
        self,
        labeler,
        rules: Rules,
        out: str | os.PathLike,
        log: Callable[[str], None] = print,
        sink: Callable[[dict, bytes], Any] | None = None,
        identity: dict[str, Any] | None = None,
    ):
        self.labeler, self.rules, self.out, self.log = labeler, rules, Path(out), log
        self.sink, self.identity = sink, dict(identity or {})  # the outbox, and who keeps (device, run)
        self.labels = self._queries()
        self.state = {r.name: _RuleState(r) for r in rules.rules}
        self.frames_dir = self.out / "frames"
        self.kept_total = self.kept_bytes = 0
        self.stats = {
            "decoded": 0,
            "sampled": 0,
            "events": 0,
            "kept_frames": 0,
            "dropped_by_caps": 0,
            "dropped_as_near_duplicates": 0,
            "dropped_by_rate": 0,
            "rule_switches": 0,
        }
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

    def switch(self, rules: Rules, t: float) -> None:
        """New rules without a restart (a campaign): rules that stay the same keep their state; events of rules
        that changed or went are closed at ``t``; the new queries are embedded first, so a rule the bundle cannot
        read raises here and the old rules stay."""
        old_rules, old_labels = self.rules, self.labels
        self.rules = rules
        try:
            self.labels = self._queries()
        except EdgeClipError:
            self.rules, self.labels = old_rules, old_labels
            raise
        if (rules.score, rules.scale, rules.background, rules.smoothing) != (
            old_rules.score,
            old_rules.scale,
            old_rules.background,
            old_rules.smoothing,
        ):
            keep: set[str] = set()  # the scores of every rule change with the softmax's other terms
        else:
            keep = {r.name for r in rules.rules if r in old_rules.rules}
        state = {}
        for r in rules.rules:
            st = self.state.get(r.name)
            if st is not None and r.name in keep:
                st.rule = r
                state[r.name] = st
            else:
                state[r.name] = _RuleState(r, event=st.event if st else 0)
        for name, st in self.state.items():
            if st.active and state.get(name) is not st:
                self._end(st, t)
        self.state = state
        self.stats["rule_switches"] += 1

    # ---- scoring
    def scores(self, images) -> tuple[np.ndarray, np.ndarray]:
        """-> ((B, R) each rule's score per frame (softmax over queries + background, or cosine), (B, D) the
        frames' embeddings)."""
        emb = self.labeler.embed(images)
        cos = emb @ self.labels.embeddings.T
        if self.rules.score == "cosine":
            return cos[:, : len(self.rules.rules)], emb
        z = (self.rules.scale or self.labeler.logit_scale) * cos
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True))[:, : len(self.rules.rules)], emb

    def process(self, frames: list[Frame], decoded_at: list[float], images: list) -> None:
        t0 = time.perf_counter()
        s, emb = self.scores(images)
        now = time.perf_counter()
        self.batch_ms.append((now - t0) * 1000)
        self.latencies += [(now - d) * 1000 for d in decoded_at]
        for j, fr in enumerate(frames):
            for i, st in enumerate(self.state.values()):
                self._step(st, fr, float(s[j, i]), emb[j])

    def _step(self, st: _RuleState, fr: Frame, x: float, emb: np.ndarray) -> None:
        r, a = st.rule, self.rules.smoothing
        st.smoothed = x if st.smoothed is None else a * x + (1 - a) * st.smoothed
        v = st.smoothed
        if v >= r.threshold:
            st.frames_above += 1
            if st.above_since is None:
                st.above_since = fr.t
            if st.active:
                st.peak = max(st.peak, v)
                self._keep(st, fr, v, emb)
            elif fr.t >= st.cool_until:
                st.pending.append((fr, v, emb))
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
        for pf, pv, pe in st.pending:
            self._keep(st, pf, pv, pe)
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

    def _novel(self, st: _RuleState, fr: Frame, emb: np.ndarray) -> bool:
        """The rule's novelty and rate limits (LightlyEdge's selection): far enough, in embedding distance, from
        every frame the rule kept recently, and under its keep rate for the last hour of stream time."""
        r = st.rule
        if r.novelty > 0 and st.memory:
            if 1.0 - float(np.max(np.stack(st.memory) @ emb)) < r.novelty:
                self.stats["dropped_as_near_duplicates"] += 1
                return False
        if r.max_per_hour > 0:
            while st.kept_times and st.kept_times[0] <= fr.t - 3600.0:
                st.kept_times.popleft()
            if len(st.kept_times) >= r.max_per_hour:
                self.stats["dropped_by_rate"] += 1
                return False
        return True

    def _keep(self, st: _RuleState, fr: Frame, v: float, emb: np.ndarray) -> None:
        if st.kept >= st.rule.max_frames:
            return
        if self.kept_total >= self.rules.max_frames or self.kept_bytes >= self.rules.max_bytes:
            self.stats["dropped_by_caps"] += 1
            return
        if not self._novel(st, fr, emb):
            return
        if st.rule.novelty > 0:
            st.memory.append(np.asarray(emb, np.float32))
            while len(st.memory) > st.rule.novelty_memory:
                st.memory.popleft()
        if st.rule.max_per_hour > 0:
            st.kept_times.append(fr.t)
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        path = self.frames_dir / f"{safe_name(st.rule.name)}_{st.event:04d}_{int(round(fr.t * 1000)):09d}.jpg"
        with atomic_path(path) as tmp:
            fr.full().save(tmp, format="JPEG", quality=self.rules.quality)
        st.kept += 1
        self.kept_total += 1
        self.kept_bytes += path.stat().st_size
        self.stats["kept_frames"] += 1
        rec = {
            "type": "frame",
            "rule": st.rule.name,
            "event": st.event,
            "t": round(fr.t, 3),
            "score": round(v, 4),
            "file": f"frames/{path.name}",
        }
        if self.rules.version is not None:
            rec["rule_version"] = self.rules.version
        self._write(rec)
        if self.sink is not None:
            self.sink(self._upload_record(st, fr, v, emb, rec), path.read_bytes())

    def _upload_record(self, st: _RuleState, fr: Frame, v: float, emb: np.ndarray, rec: dict) -> dict:
        """What the collector gets with the JPEG: who kept it, under which rule and version, when, the student's
        score and embedding, and the rule's query and background (for the teacher's second opinion)."""
        ident = self.identity
        return {
            "key": event_key(str(ident.get("run", "")), st.rule.name, st.event, fr.t),
            "device": ident.get("device"),
            "run": ident.get("run"),
            "source": ident.get("source"),
            "model": self.labeler.name,
            "teacher": ident.get("teacher"),
            "rule": st.rule.name,
            "rule_version": self.rules.version,
            "query": st.rule.query,
            "background": list(self.rules.background),
            "threshold": st.rule.threshold,
            "score_kind": self.rules.score,
            "event": st.event,
            "t": rec["t"],
            "kept_at": time.time(),
            "score": rec["score"],
            "embedding": [round(float(x), 6) for x in emb],
        }

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
            for fr, v, e in st.pending:
                fname = f"{safe_name(name)}_{int(round(fr.t * 1000)):09d}.png"
                if not (pend_dir / fname).is_file():
                    pend_dir.mkdir(parents=True, exist_ok=True)
                    with atomic_path(pend_dir / fname) as tmp:
                        fr.full().save(tmp, format="PNG")
                keep_files.add(fname)
                pending.append(
                    {"t": fr.t, "index": fr.index, "score": v, "file": fname, "embedding": _floats(e)}
                )
            rules[name] = {
                **{k: getattr(st, k) for k in self.RULE_FIELDS},
                "pending": pending,
                "memory": [_floats(e) for e in st.memory],
                "kept_times": list(st.kept_times),
            }
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
                    np.asarray(p.get("embedding") or [], np.float32),
                )
                for p in saved.get("pending", [])
            )
            st.memory = collections.deque(np.asarray(e, np.float32) for e in saved.get("memory", []))
            st.kept_times = collections.deque(float(t) for t in saved.get("kept_times", []))


def _floats(e) -> list[float]:
    return [float(x) for x in np.asarray(e, np.float32)]
