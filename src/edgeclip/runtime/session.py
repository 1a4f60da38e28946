"""The one ONNX Runtime session factory: every ONNX model edgeclip runs (bundles, exported students and
captioners, quantized pair students, benchmarks, parity checks) is opened here, with the same options."""

from __future__ import annotations

import os

from edgeclip.core.errors import EdgeClipError


class OnnxLoadError(EdgeClipError):
    """An ONNX file that ONNX Runtime cannot open."""


def ort_session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session. ``threads``: intra-op threads (None: ONNX Runtime's default, every core);
    ``optimize``: full graph optimisation (off for sessions that only read a graph's input names)."""
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
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxLoadError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:300]}") from None


def run_batched(session, x, batch_size: int = 64):
    """Outputs of ``session`` (first output) on ``x`` (N, ...) float32, ``batch_size`` rows at a time."""
    import numpy as np

    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    )
