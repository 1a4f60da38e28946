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


# ------------------------------------------------------------------ the triplet loss (EdgeVL stage 2)
POSITIVES = ("easy", "random", "hard")
NEGATIVES = ("random", "hardest")


def check_mining(positive: str, negative: str, negatives: int) -> None:
    """One clear error for triplet-mining settings (QATConfig and :func:`semi_hard_triplet`)."""
    if positive not in POSITIVES or negative not in NEGATIVES or negatives < 1:
        raise EdgeClipError(
            f"triplet mining: positive must be one of {', '.join(POSITIVES)}, negative one of "
            f"{', '.join(NEGATIVES)} and negatives >= 1 (got {positive!r}, {negative!r}, {negatives})"
        )


def semi_hard_triplet(
    anchor: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    margin: float,
    exclude: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    positive: str = "easy",
    negative: str = "random",
    negatives: int = 3,
    generator=None,
):
    """Triplet loss with semi-hard negatives from an embedding bank (FaceNet; EdgeVL stage 2).

    ``anchor`` (B,D) unnormalised student embeddings; ``bank`` (N,D) normalised, detached. Distances are
    Euclidean between unit vectors. Bank columns are candidates unless ``exclude`` (the anchor's own row)
    or not ``allowed`` (e.g. another modality). The positive is the nearest (``easy``, EdgeVL's published
    setting), a random or the farthest (``hard``) candidate with the anchor's pseudo-label; the negatives are
    up to ``negatives`` candidates of another label with ``d_p < d_n < d_p + margin``, drawn at random
    (EdgeVL) or the nearest ones (``hardest``). Anchors without a positive or a semi-hard negative add nothing.
    -> (sum of the triplet hinges / B, number of anchors that had at least one semi-hard triplet)
    """
    check_mining(positive, negative, negatives)
    a = F.normalize(anchor.float(), dim=-1)
    d = (2 - 2 * a @ bank.t()).clamp_min(1e-8).sqrt()  # (B, N)
    cand = torch.ones_like(d, dtype=torch.bool) if allowed is None else allowed.clone()
    if exclude is not None:
        cand &= ~exclude
    same = (labels[:, None] == bank_labels[None, :]) & cand
    has_pos = same.any(1)
    if positive == "random":
        w = same.float() + (~has_pos).float()[:, None]  # rows without positives: any column, masked out below
        d_p = d.gather(1, torch.multinomial(w, 1, generator=generator)).squeeze(1)
    elif positive == "easy":
        d_p = torch.where(same, d, torch.full_like(d, float("inf"))).min(1).values
    else:
        d_p = torch.where(same, d, torch.full_like(d, -1.0)).max(1).values
    d_p = torch.where(has_pos, d_p, torch.zeros_like(d_p))
    band = (labels[:, None] != bank_labels[None, :]) & cand & (d > d_p[:, None]) & (d < d_p[:, None] + margin)
    band &= has_pos[:, None]
    k = min(negatives, d.shape[1])
    # rank the band's columns: random scores (EdgeVL) or nearness; columns outside the band rank last
    score = torch.rand(d.shape, generator=generator, device=d.device) if negative == "random" else -d
    top = torch.where(band, score, torch.full_like(score, -float("inf"))).topk(k, dim=1).indices  # (B, k)
    ok = band.gather(1, top)
    if not ok.any():
        return anchor.sum() * 0.0, 0
    hinge = F.relu(d_p[:, None] - d.gather(1, top) + margin)
    loss = (hinge * ok).sum() / anchor.shape[0]
    return loss, int(ok.any(1).sum())


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
