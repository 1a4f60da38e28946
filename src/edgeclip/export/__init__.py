"""Export: torch -> ONNX (fp32), and edge bundles (see edgeclip.export.bundle)."""

from .bundle import export_bundle
from .onnx import export_onnx, onnx_parity

__all__ = ["export_bundle", "export_onnx", "onnx_parity"]
