"""One student for every modality: a foundation :class:`Student` (3-channel backbone + head) plus learned
1x1-conv input adapters for the modalities that use ``adapter: conv``.

The checkpoint is a plain foundation student checkpoint (``load_student`` / ``edgeclip eval --student``
use it for RGB) whose ``extra['edgevl']`` holds the modality specs (scaling, adapter, normalisation) and the
adapters' weights. :func:`modality_student` rebuilds a deployable single-modality :class:`Student` whose
``input_adapter`` is that modality's learned conv (``in_chans`` = the modality's channels).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.data.pairs import ModalitySpec, normalize_modality
from edgeclip.data.transforms import Preprocess
from edgeclip.models.base import MODEL_KINDS, Loaded, load_weights
from edgeclip.models.student import Student, create_student, load_student, save_student


def conv_adapter(in_chans: int) -> nn.Conv2d:
    """Learned 1x1 conv C -> 3, initialised to the channel mean copied to R, G and B (= 'repeat' for C=1)."""
    conv = nn.Conv2d(in_chans, 3, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0 / in_chans)
        conv.bias.zero_()
    return conv


class PairStudent(nn.Module):
    def __init__(
        self,
        student: Student,
        specs: dict[str, ModalitySpec],
        primary: str,
        conv_channels: dict[str, int] | None = None,
    ):
        super().__init__()
        self.student = student
        self.specs = specs
        self.primary = primary
        self.adapters = nn.ModuleDict({m: conv_adapter(c) for m, c in (conv_channels or {}).items()})

    @property
    def embed_dim(self) -> int:
        return self.student.embed_dim

    def prepare(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Normalised modality tensor (B,C,H,W) -> 3-channel backbone input."""
        return self.adapters[modality](x) if modality in self.adapters else x

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        return self.student(self.prepare(x, modality or self.primary))

    def embed_unit(self, x01: torch.Tensor, modality: str) -> torch.Tensor:
        """Embed [0,1] tensors (after the data-side adapter): normalise with the modality's statistics first."""
        return self(normalize_modality(x01, self.specs[modality]), modality)


def build_pair_student(
    student_cfg: dict, embed_dim: int, specs: dict[str, ModalitySpec], primary: str, channels: dict[str, int]
) -> PairStudent:
    cfg = dict(student_cfg)
    arch = cfg.pop("arch", "shufflenet_v2_x1_0")
    st = create_student(arch, embed_dim, **cfg)
    conv = {m: channels[m] for m, s in specs.items() if s.adapter == "conv" and m != primary}
    return PairStudent(st, specs, primary, conv)


def save_pair_student(
    model: PairStudent, path: str | Path, size: int, teacher_desc: dict, extra: dict | None = None
) -> None:
    ps = model.specs[model.primary]
    pp = Preprocess(size=size, mean=tuple(ps.mean), std=tuple(ps.std))
    ev = {
        "primary": model.primary,
        "specs": {m: s.to_dict() for m, s in model.specs.items()},
        "adapters": {
            m: {k: v.detach().cpu() for k, v in a.state_dict().items()} for m, a in model.adapters.items()
        },
        "adapter_channels": {m: int(a.in_channels) for m, a in model.adapters.items()},
    }
    save_student(model.student, path, pp, teacher_desc, {**(extra or {}), "edgevl": ev})


def pair_from_student(loaded: Loaded, path: str | Path) -> Loaded:
    """The PairStudent around a student checkpoint's Student (its modality specs and adapters)."""
    ck = loaded.info
    ev = (ck.get("extra") or {}).get("edgevl")
    if not ev:
        raise CheckpointError(
            f"{path} is a student checkpoint without modality information "
            "(train it with `edgeclip edgevl distill`)"
        )
    specs = {m: ModalitySpec.from_dict(d) for m, d in ev["specs"].items()}
    model = PairStudent(loaded.model, specs, ev["primary"], ev.get("adapter_channels", {}))
    for m, sd in ev.get("adapters", {}).items():
        load_weights(model.adapters[m], sd, path, f"{m} adapter")
    return Loaded(model.eval(), loaded.preprocess, ck, "pair-student")


MODEL_KINDS.register(
    "pair-student", help="build_pair_student(student_cfg, embed_dim, specs, primary, channels)"
)(build_pair_student)


def load_pair_student(path: str | Path) -> Loaded:
    """(PairStudent in eval mode, preprocessing of its primary modality, checkpoint info)."""
    return pair_from_student(load_student(path), path)


class ModalityModel(nn.Module):
    """What is exported for one modality: (optional learned adapter) -> core network."""

    def __init__(self, core: nn.Module, adapter: nn.Module | None = None):
        super().__init__()
        self.core = core
        self.adapter = adapter if adapter is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(self.adapter(x))


def modality_student(model: PairStudent, modality: str) -> Student:
    """A standalone foundation Student for ``modality`` (its learned conv adapter as ``input_adapter``)."""
    if modality not in model.specs:
        raise EdgeClipError(f"unknown modality {modality!r} (have: {', '.join(model.specs)})")
    st = copy.deepcopy(model.student)
    if modality in model.adapters:
        st.input_adapter = copy.deepcopy(model.adapters[modality])
        st.config["in_chans"] = model.adapters[modality].in_channels
    return st
