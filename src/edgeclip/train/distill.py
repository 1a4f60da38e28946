"""Label-free distillation of a teacher's image embedding into a student (Clip4Retrofit).

Targets come from a teacher-embedding cache (fast; K deterministic augmented views) or from the
teacher run online on random views. Small images (CIFAR-sized) are held in memory and cropped per
batch with ``roi_align``; large images stream from disk through a DataLoader.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.core.config import SHIPPED, build_dataclass, read_yaml
from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.memory import crop_views, normalize, preload
from edgeclip.data.sources import open_source
from edgeclip.data.transforms import Preprocess, ViewSpec, apply_view, view_params
from edgeclip.losses import build_loss
from edgeclip.models.student import create_student, save_student
from edgeclip.train.cache import EmbeddingCache
from edgeclip.train.engine import Task, TrainConfig, Trainer
from edgeclip.zeroshot.evaluate import tensor_top1

RECIPE = SHIPPED / "recipes" / "distill.yaml"  # distill's defaults, as data (the last reference lab's recipe)


def distill_recipe() -> dict[str, Any]:
    """``edgeclip distill``'s defaults: the last reference lab's recipe (loss, cache views, student arch and size,
    train settings), a fresh copy each call."""
    rec = read_yaml(RECIPE, "distill recipe") or {}
    return {
        k: rec.get(k) or ({} if k in ("student", "train") else None)
        for k in ("loss", "views", "student", "train")
    }


@dataclass
class DistillConfig:
    teacher: str = ""
    data: str = ""
    out: str = "runs/distill"
    cache: str | None = None  # None: run the teacher online
    # student config; unset keys: from ``init`` when given, else the recipe's (distill_recipe())
    student: dict[str, Any] = field(default_factory=dict)
    loss: Any = None  # None: the recipe's
    views: int = 1  # online mode: random views per epoch; cached mode: taken from the cache
    preload: Any = "auto"  # hold images in memory (auto: when the student input is <= 64 px)
    val: str | None = None  # ImageFolder for zero-shot top-1 after each epoch
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys over the recipe's
    max_images: int = 0
    init: str | None = None  # start from this student checkpoint (same teacher; its architecture is used)

    def __post_init__(self) -> None:
        if self.loss is None:
            self.loss = distill_recipe()["loss"] or "cosine"


def run_fingerprint(cfg: DistillConfig, teacher, student) -> dict[str, Any]:
    """What makes a distillation run this run: resuming into a folder of another one is refused."""
    return {
        "teacher": teacher.id,
        "student": student.config,
        "data": cfg.data,
        "cache": cfg.cache,
        "loss": cfg.loss,
        "views": cfg.views,
        "max_images": cfg.max_images,
    }


class DistillTask(Task):
    """Label-free distillation as a Trainer task. ``setup`` (after the Trainer has seeded every RNG) builds the
    student and one of three data paths: images held in memory and cropped per batch (small inputs), image files
    decoded per sample, or tar shards streamed; targets come from the cache or from the teacher run online."""

    def __init__(self, cfg: DistillConfig, teacher, train: TrainConfig, progress: bool = True):
        self.cfg, self.teacher, self.train, self.progress = cfg, teacher, train, progress
        self.skipped: list[str] = []
        self.skipped_not_cached = 0

    # ---- setup: the student, then the data
    def setup(self, trainer: Trainer) -> None:
        cfg, teacher = self.cfg, self.teacher
        scfg, init = dict(cfg.student), None
        if cfg.init:
            from edgeclip.models.student import init_student_config

            scfg, init = init_student_config(cfg.init, teacher.id, scfg)
        recipe = distill_recipe()["student"]
        arch = scfg.pop("arch", recipe.get("arch", "shufflenet_v2_x1_0"))
        self.size = int(scfg.setdefault("img_size", recipe.get("img_size", 224)))
        self.model = create_student(arch, teacher.embed_dim, **scfg)
        if init is not None:
            self.model.load_state_dict(init.state_dict())
        # the student sees the teacher's normalisation
        self.pp = Preprocess(size=self.size, mean=tuple(teacher.mean), std=tuple(teacher.std))
        self.loss_fn = build_loss(cfg.loss)
        self.cache = self._open_cache()
        if self.cache is None:  # reinforced shards carry their own targets: no cache, no teacher run
            from edgeclip.train.shards import ShardTargets, shard_meta

            meta = shard_meta(cfg.data) if open_source(cfg.data).is_stream else None
            if meta is not None:
                self.cache = ShardTargets(meta)
                self.cache.check_teacher(teacher.describe())
        self.views = self.cache.views if self.cache else max(1, cfg.views)
        self.vspec = self.cache.view_spec if self.cache else ViewSpec(seed=self.train.seed)
        src = open_source(cfg.data)
        if src.is_stream:
            self.mode = "stream"
            self._setup_stream(src)
        else:
            self.records = self._records(src)
            preload_ok = cfg.preload if isinstance(cfg.preload, bool) else self.size <= 64
            self.mode = "memory" if preload_ok else "files"
            self._setup_memory() if preload_ok else self._setup_files()
        self.val = _prepare_val(cfg, teacher, self.pp, self.size) if cfg.val else None
        self.fingerprint = run_fingerprint(cfg, teacher, self.model)
        if self.cache is None and trainer.fabric.device.type == "cuda":
            teacher.to("cuda")

    def _open_cache(self) -> EmbeddingCache | None:
        if not self.cfg.cache:
            return None
        cache = EmbeddingCache(self.cfg.cache)
        cache.check_teacher(self.teacher.describe())
        if cache.dim != self.model.embed_dim:
            raise EdgeClipError(f"cache dim {cache.dim} != student head dim {self.model.embed_dim}")
        return cache

    def _records(self, src) -> list:
        cfg, records = self.cfg, src.records
        if cfg.max_images:
            records = random.Random(self.train.seed).sample(records, min(cfg.max_images, len(records)))
        if self.cache is not None:
            n_before = len(records)
            records = [r for r in records if r.key in self.cache]
            if not records:
                raise EdgeClipError(
                    f"none of the {n_before} images of {cfg.data} are in cache {cfg.cache} "
                    "(files changed since? rebuild with `edgeclip cache`)"
                )
            self.skipped_not_cached = n_before - len(records)
        return records

    def _setup_memory(self) -> None:
        """Small images in memory; each batch is cropped to its views (the cached teacher's, or fresh ones)."""
        cache, vspec, views = self.cache, self.vspec, self.views
        psize = max(self.size, self.teacher.image_size if cache is None else self.size)
        x, kept, self.skipped = preload(self.records, psize, progress=self.progress)
        self.records = [self.records[i] for i in kept]
        boxes = torch.tensor(
            [[view_params(r.key, v, vspec)[0] for v in range(views)] for r in self.records],
            dtype=torch.float32,
        )
        flips = torch.tensor([[view_params(r.key, v, vspec)[1] for v in range(views)] for r in self.records])
        targets = cache.targets([r.key for r in self.records]) if cache else torch.zeros(len(self.records), 1)
        self.dataset = torch.utils.data.TensorDataset(x, boxes, flips, targets)

    def _setup_files(self) -> None:
        self.dataset = FileViews(
            self.records,
            self.pp.torch_transform(),
            self.teacher.preprocess,
            self.views,
            self.vspec,
            self.cache,
            online=self.cache is None,
        )

    def _setup_stream(self, src) -> None:
        """WebDataset shards, without holding the corpus on disk as files or in memory."""
        from edgeclip.train.shards import ShardTargets

        if isinstance(self.cache, ShardTargets):
            n = int(self.cache.meta["n"])
        elif self.cache is not None:
            n = sum(1 for r in src if r.key in self.cache)
            if n == 0:
                raise EdgeClipError(
                    f"none of the samples of {self.cfg.data} are in cache {self.cfg.cache}; run `edgeclip cache`"
                    " on them"
                )
        else:
            n = sum(1 for _ in src)
        self.records = range(n)  # only its length is used
        self.dataset = _StreamViews(
            src,
            n,
            self.pp.torch_transform(),
            self.teacher.preprocess,
            self.views,
            self.vspec,
            self.cache,
            self.cache is None,
            shuffle_buffer=1000 if self.train.shuffle else 0,
            seed=self.train.seed,
        )

    # ---- the steps and hooks
    def training_step(self, model, batch):
        emb, tgt = (
            self._memory_batch(model, batch) if self.mode == "memory" else self._decoded_batch(model, batch)
        )
        return {
            "loss": self.loss_fn(emb, tgt),
            "cos": F.cosine_similarity(emb.detach().float(), tgt.float(), dim=-1).mean(),
        }

    def _memory_batch(self, model, batch):
        img, bx, fl, tg = batch
        B, teacher = img.shape[0], self.teacher
        if self.cache is None:  # online: a fresh random view each time, the teacher sees the same crop
            seeds = torch.randint(0, 2**31 - 1, (B,)).tolist()
            vb = [view_params(str(s), 1, self.vspec) for s in seeds]
            b = torch.tensor([p[0] for p in vb], dtype=torch.float32, device=img.device)
            f = torch.tensor([p[1] for p in vb], device=img.device)
            with torch.no_grad():
                tgt = teacher.encode_image(
                    normalize(crop_views(img, b, f, teacher.image_size), teacher.mean, teacher.std)
                )
        else:  # one of the cached views, with exactly the crop the teacher saw
            v, ar = torch.randint(0, self.views, (B,)), torch.arange(B)
            b, f, tgt = bx[ar, v], fl[ar, v], tg[ar, v]
        sin = normalize(crop_views(img, b, f, self.size), self.pp.mean, self.pp.std)
        if sin.is_cuda:
            sin = sin.contiguous(memory_format=torch.channels_last)
        return model(sin), tgt

    def _decoded_batch(self, model, batch):
        sin, tin_or_tgt, _ = batch
        if self.cache is None:
            with torch.no_grad():
                tgt = self.teacher.encode_image(tin_or_tgt)
        else:
            tgt = tin_or_tgt
        return model(sin), tgt

    def on_epoch_end(self, model, epoch, record):
        if self.val is None:
            return None
        return {"val_top1": tensor_top1(model, self.val[0], self.val[1], self.val[2])}

    def save(self, model, out_dir: Path, history: dict) -> None:
        extra = {
            "distill_config": asdict(self.cfg),
            "n_train": len(self.records),
            "views": self.views,
            **({"streamed": True} if self.mode == "stream" else {"skipped": len(self.skipped)}),
            "final": history["epochs"][-1] if history["epochs"] else {},
        }
        save_student(model, out_dir / "student.pt", self.pp, self.teacher.describe(), extra)


def distill(cfg: DistillConfig, resume: bool = False, progress: bool = True, teacher=None) -> dict[str, Any]:
    """Distill ``cfg.teacher`` into a student without labels; writes OUT/student.pt and OUT/history.json."""
    from edgeclip.models.teachers import load_teacher

    if not cfg.teacher:
        raise EdgeClipError("no teacher given (--teacher or `teacher:` in the config)")
    if not cfg.data:
        raise EdgeClipError("no training data given (--data or `data:` in the config)")
    tcfg = build_dataclass(TrainConfig, {**distill_recipe()["train"], **cfg.train}, "train")
    task = DistillTask(cfg, teacher or load_teacher(cfg.teacher, device="cpu"), tcfg, progress)
    hist = Trainer(tcfg, cfg.out, resume=resume, progress=progress).fit(task)
    hist["n_train"] = len(task.records)
    if task.mode != "stream":
        hist["skipped_images"], hist["skipped_not_in_cache"] = task.skipped, task.skipped_not_cached
    return hist


def _view_item(ds, r, img):
    """(student input, teacher input or cached target, ok) for one decoded image of a PIL-path dataset."""
    if ds.online:  # a fresh random view each time; the teacher sees the same crop
        box, flip = view_params(f"{r.key}#{random.randrange(1 << 30)}", 1, ds.vspec)
        im = apply_view(img, box, flip)
        return ds.spp(im), ds.tpp(im), True
    v = random.randrange(ds.views)
    box, flip = ds.cache.view_of(r, v)  # exactly the crop the teacher saw
    return ds.spp(apply_view(img, box, flip)), ds.cache.target_of(r, v), True


class FileViews(torch.utils.data.Dataset):
    def __init__(self, records, spp, tpp, views, vspec, cache, online):
        self.records, self.spp, self.tpp, self.views, self.vspec, self.cache, self.online = (
            records,
            spp,
            tpp,
            views,
            vspec,
            cache,
            online,
        )
        self.failed_loads = 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        for _ in range(10):  # a file that broke since it was listed: use another one (counted below)
            try:
                img = r.load()
                break
            except ImageLoadError:
                self.failed_loads += 1
                r = self.records[random.randrange(len(self.records))]
        else:
            raise EdgeClipError("too many unreadable images in a row; check the data folder")
        return _view_item(self, r, img)


def _prepare_val(cfg: DistillConfig, teacher, pp: Preprocess, size: int):
    from edgeclip.zeroshot.text import text_embeddings

    vsrc = open_source(cfg.val)
    if not vsrc.classes:
        raise EdgeClipError(f"--val {cfg.val} must be an ImageFolder (class sub-folders)")
    x, kept, _ = preload(vsrc.records, size, progress=False) if size <= 64 else (None, None, None)
    temb = text_embeddings(teacher, class_names(vsrc.classes), cfg.templates)
    if x is None:
        raise EdgeClipError(
            "per-epoch --val is supported for inputs <= 64 px; use `edgeclip eval` for larger ones"
        )
    y = torch.tensor([vsrc.records[i].label for i in kept])
    return normalize(x, pp.mean, pp.std), y, temb


class _StreamViews(torch.utils.data.IterableDataset):
    """Streams tar shards; each (rank, worker) takes every n-th sample and cycles, so that all ranks
    run the same number of steps (the loop ends epochs by step count)."""

    def __init__(
        self, src, n: int, spp, tpp, views, vspec, cache, online, shuffle_buffer: int = 1000, seed: int = 0
    ):
        self.src, self.n, self.spp, self.tpp, self.seed, self.epoch = src, n, spp, tpp, seed, 0
        self.views, self.vspec, self.cache, self.online, self.buf = (
            views,
            vspec,
            cache,
            online,
            shuffle_buffer,
        )

    def __len__(self):
        return max(1, self.n // _process_group()[1])

    def _mine(self):
        rk, ws = _process_group()
        wi = torch.utils.data.get_worker_info()
        nw, wid = (wi.num_workers, wi.id) if wi else (1, 0)
        stride, offset = ws * nw, rk * nw + wid
        for i, r in enumerate(self.src):
            if i % stride == offset and (self.cache is None or self.cache.holds(r)):
                yield r

    def __iter__(self):
        wi = torch.utils.data.get_worker_info()
        rk = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rng = random.Random(f"{self.seed}/{rk}/{wi.id if wi else 0}")  # a seeded shuffle buffer per reader
        buf = []
        while True:
            got = False
            for r in self._mine():
                got = True
                if not self.buf:  # no shuffling: the shards' order
                    item = self._item(r)
                    if item is not None:
                        yield item
                    continue
                buf.append(r)
                if len(buf) >= self.buf:
                    item = self._item(buf.pop(rng.randrange(len(buf))))
                    if item is not None:
                        yield item
            while buf:
                item = self._item(buf.pop(rng.randrange(len(buf))))
                if item is not None:
                    yield item
            if not got:
                return

    def _item(self, r):
        try:
            img = r.load()
        except ImageLoadError:
            return None
        return _view_item(self, r, img)


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the process group the stream is split over: (0, 1) without one."""
    from edgeclip.core.machine import launch_rank

    dist = torch.distributed
    return launch_rank() if dist.is_available() and dist.is_initialized() else (0, 1)
