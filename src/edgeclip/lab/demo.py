"""``edgeclip demo``: the whole Clip4Retrofit pipeline on a fresh clone, offline, on 2 CPU cores.

synthetic mode (default without ../shared): draws a shapes dataset, trains a small reference
teacher locked to the real MiniLM text tower, caches its embeddings (8 views), distills a student
without labels, labels held-out images and prints teacher vs student accuracy, size and speed.
cifar10 mode (../shared/data present and --mode cifar10): the same on a CIFAR-10 subset.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from edgeclip.core.io import write_json
from edgeclip.core.machine import machine_info
from edgeclip.core.places import shared_data_dir
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names


def _say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def run_demo(out: Path, mode: str = "auto", fast: bool = False) -> dict:
    from rich.console import Console
    from rich.table import Table

    from edgeclip.data.sources import ensure_extracted, open_source
    from edgeclip.data.synthetic import SHAPES, make_shapes
    from edgeclip.models import load_student
    from edgeclip.models.cost import model_stats
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache
    from edgeclip.train.distill import DistillConfig, distill
    from edgeclip.train.reference import train_reference
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import evaluate
    from edgeclip.zeroshot.label import label_images

    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shared = shared_data_dir()
    if mode == "auto":
        mode = "synthetic"
    if mode == "cifar10":
        if not (shared / "cifar10" / "train.tar").is_file():
            raise SystemExit(f"cifar10 mode needs {shared}/cifar10 (set EDGECLIP_SHARED_DATA)")
        root = out / "data" / "cifar10"
        ensure_extracted(shared / "cifar10" / "train.tar", root)
        ensure_extracted(shared / "cifar10" / "test.tar", root)
        train_dir, test_dir = root / "train", root / "test"
        t_epochs, s_epochs, max_train = (1, 1, 600) if fast else (6, 8, 10000)
        t_arch, s_arch, size = "shufflenet_v2_x1_0", "shufflenet_v2_x0_5", 32
        templates = list(DEFAULT_TEMPLATES)
    else:
        _say("1/6 drawing a synthetic shapes dataset (ImageFolder, JPEG)")
        n_train, n_test = (60, 15) if fast else (200, 50)
        dirs = make_shapes(out / "data" / "shapes", n_train=n_train, n_test=n_test, size=48)
        train_dir, test_dir = dirs["train"], dirs["test"]
        t_epochs, s_epochs, max_train = (3, 3, 0) if fast else (30, 120, 0)
        t_arch, s_arch, size = "shufflenet_v2_x1_0", "shufflenet_v2_x0_5", 32
        templates = ["a photo of a {}.", "a drawing of a {}."]
    _say(f"2/6 training the reference teacher ({t_arch}) against the frozen MiniLM text tower")
    tdir = out / "teacher"
    if not (tdir / "teacher.pt").exists():
        train_reference(
            str(train_dir),
            tdir,
            arch=t_arch,
            templates=templates,
            img_size=size,
            epochs=t_epochs,
            batch_size=128,
            lr=3e-3,
            max_images=max_train,
            progress=False,
        )
    teacher_spec = f"reference-lit:{tdir / 'teacher.pt'}"
    teacher = load_teacher(teacher_spec)

    _say("3/6 caching teacher embeddings (fp16, memory-mapped, 8 augmented views)")
    src = open_source(str(train_dir))
    recs = src.records
    if max_train:
        g = torch.Generator().manual_seed(0)
        recs = [recs[i] for i in torch.randperm(len(recs), generator=g)[:max_train].tolist()]
    summary = build_cache(
        recs, teacher, out / "cache", views=1 if fast else 8, batch_size=128, progress=False
    )
    print(json.dumps(summary.as_dict()))

    _say(f"4/6 distilling a {s_arch} student from the cache, without labels")
    cfg = DistillConfig(
        teacher=teacher_spec,
        data=str(train_dir),
        out=str(out / "student"),
        cache=str(out / "cache"),
        student={"arch": s_arch, "img_size": size, "small_input": True},
        loss="cosine+mse",
        templates=templates,
        max_images=max_train,
        train={"epochs": s_epochs, "batch_size": 128, "lr": 3e-3, "log_every": 1000},
    )
    if not (out / "student" / "student.pt").exists():
        distill(cfg, progress=False, teacher=teacher)

    _say("5/6 labeling held-out images with the student (open vocabulary)")
    s_emb = load_embedder(student=str(out / "student" / "student.pt"))
    labels = list(SHAPES) if mode == "synthetic" else class_names(open_source(str(test_dir)).classes)
    test_src = open_source(str(test_dir))
    sample = test_src.records[:: max(1, len(test_src.records) // 6)][:6]
    for row in label_images(sample, s_emb, labels, templates, topk=3):
        print(
            f"  {row['image']:28s} -> "
            + ", ".join(f"{lb} ({s:.2f})" for lb, s in zip(row["labels"], row["scores"]))
        )

    _say("6/6 teacher vs student on the held-out set")
    t_emb = load_embedder(teacher=teacher_spec)
    res = evaluate(t_emb, {"student": s_emb}, str(test_dir), templates)
    st, _, _ = load_student(out / "student" / "student.pt")
    tstats = model_stats(teacher.image_encoder, size)
    sstats = model_stats(st, size)
    table = Table(
        title=f"edgeclip demo ({mode}, {res['n']} held-out images, {size}px, {torch.get_num_threads()} threads)"
    )
    for c in ("model", "top-1", "top-5", "params (M)", "GFLOPs", "latency b1 (ms)"):
        table.add_column(c, justify="right" if c != "model" else "left")
    table.add_row(
        f"teacher {t_arch}",
        f"{res['teacher_top1']:.3f}",
        f"{res['teacher_top5']:.3f}",
        f"{tstats['params_m']:.2f}",
        f"{tstats['gflops']:.4f}",
        f"{tstats['latency_ms']:.2f}",
    )
    table.add_row(
        f"student {s_arch}",
        f"{res['student_top1']:.3f}",
        f"{res['student_top5']:.3f}",
        f"{sstats['params_m']:.2f}",
        f"{sstats['gflops']:.4f}",
        f"{sstats['latency_ms']:.2f}",
    )
    Console().print(table)
    print(
        f"teacher-student agreement: {res['agreement']:.3f}   retention: {res.get('retention', 0):.3f}   "
        f"speed-up: {tstats['latency_ms'] / sstats['latency_ms']:.2f}x   total time: {time.time() - t_start:.0f}s"
    )
    result = {
        "mode": mode,
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
