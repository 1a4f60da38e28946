"""EdgeVL stage 1: one student, mixed batches of RGB and the other modalities of the same pairs (same crop and
flip), loss ``sum_m w_m * d(T(rgb), S(x_m))`` with any loss of the registry; teacher targets from the embedding
cache of the RGB images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.machine import seed_everything
from edgeclip.losses import build_loss
from edgeclip.models.pair import build_pair_student, save_pair_student
from edgeclip.train.edgevl.data import PairDataConfig, kd_terms, prepare_pairs, raw_channels, train_config
from edgeclip.train.engine import Task, TrainConfig, Trainer


@dataclass
class PairDistillConfig(PairDataConfig):
    # student config; unset keys: from ``init`` when given, else shufflenet_v2_x1_0 at 32 px
    student: dict[str, Any] = field(default_factory=dict)
    loss: Any = "mse"
    weights: dict[str, float] = field(default_factory=dict)  # per-modality loss weight (default 1)
    train: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from a student checkpoint (e.g. an RGB-distilled one)


class PairDistillTask(Task):
    """EdgeVL stage 1 as a Trainer task: ``setup`` prepares the pairs (filters, cached teacher targets, tensors
    in memory) and builds the dual-modality student; a step is one mixed batch of every modality."""

    def __init__(self, cfg: PairDistillConfig, teacher, train: TrainConfig, progress: bool = False):
        self.cfg, self.teacher, self.train, self.progress = cfg, teacher, train, progress

    def setup(self, trainer: Trainer) -> None:
        cfg, teacher = self.cfg, self.teacher
        scfg, init = dict(cfg.student), None
        if cfg.init:  # the architecture comes from the checkpoint; explicit student keys must agree with it
            from edgeclip.models.student import init_student_config

            scfg, init = init_student_config(cfg.init, teacher.id, scfg)
        self.size = int(scfg.setdefault("img_size", 32))
        scfg.setdefault("small_input", self.size <= 64)
        self.p = p = prepare_pairs(cfg, teacher, self.size, progress=self.progress)
        unknown = [m for m in cfg.weights if m not in p.ps.modalities]
        if unknown:
            raise EdgeClipError(f"loss weight for unknown modality {unknown[0]!r}")
        seed_everything(
            self.train.seed
        )  # before the model is built: a fixed seed gives bit-identical weights
        self.model = build_pair_student(scfg, teacher.embed_dim, p.specs, p.ps.primary, raw_channels(p))
        if init is not None:
            self.model.student.load_state_dict(init.state_dict())
        self.loss_fn = build_loss(cfg.loss)
        self.dataset = torch.utils.data.TensorDataset(torch.arange(len(p.data)))
        self.fingerprint = {
            "teacher": teacher.id,
            "student": self.model.student.config,
            "data": cfg.data,
            "loss": cfg.loss,
            "manifest": cfg.manifest,
            "modalities": list(p.specs),
        }

    def training_step(self, model, batch):
        loss, _, metrics = kd_terms(model, self.p, batch[0], self.loss_fn, self.cfg.weights)
        return {"loss": loss, **metrics}

    def save(self, model, out_dir: Path, history: dict) -> None:
        extra = {
            "edgevl_config": asdict(self.cfg),
            "data_info": self.p.info,
            "final": history["epochs"][-1] if history["epochs"] else {},
        }
        save_pair_student(model, out_dir / "student.pt", self.size, self.teacher.describe(), extra)


def distill_pairs(cfg: PairDistillConfig, teacher=None, resume: bool = False, progress: bool = False) -> dict:
    """Stage 1: dual-modality distillation. Writes OUT/student.pt (+ history.json, last.ckpt)."""
    from edgeclip.models.teachers import load_teacher

    if not cfg.teacher and teacher is None:
        raise EdgeClipError("no teacher given (--teacher or `teacher:` in the config)")
    teacher = teacher or load_teacher(cfg.teacher, device="cpu")
    task = PairDistillTask(cfg, teacher, train_config(cfg.train, cfg.seed), progress)
    hist = Trainer(task.train, cfg.out, resume=resume, progress=progress).fit(task)
    hist["data_info"] = task.p.info
    return hist
