"""The teacher's text tower in a bundle (``edgeclip export --text-encoder``): new labels on the device, no torch.

Writes into the bundle folder::

    text.onnx          (input_ids, attention_mask) int64 (B, T) -> (B, D) unnormalised text embedding, fp32
    text.int8.onnx     the same, dynamic int8 (per-channel int8 weights, uint8 activations at run time)
    tokenizer.json     a ``tokenizers`` tokenizer that gives the teacher tokenizer's ids token for token
    text.json          kind, inputs, padding, the precision the runtime uses by default, parity

Checked at export, on a probe corpus (the bundle's prompts, a few sentences, odd characters, a long text):
token-for-token agreement with the teacher's own tokenizer (any difference is an error), the cosine of ONNX
Runtime's fp32 embeddings against torch (>= 0.999 or the export fails), and for int8 the cosine and the zero-shot
agreement of the labels it picks with those the torch embeddings pick on the hold-out images. The runtime uses
int8 only where it agrees on >= 99 % of at least 20 such images, else fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, write_json

TEXT_FP32 = "text.onnx"
TEXT_INT8 = "text.int8.onnx"
TOKENIZER = "tokenizer.json"
TEXT_CONFIG = "text.json"
TEXT_FORMAT = "edgeclip-text-tower/1"
MIN_FP32_COSINE = 0.999
INT8_AGREEMENT_GATE = 0.99
MIN_GATE_IMAGES = 20  # fewer hold-out images say too little about int8's agreement: fp32 stays the default

PROBE = [
    "a dog running on grass",
    "two children playing football in a park at sunset",
    "A RED CAR parked next to a building!!",
    "café, naïve façade — über 東京 🙂",
    "don't stop: 123 4.5 e-mail @home #tag",
    "  extra   spaces\tand tabs  ",
    "x",
    "a very long description " * 40,
]


def token_parity(export, texts: Sequence[str]) -> dict[str, Any]:
    """The exported tokenizer against the teacher's own, text by text: -> {n, mismatches, first_mismatch}."""
    enc = export.tokenizer.encode_batch(list(texts))
    ref = export.reference(list(texts))
    bad = []
    for key in ("input_ids", "attention_mask"):
        if key not in ref:
            continue
        want = ref[key].numpy() if isinstance(ref[key], torch.Tensor) else np.asarray(ref[key])
        got = _pad([getattr(e, "ids" if key == "input_ids" else key) for e in enc], want.shape[1])
        bad += [i for i in range(len(texts)) if want.shape[1] != got.shape[1] or (want[i] != got[i]).any()]
    bad = sorted(set(bad))
    return {"n": len(texts), "mismatches": len(bad), "first_mismatch": texts[bad[0]][:80] if bad else None}


def _pad(rows: list[list[int]], n: int) -> np.ndarray:
    out = np.full((len(rows), max(n, max(map(len, rows)))), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)


