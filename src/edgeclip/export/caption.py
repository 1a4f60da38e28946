"""ONNX export of the captioner (encoder + one decoder step) and decoding with ONNX Runtime.

paths = export_captioner(model, pp, "out/")   # caption_encoder.onnx, caption_decoder_step.onnx, caption_meta.json
cap = OrtCaptioner("out/"); cap.caption(images)    # greedy or beam search, same decoding code as torch
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.data.transforms import Preprocess
from edgeclip.data.vocab import Vocab
from edgeclip.export.onnx import export_onnx
from edgeclip.models.decode import beam_decode, greedy_decode

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


def export_captioner(model, pp: Preprocess, out_dir: str | Path, opset: int = 17) -> dict[str, str]:
    """Write ``caption_encoder.onnx``, ``caption_decoder_step.onnx`` and ``caption_meta.json``
    (vocabulary, preprocessing)."""
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
    return {"encoder": str(enc), "decoder_step": str(dec), "meta": str(meta)}


class OrtCaptioner:
    """Captions with ONNX Runtime: the exported encoder, then the shared greedy/beam decoders over the ORT step."""

    def __init__(self, folder: str | Path, threads: int = 0):
        from edgeclip.runtime.session import ort_session

        folder = Path(folder)
        mp = folder / "caption_meta.json"
        if not mp.is_file():
            raise EdgeClipError(f"{folder} is not an exported captioner (no caption_meta.json)")
        meta = json.loads(mp.read_text(encoding="utf-8"))
        self.vocab = Vocab.from_dict(meta["vocab"])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self.enc = ort_session(folder / meta["encoder"], threads or None)
        self.dec = ort_session(folder / meta["decoder_step"], threads or None)

    def _step(self, words, dyn, static):
        logp, h, c = self.dec.run(
            None,
            {
                "word": words.numpy().astype(np.int64),
                "h": dyn[0].numpy(),
                "c": dyn[1].numpy(),
                "feats": static[0].numpy(),
                "keys": static[1].numpy(),
            },
        )
        return torch.from_numpy(logp), (torch.from_numpy(h), torch.from_numpy(c))

    def caption(
        self, images: torch.Tensor | np.ndarray, beam: int = 1, max_len: int = 20, length_penalty: float = 1.0
    ) -> list[str]:
        """Captions of a normalised (B,3,H,W) float batch."""
        x = images.numpy() if isinstance(images, torch.Tensor) else images
        feats, keys, h, c = (torch.from_numpy(a) for a in self.enc.run(None, {"image": x.astype(np.float32)}))
        if beam <= 1:
            ids = greedy_decode(self._step, (h, c), (feats, keys), max_len)
        else:
            ids, _ = beam_decode(self._step, (h, c), (feats, keys), beam, max_len, length_penalty)
        return [self.vocab.decode(r.tolist()) for r in ids]
