"""Training cost: one distillation epoch with the cached teacher vs with the teacher run online.

Both epochs run in the same process, on the same images (a fixed, seeded subset written to a list
file), with the same student, loss, batch size and thread count, through the project's one
distillation trainer (:func:`edgeclip.train.distill.distill`). The one-off cost of building the
cache is measured too, so the break-even number of epochs can be read off.

The GPU variant (:func:`gpu_throughput`) measures distillation images/s with AMP + channels_last
(the engine's GPU defaults) against the rate at which the same DataLoader alone delivers batches.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeclip.core.errors import EdgeClipError


def write_subset(data: str | Path, n: int, out: Path, seed: int = 0) -> Path:
    """Write a seeded random subset of ``n`` images of ``data`` as a list file (``path,class``)."""
    from edgeclip.data.sources import open_source

    src = open_source(str(data))
    recs = list(src.records)
    if not recs:
        raise EdgeClipError(f"no images in {data}")
    rng = random.Random(seed)
    pick = rng.sample(recs, min(n, len(recs)))
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in pick:
        cls = src.classes[r.label] if src.classes and r.label is not None else ""
        lines.append(f"{Path(r.path).resolve()},{cls}" if cls else f"{Path(r.path).resolve()}")
    out.write_text("path,label\n" + "\n".join(lines) + "\n")
    return out


def _epoch_rate(hist: dict[str, Any], batch: int) -> dict[str, float]:
    ep = hist["epochs"][-1]
    n = ep["steps"] * batch
    return {
        "epoch_seconds": ep["seconds"],
        "steps": ep["steps"],
        "images": n,
        "images_per_s": n / ep["seconds"] if ep["seconds"] > 0 else 0.0,
        "final_loss": ep.get("loss"),
    }


@dataclass
class TrainingCostConfig:
    """Cached vs online distillation epoch on the same ``n_images`` images of ``data``. ``teacher_spec`` is any
    teacher spec; a bare open_clip architecture (``open_clip:ViT-B-32``, no tag) gives that CLIP architecture with
    random weights, which costs exactly as much to run as the real one."""

    data: str
    workdir: str
    teacher_spec: str = "open_clip:ViT-B-32"
    student: str = "shufflenet_v2_x1_0"
    img_size: int = 32
    n_images: int = 1000
    batch_size: int = 64
    seed: int = 0
    loss: str = "cosine"


def training_cost(cfg: TrainingCostConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One cached and one online epoch (see :class:`TrainingCostConfig`); -> the two rates and the speed-up."""
    from edgeclip.data.sources import open_source
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache

    data, teacher_spec, student, img_size = cfg.data, cfg.teacher_spec, cfg.student, cfg.img_size
    n_images, batch_size, seed, loss = cfg.n_images, cfg.batch_size, cfg.seed, cfg.loss
    workdir = Path(cfg.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)  # a fresh cache and fresh runs every time: the timings must not reuse anything
    workdir.mkdir(parents=True)
    subset = write_subset(data, n_images, workdir / "subset.csv", seed)
    teacher = load_teacher(teacher_spec, device="cpu")
    log(f"  building the teacher cache ({teacher.id}, {n_images} images)")
    t0 = time.perf_counter()
    summ = build_cache(
        open_source(str(subset)), teacher, workdir / "cache", views=1, batch_size=batch_size, progress=False
    )
    cache_s = time.perf_counter() - t0
    student_cfg = {"arch": student, "img_size": img_size, "small_input": img_size <= 64}
    runs = {
        mode: _one_epoch(
            mode, teacher, teacher_spec, subset, workdir, student_cfg, loss, batch_size, seed, log
        )
        for mode in ("cached", "online")
    }
    speedup = runs["online"]["epoch_seconds"] / runs["cached"]["epoch_seconds"]
    per_epoch_saving = runs["online"]["epoch_seconds"] - runs["cached"]["epoch_seconds"]
    return {
        "teacher": teacher.id,
        "teacher_spec": teacher_spec,
        "teacher_image_size": teacher.image_size,
        "student": student,
        "student_img_size": img_size,
        "n_images": summ.total,
        "batch_size": batch_size,
        "loss": loss,
        "threads": torch.get_num_threads(),
        "data": str(data),
        "cache_build_seconds": cache_s,
        "cache_images_per_s": summ.images_per_s,
        "cache_failed": summ.failed,
        "cached": runs["cached"],
        "online": runs["online"],
        "speedup_cached_vs_online": speedup,
        "target_speedup": 5.0,
        "target_met": speedup >= 5.0,
        "break_even_epochs": cache_s / per_epoch_saving if per_epoch_saving > 0 else None,
        "method": "same images (seeded subset), same student/loss/batch/threads, one epoch each through "
        "edgeclip.train.distill.distill; epoch_seconds = the training loop only (data already in memory)",
    }


