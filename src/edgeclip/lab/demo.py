"""``edgeclip demo``: the whole Clip4Retrofit pipeline on a fresh clone, offline, on 2 CPU cores.

synthetic mode (default without ../shared): draws a shapes dataset, trains a small reference
teacher locked to the real MiniLM text tower, caches its embeddings (8 views), distills a student
without labels, labels held-out images and prints teacher vs student accuracy, size and speed.
cifar10 mode (../shared/data present and --mode cifar10): the same on a CIFAR-10 subset.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeclip.core.io import write_json
from edgeclip.core.machine import machine_info
from edgeclip.core.places import shared_data_dir
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names


def _say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


@dataclass
class _Plan:
    """What the synthetic or CIFAR-10 demo trains on, and for how long."""

    mode: str
    train_dir: Path
    test_dir: Path
    t_epochs: int
    s_epochs: int
    max_train: int
    templates: list[str]
    t_arch: str = "shufflenet_v2_x1_0"
    s_arch: str = "shufflenet_v2_x0_5"
    size: int = 32


def run_demo(out: Path, mode: str = "auto", fast: bool = False) -> dict:
    """The synthetic (or CIFAR-10) demo as six named steps: data, teacher, cache, distill, label, compare."""
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    plan = _plan(out, "synthetic" if mode == "auto" else mode, fast)
    teacher_spec, teacher = _teacher(out, plan)
    summary = _cache(out, plan, teacher, fast)
    _distill(out, plan, teacher_spec, teacher)
    s_emb = _label(out, plan)
    res, tstats, sstats = _compare(plan, teacher_spec, teacher, s_emb, out)
    print(
        f"teacher-student agreement: {res['agreement']:.3f}   retention: {res.get('retention', 0):.3f}   "
        f"speed-up: {tstats['latency_ms'] / sstats['latency_ms']:.2f}x   total time: {time.time() - t_start:.0f}s"
    )
    result = {
        "mode": plan.mode,
        "eval": res,
        "teacher_stats": tstats,
        "student_stats": sstats,
        "cache": summary.as_dict(),
        "seconds": time.time() - t_start,
        "machine": machine_info(),
    }
    write_json(out / "demo_result.json", result)
    print(f"results: {out / 'demo_result.json'}")
    return result


def _plan(out: Path, mode: str, fast: bool) -> _Plan:
    from edgeclip.data.sources import ensure_extracted
    from edgeclip.data.synthetic import make_shapes

    if mode == "cifar10":
        shared = shared_data_dir()
        if not (shared / "cifar10" / "train.tar").is_file():
            raise SystemExit(f"cifar10 mode needs {shared}/cifar10 (set EDGECLIP_SHARED_DATA)")
        root = out / "data" / "cifar10"
        ensure_extracted(shared / "cifar10" / "train.tar", root)
        ensure_extracted(shared / "cifar10" / "test.tar", root)
        epochs = (1, 1, 600) if fast else (6, 8, 10000)
        return _Plan(mode, root / "train", root / "test", *epochs, templates=list(DEFAULT_TEMPLATES))
    _say("1/6 drawing a synthetic shapes dataset (ImageFolder, JPEG)")
    n_train, n_test = (60, 15) if fast else (200, 50)
    dirs = make_shapes(out / "data" / "shapes", n_train=n_train, n_test=n_test, size=48)
    epochs = (3, 3, 0) if fast else (30, 120, 0)
    return _Plan(
        mode, dirs["train"], dirs["test"], *epochs, templates=["a photo of a {}.", "a drawing of a {}."]
    )


def _teacher(out: Path, plan: _Plan):
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.reference import train_reference

    _say(f"2/6 training the reference teacher ({plan.t_arch}) against the frozen MiniLM text tower")
    tdir = out / "teacher"
    if not (tdir / "teacher.pt").exists():
        train_reference(
            str(plan.train_dir),
            tdir,
            arch=plan.t_arch,
            templates=plan.templates,
            img_size=plan.size,
            epochs=plan.t_epochs,
            batch_size=128,
            lr=3e-3,
            max_images=plan.max_train,
            progress=False,
        )
    spec = f"reference-lit:{tdir / 'teacher.pt'}"
    return spec, load_teacher(spec)


def _cache(out: Path, plan: _Plan, teacher, fast: bool):
    from edgeclip.data.sources import open_source
    from edgeclip.train.cache import build_cache

    _say("3/6 caching teacher embeddings (fp16, memory-mapped, 8 augmented views)")
    recs = open_source(str(plan.train_dir)).records
    if plan.max_train:
        g = torch.Generator().manual_seed(0)
        recs = [recs[i] for i in torch.randperm(len(recs), generator=g)[: plan.max_train].tolist()]
    summary = build_cache(
        recs, teacher, out / "cache", views=1 if fast else 8, batch_size=128, progress=False
    )
    print(json.dumps(summary.as_dict()))
    return summary


def _distill(out: Path, plan: _Plan, teacher_spec: str, teacher) -> None:
    from edgeclip.train.distill import DistillConfig, distill

    _say(f"4/6 distilling a {plan.s_arch} student from the cache, without labels")
    cfg = DistillConfig(
        teacher=teacher_spec,
        data=str(plan.train_dir),
        out=str(out / "student"),
        cache=str(out / "cache"),
        student={"arch": plan.s_arch, "img_size": plan.size, "small_input": True},
        loss="cosine+mse",
        templates=plan.templates,
        max_images=plan.max_train,
        train={"epochs": plan.s_epochs, "batch_size": 128, "lr": 3e-3, "log_every": 1000},
    )
    if not (out / "student" / "student.pt").exists():
        distill(cfg, progress=False, teacher=teacher)


def _label(out: Path, plan: _Plan):
    from edgeclip.data.sources import open_source
    from edgeclip.data.synthetic import SHAPES
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.label import label_images

    _say("5/6 labeling held-out images with the student (open vocabulary)")
    s_emb = load_embedder(student=str(out / "student" / "student.pt"))
    test_src = open_source(str(plan.test_dir))
    labels = list(SHAPES) if plan.mode == "synthetic" else class_names(test_src.classes)
    sample = test_src.records[:: max(1, len(test_src.records) // 6)][:6]
    for row in label_images(sample, s_emb, labels, plan.templates, topk=3):
        print(
            f"  {row['image']:28s} -> "
            + ", ".join(f"{lb} ({s:.2f})" for lb, s in zip(row["labels"], row["scores"]))
        )
    return s_emb


def _compare(plan: _Plan, teacher_spec: str, teacher, s_emb, out: Path):
    from rich.console import Console
    from rich.table import Table

    from edgeclip.models import load_student
    from edgeclip.models.cost import model_stats
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import evaluate

    _say("6/6 teacher vs student on the held-out set")
    res = evaluate(
        load_embedder(teacher=teacher_spec), {"student": s_emb}, str(plan.test_dir), plan.templates
    )
    st, _, _ = load_student(out / "student" / "student.pt")
    tstats, sstats = model_stats(teacher.image_encoder, plan.size), model_stats(st, plan.size)
    table = Table(
        title=f"edgeclip demo ({plan.mode}, {res['n']} held-out images, {plan.size}px, "
        f"{torch.get_num_threads()} threads)"
    )
    for c in ("model", "top-1", "top-5", "params (M)", "GFLOPs", "latency b1 (ms)"):
        table.add_column(c, justify="right" if c != "model" else "left")
    for who, arch, stats in (("teacher", plan.t_arch, tstats), ("student", plan.s_arch, sstats)):
        table.add_row(
            f"{who} {arch}",
            f"{res[who + '_top1']:.3f}",
            f"{res[who + '_top5']:.3f}",
            f"{stats['params_m']:.2f}",
            f"{stats['gflops']:.4f}",
            f"{stats['latency_ms']:.2f}",
        )
    Console().print(table)
    return res, tstats, sstats
