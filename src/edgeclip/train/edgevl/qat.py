"""EdgeVL stage 2: quantization-aware training with torchao's PT2E flow (X86 inductor quantizer, QAT config:
per-channel int8 weights, uint8 activations, conv-bn folded) on the stage-1 student, loss = KD term +
``triplet_weight`` x the semi-hard triplet loss (:func:`edgeclip.losses.semi_hard_triplet`) against an embedding
bank of all training pairs (every modality) refreshed every epoch, positives by pseudo-label. Mining defaults follow
EdgeVL's published configs: margin 0.3, the nearest same-label entry of the anchor's own modality as positive, up
to 3 random semi-hard negatives. ``triplet_weight=0`` is the plain-QAT baseline. The result is converted to int8
and exported as a QDQ ONNX model that ONNX Runtime executes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.pairs import normalize_modality
from edgeclip.losses import build_loss, check_mining, semi_hard_triplet
from edgeclip.models.pair import ModalityModel, PairStudent, load_pair_student
from edgeclip.quant.qat import (
    check_weight_bits,
    convert_qat,
    export_qdq_onnx,
    prepare_qat,
    resolve_reduce_range,
)
from edgeclip.train.edgevl.data import (
    PairDataConfig,
    Prepared,
    kd_terms,
    prepare_pairs,
    raw_channels,
    train_config,
)
from edgeclip.train.engine import Task, TrainConfig, Trainer
from edgeclip.zeroshot.text import text_embeddings


@dataclass
class QATConfig(PairDataConfig):
    student: str = ""  # stage-1 checkpoint
    loss: Any = "mse"
    weights: dict[str, float] = field(default_factory=dict)
    triplet_weight: float = 1.0  # 0 = plain QAT (no contrastive term)
    margin: float = 0.3  # EdgeVL's published setting
    positive: str = (
        "easy"  # easy (nearest, EdgeVL) | random | hard: which same-label bank entry is the positive
    )
    negative: str = "random"  # random (EdgeVL) | hardest: which semi-hard negatives are used
    negatives: int = 3  # semi-hard negatives per anchor (EdgeVL: 3)
    same_modality: bool = True  # positives and negatives from the anchor's own modality (EdgeVL)
    labels: list[str] | None = None  # pseudo-label vocabulary when no manifest is given
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    reduce_range: Any = "auto"  # 7-bit activations; auto: when this CPU lacks VNNI (int8 kernels saturate)
    per_channel: bool = True  # False: one weight scale per tensor (per-tensor-only accelerators)
    weight_bits: int = 8  # 4: W4A8 (4-bit weights, uint8 activations)
    train: dict[str, Any] = field(default_factory=dict)


def quant_stem(weight_bits: int) -> str:
    """File stem of an exported quantized model: int8, or w4a8 for 4-bit weights."""
    return "int8" if weight_bits == 8 else f"w{weight_bits}a8"


def export_int8_onnx(
    core: nn.Module,
    adapters: dict[str, nn.Module],
    modalities: list[str],
    out: Path,
    size: int,
    channels: dict[str, int],
    stem: str = "int8",
) -> dict[str, str]:
    """Export the converted (QDQ) model once, plus one file per modality with a learned conv adapter."""
    exports: dict[str, str] = {}
    groups = {m: (m if m in adapters else None) for m in modalities}
    for g in sorted(set(groups.values()), key=lambda x: (x is not None, x or "")):
        model = ModalityModel(core, adapters[g].eval() if g else None)
        model.training = False  # not .eval(): that would recurse into the converted graph module
        path = export_qdq_onnx(
            model,
            out / (f"{stem}.onnx" if g is None else f"{stem}_{g}.onnx"),
            (4, channels[g] if g else 3, size, size),
        )
        for m, gg in groups.items():
            if gg == g:
                exports[m] = str(path)
    return exports


@torch.no_grad()
def embedding_bank(model: PairStudent, p: Prepared, bs: int = 512) -> torch.Tensor:
    """Normalised view-0 embeddings of every pair in every modality: (M*N, D), modality-major."""
    was = model.training
    model.eval()
    out = []
    for m in p.ps.modalities:
        for i in range(0, len(p.data), bs):
            x = p.data.x[m][i : i + bs]
            out.append(F.normalize(model(normalize_modality(x, p.specs[m]), m).float(), dim=-1))
    model.train(was)
    return torch.cat(out)


def vocabulary_embeddings(p: Prepared, teacher, labels: list[str] | None, templates) -> torch.Tensor:
    """Teacher text embeddings (L, D) of the stage-2 prompt vocabulary: the curation manifest's labels,
    else ``labels``, else the class folders."""
    labels = p.info.get("manifest_labels") or labels
    if labels is None:
        if not p.ps.classes:
            raise EdgeClipError("the triplet loss needs pseudo-labels: give a curation manifest or labels")
        labels = class_names(p.ps.classes)
    return text_embeddings(teacher, labels, templates)


class QATTask(Task):
    """EdgeVL stage 2 as a Trainer task: ``setup`` prepares the pairs, pseudo-labels and the QAT student;
    a step adds the semi-hard triplet term to the KD term; the embedding bank follows the model once per
    epoch (``on_epoch_end``); ``save`` converts to int8, exports ONNX and checks its parity."""

    def __init__(
        self, cfg: QATConfig, teacher, fp: PairStudent, size: int, train: TrainConfig, progress=False
    ):
        self.cfg, self.teacher, self.fp, self.size, self.train = cfg, teacher, fp, size, train
        self.progress = progress
        self.stats = {"semi_hard": 0, "anchors": 0}
        self.result: dict[str, Any] = {}

    def setup(self, trainer: Trainer) -> None:
        cfg, fp, size = self.cfg, self.fp, self.size
        self.p = p = prepare_pairs(cfg, self.teacher, size, progress=self.progress)
        temb = vocabulary_embeddings(p, self.teacher, cfg.labels, cfg.templates)
        if p.pseudo is None:  # teacher zero-shot argmax of every pair's RGB (view 0)
            p.pseudo = (p.targets[:, 0] @ temb.t()).argmax(1)
        self.ctx = {"text_emb": temb, "logit_scale": self.teacher.logit_scale}  # prompt-aware losses
        self.M, self.N = len(p.ps.modalities), len(p.data)
        self.bank_labels = p.pseudo.repeat(self.M)
        t0 = time.time()
        self.reduce_range = resolve_reduce_range(cfg.reduce_range)
        self.core = prepare_qat(
            fp.student,
            (8, 3, size, size),
            reduce_range=self.reduce_range,
            per_channel=cfg.per_channel,
            weight_bits=cfg.weight_bits,
            embed_dim=fp.student.embed_dim,
        )
        self.model = PairStudent(self.core, p.specs, p.ps.primary)
        self.model.adapters = fp.adapters
        self.prep_seconds = time.time() - t0
        self.loss_fn = build_loss(cfg.loss)
        self.bank = embedding_bank(self.model, p)
        self.dataset = torch.utils.data.TensorDataset(torch.arange(self.N))

    def training_step(self, model, batch):
        cfg, p, idx = self.cfg, self.p, batch[0]
        loss, embs, metrics = kd_terms(model, p, idx, self.loss_fn, cfg.weights, self.ctx)
        if cfg.triplet_weight > 0:
            tl = self.triplet(embs, idx)
            loss = loss + cfg.triplet_weight * tl
            metrics["triplet"] = tl.detach()
        return {"loss": loss, **metrics}

    def triplet(self, embs: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """Semi-hard triplet loss of every modality's anchors against the bank (the anchor's own row excluded)."""
        cfg, M, N = self.cfg, self.M, self.N
        anchors = torch.cat([embs[mm] for mm in self.p.ps.modalities])
        dev = anchors.device
        lab = self.p.pseudo[idx.cpu()].repeat(M).to(dev)
        rows = torch.cat([idx.cpu() + j * N for j in range(M)])
        excl = torch.zeros(len(rows), M * N, dtype=torch.bool)
        excl[torch.arange(len(rows)), rows] = True
        allowed = None
        if cfg.same_modality:  # bank rows are modality-major: column c belongs to modality c // N
            allowed = ((rows // N)[:, None] == (torch.arange(M * N) // N)[None, :]).to(dev)
        tl, nv = semi_hard_triplet(
            anchors,
            lab,
            self.bank.to(dev),
            self.bank_labels.to(dev),
            cfg.margin,
            excl.to(dev),
            allowed,
            cfg.positive,
            cfg.negative,
            cfg.negatives,
        )
        self.stats["semi_hard"] += nv
        self.stats["anchors"] += len(rows)
        return tl

    def semi_hard_fraction(self) -> float | None:
        if self.cfg.triplet_weight <= 0:
            return None
        return self.stats["semi_hard"] / max(1, self.stats["anchors"])

    def on_epoch_end(self, model, epoch, record):
        self.bank = embedding_bank(model, self.p)  # the bank follows the model, once per epoch
        f = self.semi_hard_fraction()
        return {} if f is None else {"semi_hard_fraction": f}

    def save(self, model, out_dir: Path, history: dict) -> None:
        cfg, p = self.cfg, self.p
        t1 = time.time()
        converted = convert_qat(model.student)
        adapters = dict(model.adapters)
        exports = export_int8_onnx(
            converted,
            adapters,
            p.ps.modalities,
            out_dir,
            self.size,
            raw_channels(p),
            quant_stem(cfg.weight_bits),
        )
        self.result = {
            "format": "edgeclip-edgevl-qat/1",
            "student": cfg.student,
            "config": asdict(cfg),
            "exports": exports,
            "specs": {m: s.to_dict() for m, s in p.specs.items()},
            "primary": p.ps.primary,
            "img_size": self.size,
            "teacher": self.teacher.describe(),
            "data_info": p.info,
            "history": history["epochs"],
            "reduce_range": self.reduce_range,
            "per_channel": cfg.per_channel,
            "weight_bits": cfg.weight_bits,
            "semi_hard_fraction": self.semi_hard_fraction(),
            "onnx_min_cosine_vs_torch_int8": self.onnx_parity(converted, adapters, exports),
            "seconds": {
                "prepare": self.prep_seconds,
                "train": history.get("train_seconds"),
                "convert_export": time.time() - t1,
            },
        }
        write_json(out_dir / "qat.json", self.result)

    def onnx_parity(self, converted, adapters: dict, exports: dict) -> dict[str, float]:
        """ONNX Runtime int8 vs the converted torch model on a few training pairs: min cosine per modality."""
        from edgeclip.zeroshot.modalities import onnx_sessions

        sess = onnx_sessions(exports)
        parity = {}
        for m in self.p.ps.modalities:
            x = normalize_modality(self.p.data.x[m][:16], self.p.specs[m])
            ref = ModalityModel(converted, adapters.get(m))(x).detach()
            got = torch.from_numpy(sess[m].run(None, {sess[m].get_inputs()[0].name: x.numpy()})[0])
            parity[m] = float((F.normalize(ref, dim=-1) * F.normalize(got, dim=-1)).sum(-1).min())
        return parity


def qat_pairs(cfg: QATConfig, teacher=None, resume: bool = False, progress: bool = False) -> dict:
    """Stage 2: QAT (+ semi-hard triplet) from a stage-1 student; writes OUT/int8.onnx and OUT/qat.json."""
    from edgeclip.models.teachers import teacher_of

    if not cfg.student:
        raise EdgeClipError("QAT starts from a stage-1 student: give --student CHECKPOINT")
    fp, pre, ck = load_pair_student(cfg.student)
    teacher = teacher_of(ck, f"student {cfg.student}", teacher or cfg.teacher, near=cfg.student)
    if cfg.triplet_weight < 0 or cfg.margin <= 0:
        raise EdgeClipError("triplet_weight must be >= 0 and margin > 0")
    check_mining(cfg.positive, cfg.negative, cfg.negatives)  # before any data is read
    check_weight_bits(cfg.weight_bits)
    # the stage-1 specs (scaling, adapter, normalisation) are kept unless overridden
    cfg.modality = {m: {**s.to_dict(), **cfg.modality.get(m, {})} for m, s in fp.specs.items()}
    task = QATTask(cfg, teacher, fp, pre.size, train_config(cfg.train, cfg.seed), progress)
    Trainer(task.train, cfg.out, resume=resume, progress=progress).fit(task)
    return task.result
