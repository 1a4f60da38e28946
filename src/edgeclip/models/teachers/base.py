"""The uniform teacher interface every loader returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.core.errors import EdgeClipError


@dataclass
class TextExport:
    """What a bundle needs to run a teacher's text tower without torch (``edgeclip export --text-encoder``).

    ``module``: (input_ids (B, T) int64, attention_mask (B, T) int64) -> (B, D) unnormalised text embeddings,
    exactly the teacher's ``encode_text``; ``tokenizer``: a ``tokenizers.Tokenizer`` with the teacher's
    truncation and padding set, so that it gives the teacher tokenizer's ids token for token; ``reference``:
    the teacher's own tokenizer (texts -> {"input_ids", "attention_mask"} tensors), to check that claim;
    ``kind``: what the tower is (recorded in the bundle).
    """

    module: nn.Module
    tokenizer: Any
    reference: Callable[[Sequence[str]], dict[str, torch.Tensor]]
    kind: str


@dataclass
class Teacher:
    """A CLIP-style teacher: image encoder, text encoder + tokenizer, preprocessing, embed dim, logit scale.

    ``id`` identifies the exact weights and is recorded in caches and students; ``spec`` is how to load it.
    """

    spec: str
    id: str
    image_encoder: nn.Module  # (B,3,H,W) -> (B,D), unnormalised
    text_encoder: Callable[[Any], torch.Tensor]  # tokens -> (B,D)
    tokenizer: Callable[[Sequence[str]], Any]
    preprocess: Callable  # PIL -> (3,H,W) tensor
    preprocess_desc: str
    image_size: int
    embed_dim: int
    logit_scale: float
    mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073)
    std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711)
    extra: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    text_export: Callable[[], TextExport] | None = None  # None: this teacher's text tower cannot be exported

    def to(self, device: str) -> Teacher:
        self.image_encoder.to(device)
        mover = getattr(self.text_encoder, "to", None)
        if callable(mover):
            mover(device)
        self.device = device
        return self

    def eval(self) -> Teacher:
        self.image_encoder.eval()
        ev = getattr(self.text_encoder, "eval", None)
        if callable(ev):
            ev()
        return self

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise EdgeClipError(f"teacher expects (B,3,H,W) images, got {tuple(x.shape)}")
        f = self.image_encoder(x.to(self.device)).float()
        return F.normalize(f, dim=-1) if normalize else f

    @torch.no_grad()
    def encode_text(
        self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256
    ) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            raise EdgeClipError("no text prompts given (the label list is empty)")
        outs: list[torch.Tensor] = []
        for i in range(0, len(texts), batch_size):
            toks = self.tokenizer(texts[i : i + batch_size])
            toks = (
                {k: v.to(self.device) for k, v in toks.items()}
                if isinstance(toks, dict)
                else toks.to(self.device)
            )
            f = self.text_encoder(toks).float()
            outs.append(F.normalize(f, dim=-1) if normalize else f)
        return torch.cat(outs)

    def describe(self) -> dict[str, Any]:
        """What a cache, a student or a bundle records about its teacher."""
        return {
            "spec": self.spec,
            "id": self.id,
            "embed_dim": self.embed_dim,
            "logit_scale": self.logit_scale,
            "image_size": self.image_size,
            "preprocess": self.preprocess_desc,
        }
