"""The phone path: the student as an ExecuTorch program (``.pte``) with the XNNPACK delegate, fp32 and int8.

int8 is PyTorch 2's export quantization (PT2E) with ExecuTorch's ``XNNPACKQuantizer`` (symmetric int8, per-channel
weights), calibrated on the same images as the ONNX int8 model. Each program is checked against the torch student
on the hold-out images (run through ExecuTorch's own runtime) and timed there at batch 1; a program is batch 1 at
the bundle's input size, the shape a phone app feeds. ExecuTorch is an optional extra (``pip install
edgeclip[executorch]``); without it ``--format executorch`` is one line saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path

PTE_FP32 = "model.fp32.pte"
PTE_INT8 = "model.int8.pte"


def executorch_missing() -> str | None:
    """None when ExecuTorch (exporter, XNNPACK backend and runtime) imports here; else why not, in one line."""
    try:
        import executorch  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
        from executorch.runtime import Runtime  # noqa: F401
    except Exception as e:  # ImportError, or a build that does not match this torch
        return f"ExecuTorch is not usable here ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def _lower(exported) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def to_program(model, size: int, calibration: np.ndarray | None = None) -> bytes:
    """A batch-1 ``.pte`` of ``model`` (eval mode) at ``size`` px: fp32, or int8 (PT2E + XNNPACKQuantizer,
    per-channel) when ``calibration`` images (N,3,S,S) are given."""
    import torch
    from torch.export import export

    x = torch.zeros(1, 3, size, size)
    model = model.eval()
    with torch.no_grad():
        if calibration is None:
            return _lower(export(model, (x,)))
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        q = XNNPACKQuantizer()
        q.set_global(get_symmetric_quantization_config(is_per_channel=True))
        gm = prepare_pt2e(export(model, (x,)).module(), q)
        for img in calibration:
            gm(torch.from_numpy(np.ascontiguousarray(img[None], dtype=np.float32)))
        return _lower(export(convert_pt2e(gm), (x,)))


class Program:
    """A ``.pte`` loaded by ExecuTorch's runtime: ``run(x)`` maps (N,3,S,S) float32 to (N,D), one image a call."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from executorch.runtime import Runtime

        if threads:
            try:
                from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

                _unsafe_reset_threadpool(int(threads))
            except Exception:  # older builds: the runtime's default pool
                pass
        try:
            self.method = Runtime.get().load_program(str(path)).load_method("forward")
        except Exception as e:
            raise EdgeClipError(f"ExecuTorch cannot load {path}: {str(e).splitlines()[0][:200]}") from None

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        return np.concatenate(
            [
                self.method.execute([torch.from_numpy(np.ascontiguousarray(x[i : i + 1]))])[0].numpy()
                for i in range(len(x))
            ]
        )

    def latency_ms(self, size: int, reps: int = 30) -> float:
        from edgeclip.models.cost import latency_ms

        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        return latency_ms(lambda: self.run(x), warmup=5, reps=reps)["median_ms"]


def _fidelity(ref: np.ndarray, got: np.ndarray, text: np.ndarray) -> dict[str, float]:
    from edgeclip.zeroshot.scores import topk, unit

    a, b = unit(ref), unit(got)
    cos = (a * b).sum(1)
    return {
        "max_abs_diff": float(np.abs(ref - got).max()),
        "top1_agreement": float((topk(a, text, 1) == topk(b, text, 1)).mean()),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "n": int(len(ref)),
    }


def export_executorch(
    model,
    folder: Path,
    size: int,
    x_cal: np.ndarray,
    x_hold: np.ndarray,
    text: np.ndarray,
    threads: int = 2,
    log: Callable[[str], None] = lambda s: None,
    calib_images: int = 32,
    int8: bool = True,
) -> dict[str, Any]:
    """model.fp32.pte and model.int8.pte into ``folder``, each checked against the torch ``model`` on ``x_hold``
    (fp32: max abs diff and cosine; int8: top-1 agreement over ``text`` and cosine) and timed at batch 1
    -> the manifest's ``executorch`` entry. ``int8=False``: the fp32 program only (no calibration images)."""
    import torch

    why = executorch_missing()
    if why:
        raise EdgeClipError(f"{why}; install it with: pip install 'edgeclip[executorch]'")
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x_hold)).numpy()
    out: dict[str, Any] = {
        "delegate": "XNNPACK",
        "input": [1, 3, size, size],
        "files": {},
        "parity": {},
        "latency_ms": {},
        "threads": threads,
    }
    programs = [("fp32", PTE_FP32, None)] + ([("int8", PTE_INT8, x_cal[:calib_images])] if int8 else [])
    for precision, name, cal in programs:
        with atomic_path(folder / name) as tmp:
            Path(tmp).write_bytes(to_program(model, size, cal))
        prog = Program(folder / name, threads=threads)
        fid = _fidelity(ref, prog.run(x_hold), text)
        out["files"][precision] = name
        out["parity"][precision] = fid
        out["latency_ms"][precision] = prog.latency_ms(size)
        log(
            f"executorch {precision}: {out['latency_ms'][precision]:.2f} ms at batch 1, vs torch: top-1 agreement "
            f"{fid['top1_agreement']:.3f}, min cosine {fid['min_cosine']:.4f}, max abs diff {fid['max_abs_diff']:.2e}"
        )
    if out["parity"]["fp32"]["min_cosine"] < 0.999:
        raise EdgeClipError(
            f"the ExecuTorch fp32 program differs from torch (min cosine {out['parity']['fp32']['min_cosine']:.4f}"
            " < 0.999); not bundling it"
        )
    if "int8" in out["parity"]:
        out["quantization"] = {
            "method": "PT2E static",
            "quantizer": "XNNPACKQuantizer symmetric, per-channel weights",
            "calibration_images": int(min(calib_images, len(x_cal))),
        }
    return out
