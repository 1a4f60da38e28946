"""Quantization: ONNX Runtime post-training int8 (static QDQ, dynamic), and QAT (edgeclip.quant.qat)."""

from edgeclip.quant.ort import quantize_dynamic_onnx, quantize_static_onnx

__all__ = ["quantize_static_onnx", "quantize_dynamic_onnx"]
