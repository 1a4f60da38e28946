"""int8 that is faster, not only smaller: build every int8 variant, time it and check its fidelity on the export
machine, and make the fastest variant that passes the fidelity gate the bundle's default, never one slower than
fp32 (else fp32 is the default). The manifest records every variant's latency and fidelity, so a reader sees why.

Variants are a registry (``INT8_VARIANTS``): name -> how ONNX Runtime quantizes the fp32 graph, with the levers
it sets as data (QDQ vs QOperator, per-channel vs per-tensor weights, u8 vs s8 activations, reduce_range, which op
types stay in float). ``candidates`` picks those for a model family; ``choose`` is the measured choice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.registry import Registry

AGREEMENT_GATE = 0.99  # top-1 agreement with fp32 over the bundle's labels, on held-out images
MIN_SPEEDUP = 1.03  # int8 must beat fp32 by this much at batch 1: a margin over run-to-run timing noise

INT8_VARIANTS: Registry[Callable[..., Path]] = Registry("int8 variant")


# ONNX op types of the float "glue" that int8 kernels handle badly at batch 1: squeeze-excitation and hardswish
# (MobileNetV3, EfficientNet), and channel shuffle / split / concat (ShuffleNetV2).
SE_HARDSWISH_OPS = ("HardSigmoid", "HardSwish", "Sigmoid", "Mul", "GlobalAveragePool")
SHUFFLE_OPS = ("Concat", "Transpose", "Reshape", "Split", "Slice", "Gather")


def _static(**kw):
    def build(fp32: Path, out: Path, batches: list[np.ndarray]) -> Path:
        from edgeclip.quant.ort import quantize_static_onnx

        return quantize_static_onnx(fp32, out, batches, **kw)

    return build


def _dynamic(**kw):
    def build(fp32: Path, out: Path, batches: list[np.ndarray]) -> Path:
        from edgeclip.quant.ort import quantize_dynamic_onnx

        return quantize_dynamic_onnx(fp32, out, **kw)

    return build


def _variant(
    name: str,
    help: str,
    build,
    kind: str = "static",
    families=("cnn", "transformer"),
    auto=None,
    **lever,
):
    """Register one int8 recipe. ``families``: the model families it applies to; ``auto``: those whose default
    export builds it (default: all of ``families``). ``lever``: what it sets (format, weights, activations, float
    ops ...), recorded beside its measurements so the benchmark shows each lever's effect."""
    INT8_VARIANTS.register(
        name, help=help, kind=kind, families=tuple(families), auto=tuple(auto or families), lever=lever
    )(build)


_variant(
    "qdq_per_channel",
    "static QDQ, per-channel weights, u8 activations (ORT's recommended CNN recipe)",
    _static(per_channel=True),
    format="QDQ",
    weights="per-channel s8",
    activations="u8",
)
_variant(
    "qdq_per_tensor",
    "static QDQ, one weight scale per tensor",
    _static(per_channel=False),
    format="QDQ",
    weights="per-tensor s8",
    activations="u8",
)
_variant(
    "qoperator_per_channel",
    "static QOperator (QLinearConv ...), per-channel weights",
    _static(per_channel=True, quant_format="qoperator"),
    format="QOperator",
    weights="per-channel s8",
    activations="u8",
)
_variant(
    "qdq_per_channel_reduce_range",
    "static QDQ, per-channel 7-bit weights (reduce_range: the recipe for x86 CPUs without VNNI)",
    _static(per_channel=True, reduce_range=True),
    format="QDQ",
    weights="per-channel s7",
    activations="u8",
    reduce_range=True,
)
_variant(
    "qdq_per_tensor_s8",
    "static QDQ, per-tensor weights, symmetric s8 activations (S8S8)",
    _static(per_channel=False, activations="s8"),
    format="QDQ",
    weights="per-tensor s8",
    activations="s8 symmetric",
)
_variant(
    "qdq_per_channel_float_se",
    "static QDQ, per-channel; squeeze-excitation and hardswish left in float",
    _static(per_channel=True, float_ops=SE_HARDSWISH_OPS),
    families=("cnn",),
    format="QDQ",
    weights="per-channel s8",
    activations="u8",
    float_ops=list(SE_HARDSWISH_OPS),
)
_variant(
    "qdq_per_channel_float_shuffle",
    "static QDQ, per-channel; channel shuffle, split and concat left in float",
    _static(per_channel=True, float_ops=SHUFFLE_OPS),
    families=("cnn",),
    format="QDQ",
    weights="per-channel s8",
    activations="u8",
    float_ops=list(SHUFFLE_OPS),
)
_variant(
    "dynamic_per_tensor",
    "dynamic int8 (weights int8, activations quantized at run time)",
    _dynamic(per_channel=False),
    kind="dynamic",
    auto=("transformer",),
    format="dynamic",
    weights="per-tensor s8",
    activations="dynamic u8",
)
_variant(
    "dynamic_per_channel",
    "dynamic int8, per-channel weights",
    _dynamic(per_channel=True),
    kind="dynamic",
    auto=("transformer",),
    format="dynamic",
    weights="per-channel s8",
    activations="dynamic u8",
)


