"""``edgeclip watch SOURCE --bundle DIR --rules rules.yaml``: label a video, camera or frame folder in real time and
keep the frames that match, on the device (numpy + Pillow + ONNX Runtime + PyAV; no torch).

A rules file::

    sample: {fps: 5}            # or {every: 3}: every 3rd frame; default: every frame
    batch: 8                    # frames per model call
    smoothing: 0.5              # EMA weight of the newest frame's score (1: no smoothing)
    score: softmax              # softmax over every query + background (default) | cosine
    scale: 100                  # the softmax's logit scale (default: the teacher's)
    background: ["an empty road", "a street"]   # what the scene shows when no rule matches
    keep: {max_frames: 500, max_bytes: 200000000, quality: 90}   # over all events
    rules:
      - name: truck
        query: "a truck"                 # any text (a bundle with --text-encoder) or a bundle label
        threshold: 0.6                   # on the smoothed score
        min_duration: 1.0                # seconds above the threshold before the event fires
        cooldown: 5.0                    # seconds after an event before the rule fires again
        max_frames: 20                   # frames kept per event
      - name: my_truck
        examples: [ex1.jpg, ex2.jpg]     # query by example
        threshold: 0.8

Output folder: ``events.jsonl`` (one line per event start / kept frame / event end, with scores),
``frames/RULE_EVENT_FRAME.jpg``, ``state.json`` (where a file source resumes) and ``summary.json``. Memory is
bounded by the pre-roll ring buffer (the frames of the ``min_duration`` window, kept when the event fires) and disk
by ``keep``'s caps. Ctrl-C ends cleanly: open events are closed and the summary written.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.io import atomic_path, write_json
from edgeclip.runtime.bundle import LabelSet, prototype
from edgeclip.runtime.sources import Frame, Source, SourceError, open_source

STATE_FORMAT = "edgeclip-watch-state/2"  # /2: with the watcher's checkpoint
RULE_KEYS = {"name", "query", "examples", "threshold", "min_duration", "cooldown", "max_frames"}
FILE_KEYS = {"sample", "batch", "smoothing", "score", "scale", "background", "keep", "rules"}


# ------------------------------------------------------------------------------------------ the rules file
@dataclass
class Rule:
    name: str
    query: str | None = None
    examples: list[str] = field(default_factory=list)
    threshold: float = 0.5
    min_duration: float = 0.0
    cooldown: float = 0.0
    max_frames: int = 20


@dataclass
class Rules:
    rules: list[Rule]
    every: int = 1
    fps: float | None = None
    batch: int = 8
    smoothing: float = 0.5
    score: str = "softmax"
    scale: float | None = None
    background: list[str] = field(default_factory=list)
    max_frames: int = 500
    max_bytes: int = 200_000_000
    quality: int = 90


# the shape of a rules file, read by the project's strict reader (types checked per key), then ranged below
@dataclass
class _Sample:
    fps: float | None = None
    every: int = 1


@dataclass
class _Keep:
    max_frames: int = 500
    max_bytes: int = 200_000_000
    quality: int = 90


@dataclass
class _RulesFile:
    rules: list[dict]
    sample: dict | None = None
    batch: int = 8
    smoothing: float = 0.5
    score: str = "softmax"
    scale: float | None = None
    background: list[str] = field(default_factory=list)
    keep: dict | None = None


MAX_RULES, MAX_EXAMPLES, MAX_BACKGROUND = 256, 64, 1000
THRESHOLD_RANGE = {"softmax": (0.0, 1.0), "cosine": (-1.0, 1.0)}


def _ranged(where: str, key: str, v: float, lo: float, hi: float) -> None:
    if not lo <= v <= hi:
        raise EdgeClipError(f"{where}: {key} must be in [{lo:g}, {hi:g}], got {v:g}")


def load_rules(path: str | os.PathLike | dict) -> Rules:
    """Read and check a rules file (YAML or JSON, or a dict); every problem is one line naming the key: unknown
    keys, types (the strict reader), ranges (thresholds in [0, 1] for softmax scores, [-1, 1] for cosine), and
    rule names that stay unique once made file names."""
    import yaml

    from edgeclip.core.config import build_dataclass

    if isinstance(path, dict):
        d, where = path, "rules"
    else:
        where = str(path)
        try:
            d = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EdgeClipError(f"rules file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise EdgeClipError(f"cannot read rules file {path}: {e}") from None
        except yaml.YAMLError as e:
            raise EdgeClipError(f"{path} is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(d, dict) or not isinstance(d.get("rules"), list) or not d["rules"]:
        raise EdgeClipError(f"{where}: needs `rules:`, a list of {{name, query or examples, threshold, ...}}")
    bad = set(d) - FILE_KEYS
    if bad:
        raise EdgeClipError(f"{where}: unknown keys {sorted(bad)} (known: {sorted(FILE_KEYS)})")
    f = build_dataclass(_RulesFile, d, where, typed=True)
    sample = build_dataclass(_Sample, f.sample or {}, f"{where}: sample", typed=True)
    keep = build_dataclass(_Keep, f.keep or {}, f"{where}: keep", typed=True)
    if f.score not in THRESHOLD_RANGE:
        raise EdgeClipError(f"{where}: score must be softmax or cosine, got {f.score!r}")
    if len(f.rules) > MAX_RULES or len(f.background) > MAX_BACKGROUND:
        raise EdgeClipError(f"{where}: at most {MAX_RULES} rules and {MAX_BACKGROUND} background texts")
    base = Path(where).parent if not isinstance(path, dict) else Path(".")
    rules, files = [], {}
    for i, r in enumerate(f.rules):
        if not r.get("name") or not isinstance(r["name"], str):
            raise EdgeClipError(f"{where}: rule {i + 1} needs a name (text)")
        if set(r) - RULE_KEYS:
            raise EdgeClipError(f"{where}: rule {r['name']!r}: unknown keys {sorted(set(r) - RULE_KEYS)}")
        rule = build_dataclass(
            Rule, {k: v for k, v in r.items() if v is not None}, f"{where}: rule {r['name']!r}", typed=True
        )
        if bool(rule.query) == bool(rule.examples):
            raise EdgeClipError(
                f"{where}: rule {rule.name!r} needs exactly one of `query` (text) and `examples`"
            )
        if len(rule.examples) > MAX_EXAMPLES:
            raise EdgeClipError(f"{where}: rule {rule.name!r}: at most {MAX_EXAMPLES} examples")
        safe = _safe(rule.name)
        if safe in files:
            same = "are both called" if files[safe] == rule.name else "make the same file name"
            raise EdgeClipError(f"{where}: rules {files[safe]!r} and {rule.name!r} {same} ({safe!r})")
        files[safe] = rule.name
        rule.examples = [str(p if Path(p).is_absolute() else base / p) for p in rule.examples]
        rw = f"{where}: rule {rule.name!r}"
        _ranged(rw, "threshold", rule.threshold, *THRESHOLD_RANGE[f.score])
        for key in ("min_duration", "cooldown"):
            _ranged(rw, key, getattr(rule, key), 0.0, 86400.0)
        _ranged(rw, "max_frames", rule.max_frames, 0, 1_000_000)
        rules.append(rule)
    if (
        sample.every < 1
        or f.batch < 1
        or not 0 < f.smoothing <= 1
        or (sample.fps is not None and sample.fps <= 0)
    ):
        raise EdgeClipError(
            f"{where}: sample.every and batch must be >= 1, sample.fps > 0, 0 < smoothing <= 1"
        )
    _ranged(where, "batch", f.batch, 1, 256)
    _ranged(where, "sample.every", sample.every, 1, 100_000)
    if sample.fps is not None:
        _ranged(where, "sample.fps", sample.fps, 1e-3, 1000)
    _ranged(where, "keep.max_frames", keep.max_frames, 0, 1_000_000)
    _ranged(where, "keep.max_bytes", keep.max_bytes, 0, 1e12)
    _ranged(where, "keep.quality", keep.quality, 1, 100)
    if f.scale is not None and not 0 < f.scale <= 1000:
        raise EdgeClipError(f"{where}: scale must be in (0, 1000], got {f.scale}")
    if f.score == "softmax" and len(rules) + len(f.background) < 2:
        raise EdgeClipError(
            f"{where}: a softmax over one query is always 1: add `background:` texts or use `score: cosine`"
        )
    return Rules(
        rules,
        every=sample.every,
        fps=sample.fps,
        batch=f.batch,
        smoothing=float(f.smoothing),
        score=f.score,
        scale=f.scale,
        background=list(f.background),
        max_frames=keep.max_frames,
        max_bytes=keep.max_bytes,
        quality=keep.quality,
    )


# ---------------------------------------------------------------------------------------- rule state
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
                from edgeclip.runtime.labeler import to_image

                missing = [p for p in r.examples if not Path(p).is_file()]
                if missing:
                    raise EdgeClipError(f"rule {r.name!r}: example image not found: {missing[0]}")
                e = prototype(lab.embed([to_image(p) for p in r.examples]))
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
        path = self.frames_dir / f"{_safe(st.rule.name)}_{st.event:04d}_{int(round(fr.t * 1000)):09d}.jpg"
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
                fname = f"{_safe(name)}_{int(round(fr.t * 1000)):09d}.png"
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
        from edgeclip.runtime.sources import _file_frame

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
                    _file_frame(self.out / ".pending" / p["file"], int(p["index"]), float(p["t"])),
                    float(p["score"]),
                )
                for p in saved.get("pending", [])
            )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "rule"


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class _Sampled:
    frame: Frame
    image: Any  # the model's input (scaled by FFmpeg for video)
    decoded_at: float  # perf_counter when it came out of the decoder
    n: int  # frames decoded so far (the sampler's state after this frame, for the resume point)
    next_t: float


def _sample(
    src: Source, start: float, rules: Rules, next_t: float, n: int, pp, seen: dict | None = None
) -> Any:
    """The sampled frames of ``src`` with their model inputs made (this runs in the decoding thread). ``seen["n"]``
    counts every decoded frame, the ones the sampler skips after the last sampled frame too."""
    seen = {} if seen is None else seen
    for fr in src.frames(start):
        n += 1
        seen["n"] = n
        if (n - 1) % rules.every:
            continue
        if rules.fps:
            if fr.t + 1e-9 < next_t:
                continue
            next_t = max(next_t + 1.0 / rules.fps, fr.t)
        try:
            img = fr.model_input(*pp.output_size(*fr.size)) if fr.size[0] else fr.full()
        except ImageLoadError as e:  # one unreadable frame file: skipped and counted, the watch goes on
            seen["unreadable"] = seen.get("unreadable", 0) + 1
            seen.setdefault("first_unreadable", str(e))
            continue
        yield _Sampled(fr, img, time.perf_counter(), n, next_t)


_END = object()


class Prefetch:
    """Run the generator ``items`` in a thread, ``size`` items ahead (decoding overlaps the model on another core;
    memory stays bounded by ``size``). Its exceptions come out of the iteration; ``waiting`` is how many items are
    ready; ``close()`` stops the thread."""

    def __init__(self, items, size: int):
        import queue
        import threading

        self.q: queue.Queue = queue.Queue(maxsize=max(1, size))
        self.stop = threading.Event()
        self.items = items
        threading.Thread(target=self._run, name="edgeclip-decode", daemon=True).start()

    def _run(self) -> None:
        import queue

        try:
            for item in self.items:
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    break
            else:
                self.q.put(_END)
        except BaseException as e:  # the consumer re-raises it
            self.q.put(e)
        finally:
            self.items.close()

    @property
    def waiting(self) -> int:
        return self.q.qsize()

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()


def watch(
    source: str | Source,
    labeler,
    rules: Rules | str | os.PathLike,
    out: str | os.PathLike,
    resume: bool = False,
    max_frames: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """Run the watcher until the source ends (or ``max_frames`` sampled frames, or Ctrl-C); -> the summary."""
    rules = rules if isinstance(rules, Rules) else load_rules(rules)
    src = source if isinstance(source, Source) else open_source(str(source))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, next_t, n, ck = _resume_point(out, src, resume, log)
    w = Watcher(labeler, rules, out, log)
    if ck is not None:
        w.restore(
            ck
        )  # events.jsonl and frames/ back to the checkpoint, the rules' state and totals as they were
    saved = w.checkpoint()  # the last whole batch's state: what a signal rolls back to
    batch: list[_Sampled] = []
    last_t = start
    t_wall = time.time()
    t_log = 0.0
    interrupted, error = False, None
    unreadable0 = int(w.stats.get("unreadable_frames", 0))

    def flush() -> None:
        """Label the batch, then checkpoint atomically: a batch is either whole in the state or not at all."""
        nonlocal batch, n, next_t, last_t, saved
        if not batch:
            return
        w.process([b.frame for b in batch], [b.decoded_at for b in batch], [b.image for b in batch])
        n, next_t, last_t = batch[-1].n, batch[-1].next_t, batch[-1].frame.t
        w.stats["decoded"] = n
        w.stats["unreadable_frames"] = unreadable0 + seen.get("unreadable", 0)
        batch = []
        saved = _save_state(out, src, last_t, next_t, n, w)

    seen = {"n": n}
    frames = Prefetch(_sample(src, start, rules, next_t, n, labeler.preprocess, seen), 2 * rules.batch)
    try:
        for item in frames:
            batch.append(item)
            w.stats["sampled"] += 1
            # a full batch, or nothing more waiting (a live camera): label now, so latency stays one frame's
            if len(batch) >= rules.batch or (src.live and not frames.waiting):
                flush()
            if progress and time.time() - t_log > 1.0:
                t_log = time.time()
                log(_progress(w, t_wall))
            if max_frames and w.stats["sampled"] >= max_frames:
                break
    except KeyboardInterrupt:
        interrupted = True
    except SourceError as e:
        error = str(e)
    finally:
        frames.close()
    if interrupted:  # abandon the unfinished batch: back to the last checkpoint (a resume labels it again)
        batch = []
        w.restore(saved)
    else:
        flush()
    if not interrupted and not error and not (max_frames and w.stats["sampled"] >= max_frames):
        w.stats["decoded"] = seen["n"]  # the source ended: every frame it decoded, sampled or not
    w.stats["unreadable_frames"] = unreadable0 + seen.get("unreadable", 0)
    if seen.get("unreadable"):
        log(f"skipped {seen['unreadable']} unreadable frames (first: {seen['first_unreadable']})")
    w.close(last_t)  # open events end here; the checkpoint keeps them open, so --resume goes on with them
    wall = time.time() - t_wall
    summary = {
        "source": src.describe(),
        "rules": [r.name for r in rules.rules],
        **w.stats,
        "events_per_rule": {k: s.event for k, s in w.state.items()},
        "kept_per_rule": {k: _kept(out, k) for k in w.state},
        "wall_seconds": round(wall, 3),
        "fps_end_to_end": w.stats["sampled"] / wall if wall > 0 else None,
        "decode_fps": w.stats["decoded"] / wall if wall > 0 else None,
        "latency_ms": {"p50": _pct(w.latencies, 50), "p95": _pct(w.latencies, 95)},
        "batch_ms": {"p50": _pct(w.batch_ms, 50), "p95": _pct(w.batch_ms, 95)},
        "resumed_from": start,
        "stopped": "interrupted" if interrupted else ("source error" if error else "end of source"),
        "error": error,
        "model": labeler.name,
    }
    write_json(out / "summary.json", summary)
    if progress:
        log(_progress(w, t_wall))
    log(
        f"watched {w.stats['decoded']} frames ({w.stats['sampled']} labeled) in {wall:.1f} s: "
        f"{w.stats['events']} events, {w.stats['kept_frames']} frames kept in {out}"
        + (f"; stopped: {error}" if error else "; interrupted" if interrupted else "")
    )
    return summary


def _kept(out: Path, rule: str) -> int:
    d = out / "frames"
    return sum(1 for p in d.glob(f"{_safe(rule)}_*.jpg")) if d.is_dir() else 0


def _progress(w: Watcher, t0: float) -> str:
    dt = max(1e-9, time.time() - t0)
    p50 = _pct(w.latencies[-200:], 50)
    return (
        f"frames {w.stats['decoded']} · labeled {w.stats['sampled']} · {w.stats['sampled'] / dt:.1f} fps · "
        f"latency p50 {p50:.0f} ms · events {w.stats['events']} · kept {w.stats['kept_frames']}"
        if p50 is not None
        else f"frames {w.stats['decoded']} · starting"
    )


def _source_key(src: Source) -> dict:
    d = src.describe()
    spec = d.get("spec") or d.get("folder")
    key = {"kind": d.get("kind"), "spec": str(spec)}
    if d.get("kind") == "video" and spec and Path(spec).is_file():
        st = Path(spec).stat()
        key.update(bytes=st.st_size, mtime=int(st.st_mtime))
    return key


def _save_state(out: Path, src: Source, t: float, next_t: float, n: int, w: Watcher) -> dict[str, Any]:
    """Where a file source goes on, written atomically after each batch: the last labeled frame's time, the
    sampler's phase, and the watcher's checkpoint (so that a resumed run labels exactly the frames an
    uninterrupted one would have, with the same event ids, caps and open events); -> the checkpoint."""
    ck = w.checkpoint()
    if src.live:
        return ck
    pending = set(ck.pop("_pending_files"))
    write_json(
        out / "state.json",
        {"format": STATE_FORMAT, "source": _source_key(src), "t": t, "next_t": next_t, "n": n, "watcher": ck},
    )
    pend_dir = out / ".pending"
    if pend_dir.is_dir():  # pre-roll frames no longer pending (kept, or dropped) go once the state says so
        for p in pend_dir.iterdir():
            if p.name not in pending:
                p.unlink()
    ck["_pending_files"] = sorted(pending)
    return ck


def _resume_point(out: Path, src: Source, resume: bool, log) -> tuple[float, float, int, dict | None]:
    """-> (start time, the fps sampler's next time, frames decoded before, the watcher's checkpoint or None)."""
    p = out / "state.json"
    if not resume or not p.is_file():
        # a fresh run, or one killed before its first checkpoint: its own event log, kept frames and pre-roll
        for name in ("events.jsonl", "state.json"):
            (out / name).unlink(missing_ok=True)
        for d, pattern in (("frames", "*.jpg"), (".pending", "*.png")):
            for f in (out / d).glob(pattern) if (out / d).is_dir() else ():
                f.unlink()
        return 0.0, 0.0, 0, None
    if src.live:
        raise EdgeClipError(
            "--resume needs a file source (a live camera or stream has no offset to go back to)"
        )
    try:
        st = json.loads(p.read_text())
    except (OSError, ValueError):
        raise EdgeClipError(f"{p} is not a readable watch state; delete it to start over") from None
    if st.get("format") != STATE_FORMAT or st.get("source") != _source_key(src):
        raise EdgeClipError(f"--resume: {out} watched another source ({st.get('source')}); use another --out")
    log(f"resuming after {st['t']:.2f} s")
    # the frame at t is done
    return float(st["t"]) + 1e-3, float(st.get("next_t", 0.0)), int(st.get("n", 0)), st.get("watcher")
