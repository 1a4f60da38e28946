"""The captioner as a bundle: encoder + one decoder step in ONNX, its vocabulary and preprocessing, a manifest.

paths = export_captioner(model, pp, "out/")   # a bundle folder the torch-free runtime runs
cap = edgeclip.runtime.load_bundle("out/"); cap.caption("photo.jpg")   # same decoding code as torch
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.data.transforms import Preprocess
from edgeclip.export.onnx import export_onnx

ENC_OUT = ("feats", "keys", "h0", "c0")
DEC_IN = ("word", "h", "c", "feats", "keys")
DEC_OUT = ("logp", "h_out", "c_out")


class _DecoderExport(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, word, h, c, feats, keys):
        logp, h, c, _ = self.decoder(word, h, c, feats, keys)
        return logp, h, c


def export_captioner(
    model, pp: Preprocess, out_dir: str | Path, opset: int = 17, info: dict | None = None
) -> dict[str, str]:
    """Write a captioner bundle: ``caption_encoder.onnx``, ``caption_decoder_step.onnx``, ``caption_meta.json``
    (vocabulary, preprocessing, model config), ``preprocess.json`` and ``manifest.json`` (kind ``captioner``,
    file hashes; ``info``: the checkpoint's info, for the teacher it records)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    size = model.cfg.img_size
    enc = out / "caption_encoder.onnx"
    export_onnx(
        model.encoder,
        enc,
        input_names=("image",),
        output_names=ENC_OUT,
        example_inputs=(torch.zeros(1, 3, size, size),),
        opset=opset,
        dynamic_axes={n: {0: "batch"} for n in ("image",) + ENC_OUT},
    )
    feats, keys, h, c = model.encoder(torch.zeros(2, 3, size, size))
    dec = out / "caption_decoder_step.onnx"
    export_onnx(
        _DecoderExport(model.decoder),
        dec,
        input_names=DEC_IN,
        output_names=DEC_OUT,
        example_inputs=(torch.ones(2, dtype=torch.long), h, c, feats, keys),
        opset=opset,
        dynamic_axes={n: {0: "batch"} for n in DEC_IN + DEC_OUT},
    )
    meta = out / "caption_meta.json"
    write_json(
        meta,
        {
            "format": "edgeclip-caption-onnx/1",
            "vocab": model.vocab.to_dict(),
            "preprocess": pp.to_dict(),
            "encoder": enc.name,
            "decoder_step": dec.name,
            "config": dict(model.cfg.__dict__),
        },
    )
    write_json(out / "preprocess.json", pp.to_dict())
    _manifest(out, model, info or {})
    return {
        "encoder": str(enc),
        "decoder_step": str(dec),
        "meta": str(meta),
        "manifest": str(out / "manifest.json"),
    }


def _manifest(out: Path, model, info: dict) -> None:
    import datetime as _dt

    from edgeclip.core.io import sha256_file
    from edgeclip.core.machine import machine_info
    from edgeclip.runtime.bundle import BUNDLE_FORMAT, MANIFEST

    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(out.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    write_json(
        out / MANIFEST,
        {
            "format": BUNDLE_FORMAT,
            "kind": "captioner",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "teacher": info.get("teacher"),
            "models": {"fp32": "caption_encoder.onnx"},
            "params": model.param_counts(),
            "files": files,
            "machine": machine_info(),
        },
    )


@dataclass
class CaptionExportConfig:
    """``edgeclip caption export``: a captioner checkpoint -> a captioner bundle folder."""

    model: str = ""
    out: str = ""
    opset: int = 17
    check: bool = True  # ONNX Runtime greedy captions must equal torch's on seeded random inputs

    def __post_init__(self) -> None:
        if not (self.model and self.out):
            raise EdgeClipError("a captioner export needs --model CHECKPOINT and --out FOLDER")


def run_caption_export(cfg: CaptionExportConfig) -> dict[str, Any]:
    """Export, then (``check``) caption 4 seeded random inputs greedily with torch and with the bundle through the
    torch-free runtime: any difference is an error. -> the written paths (+ the check)."""
    from edgeclip.models.captioner import load_captioner
    from edgeclip.models.decode import generate
    from edgeclip.runtime import load_bundle

    m, pp, ck = load_captioner(cfg.model)
    paths: dict[str, Any] = export_captioner(m, pp, cfg.out, opset=cfg.opset, info=ck)
    if cfg.check:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, pp.size, pp.size, generator=g)
        same = generate(m, x, beam=1) == load_bundle(cfg.out).caption_arrays(x, beam=1)
        paths["greedy_captions_match_torch"] = same
        if not same:
            raise EdgeClipError("ONNX Runtime greedy captions differ from torch's")
    return paths