def candidates(
    family: str, mode: str = "auto", per_channel: bool = True, names: list[str] | None = None
) -> list[str]:
    """The variants an export builds for a ``family`` (cnn | transformer) model. ``mode``: auto (the variants
    meant for the family: static ones for CNNs, static and dynamic for transformers), static or dynamic (every
    variant of that kind that applies to the family); ``per_channel=False`` keeps per-tensor ones only;
    ``names``: exactly these (checked against the registry)."""
    if names:
        for n in names:
            INT8_VARIANTS.get(n)  # the one-line error with "did you mean"
        return list(dict.fromkeys(names))
    out = []
    for n in INT8_VARIANTS.names():
        m = INT8_VARIANTS.meta(n)
        if family not in (m["auto"] if mode == "auto" else m["families"]):
            continue
        if mode != "auto" and m["kind"] != mode:
            continue
        if not per_channel and "per-channel" in m["lever"]["weights"]:
            continue
        out.append(n)
    if not out:
        raise EdgeClipError(f"no int8 variant for a {family} model with quantization {mode!r}")
    return out


def input_channels(sess) -> int:
    """The channels an ONNX image model takes (3 unless its input says otherwise: a 1-channel or band-set one)."""
    c = sess.get_inputs()[0].shape[1]
    return c if isinstance(c, int) and c > 0 else 3


def time_model(path: Path, size: int, threads: int, batches=(1, 32), reps: int = 20) -> dict[str, float]:
    """Median ms per call at each batch size (after warm-up), ``threads`` ONNX Runtime threads."""
    from edgeclip.models.cost import latency_ms
    from edgeclip.runtime.session import ort_session

    sess = ort_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    out = {}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, input_channels(sess), size, size)).astype(np.float32)
        r = reps if b == 1 else max(3, reps // 4)
        out[f"batch{b}_ms"] = latency_ms(lambda x=x: sess.run(None, {name: x}), warmup=3, reps=r)["median_ms"]
    return out


def choose(
    fp32: dict[str, Any],
    variants: dict[str, dict[str, Any]],
    gate: float = AGREEMENT_GATE,
    min_speedup: float = MIN_SPEEDUP,
) -> dict:
    """The default: the variant with the lowest batch-1 latency among those with top-1 agreement >= ``gate``
    that beat fp32 at batch 1 by at least ``min_speedup`` (a margin over timing noise); fp32 when none does.
    -> {"precision", "variant", "why"}."""

    def fast(v):
        return v["batch1_ms"] * min_speedup < fp32["batch1_ms"]

    ok = {k: v for k, v in variants.items() if v.get("top1_agreement", 0.0) >= gate and fast(v)}
    if not ok:
        slower = [k for k, v in variants.items() if not fast(v)]
        failed = [k for k, v in variants.items() if v.get("top1_agreement", 0.0) < gate]
        return {
            "precision": "fp32",
            "variant": None,
            "why": f"no int8 variant is both >= {min_speedup:.2f}x faster than fp32 and within the fidelity gate"
            + (f" (not faster: {', '.join(slower)}" if slower else " (")
            + (f"; below the gate: {', '.join(failed)})" if failed else ")"),
        }
    best = min(ok, key=lambda k: ok[k]["batch1_ms"])
    return {
        "precision": "int8",
        "variant": best,
        "why": f"fastest variant within the gate: {fp32['batch1_ms'] / ok[best]['batch1_ms']:.2f}x fp32 at batch 1",
    }


def fallback_int8(
    fp32: dict[str, Any], variants: dict[str, dict[str, Any]], min_speedup: float = MIN_SPEEDUP
) -> str:
    """The int8 file a bundle keeps when ``choose`` picked fp32 (for ``--precision int8``): the most faithful
    variant among those that beat fp32 (ties: the fastest); only when none beats fp32, the most faithful of all.
    An int8 model that is slower than fp32 has no use on the device."""
    fast = {k: v for k, v in variants.items() if v["batch1_ms"] * min_speedup < fp32["batch1_ms"]}
    pool = fast or variants
    return max(pool, key=lambda k: (pool[k].get("top1_agreement", 0.0), -pool[k]["batch1_ms"]))
