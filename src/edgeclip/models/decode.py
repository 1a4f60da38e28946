"""Decoding a torch captioner: the shared greedy / beam-search decoder (:mod:`edgeclip.runtime.decode`, numpy,
also what the torch-free runtime runs) over the torch decoder step; the LSTM state stays in torch on its device."""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgeclip.runtime import decode as npdecode
from edgeclip.runtime.decode import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: F401  (re-exported)

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
    step: StepFn,
    dyn: State,
    static: State,
    beam: int = 5,
    max_len: int = 20,
    length_penalty: float = 1.0,
    allow_unk: bool = False,
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search (:func:`edgeclip.runtime.decode.beam_decode` over a torch step). Returns ((N, max_len)
    ids of the best beam, (N,) its length-normalised log-prob)."""
    dev = dyn[0].device
    ids, score = npdecode.beam_decode(
        _numpy_step(step, dev),
        dyn,
        static,
        dyn[0].shape[0],
        beam,
        max_len,
        length_penalty,
        allow_unk,
        _take,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram=no_repeat_ngram,
    )
    return torch.from_numpy(ids), torch.from_numpy(score)


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
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
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
        ids, _ = beam_decode(
            step,
            (h, c),
            (feats, keys),
            beam,
            max_len,
            length_penalty,
            allow_unk,
            repetition_penalty,
            no_repeat_ngram,
        )
    model.train(was)
    return decode_ids(model.vocab, ids)


def decode_ids(vocab, ids: torch.Tensor) -> list[str]:
    return [vocab.decode(r.tolist()) for r in ids]
