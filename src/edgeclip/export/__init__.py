"""Export: torch -> ONNX (fp32), and edge bundles (see edgeclip.export.bundle)."""

from edgeclip.export.bundle import export_bundle
from edgeclip.export.onnx import export_onnx, onnx_parity

__all__ = ["export_bundle", "export_onnx", "onnx_parity"]
