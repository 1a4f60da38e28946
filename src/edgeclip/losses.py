"""Distillation losses in one keyed registry (torchdistill style).

Every loss is ``loss(student_emb, teacher_emb, **ctx) -> scalar`` on (B, D) tensors. Student
embeddings arrive unnormalised; teacher embeddings normalised (as cached). ``ctx`` may carry
``text_emb`` (C, D) class/prompt embeddings and ``logit_scale``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.registry import Registry

LOSSES: Registry[Callable[..., Callable]] = Registry("distillation loss")


def _n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


@LOSSES.register("mse", help="MSE between L2-normalised embeddings (EdgeVL)")
def mse(**_) -> Callable:
    return lambda s, t, **c: F.mse_loss(_n(s), _n(t), reduction="none").sum(-1).mean()


@LOSSES.register("l1", help="L1 between L2-normalised embeddings (EdgeVL)")
def l1(**_) -> Callable:
    return lambda s, t, **c: F.l1_loss(_n(s), _n(t), reduction="none").sum(-1).mean()


@LOSSES.register("cosine", help="1 - cosine similarity")
def cosine(**_) -> Callable:
    return lambda s, t, **c: (1 - (_n(s) * _n(t)).sum(-1)).mean()


@LOSSES.register(
    "contrastive", help="InfoNCE: student i must pick teacher i among the batch (both directions)"
)
def contrastive(temperature: float = 0.07, **_) -> Callable:
    def f(s, t, **c):
        logits = _n(s) @ _n(t).t() / temperature
        y = torch.arange(len(s), device=s.device)
        return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y))

    return f


@LOSSES.register(
    "affinity",
    help="affinity mimicking (TinyCLIP / open_clip DistillClipLoss): match the teacher's similarity distributions",
)
def affinity(temperature: float = 0.07, weight_text: float = 1.0, **_) -> Callable:
    def soft_ce(student_logits, teacher_logits):
        return -(teacher_logits.softmax(-1) * student_logits.log_softmax(-1)).sum(-1).mean()

    def f(s, t, text_emb=None, **c):
        sn, tn = _n(s), _n(t)
        loss = soft_ce(sn @ tn.t() / temperature, tn @ tn.t() / temperature)
        loss = loss + soft_ce(tn @ sn.t() / temperature, tn @ tn.t() / temperature)
        if text_emb is not None and weight_text:
            te = _n(text_emb)
            loss = loss + weight_text * soft_ce(sn @ te.t() / temperature, tn @ te.t() / temperature)
        return loss

    return f


@LOSSES.register(
    "prompt_kl",
    help="the teacher's zero-shot distribution over the prompt vocabulary, matched by the "
    "student (soft cross-entropy at the teacher's logit scale); label-free, needs the prompts",
)
def prompt_kl(temperature: float = 0.0, **_) -> Callable:
    def f(s, t, text_emb=None, logit_scale=None, **c):
        if text_emb is None:
            raise EdgeClipError(
                "loss prompt_kl needs the prompt vocabulary (labels, class folders or a curation manifest)"
            )
        scale = 1.0 / temperature if temperature else float(logit_scale or 100.0)
        te = _n(text_emb).to(s.dtype)
        p_t = (_n(t).to(s.dtype) @ te.t() * scale).softmax(-1)
        return -(p_t * (_n(s) @ te.t() * scale).log_softmax(-1)).sum(-1).mean()

    return f


@LOSSES.register("clipkd", help="CLIP-KD: feature distillation (MSE) + interactive contrastive learning")
def clipkd(fd_weight: float = 1.0, icl_weight: float = 1.0, temperature: float = 0.07, **_) -> Callable:
    fd, ce = mse(), contrastive(temperature)

    def f(s, t, text_emb=None, **c):
        loss = fd_weight * fd(s, t)
        # ICL: student image embeddings query the teacher's embedding space (teacher text when
        # prompts are given, else the teacher's image embeddings of the batch)
        if text_emb is not None and "labels" in c and c["labels"] is not None:
            logits = _n(s) @ _n(text_emb).t() / temperature
            loss = loss + icl_weight * F.cross_entropy(logits, c["labels"])
        else:
            loss = loss + icl_weight * ce(s, t)
        return loss

    return f


def build_loss(spec: str | dict) -> Callable:
    """``"mse"``, ``"cosine+0.5*affinity"``, or ``{"name": "clipkd", "icl_weight": 0.5}``."""
    if isinstance(spec, dict):
        d = dict(spec)
        return LOSSES.get(d.pop("name"))(**d)
    parts = [p.strip() for p in str(spec).split("+") if p.strip()]
    if not parts:
        raise EdgeClipError("empty loss spec")
    terms = []
    for p in parts:
        w, _, name = p.rpartition("*")
        terms.append((float(w) if w else 1.0, LOSSES.get(name.strip())()))
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return lambda s, t, **c: sum(w * fn(s, t, **c) for w, fn in terms)
