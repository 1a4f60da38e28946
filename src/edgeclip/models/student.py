"""The Student model (backbone + MLP projection head) and its checkpoint format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.core.checkpoint import read_checkpoint, save_checkpoint
from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.data.transforms import Preprocess
from edgeclip.models.backbones import create_backbone, list_backbones
from edgeclip.models.base import MODEL_KINDS, Loaded, load_weights

STUDENT_FORMAT = "edgeclip-student/1"


class ProjectionHead(nn.Module):
    """MLP projection head (Clip4Retrofit): Linear -> GELU -> Dropout -> Linear. ``hidden=0`` means linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        if hidden and hidden > 0:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
            )
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Student(nn.Module):
    """Image -> embedding in the teacher's space. ``grid(x)`` gives the spatial features."""

    def __init__(
        self,
        arch: str,
        embed_dim: int,
        head_hidden: int = 1024,
        head_dropout: float = 0.0,
        small_input: bool = False,
        keep_grid: bool = False,
        img_size: int = 224,
        in_chans: int = 3,
        weights: str | None = None,
        stem_stride: int = 0,
        model_args: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.config: dict[str, Any] = dict(
            arch=arch,
            embed_dim=embed_dim,
            head_hidden=head_hidden,
            head_dropout=head_dropout,
            small_input=small_input,
            keep_grid=keep_grid,
            img_size=img_size,
            in_chans=in_chans,
        )
        if stem_stride:  # only recorded when set, so older checkpoints and configs stay identical
            self.config["stem_stride"] = stem_stride
        if model_args:  # timm constructor arguments (patch_size, depth, ...), recorded when set
            self.config["model_args"] = dict(model_args)
        self.arch = arch
        self.embed_dim = embed_dim
        self.keep_grid = keep_grid
        self.input_adapter: nn.Module = nn.Identity() if in_chans == 3 else nn.Conv2d(in_chans, 3, 1)
        self.backbone = create_backbone(
            arch,
            small_input=small_input,
            img_size=img_size,
            weights=weights,
            stem_stride=stem_stride,
            model_args=model_args,
        )
        self.feat_dim = self.backbone.out_dim
        self.head = ProjectionHead(self.feat_dim, embed_dim, head_hidden, head_dropout)

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial feature grid (B, C, H, W) before pooling."""
        return self.backbone(self.input_adapter(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))

    def forward_with_grid(self, x: torch.Tensor):
        g = self.grid(x)
        return self.head(g.mean(dim=(2, 3))), g

    def dense(self, grid: torch.Tensor, size: int) -> torch.Tensor:
        """The head applied at every location of a feature ``grid`` (B, C, H, W) pooled to ``size`` x ``size``:
        (B, size*size, D) L2-normalised embeddings, a map in the teacher's space (MaskCLIP's dense reading of a
        pooled head), what the captioner's spatial term aligns."""
        g = F.adaptive_avg_pool2d(grid, size)
        B, C = g.shape[:2]
        e = self.head(g.permute(0, 2, 3, 1).reshape(-1, C)).reshape(B, size * size, -1)
        return F.normalize(e, dim=-1)


def create_student(arch: str, embed_dim: int, **kw) -> Student:
    """Build a student by registry name (``shufflenet_v2_x1_0``, ``timm:vit_small_patch16_224``, ...)."""
    if not isinstance(embed_dim, int) or embed_dim <= 0:
        raise EdgeClipError(f"embed_dim must be a positive integer, got {embed_dim!r}")
    import difflib
    import inspect

    known = [
        k for k in inspect.signature(Student.__init__).parameters if k not in ("self", "arch", "embed_dim")
    ]
    for k in kw:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise EdgeClipError(f"unknown student option {k!r}.{hint} Known: {', '.join(known)}")
    return Student(arch, embed_dim, **kw)


def list_students():
    return list_backbones()


def save_student(
    student: Student,
    path: str | Path,
    preprocess: Preprocess,
    teacher: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Save atomically with everything needed to rebuild it (arch, preprocessing, teacher identity)."""
    save_checkpoint(
        path,
        STUDENT_FORMAT,
        student.state_dict(),
        config=student.config,
        preprocess=preprocess.to_dict(),
        teacher=teacher,
        extra=extra or {},
    )


def init_student_config(path: str | Path, teacher_id: str, student_cfg: dict[str, Any]):
    """Start from a student checkpoint: -> (student config, the checkpoint's Student).

    The architecture comes from the checkpoint; keys given in ``student_cfg`` must agree with it, and the
    checkpoint must have been distilled from the same teacher (one clear error otherwise).
    """
    init, _, ck = load_student(path)
    from edgeclip.core.lineage import check_teacher

    check_teacher(ck.get("teacher"), {"id": teacher_id}, f"--init {path}")
    clash = {
        k: (v, init.config.get(k)) for k, v in student_cfg.items() if k in init.config and init.config[k] != v
    }
    if clash:
        k, (mine, theirs) = next(iter(clash.items()))
        raise EdgeClipError(
            f"--init {path}: student {k}={theirs!r} in the checkpoint, {mine!r} in the config"
        )
    return {**{k: v for k, v in init.config.items() if k != "embed_dim"}, **student_cfg}, init


def student_from_checkpoint(ck: dict, path: str | Path) -> Loaded:
    """The Student of a student checkpoint (a pair student's RGB student too)."""
    cfg = dict(ck["config"])
    try:
        arch, embed_dim = cfg.pop("arch"), cfg.pop("embed_dim")
        st = Student(arch, embed_dim, **cfg)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt student config ({type(e).__name__}: {e})") from None
    load_weights(st, ck["state_dict"], path, "student")
    info = {k: v for k, v in ck.items() if k != "state_dict"}
    return Loaded(st.eval(), Preprocess.from_dict(ck["preprocess"]), info, "student")


MODEL_KINDS.register("student", help="create_student(arch, embed_dim, **options)")(create_student)


def load_student(path: str | Path, map_location: str = "cpu") -> Loaded:
    """(student, preprocess, checkpoint info) of any student checkpoint; CheckpointError for other files."""
    return student_from_checkpoint(read_checkpoint(path, STUDENT_FORMAT, "student", map_location), path)
