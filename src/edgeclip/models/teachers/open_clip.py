"""open_clip teachers: ``ARCH:TAG`` (e.g. ``ViT-B-32:openai``), ``ARCH:/path/to/weights``,
``local-dir:/folder`` (open_clip_config.json + weights) and ``hf-hub:org/repo``.

``ARCH`` may also be a path to an open_clip model-config JSON, which is registered first.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import sha256_file, sha256_text
from edgeclip.models.teachers.base import Teacher
from edgeclip.models.teachers.hub import cached, offline_reason


def _split(spec: str):
    if spec.startswith(("local-dir:", "hf-hub:")):
        return spec, None
    arch, sep, pretrained = spec.partition(":")
    return arch, (pretrained or None)


def _pretrained_module():
    """open_clip's table of pretrained tags (``open_clip.pretrained``), read without importing the open_clip package
    (6 s: it imports its CoCa model and transformers), so an offline failure answers at once."""
    import importlib.util
    import sys
    import types

    if "open_clip" in sys.modules:
        return sys.modules["open_clip"].pretrained
    name = "_edgeclip_open_clip_tags"
    if f"{name}.pretrained" in sys.modules:
        return sys.modules[f"{name}.pretrained"]
    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(list(found.submodule_search_locations)[0])
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(root)]
    sys.modules[name] = pkg
    mspec = importlib.util.spec_from_file_location(f"{name}.pretrained", root / "pretrained.py")
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[mspec.name] = mod
    try:
        mspec.loader.exec_module(mod)
    except Exception:  # noqa: BLE001 -- another open_clip layout: the full import decides instead
        sys.modules.pop(mspec.name, None)
        return None
    return mod


def _hub_unavailable(arch: str, tag: str) -> str | None:
    """Why the weights of open_clip's pretrained ``tag`` for ``arch`` cannot be had right now, or None (they are in
    the local cache, or the model hub may be reached: the download then says what went wrong)."""
    mod = _pretrained_module()
    cfg = (mod.get_pretrained_cfg(arch, tag) if mod else None) or {}
    if not cfg:  # an unknown tag or architecture: the full load names the known ones
        return None
    hub = str(cfg.get("hf_hub") or "").strip("/")
    if hub:
        parts = hub.split("/")
        names = parts[2:] or ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if cached("/".join(parts[:2]), names):
            return None
    url = cfg.get("url")
    if url and (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file():
        return None
    return offline_reason()


def load_open_clip(spec: str, device: str = "cpu") -> Teacher:
    """``ARCH:TAG`` (the hub, when reachable), ``ARCH:/path/weights``, ``ARCH.json:...`` (a model config file),
    ``local-dir:/folder``, or ``ARCH:`` (a seeded random init) -> a Teacher; every failure one line."""
    arch, pretrained = _split(spec)
    looks_like_file = pretrained is not None and (
        os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )
    if pretrained and not looks_like_file and not arch.endswith(".json"):  # a hub tag
        why = _hub_unavailable(arch, pretrained)
        if why:
            raise EdgeClipError(
                f"cannot load open_clip teacher {spec!r}: {why}. Offline, pass local weights: --teacher "
                f"{arch}:/path/to/weights.safetensors, local-dir:/folder or hf:/folder"
            )
    arch = _check_arch(arch, pretrained, looks_like_file)
    model, preprocess, tokenizer = _create(spec, arch, pretrained, looks_like_file, device)
    model.eval()
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    mean = getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
    std = getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
    return Teacher(
        spec=spec,
        id=f"open_clip:{arch}:{_weights_id(arch, pretrained, looks_like_file)}",
        image_encoder=_ImageTower(model),
        text_encoder=_TextTower(model),
        tokenizer=tokenizer,
        preprocess=preprocess,
        preprocess_desc=repr(preprocess).replace("\n", " "),
        image_size=image_size,
        embed_dim=_embed_dim(model, tokenizer, device),
        logit_scale=float(model.logit_scale.exp().item()),
        mean=tuple(mean),
        std=tuple(std),
        device=device,
        text_export=lambda: _text_export(model, tokenizer),
    )


def _open_clip():
    try:
        import open_clip
    except ImportError:  # pragma: no cover
        raise EdgeClipError(
            "open_clip teachers need the open_clip_torch package (pip install open_clip_torch)"
        ) from None
    return open_clip


def _check_arch(arch: str, pretrained: str | None, looks_like_file: bool) -> str:
    """The architecture name open_clip knows (a .json config is registered first); its tag or file checked."""
    open_clip = _open_clip()
    if arch.endswith(".json"):
        cfg = Path(arch)
        if not cfg.is_file():
            raise EdgeClipError(f"open_clip model config not found: {cfg}")
        open_clip.add_model_config(cfg)
        arch = cfg.stem
    if not arch.startswith(("local-dir:", "hf-hub:")) and arch not in open_clip.list_models():
        raise EdgeClipError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    if looks_like_file and not Path(pretrained).is_file():
        raise EdgeClipError(f"open_clip weights file not found: {pretrained}")
    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    if pretrained and not looks_like_file and pretrained not in tags:
        raise EdgeClipError(
            f"open_clip has no pretrained tag {pretrained!r} for {arch} (known: {', '.join(tags) or 'none'}); "
            f"or pass a local file: {arch}:/path/to/open_clip_weights.safetensors"
        )
    return arch


def _create(spec: str, arch: str, pretrained: str | None, looks_like_file: bool, device: str):
    """open_clip's model, preprocessing and tokenizer; any failure one line naming what was looked for."""
    import torch

    open_clip = _open_clip()
    try:
        # an open_clip .pt/.bin file is read by torch's restricted unpickler (weights_only), never run as code;
        # open_clip releases without the argument call torch.load, whose default is weights_only from torch 2.6
        safe = (
            {"weights_only": True}
            if "weights_only" in inspect.signature(open_clip.create_model_and_transforms).parameters
            else {}
        )
        # no weights ("ARCH:"): a seeded random init, so the same spec is the same teacher in every process (its id
        # says random-init; many cache workers, or a later run, must not mix two different random towers)
        with torch.random.fork_rng(devices=[]):
            if not pretrained:
                torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device, **safe
            )
        return model, preprocess, open_clip.get_tokenizer(arch)
    except EdgeClipError:
        raise
    except Exception as e:
        msg = " ".join(str(e).split())  # the whole message: a cut one hides what to do
        looked = (
            f"weights file {pretrained}"
            if looks_like_file
            else f"pretrained tag {pretrained!r} of {arch} (needs the model hub)"
        )
        raise EdgeClipError(
            f"could not load open_clip teacher {spec!r}: {msg}. Looked for {looked}. Offline, pass a local "
            f"checkpoint: --teacher {arch}:/path/to/weights.safetensors or local-dir:/folder"
        ) from None


