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
# Each kind declares the spec prefixes it answers to (``strip``: the prefix is removed before loading) and,
# for a bare path, how to recognise its files (``sniff``: Path -> spec or None). resolve_kind reads only these.


def _open_clip_dir(p: Path) -> str | None:
    return f"local-dir:{p}" if p.is_dir() and (p / "open_clip_config.json").is_file() else None


def _hf_dir(p: Path) -> str | None:
    return f"hf:{p}" if p.is_dir() and (p / "config.json").is_file() else None


def _reference_file(p: Path) -> str | None:
    return f"reference-lit:{p}" if p.is_file() else None


@TEACHERS.register(
    "open_clip",
    help="open_clip: ARCH:TAG, ARCH:/weights/file, local-dir:/folder, hf-hub:org/repo",
    prefixes=("local-dir:", "hf-hub:"),
    strip=("open_clip:",),
    sniff=_open_clip_dir,
    fallback=True,
)
def _open_clip(spec: str, device: str = "cpu") -> Teacher:
    from edgeclip.models.teachers.open_clip import load_open_clip

    return load_open_clip(spec, device)


@TEACHERS.register(
    "hf", help="Hugging Face CLIP: hf:/folder or hf:org/name", prefixes=("hf:",), sniff=_hf_dir
)
def _hf(spec: str, device: str = "cpu") -> Teacher:
    from edgeclip.models.teachers.hf_clip import load_hf_clip

    return load_hf_clip(spec, device)


@TEACHERS.register(
    "reference-lit",
    help="offline reference teacher: reference-lit:/path/teacher.pt",
    prefixes=("reference-lit:",),
    sniff=_reference_file,
)
def _reference(spec: str, device: str = "cpu") -> Teacher:
    from edgeclip.models.teachers.reference import load_reference

    return load_reference(spec, device)


def resolve_kind(spec: str) -> tuple[str, str]:
    """Map a user spec to (teacher kind, spec for that kind's loader), by the prefixes the kinds declare."""
    if not spec or not spec.strip():
        raise EdgeClipError("empty teacher spec")
    kinds = TEACHERS.names()
    for kind in kinds:
        meta = TEACHERS.meta(kind)
        for pre in meta.get("strip", ()):
            if spec.startswith(pre):
                return kind, spec[len(pre) :]
        if spec.startswith(tuple(meta.get("prefixes", ()))):
            return kind, spec
    for kind in kinds:
        sniff = TEACHERS.meta(kind).get("sniff")
        found = sniff(Path(spec)) if sniff else None
        if found:
            return kind, found
    fallback = [k for k in kinds if TEACHERS.meta(k).get("fallback")]
    if ":" in spec and fallback:
        return fallback[0], spec
    raise EdgeClipError(
        f"cannot tell how to load teacher {spec!r}: use ARCH:TAG, ARCH:/file, local-dir:/folder, "
        "hf:/folder or reference-lit:/file.pt"
    )


def load_teacher(spec: str, device: str = "cpu") -> Teacher:
    """Load any teacher by spec; returns a :class:`Teacher` in eval mode on ``device``."""
    kind, s = resolve_kind(spec)
    t = TEACHERS.get(kind)(s, device=device)
    return t.eval()


def check_same_teacher(recorded: dict | None, teacher: Teacher, what: str) -> None:
    """One rule for every artefact (student, cache, manifest, bundle): it is used only with the teacher it
    records, by weights id; anything else is one line."""
    from edgeclip.core.lineage import check_teacher

    check_teacher(recorded, {"id": teacher.id}, what)


def resolve_teacher_spec(recorded: dict | None, what: str, near: str | Path | None = None) -> str:
    """The spec to load an artefact's teacher from, when none is given: the recorded spec while what it names is
    there, else the spec of the same teacher id in a models index (:mod:`edgeclip.core.models_index`), else one
    line naming ``--teacher`` and the id that is needed."""
    from edgeclip.core.models_index import ENV, find_in_indexes, local_path

    recorded = recorded or {}
    spec, tid = recorded.get("spec"), recorded.get("id")
    if spec:
        p = local_path(str(spec))
        if p is None or p.exists():
            return str(spec)
    found = find_in_indexes(str(tid), near=near) if tid else None
    if found:
        return found
    if not tid:
        raise EdgeClipError(f"{what} records no teacher: pass --teacher SPEC")
    gone = f"its recorded teacher {spec} is not there" if spec else "it records no teacher spec"
    raise EdgeClipError(
        f"{what} needs teacher {tid}: {gone}, and no models index (models/index.json, ${ENV}) lists that id; "
        "pass --teacher SPEC"
    )


def teacher_of(
    info: dict,
    what: str,
    teacher: Teacher | str | None = None,
    device: str = "cpu",
    embed_dim: int | None = None,
    near: str | Path | None = None,
) -> Teacher:
    """The teacher an artefact's ``info`` records (or the one given, as a Teacher or a spec), checked to be
    the same weights, and to embed in ``embed_dim`` dimensions when given. Without one given, the teacher is
    found by :func:`resolve_teacher_spec` (``near``: the artefact's path, whose folder may hold an index)."""
    recorded = info.get("teacher") or {}
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(teacher or resolve_teacher_spec(recorded, what, near), device=device)
    check_same_teacher(recorded, teacher, what)
    if embed_dim is not None and teacher.embed_dim != embed_dim:
        raise EdgeClipError(
            f"{what} gives {embed_dim}-d embeddings, the teacher's text is {teacher.embed_dim}-d"
        )
    return teacher


__all__ = [
    "Teacher",
    "TEACHERS",
    "check_same_teacher",
    "load_teacher",
    "resolve_kind",
    "resolve_teacher_spec",
    "teacher_of",
]
