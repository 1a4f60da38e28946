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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeclip.core.config import load_config, set_path
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import read_json, sha256_file, sha256_text, write_json
from edgeclip.lab.tasks import TASKS

RESULT_FORMAT = "edgeclip-lab-result/1"
STAGE_FORMAT = "edgeclip-lab-stage/1"


@dataclass
class ExperimentFile:
    """The keys an experiment file may hold (read by the one strict reader, :func:`build_dataclass`)."""

    name: str = ""
    results: str = ""
    workdir: str = ""
    stages: list[dict] = field(default_factory=list)
    description: str | None = None
    seed: int = 0
    threads: int | None = None
    base: dict | None = None
    metrics: dict | None = None
    targets: list[dict] | None = None
    notes: Any = None
    extends: str | None = None
    keep_going: bool = False  # a stage that fails is recorded (its one line) and the later stages still run
    fresh: bool = False  # measurements: every stage runs anew; none is skipped as done earlier
    writer: str = "lab"  # the results JSON: lab (metrics, targets, stages) | bench (the report's bench JSON)


@dataclass
class Stage:
    name: str
    task: str
    set: dict | None = None


KEYS = set(ExperimentFile.__dataclass_fields__)
STAGE_KEYS = set(Stage.__dataclass_fields__)
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


# ----------------------------------------------------------------------------------------- the file
def load_experiment(path: str | Path | dict, overrides: list[str] | tuple = ()) -> dict[str, Any]:
    """Read and check an experiment file (or an experiment already read, e.g. one a command filled in);
    ``overrides`` are ``key.sub=value`` strings (``--set``)."""
    from edgeclip.core.config import apply_overrides, build_dataclass

    if isinstance(path, dict):
        exp, path = apply_overrides(path, overrides), path.get("_path", "<experiment>")
        exp.pop("_path", None)
    else:
        exp = apply_overrides(_with_parent(Path(path)), overrides)
    build_dataclass(ExperimentFile, exp, str(path), typed=True, what="experiment")
    for k in ("name", "results", "workdir", "stages"):
        if not exp.get(k):
            raise EdgeClipError(f"{path}: the experiment needs `{k}:`")
    names = []
    for st in exp["stages"]:
        if not isinstance(st, dict) or not st.get("name") or not st.get("task"):
            raise EdgeClipError(f"{path}: each stage is {{name, task, set}}, got {st!r}")
        build_dataclass(Stage, st, f"{path}: stage {st['name']!r}", typed=True, what="stage")
        TASKS.get(st["task"])  # unknown task: one line with "did you mean"
        if st["name"] in names:
            raise EdgeClipError(f"{path}: two stages are called {st['name']!r}")
        names.append(st["name"])
    if exp.get("writer", "lab") not in WRITERS:
        raise EdgeClipError(f"{path}: writer must be one of {', '.join(WRITERS)}, got {exp['writer']!r}")
    for t in exp.get("targets") or []:
        if t.get("op") not in OPS:
            raise EdgeClipError(f"{path}: target {t.get('name')!r}: op must be one of {', '.join(OPS)}")
    exp["_path"] = str(path)
    return exp


def read_experiment(path: str | Path) -> dict[str, Any]:
    """An experiment file with what it ``extends``, unchecked: a template a command fills in (results, workdir,
    a stage's config) before :func:`run_experiment` checks it."""
    return {**_with_parent(Path(path)), "_path": str(path)}


