"""The one model factory (timm / open_clip style): build a model by name or config, load any checkpoint.

    from edgeclip.models.factory import create_model, load_model
    st = create_model("shufflenet_v2_x1_0", embed_dim=384, img_size=224)      # a student
    cap = create_model({"kind": "captioner", "vocab": vocab, "cfg": {...}})    # any registered model kind
    model, preprocess, info = load_model("runs/student/student.pt")           # any edgeclip checkpoint

Checkpoint kinds are a registry keyed by the ``format`` each checkpoint records (``CHECKPOINT_KINDS``), model
kinds a registry keyed by name (``MODEL_KINDS``); the kind modules register themselves when imported here.
Teachers load by spec through ``edgeclip.models.teachers.load_teacher`` (the kinds declare their prefixes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeclip.core.checkpoint import read_checkpoint
from edgeclip.models import captioner, pair, student  # noqa: F401  (they register their kinds)
from edgeclip.models.base import CHECKPOINT_KINDS, MODEL_KINDS, Loaded
from edgeclip.models.teachers import reference  # noqa: F401


@CHECKPOINT_KINDS.register(
    student.STUDENT_FORMAT, help="student (backbone + projection head); pair students too"
)
def _student_kind(ck: dict, path: Path) -> Loaded:
    """A pair student is a student checkpoint whose extra holds its modality specs and adapters."""
    loaded = student.student_from_checkpoint(ck, path)
    return pair.pair_from_student(loaded, path) if (ck.get("extra") or {}).get("edgevl") else loaded


KIND_FORMATS = {
    "student": student.STUDENT_FORMAT,
    "pair-student": student.STUDENT_FORMAT,
    "captioner": captioner.CAPTIONER_FORMAT,
    "teacher-tower": reference.REFERENCE_FORMAT,
}


def create_model(name_or_cfg: str | dict[str, Any], **kwargs: Any):
    """A new model: ``create_model("resnet18", embed_dim=512)`` builds a student (the default kind);
    ``create_model({"kind": "captioner", ...})`` any registered kind (``MODEL_KINDS``) from its config."""
    cfg = {"arch": name_or_cfg} if isinstance(name_or_cfg, str) else dict(name_or_cfg)
    cfg.update(kwargs)
    kind = cfg.pop("kind", "student")
    return MODEL_KINDS.get(kind)(**cfg)


def load_model(path: str | Path, map_location: str = "cpu", kind: str | None = None) -> Loaded:
    """Any edgeclip checkpoint -> ``Loaded(model, preprocess, info, kind)``, dispatched on its recorded format.

    ``kind`` ("student", "pair-student", "captioner", "teacher-tower") insists on one kind; a checkpoint of
    another kind is one CheckpointError line. ``kind="student"`` on a pair student gives its RGB student.
    """
    if kind is not None and kind not in KIND_FORMATS:
        MODEL_KINDS.get(kind)  # the "did you mean" error
    fmt = KIND_FORMATS.get(kind) if kind else None
    ck = read_checkpoint(path, fmt, kind or "edgeclip", map_location)
    if kind == "student":
        return student.student_from_checkpoint(ck, path)
    loaded = CHECKPOINT_KINDS.get(ck["format"])(ck, Path(path))
    if kind == "pair-student" and loaded.kind != "pair-student":
        return pair.pair_from_student(loaded, path)  # the one-line "no modality information" error
    return loaded


__all__ = ["CHECKPOINT_KINDS", "MODEL_KINDS", "Loaded", "create_model", "load_model"]
