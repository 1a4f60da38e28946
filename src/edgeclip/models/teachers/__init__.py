"""Teachers: one registry, one call.

from edgeclip.models.teachers import load_teacher
t = load_teacher("ViT-B-32:openai")            # open_clip tag (needs the hub)
t = load_teacher("ViT-B-32:/models/vitb32.pt")  # open_clip local weights
t = load_teacher("local-dir:/models/my_clip")   # open_clip folder
t = load_teacher("hf:/models/clip-vit-base")    # Hugging Face CLIP folder
t = load_teacher("reference-lit:runs/teacher/teacher.pt")
emb = t.encode_image(t.preprocess(img)[None]); txt = t.encode_text(["a photo of a cat"])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.registry import Registry
from edgeclip.models.teachers.base import Teacher

TEACHERS: Registry[Callable[..., Teacher]] = Registry("teacher kind")


@TEACHERS.register(
    "open_clip", help="open_clip: ARCH:TAG, ARCH:/weights/file, local-dir:/folder, hf-hub:org/repo"
)
def _open_clip(spec: str, device: str = "cpu") -> Teacher:
    from edgeclip.models.teachers.open_clip import load_open_clip

    return load_open_clip(spec, device)


@TEACHERS.register("hf", help="Hugging Face CLIP: hf:/folder or hf:org/name")
def _hf(spec: str, device: str = "cpu") -> Teacher:
    from edgeclip.models.teachers.hf_clip import load_hf_clip

    return load_hf_clip(spec, device)


@TEACHERS.register("reference-lit", help="offline reference teacher: reference-lit:/path/teacher.pt")
def _reference(spec: str, device: str = "cpu") -> Teacher:
    from edgeclip.models.teachers.reference import load_reference

    return load_reference(spec, device)


def resolve_kind(spec: str) -> tuple[str, str]:
    """Map a user spec to (registry kind, spec for that loader)."""
    if not spec or not spec.strip():
        raise EdgeClipError("empty teacher spec")
    for kind in ("open_clip", "hf", "reference-lit"):
        if spec.startswith(kind + ":"):
            return kind, (spec[len(kind) + 1 :] if kind == "open_clip" else spec)
    if spec.startswith(("local-dir:", "hf-hub:")):
        return "open_clip", spec
    p = Path(spec)
    if p.is_dir() and (p / "open_clip_config.json").is_file():
        return "open_clip", f"local-dir:{p}"
    if p.is_dir() and (p / "config.json").is_file():
        return "hf", f"hf:{p}"
    if p.is_file():
        return "reference-lit", f"reference-lit:{p}"
    if ":" in spec:
        return "open_clip", spec
    raise EdgeClipError(
        f"cannot tell how to load teacher {spec!r}: use ARCH:TAG, ARCH:/file, local-dir:/folder, "
        "hf:/folder or reference-lit:/file.pt"
    )


def load_teacher(spec: str, device: str = "cpu") -> Teacher:
    """Load any teacher by spec; returns a :class:`Teacher` in eval mode on ``device``."""
    kind, s = resolve_kind(spec)
    t = TEACHERS.get(kind)(s, device=device)
    return t.eval()


__all__ = ["Teacher", "TEACHERS", "load_teacher", "resolve_kind"]
