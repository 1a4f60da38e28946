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

from edgeclip.core.config import build_dataclass
from edgeclip.core.env import seed_everything
from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.memory import crop_views, normalize, preload
from edgeclip.data.sources import open_source
from edgeclip.data.transforms import Preprocess, ViewSpec, apply_view, view_params
from edgeclip.losses import build_loss
from edgeclip.models.student import create_student, save_student
from edgeclip.train.cache import EmbeddingCache
from edgeclip.train.engine import TrainConfig, fit
from edgeclip.zeroshot.evaluate import tensor_top1


@dataclass
class DistillConfig:
    teacher: str = ""
    data: str = ""
    out: str = "runs/distill"
    cache: str | None = None  # None: run the teacher online
    # student config; unset keys: from ``init`` when given, else shufflenet_v2_x1_0 at 224 px
    student: dict[str, Any] = field(default_factory=dict)
    loss: Any = "cosine"
    views: int = 1  # online mode: random views per epoch; cached mode: taken from the cache
    preload: Any = "auto"  # hold images in memory (auto: when the student input is <= 64 px)
    val: str | None = None  # ImageFolder for zero-shot top-1 after each epoch
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    train: dict[str, Any] = field(default_factory=dict)
    max_images: int = 0
    init: str | None = None  # start from this student checkpoint (same teacher; its architecture is used)


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


def distill(cfg: DistillConfig, resume: bool = False, progress: bool = True, teacher=None) -> dict[str, Any]:
    from edgeclip.models.teachers import load_teacher

    if not cfg.teacher:
        raise EdgeClipError("no teacher given (--teacher or `teacher:` in the config)")
    if not cfg.data:
        raise EdgeClipError("no training data given (--data or `data:` in the config)")
    tcfg = build_dataclass(TrainConfig, cfg.train, "train")
    dev = "cuda" if torch.cuda.is_available() and tcfg.accelerator in ("auto", "cuda", "gpu") else "cpu"
    teacher = teacher or load_teacher(cfg.teacher, device="cpu")
    scfg = dict(cfg.student)
    init = None
    if cfg.init:
        from edgeclip.models.student import init_student_config

        scfg, init = init_student_config(cfg.init, teacher.id, scfg)
    arch = scfg.pop("arch", "shufflenet_v2_x1_0")
    size = int(scfg.setdefault("img_size", 224))
    seed_everything(tcfg.seed)  # before the model is built: a fixed seed gives bit-identical weights
    student = create_student(arch, teacher.embed_dim, **scfg)
    if init is not None:
        student.load_state_dict(init.state_dict())
    pp = Preprocess(
        size=size, mean=tuple(teacher.mean), std=tuple(teacher.std)
    )  # student sees the teacher's normalisation
    src = open_source(cfg.data)
    if src.is_stream:
        return _distill_stream(cfg, src, teacher, student, pp, tcfg, resume, progress)
    records = src.records
    if cfg.max_images:
        rng = random.Random(tcfg.seed)
        records = rng.sample(records, min(cfg.max_images, len(records)))
    cache = None
    if cfg.cache:
        cache = EmbeddingCache(cfg.cache)
        cache.check_teacher(teacher.describe())
        if cache.dim != student.embed_dim:
            raise EdgeClipError(f"cache dim {cache.dim} != student head dim {student.embed_dim}")
        n_before = len(records)
        records = [r for r in records if r.key in cache]
        if not records:
            raise EdgeClipError(
                f"none of the {n_before} images of {cfg.data} are in cache {cfg.cache} "
                "(files changed since? rebuild with `edgeclip cache`)"
            )
        skipped_not_cached = n_before - len(records)
    else:
        skipped_not_cached = 0
    do_preload = cfg.preload if isinstance(cfg.preload, bool) else size <= 64
    loss_fn = build_loss(cfg.loss)
    views = cache.views if cache else max(1, cfg.views)
    vspec = cache.view_spec if cache else ViewSpec(seed=tcfg.seed)
    teacher_size = teacher.image_size
    skipped: list[str] = []

    if do_preload:
        psize = max(size, teacher_size if cache is None else size)
        x, kept, skipped = preload(records, psize, progress=progress)
        records = [records[i] for i in kept]
        N = len(records)
        boxes = torch.tensor(
            [[view_params(r.key, v, vspec)[0] for v in range(views)] for r in records], dtype=torch.float32
        )
        flips = torch.tensor([[view_params(r.key, v, vspec)[1] for v in range(views)] for r in records])
        if cache is not None:
            targets = cache.targets([r.key for r in records])
        else:
            targets = torch.zeros(N, 1)
        dataset = torch.utils.data.TensorDataset(x, boxes, flips, targets)

        def step(model, batch):
            img, bx, fl, tg = batch
            B = img.shape[0]
            v = torch.randint(0, views, (B,))
            if cache is None:  # online: a fresh random view each time
                seeds = torch.randint(0, 2**31 - 1, (B,)).tolist()
                vb = [view_params(str(s), 1, vspec) for s in seeds]
                b = torch.tensor([p[0] for p in vb], dtype=torch.float32, device=img.device)
                f = torch.tensor([p[1] for p in vb], device=img.device)
                with torch.no_grad():
                    tin = normalize(crop_views(img, b, f, teacher_size), teacher.mean, teacher.std)
                    tgt = teacher.encode_image(tin)
            else:
                ar = torch.arange(B)
                b, f, tgt = bx[ar, v], fl[ar, v], tg[ar, v]
            sin = normalize(crop_views(img, b, f, size), pp.mean, pp.std)
            if sin.is_cuda:
                sin = sin.contiguous(memory_format=torch.channels_last)
            emb = model(sin)
            loss = loss_fn(emb, tgt)
            return {
                "loss": loss,
                "cos": F.cosine_similarity(emb.detach().float(), tgt.float(), dim=-1).mean(),
            }
    else:
        spp, tpp = pp.torch_transform(), teacher.preprocess
        dataset = _FileViews(records, spp, tpp, views, vspec, cache, online=cache is None)

        step = _pil_step(teacher, cache, loss_fn)

    val = _prepare_val(cfg, teacher, pp, size) if cfg.val else None

    def on_epoch_end(model, epoch, rec):
        if val is None:
            return {}
        return {"val_top1": tensor_top1(model, val[0], val[1], val[2])}

    def save(model, out_dir: Path, history):
        extra = {
            "distill_config": asdict(cfg),
            "n_train": len(records),
            "skipped": len(skipped),
            "views": views,
            "final": history["epochs"][-1] if history["epochs"] else {},
        }
        save_student(model, out_dir / "student.pt", pp, teacher.describe(), extra)

    if cache is None and dev == "cuda":
        teacher.to("cuda")
    hist = fit(
        tcfg,
        student,
        dataset,
        step,
        cfg.out,
        resume=resume,
        save_fn=save,
        on_epoch_end=on_epoch_end if val is not None else None,
        progress=progress,
        fingerprint=run_fingerprint(cfg, teacher, student),
    )
    hist["skipped_images"] = skipped
    hist["skipped_not_in_cache"] = skipped_not_cached
    return hist


