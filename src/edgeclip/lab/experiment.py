"""Experiments as data: one YAML file per lab, run by ``edgeclip lab run experiments/NAME.yaml``.

An experiment names its stages; each stage runs one registered task (``TASKS``: train the reference teacher,
build a teacher cache, distill, evaluate, ...) with a config that is an override of the experiment's base
config for that task, so a second student schedule is three lines, not a copied script::

    name: lab_clip4retrofit
    results: benchmarks/results/lab_clip4retrofit.json
    workdir: benchmarks/artifacts/lab
    base:                       # one base config per task
      distill: {loss: cosine+mse, train: {batch_size: 256, lr: 0.003}}
    stages:
      - {name: student_e30, task: distill, set: {train.epochs: 30, teacher: "${teacher.teacher}"}}
    metrics:                    # the results JSON's top-level keys (the report reads these)
      retention: {ratio: [eval.student_top1, eval.teacher_top1]}
    targets:
      - {name: "student>=0.97*teacher", metric: retention, op: ">=", value: 0.97}

Strings may refer to ``${workdir}``, ``${shared}`` (the shared data folder), ``${seed}`` and to the results of
earlier stages (``${teacher.teacher}``: the ``teacher`` key of stage ``teacher``). Each finished stage writes
``WORKDIR/STAGE/stage.json`` (its config hash and result, atomically): a re-run skips it, a stage whose config
changed is refused in one line (give it a new name), and a killed stage resumes from its own checkpoint.
"""

from __future__ import annotations

import copy
import json
import operator
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeclip.core.config import load_config, set_path
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import read_json, sha256_file, sha256_text, write_json
from edgeclip.core.registry import Registry

RESULT_FORMAT = "edgeclip-lab-result/1"
STAGE_FORMAT = "edgeclip-lab-stage/1"
KEYS = {
    "name",
    "description",
    "results",
    "workdir",
    "seed",
    "threads",
    "base",
    "stages",
    "metrics",
    "targets",
    "notes",
}
STAGE_KEYS = {"name", "task", "set"}
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}

# a task: (config dict, stage folder, context) -> JSON-able result dict
TASKS: Registry[Callable[[dict, Path, dict], dict]] = Registry("lab task")


# ----------------------------------------------------------------------------------------- the file
def load_experiment(path: str | Path, overrides: list[str] | tuple = ()) -> dict[str, Any]:
    """Read and check an experiment file; ``overrides`` are ``key.sub=value`` strings (``--set``)."""
    from edgeclip.core.config import apply_overrides

    exp = apply_overrides(load_config(path), overrides)
    unknown = set(exp) - KEYS
    if unknown:
        raise EdgeClipError(f"{path}: unknown experiment keys {sorted(unknown)} (known: {sorted(KEYS)})")
    for k in ("name", "results", "workdir", "stages"):
        if not exp.get(k):
            raise EdgeClipError(f"{path}: the experiment needs `{k}:`")
    names = []
    for st in exp["stages"]:
        if not isinstance(st, dict) or set(st) - STAGE_KEYS or not st.get("name") or not st.get("task"):
            raise EdgeClipError(f"{path}: each stage is {{name, task, set}}, got {st!r}")
        TASKS.get(st["task"])  # unknown task: one line with "did you mean"
        if st["name"] in names:
            raise EdgeClipError(f"{path}: two stages are called {st['name']!r}")
        names.append(st["name"])
    for t in exp.get("targets") or []:
        if t.get("op") not in OPS:
            raise EdgeClipError(f"{path}: target {t.get('name')!r}: op must be one of {', '.join(OPS)}")
    exp["_path"] = str(path)
    return exp


def stage_config(exp: dict, stage: dict) -> dict[str, Any]:
    """The stage's config: the experiment's base config for its task, overridden by the stage's ``set``."""
    cfg = copy.deepcopy((exp.get("base") or {}).get(stage["task"]) or {})
    for k, v in (stage.get("set") or {}).items():
        set_path(cfg, k, copy.deepcopy(v))
    return cfg


_REF = re.compile(r"\$\{([^}]+)\}")


def _lookup(ctx: dict, dotted: str) -> Any:
    cur: Any = ctx
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise EdgeClipError(
                f"${{{dotted}}}: no such value (stages run so far: {', '.join(ctx['stages'])})"
            )
        cur = cur[part]
    return cur


def resolve(obj: Any, ctx: dict) -> Any:
    """``${...}`` references in every string of ``obj``: a string that is one reference keeps its type."""
    if isinstance(obj, dict):
        return {k: resolve(v, ctx) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve(v, ctx) for v in obj]
    if isinstance(obj, str):
        flat = {**ctx["vars"], **ctx["stages"]}
        m = _REF.fullmatch(obj)
        if m:
            return _lookup(flat | {"stages": ctx["stages"]}, m.group(1))
        return _REF.sub(lambda m: str(_lookup(flat | {"stages": ctx["stages"]}, m.group(1))), obj)
    return obj


