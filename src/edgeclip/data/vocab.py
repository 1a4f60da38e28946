"""Unicode-safe tokenisation and the caption vocabulary (saved inside every captioner checkpoint).

Tokens are runs of letters, digits and combining marks after NFC normalisation and case folding,
so Vietnamese (``đỉnh núi``), accented Latin and decomposed input (``e`` + U+0301) all tokenise the
same way; punctuation and symbols separate tokens and are dropped.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.runtime.decode import BOS_ID, EOS_ID, PAD_ID, UNK_ID, decode_words  # noqa: F401  (the ids live there)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (letters, digits and combining marks; everything else splits)."""
    if not isinstance(text, str):
        raise EdgeClipError(f"caption must be text, got {type(text).__name__}")
    s = unicodedata.normalize("NFC", text).casefold()
    s = unicodedata.normalize("NFC", s)  # casefold can decompose (e.g. U+0130)
    out: list[str] = []
    cur: list[str] = []
    for ch in s:
        cat = unicodedata.category(ch)
        if cat[0] in "LN" or (cat[0] == "M" and cur):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


@dataclass
class Vocab:
    """Word <-> id map with ``<pad> <bos> <eos> <unk>`` at ids 0..3."""

    words: list[str]
    min_count: int = 1
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if tuple(self.words[:4]) != SPECIALS:
            raise CheckpointError(f"vocabulary must start with {SPECIALS}, got {self.words[:4]}")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise CheckpointError("vocabulary has duplicate words")

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5, max_size: int = 0) -> Vocab:
        if min_count < 1:
            raise EdgeClipError(f"min_count must be >= 1, got {min_count}")
        c: Counter = Counter()
        for cap in captions:
            c.update(tokenize(cap))
        if not c:
            raise EdgeClipError("cannot build a vocabulary: no caption has any word")
        kept = sorted((w for w, n in c.items() if n >= min_count), key=lambda w: (-c[w], w))
        if max_size:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        if not kept:
            raise EdgeClipError(f"no word occurs at least {min_count} times; lower vocab.min_count")
        return cls(list(SPECIALS) + kept, min_count, {w: c[w] for w in kept})

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """``<bos> w1 .. wn <eos>`` ids, with at most ``max_len`` words (longer captions are cut)."""
        ids = [self.index.get(w, UNK_ID) for w in tokenize(text)[:max_len]]
        return [BOS_ID] + ids + [EOS_ID]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``; ``<bos>``/``<pad>`` are skipped."""
        return decode_words(self.words, ids)

    def oov_rate(self, captions: Iterable[str]) -> float:
        n = unk = 0
        for cap in captions:
            for w in tokenize(cap):
                n += 1
                unk += w not in self.index
        return unk / n if n else 0.0

    def to_dict(self) -> dict:
        return {"words": list(self.words), "min_count": self.min_count, "sha256": self.fingerprint()}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        try:
            v = cls(list(d["words"]), int(d.get("min_count", 1)))
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"not a caption vocabulary: {e}") from None
        if d.get("sha256") and d["sha256"] != v.fingerprint():
            raise CheckpointError("caption vocabulary is corrupt (fingerprint differs)")
        return v

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.words, ensure_ascii=False).encode("utf-8")).hexdigest()
