"""The rules file of ``edgeclip watch``: what to look for, how to score it and what to keep.

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
        novelty: 0.15                    # keep a frame only if its cosine distance to every frame this rule
        novelty_memory: 256              #   kept among the last 256 is at least 0.15 (no hundredth same truck)
        max_per_hour: 120                # at most 120 kept frames in any hour of stream time
      - name: my_truck
        examples: [ex1.jpg, ex2.jpg]     # query by example
        threshold: 0.8

Read by the project's one strict reader (:func:`edgeclip.core.config.build_dataclass`: unknown keys and wrong
types refused in one line), then ranged here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeclip.core.config import build_dataclass, read_yaml
from edgeclip.core.errors import EdgeClipError


@dataclass
class Rule:
    name: str
    query: str | None = None
    examples: list[str] = field(default_factory=list)
    threshold: float = 0.5
    min_duration: float = 0.0
    cooldown: float = 0.0
    max_frames: int = 20
    novelty: float = 0.0
    novelty_memory: int = 256
    max_per_hour: float = 0.0


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
    version: str | None = None  # a campaign's version (events record it); None for a local rules file
    source: dict | None = None  # a campaign's rules as sent (the watch checkpoint keeps them, for --resume)


# the shape of a rules file, as the strict reader checks it (types per key); ranged below
@dataclass
class Sample:
    fps: float | None = None
    every: int = 1


@dataclass
class Keep:
    max_frames: int = 500
    max_bytes: int = 200_000_000
    quality: int = 90


@dataclass
class RulesFile:
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


def safe_name(name: str) -> str:
    """A rule's name as it appears in file names (frames/RULE_EVENT_TIME.jpg)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "rule"


def _ranged(where: str, key: str, v: float, lo: float, hi: float) -> None:
    if not lo <= v <= hi:
        raise EdgeClipError(f"{where}: {key} must be in [{lo:g}, {hi:g}], got {v:g}")


def _rule(r: dict, i: int, where: str, score: str, base: Path) -> Rule:
    """One entry of ``rules:``, typed and ranged; example paths made relative to the rules file."""
    if not isinstance(r, dict) or not r.get("name") or not isinstance(r["name"], str):
        raise EdgeClipError(f"{where}: rule {i + 1} needs a name (text)")
    rw = f"{where}: rule {r['name']!r}"
    rule = build_dataclass(Rule, {k: v for k, v in r.items() if v is not None}, rw, typed=True, what="rule")
    if bool(rule.query) == bool(rule.examples):
        raise EdgeClipError(f"{rw} needs exactly one of `query` (text) and `examples`")
    if len(rule.examples) > MAX_EXAMPLES:
        raise EdgeClipError(f"{rw}: at most {MAX_EXAMPLES} examples")
    rule.examples = [str(p if Path(p).is_absolute() else base / p) for p in rule.examples]
    _ranged(rw, "threshold", rule.threshold, *THRESHOLD_RANGE[score])
    for key in ("min_duration", "cooldown"):
        _ranged(rw, key, getattr(rule, key), 0.0, 86400.0)
    _ranged(rw, "max_frames", rule.max_frames, 0, 1_000_000)
    _ranged(rw, "novelty", rule.novelty, 0.0, 2.0)
    _ranged(rw, "novelty_memory", rule.novelty_memory, 1, 100_000)
    _ranged(rw, "max_per_hour", rule.max_per_hour, 0.0, 1e7)
    return rule


def _check_file(f: RulesFile, sample: Sample, keep: Keep, where: str, n_rules: int) -> None:
    if f.score not in THRESHOLD_RANGE:
        raise EdgeClipError(f"{where}: score must be softmax or cosine, got {f.score!r}")
    if n_rules > MAX_RULES or len(f.background) > MAX_BACKGROUND:
        raise EdgeClipError(f"{where}: at most {MAX_RULES} rules and {MAX_BACKGROUND} background texts")
    if not 0 < f.smoothing <= 1:
        raise EdgeClipError(f"{where}: smoothing must be in (0, 1], got {f.smoothing:g}")
    _ranged(where, "batch", f.batch, 1, 256)
    _ranged(where, "sample.every", sample.every, 1, 100_000)
    if sample.fps is not None:
        _ranged(where, "sample.fps", sample.fps, 1e-3, 1000)
    _ranged(where, "keep.max_frames", keep.max_frames, 0, 1_000_000)
    _ranged(where, "keep.max_bytes", keep.max_bytes, 0, 1e12)
    _ranged(where, "keep.quality", keep.quality, 1, 100)
    if f.scale is not None and not 0 < f.scale <= 1000:
        raise EdgeClipError(f"{where}: scale must be in (0, 1000], got {f.scale}")


def load_rules(path: str | os.PathLike | dict, version: str | None = None, campaign: bool = False) -> Rules:
    """Read and check a rules file (YAML or JSON, or a dict); every problem is one line naming the key: unknown
    keys, types (the strict reader), ranges (thresholds in [0, 1] for softmax scores, [-1, 1] for cosine), and
    rule names that stay unique once made file names. ``campaign``: rules sent to a fleet, which carry text
    queries only (example images are files on one machine)."""
    if isinstance(path, dict):
        d, where, base = path, "campaign" if campaign else "rules", Path(".")
    else:
        d, where, base = read_yaml(path, "rules file"), str(path), Path(path).parent
    if not isinstance(d, dict) or not isinstance(d.get("rules"), list) or not d["rules"]:
        raise EdgeClipError(f"{where}: needs `rules:`, a list of {{name, query or examples, threshold, ...}}")
    f = build_dataclass(RulesFile, d, where, typed=True, what="rules-file")
    sample = build_dataclass(Sample, f.sample or {}, f"{where}: sample", typed=True)
    keep = build_dataclass(Keep, f.keep or {}, f"{where}: keep", typed=True)
    _check_file(f, sample, keep, where, len(f.rules))
    rules, files = [], {}
    for i, r in enumerate(f.rules):
        rule = _rule(r, i, where, f.score, base)
        if campaign and rule.examples:
            raise EdgeClipError(
                f"{where}: rule {rule.name!r} uses `examples`: a campaign sends text queries (example images "
                "are files on one machine)"
            )
        safe = safe_name(rule.name)
        if safe in files:
            same = "are both called" if files[safe] == rule.name else "make the same file name"
            raise EdgeClipError(f"{where}: rules {files[safe]!r} and {rule.name!r} {same} ({safe!r})")
        files[safe] = rule.name
        rules.append(rule)
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
        version=version,
        source=d if campaign else None,
    )
