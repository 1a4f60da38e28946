"""The one ONNX Runtime session factory: every ONNX model edgeclip runs (bundles, exported students and
captioners, quantized pair students, benchmarks, parity checks) is opened here, with the same options."""

from __future__ import annotations

import os

from edgeclip.core.errors import EdgeClipError


class OnnxLoadError(EdgeClipError):
    """An ONNX file that ONNX Runtime cannot open."""


PROVIDERS_ENV = "EDGECLIP_ORT_PROVIDERS"


def providers() -> list[str]:
    """ONNX Runtime execution providers, in order: ``$EDGECLIP_ORT_PROVIDERS`` (comma-separated, e.g.
    ``TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider`` on a Jetson), else the CPU alone. One
    this ONNX Runtime build lacks is one clear error, never a silent fall back."""
    import onnxruntime as ort

    asked = [p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    if not asked:
        return ["CPUExecutionProvider"]
    have = ort.get_available_providers()
    missing = [p for p in asked if p not in have]
    if missing:
        raise EdgeClipError(
            f"${PROVIDERS_ENV} asks for {', '.join(missing)}, which this ONNX Runtime build lacks "
            f"(it has: {', '.join(have)})"
        )
    return asked


def ort_session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime session (on the CPU unless ``$EDGECLIP_ORT_PROVIDERS`` says otherwise). ``threads``:
    intra-op threads (None: ONNX Runtime's default, every core); ``optimize``: full graph optimisation (off for
    sessions that only read a graph's input names)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise EdgeClipError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    if not os.path.isfile(path):
        raise OnnxLoadError(f"ONNX model not found: {path}")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers())
    except Exception as e:
        raise OnnxLoadError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:300]}") from None


def run_batched(session, x, batch_size: int = 64):
    """Outputs of ``session`` (first output) on ``x`` (N, ...) float32, ``batch_size`` rows at a time."""
    import numpy as np

    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    )
