"""``edgeclip watch SOURCE --bundle DIR --rules rules.yaml``: the loop. Frames are decoded and sampled in a thread
(:class:`Prefetch`), labeled a batch at a time by the :class:`~edgeclip.runtime.watch.events.Watcher`, and after
each batch the state is checkpointed atomically in ``state.json`` (where a file source resumes).

Output folder: ``events.jsonl`` (one line per event start / kept frame / event end, with scores),
``frames/RULE_EVENT_FRAME.jpg``, ``state.json`` and ``summary.json``. Memory is bounded by the pre-roll ring
buffer (the frames of the ``min_duration`` window, kept when the event fires) and disk by ``keep``'s caps. Ctrl-C
ends cleanly: the unfinished batch is rolled back, open events are closed and the summary written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.io import write_json
from edgeclip.runtime.sources import Frame, Source, SourceError, open_frames
from edgeclip.runtime.watch.events import Watcher
from edgeclip.runtime.watch.rules import Rules, load_rules, safe_name

STATE_FORMAT = "edgeclip-watch-state/2"  # /2: with the watcher's checkpoint


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
    src: Source,
    start: float,
    rules: Rules,
    next_t: float,
    n: int,
    pp,
    seen: dict | None = None,
    realtime: bool = False,
) -> Any:
    """The sampled frames of ``src`` with their model inputs made (this runs in the decoding thread). ``seen["n"]``
    counts every decoded frame, the ones the sampler skips after the last sampled frame too. ``realtime``: a file
    is played at its own pace, as a camera would deliver it (each frame no sooner than its time stamp)."""
    seen = {} if seen is None else seen
    t_wall0 = time.monotonic()
    for fr in src.frames(start):
        if realtime:
            ahead = (fr.t - start) - (time.monotonic() - t_wall0)
            if ahead > 0:
                time.sleep(ahead)
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
    link=None,
    drain: float = 10.0,
    realtime: bool = False,
) -> dict[str, Any]:
    """Run the watcher until the source ends (or ``max_frames`` sampled frames, or Ctrl-C); -> the summary.
    ``link``: a :class:`~edgeclip.runtime.watch.uplink.FleetLink` (kept frames go to its outbox and on to the
    collector; its campaigns switch the rules between batches); ``drain``: seconds to wait at the end for the
    outbox to empty (what is left goes at the next start); ``realtime``: play a file at its own pace."""
    rules = rules if isinstance(rules, Rules) else load_rules(rules)
    if link is not None:
        rules = link.saved_rules() or rules  # a rebooted device goes on with the campaign it had
    src = source if isinstance(source, Source) else open_frames(str(source))
    run = _Run(src, labeler, rules, Path(out), resume, log, link)
    run.realtime = realtime and not src.live
    if link is not None:
        link.start()
    try:
        stopped, error = run.loop(max_frames, progress)
    finally:
        if link is not None:
            run.link_summary = link.close(drain)
    return run.finish(stopped, error, progress)


class _Run:
    """One watch, as named steps: ``__init__`` (resume point, restored watcher), ``loop`` (sample, batch, label,
    checkpoint), ``finish`` (close events, summary)."""

    def __init__(self, src: Source, labeler, rules: Rules, out: Path, resume: bool, log, link=None):
        self.src, self.labeler, self.rules, self.out, self.log = src, labeler, rules, out, log
        out.mkdir(parents=True, exist_ok=True)
        self.start, self.next_t, self.n, ck, self.run_id = _resume_point(out, src, resume, log)
        if ck is not None and ck.get("campaign"):  # the checkpoint was made under a campaign: go on under it
            c = ck["campaign"]
            self.rules = rules = load_rules(c["rules"], version=str(c["version"]), campaign=True)
        self.link, self.link_summary, self.realtime = link, None, False
        identity = {"run": self.run_id, "source": src.describe().get("kind")}
        if link is not None:
            teacher = (getattr(labeler, "manifest", {}).get("teacher") or {}).get("id")
            identity.update(device=link.device, teacher=teacher)
        self.w = Watcher(labeler, rules, out, log, sink=link.sink if link else None, identity=identity)
        if (
            ck is not None
        ):  # events.jsonl and frames/ back to the checkpoint, the rules' state and totals as they were
            self.w.restore(ck)
        self.saved = self.w.checkpoint()  # the last whole batch's state: what a signal rolls back to
        self.batch: list[_Sampled] = []
        self.last_t = self.start
        self.t_wall = time.time()
        self.unreadable0 = int(self.w.stats.get("unreadable_frames", 0))
        self.seen = {"n": self.n}

    def flush(self) -> None:
        """Label the batch, then checkpoint atomically: a batch is either whole in the state or not at all."""
        if not self.batch:
            return
        b = self.batch
        self.w.process([x.frame for x in b], [x.decoded_at for x in b], [x.image for x in b])
        self.n, self.next_t, self.last_t = b[-1].n, b[-1].next_t, b[-1].frame.t
        self.w.stats["decoded"] = self.n
        self.w.stats["unreadable_frames"] = self.unreadable0 + self.seen.get("unreadable", 0)
        self.batch = []
        self.saved = _save_state(self.out, self.src, self.last_t, self.next_t, self.n, self.w, self.run_id)
        self._campaign()

    def _campaign(self) -> None:
        """Between batches: switch to a campaign the uplink brought (its queries embedded first; a query this
        bundle cannot read leaves the current rules in place)."""
        new = self.link.take_rules() if self.link is not None else None
        if new is None:
            return
        try:
            self.w.switch(new, self.last_t)
        except EdgeClipError as e:
            self.log(f"campaign {new.version}: not used ({e}); keeping the current rules")
            return
        self.rules = new
        self.saved = _save_state(self.out, self.src, self.last_t, self.next_t, self.n, self.w, self.run_id)
        self.log(f"campaign {new.version}: watching {', '.join(r.name for r in new.rules)}")

    def loop(self, max_frames: int, progress: bool) -> tuple[str, str | None]:
        """-> (why it stopped: "end of source" | "max frames" | "interrupted" | "source error", the error)."""
        stopped, error, t_log = "end of source", None, 0.0
        pp = self.labeler.preprocess
        frames = Prefetch(
            _sample(self.src, self.start, self.rules, self.next_t, self.n, pp, self.seen, self.realtime),
            2 * self.rules.batch,
        )
        try:
            for item in frames:
                self.batch.append(item)
                self.w.stats["sampled"] += 1
                # a full batch, or nothing more waiting (a live camera): label now, so latency stays one frame's
                if len(self.batch) >= self.rules.batch or (self.src.live and not frames.waiting):
                    self.flush()
                if progress and time.time() - t_log > 1.0:
                    t_log = time.time()
                    self.log(_progress(self.w, self.t_wall))
                if max_frames and self.w.stats["sampled"] >= max_frames:
                    stopped = "max frames"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
        except SourceError as e:
            stopped, error = "source error", str(e)
        finally:
            frames.close()
        if stopped == "interrupted":  # abandon the unfinished batch: back to the last checkpoint
            self.batch = []
            self.w.restore(self.saved)
        else:
            self.flush()
        if stopped == "end of source":
            self.w.stats["decoded"] = self.seen["n"]  # every frame the source decoded, sampled or not
        return stopped, error

    def finish(self, stopped: str, error: str | None, progress: bool) -> dict[str, Any]:
        w, seen = self.w, self.seen
        w.stats["unreadable_frames"] = self.unreadable0 + seen.get("unreadable", 0)
        if seen.get("unreadable"):
            self.log(f"skipped {seen['unreadable']} unreadable frames (first: {seen['first_unreadable']})")
        w.close(
            self.last_t
        )  # open events end here; the checkpoint keeps them open, so --resume goes on with them
        wall = time.time() - self.t_wall
        summary = {
            "source": self.src.describe(),
            "rules": [r.name for r in self.rules.rules],
            **w.stats,
            "events_per_rule": {k: s.event for k, s in w.state.items()},
            "kept_per_rule": {k: _kept(self.out, k) for k in w.state},
            "wall_seconds": round(wall, 3),
            "fps_end_to_end": w.stats["sampled"] / wall if wall > 0 else None,
            "decode_fps": w.stats["decoded"] / wall if wall > 0 else None,
            "latency_ms": {"p50": _pct(w.latencies, 50), "p95": _pct(w.latencies, 95)},
            "batch_ms": {"p50": _pct(w.batch_ms, 50), "p95": _pct(w.batch_ms, 95)},
            "resumed_from": self.start,
            "stopped": "end of source" if stopped == "max frames" else stopped,
            "error": error,
            "model": self.labeler.name,
            "rules_version": self.rules.version,
        }
        if self.link_summary is not None:
            summary["upload"] = self.link_summary
        write_json(self.out / "summary.json", summary)
        if progress:
            self.log(_progress(w, self.t_wall))
        self.log(
            f"watched {w.stats['decoded']} frames ({w.stats['sampled']} labeled) in {wall:.1f} s: "
            f"{w.stats['events']} events, {w.stats['kept_frames']} frames kept in {self.out}"
            + (f"; stopped: {error}" if error else "; interrupted" if stopped == "interrupted" else "")
        )
        return summary


def _kept(out: Path, rule: str) -> int:
    d = out / "frames"
    return sum(1 for p in d.glob(f"{safe_name(rule)}_*.jpg")) if d.is_dir() else 0


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


def _save_state(
    out: Path, src: Source, t: float, next_t: float, n: int, w: Watcher, run: str = ""
) -> dict[str, Any]:
    """Where a file source goes on, written atomically after each batch: the last labeled frame's time, the
    sampler's phase, and the watcher's checkpoint (so that a resumed run labels exactly the frames an
    uninterrupted one would have, with the same event ids, caps and open events); -> the checkpoint."""
    ck = w.checkpoint()
    if (
        w.rules.source is not None
    ):  # rules from a campaign: kept with the state, so --resume uses the same ones
        ck["campaign"] = {"version": w.rules.version, "rules": w.rules.source}
    if src.live:
        return ck
    pending = set(ck.pop("_pending_files"))
    write_json(
        out / "state.json",
        {
            "format": STATE_FORMAT,
            "source": _source_key(src),
            "run": run,
            "t": t,
            "next_t": next_t,
            "n": n,
            "watcher": ck,
        },
    )
    pend_dir = out / ".pending"
    if pend_dir.is_dir():  # pre-roll frames no longer pending (kept, or dropped) go once the state says so
        for p in pend_dir.iterdir():
            if p.name not in pending:
                p.unlink()
    ck["_pending_files"] = sorted(pending)
    return ck


def _resume_point(out: Path, src: Source, resume: bool, log) -> tuple[float, float, int, dict | None, str]:
    """-> (start time, the fps sampler's next time, frames decoded before, the watcher's checkpoint or None, the
    run's id: a resumed run keeps it, so the frames it keeps again have the keys they had)."""
    import uuid

    p = out / "state.json"
    if not resume or not p.is_file():
        # a fresh run, or one killed before its first checkpoint: its own event log, kept frames and pre-roll
        for name in ("events.jsonl", "state.json"):
            (out / name).unlink(missing_ok=True)
        for d, pattern in (("frames", "*.jpg"), (".pending", "*.png")):
            for f in (out / d).glob(pattern) if (out / d).is_dir() else ():
                f.unlink()
        return 0.0, 0.0, 0, None, uuid.uuid4().hex
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
    t0, next_t, n = float(st["t"]) + 1e-3, float(st.get("next_t", 0.0)), int(st.get("n", 0))
    return t0, next_t, n, st.get("watcher"), str(st.get("run") or uuid.uuid4().hex)
