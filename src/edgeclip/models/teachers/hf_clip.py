"""Hugging Face CLIP teachers: a local model folder (``save_pretrained`` layout) or a hub id.

Spec: ``hf:/path/to/folder`` or ``hf:openai/clip-vit-base-patch32``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import sha256_file, sha256_text
from edgeclip.data.transforms import Preprocess
from edgeclip.models.teachers.base import Teacher
from edgeclip.models.teachers.hub import cached, offline_reason


def load_hf_clip(spec: str, device: str = "cpu") -> Teacher:
    src = spec[3:] if spec.startswith("hf:") else spec
    p = Path(src)
    is_local = p.exists()
    if is_local and not (p / "config.json").is_file():
        raise EdgeClipError(f"{p} is not a Hugging Face model folder (no config.json)")
    if not is_local and src.count("/") == 1 and not cached(src, ["config.json"]):
        why = offline_reason()
        if why:
            raise EdgeClipError(
                f"cannot load Hugging Face CLIP {src!r} from the hub: {why}. Pass a local folder saved with "
                "CLIPModel.save_pretrained: --teacher hf:/path/to/folder"
            )
    try:
        from transformers import AutoConfig, AutoTokenizer, CLIPModel
    except ImportError:  # pragma: no cover
        raise EdgeClipError("Hugging Face teachers need the transformers package") from None
    try:
        cfg = AutoConfig.from_pretrained(src)
        if getattr(cfg, "model_type", None) != "clip":
            raise EdgeClipError(f"{src} holds a {cfg.model_type!r} model, not CLIP")
        model = CLIPModel.from_pretrained(src).to(device).eval()
        tok = AutoTokenizer.from_pretrained(src)
    except EdgeClipError:
        raise
    except Exception as e:
        msg = " ".join(str(e).split())  # the whole message: a cut one hides what to do
        where = f"local folder {p}" if is_local else f"hub model {src!r} (model hubs may be unreachable)"
        raise EdgeClipError(
            f"could not load Hugging Face CLIP from {where}: {msg}. "
            "Pass a local folder saved with CLIPModel.save_pretrained: --teacher hf:/path/to/folder"
        ) from None
    pp = _preprocess(p if is_local else None, cfg)
    max_len = int(cfg.text_config.max_position_embeddings)

    def tokenizer(texts):
        return dict(tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"))

    if is_local:
        files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin"))
        wid = "sha256:" + sha256_text("".join(sha256_file(f) for f in files))[:16]
    else:
        wid = f"hub:{src}"
    return Teacher(
        spec=spec,
        id=f"hf:{wid}",
        image_encoder=_Image(model),
        text_encoder=_Text(model),
        tokenizer=tokenizer,
        preprocess=pp.torch_transform(),
        preprocess_desc=pp.describe(),
        image_size=pp.size,
        embed_dim=int(cfg.projection_dim),
        logit_scale=float(model.logit_scale.exp().item()),
        mean=pp.mean,
        std=pp.std,
        device=device,
        text_export=lambda: _text_export(model, tok, max_len, tokenizer),
    )


def _preprocess(folder: Path | None, cfg) -> Preprocess:
    size = int(cfg.vision_config.image_size)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        d = json.loads((folder / "preprocessor_config.json").read_text())
        mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
        crop = d.get("crop_size", size)
        size = int(crop.get("height", size) if isinstance(crop, dict) else crop)
    return Preprocess(size=size, mean=mean, std=std)


def _features(out):
    # transformers >= 5 may return a model output object instead of a tensor
    if isinstance(out, torch.Tensor):
        return out
    for k in ("image_embeds", "text_embeds", "pooler_output"):
        v = getattr(out, k, None)
        if v is not None:
            return v
    raise EdgeClipError("unexpected output from the Hugging Face CLIP model")


class _Image(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return _features(self.m.get_image_features(pixel_values=x))


def _text_export(model, tok, max_len: int, tokenizer):
    from edgeclip.models.teachers.base import TextExport
    from edgeclip.models.teachers.minilm import backend_tokenizer

    return TextExport(_TextIds(model), backend_tokenizer(tok, max_len), tokenizer, "hf-clip")


class _TextIds(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return _features(self.m.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class _Text(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, toks):
        return _features(self.m.get_text_features(**toks))
