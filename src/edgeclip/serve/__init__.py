"""``edgeclip serve BUNDLE``: a FastAPI service and web page over the torch-free bundle runtime."""

from .app import create_app

__all__ = ["create_app"]
