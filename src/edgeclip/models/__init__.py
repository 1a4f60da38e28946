"""Students: any torchvision/timm backbone + an MLP projection head to the teacher's embedding size.

from edgeclip.models import create_student, list_students
s = create_student("shufflenet_v2_x1_0", embed_dim=512, keep_grid=True)
emb = s(x)              # (B, embed_dim)
grid = s.grid(x)        # (B, C, H, W) spatial features (captioner)
"""

from edgeclip.models.backbones import BACKBONES, Backbone, create_backbone
from edgeclip.models.student import (
    Student,
    create_student,
    list_students,
    load_student,
    save_student,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "create_backbone",
    "Student",
    "create_student",
    "list_students",
    "load_student",
    "save_student",
]
