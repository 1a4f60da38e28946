"""Training and evaluation of the captioner.

Loss = alpha * MSE(pooled student feature projected to the teacher's embedding, cached teacher embedding)
     + beta  * cross-entropy of the next word (teacher forcing), alpha/beta default 0.7/0.3.
The MSE is edgeclip's ``mse`` distillation loss (between L2-normalised embeddings); the teacher
embeddings come from an :class:`~edgeclip.train.cache.EmbeddingCache` (built on first use).

Training is a :class:`CaptionTask` on :class:`edgeclip.train.engine.Trainer` (AdamW, warm-up + cosine
schedule, gradient clipping, atomic ``last.ckpt`` + resume); images are held in memory as uint8 and
augmented per batch (random crop from a reflection-padded image + horizontal flip). After each epoch the
val split is captioned (greedy) and scored with CIDEr; the best epoch is kept as ``captioner.pt`` and
training stops after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.caption_metrics import score_captions
from edgeclip.core.config import build_dataclass
from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.core.io import read_json, write_json
from edgeclip.core.machine import seed_everything
from edgeclip.data.captions import CaptionSet, load_captions
from edgeclip.data.memory import augment_batch, normalize, preload
from edgeclip.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess
from edgeclip.data.vocab import PAD_ID, Vocab
from edgeclip.models.captioner import (
    Captioner,
    build_captioner,
    init_encoder_from_student,
    save_captioner,
)
from edgeclip.models.decode import Decoding, generate
from edgeclip.train.engine import Task, TrainConfig, Trainer, unwrap

# batch_size counts images; with captions_per_image 4 a step sees 64 (image, caption) pairs, the published batch,
# and an epoch has ~5x the optimiser steps of 64 images x 5 captions (the decoder's gradient signal per epoch).
DEFAULT_TRAIN = {
    "lr": 1.5e-4,
    "batch_size": 16,
    "grad_clip": 5.0,
    "epochs": 30,
    "weight_decay": 1e-4,
    "warmup_epochs": 0.5,
    "min_lr_ratio": 0.05,
}


@dataclass
class CaptionTrainConfig:
    data: str = ""  # captions file (COCO JSON, Karpathy JSON, Flickr token.txt, IMAGE, caption CSV)
    images: str | None = None  # images folder (default: found next to the captions file)
    splits: str | None = None  # splits JSON / name list (default: splits.json next to a CSV/Flickr file)
    train_split: str | None = "train"
    val_split: str | None = "val"
    val_data: str | None = None  # a separate captions file for validation (e.g. COCO val JSON)
    val_images: str | None = None
    teacher: str | None = None  # teacher spec (for the distillation cache)
    cache: str | None = (
        None  # teacher-embedding cache folder (default: OUT/teacher-cache, built when missing)
    )
    alpha: float = 0.7
    beta: float = 0.3
    # of the next-word cross-entropy (0: off); fights the collapse onto templates
    label_smoothing: float = 0.0
    # the seed's feature term on the spatial grid: weight of 1 - cos between the student's dense map and the
    # teacher's (both the head read at every location of a spatial_grid x spatial_grid pooling), teacher online
    spatial: float = 0.0
    spatial_grid: int = 7
    out: str = "runs/caption"
    model: dict[str, Any] = field(default_factory=dict)  # CaptionModelConfig fields
    vocab: dict[str, Any] = field(default_factory=lambda: {"min_count": 5, "max_len": 20})
    captions_per_image: int = 4  # captions decoded per encoded image in a batch (a random subset each epoch)
    augment: dict[str, Any] = field(default_factory=lambda: {"pad": 16, "flip": True})
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (defaults: DEFAULT_TRAIN)
    patience: int = 5  # early stopping on val CIDEr (0: off)
    val_beam: int = 1
    val_max_images: int = 0
    max_images: int = 0  # train on the first N images (smoke tests)
    weights: str | None = None  # local ImageNet weights for the backbone (.pth)
    init: str | None = None  # edgeclip student checkpoint (a distilled encoder) to start the encoder from


@dataclass
class VocabConfig:
    min_count: int = 5  # words seen fewer times are <unk>
    max_len: int = 20  # caption tokens kept per caption
    max_size: int = 0  # at most this many words (0: no cap)


def _vocab_cfg(cfg: CaptionTrainConfig) -> tuple[int, int]:
    v = build_dataclass(VocabConfig, dict(cfg.vocab or {}), "vocab", typed=True, what="vocab")
    return v.min_count, v.max_len


class CaptionTrainSet(torch.utils.data.Dataset):
    """(uint8 image, k caption token rows (k, T), teacher embedding (D,)) per image."""

    def __init__(
        self, images: torch.Tensor, captions: list[list[list[int]]], targets: torch.Tensor, k: int, T: int
    ):
        self.images, self.captions, self.targets, self.k, self.T = images, captions, targets, k, T

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        caps = self.captions[i]
        n = len(caps)
        idx = torch.randperm(n)[: self.k] if n >= self.k else torch.randint(0, n, (self.k,))
        return self.images[i], pad_ids([caps[j] for j in idx.tolist()], self.T), self.targets[i]


def pad_ids(rows: list[list[int]], length: int) -> torch.Tensor:
    """Token id rows -> (len(rows), length) tensor, each row cut to ``length`` and padded with <pad>."""
    toks = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    for r, ids in enumerate(rows):
        ids = ids[:length]
        toks[r, : len(ids)] = torch.tensor(ids)
    return toks


def next_word_ce(
    logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean", label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of teacher-forced ``logits`` (N, T-1, V) against ``tokens`` (N, T) shifted by one;
    <pad> ignored; ``label_smoothing`` spreads that share of each target over the vocabulary."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        tokens[:, 1:].reshape(-1),
        ignore_index=PAD_ID,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def _prepare(cs: CaptionSet, size: int, progress: bool):
    x, kept, skipped = preload([it.record() for it in cs.items], size, progress=progress)
    return x, [cs.items[i] for i in kept], skipped


def _dense_teacher(spec: str | None):
    """The teacher of the spatial term: one whose image tower is an edgeclip tower (a reference-lit teacher),
    which reads its head at every location of its grid."""
    from edgeclip.models.student import Student
    from edgeclip.models.teachers import load_teacher

    if not spec:
        raise EdgeClipError("spatial > 0 needs `teacher:` (its dense maps are made online from each batch)")
    t = load_teacher(spec, device="cpu")
    if not isinstance(t.image_encoder, Student):
        raise EdgeClipError(
            f"the spatial term needs a teacher with an edgeclip image tower (reference-lit); {t.id}'s tower has "
            "no dense reading here yet (set spatial: 0)"
        )
    t.image_encoder.eval().requires_grad_(False)
    return t


def caption_loss(
    model: Captioner,
    x: torch.Tensor,
    tokens: torch.Tensor,
    target: torch.Tensor | None,
    alpha: float,
    beta: float,
    k: int,
    mse,
    label_smoothing: float = 0.0,
    spatial: float = 0.0,
    spatial_target: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    if spatial > 0 and spatial_target is not None:
        logits, emb, dense = model(x, tokens, k, dense=int(round(spatial_target.shape[1] ** 0.5)))
    else:
        logits, emb = model(x, tokens, k)
    ce = next_word_ce(logits, tokens, label_smoothing=label_smoothing)
    out = {"ce": ce}
    loss = beta * ce
    if spatial > 0 and spatial_target is not None:
        sp = (1.0 - (dense * spatial_target).sum(-1)).mean()
        out["spatial"] = sp
        loss = loss + spatial * sp
    if alpha > 0 and target is not None:
        d = mse(emb, target)
        out["mse"] = d
        loss = loss + alpha * d
    out["loss"] = loss
    return out


@torch.no_grad()
def caption_tensor(
    model: Captioner, x_uint8: torch.Tensor, pp: Preprocess, d: Decoding, batch_size: int = 32
) -> list[str]:
    dev = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(x_uint8), batch_size):
        out.extend(generate(model, normalize(x_uint8[i : i + batch_size].to(dev), pp.mean, pp.std), d))
    return out


class CaptionTask(Task):
    """The captioner as a Trainer task. ``setup`` reads the splits, builds the vocabulary and the teacher targets
    (``targets``), builds the model (after seeding) and holds the images in memory; a step is the
    alpha * MSE + beta * CE loss on an augmented batch; ``on_epoch_end`` captions val, keeps the best epoch by
    CIDEr and stops early; ``save`` writes the last (and, without val, the only) checkpoint."""

    def __init__(self, cfg: CaptionTrainConfig, train: TrainConfig, resume: bool, progress: bool):
        self.cfg, self.train, self.resume, self.progress = cfg, train, resume, progress
        self.out = Path(cfg.out)
        self.min_count, self.max_len = _vocab_cfg(cfg)
        self.mcfg = dict(cfg.model or {})
        self.teacher_desc: dict | None = None
        self.cache = None
        self.val = None
        self.state = {"best": float("-inf"), "best_epoch": 0, "bad": 0}
        if resume and (self.out / "best.json").is_file():
            self.state.update(read_json(self.out / "best.json"))

    def setup(self, trainer: Trainer) -> None:
        cfg = self.cfg
        self.splits()
        self.build_vocab()
        self.targets()
        seed_everything(
            self.train.seed
        )  # before the model is built: a fixed seed gives bit-identical weights
        self.model = build_captioner(self.vocab, self.mcfg, weights=cfg.weights)
        self.init_info = init_encoder_from_student(self.model, cfg.init) if cfg.init else None
        self.pp = Preprocess(size=self.model.cfg.img_size, mean=CLIP_MEAN, std=CLIP_STD)
        self.build_dataset()
        self.build_val()
        from edgeclip.losses import build_loss

        self.mse = build_loss("mse")
        aug = dict(cfg.augment or {})
        self.pad, self.flip = int(aug.get("pad", 16)), bool(aug.get("flip", True))
        self.fingerprint = {
            "teacher": (self.teacher_desc or {}).get("id"),
            "data": cfg.data,
            "alpha": cfg.alpha,
            "beta": cfg.beta,
            "model": asdict(self.model.cfg),
            "vocab": len(self.model.vocab),
        }
        for key in (
            "label_smoothing",
            "spatial",
        ):  # only when set: earlier runs keep their fingerprint (resume)
            if getattr(cfg, key):
                self.fingerprint[key] = getattr(cfg, key)
        if cfg.spatial:
            self.fingerprint["spatial_grid"] = cfg.spatial_grid

    # ---- setup, step by step
    def splits(self) -> None:
        cfg = self.cfg
        self.train_set = load_captions(cfg.data, cfg.images, cfg.train_split, cfg.splits)
        if cfg.max_images:
            self.train_set.items = self.train_set.items[: cfg.max_images]
        self.val_set = None
        if cfg.val_data or cfg.val_split:
            self.val_set = load_captions(
                cfg.val_data or cfg.data,
                cfg.val_images or (cfg.images if not cfg.val_data else None),
                cfg.val_split if cfg.val_data is None else None,
                cfg.splits if not cfg.val_data else None,
            )
            if cfg.val_max_images:
                self.val_set.items = self.val_set.items[: cfg.val_max_images]

    def build_vocab(self) -> None:
        self.vocab = vocab = Vocab.build(
            self.train_set.all_captions(),
            min_count=self.min_count,
            max_size=int((self.cfg.vocab or {}).get("max_size", 0)),
        )
        vpath = self.out / "vocab.json"
        if self.resume and vpath.is_file():
            old = Vocab.from_dict(read_json(vpath))
            if old.fingerprint() != vocab.fingerprint():
                raise CheckpointError(
                    f"vocabulary mismatch: {self.out} was trained with a {len(old)}-word vocabulary, the data "
                    f"now gives {len(vocab)} words (data or vocab settings changed); use another --out"
                )
        write_json(vpath, vocab.to_dict())

    def targets(self) -> None:
        """The distillation targets: the teacher-embedding cache, built from ``teacher`` when missing; with the
        spatial term, the teacher itself (its dense maps are made online, from the augmented batch)."""
        cfg, mcfg = self.cfg, self.mcfg
        self.spatial_teacher = None
        if cfg.spatial > 0:
            self.spatial_teacher = _dense_teacher(cfg.teacher)
        if cfg.alpha <= 0:
            if cfg.teacher and "teacher_dim" not in mcfg:  # same architecture as the distilled run
                from edgeclip.models.teachers import load_teacher

                self.teacher_desc = load_teacher(cfg.teacher, device="cpu").describe()
                mcfg["teacher_dim"] = self.teacher_desc["embed_dim"]
            return
        from edgeclip.train.cache import EmbeddingCache, build_cache

        cache_dir = Path(cfg.cache) if cfg.cache else self.out / "teacher-cache"
        if cfg.teacher:
            from edgeclip.models.teachers import load_teacher

            teacher = load_teacher(cfg.teacher, device="cpu")
            self.teacher_desc = teacher.describe()
            keys = [it.record().key for it in self.train_set.items]
            if not (cache_dir / "meta.json").is_file() or EmbeddingCache(cache_dir).missing(keys):
                recs = [it.record() for it in self.train_set.items]
                build_cache(recs, teacher, cache_dir, views=1, progress=self.progress)
            self.cache = EmbeddingCache(cache_dir)
            self.cache.check_teacher(self.teacher_desc)
        elif (cache_dir / "meta.json").is_file():
            self.cache = EmbeddingCache(cache_dir)
            self.teacher_desc = self.cache.teacher
        else:
            raise EdgeClipError(
                "alpha > 0 needs a teacher (`teacher:`) or a built teacher-embedding cache (`cache:`); "
                "set alpha: 0 to train without distillation"
            )
        mcfg.setdefault("teacher_dim", self.cache.dim)
        if int(mcfg["teacher_dim"]) != self.cache.dim:
            raise EdgeClipError(
                f"model.teacher_dim {mcfg['teacher_dim']} != teacher embedding size {self.cache.dim}"
            )

    def build_dataset(self) -> None:
        x, items, self.unreadable = _prepare(self.train_set, self.pp.size, self.progress)
        cache = self.cache
        self.not_cached = 0
        if cache is not None:
            have = [i for i, it in enumerate(items) if it.record().key in cache]
            self.not_cached = len(items) - len(have)
            x, items = x[have], [items[i] for i in have]
            targets = cache.targets([it.record().key for it in items], view=0)
        else:
            targets = torch.zeros(len(items), 1)
        if not items:
            raise EdgeClipError(
                f"no trainable images in {self.cfg.data} (skipped: {self.train_set.skipped}, "
                f"unreadable: {len(self.unreadable)})"
            )
        caps = [[self.vocab.encode(c, self.max_len) for c in it.captions] for it in items]
        self.n_items = len(items)
        self.dataset = CaptionTrainSet(x, caps, targets, self.cfg.captions_per_image, self.max_len + 2)

    def build_val(self) -> None:
        if self.val_set is None:
            return
        vx, vitems, _ = _prepare(self.val_set, self.pp.size, progress=False)
        oov = self.vocab.oov_rate(c for it in vitems for c in it.captions)
        if oov > 0.5:
            raise EdgeClipError(
                f"vocabulary mismatch: {oov:.0%} of the validation words are not in the training "
                "vocabulary (another language or dataset?)"
            )
        self.val = (vx, {it.name: it.captions for it in vitems}, [it.name for it in vitems])

    # ---- the loop's hooks
    def training_step(self, model, batch):
        img, toks, tgt = batch
        aug = augment_batch(img, pad=self.pad, flip=self.flip)
        xb = normalize(aug, self.pp.mean, self.pp.std)
        cfg = self.cfg
        spatial_target = self.teacher_dense(aug) if cfg.spatial > 0 else None
        target = tgt if self.cache is not None else None
        k = cfg.captions_per_image
        return caption_loss(
            model,
            xb,
            toks.reshape(-1, toks.shape[-1]),
            target,
            cfg.alpha,
            cfg.beta,
            k,
            self.mse,
            cfg.label_smoothing,
            cfg.spatial,
            spatial_target,
        )

    @torch.no_grad()
    def teacher_dense(self, aug: torch.Tensor) -> torch.Tensor:
        """The teacher's dense map of the same augmented views the student sees, at the teacher's own input size
        and normalisation: (B, grid*grid, D)."""
        t = self.spatial_teacher
        x = F.interpolate(aug.float(), size=(t.image_size, t.image_size), mode="bilinear", antialias=True)
        x = normalize(x.clamp(0, 255), t.mean, t.std)
        return t.image_encoder.dense(t.image_encoder.grid(x), self.cfg.spatial_grid)

    def on_epoch_end(self, model, epoch, record):
        if self.val is None:
            return {}
        t0 = time.time()
        raw, (vx, refs, names) = unwrap(model), self.val
        hyps = caption_tensor(raw, vx, self.pp, Decoding(beam=self.cfg.val_beam, max_len=self.max_len))
        cider = score_captions(refs, dict(zip(names, hyps)), metrics=("CIDEr",))["CIDEr"]
        res = {"val_cider": cider, "val_seconds": time.time() - t0, "val_sample": hyps[0] if hyps else ""}
        state = self.state
        if cider > state["best"]:
            state.update(best=cider, best_epoch=epoch, bad=0)
            self.save_to(raw, "captioner.pt", epoch=epoch, val_cider=cider)
        else:
            state["bad"] += 1
        write_json(self.out / "best.json", state)
        if self.cfg.patience and state["bad"] >= self.cfg.patience:
            res["stop_training"] = True
        return res

    def save(self, model, out_dir: Path, history: dict) -> None:
        last = history["epochs"][-1] if history["epochs"] else {}
        self.save_to(model, "captioner_last.pt", epoch=last.get("epoch"), val_cider=last.get("val_cider"))
        if self.val is None or not (out_dir / "captioner.pt").is_file():
            self.save_to(model, "captioner.pt", epoch=last.get("epoch"))

    def save_to(self, model, name: str, **extra) -> None:
        info = {
            "train_config": asdict(self.cfg),
            "n_train_images": self.n_items,
            "vocab_size": len(self.vocab),
            "init": self.init_info,
            "skipped": {
                "captions": self.train_set.skipped,
                "unreadable_images": len(self.unreadable),
                "not_in_cache": self.not_cached,
            },
        }
        save_captioner(model, self.out / name, self.pp, self.teacher_desc, {**info, **extra})

    def summary(self) -> dict[str, Any]:
        return {
            "best": dict(self.state),
            "params": self.model.param_counts(),
            "init": self.init_info,
            "data": {
                "train": self.train_set.summary(),
                "val": self.val_set.summary() if self.val_set else None,
                "unreadable_train_images": self.unreadable,
                "not_in_cache": self.not_cached,
            },
        }


def train_captioner(cfg: CaptionTrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a captioner; writes OUT/captioner.pt (best val CIDEr), captioner_last.pt, history.json."""
    if not cfg.data:
        raise EdgeClipError("no captions file given (`data:` in the config)")
    if cfg.alpha < 0 or cfg.beta < 0 or cfg.alpha + cfg.beta <= 0:
        raise EdgeClipError(f"alpha ({cfg.alpha}) and beta ({cfg.beta}) must be >= 0 and not both 0")
    if cfg.captions_per_image < 1:
        raise EdgeClipError("captions_per_image must be >= 1")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise EdgeClipError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.spatial < 0 or not 1 <= cfg.spatial_grid <= 32:
        raise EdgeClipError(
            f"spatial must be >= 0 and spatial_grid in [1, 32], got {cfg.spatial} and {cfg.spatial_grid}"
        )
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    tcfg = build_dataclass(TrainConfig, {**DEFAULT_TRAIN, **(cfg.train or {})}, "train")
    task = CaptionTask(cfg, tcfg, resume, progress)
    hist = Trainer(tcfg, cfg.out, resume=resume, progress=progress).fit(task)
    hist.update(task.summary())
    write_json(Path(cfg.out) / "history.json", hist)
    return hist


