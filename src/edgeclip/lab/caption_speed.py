"""The captioner's speed, as a user meets it: images/s end to end (normalisation, encoder, decoding; images already
decoded) for greedy and beam 5 at batch 1 and 32, through torch and through the exported bundle that the torch-free
runtime runs on a device (ONNX Runtime); the same decoder code (:mod:`edgeclip.runtime.decode`) serves both, so
the two differ only in the engine under the encoder and the decoder step. + parameters and GFLOPs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgeclip.models.cost import count_params, flops, latency_ms

Run = Callable[[torch.Tensor, int], object]  # (normalised batch, beam) -> captions


def caption_speed_stage(cfg: dict, out: Path) -> dict[str, Any]:
    """The ``caption-speed`` lab task: a trained ``captioner`` (or ``config`` + ``data``: seeded random weights,
    whose captions all run max_len steps, the worst case), timed in torch and, exported into ``out``, in ONNX
    Runtime at ``threads``."""
    from edgeclip.data.memory import preload
    from edgeclip.lab.tasks import _caption_set

    if cfg.get("captioner"):
        from edgeclip.models.captioner import load_captioner

        model, pp, _ = load_captioner(cfg["captioner"])
        weights = "trained"
    else:
        model, pp = random_captioner(cfg)
        weights = "seeded random (every caption decodes max_len steps: the worst case)"
    cs = _caption_set({**cfg, "max_images": 32})
    x, _, _ = preload([it.record() for it in cs.items], pp.size, progress=False)
    threads, model = int(cfg.get("threads", 2)), model.eval()
    res: dict[str, Any] = {"weights": weights}
    with torch.no_grad():
        res["throughput_cpu"] = caption_throughput(_torch_run(model), x, pp, threads)
        res["throughput_cpu"]["encoder_only_batch1_ms"] = _encoder_ms(model, x, pp, threads)
    if cfg.get("bundle", True):
        res["throughput_bundle"] = {
            **caption_throughput(_bundle_run(model, pp, cfg.get("captioner"), out, threads), x, pp, threads),
            "engine": "ONNX Runtime (the exported captioner bundle, torch-free runtime), fp32",
        }
    res["cost"] = captioner_cost(model)
    res["vocab_size"] = len(model.vocab)
    return res


def _torch_run(model) -> Run:
    from edgeclip.models.decode import generate

    return lambda xb, beam: generate(model, xb, beam=beam)


def _bundle_run(model, pp, checkpoint: str | None, out: Path, threads: int) -> Run:
    """Export into ``out/bundle`` (a random-weight model is saved first) and load the bundle a device would run."""
    from edgeclip.export.caption import CaptionExportConfig, run_caption_export
    from edgeclip.runtime.captioner import CaptionerBundle

    if not checkpoint:
        from edgeclip.models.captioner import save_captioner

        checkpoint = str(out / "random_captioner.pt")
        save_captioner(model, checkpoint, pp)
    run_caption_export(
        CaptionExportConfig(model=checkpoint, out=str(out / "bundle"))
    )  # checked against torch
    bundle = CaptionerBundle(out / "bundle", threads=threads)
    return lambda xb, beam: bundle.caption_arrays(xb.numpy(), beam=beam)


def caption_throughput(run: Run, x_uint8: torch.Tensor, pp, threads: int = 2) -> dict[str, Any]:
    """Images/s of ``run`` for greedy and beam 5 at batch 1 and 32, at ``threads`` torch threads (ONNX Runtime
    sessions carry their own)."""
    from edgeclip.data.memory import normalize

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    res: dict[str, Any] = {"load_average_before": os.getloadavg()}
    try:
        for bs in (1, 32):
            xb = normalize(x_uint8[:bs], pp.mean, pp.std)
            for beam in (1, 5):
                lat = latency_ms(lambda xb=xb, beam=beam: run(xb, beam), warmup=2, reps=20 if bs == 1 else 5)
                res[f"{'greedy' if beam == 1 else 'beam5'}_batch{bs}"] = {
                    "images_per_s": min(bs, len(xb)) / (lat["median_ms"] / 1000),
                    "median_ms_per_batch": lat["median_ms"],
                    "p90_ms_per_batch": lat["p90_ms"],
                    "reps": lat["reps"],
                }
    finally:
        torch.set_num_threads(old)
    res["threads"] = threads
    res["load_average_at_end"] = os.getloadavg()
    return res


def _encoder_ms(model, x_uint8: torch.Tensor, pp, threads: int) -> float:
    from edgeclip.data.memory import normalize

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x1 = normalize(x_uint8[:1], pp.mean, pp.std)
        return latency_ms(lambda: model.encode(x1), warmup=2, reps=20)["median_ms"]
    finally:
        torch.set_num_threads(old)


def random_captioner(cfg: dict):
    """A captioner of ``cfg['config']``'s architecture over the vocabulary of ``cfg['data']``'s train split, with
    seeded random weights; -> (model, preprocessing)."""
    from edgeclip.core.config import load_config
    from edgeclip.data.captions import load_captions
    from edgeclip.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess
    from edgeclip.data.vocab import Vocab
    from edgeclip.models.captioner import build_captioner

    c = load_config(cfg["config"])
    train = load_captions(cfg["data"], cfg.get("images"), c.get("train_split", "train"), cfg.get("splits"))
    vocab = Vocab.build(train.all_captions(), min_count=int(c["vocab"]["min_count"]))
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = build_captioner(vocab, c["model"])
    return model, Preprocess(size=model.cfg.img_size, mean=CLIP_MEAN, std=CLIP_STD)


def captioner_cost(model) -> dict[str, Any]:
    """Parameters and GFLOPs of a captioner: encoder, its backbone, one decoder step."""
    from torch.utils.flop_counter import FlopCounterMode

    size = model.cfg.img_size
    enc = flops(model.encoder, size)
    feats, keys, h, c = model.encode(torch.zeros(1, 3, size, size))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.decoder(torch.tensor([1]), h, c, feats, keys)
    return {
        "params": model.param_counts(),
        "params_m": count_params(model) / 1e6,
        "encoder_gflops": enc / 1e9,
        "encoder_gmacs": enc / 2e9,
        "backbone_gflops": flops(model.student.backbone, size) / 1e9,
        "decoder_step_gflops": fc.get_total_flops() / 1e9,
        "flops_convention": "torch FlopCounterMode: 1 multiply-add = 2 FLOPs (GMACs = GFLOPs / 2)",
        "input_size": size,
    }
