"""EdgeVL training.

Stage 1 (:func:`distill_pairs`): one student, mixed batches of RGB and the other modalities of the same
pairs (same crop and flip), loss ``sum_m w_m * d(T(rgb), S(x_m))`` with any loss of the foundation's
registry. Teacher targets come from the foundation's embedding cache of the RGB images.

Stage 2 (:func:`qat_pairs`): quantization-aware training with torchao's PT2E flow (X86 inductor
quantizer, QAT config: per-channel int8 weights, uint8 activations, conv-bn folded) on the stage-1
student, loss = KD term + ``triplet_weight`` x triplet loss with semi-hard negatives
(``d_p < d_n < d_p + margin``) against an embedding bank of all training pairs (every modality)
refreshed every epoch, positives by pseudo-label. Mining defaults follow EdgeVL's published configs:
margin 0.3, the nearest same-label entry of the anchor's own modality as positive, up to 3 random
semi-hard negatives. ``triplet_weight=0`` is the plain-QAT baseline.
The result is converted to int8 and exported as a QDQ ONNX model that ONNX Runtime executes.

Baseline :func:`ptq_pairs`: ONNX Runtime static int8 (QDQ) of the stage-1 student, calibrated on
images of every modality.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.core.config import build_dataclass
from edgeclip.core.env import seed_everything
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.memory import crop_views
from edgeclip.data.pairs import (
    PairTensors,
    default_specs,
    fill_stats,
    normalize_modality,
    open_pairs,
    preload_pairs,
)
from edgeclip.data.transforms import view_params
from edgeclip.losses import build_loss
from edgeclip.models.pair import (
    ModalityModel,
    PairStudent,
    build_pair_student,
    load_pair_student,
    save_pair_student,
)
from edgeclip.models.teachers import check_same_teacher
from edgeclip.quant.qat import (
    check_weight_bits,
    convert_qat,
    export_qdq_onnx,
    prepare_qat,
    resolve_reduce_range,
)
from edgeclip.train.curate import apply_manifest, load_manifest, teacher_embeddings
from edgeclip.train.engine import Task, TrainConfig, Trainer
from edgeclip.zeroshot.text import text_embeddings


@dataclass
class PairDataConfig:
    teacher: str = ""
    data: str = ""
    out: str = "runs/edgevl"
    modalities: list[str] | None = None
    primary: str | None = None
    derive: dict[str, str] = field(default_factory=dict)  # e.g. {"mono": "luminance"}
    modality: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-modality ModalitySpec settings
    manifest: str | None = None  # curation manifest: train on its kept pairs
    classes: list[str] | None = None  # only pairs of these (folder) classes: the unseen-class protocol
    cache: str | None = None  # teacher-embedding cache folder (default OUT/cache)
    views: int = 1
    max_images: int = 0
    seed: int = 0
    strict: bool = False


@dataclass
class PairDistillConfig(PairDataConfig):
    # student config; unset keys: from ``init`` when given, else shufflenet_v2_x1_0 at 32 px
    student: dict[str, Any] = field(default_factory=dict)
    loss: Any = "mse"
    weights: dict[str, float] = field(default_factory=dict)  # per-modality loss weight (default 1)
    train: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from a student checkpoint (e.g. an RGB-distilled one)


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


@dataclass
class Prepared:
    ps: Any
    specs: dict
    data: PairTensors
    targets: torch.Tensor  # (N, V, D)
    boxes: torch.Tensor  # (N, V, 4)
    flips: torch.Tensor  # (N, V)
    fkeys: list[str]
    pseudo: torch.Tensor | None
    size: int
    info: dict


def prepare_pairs(
    cfg: PairDataConfig, teacher, size: int, primary_stats=None, progress: bool = False
) -> Prepared:
    """Open, filter (classes, manifest, max_images), cache teacher targets, and preload the pairs."""
    if not cfg.data:
        raise EdgeClipError("no training data given (--data or `data:` in the config)")
    ps = open_pairs(cfg.data, cfg.modalities, cfg.primary, cfg.derive)
    info: dict[str, Any] = {"pairs_found": len(ps), "skipped_unpaired": len(ps.skipped)}
    if cfg.classes:
        if not ps.classes:
            raise EdgeClipError("`classes` needs class sub-folders in the data")
        names = class_names(ps.classes)
        bad = [c for c in cfg.classes if c not in names and c not in ps.classes]
        if bad:
            raise EdgeClipError(f"unknown class {bad[0]!r} (have: {', '.join(names)})")
        want = {i for i, (c, n) in enumerate(zip(ps.classes, names)) if c in cfg.classes or n in cfg.classes}
        ps = ps.subset([i for i, r in enumerate(ps.records) if r.label in want])
        info["classes"] = list(cfg.classes)
    pseudo_map = None
    if cfg.manifest:
        man = load_manifest(cfg.manifest)
        check_same_teacher(man["teacher"], teacher, f"manifest {cfg.manifest}")
        ps, pseudo_map, missing = apply_manifest(ps, man)
        info.update(manifest=cfg.manifest, manifest_missing=missing, manifest_labels=man["labels"])
    if cfg.max_images and len(ps) > cfg.max_images:
        idx = sorted(random.Random(cfg.seed).sample(range(len(ps)), cfg.max_images))
        ps = ps.subset(idx)
    cache_dir = Path(cfg.cache) if cfg.cache else Path(cfg.out) / "cache"
    cache, fkeys, ok = teacher_embeddings(ps, teacher, cache_dir, cfg.views, progress=progress)
    info["skipped_unreadable_rgb"] = len(ps) - len(ok)
    fk_by_key = {ps.records[i].key: k for i, k in zip(ok, fkeys)}
    ps = ps.subset(ok)
    specs = default_specs(ps, cfg.modality)
    data = preload_pairs(ps, specs, size, strict=cfg.strict, progress=progress)
    info["skipped_bad_pairs"] = len(data.skipped) - len(ps.skipped)
    info["skipped_examples"] = data.skipped[:20]
    info["n_train"] = len(data)
    fill_stats(specs, data, ps.primary, *(primary_stats or (teacher.mean, teacher.std)))
    fkeys = [fk_by_key[k] for k in data.keys]
    V = cache.views
    targets = cache.targets(fkeys)
    vp = [[view_params(k, v, cache.view_spec) for v in range(V)] for k in fkeys]
    boxes = torch.tensor([[p[0] for p in row] for row in vp], dtype=torch.float32)
    flips = torch.tensor([[p[1] for p in row] for row in vp])
    pseudo = torch.tensor([pseudo_map[k] for k in data.keys]) if pseudo_map is not None else None
    return Prepared(ps, specs, data, targets, boxes, flips, fkeys, pseudo, size, info)


def _raw_channels(p: Prepared) -> dict[str, int]:
    return {m: int(v.shape[1]) for m, v in p.data.x.items()}


def modality_batch(
    model: PairStudent, p: Prepared, m: str, idx: torch.Tensor, box: torch.Tensor, flip: torch.Tensor
):
    """Cropped, normalised, adapted 3-channel input of modality ``m`` for pairs ``idx``."""
    x = crop_views(p.data.x[m][idx.cpu()].to(box.device), box, flip, p.size)
    return model.prepare(normalize_modality(x, p.specs[m]), m)


def kd_terms(
    model: PairStudent,
    p: Prepared,
    idx: torch.Tensor,
    loss_fn,
    weights: dict[str, float],
    ctx: dict[str, Any] | None = None,
):
    """Mixed batch: every modality of the pairs ``idx`` through the student at once. ``ctx`` goes to the
    loss (``text_emb``, ``logit_scale``). -> (weighted KD loss, {modality: embeddings}, metrics)."""
    B = idx.shape[0]
    V = p.targets.shape[1]
    v = torch.randint(0, V, (B,))
    ic = idx.cpu()
    dev = idx.device
    box, flip, tgt = p.boxes[ic, v].to(dev), p.flips[ic, v].to(dev), p.targets[ic, v].to(dev)
    mods = p.ps.modalities
    inp = torch.cat([modality_batch(model, p, m, idx, box, flip) for m in mods])
    emb = model.student(inp)
    embs = dict(zip(mods, emb.split(B)))
    loss = 0.0
    metrics = {}
    for m in mods:
        loss = loss + float(weights.get(m, 1.0)) * loss_fn(embs[m], tgt, **(ctx or {}))
        metrics[f"cos_{m}"] = F.cosine_similarity(embs[m].detach().float(), tgt, dim=-1).mean()
    return loss, embs, metrics


def _train_cfg(d: dict, seed: int) -> TrainConfig:
    d = dict(d)
    d.setdefault("seed", seed)
    return build_dataclass(TrainConfig, d, "train")


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
        self.model = build_pair_student(scfg, teacher.embed_dim, p.specs, p.ps.primary, _raw_channels(p))
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
    task = PairDistillTask(cfg, teacher, _train_cfg(cfg.train, cfg.seed), progress)
    hist = Trainer(task.train, cfg.out, resume=resume, progress=progress).fit(task)
    hist["data_info"] = task.p.info
    return hist


# --------------------------------------------------------------------------------------- stage 2
POSITIVES = ("easy", "random", "hard")
NEGATIVES = ("random", "hardest")


def check_mining(positive: str, negative: str, negatives: int) -> None:
    """One clear error for triplet-mining settings (QATConfig and :func:`semi_hard_triplet`)."""
    if positive not in POSITIVES or negative not in NEGATIVES or negatives < 1:
        raise EdgeClipError(
            f"triplet mining: positive must be one of {', '.join(POSITIVES)}, negative one of "
            f"{', '.join(NEGATIVES)} and negatives >= 1 (got {positive!r}, {negative!r}, {negatives})"
        )


def semi_hard_triplet(
    anchor: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    margin: float,
    exclude: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    positive: str = "easy",
    negative: str = "random",
    negatives: int = 3,
    generator=None,
):
    """Triplet loss with semi-hard negatives from an embedding bank (FaceNet; EdgeVL stage 2).

    ``anchor`` (B,D) unnormalised student embeddings; ``bank`` (N,D) normalised, detached. Distances are
    Euclidean between unit vectors. Bank columns are candidates unless ``exclude`` (the anchor's own row)
    or not ``allowed`` (e.g. another modality). The positive is the nearest (``easy``, EdgeVL's published
    setting), a random or the farthest (``hard``) candidate with the anchor's pseudo-label; the negatives are
    up to ``negatives`` candidates of another label with ``d_p < d_n < d_p + margin``, drawn at random
    (EdgeVL) or the nearest ones (``hardest``). Anchors without a positive or a semi-hard negative add nothing.
    -> (sum of the triplet hinges / B, number of anchors that had at least one semi-hard triplet)
    """
    check_mining(positive, negative, negatives)
    a = F.normalize(anchor.float(), dim=-1)
    d = (2 - 2 * a @ bank.t()).clamp_min(1e-8).sqrt()  # (B, N)
    cand = torch.ones_like(d, dtype=torch.bool) if allowed is None else allowed.clone()
    if exclude is not None:
        cand &= ~exclude
    same = (labels[:, None] == bank_labels[None, :]) & cand
    has_pos = same.any(1)
    if positive == "random":
        w = same.float() + (~has_pos).float()[:, None]  # rows without positives: any column, masked out below
        d_p = d.gather(1, torch.multinomial(w, 1, generator=generator)).squeeze(1)
    elif positive == "easy":
        d_p = torch.where(same, d, torch.full_like(d, float("inf"))).min(1).values
    else:
        d_p = torch.where(same, d, torch.full_like(d, -1.0)).max(1).values
    d_p = torch.where(has_pos, d_p, torch.zeros_like(d_p))
    band = (labels[:, None] != bank_labels[None, :]) & cand & (d > d_p[:, None]) & (d < d_p[:, None] + margin)
    band &= has_pos[:, None]
    k = min(negatives, d.shape[1])
    # rank the band's columns: random scores (EdgeVL) or nearness; columns outside the band rank last
    score = torch.rand(d.shape, generator=generator, device=d.device) if negative == "random" else -d
    top = torch.where(band, score, torch.full_like(score, -float("inf"))).topk(k, dim=1).indices  # (B, k)
    ok = band.gather(1, top)
    if not ok.any():
        return anchor.sum() * 0.0, 0
    hinge = F.relu(d_p[:, None] - d.gather(1, top) + margin)
    loss = (hinge * ok).sum() / anchor.shape[0]
    return loss, int(ok.any(1).sum())


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
            _raw_channels(p),
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
    task = QATTask(cfg, teacher, fp, pre.size, _train_cfg(cfg.train, cfg.seed), progress)
    Trainer(task.train, cfg.out, resume=resume, progress=progress).fit(task)
    return task.result


def ptq_pairs(
    student: str,
    cfg: PairDataConfig,
    calib_images: int = 256,
    per_channel: bool = True,
    method: str = "minmax",
    teacher=None,
    reduce_range: Any = "auto",
    weight_bits: int = 8,
    progress: bool = False,
) -> dict:
    """Baseline: ONNX Runtime static int8 of a stage-1 student, calibrated on every modality's images
    (``weight_bits=4``: W4A8, int4 weights)."""
    from edgeclip.export.onnx import export_onnx
    from edgeclip.models.teachers import teacher_of
    from edgeclip.quant.ort import quantize_static_onnx

    check_weight_bits(weight_bits)
    fp, pre, ck = load_pair_student(student)
    size = pre.size
    teacher = teacher_of(ck, f"student {student}", teacher or cfg.teacher, near=student)
    cfg.modality = {m: {**s.to_dict(), **cfg.modality.get(m, {})} for m, s in fp.specs.items()}
    if cfg.max_images == 0 or cfg.max_images > calib_images:
        cfg.max_images = calib_images
    p = prepare_pairs(cfg, teacher, size, progress=progress)
    out = Path(cfg.out)
    groups = {m: (m if m in fp.adapters else None) for m in p.ps.modalities}
    reduce_range = resolve_reduce_range(reduce_range, weight_bits)
    exports = {}
    for g in sorted(set(groups.values()), key=lambda x: (x is not None, x or "")):
        mods = [m for m, gg in groups.items() if gg == g]
        model = ModalityModel(fp.student, fp.adapters[g] if g else None).eval()
        c = p.data.x[g].shape[1] if g else 3
        stem = "fp32" if g is None else f"fp32_{g}"
        f32 = export_onnx(model, out / f"{stem}.onnx", (1, c, size, size))
        batches = []
        for m in mods:  # the shared model sees every modality it serves, in equal parts
            x = normalize_modality(p.data.x[m], fp.specs[m])
            batches += [x[i : i + 32].numpy() for i in range(0, len(x), 32)]
        i8 = quantize_static_onnx(
            f32,
            out / f"{stem.replace('fp32', 'ptq_' + quant_stem(weight_bits))}.onnx",
            batches,
            per_channel=per_channel,
            method=method,
            reduce_range=reduce_range,
            weight_bits=weight_bits,
        )
        for m in mods:
            exports[m] = str(i8)
    res = {
        "format": "edgeclip-edgevl-ptq/1",
        "student": student,
        "exports": exports,
        "calib_images": len(p.data),
        "calibrated_on": p.ps.modalities,
        "per_channel": per_channel,
        "weight_bits": weight_bits,
        "method": method,
        "reduce_range": reduce_range,
        "specs": {m: s.to_dict() for m, s in fp.specs.items()},
        "primary": fp.primary,
        "img_size": size,
        "teacher": teacher.describe(),
    }
    write_json(out / "ptq.json", res)
    return res