def _with_parent(path: Path, seen: tuple = ()) -> dict[str, Any]:
    """The file's keys over those of the experiment it ``extends`` (a path relative to it): a variant is a
    few lines. ``base`` merges per task and key (a variant changes one setting of one task); every other key,
    ``stages`` included, replaces the parent's."""
    exp = load_config(path)
    parent = exp.pop("extends", None)
    if not parent:
        return exp
    ppath = (path.parent / parent).resolve()
    if ppath in seen:
        raise EdgeClipError(f"{path}: `extends` loops back to {ppath}")
    if not ppath.is_file():
        raise EdgeClipError(f"{path}: extends {parent!r}, which is not there ({ppath})")
    merged = _with_parent(ppath, (*seen, ppath))
    base = copy.deepcopy(merged.get("base") or {})
    for task, cfg in (exp.pop("base", None) or {}).items():
        base[task] = _deep_merge(base.get(task) or {}, cfg or {})
    merged.update(exp)
    merged["base"] = base
    return merged


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
    path: str | Path | dict,
    overrides: list[str] | tuple = (),
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) every stage, then write the results JSON; -> the results dict."""
    import torch

    from edgeclip.core.machine import machine_info
    from edgeclip.core.places import shared_data_dir

    exp = load_experiment(path, overrides)
    if exp.get("threads"):
        torch.set_num_threads(int(exp["threads"]))
    work = Path(exp["workdir"])
    ctx: dict[str, Any] = {
        "vars": {"workdir": str(work), "shared": str(shared_data_dir()), "seed": exp.get("seed", 0)},
        "stages": {},
        "log": log,
    }
    timings: dict[str, float] = {}
    names = [st["name"] for st in exp["stages"]]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise EdgeClipError(f"--only: no stage {unknown[0]!r} in {exp['_path']} (stages: {', '.join(names)})")
    last = max((names.index(n) for n in only), default=len(names) - 1) if only else len(names) - 1
    pending = []
    for i, stage in enumerate(exp["stages"]):
        name = stage["name"]
        done = (work / name / "stage.json").is_file()
        if only and name not in only and not done:
            if i < last:
                raise EdgeClipError(
                    f"--only {','.join(only)}: stage {name!r} comes first and has not run yet"
                )
            pending.append(name)  # after the stages asked for: left for a later run
            continue
        cfg = resolve(stage_config(exp, stage), ctx)
        skip = bool(only) and name not in only
        try:
            rec = _run_stage(
                name, stage["task"], cfg, work / name, ctx, skip, log, fresh=bool(exp.get("fresh"))
            )
        except Exception as e:
            if not exp.get("keep_going"):
                raise
            _record_failure(ctx, name, e, log)  # one line in the results; the later stages still run
            continue
        ctx["stages"][name] = rec["result"]
        timings[f"{name}_minutes"] = rec["seconds"] / 60
    if pending:  # never overwrite the experiment's results JSON with a part of them
        return _partial(exp, work, pending, ctx, timings, log)
    results = WRITERS[exp.get("writer", "lab")](exp, ctx, timings)
    results["machine"] = machine_info()
    write_json(exp["results"], results)
    partial_path(exp["results"]).unlink(missing_ok=True)  # the whole supersedes the part
    log(f"results: {exp['results']}")
    return results


def partial_path(results: str | Path) -> Path:
    """Where a run that stopped short keeps what it has beside the results JSON (``X.json`` -> ``X_partial.json``,
    committed with the code while a long lab spans sessions; the report reads it until the whole lands)."""
    p = Path(results)
    return p.with_name(p.stem + "_partial.json")


def _partial(exp: dict, work: Path, pending: list[str], ctx: dict, timings: dict, log) -> dict[str, Any]:
    """What ran, in OUT/partial_results.json and beside the results JSON (:func:`partial_path`); the experiment's
    results JSON is left as it is."""
    from edgeclip.core.machine import machine_info

    rec = {
        "format": RESULT_FORMAT,
        "experiment": exp["name"],
        "pending_stages": pending,
        "stages": ctx["stages"],
        "timings": timings,
        "machine": machine_info(),
    }
    path = work / "partial_results.json"
    write_json(path, rec)
    write_json(partial_path(exp["results"]), rec)
    log(
        f"stages not run yet: {', '.join(pending)}; what has run is in {partial_path(exp['results'])} "
        f"({exp['results']} is left as it is)"
    )
    return {"pending_stages": pending, "stages": ctx["stages"]}


def _record_failure(ctx: dict, name: str, e: Exception, log) -> None:
    """A failed stage of a keep_going experiment: its one line (an EdgeClipError's own, else the exception's type
    and first line, with the trace's tail under ``errors``)."""
    import traceback

    if isinstance(e, EdgeClipError):
        ctx.setdefault("failed", {})[name] = str(e)
        log(f"  {name} skipped: {e}")
        return
    first = str(e).splitlines()[0][:300] if str(e) else ""
    ctx.setdefault("failed", {})[name] = f"failed: {type(e).__name__}: {first}"
    ctx.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
    log(f"  {name} FAILED: {ctx['failed'][name]}")


def _run_stage(
    name: str, task: str, cfg: dict, out: Path, ctx: dict, skip: bool, log, fresh: bool = False
) -> dict:
    marker = out / "stage.json"
    key = sha256_text(json.dumps({"task": task, "config": cfg}, sort_keys=True, default=str))[:16]
    if fresh:
        marker.unlink(missing_ok=True)
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
    """A metric: ``stage.key.path`` into a stage result; {ratio: [a, b]} / {diff: [a, b]} of two of them; or, over
    repeats (seeds), {mean: [a, b, ...]} or {spread: [a, b, ...]} (mean, std, min, max, n, values). Items may be
    metric specs themselves. A list gives a list of metrics; {const: X} is X (a fact of the experiment itself)."""
    if isinstance(spec, str):
        return _lookup({"stages": stages, **stages}, spec)
    if isinstance(spec, list):
        return [metric_value(v, stages) for v in spec]
    if isinstance(spec, dict) and len(spec) == 1:
        ((op, items),) = spec.items()
        if op == "const":
            return items
        if op in ("ratio", "diff") and isinstance(items, list) and len(items) == 2:
            x, y = (metric_value(v, stages) for v in items)
            if x is None or y is None:
                return None
            return (x / y if y else None) if op == "ratio" else x - y
        if op in ("mean", "spread") and isinstance(items, list) and items:
            vals = [metric_value(v, stages) for v in items]
            if any(v is None for v in vals):
                return None
            mean = sum(vals) / len(vals)
            if op == "mean":
                return mean
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            return {
                "mean": mean,
                "std": std,
                "min": min(vals),
                "max": max(vals),
                "n": len(vals),
                "values": vals,
            }
    raise EdgeClipError(
        f"bad metric spec {spec!r}: a stage.key path, a list, {{ratio|diff: [a, b]}}, {{mean|spread: [a, ...]}} "
        "or {const: X}"
    )


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


def _bench_results(exp: dict, ctx: dict, timings: dict) -> dict[str, Any]:
    from edgeclip.lab.suite import bench_results

    return bench_results(exp, ctx, timings)


WRITERS = {"lab": _results, "bench": _bench_results}  # results JSON writers, by the experiment's `writer`


def _strings(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj
