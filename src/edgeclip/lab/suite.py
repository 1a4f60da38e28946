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

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import sha256_file, write_json
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


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every section in order (one that fails is recorded and the others still run), then the JSON and report."""
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "random weights" notice is expected here
    b = _Bench(cfg, log)
    for step in (b.speed, b.train_cost, b.accuracy, b.fidelity_and_energy, b.data_path, b.gpu):
        step()
    return b.finish()


class _Bench:
    """One bench run: its inputs, its result dict, and one method per section."""

    def __init__(self, cfg: BenchConfig, log: Callable[[str], None]):
        self.cfg, self.log, self.t_start = cfg, log, time.time()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.threads = torch.get_num_threads()
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.out)
        self.mode = "quick" if cfg.quick else "full"
        self.work = Path(cfg.workdir) / self.mode
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_base = Path("benchmarks/artifacts/data")
        self.train_dir = Path(cfg.train_data) if cfg.train_data else _cifar("train", self.data_base)
        self.test_dir = Path(cfg.data) if cfg.data else _cifar("test", self.data_base)
        if self.train_dir is None:  # a clone without ../shared: drawn shapes keep every section running
            sh = _shapes(self.work)
            self.train_dir, self.test_dir = sh["train"], self.test_dir or sh["test"]
        self.teacher, self.students = cfg.teacher, list(cfg.students)
        lab = Path(cfg.lab) if cfg.lab else None
        self.lab_student = None
        if (
            lab is not None
            and not self.teacher
            and not self.students
            and (lab / "teacher" / "teacher.pt").is_file()
        ):
            self.teacher = f"reference-lit:{(lab / 'teacher' / 'teacher.pt').resolve()}"
            self.lab_student = lab_student_path(lab)
            if self.lab_student.is_file():
                self.students = [str(self.lab_student.resolve())]
        self.result: dict[str, Any] = {
            "kind": "edgeclip-bench/1",
            "mode": self.mode,
            "date": machine_info()["date"],
            "machine": machine_info(),
            "threads": self.threads,
            "config": asdict(cfg),
            "inputs": {
                "train_data": str(self.train_dir),
                "eval_data": str(self.test_dir) if self.test_dir else None,
                "teacher": self.teacher,
                "students": self.students,
            },
            "sections": {},
            "skipped": {},
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }
        ckpts = list(self.students) + (
            [self.teacher.split(":", 1)[1]]
            if self.teacher and self.teacher.startswith("reference-lit:")
            else []
        )
        self.result["checkpoints_sha256"] = {c: sha256_file(c) for c in ckpts if Path(c).is_file()}
        # full: 20 batch-1 runs / 5 batch-32 runs, each loop capped at 8 s / 24 s (at least 3 runs) for big towers
        self.batch, self.reps, self.thr_reps, self.warmup, self.cap = (
            (4, 5, 2, 1, 0.0) if cfg.quick else (32, 20, 5, 3, 8.0)
        )

    def section(self, name: str, fn: Callable[[], Any]):
        result, log = self.result, self.log
        if name in self.cfg.skip:
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

    # ---- the sections
    def speed(self) -> None:
        cfg = self.cfg
        models = list(cfg.models) or (
            speed_mod.TEACHERS_QUICK + speed_mod.STUDENTS_QUICK
            if cfg.quick
            else speed_mod.TEACHERS_FULL + speed_mod.STUDENTS_FULL
        )
        roles = {m: ("teacher" if m.startswith("clip:") else "student") for m in models}
        if self.teacher:
            models.append(f"teacher:{self.teacher}")
            roles[f"teacher:{self.teacher}"] = "teacher"
        for st in self.students:
            models.append(f"ckpt:{st}")
            roles[f"ckpt:{st}"] = "student"
        calib_sources = [shared_data_dir() / "coco-mini" / "images", self.train_dir]
        self.section(
            "speed",
            lambda: speed_mod.run_speed_suite(
                models,
                self.work / "onnx",
                speed_mod.calibration_images(calib_sources, 8 if cfg.quick else 32),
                self.threads,
                batch=self.batch,
                reps=self.reps,
                thr_reps=self.thr_reps,
                log=self.log,
                roles=roles,
                energy_seconds=1.0 if cfg.quick else 3.0,
                warmup=self.warmup,
                max_seconds=self.cap,
            ),
        )

    def train_cost(self) -> None:
        def run():
            from edgeclip.lab.train_cost import training_cost

            n, bs = (32, 16) if self.cfg.quick else (512, 64)
            seed, log = self.cfg.seed, self.log
            runs = {
                "clip_vit_b32_teacher": training_cost(
                    self.train_dir,
                    self.work / "train_cost",
                    "open_clip:ViT-B-32",
                    "shufflenet_v2_x1_0",
                    32,
                    n,
                    bs,
                    seed,
                    log=log,
                )
            }
            if self.teacher and not self.cfg.quick:
                runs["lab_teacher"] = training_cost(
                    self.train_dir,
                    self.work / "train_cost_lab",
                    self.teacher,
                    "shufflenet_v2_x1_0",
                    32,
                    n,
                    bs,
                    seed,
                    log=log,
                )
            note = "open_clip ViT-B-32 with random weights costs what the real CLIP teacher costs to run. "
            if "lab_teacher" in runs:
                note += (
                    "The lab_teacher run uses the given reference teacher (a small tower at its own input "
                    "size), so the cache saves less per image there."
                )
            return {"runs": runs, "headline": "clip_vit_b32_teacher", "note": note}

        self.section("train_cost", run)

    def accuracy(self) -> None:
        def run():
            from edgeclip.lab.fidelity import measure_accuracy, sample_labels

            if not self.students:
                raise EdgeClipError(
                    "no student checkpoint given (--student) and no lab student at "
                    f"{self.lab_student}: accuracy not measured"
                )
            if self.test_dir is None:
                raise EdgeClipError("no evaluation ImageFolder (--data) and no CIFAR-10 in ../shared/data")
            n = self.cfg.max_images or (200 if self.cfg.quick else 2000)
            res = measure_accuracy(
                self.teacher,
                self.students,
                str(self.test_dir),
                self.work / "accuracy",
                max_images=n,
                threads=self.threads,
                log=self.log,
            )
            res["samples"] = sample_labels(
                self.students[0], str(self.test_dir), n=8, teacher_spec=self.teacher
            )
            return res

        self.section("accuracy", run)

    def fidelity_and_energy(self) -> None:
        """Other issues' lab results; energy per image from the speed section."""
        from edgeclip.lab.energy import energy_table
        from edgeclip.lab.fidelity import collect_lab_results

        self.section("fidelity", lambda: collect_lab_results(self.out))
        if "speed" in self.result["sections"]:
            models = [m for m in self.result["sections"]["speed"]["models"] if "error" not in m]
            self.section("energy", lambda: energy_table(models, self.threads))

    def data_path(self) -> None:
        """Decode + augment alone vs the full distillation step it feeds (224 px, the training's own loader and
        workers), on the CPU and on CUDA when present (issue 18's target there: step >= 80 % of decode)."""

        def run():
            from edgeclip.data.sources import open_source
            from edgeclip.lab.scale import data_path_rates
            from edgeclip.models.teachers import load_teacher
            from edgeclip.train.cache import build_cache

            teacher = self.teacher or "ViT-B-32:"
            recs = open_source(str(self.train_dir)).records[: 64 if self.cfg.quick else 256]
            work = self.work / "data_path"
            build_cache(recs, load_teacher(teacher), work / "cache", progress=False)
            lst = work / "images.txt"
            lst.write_text("".join(f"{Path(r.path).resolve()}\n" for r in recs))
            bs = 8 if self.cfg.quick else 32
            return data_path_rates(
                str(lst),
                str(work / "cache"),
                teacher,
                {"batch_size": bs, "batches": 2 if self.cfg.quick else 6, "work": str(work)},
            )

        self.section("data_path", run)

    def gpu(self) -> None:
        cfg, result = self.cfg, self.result
        dev = cfg.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if not dev.startswith("cuda"):
            result["skipped"]["gpu"] = (
                "CPU run (pass --device cuda on a GPU machine for the GPU throughput section)"
            )
            return
        if not torch.cuda.is_available():
            msg = "--device cuda: no CUDA GPU on this machine; GPU throughput section skipped"
            self.log(msg)
            result["skipped"]["gpu"] = msg
            return
        from edgeclip.lab.train_cost import gpu_throughput

        gdata = _cifar("train", self.data_base) or self.train_dir
        self.section(
            "gpu",
            lambda: gpu_throughput(
                gdata,
                self.work / "gpu",
                n_images=512 if cfg.quick else 8192,
                batch_size=64 if cfg.quick else 256,
                steps=4 if cfg.quick else 30,
                workers=4 if cfg.quick else 8,
                log=self.log,
            ),
        )

    def finish(self) -> dict[str, Any]:
        cfg, result, out = self.cfg, self.result, self.out
        result["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        result["budget"] = {
            "mode": self.mode,
            "minutes": (time.time() - self.t_start) / 60,
            "threads": self.threads,
            "device": "cuda" if "gpu" in result["sections"] else "cpu",
            "training_cost_epochs": "1 cached + 1 online per run",
            "speed_reps": {
                "batch1": self.reps,
                "throughput": self.thr_reps,
                "batch": self.batch,
                "warmup": self.warmup,
            },
        }
        out.mkdir(parents=True, exist_ok=True)
        name = "bench_quick.json" if cfg.quick else "bench.json"
        write_json(out / name, result)
        result["path"] = str(out / name)
        self.log(f"results: {out / name}  ({result['budget']['minutes']:.1f} min, {self.threads} threads)")
        if cfg.report:
            from edgeclip.lab.report import build_report

            rep = build_report(out / name, out / ("report_quick" if cfg.quick else "report"), results_dir=out)
            self.log(f"report: {rep['html']}  {rep['markdown']}")
            result["report"] = rep
        return result
