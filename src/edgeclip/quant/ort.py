"""ONNX Runtime int8 quantization: static QDQ (per-channel, calibrated on real images) and dynamic."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path
from edgeclip.runtime.session import ort_session

WEIGHT_BITS = (4, 8)


def check_weight_bits(bits: int) -> int:
    """The weight widths both QAT and ONNX Runtime PTQ support; anything else is one line."""
    if bits not in WEIGHT_BITS:
        raise EdgeClipError(f"weight_bits must be one of {WEIGHT_BITS}, got {bits!r}")
    return bits


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI int8 dot products (without them, u8 x s8 int8 kernels can saturate)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:  # not Linux: assume a modern CPU
        return True
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")) or "avx2" not in flags


def resolve_reduce_range(reduce_range, weight_bits: int = 8) -> bool:
    """``"auto"``: reduce the range (torchao/ORT's advice) when the CPU that runs the int8 model lacks VNNI.
    Always False for 4-bit weights: the 7-bit guard is for int8 x uint8 products, which 4-bit weights cannot
    saturate."""
    if check_weight_bits(weight_bits) != 8:
        return False
    return (not cpu_has_vnni()) if reduce_range in ("auto", None) else bool(reduce_range)


class _Reader:
    """CalibrationDataReader over an iterable of (B,C,H,W) float32 arrays."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.name = input_name
        self.it = iter(batches)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {self.name: np.ascontiguousarray(b, dtype=np.float32)}

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize_static_onnx(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: Iterable[np.ndarray],
    per_channel: bool = True,
    method: str = "minmax",
    preprocess: bool = True,
    reduce_range="auto",
    weight_bits: int = 8,
    quant_format: str = "qdq",
    activations: str = "u8",
    float_ops: tuple[str, ...] = (),
    extra_options: dict | None = None,
) -> Path:
    """Static int8 quantization (ONNX Runtime), activations calibrated on ``calibration`` batches.
    ``quant_format``: qdq (QuantizeLinear/DequantizeLinear pairs, fused by ORT) | qoperator (QLinearConv, ...).

    ``method``: minmax | entropy | percentile. The graph is first run through ORT's quantization
    pre-processing (shape inference + optimisation), as ORT recommends.
    ``reduce_range`` (auto | True | False; auto = when this CPU lacks VNNI): 7-bit weights,
    which avoids the u8 x s8 saturation of ORT's int8 kernels on x86 CPUs without VNNI.
    ``weight_bits=4``: W4A8, int4 weights (ONNX Runtime's QInt4; com.microsoft Q/DQ below opset 21).
    ``activations``: u8 (asymmetric uint8, ORT's x86 default) | s8 (symmetric int8, the S8S8 recipe).
    ``float_ops``: ONNX op types left in float (e.g. HardSigmoid, Mul for squeeze-excitation / hardswish):
    only the other op types are quantized. ``extra_options``: passed to ORT's quantizer as they are.
    """
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if not fp32_path.is_file():
        raise EdgeClipError(f"ONNX model not found: {fp32_path}")
    wtype = QuantType.QInt8 if check_weight_bits(weight_bits) == 8 else QuantType.QInt4
    src, tmp_pre = _pre_processed(fp32_path) if preprocess else (fp32_path, None)
    input_name = ort_session(src, optimize=False).get_inputs()[0].name
    meth = _check_static_options(method, quant_format, activations)
    batches = list(calibration)
    if not batches:
        raise EdgeClipError("static quantization needs calibration images (got none)")
    try:
        with atomic_path(int8_path) as tmp, _quiet_root_logger():
            quantize_static(
                str(src),
                str(tmp),
                _Reader(input_name, batches),
                quant_format=QuantFormat.QOperator if quant_format == "qoperator" else QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                weight_type=wtype,
                calibrate_method=meth,
                reduce_range=resolve_reduce_range(reduce_range, weight_bits),
                op_types_to_quantize=_quantized_ops(src, float_ops) if float_ops else None,
                extra_options={
                    **({"ActivationSymmetric": True} if activations == "s8" else {}),
                    **(extra_options or {}),
                },
            )
    finally:
        if tmp_pre is not None and tmp_pre.exists():
            tmp_pre.unlink()
    return int8_path


def _check_static_options(method: str, quant_format: str, activations: str):
    """ORT's calibration method for ``method``; unknown settings are one line each."""
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
    if method not in methods:
        raise EdgeClipError(f"unknown calibration method {method!r} (minmax, entropy, percentile)")
    if quant_format not in ("qdq", "qoperator"):
        raise EdgeClipError(f"unknown quantization format {quant_format!r} (qdq, qoperator)")
    if activations not in ("u8", "s8"):
        raise EdgeClipError(f"unknown activation type {activations!r} (u8, s8)")
    return getattr(CalibrationMethod, methods[method])


def _pre_processed(fp32_path: Path) -> tuple[Path, Path | None]:
    """ORT's quantization pre-processing (shape inference + optimisation), as ORT recommends; -> (the model to
    quantize, the temporary file to remove, or None when pre-processing failed and the original is used)."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        tmp_pre = fp32_path.with_suffix(".preproc.onnx")
        quant_pre_process(str(fp32_path), str(tmp_pre), skip_symbolic_shape=True)
        return tmp_pre, tmp_pre
    except Exception:
        return fp32_path, None


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantizer logs a root-logger warning per tensor it cannot type (hundreds for ShuffleNet's shape
    arithmetic, none of them actionable); keep them out of the user's terminal while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantized_ops(path: Path, float_ops: tuple[str, ...]) -> list[str]:
    """The op types of the graph at ``path`` except ``float_ops`` (those stay in float)."""
    import onnx

    return sorted({n.op_type for n in onnx.load(str(path)).graph.node} - set(float_ops))


def quantize_dynamic_onnx(fp32_path: str | Path, int8_path: str | Path, per_channel: bool = False) -> Path:
    """Dynamic int8 (weights int8, activations quantized at run time): for transformer students."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if not fp32_path.is_file():
        raise EdgeClipError(f"ONNX model not found: {fp32_path}")
    with atomic_path(int8_path) as tmp, _quiet_root_logger():  # its "consider pre-processing" note, too
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)
    return int8_path