def _weights_id(arch: str, pretrained: str | None, looks_like_file: bool) -> str:
    if looks_like_file:
        return "sha256:" + sha256_file(pretrained)[:16]
    if arch.startswith("local-dir:"):
        folder = Path(arch.split(":", 1)[1])
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        return "sha256:" + sha256_text("".join(sha256_file(p) for p in files))[:16]
    return f"tag:{pretrained}" if pretrained else "random-init-seed0"


def _embed_dim(model, tokenizer, device: str) -> int:
    proj = getattr(model, "text_projection", None)
    if proj is not None and hasattr(proj, "shape"):
        return int(proj.shape[1])
    import torch

    with torch.no_grad():
        return int(model.encode_text(tokenizer(["a"]).to(device)).shape[-1])


import torch  # noqa: E402


class _ImageTower(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, x):
        return self.clip.encode_image(x)


def _text_export(clip, tokenizer):
    """open_clip's text tower on (input_ids, attention_mask) and a ``tokenizers`` twin of its tokenizer: CLIP's
    byte-level BPE built from open_clip's own vocabulary and merges (``SimpleTokenizer``), or the fast tokenizer
    inside an ``HFTokenizer``; padded to the fixed context length as open_clip pads."""
    from edgeclip.models.teachers.base import TextExport
    from edgeclip.models.teachers.minilm import backend_tokenizer

    n = int(getattr(tokenizer, "context_length", 77))
    if hasattr(tokenizer, "bpe_ranks") and hasattr(tokenizer, "encoder"):
        from transformers import CLIPTokenizerFast

        dec = tokenizer.decoder
        sot, eot = dec[tokenizer.sot_token_id], dec[tokenizer.eot_token_id]
        merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
        fast = CLIPTokenizerFast(
            vocab=dict(tokenizer.encoder),
            merges=merges,
            bos_token=sot,
            eos_token=eot,
            unk_token=eot,
            pad_token=eot,
        )
        fast.pad_token_id = 0  # open_clip pads with id 0
        bt = backend_tokenizer(fast, n, pad_to=n)
        bt.enable_padding(length=n, pad_id=0, pad_token=eot)
    elif getattr(tokenizer, "tokenizer", None) is not None:
        bt = backend_tokenizer(tokenizer.tokenizer, n, pad_to=n)
    else:
        raise EdgeClipError(f"open_clip's {type(tokenizer).__name__} has no tokenizers form to export")

    def reference(texts):  # open_clip has no attention mask (its tower pools at the end-of-text token)
        return {"input_ids": tokenizer(list(texts))}

    return TextExport(_TextIds(clip), bt, reference, "open_clip")


class _TextIds(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids, attention_mask):
        return self.clip.encode_text(input_ids)


class _TextTower(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, toks):
        return self.clip.encode_text(toks)
