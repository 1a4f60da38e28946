"""int8 that is faster, not only smaller: build every int8 variant, time it and check its fidelity on the export
machine, and make the fastest variant that passes the fidelity gate the bundle's default, never one slower than
fp32 (else fp32 is the default). The manifest records every variant's latency and fidelity, so a reader sees why.

Variants are a registry (``INT8_VARIANTS``): name -> how ONNX Runtime quantizes the fp32 graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.registry import Registry

AGREEMENT_GATE = 0.99  # top-1 agreement with fp32 over the bundle's labels, on held-out images

INT8_VARIANTS: Registry[Callable[..., Path]] = Registry("int8 variant")


def _static(**kw):
    def build(fp32: Path, out: Path, batches: list[np.ndarray]) -> Path:
        from edgeclip.quant.ort import quantize_static_onnx

        return quantize_static_onnx(fp32, out, batches, **kw)

    return build


INT8_VARIANTS.register(
    "qdq_per_channel", help="static QDQ, per-channel weights (ORT's recommended CNN recipe)"
)(_static(per_channel=True))
INT8_VARIANTS.register("qdq_per_tensor", help="static QDQ, one weight scale per tensor")(
    _static(per_channel=False)
)
INT8_VARIANTS.register(
    "qoperator_per_channel", help="static QOperator (QLinearConv ...), per-channel weights"
)(_static(per_channel=True, quant_format="qoperator"))


def time_model(path: Path, size: int, threads: int, batches=(1, 32), reps: int = 20) -> dict[str, float]:
    """Median ms per call at each batch size (after warm-up), ``threads`` ONNX Runtime threads."""
    from edgeclip.models.stats import latency_ms
    from edgeclip.runtime.session import ort_session

    sess = ort_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    out = {}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
        r = reps if b == 1 else max(3, reps // 4)
        out[f"batch{b}_ms"] = latency_ms(lambda x=x: sess.run(None, {name: x}), warmup=3, reps=r)["median_ms"]
    return out


def choose(fp32: dict[str, Any], variants: dict[str, dict[str, Any]], gate: float = AGREEMENT_GATE) -> dict:
    """The default: the variant with the lowest batch-1 latency among those with top-1 agreement >= ``gate``
    that are faster than fp32 at batch 1; fp32 when none is. -> {"precision", "variant", "why"}."""
    ok = {
        k: v
        for k, v in variants.items()
        if v.get("top1_agreement", 0.0) >= gate and v["batch1_ms"] < fp32["batch1_ms"]
    }
    if not ok:
        slower = [k for k, v in variants.items() if v["batch1_ms"] >= fp32["batch1_ms"]]
        failed = [k for k, v in variants.items() if v.get("top1_agreement", 0.0) < gate]
        return {
            "precision": "fp32",
            "variant": None,
            "why": "no int8 variant is both faster than fp32 and within the fidelity gate"
            + (f" (slower: {', '.join(slower)}" if slower else " (")
            + (f"; below the gate: {', '.join(failed)})" if failed else ")"),
        }
    best = min(ok, key=lambda k: ok[k]["batch1_ms"])
    return {
        "precision": "int8",
        "variant": best,
        "why": f"fastest variant within the gate: {fp32['batch1_ms'] / ok[best]['batch1_ms']:.2f}x fp32 at batch 1",
    }