def evaluate_captioner(
    model: Captioner,
    pp: Preprocess,
    cs: CaptionSet,
    d: Decoding | None = None,
    batch_size: int = 32,
    samples: int = 10,
    progress: bool = False,
    allow_vocab_mismatch: bool = False,
    **decoding,
) -> dict[str, Any]:
    """Caption every image of ``cs`` (``d`` and/or :class:`Decoding` fields) and score against its references
    (all metrics + sample captions)."""
    d = Decoding.of(d, **decoding)
    oov = model.vocab.oov_rate(cs.all_captions())
    if oov > 0.5 and not allow_vocab_mismatch:
        raise EdgeClipError(
            f"vocabulary mismatch: {oov:.0%} of the reference words are unknown to the model's "
            f"{len(model.vocab)}-word vocabulary (wrong language or dataset?)"
        )
    x, items, skipped = _prepare(cs, pp.size, progress)
    if not items:
        raise EdgeClipError("no readable images to caption")
    t0 = time.time()
    hyps = caption_tensor(model, x, pp, d, batch_size)
    dt = time.time() - t0
    names = [it.name for it in items]
    sc = score_captions({it.name: it.captions for it in items}, dict(zip(names, hyps)))
    return {
        "metrics": {k: v for k, v in sc.items() if k not in ("unavailable", "tokenizer", "n")},
        "unavailable": sc["unavailable"],
        "tokenizer": sc["tokenizer"],
        "n_images": len(items),
        **d.as_dict(),
        "reference_oov_rate": oov,
        "decode_seconds": dt,
        "skipped": {"captions": cs.skipped, "unreadable_images": len(skipped)},
        "samples": [
            {"image": n, "caption": h, "references": it.captions}
            for n, h, it in list(zip(names, hyps, items))[:samples]
        ],
        "captions": dict(zip(names, hyps)),
    }