def _one_epoch(
    mode, teacher, teacher_spec, subset, workdir, student_cfg, loss, batch_size, seed, log
) -> dict:
    """One distillation epoch, from the cache (``cached``) or running the teacher on every batch (``online``)."""
    from edgeclip.train.distill import DistillConfig, distill

    train = {"epochs": 1, "batch_size": batch_size, "lr": 1e-3, "seed": seed, "accelerator": "cpu"}
    cfg = DistillConfig(
        teacher=teacher_spec,
        data=str(subset),
        out=str(workdir / f"run-{mode}"),
        cache=str(workdir / "cache") if mode == "cached" else None,
        student=dict(student_cfg),
        loss=loss,
        train={**train, "log_every": 10**6},
    )
    t0 = time.perf_counter()
    hist = distill(cfg, progress=False, teacher=teacher)
    run = {**_epoch_rate(hist, batch_size), "wall_seconds_incl_setup": time.perf_counter() - t0}
    log(f"  {mode:6s} epoch: {run['epoch_seconds']:.1f} s  ({run['images_per_s']:.1f} img/s)")
    return run


@dataclass
class GpuThroughputConfig:
    """Distillation images/s (AMP + channels_last on GPU) vs the data-loading-only rate of the same loader. Images
    stream from disk through a DataLoader (``workers`` processes, student preprocessing at ``img_size``); targets
    come from a teacher cache built first. ``device='cpu'`` runs the same code path without AMP (the tests)."""

    data: str
    workdir: str
    teacher_spec: str = "open_clip:ViT-B-32"
    student: str = "shufflenet_v2_x1_0"
    img_size: int = 224
    n_images: int = 2048
    batch_size: int = 128
    steps: int = 20
    workers: int = 8
    device: str = "cuda"
    seed: int = 0


