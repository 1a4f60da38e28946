"""Experiments as data: a lab YAML run end to end by `edgeclip lab run`, re-run (stages skipped), refused when
a finished stage's config changes, and errors in the file as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgeclip.cli import main
from edgeclip.core.errors import EdgeClipError
from edgeclip.lab.experiment import load_experiment, run_experiment, stage_config


def _experiment(tmp_path: Path, shapes, epochs: int = 1) -> Path:
    exp = {
        "name": "tiny",
        "results": str(tmp_path / "results.json"),
        "workdir": str(tmp_path / "work"),
        "seed": 0,
        "base": {
            "reference-teacher": {
                "arch": "shufflenet_v2_x0_5",
                "img_size": 32,
                "epochs": 1,
                "batch_size": 64,
                "head_hidden": 64,
            },
            "distill": {
                "student": {
                    "arch": "shufflenet_v2_x0_5",
                    "img_size": 32,
                    "small_input": True,
                    "head_hidden": 64,
                },
                "loss": "cosine",
                "train": {"epochs": 1, "batch_size": 32},
            },
        },
        "stages": [
            {
                "name": "teacher",
                "task": "reference-teacher",
                "set": {"data": str(shapes["train"]), "seed": "${seed}"},
            },
            {
                "name": "cache",
                "task": "cache",
                "set": {"teacher": "${teacher.teacher}", "data": str(shapes["train"]), "views": 2},
            },
            {
                "name": "student",
                "task": "distill",
                "set": {
                    "teacher": "${teacher.teacher}",
                    "cache": "${cache.cache}",
                    "data": str(shapes["train"]),
                    "train.epochs": epochs,
                },
            },
            {
                "name": "eval",
                "task": "eval",
                "set": {
                    "teacher": "${teacher.teacher}",
                    "data": str(shapes["test"]),
                    "students": {"student": "${student.student}"},
                },
            },
        ],
        "metrics": {
            "teacher_top1": "eval.teacher_top1",
            "student_top1": "eval.student_top1",
            "retention": {"ratio": ["eval.student_top1", "eval.teacher_top1"]},
        },
        "targets": [
            {"name": "chance", "metric": "teacher_top1", "op": ">=", "value": 0.0},
            {"name": "impossible", "metric": "retention", "op": ">", "value": 100},
        ],
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(exp))
    return p


def test_run_skip_and_refuse_a_changed_stage(tmp_path, shapes, capsys):
    p = _experiment(tmp_path, shapes)
    main(["lab", "run", str(p)])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["format"] == "edgeclip-lab-result/1" and res["experiment"] == "tiny"
    assert res["retention"] == pytest.approx(res["student_top1"] / res["teacher_top1"])
    assert res["targets"] == {"chance": True, "impossible": False}
    assert {"teacher/teacher.pt", "student/student.pt"} <= set(res["checkpoints"])
    assert res["stages"]["student"]["epochs"] == 1 and res["command"].startswith("edgeclip lab run")
    # a re-run skips every stage and gives the same figures
    again = run_experiment(p, log=lambda s: None)
    assert again["student_top1"] == res["student_top1"] and again["checkpoints"] == res["checkpoints"]
    # a finished stage whose config changed is refused in one line
    with pytest.raises(EdgeClipError, match="stage 'student' finished earlier with another config"):
        run_experiment(_experiment(tmp_path, shapes, epochs=2), log=lambda s: None)
    capsys.readouterr()
    main(["lab", "stages", str(p)])
    assert "student" in capsys.readouterr().out


def test_experiment_file_errors_are_one_line(tmp_path):
    p = tmp_path / "e.yaml"
    for body, msg in [
        (
            {"name": "x", "results": "r.json", "workdir": "w", "stages": [{"name": "a", "task": "distil"}]},
            "unknown lab task 'distil'.*Did you mean: distill",
        ),
        ({"name": "x", "results": "r.json", "workdir": "w", "stagse": []}, "unknown experiment keys"),
        (
            {"name": "x", "results": "r.json", "workdir": "w", "stages": [{"name": "a", "task": "eval"}] * 2},
            "two stages are called 'a'",
        ),
    ]:
        p.write_text(yaml.safe_dump(body))
        with pytest.raises(EdgeClipError, match=msg):
            load_experiment(p)


def test_the_shipped_lab_experiments_parse():
    """Every experiment in experiments/ loads, names known tasks, and builds each stage's config."""
    root = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(root.glob("*.yaml"))
    assert files, "no experiment files"
    for f in files:
        exp = load_experiment(f)
        for st in exp["stages"]:
            assert isinstance(stage_config(exp, st), dict)


def test_an_edgevl_experiment_end_to_end(tmp_path, shapes, tiny_teacher):
    """Curation -> stage 1 -> PTQ and QAT to int8 ONNX -> top-1 per modality, as one experiment file."""
    derive = {"mono": "luminance"}
    exp = {
        "name": "tiny_edgevl",
        "results": str(tmp_path / "r.json"),
        "workdir": str(tmp_path / "w"),
        "base": {
            "edgevl-curate": {"derive": derive, "fraction": 0.5},
            "edgevl-distill": {
                "derive": derive,
                "student": {"arch": "shufflenet_v2_x0_5", "img_size": 32, "head_hidden": 0},
                "train": {"max_steps": 2, "batch_size": 12},
            },
            "edgevl-ptq": {"derive": derive, "calib_images": 12},
            "edgevl-qat": {"derive": derive, "train": {"max_steps": 2, "batch_size": 12, "warmup_epochs": 0}},
            "edgevl-eval": {"derive": derive},
        },
        "stages": [
            {
                "name": "curate",
                "task": "edgevl-curate",
                "set": {"teacher": tiny_teacher, "data": str(shapes["train"])},
            },
            {
                "name": "s1",
                "task": "edgevl-distill",
                "set": {
                    "teacher": tiny_teacher,
                    "data": str(shapes["train"]),
                    "manifest": "${curate.manifest}",
                },
            },
            {
                "name": "ptq",
                "task": "edgevl-ptq",
                "set": {"student": "${s1.student}", "data": str(shapes["train"])},
            },
            {
                "name": "qat",
                "task": "edgevl-qat",
                "set": {
                    "student": "${s1.student}",
                    "data": str(shapes["train"]),
                    "manifest": "${curate.manifest}",
                },
            },
            {
                "name": "eval",
                "task": "edgevl-eval",
                "set": {
                    "data": str(shapes["test"]),
                    "student": "${s1.student}",
                    "onnx": ["${ptq.result}", "${qat.result}"],
                },
            },
        ],
        "metrics": {
            "ptq_mono": "eval.ptq.mono.top1",
            "qat_minus_ptq": {"diff": ["eval.qat.mono.top1", "eval.ptq.mono.top1"]},
        },
    }
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump(exp))
    res = run_experiment(p, log=lambda s: None)
    assert 0 <= res["ptq_mono"] <= 1 and -1 <= res["qat_minus_ptq"] <= 1
    assert (
        set(res["stages"]["eval"]) >= {"teacher", "fp32", "ptq", "qat"}
        and res["stages"]["curate"]["n_kept"] == 72
    )
