"""Greedy and beam-search decoding, batched in tensors.

Both work on any *step function* ``step(words (N,), dyn, static) -> (log-probs (N,V), dyn)`` where ``dyn``
(the LSTM state) is re-ordered when beams are re-ranked and ``static`` (the encoded image, shared by
all beams of an image) is not; the torch decoder and the ONNX Runtime decoder step both provide one.
All images and all beams advance together: one step call per time step, no Python loop over beams.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

State = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, State, State], tuple[torch.Tensor, State]]


def _mask_specials(logp: torch.Tensor, allow_unk: bool) -> torch.Tensor:
    logp = logp.clone()
    logp[..., PAD_ID] = float("-inf")
    logp[..., BOS_ID] = float("-inf")
    if not allow_unk:
        logp[..., UNK_ID] = float("-inf")
    return logp


@torch.no_grad()
def greedy_decode(
    step: StepFn, dyn: State, static: State, max_len: int = 20, allow_unk: bool = False
) -> torch.Tensor:
    """(N, max_len) token ids (PAD after <eos>)."""
    if max_len < 1:
        raise EdgeClipError(f"max_len must be >= 1, got {max_len}")
    N = dyn[0].shape[0]
    words = torch.full((N,), BOS_ID, dtype=torch.long)
    out = torch.full((N, max_len), PAD_ID, dtype=torch.long)
    done = torch.zeros(N, dtype=torch.bool)
    for t in range(max_len):
        logp, dyn = step(words, dyn, static)
        nxt = _mask_specials(logp, allow_unk).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
        out[:, t] = nxt
        done |= nxt == EOS_ID
        words = nxt
        if bool(done.all()):
            break
    return out


@torch.no_grad()
def beam_decode(
    step: StepFn,
    dyn: State,
    static: State,
    beam: int = 5,
    max_len: int = 20,
    length_penalty: float = 1.0,
    allow_unk: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search. Returns ((N, max_len) ids of the best beam, (N,) its length-normalised log-prob).

    Finished hypotheses stay in the beam (extended with PAD at no cost); the final choice divides each
    hypothesis' log-probability by ``length ** length_penalty`` (length counts words and the <eos>).
    """
    if beam < 1:
        raise EdgeClipError(f"beam must be >= 1, got {beam}")
    if max_len < 1:
        raise EdgeClipError(f"max_len must be >= 1, got {max_len}")
    B = dyn[0].shape[0]
    k = beam
    dyn = tuple(t.repeat_interleave(k, 0) for t in dyn)
    static = tuple(t.repeat_interleave(k, 0) for t in static)
    scores = torch.zeros(B, k)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one alive
    words = torch.full((B * k,), BOS_ID, dtype=torch.long)
    seqs = torch.zeros(B, k, 0, dtype=torch.long)
    finished = torch.zeros(B, k, dtype=torch.bool)
    lengths = torch.zeros(B, k)
    offsets = (torch.arange(B) * k).view(B, 1)
    for _t in range(max_len):
        logp, dyn = step(words, dyn, static)
        V = logp.shape[-1]
        logp = _mask_specials(logp.view(B, k, V).float(), allow_unk)
        if bool(finished.any()):
            fin_row = torch.full((V,), float("-inf"))
            fin_row[PAD_ID] = 0.0
            logp = torch.where(finished.unsqueeze(-1), fin_row, logp)
        cand = (scores.unsqueeze(-1) + logp).view(B, k * V)
        top, idx = cand.topk(min(k, k * V), dim=-1)
        src, tok = idx // V, idx % V
        scores = top
        seqs = torch.cat(
            [seqs.gather(1, src.unsqueeze(-1).expand(-1, -1, seqs.shape[2])), tok.unsqueeze(-1)], -1
        )
        prev_fin = finished.gather(1, src)
        lengths = lengths.gather(1, src) + (~prev_fin).float()
        finished = prev_fin | (tok == EOS_ID)
        flat = (src + offsets).view(-1)
        dyn = tuple(s.index_select(0, flat) for s in dyn)
        words = tok.view(-1)
        if bool(finished.all()):
            break
    norm = scores / lengths.clamp(min=1.0) ** length_penalty
    best = norm.argmax(-1)
    ids = seqs[torch.arange(B), best]
    out = torch.full((B, max_len), PAD_ID, dtype=torch.long)
    out[:, : ids.shape[1]] = ids
    return out, norm[torch.arange(B), best]


def torch_step(decoder) -> StepFn:
    """A step function over a :class:`~edgeclip.models.captioner.DecoderStep`."""

    def step(words, dyn, static):
        logp, h, c, _ = decoder(words, dyn[0], dyn[1], static[0], static[1])
        return logp, (h, c)

    return step


@torch.no_grad()
def generate(
    model,
    images: torch.Tensor,
    beam: int = 5,
    max_len: int = 20,
    length_penalty: float = 1.0,
    allow_unk: bool = False,
) -> list[str]:
    """Captions of a normalised image batch with a :class:`~edgeclip.models.captioner.Captioner`
    (``beam=1``: greedy)."""
    was = model.training
    model.eval()
    feats, keys, h, c = model.encode(images)
    step = torch_step(model.decoder)
    if beam <= 1:
        ids = greedy_decode(step, (h, c), (feats, keys), max_len, allow_unk)
    else:
        ids, _ = beam_decode(step, (h, c), (feats, keys), beam, max_len, length_penalty, allow_unk)
    model.train(was)
    return decode_ids(model.vocab, ids)


def decode_ids(vocab, ids: torch.Tensor) -> list[str]:
    return [vocab.decode(r.tolist()) for r in ids]