def _view_item(ds, r, img):
    """(student input, teacher input or cached target, ok) for one decoded image of a PIL-path dataset."""
    if ds.online:  # a fresh random view each time; the teacher sees the same crop
        box, flip = view_params(f"{r.key}#{random.randrange(1 << 30)}", 1, ds.vspec)
        im = apply_view(img, box, flip)
        return ds.spp(im), ds.tpp(im), True
    v = random.randrange(ds.views)
    box, flip = view_params(r.key, v, ds.vspec)
    tgt = ds.cache.target(r.key, v)
    return ds.spp(apply_view(img, box, flip)), tgt, True


def _pil_step(teacher, cache, loss_fn):
    """Training step for datasets that yield (student input, teacher input | cached target, ok)."""

    def step(model, batch):
        sin, tin_or_tgt, _ = batch
        if cache is None:
            with torch.no_grad():
                tgt = teacher.encode_image(tin_or_tgt)
        else:
            tgt = tin_or_tgt
        emb = model(sin)
        return {
            "loss": loss_fn(emb, tgt),
            "cos": F.cosine_similarity(emb.detach().float(), tgt.float(), dim=-1).mean(),
        }

    return step


class _FileViews(torch.utils.data.Dataset):
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

    def __init__(self, src, n: int, spp, tpp, views, vspec, cache, online, shuffle_buffer: int = 1000):
        self.src, self.n, self.spp, self.tpp = src, n, spp, tpp
        self.views, self.vspec, self.cache, self.online, self.buf = (
            views,
            vspec,
            cache,
            online,
            shuffle_buffer,
        )

    def __len__(self):
        ws = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        return max(1, self.n // ws)

    def _mine(self):
        ws = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        rk = torch.distributed.get_rank() if ws > 1 else 0
        wi = torch.utils.data.get_worker_info()
        nw, wid = (wi.num_workers, wi.id) if wi else (1, 0)
        stride, offset = ws * nw, rk * nw + wid
        for i, r in enumerate(self.src):
            if i % stride == offset and (self.cache is None or r.key in self.cache):
                yield r

    def __iter__(self):
        rng = random.Random()
        buf = []
        while True:
            got = False
            for r in self._mine():
                got = True
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


def _distill_stream(
    cfg: DistillConfig, src, teacher, student, pp: Preprocess, tcfg: TrainConfig, resume: bool, progress: bool
) -> dict[str, Any]:
    """Distill from WebDataset shards without holding the corpus on disk as files or in memory."""
    cache = None
    if cfg.cache:
        cache = EmbeddingCache(cfg.cache)
        cache.check_teacher(teacher.describe())
        n = sum(1 for r in src if r.key in cache)
        if n == 0:
            raise EdgeClipError(
                f"none of the samples of {cfg.data} are in cache {cfg.cache}; run `edgeclip cache` on them"
            )
    else:
        n = sum(1 for _ in src)
    views = cache.views if cache else max(1, cfg.views)
    vspec = cache.view_spec if cache else ViewSpec(seed=tcfg.seed)
    dataset = _StreamViews(
        src, n, pp.torch_transform(), teacher.preprocess, views, vspec, cache, cache is None
    )
    loss_fn = build_loss(cfg.loss)

    step = _pil_step(teacher, cache, loss_fn)

    def save(model, out_dir: Path, history):
        save_student(
            model,
            out_dir / "student.pt",
            pp,
            teacher.describe(),
            {"distill_config": asdict(cfg), "n_train": n, "views": views, "streamed": True},
        )

    hist = fit(
        tcfg,
        student,
        dataset,
        step,
        cfg.out,
        resume=resume,
        save_fn=save,
        progress=progress,
        fingerprint=run_fingerprint(cfg, teacher, student),
    )
    hist["n_train"] = n
    return hist
