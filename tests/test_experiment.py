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
    # --only the first stages: the later ones wait, and the results JSON is not written from a part of them
    part = run_experiment(p, only=["teacher", "cache"], log=lambda s: None)
    assert part["pending_stages"] and "cache" in part["stages"] and not (tmp_path / "results.json").exists()
    assert (tmp_path / "work" / "partial_results.json").is_file()
    assert (
        json.loads((tmp_path / "results_partial.json").read_text())["pending_stages"]
        == part["pending_stages"]
    )
    with pytest.raises(EdgeClipError, match="no stage 'nope'"):
        run_experiment(p, only=["nope"], log=lambda s: None)
    main(["lab", "run", str(p)])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["format"] == "edgeclip-lab-result/1" and res["experiment"] == "tiny"
    assert not (tmp_path / "results_partial.json").exists()  # the whole supersedes the part
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
            {  # a validation split of the train folder: the 48 pairs a max_images: 48 run drew are left out
                "name": "val",
                "task": "edgevl-eval",
                "set": {
                    "data": str(shapes["train"]),
                    "student": "${s1.student}",
                    "onnx": {"int8_qat": "${qat.result}"},
                    "exclude": {"max_images": 48, "seed": 0},
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
    val = res["stages"]["val"]
    assert set(val) >= {"teacher", "fp32", "int8_qat"} and val["n"] == 144 - 48


def test_extends_a_variant_is_a_few_lines(tmp_path):
    """A variant file changes one setting of one task; `base` merges per key, other keys replace the parent's."""
    parent = {
        "name": "main",
        "results": "r.json",
        "workdir": "w",
        "base": {
            "distill": {"loss": "mse", "train": {"max_steps": 10, "lr": 0.1}},
            "eval": {"batch_size": 8},
        },
        "stages": [{"name": "s", "task": "distill", "set": {"data": "d"}}],
        "targets": [{"name": "t", "metric": "m", "op": ">=", "value": 1}],
    }
    (tmp_path / "main.yaml").write_text(yaml.safe_dump(parent))
    child = {"extends": "main.yaml", "name": "v", "base": {"distill": {"train": {"lr": 0.5}}}, "targets": []}
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(child))
    exp = load_experiment(tmp_path / "v.yaml")
    assert exp["name"] == "v" and exp["targets"] == [] and exp["base"]["eval"] == {"batch_size": 8}
    cfg = stage_config(exp, exp["stages"][0])
    assert cfg == {"loss": "mse", "train": {"max_steps": 10, "lr": 0.5}, "data": "d"}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({**child, "extends": "loop.yaml"}))
    with pytest.raises(EdgeClipError, match="loops back"):
        load_experiment(tmp_path / "loop.yaml")
    (tmp_path / "gone.yaml").write_text(yaml.safe_dump({**child, "extends": "nothere.yaml"}))
    with pytest.raises(EdgeClipError, match="not there"):
        load_experiment(tmp_path / "gone.yaml")