def gpu_throughput(cfg: GpuThroughputConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The loading rate, then two distillation epochs through the engine (the second timed); -> both rates."""
    from edgeclip.data.sources import open_source
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache
    from edgeclip.train.distill import distill

    data, teacher_spec, student, img_size = cfg.data, cfg.teacher_spec, cfg.student, cfg.img_size
    n_images, batch_size, steps, workers, device = (
        cfg.n_images,
        cfg.batch_size,
        cfg.steps,
        cfg.workers,
        cfg.device,
    )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeClipError(
            "CUDA is not available on this machine (GPU throughput needs --device cuda on a GPU)"
        )
    workdir = Path(cfg.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    subset = write_subset(data, n_images, workdir / "subset.csv", cfg.seed)
    teacher = load_teacher(teacher_spec, device=device)
    summ = build_cache(
        open_source(str(subset)),
        teacher,
        workdir / "cache",
        views=1,
        batch_size=batch_size,
        num_workers=workers,
        progress=False,
    )
    teacher.to("cpu")
    accel = "cuda" if device.startswith("cuda") else "cpu"
    steps = max(1, min(steps, summ.total // batch_size)) if summ.total >= batch_size else 1
    load_rate = _loading_rate(
        subset, workdir / "cache", teacher, img_size, batch_size, workers, steps, device
    )
    log(f"  data loading only: {load_rate:.1f} img/s ({workers} workers)")
    # distillation through the engine (AMP bf16/fp16 + channels_last on GPU); epoch 1 warms up
    dcfg = _gpu_distill_config(
        teacher_spec, subset, workdir, student, img_size, batch_size, workers, accel, steps, cfg.seed
    )
    hist = distill(dcfg, progress=False, teacher=teacher)
    rate = _epoch_rate(hist, batch_size)
    log(f"  distillation: {rate['images_per_s']:.1f} img/s")
    prec = _precision(hist["config"]["precision"], accel)
    return {
        "device": torch.cuda.get_device_name(0) if accel == "cuda" else "cpu",
        "accelerator": accel,
        "precision": prec,
        "channels_last": accel == "cuda",
        "student": student,
        "img_size": img_size,
        "teacher": teacher.id,
        **{"batch_size": batch_size, "workers": workers, "steps": steps, "n_images": summ.total},
        "data_loading_images_per_s": load_rate,
        "distill": rate,
        "distill_images_per_s": rate["images_per_s"],
        "distill_vs_loading": rate["images_per_s"] / load_rate if load_rate else None,
        "method": GPU_METHOD,
    }


GPU_METHOD = (
    "data-loading rate: the trainer's own dataset + DataLoader iterated (and copied to the device) without a "
    "model; distillation rate: second epoch of edgeclip distill from the cache"
)


def _precision(prec: str, accel: str) -> str:
    """The precision the engine trained in: ``auto`` is bf16 AMP where supported, else fp16 AMP; fp32 on CPU."""
    if prec != "auto":
        return prec
    if accel != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _gpu_distill_config(
    teacher_spec, subset, workdir, student, img_size, batch_size, workers, accel, steps, seed
):
    from edgeclip.train.distill import DistillConfig

    return DistillConfig(
        teacher=teacher_spec,
        data=str(subset),
        out=str(workdir / "run"),
        cache=str(workdir / "cache"),
        student={"arch": student, "img_size": img_size},
        preload=False,
        loss="cosine",
        train={
            "epochs": 2,
            "batch_size": batch_size,
            "num_workers": workers,
            "accelerator": accel,
            "max_steps_per_epoch": steps,
            "channels_last": True,
            "seed": seed,
            "log_every": 10**6,
        },
    )


def _loading_rate(subset, cache_dir: Path, teacher, img_size, batch_size, workers, steps, device) -> float:
    """Images/s of data loading alone: the exact dataset the trainer builds, the same batch size and workers,
    iterated (and copied to the device) without a model."""
    from edgeclip.data.sources import open_source
    from edgeclip.data.transforms import Preprocess
    from edgeclip.train.cache import EmbeddingCache
    from edgeclip.train.distill import FileViews

    accel = "cuda" if device.startswith("cuda") else "cpu"
    cache = EmbeddingCache(cache_dir)
    recs = [r for r in open_source(str(subset)).records if r.key in cache]
    pp = Preprocess(size=img_size, mean=tuple(teacher.mean), std=tuple(teacher.std))
    ds = FileViews(
        recs, pp.torch_transform(), teacher.preprocess, cache.views, cache.view_spec, cache, online=False
    )
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=accel == "cuda",
        persistent_workers=False,
    )
    n = 0
    it = iter(dl)
    next(it)  # warm-up (worker start)
    t0 = time.perf_counter()
    for i, (x, tgt, _) in enumerate(it):
        if accel == "cuda":
            x = x.to(device, non_blocking=True)
            tgt = tgt.to(device, non_blocking=True)
        n += x.shape[0]
        if i + 1 >= steps:
            break
    if accel == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    return n / load_s if load_s > 0 else 0.0
