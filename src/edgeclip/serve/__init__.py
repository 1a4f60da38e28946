"""``edgeclip serve BUNDLE``: a FastAPI service and web page over the torch-free bundle runtime."""

from edgeclip.serve.app import create_app

__all__ = ["create_app"]