# ------------------------------------------------------------------------------------------ running
def run_experiment(
    path: str | Path,
    overrides: list[str] | tuple = (),
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) every stage, then write the results JSON; -> the results dict."""
    import torch

    from edgeclip.core.env import machine_info, shared_data_dir

    exp = load_experiment(path, overrides)
    if exp.get("threads"):
        torch.set_num_threads(int(exp["threads"]))
    work = Path(exp["workdir"])
    ctx: dict[str, Any] = {
        "vars": {"workdir": str(work), "shared": str(shared_data_dir()), "seed": exp.get("seed", 0)},
        "stages": {},
    }
    timings: dict[str, float] = {}
    for stage in exp["stages"]:
        name = stage["name"]
        if only and name not in only and not (work / name / "stage.json").is_file():
            raise EdgeClipError(f"--only {','.join(only)}: stage {name!r} comes first and has not run yet")
        cfg = resolve(stage_config(exp, stage), ctx)
        rec = _run_stage(
            name, stage["task"], cfg, work / name, ctx, skip=bool(only) and name not in only, log=log
        )
        ctx["stages"][name] = rec["result"]
        timings[f"{name}_minutes"] = rec["seconds"] / 60
    results = _results(exp, ctx, timings)
    results["machine"] = machine_info()
    write_json(exp["results"], results)
    log(f"results: {exp['results']}")
    return results


def _run_stage(name: str, task: str, cfg: dict, out: Path, ctx: dict, skip: bool, log) -> dict:
    marker = out / "stage.json"
    key = sha256_text(json.dumps({"task": task, "config": cfg}, sort_keys=True, default=str))[:16]
    if marker.is_file():
        rec = read_json(marker)
        if rec.get("format") != STAGE_FORMAT:
            raise EdgeClipError(f"{marker} is not an edgeclip lab stage record")
        if rec.get("config_hash") != key and not skip:
            raise EdgeClipError(
                f"stage {name!r} finished earlier with another config ({marker}); give the "
                "changed stage a new name, or delete that folder to run it again"
            )
        log(f"stage {name}: done earlier ({task}), skipped")
        return rec
    log(f"stage {name}: {task}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = TASKS.get(task)(cfg, out, ctx)
    rec = {
        "format": STAGE_FORMAT,
        "stage": name,
        "task": task,
        "config": cfg,
        "config_hash": key,
        "result": result,
        "seconds": time.time() - t0,
    }
    write_json(marker, rec)
    return rec


def metric_value(spec: Any, stages: dict) -> Any:
    """A metric: ``stage.key.path`` into a stage result, or {ratio: [a, b]} / {diff: [a, b]} of two of them."""
    if isinstance(spec, str):
        return _lookup({"stages": stages, **stages}, spec)
    if isinstance(spec, dict) and len(spec) == 1:
        ((op, (a, b)),) = spec.items()
        x, y = metric_value(a, stages), metric_value(b, stages)
        if op == "ratio":
            return x / y if y else None
        if op == "diff":
            return x - y
    raise EdgeClipError(f"bad metric spec {spec!r}: a stage.key path, or {{ratio|diff: [a, b]}}")


def _results(exp: dict, ctx: dict, timings: dict) -> dict[str, Any]:
    stages = ctx["stages"]
    metrics = {k: metric_value(v, stages) for k, v in (exp.get("metrics") or {}).items()}
    targets, table = {}, []
    for t in exp.get("targets") or []:
        v = metrics.get(t["metric"])
        met = v is not None and bool(OPS[t["op"]](v, t["value"]))
        targets[t.get("name") or f"{t['metric']}{t['op']}{t['value']}"] = met
        table.append({"metric": t["metric"], "value": v, "target": f"{t['op']} {t['value']}", "met": met})
    files = {}
    for res in stages.values():
        for v in _strings(res):
            p = Path(v.split(":", 1)[1] if v.startswith("reference-lit:") else v)
            if p.suffix in (".pt", ".onnx", ".safetensors") and p.is_file():
                files[f"{p.parent.name}/{p.name}"] = sha256_file(p)
    public = {k: v for k, v in exp.items() if not k.startswith("_")}
    return {
        "format": RESULT_FORMAT,
        "experiment": exp["name"],
        "what": exp.get("description", ""),
        **metrics,
        "targets": targets,
        "target_table": table,
        "timings": timings,
        "checkpoints": files,
        "stages": stages,
        "notes": exp.get("notes") or [],
        "config": public,
        "command": f"edgeclip lab run {exp['_path']}",
    }


def _strings(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


# -------------------------------------------------------------------------------------------- tasks
def _minutes(history: dict) -> float:
    return history.get("train_seconds", 0.0) / 60


@TASKS.register("extract", help="unpack tar archives once: {archives: [...], into: DIR}")
def _extract(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.data.sources import ensure_extracted

    into = Path(cfg.get("into") or out)
    for a in cfg.get("archives") or []:
        if not Path(a).is_file():
            raise EdgeClipError(
                f"archive not found: {a} (is the shared data folder there? EDGECLIP_SHARED_DATA)"
            )
        ensure_extracted(Path(a), into)
    return {"path": str(into)}


@TASKS.register("reference-teacher", help="train the reference-lit teacher (train_reference arguments)")
def _reference_teacher(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.train.reference import train_reference

    cfg = dict(cfg)
    hist = train_reference(cfg.pop("data"), out, resume=True, progress=False, **cfg)
    return {
        "teacher": f"reference-lit:{out / 'teacher.pt'}",
        "epochs": len(hist["epochs"]),
        "train_minutes": _minutes(hist),
        "curve": [{k: e.get(k) for k in ("epoch", "loss", "acc", "val_top1")} for e in hist["epochs"]],
    }


@TASKS.register("cache", help="teacher-embedding cache: {teacher, data, views, batch_size}")
def _cache(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.data.sources import open_source
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache

    s = build_cache(
        open_source(cfg["data"]),
        load_teacher(cfg["teacher"]),
        out,
        views=int(cfg.get("views", 1)),
        batch_size=int(cfg.get("batch_size", 64)),
        progress=False,
    )
    return {"cache": str(out), **s.as_dict()}


@TASKS.register("distill", help="label-free distillation (DistillConfig keys)")
def _distill(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.distill import DistillConfig, distill

    dc = build_dataclass(DistillConfig, {**cfg, "out": str(out)})
    hist = distill(dc, resume=True, progress=False)
    return {
        "student": str(out / "student.pt"),
        "epochs": len(hist["epochs"]),
        "train_minutes": _minutes(hist),
        "curve": [{k: e.get(k) for k in ("epoch", "loss", "cos")} for e in hist["epochs"]],
    }


@TASKS.register(
    "eval", help="zero-shot top-1/top-5 on an ImageFolder: {data, teacher, students: {role: ckpt}}"
)
def _eval(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.prompts import DEFAULT_TEMPLATES
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import evaluate

    teacher = cfg["teacher"]
    students = {
        role: load_embedder(teacher=teacher, student=ck) for role, ck in (cfg.get("students") or {}).items()
    }
    res = evaluate(
        load_embedder(teacher=teacher),
        students,
        cfg["data"],
        cfg.get("templates") or DEFAULT_TEMPLATES,
        batch_size=int(cfg.get("batch_size", 256)),
        max_images=int(cfg.get("max_images", 0)),
    )
    return {k: v for k, v in res.items() if k != "classes"}


@TASKS.register(
    "edgevl-curate", help="EdgeVL curation by teacher confidence (curate() arguments + data, derive)"
)
def _edgevl_curate(cfg: dict, out: Path, ctx: dict) -> dict:
    import random

    from edgeclip.data.pairs import open_pairs
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.curate import curate

    cfg = dict(cfg)
    ps = open_pairs(
        cfg.pop("data"), cfg.pop("modalities", None), cfg.pop("primary", None), cfg.pop("derive", {})
    )
    n, seed = int(cfg.pop("max_images", 0)), int(cfg.pop("seed", 0))
    if n and len(ps) > n:  # the seeded subset that PairDataConfig.max_images takes in the stages after it
        ps = ps.subset(sorted(random.Random(seed).sample(range(len(ps)), n)))
    res = curate(load_teacher(cfg.pop("teacher")), ps, out, plot=False, **cfg)
    return {
        "manifest": str(out / "manifest.json"),
        **{k: v for k, v in res.items() if not isinstance(v, (list, dict))},
    }


@TASKS.register(
    "edgevl-distill", help="EdgeVL stage 1: one student for RGB and the other modality (PairDistillConfig)"
)
def _edgevl_distill(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.pair import PairDistillConfig, distill_pairs

    hist = distill_pairs(build_dataclass(PairDistillConfig, {**cfg, "out": str(out)}), resume=True)
    return {
        "student": str(out / "student.pt"),
        "epochs": len(hist["epochs"]),
        "train_minutes": _minutes(hist),
    }


@TASKS.register("edgevl-qat", help="EdgeVL stage 2: QAT (+ semi-hard triplet) to int8 ONNX (QATConfig)")
def _edgevl_qat(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.pair import QATConfig, qat_pairs

    qat_pairs(build_dataclass(QATConfig, {**cfg, "out": str(out)}), resume=True)
    return {"result": str(out / "qat.json")}


@TASKS.register("edgevl-ptq", help="ONNX Runtime static int8 of a stage-1 student: {student, data, ...}")
def _edgevl_ptq(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.pair import PairDataConfig, ptq_pairs

    cfg = dict(cfg)
    student = cfg.pop("student")
    opts = {k: cfg.pop(k) for k in ("calib_images", "per_channel", "method", "weight_bits") if k in cfg}
    ptq_pairs(student, build_dataclass(PairDataConfig, {**cfg, "out": str(out)}), **opts)
    return {"result": str(out / "ptq.json")}


@TASKS.register(
    "edgevl-eval", help="top-1 per modality: {data, student, onnx: [qat.json, ...], derive, classes}"
)
def _edgevl_eval(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.zeroshot.modalities import evaluate_pair_student

    return evaluate_pair_student(**cfg)
