"""The bench's sections (speed, training cost, accuracy, fidelity, energy, data path, GPU) as functions over inputs
resolved once, and the writer of the bench JSON; :mod:`edgeclip.lab.bench` runs them as an experiment.

``edgeclip bench``: the whole benchmark in one call.

Modes: ``quick`` (a few models, few repetitions, tiny training-cost run: the test suite runs it),
``full`` (the whole model list; ``make bench``), and ``device='cuda'`` adds the GPU throughput
section (skipped with a message when no CUDA GPU is present). Every run records the machine,
library versions, threads, date, the budget it ran under and the sha256 of every checkpoint used.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import sha256_file
from edgeclip.core.machine import machine_info
from edgeclip.core.places import shared_data_dir
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

    def __post_init__(self) -> None:
        """The checks every caller gets (the CLI only maps its options here)."""
        self.skip = ["train_cost" if x == "train" else x for x in self.skip]
        bad = [x for x in self.skip if x not in SECTIONS]
        if bad:
            raise EdgeClipError(f"unknown --skip section {bad[0]!r} (one of: {', '.join(SKIP_NAMES)})")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise EdgeClipError(f"--device must be cpu, cuda or auto, got {self.device!r}")
        if self.threads < 0:
            raise EdgeClipError(f"--threads must be >= 0, got {self.threads}")
        for st in self.students:
            if not Path(st).is_file():
                raise EdgeClipError(f"student checkpoint not found: {st}")
        if self.data is not None and not Path(self.data).is_dir():
            raise EdgeClipError(
                f"--data {self.data} is not a folder (an ImageFolder with class sub-folders is needed)"
            )


SKIP_NAMES = ("speed", "train", "accuracy", "fidelity", "energy", "data_path", "gpu")  # as --skip takes them
SECTIONS = tuple("train_cost" if x == "train" else x for x in SKIP_NAMES)


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


@dataclass
class BenchInputs:
    """What every section shares, resolved once by the ``inputs`` stage: the data, the teacher and students
    (given, or the lab folder's), the repetitions of the mode."""

    cfg: BenchConfig
    mode: str
    work: Path
    train_dir: Path
    test_dir: Path | None
    teacher: str | None
    students: list[str]
    lab_student: Path | None
    threads: int
    batch: int
    reps: int
    thr_reps: int
    warmup: int
    cap: float

    @classmethod
    def resolve(cls, cfg: BenchConfig, work: Path) -> BenchInputs:
        work.mkdir(parents=True, exist_ok=True)
        data_base = Path("benchmarks/artifacts/data")
        train_dir = Path(cfg.train_data) if cfg.train_data else _cifar("train", data_base)
        test_dir = Path(cfg.data) if cfg.data else _cifar("test", data_base)
        if train_dir is None:  # a clone without ../shared: drawn shapes keep every section running
            sh = _shapes(work)
            train_dir, test_dir = sh["train"], test_dir or sh["test"]
        teacher, students, lab_student = cfg.teacher, list(cfg.students), None
        lab = Path(cfg.lab) if cfg.lab else None
        if lab is not None and not teacher and not students and (lab / "teacher" / "teacher.pt").is_file():
            teacher = f"reference-lit:{(lab / 'teacher' / 'teacher.pt').resolve()}"
            lab_student = lab_student_path(lab)
            if lab_student.is_file():
                students = [str(lab_student.resolve())]
        # full: 20 batch-1 runs / 5 batch-32 runs, each loop capped at 8 s / 24 s (at least 3 runs) for big towers
        reps = (4, 5, 2, 1, 0.0) if cfg.quick else (32, 20, 5, 3, 8.0)
        mode = "quick" if cfg.quick else "full"
        return cls(
            cfg,
            mode,
            work,
            train_dir,
            test_dir,
            teacher,
            students,
            lab_student,
            torch.get_num_threads(),
            *reps,
        )

    def record(self) -> dict[str, Any]:
        """The bench JSON's header: mode, machine, threads, config, inputs, checkpoint hashes, load average."""
        ckpts = list(self.students) + (
            [self.teacher.split(":", 1)[1]]
            if self.teacher and self.teacher.startswith("reference-lit:")
            else []
        )
        return {
            "kind": "edgeclip-bench/1",
            "mode": self.mode,
            "date": machine_info()["date"],
            "machine": machine_info(),
            "threads": self.threads,
            "config": asdict(self.cfg),
            "inputs": {
                "train_data": str(self.train_dir),
                "eval_data": str(self.test_dir) if self.test_dir else None,
                "teacher": self.teacher,
                "students": self.students,
            },
            "checkpoints_sha256": {c: sha256_file(c) for c in ckpts if Path(c).is_file()},
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "started": time.time(),
        }


_RUN: dict[str, BenchInputs] = {}  # the inputs of the bench run in progress, by its work folder


def bench_inputs(cfg: dict, work: Path) -> dict[str, Any]:
    """``work``: the experiment's work folder (the sections' scratch)."""
    from edgeclip.core.config import build_dataclass

    bc = build_dataclass(BenchConfig, cfg, "bench")
    if bc.threads:
        torch.set_num_threads(bc.threads)
    torch.manual_seed(bc.seed)
    inp = _RUN[str(work)] = BenchInputs.resolve(bc, work)
    return inp.record()


def inputs_of(ctx: dict) -> BenchInputs:
    """The run's inputs, for a section stage (its ``inputs`` stage ran first in the same process)."""
    work = ctx.get("vars", {}).get("workdir")
    if work not in _RUN:
        raise EdgeClipError("a bench section needs the bench's `inputs` stage to run first (edgeclip bench)")
    return _RUN[work]


# ---- the sections: each returns its part of the bench JSON, or raises EdgeClipError to be recorded as skipped
def bench_speed(inp: BenchInputs, log) -> dict[str, Any]:
    cfg = inp.cfg
    models = list(cfg.models) or (
        speed_mod.TEACHERS_QUICK + speed_mod.STUDENTS_QUICK
        if cfg.quick
        else speed_mod.TEACHERS_FULL + speed_mod.STUDENTS_FULL
    )
    roles = {m: ("teacher" if m.startswith("clip:") else "student") for m in models}
    if inp.teacher:
        models.append(f"teacher:{inp.teacher}")
        roles[f"teacher:{inp.teacher}"] = "teacher"
    for st in inp.students:
        models.append(f"ckpt:{st}")
        roles[f"ckpt:{st}"] = "student"
    calib_sources = [shared_data_dir() / "coco-mini" / "images", inp.train_dir]
    return speed_mod.run_speed_suite(
        models,
        inp.work / "onnx",
        speed_mod.calibration_images(calib_sources, 8 if cfg.quick else 32),
        inp.threads,
        batch=inp.batch,
        reps=inp.reps,
        thr_reps=inp.thr_reps,
        log=log,
        roles=roles,
        energy_seconds=1.0 if cfg.quick else 3.0,
        warmup=inp.warmup,
        max_seconds=inp.cap,
    )


def bench_train_cost(inp: BenchInputs, log) -> dict[str, Any]:
    from edgeclip.lab.train_cost import TrainingCostConfig, training_cost

    n, bs = (32, 16) if inp.cfg.quick else (512, 64)
    seed = inp.cfg.seed

    def run(name: str, teacher: str) -> dict[str, Any]:
        cc = TrainingCostConfig(
            str(inp.train_dir), str(inp.work / name), teacher, n_images=n, batch_size=bs, seed=seed
        )
        return training_cost(cc, log=log)

    runs = {"clip_vit_b32_teacher": run("train_cost", "open_clip:ViT-B-32")}
    if inp.teacher and not inp.cfg.quick:
        runs["lab_teacher"] = run("train_cost_lab", inp.teacher)
    note = "open_clip ViT-B-32 with random weights costs what the real CLIP teacher costs to run. "
    if "lab_teacher" in runs:
        note += (
            "The lab_teacher run uses the given reference teacher (a small tower at its own input "
            "size), so the cache saves less per image there."
        )
    return {"runs": runs, "headline": "clip_vit_b32_teacher", "note": note}


def bench_accuracy(inp: BenchInputs, log) -> dict[str, Any]:
    from edgeclip.lab.fidelity import measure_accuracy, sample_labels

    if not inp.students:
        raise EdgeClipError(
            f"no student checkpoint given (--student) and no lab student at {inp.lab_student}: accuracy not measured"
        )
    if inp.test_dir is None:
        raise EdgeClipError("no evaluation ImageFolder (--data) and no CIFAR-10 in ../shared/data")
    n = inp.cfg.max_images or (200 if inp.cfg.quick else 2000)
    res = measure_accuracy(
        inp.teacher,
        inp.students,
        str(inp.test_dir),
        inp.work / "accuracy",
        max_images=n,
        threads=inp.threads,
        log=log,
    )
    res["samples"] = sample_labels(inp.students[0], str(inp.test_dir), n=8, teacher_spec=inp.teacher)
    return res


def bench_fidelity(inp: BenchInputs, log) -> dict[str, Any]:
    """Other issues' lab results, read from the results folder."""
    from edgeclip.lab.fidelity import collect_lab_results

    return collect_lab_results(Path(inp.cfg.out))


def bench_energy(inp: BenchInputs, log, speed: dict | None) -> dict[str, Any]:
    """Energy per image from the speed section of the same run."""
    from edgeclip.lab.energy import energy_table

    if not speed or "models" not in speed:
        raise EdgeClipError("no speed section in this run: energy per image needs its timings")
    return energy_table([m for m in speed["models"] if "error" not in m], inp.threads)


def bench_data_path(inp: BenchInputs, log) -> dict[str, Any]:
    """Decode + augment alone vs the full distillation step it feeds (224 px, the training's own loader and
    workers), on the CPU and on CUDA when present (issue 18's target there: step >= 80 % of decode)."""
    from edgeclip.data.sources import open_source
    from edgeclip.lab.scale import data_path_rates
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache

    quick = inp.cfg.quick
    teacher = inp.teacher or "ViT-B-32:"
    recs = open_source(str(inp.train_dir)).records[: 64 if quick else 256]
    work = inp.work / "data_path"
    build_cache(recs, load_teacher(teacher), work / "cache", progress=False)
    lst = work / "images.txt"
    lst.write_text("".join(f"{Path(r.path).resolve()}\n" for r in recs))
    params = {"batch_size": 8 if quick else 32, "batches": 2 if quick else 6, "work": str(work)}
    return data_path_rates(str(lst), str(work / "cache"), teacher, params)


def bench_gpu(inp: BenchInputs, log) -> dict[str, Any]:
    cfg = inp.cfg
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not dev.startswith("cuda"):
        raise EdgeClipError("CPU run (pass --device cuda on a GPU machine for the GPU throughput section)")
    if not torch.cuda.is_available():
        msg = "--device cuda: no CUDA GPU on this machine; GPU throughput section skipped"
        log(msg)
        raise EdgeClipError(msg)
    from edgeclip.lab.train_cost import GpuThroughputConfig, gpu_throughput

    gdata = _cifar("train", Path("benchmarks/artifacts/data")) or inp.train_dir
    q = cfg.quick
    gc = GpuThroughputConfig(
        str(gdata),
        str(inp.work / "gpu"),
        n_images=512 if q else 8192,
        batch_size=64 if q else 256,
        steps=4 if q else 30,
        workers=4 if q else 8,
    )
    return gpu_throughput(gc, log=log)


def bench_results(exp: dict, ctx: dict, timings: dict) -> dict[str, Any]:
    """The runner's results writer for the bench: the bench JSON the report reads (``edgeclip-bench/1``): each
    section stage's result under ``sections``, the ones skipped (on request, unmet, failed) under ``skipped``."""
    stages = dict(ctx["stages"])
    head = stages.pop("inputs", None)
    if head is None:
        raise EdgeClipError("the bench's `inputs` stage did not run")
    inp = _RUN.get(ctx["vars"]["workdir"])
    cfg = head["config"]
    result = {k: v for k, v in head.items() if k != "started"}
    result["sections"] = {k: v for k, v in stages.items() if k not in ctx.get("failed", {})}
    result["skipped"] = {s: "skipped on request (--skip)" for s in cfg.get("skip", []) if s in SECTIONS}
    result["skipped"].update(ctx.get("failed", {}))
    if ctx.get("errors"):
        result["errors"] = ctx["errors"]
    result["section_seconds"] = {
        k.removesuffix("_minutes"): v * 60 for k, v in timings.items() if k.removesuffix("_minutes") in stages
    }
    result["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["budget"] = {
        "mode": head["mode"],
        "minutes": (time.time() - head["started"]) / 60,
        "threads": head["threads"],
        "device": "cuda" if "gpu" in result["sections"] else "cpu",
        "training_cost_epochs": "1 cached + 1 online per run",
        "speed_reps": {
            "batch1": inp.reps,
            "throughput": inp.thr_reps,
            "batch": inp.batch,
            "warmup": inp.warmup,
        }
        if inp
        else None,
    }
    result["command"] = "edgeclip bench" + (" --quick" if cfg.get("quick") else "")
    return result
