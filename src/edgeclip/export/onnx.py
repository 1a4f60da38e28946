"""torch -> ONNX export with a dynamic batch axis and a parity check against torch."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    input_names: Sequence[str] = ("image",),
    output_names: Sequence[str] = ("embedding",),
    dynamic_batch: bool = True,
    opset: int = 17,
    example_inputs: tuple | None = None,
    dynamic_axes: dict | None = None,
) -> Path:
    """Export ``model`` (eval mode, CPU) to ``path`` atomically; returns the path.

    Uses the TorchScript-based exporter (``dynamo=False``), which is the most robust for CNN
    students and yields graphs ONNX Runtime quantizes well.
    """
    path = Path(path)
    model = model.eval().cpu()
    args = example_inputs if example_inputs is not None else (torch.randn(*input_shape),)
    if dynamic_axes is None and dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n in list(input_names) + list(output_names)}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the tracer's notes on Python values it freezes (transformers' masking code raises a dozen): the parity
        # check after every export is what tells whether the graph is right, so they are not the user's business
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                model,
                args,
                str(tmp),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as e:  # pragma: no cover - exporter failures are model specific
            raise EdgeClipError(f"ONNX export failed: {str(e).splitlines()[0][:300]}") from None
    return path


def onnx_parity(model: nn.Module, onnx_path: str | Path, inputs: torch.Tensor) -> dict[str, float]:
    """Max / mean absolute difference between torch and ONNX Runtime outputs on ``inputs``."""
    from edgeclip.runtime.session import ort_session

    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    with torch.no_grad():
        ref = model.eval().cpu()(inputs).float().numpy()
    got = sess.run(None, {name: inputs.numpy().astype(np.float32)})[0]
    d = np.abs(ref - got)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())}