def export_text_tower(
    teacher,
    folder: str | Path,
    prompts: Sequence[str],
    image_embeddings: np.ndarray | None = None,
    classifier: Callable[[Callable[[list[str]], np.ndarray]], np.ndarray] | None = None,
    int8: bool = True,
    opset: int = 17,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Export ``teacher``'s text tower into ``folder``; -> the manifest's ``text`` section (files: its file names).

    ``prompts``: texts the parity checks use beside the probe corpus (the bundle's label prompts).
    ``classifier(encode)``: the bundle's label embeddings (L, D) made with a given ``encode(texts) -> (N, D)``;
    with ``image_embeddings`` (N, D) it gives the int8 tower's zero-shot agreement with torch.
    """
    from edgeclip.runtime.text import default_reason

    if teacher.text_export is None:
        raise EdgeClipError(
            f"the text tower of teacher {teacher.spec!r} cannot be exported (no tokenizers form)"
        )
    folder = Path(folder)
    ex = teacher.text_export()
    texts = list(dict.fromkeys([*prompts, *PROBE]))
    tok = token_parity(ex, texts)
    if tok["mismatches"]:
        raise EdgeClipError(
            f"the exported tokenizer differs from the teacher's on {tok['mismatches']} of {tok['n']} texts "
            f"(first: {tok['first_mismatch']!r}); the text tower is not bundled"
        )
    with atomic_path(folder / TOKENIZER) as tmp:
        ex.tokenizer.save(str(tmp))
    _onnx_fp32(ex, texts, folder, opset)
    ref = _torch_embed(ex, texts)
    sessions, files = _sessions(folder, int8)
    parity = _parity(ex, sessions, texts, ref)
    default = "fp32"
    if int8 and classifier is not None and image_embeddings is not None and len(image_embeddings):
        default = _int8_gate(ex, sessions, parity, classifier, image_embeddings)
    sizes = {k: (folder / f).stat().st_size for k, f in files.items()}
    cfg = {
        "format": TEXT_FORMAT,
        **{"kind": ex.kind, "models": files, "default": default, "tokenizer": TOKENIZER},
        "inputs": [i.name for i in sessions["fp32"].get_inputs()],
        **{"embed_dim": int(ref.shape[1]), "token_parity": tok, "parity": parity},
        "int8_gate": {"zero_shot_agreement": INT8_AGREEMENT_GATE, "min_images": MIN_GATE_IMAGES},
        **{"bytes": sizes, "tokenizer_bytes": (folder / TOKENIZER).stat().st_size},
    }
    cfg["default_why"] = default_reason(cfg)
    write_json(folder / TEXT_CONFIG, cfg)
    log(_summary(ex.kind, sizes, tok, parity, int8, default))
    return cfg


def _parity(ex, sessions: dict, texts: list[str], ref: np.ndarray) -> dict[str, Any]:
    """Each tower's cosine to torch on ``texts``, run exactly as the runtime runs it (int8: one text per run);
    an fp32 tower below MIN_FP32_COSINE is refused."""
    from edgeclip.runtime.text import run_texts

    parity: dict[str, Any] = {}
    for k, sess in sessions.items():
        got = run_texts(ex.tokenizer, sess, texts, per_text=k != "fp32")
        cos = (_unit(got) * _unit(ref)).sum(1)
        parity[k] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "n_texts": len(texts)}
    if parity["fp32"]["min_cosine"] < MIN_FP32_COSINE:
        raise EdgeClipError(
            f"the exported text tower disagrees with torch (min cosine {parity['fp32']['min_cosine']:.5f} < "
            f"{MIN_FP32_COSINE}); the text tower is not bundled"
        )
    return parity


def _onnx_fp32(ex, texts: list[str], folder: Path, opset: int) -> None:
    from edgeclip.export.onnx import export_onnx

    sample = ex.reference(texts[:4])
    ids = sample["input_ids"].long()
    mask = sample.get("attention_mask", (ids != 0).long()).long()
    export_onnx(
        ex.module.eval().cpu(),
        folder / TEXT_FP32,
        input_names=("input_ids", "attention_mask"),
        output_names=("embedding",),
        example_inputs=(ids, mask),
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"},
        },
        opset=opset,
    )


def _sessions(folder: Path, int8: bool) -> tuple[dict, dict[str, str]]:
    """The fp32 tower's ONNX Runtime session and, with ``int8``, the dynamic-int8 one's; -> (sessions, files)."""
    from edgeclip.runtime.session import ort_session

    sessions, files = {"fp32": ort_session(folder / TEXT_FP32)}, {"fp32": TEXT_FP32}
    if int8:
        from edgeclip.quant.ort import quantize_dynamic_onnx

        quantize_dynamic_onnx(folder / TEXT_FP32, folder / TEXT_INT8, per_channel=True)
        sessions["int8"], files["int8"] = ort_session(folder / TEXT_INT8), TEXT_INT8
    return sessions, files


def _int8_gate(ex, sessions: dict, parity: dict, classifier, image_embeddings) -> str:
    """Zero-shot agreement with torch of each tower's label classifier on the images (recorded in ``parity``);
    -> the default precision: int8 when it passes the gate on enough images."""
    from edgeclip.runtime.text import run_texts

    def encode(k):
        return lambda batch: run_texts(ex.tokenizer, sessions[k], batch, per_text=k != "fp32")

    base = classifier(lambda batch: _torch_embed(ex, batch)).T
    img = _unit(np.asarray(image_embeddings, dtype=np.float32))
    want = (img @ base).argmax(1)
    for k in sessions:
        parity[k]["zero_shot_agreement"] = float(((img @ classifier(encode(k)).T).argmax(1) == want).mean())
        parity[k]["zero_shot_images"] = int(len(img))
    ok = parity["int8"]["zero_shot_agreement"] >= INT8_AGREEMENT_GATE and len(img) >= MIN_GATE_IMAGES
    return "int8" if ok else "fp32"


def _summary(kind: str, sizes: dict, tok: dict, parity: dict, int8: bool, default: str) -> str:
    return (
        f"text tower ({kind}): fp32 {sizes['fp32'] / 1e6:.1f} MB"
        + (f", int8 {sizes['int8'] / 1e6:.1f} MB" if int8 else "")
        + f"; tokens identical on {tok['n']} texts; fp32 min cosine vs torch {parity['fp32']['min_cosine']:.5f}"
        + (
            f"; int8 zero-shot agreement {parity['int8'].get('zero_shot_agreement', float('nan')):.3f}, "
            f"min cosine {parity['int8']['min_cosine']:.4f}"
            if int8
            else ""
        )
        + f"; runtime default {default}"
    )


@torch.no_grad()
def _torch_embed(ex, texts: Sequence[str]) -> np.ndarray:
    out = []
    for i in range(0, len(texts), 32):
        toks = ex.reference(list(texts[i : i + 32]))
        ids = toks["input_ids"].long()
        mask = toks.get("attention_mask", (ids != 0).long()).long()
        out.append(ex.module(ids, mask).float().numpy())
    return np.concatenate(out)
