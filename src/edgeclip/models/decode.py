"""Decoding a torch captioner: the shared greedy / beam-search decoder (:mod:`edgeclip.runtime.decode`, numpy,
also what the torch-free runtime runs) over the torch decoder step; the LSTM state stays in torch on its device."""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgeclip.runtime import decode as npdecode
from edgeclip.runtime.decode import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Decoding  # noqa: F401  (re-exported)

State = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, State, State], tuple[torch.Tensor, State]]


def _take(state: State, index) -> State:
    return tuple(t.index_select(0, torch.as_tensor(index, device=t.device)) for t in state)


def _numpy_step(step: StepFn, device) -> npdecode.StepFn:
    """A torch step as the shared decoder's step: words in as numpy, log-probs out as numpy, state left in torch."""

    def f(words, dyn, static):
        logp, dyn = step(torch.as_tensor(words, device=device), dyn, static)
        return logp.detach().float().cpu().numpy(), dyn

    return f


@torch.no_grad()
def greedy_decode(
    step: StepFn, dyn: State, static: State, max_len: int = 20, allow_unk: bool = False
) -> torch.Tensor:
    """(N, max_len) token ids (PAD after <eos>): :func:`edgeclip.runtime.decode.greedy_decode` over a torch step."""
    dev = dyn[0].device
    ids = npdecode.greedy_decode(_numpy_step(step, dev), dyn, static, dyn[0].shape[0], max_len, allow_unk)
    return torch.from_numpy(ids)


@torch.no_grad()
def beam_decode(
    step: StepFn, dyn: State, static: State, d: Decoding | None = None, **decoding
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search (:func:`edgeclip.runtime.decode.beam_decode` over a torch step; ``d`` and/or
    :class:`Decoding` fields). Returns ((N, max_len) ids of the best beam, (N,) its length-normalised log-prob)."""
    dev = dyn[0].device
    ids, score = npdecode.beam_decode(
        _numpy_step(step, dev), dyn, static, dyn[0].shape[0], Decoding.of(d, **decoding), _take
    )
    return torch.from_numpy(ids), torch.from_numpy(score)


def torch_step(decoder) -> StepFn:
    """A step function over a :class:`~edgeclip.models.captioner.DecoderStep`."""

    def step(words, dyn, static):
        logp, h, c, _ = decoder(words, dyn[0], dyn[1], static[0], static[1])
        return logp, (h, c)

    return step


@torch.no_grad()
def generate(model, images: torch.Tensor, d: Decoding | None = None, **decoding) -> list[str]:
    """Captions of a normalised image batch with a :class:`~edgeclip.models.captioner.Captioner`; ``d`` and/or
    :class:`Decoding` fields (``beam=1``: greedy)."""
    d = Decoding.of(d, **decoding)
    was = model.training
    model.eval()
    feats, keys, h, c = model.encode(images)
    step = _numpy_step(torch_step(model.decoder), h.device)
    ids = npdecode.decode(step, (h, c), (feats, keys), images.shape[0], d, _take)
    model.train(was)
    return decode_ids(model.vocab, torch.from_numpy(ids))


def decode_ids(vocab, ids: torch.Tensor) -> list[str]:
    return [vocab.decode(r.tolist()) for r in ids]
