"""``edgeclip bench``: the whole benchmark in one call (speed, training cost, fidelity, energy, GPU).

Modes: ``quick`` (a few models, few repetitions, tiny training-cost run: the test suite runs it),
``full`` (the whole model list; ``make bench``), and ``device='cuda'`` adds the GPU throughput
section (skipped with a message when no CUDA GPU is present). Every run records the machine,
library versions, threads, date, the budget it ran under and the sha256 of every checkpoint used.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeclip.core.env import machine_info, shared_data_dir
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import sha256_file, write_json
from edgeclip.lab import speed as speed_mod


def lab_student_names(distill: dict[str, Any]) -> list[str]:
    """Folders of the foundation lab's students in training order, from its config's ``distill`` block:
    ``name`` (default "student"), then ``<name>_cont`` when ``continue`` adds a second cycle. The last is final."""
    name = distill.get("name", "student")
    return [name] + ([name + "_cont"] if distill.get("continue") else [])


def lab_student_path(lab: Path, results: Path | None = None) -> Path:
    """The final student of the 32-px lab in its work folder ``lab``: the one its ``eval`` stage evaluated
    (``edgeclip lab run``), else as an earlier lab script's results JSON names it, else ``lab/student``."""
    from edgeclip.core.io import read_json

    try:
        return Path(read_json(lab / "eval" / "stage.json")["config"]["students"]["student"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    results = results or lab.parents[1] / "results" / "lab_clip4retrofit.json"
    try:
        name = lab_student_names(read_json(results)["config"]["distill"])[-1]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        name = "student"
    return lab / name / "student.pt"


@dataclass
class BenchConfig:
    out: str = "benchmarks/results"
    quick: bool = False
    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 0  # 0: leave torch's setting (OMP_NUM_THREADS)
    teacher: str | None = None  # a teacher spec for the accuracy / Pareto section
    students: list[str] = field(default_factory=list)  # student checkpoints
    data: str | None = None  # ImageFolder for zero-shot accuracy (default: CIFAR-10 test)
    train_data: str | None = None  # images for the training-cost run (default: CIFAR-10 train)
    max_images: int = 0  # accuracy images (0: mode default)
    models: list[str] = field(default_factory=list)  # speed-suite models (default: the mode's list)
    skip: list[str] = field(default_factory=list)  # sections to skip: speed, train, accuracy, gpu
    workdir: str = "benchmarks/artifacts/bench"
    report: bool = True
    seed: int = 0
    lab: str | None = (
        None  # a lab work folder (e.g. benchmarks/artifacts/lab): its teacher and student by default
    )


def _cifar(split: str, base: Path) -> Path | None:
    """CIFAR-10 ``split`` folder: already extracted under ``base``, else extracted from ../shared/data."""
    from edgeclip.data.sources import ensure_extracted

    d = base / "cifar10" / split
    if d.is_dir() and any(d.iterdir()):
        return d
    tar = shared_data_dir() / "cifar10" / f"{split}.tar"
    if tar.is_file():
        ensure_extracted(tar, base / "cifar10")
        return d if d.is_dir() else None
    return None


def _shapes(workdir: Path) -> dict[str, Path]:
    from edgeclip.data.synthetic import make_shapes

    return make_shapes(workdir / "shapes", n_train=40, n_test=10, size=48)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "random weights" notice is expected here
    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    work = Path(cfg.workdir) / ("quick" if cfg.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    mode = "quick" if cfg.quick else "full"
    data_base = Path("benchmarks/artifacts/data")
    train_dir = Path(cfg.train_data) if cfg.train_data else _cifar("train", data_base)
    test_dir = Path(cfg.data) if cfg.data else _cifar("test", data_base)
    if train_dir is None:  # a clone without ../shared: drawn shapes keep every section running
        sh = _shapes(work)
        train_dir, test_dir = sh["train"], test_dir or sh["test"]
    teacher, students = cfg.teacher, list(cfg.students)
    lab = Path(cfg.lab) if cfg.lab else None
    if lab is not None and not teacher and not students and (lab / "teacher" / "teacher.pt").is_file():
        teacher = f"reference-lit:{(lab / 'teacher' / 'teacher.pt').resolve()}"
        lab_student = lab_student_path(lab)
        if lab_student.is_file():
            students = [str(lab_student.resolve())]
    result: dict[str, Any] = {
        "kind": "edgeclip-bench/1",
        "mode": mode,
        "date": machine_info()["date"],
        "machine": machine_info(),
        "threads": threads,
        "config": asdict(cfg),
        "inputs": {
            "train_data": str(train_dir),
            "eval_data": str(test_dir) if test_dir else None,
            "teacher": teacher,
            "students": students,
        },
        "sections": {},
        "skipped": {},
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    ckpts = [s for s in students] + (
        [teacher.split(":", 1)[1]] if teacher and teacher.startswith("reference-lit:") else []
    )
    result["checkpoints_sha256"] = {c: sha256_file(c) for c in ckpts if Path(c).is_file()}

    def section(name: str, fn: Callable[[], Any]):
        if name in cfg.skip:
            result["skipped"][name] = "skipped on request (--skip)"
            return None
        log(f"==> {name}")
        t0 = time.time()
        try:
            val = fn()
        except EdgeClipError as e:
            result["skipped"][name] = str(e)
            log(f"  {name} skipped: {e}")
            return None
        except Exception as e:  # one broken section must not lose the others: record it with the trace tail
            result["skipped"][name] = (
                f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            )
            result.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
            log(f"  {name} FAILED: {result['skipped'][name]}")
            return None
        result["sections"][name] = val
        result.setdefault("section_seconds", {})[name] = time.time() - t0
        return val

    # ---- speed -------------------------------------------------------------------------------------
    models = list(cfg.models) or (
        speed_mod.TEACHERS_QUICK + speed_mod.STUDENTS_QUICK
        if cfg.quick
        else speed_mod.TEACHERS_FULL + speed_mod.STUDENTS_FULL
    )
    roles = {m: ("teacher" if m.startswith("clip:") else "student") for m in models}
    if teacher:
        models.append(f"teacher:{teacher}")
        roles[f"teacher:{teacher}"] = "teacher"
    for s in students:
        models.append(f"ckpt:{s}")
        roles[f"ckpt:{s}"] = "student"
    calib_sources = [shared_data_dir() / "coco-mini" / "images", train_dir]
    # full: 20 batch-1 runs / 5 batch-32 runs, each loop capped at 8 s / 24 s (at least 3 runs) for the big towers
    batch, reps, thr_reps, warmup, cap = (4, 5, 2, 1, 0.0) if cfg.quick else (32, 20, 5, 3, 8.0)
    section(
        "speed",
        lambda: speed_mod.run_speed_suite(
            models,
            work / "onnx",
            speed_mod.calibration_images(calib_sources, 8 if cfg.quick else 32),
            threads,
            batch=batch,
            reps=reps,
            thr_reps=thr_reps,
            log=log,
            roles=roles,
            energy_seconds=1.0 if cfg.quick else 3.0,
            warmup=warmup,
            max_seconds=cap,
        ),
    )

    # ---- training cost -----------------------------------------------------------------------------
    def train_cost():
        from edgeclip.lab.train_cost import training_cost

        n, bs = (32, 16) if cfg.quick else (512, 64)
        runs = {
            "clip_vit_b32_teacher": training_cost(
                train_dir,
                work / "train_cost",
                "open_clip:ViT-B-32",
                "shufflenet_v2_x1_0",
                32,
                n,
                bs,
                cfg.seed,
                log=log,
            )
        }
        if teacher and not cfg.quick:
            runs["lab_teacher"] = training_cost(
                train_dir,
                work / "train_cost_lab",
                teacher,
                "shufflenet_v2_x1_0",
                32,
                n,
                bs,
                cfg.seed,
                log=log,
            )
        return {
            "runs": runs,
            "headline": "clip_vit_b32_teacher",
            "note": "open_clip ViT-B-32 with random weights costs what the real CLIP teacher costs to run. "
            + (
                "The lab_teacher run uses the given reference teacher (a small tower at its own input "
                "size), so the cache saves less per image there."
                if "lab_teacher" in runs
                else ""
            ),
        }

    section("train_cost", train_cost)

    # ---- accuracy of the given (or lab) models -----------------------------------------------------
    def accuracy():
        from edgeclip.lab.fidelity import measure_accuracy, sample_labels

        if not students:
            raise EdgeClipError(
                "no student checkpoint given (--student) and no lab student at "
                f"{lab_student}: accuracy not measured"
            )
        if test_dir is None:
            raise EdgeClipError("no evaluation ImageFolder (--data) and no CIFAR-10 in ../shared/data")
        n = cfg.max_images or (200 if cfg.quick else 2000)
        res = measure_accuracy(
            teacher, students, str(test_dir), work / "accuracy", max_images=n, threads=threads, log=log
        )
        res["samples"] = sample_labels(students[0], str(test_dir), n=8, teacher_spec=teacher)
        return res

    section("accuracy", accuracy)

    # ---- fidelity (other issues' lab results), energy ----------------------------------------------
    from edgeclip.lab.energy import energy_table
    from edgeclip.lab.fidelity import collect_lab_results

    section("fidelity", lambda: collect_lab_results(out))
    if "speed" in result["sections"]:
        section(
            "energy",
            lambda: energy_table(
                [m for m in result["sections"]["speed"]["models"] if "error" not in m], threads
            ),
        )

    # ---- GPU ---------------------------------------------------------------------------------------
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            msg = "--device cuda: no CUDA GPU on this machine; GPU throughput section skipped"
            log(msg)
            result["skipped"]["gpu"] = msg
        else:
            from edgeclip.lab.train_cost import gpu_throughput

            gdata = _cifar("train", data_base) or train_dir
            section(
                "gpu",
                lambda: gpu_throughput(
                    gdata,
                    work / "gpu",
                    n_images=512 if cfg.quick else 8192,
                    batch_size=64 if cfg.quick else 256,
                    steps=4 if cfg.quick else 30,
                    workers=4 if cfg.quick else 8,
                    log=log,
                ),
            )
    else:
        result["skipped"]["gpu"] = (
            "CPU run (pass --device cuda on a GPU machine for the GPU throughput section)"
        )

    result["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["budget"] = {
        "mode": mode,
        "minutes": (time.time() - t_start) / 60,
        "threads": threads,
        "device": "cuda" if "gpu" in result["sections"] else "cpu",
        "training_cost_epochs": "1 cached + 1 online per run",
        "speed_reps": {"batch1": reps, "throughput": thr_reps, "batch": batch, "warmup": warmup},
    }
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_quick.json" if cfg.quick else "bench.json"
    write_json(out / name, result)
    result["path"] = str(out / name)
    log(f"results: {out / name}  ({result['budget']['minutes']:.1f} min, {threads} threads)")
    if cfg.report:
        from edgeclip.lab.report import build_report

        rep = build_report(out / name, out / ("report_quick" if cfg.quick else "report"), results_dir=out)
        log(f"report: {rep['html']}  {rep['markdown']}")
        result["report"] = rep
    return result