def test_captioner_and_bundle_experiments_end_to_end(tmp_path, shapes, tiny_teacher):
    """The caption lab (train a / b, test scores, speed) and the bundle lab (export, accuracy, latency, serve
    load test) as experiment files, on tiny data."""
    root = Path(shapes["train"]).parent
    lines, splits = [], {"train": [], "val": []}
    for split, key in (("train", "train"), ("test", "val")):
        for f in sorted((root / split).rglob("*.jpg")):
            rel = str(f.relative_to(root))
            lines += [f"{rel}, a {f.parent.name} shape .", f"{rel}, the {f.parent.name} shape"]
            splits[key].append(rel)
    caps = tmp_path / "captions.txt"
    caps.write_text("\n".join(lines) + "\n")
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    small = {"img_size": 64, "embed": 32, "att_dim": 32}
    exp = {
        "name": "tiny_caption",
        "results": str(tmp_path / "r.json"),
        "workdir": str(tmp_path / "w"),
        "base": {
            "caption-train": {
                "config": "caption_flickr8k",
                "data": str(caps),
                "images": str(root),
                "model": small,
                "vocab": {"min_count": 1, "max_len": 8},
                "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2},
                "captions_per_image": 2,
                "val_max_images": 6,
            },
            "caption-eval": {"data": str(caps), "images": str(root), "split": "val", "beams": [2, 1]},
            "caption-speed": {"data": str(caps), "images": str(root), "split": "val", "threads": 1},
        },
        "stages": [
            {"name": "b", "task": "caption-train", "set": {"alpha": 0.0, "model.teacher_dim": 384}},
            {"name": "a", "task": "caption-train", "set": {"alpha": 0.7, "teacher": tiny_teacher}},
            {"name": "test_b", "task": "caption-eval", "set": {"captioner": "${b.captioner}"}},
            {"name": "speed", "task": "caption-speed", "set": {"captioner": "${a.captioner}"}},
        ],
        "metrics": {
            "b_cider": "test_b.beam2.metrics.CIDEr",
            "params": "speed.cost.params.total",
            "fps": "speed.throughput_cpu.beam5_batch1.images_per_s",
            "fps_bundle": "speed.throughput_bundle.beam5_batch1.images_per_s",
        },
        "targets": [{"name": "small", "metric": "params", "op": "<=", "value": 4_000_000}],
    }
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(exp))
    res = run_experiment(p, log=lambda s: None)
    assert (
        res["b_cider"] >= 0 and res["fps"] > 0 and res["fps_bundle"] > 0 and res["targets"]["small"] is True
    )
    assert {"greedy", "beam2", "grounding"} <= set(res["stages"]["test_b"])
    assert res["stages"]["a"]["curve"][0]["mse"] is not None  # run a distils from the teacher

    from edgeclip.train.distill import DistillConfig, distill

    student = tmp_path / "student"
    distill(
        DistillConfig(
            teacher=tiny_teacher,
            data=str(shapes["train"]),
            out=str(student),
            student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 64},
            train={"epochs": 1, "batch_size": 32},
        ),
        progress=False,
    )
    bexp = {
        "name": "tiny_bundle",
        "results": str(tmp_path / "b.json"),
        "workdir": str(tmp_path / "bw"),
        "stages": [
            {
                "name": "bundle",
                "task": "bundle",
                "set": {
                    "student": str(student / "student.pt"),
                    "calib": str(shapes["train"]),
                    "calib_images": 24,
                    "eval_data": str(shapes["test"]),
                    "quant": "static",
                    "latency_sizes": [32],
                    "threads": 1,
                    "load_test": {"requests": 8, "concurrency": 2},
                },
            }
        ],
        "metrics": {"int8": "bundle.accuracy.bundle_int8", "load": "bundle.load_test"},
    }
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump(bexp))
    res = run_experiment(p, log=lambda s: None)
    assert 0 <= res["int8"] <= 1 and res["load"]["errors"] == 0 and res["load"]["requests"] == 8
    assert set(res["stages"]["bundle"]["latency_batch1"]) == {"32px"}


def test_an_open_vocabulary_teacher_from_captions(tmp_path, shapes):
    """caption-teacher (LiT on the images' own captions, val Recall@K each epoch) then retrieval Recall@K on the
    test split: the teacher it writes loads as a 384-d reference-lit teacher."""
    root = Path(shapes["train"]).parent
    lines, splits = [], {"train": [], "val": [], "test": []}
    for split, keys in (("train", ("train",)), ("test", ("val", "test"))):
        for f in sorted((root / split).rglob("*.jpg")):
            rel = str(f.relative_to(root))
            lines += [f"{rel}, a {f.parent.name} shape", f"{rel}, a drawing of a {f.parent.name}"]
            for k in keys:
                splits[k].append(rel)
    caps = tmp_path / "captions.txt"
    caps.write_text("\n".join(lines) + "\n")
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    exp = {
        "name": "tiny_caption_teacher",
        "results": str(tmp_path / "r.json"),
        "workdir": str(tmp_path / "w"),
        "stages": [
            {
                "name": "teacher",
                "task": "caption-teacher",
                "set": {
                    "captions": str(caps),
                    "images": str(root),
                    "arch": "shufflenet_v2_x0_5",
                    "img_size": 32,
                    "head_hidden": 64,
                    "crop_scale": 0.5,  # the random-resized-crop augmentation
                    "train": {"epochs": 3, "batch_size": 32, "lr": 3e-3},
                },
            },
            {
                "name": "test",
                "task": "retrieval",
                "set": {
                    "captions": str(caps),
                    "images": str(root),
                    "split": "test",
                    "teacher": "${teacher.teacher}",
                },
            },
        ],
        "metrics": {"r10": "test.teacher_i2t_r10", "val_r10": "teacher.curve"},
    }
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(exp))
    res = run_experiment(p, log=lambda s: None)
    assert res["stages"]["teacher"]["epochs"] == 3 and res["stages"]["test"]["n_images"] == 36
    assert all(e["val_i2t_r10"] is not None for e in res["val_r10"])
    assert 0 <= res["r10"] <= 1
    from edgeclip.models.teachers import load_teacher

    t = load_teacher(res["stages"]["teacher"]["teacher"])
    assert t.embed_dim == 384 and t.image_size == 32