@torch.no_grad()
def image_grounding(
    model: Captioner, pp: Preprocess, cs: CaptionSet, max_len: int = 20, batch_size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """How much the decoder uses the image: reference-caption cross-entropy (nats/word, teacher forcing) with each
    image's own encoder state vs with another image's (a fixed derangement). A decoder that ignores the image
    has a gain near 0, however good its language model; greedy/beam captions then collapse to a few sentences."""
    model.eval()
    x, items, _ = _prepare(cs, pp.size, progress=False)
    if len(items) < 2:
        raise EdgeClipError("image_grounding needs at least 2 readable images")
    states = [
        model.encode(normalize(x[i : i + batch_size], pp.mean, pp.std)) for i in range(0, len(x), batch_size)
    ]
    state = tuple(torch.cat(parts) for parts in zip(*states))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(items), generator=g)
    perm = torch.where(
        perm == torch.arange(len(items)), torch.roll(perm, 1), perm
    )  # nobody keeps its own image
    rows, owner = [], []
    for i, it in enumerate(items):
        for cap in it.captions:
            rows.append(model.vocab.encode(cap, max_len))
            owner.append(i)
    tok = pad_ids(rows, max(len(r) for r in rows))
    owner_t = torch.tensor(owner)

    def ce(index: torch.Tensor) -> float:
        tot, n = 0.0, 0
        for i in range(0, len(rows), 256):
            sl = slice(i, i + 256)
            st = tuple(t[index[sl]] for t in state)
            tot += float(next_word_ce(model.teacher_forced(st, tok[sl]), tok[sl], reduction="sum"))
            n += int((tok[sl, 1:] != PAD_ID).sum())
        return tot / n

    own, other = ce(owner_t), ce(perm[owner_t])
    return {
        "ce_own_image": own,
        "ce_other_image": other,
        "gain_nats_per_word": other - own,
        "n_images": len(items),
        "n_captions": len(rows),
    }
