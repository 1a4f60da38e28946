"""Greedy and beam-search decoding of the captioner: the one implementation, numpy only, for every backend.

A *step function* ``step(words (N,) int64, dyn, static) -> (log-probs (N, V) float, dyn)`` runs one decoder step
(torch, or ONNX Runtime on the device); ``dyn`` (the LSTM state) is re-ordered when beams are re-ranked and
``static`` (the encoded image, shared by the beams of an image) is not. The decoder never looks inside either: it
asks ``take(state, index)`` for the rows it wants, so torch tensors stay on their device and numpy arrays stay
numpy. All images and all beams advance together: one step call per time step, no Python loop over beams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3  # the vocabulary's special tokens (edgeclip.data.vocab)

State = Any  # a tuple of per-row arrays (torch or numpy)
StepFn = Callable[[np.ndarray, State, State], tuple[np.ndarray, State]]
TakeFn = Callable[[State, np.ndarray], State]


@dataclass(frozen=True)
class Decoding:
    """How captions are decoded: the one set of knobs (and their checks) for the torch and ONNX Runtime captioners,
    the evaluation, the lab and the CLI. ``beam`` 1: greedy; ``length_penalty``: a beam's log-probability is
    divided by ``length ** length_penalty``; ``repetition_penalty`` (>= 1, CTRL's): a word the caption already holds
    costs log(penalty) more; ``no_repeat_ngram`` (0: off, else >= 2): no n-gram twice in one caption;
    ``allow_unk``: let <unk> be chosen."""

    beam: int = 5
    max_len: int = 20
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram: int = 0
    allow_unk: bool = False

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise EdgeClipError(f"beam must be >= 1, got {self.beam}")
        if self.max_len < 1:
            raise EdgeClipError(f"max_len must be >= 1, got {self.max_len}")
        if self.repetition_penalty < 1.0:
            raise EdgeClipError(f"repetition_penalty must be >= 1, got {self.repetition_penalty}")
        if self.no_repeat_ngram < 0 or self.no_repeat_ngram == 1:
            raise EdgeClipError(f"no_repeat_ngram must be 0 (off) or >= 2, got {self.no_repeat_ngram}")

    @classmethod
    def of(cls, given: Decoding | Mapping[str, Any] | None = None, **overrides: Any) -> Decoding:
        """A Decoding from another, a mapping of its fields (a config section) or nothing, with ``overrides``
        (None values ignored); an unknown key is one line with the known ones."""
        base = asdict(given) if isinstance(given, Decoding) else dict(given or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        names = [f.name for f in fields(cls)]
        unknown = [k for k in base if k not in names]
        if unknown:
            from difflib import get_close_matches

            near = get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(names)})"
            raise EdgeClipError(f"unknown decoding option {unknown[0]!r}{hint}")
        types = {"beam": int, "max_len": int, "no_repeat_ngram": int, "allow_unk": bool}
        return cls(**{k: types.get(k, float)(v) for k, v in base.items()})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode(
    step: StepFn, dyn: State, static: State, n: int, d: Decoding, take: TakeFn | None = None
) -> np.ndarray:
    """(n, max_len) token ids of ``n`` images: greedy for ``d.beam`` 1, else beam search."""
    if d.beam <= 1:
        return greedy_decode(step, dyn, static, n, d.max_len, d.allow_unk)
    return beam_decode(step, dyn, static, n, d, take or take_numpy)[0]


def take_numpy(state: State, index: np.ndarray) -> State:
    return tuple(a[index] for a in state)


def _mask_specials(logp: np.ndarray, allow_unk: bool) -> np.ndarray:
    logp = np.array(logp, dtype=np.float32, copy=True)
    logp[..., PAD_ID] = -np.inf
    logp[..., BOS_ID] = -np.inf
    if not allow_unk:
        logp[..., UNK_ID] = -np.inf
    return logp


def greedy_decode(
    step: StepFn, dyn: State, static: State, n: int, max_len: int = 20, allow_unk: bool = False
) -> np.ndarray:
    """(n, max_len) token ids of the ``n`` images (PAD after <eos>)."""
    if max_len < 1:
        raise EdgeClipError(f"max_len must be >= 1, got {max_len}")
    words = np.full((n,), BOS_ID, dtype=np.int64)
    out = np.full((n, max_len), PAD_ID, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for t in range(max_len):
        logp, dyn = step(words, dyn, static)
        nxt = _mask_specials(logp, allow_unk).argmax(-1).astype(np.int64)
        nxt = np.where(done, PAD_ID, nxt)
        out[:, t] = nxt
        done |= nxt == EOS_ID
        words = nxt
        if done.all():
            break
    return out


def beam_decode(
    step: StepFn, dyn: State, static: State, n: int, d: Decoding, take: TakeFn = take_numpy
) -> tuple[np.ndarray, np.ndarray]:
    """Batched beam search over ``n`` images (``d``: the :class:`Decoding`). -> ((n, max_len) ids of the best
    beam, (n,) its length-normalised log-prob). Finished hypotheses stay in the beam (extended with PAD at no
    cost); the final choice divides each hypothesis' log-probability by ``length ** length_penalty`` (length
    counts words and the <eos>)."""
    beam, max_len, allow_unk = d.beam, d.max_len, d.allow_unk
    B, k = n, beam
    rep = np.repeat(np.arange(B), k)
    dyn, static = take(dyn, rep), take(static, rep)
    scores = np.zeros((B, k), dtype=np.float32)
    scores[:, 1:] = -np.inf  # all beams start identical: keep one alive
    words = np.full((B * k,), BOS_ID, dtype=np.int64)
    seqs = np.zeros((B, k, 0), dtype=np.int64)
    finished = np.zeros((B, k), dtype=bool)
    lengths = np.zeros((B, k), dtype=np.float32)
    offsets = (np.arange(B) * k)[:, None]
    rows = np.arange(B)[:, None]
    for _t in range(max_len):
        logp, dyn = step(words, dyn, static)
        V = logp.shape[-1]
        logp = _mask_specials(np.asarray(logp).reshape(B, k, V), allow_unk)
        logp = _penalise(logp, seqs, d.repetition_penalty, d.no_repeat_ngram)
        if finished.any():
            fin_row = np.full((V,), -np.inf, dtype=np.float32)
            fin_row[PAD_ID] = 0.0
            logp = np.where(finished[..., None], fin_row, logp)
        cand = (scores[..., None] + logp).reshape(B, k * V)
        m = min(k, k * V)
        idx = np.argsort(-cand, axis=-1, kind="stable")[:, :m]
        top = np.take_along_axis(cand, idx, -1)
        src, tok = idx // V, idx % V
        scores = top
        seqs = np.concatenate([seqs[rows, src], tok[..., None]], -1)
        prev_fin = np.take_along_axis(finished, src, 1)
        lengths = np.take_along_axis(lengths, src, 1) + (~prev_fin).astype(np.float32)
        finished = prev_fin | (tok == EOS_ID)
        dyn = take(dyn, (src + offsets).reshape(-1))
        words = tok.reshape(-1).astype(np.int64)
        if finished.all():
            break
    with np.errstate(invalid="ignore"):
        norm = scores / np.maximum(lengths, 1.0) ** d.length_penalty
    best = norm.argmax(-1)
    ids = seqs[np.arange(B), best]
    out = np.full((B, max_len), PAD_ID, dtype=np.int64)
    out[:, : ids.shape[1]] = ids
    return out, norm[np.arange(B), best]


def _penalise(logp: np.ndarray, seqs: np.ndarray, penalty: float, ngram: int) -> np.ndarray:
    """The repetition penalty and the n-gram block on (B, k, V) log-probs, given the (B, k, t) words so far."""
    t = seqs.shape[-1]
    if t == 0 or (penalty == 1.0 and not ngram):
        return logp
    logp = logp.copy()
    if penalty != 1.0:
        seen = np.zeros(logp.shape, dtype=bool)
        np.put_along_axis(seen, seqs, True, axis=-1)
        seen[..., [PAD_ID, BOS_ID, EOS_ID]] = False
        logp[seen] -= np.float32(np.log(penalty))
    if ngram and t >= ngram - 1:
        B, k = seqs.shape[:2]
        for b in range(B):
            for j in range(k):
                s = seqs[b, j].tolist()
                prefix = s[t - ngram + 1 :] if ngram > 1 else []
                for i in range(t - ngram + 1):
                    if s[i : i + ngram - 1] == prefix:
                        logp[b, j, s[i + ngram - 1]] = -np.inf
    return logp


def decode_words(itos: list[str], ids) -> str:
    """Token ids -> the caption: up to <eos>, without <pad> / <bos>."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i in (PAD_ID, BOS_ID):
            continue
        out.append(itos[i] if 0 <= i < len(itos) else "<unk>")
    return " ".join(out)