def test_the_int8_speed_experiment_on_tiny_data(tmp_path, shapes, tiny_teacher):
    """experiments/int8_speed.yaml's task on a tiny model: every variant timed beside fp32 with its agreement and
    levers, the export's choice per model, and the other runtimes' figures (OpenVINO when installed)."""
    root = Path(shapes["train"]).parent
    rels = [str(f.relative_to(root)) for f in sorted((root / "train").rglob("*.jpg"))]
    (tmp_path / "captions.txt").write_text("".join(f"{r}, a shape\n" for r in rels))
    (tmp_path / "splits.json").write_text(json.dumps({"val": rels}))
    exp = {
        "name": "tiny_int8",
        "results": str(tmp_path / "r.json"),
        "workdir": str(tmp_path / "w"),
        "stages": [
            {
                "name": "speed",
                "task": "int8-speed",
                "set": {
                    "captions": str(tmp_path / "captions.txt"),
                    "images": str(root),
                    "calib_images": 16,
                    "size": 32,
                    "teacher": tiny_teacher,
                    "labels": ["circle", "square", "star"],
                    "models": ["shufflenet_v2_x0_5"],
                    "int8_variants": ["qdq_per_tensor", "qoperator_per_channel"],
                    "executorch": False,
                },
            }
        ],
        "metrics": {"summary": "speed.summary", "ok": "speed.no_default_slower_than_fp32"},
        "targets": [{"name": "never slower", "metric": "ok", "op": "==", "value": True}],
    }
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump(exp))
    res = run_experiment(p, log=lambda s: None)
    m = res["stages"]["speed"]["models"]["shufflenet_v2_x0_5"]
    assert set(res["summary"]["shufflenet_v2_x0_5"]) >= {"fp32_ms", "int8_ms", "agreement"}
    assert set(m["variants"]) == {"qdq_per_tensor", "qoperator_per_channel"} and m["holdout_images"] == 8
    assert m["default_ms"] <= m["fp32_ms"] and res["targets"]["never slower"] is True
    lev = m["levers"]
    assert (
        lev["ort_fixed_shape"]["int8_ms"] > 0 and lev["ort_offline_optimised"]["fp32"]["offline_load_ms"] > 0
    )
    assert "skipped" in lev["executorch_xnnpack"]
    if "skipped" not in lev["openvino"]:  # OpenVINO reads the QDQ file (it cannot read QOperator's ops)
        assert lev["openvino"]["fp32"]["batch1_ms"] > 0 and lev["openvino"]["int8_file"].endswith(".onnx")
    assert m["best_runtime"]["batch1_ms"] == min(m["best_runtime"]["all"].values())
    assert res["stages"]["speed"]["cpu_flags"] and res["stages"]["speed"]["versions"]["onnxruntime"]


def test_choose_picks_by_the_validation_figure(tmp_path):
    """The `choose` task: the best earlier stage by a figure the experiment names (a val one), its fields passed on."""
    from edgeclip.lab.tasks import TASKS

    choose = TASKS.get("choose")
    cands = {"a": {"score": 0.31, "teacher": "A"}, "b": {"score": 0.35, "teacher": "B"}}
    got = choose({"candidates": cands}, tmp_path, {})
    assert got["chosen"] == "b" and got["teacher"] == "B" and got["scores"] == {"a": 0.31, "b": 0.35}
    assert choose({"candidates": cands, "higher": False}, tmp_path, {})["chosen"] == "a"
    with pytest.raises(EdgeClipError, match="candidates"):
        choose({"candidates": {"a": {"teacher": "A"}}}, tmp_path, {})
    # a list scores its mean (both retrieval directions): b's 0.30 beats a's 0.29 although a has the best single one
    two = {"a": {"score": [0.40, 0.18], "loss": "mse"}, "b": {"score": [0.31, 0.29], "loss": "clipkd"}}
    got = choose({"candidates": two}, tmp_path, {})
    assert got["chosen"] == "b" and got["loss"] == "clipkd" and got["scores"]["a"] == pytest.approx(0.29)
    for bad in ([], [0.3, "x"], [True]):
        with pytest.raises(EdgeClipError, match="candidates"):
            choose({"candidates": {"a": {"score": bad}}}, tmp_path, {})


def test_metrics_over_seeds():
    """{mean: [...]} and {spread: [...]} over repeats, their items metric specs themselves (a ratio per seed)."""
    from edgeclip.lab.experiment import metric_value

    stages = {f"s{i}": {"a": a, "b": 0.5} for i, a in enumerate((0.3, 0.4, 0.5))}
    assert metric_value({"mean": ["s0.a", "s1.a", "s2.a"]}, stages) == pytest.approx(0.4)
    sp = metric_value({"spread": [{"ratio": [f"s{i}.a", f"s{i}.b"]} for i in range(3)]}, stages)
    assert sp["mean"] == pytest.approx(0.8) and sp["std"] == pytest.approx(0.2) and sp["n"] == 3
    assert (sp["min"], sp["max"]) == (pytest.approx(0.6), pytest.approx(1.0))
    assert metric_value({"spread": ["s0.a"]}, stages)["std"] == 0.0
    assert metric_value(["s0.a", {"const": "swir"}], stages) == [0.3, "swir"]
    for bad in ({"mean": []}, {"ratio": ["s0.a"]}, {"median": ["s0.a"]}):
        with pytest.raises(EdgeClipError, match="bad metric spec"):
            metric_value(bad, stages)
