"""Export: torch -> ONNX (fp32), and edge bundles (see edgeclip.export.bundle)."""

from .onnx import export_onnx

__all__ = ["export_onnx"]
