"""The CLI as users run it: label, eval, cache, distill (incl. 2-process DDP) and the errors they get."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeclip.cli import main


def run_cli(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def student_ckpt(tiny_teacher, shapes, tmp_path_factory):
    from edgeclip.train.distill import DistillConfig, distill

    out = tmp_path_factory.mktemp("student")
    distill(
        DistillConfig(
            teacher=tiny_teacher,
            data=str(shapes["train"]),
            out=str(out),
            student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 128},
            train={"epochs": 1, "batch_size": 32},
        ),
        progress=False,
    )
    return out / "student.pt"


def test_label_teacher_and_student_jsonl_csv(tiny_teacher, student_ckpt, shapes, tmp_path, capsys):
    imgs = sorted(Path(shapes["test"]).rglob("*.jpg"))[:3]
    code, out, err = run_cli(
        ["label", *imgs, "--labels", "circle,square,star", "--teacher", tiny_teacher, "--topk", "2"], capsys
    )
    assert code == 0, err
    rows = [json.loads(lb) for lb in out.splitlines()]
    assert len(rows) == 3 and all(
        len(r["labels"]) == 2 and r["labels"][0] in ("circle", "square", "star") for r in rows
    )
    assert all(1 >= r["scores"][0] >= r["scores"][1] >= 0 for r in rows)  # softmax probabilities, best first
    csvp = tmp_path / "o.csv"
    code, out, err = run_cli(
        [
            "label",
            shapes["test"],
            "--labels",
            "circle,square",
            "--student",
            student_ckpt,
            "--template",
            "a photo of a {}.",
            "--template",
            "a drawing of a {}.",
            "--out",
            csvp,
        ],
        capsys,
    )
    assert code == 0, err
    lines = csvp.read_text().splitlines()
    assert lines[0].startswith("image,region,rank,label") and len(lines) == 1 + 36 * 2
    assert "labeled 36 images" in err


def test_label_grid_and_boxes(tiny_teacher, shapes, tmp_path, capsys):
    img = sorted(Path(shapes["test"]).rglob("*.jpg"))[0]
    code, out, err = run_cli(
        ["label", img, "--labels", "circle,square", "--teacher", tiny_teacher, "--grid", "2"], capsys
    )
    assert code == 0, err
    rows = [json.loads(lb) for lb in out.splitlines()]
    assert len(rows) == 4 and rows[3]["region"] == [20, 20, 40, 40]
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({img.name: [[0, 0, 20, 30], [0.5, 0.5, 1.0, 1.0]]}))
    code, out, err = run_cli(
        ["label", img, "--labels", "circle,square", "--teacher", tiny_teacher, "--boxes", boxes], capsys
    )
    assert code == 0, err
    assert [json.loads(lb)["region"] for lb in out.splitlines()] == [[0, 0, 20, 30], [0.5, 0.5, 1.0, 1.0]]


def test_label_bad_inputs_are_one_line(tiny_teacher, shapes, tmp_path, capsys):
    img = sorted(Path(shapes["test"]).rglob("*.jpg"))[0]
    code, out, err = run_cli(["label", img, "--labels", " , ,", "--teacher", tiny_teacher], capsys)
    assert code == 2 and err.strip() == "error: the label list is empty"
    code, out, err = run_cli(
        ["label", tmp_path / "missing.jpg", "--labels", "a", "--teacher", tiny_teacher], capsys
    )
    assert code == 2 and err.startswith("error: no images found") and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xffnope")
    code, out, err = run_cli(
        ["label", img, bad, "--labels", "circle,square", "--teacher", tiny_teacher], capsys
    )
    assert code == 0 and len(out.splitlines()) == 1 and "skipped 1" in err and "bad.jpg" in err
    code, out, err = run_cli(["label", img, "--labels", "a,b", "--teacher", "reference-lit:/nope.pt"], capsys)
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1


def test_eval_json_keys(tiny_teacher, student_ckpt, shapes, tmp_path, capsys):
    out_json = tmp_path / "e.json"
    code, out, err = run_cli(
        [
            "eval",
            shapes["test"],
            "--teacher",
            tiny_teacher,
            "--student",
            student_ckpt,
            "--json",
            "--out",
            out_json,
        ],
        capsys,
    )
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1  # one JSON line, like eval CAPTIONS --json
    res = json.loads(out)
    for k in ("teacher_top1", "student_top1", "agreement", "n", "teacher_top5", "student_top5"):
        assert k in res
    assert res["n"] == 36 and 0 <= res["agreement"] <= 1
    assert json.loads(out_json.read_text())["n"] == 36


def test_student_of_other_teacher_or_head_size(student_ckpt, shapes, tmp_path, capsys):
    from edgeclip.models.student import load_student, save_student

    st, pp, ck = load_student(student_ckpt)
    wrong = dict(ck["teacher"], id="reference-lit:sha256:1234")
    save_student(st, tmp_path / "w.pt", pp, wrong)
    code, out, err = run_cli(
        ["eval", shapes["test"], "--student", tmp_path / "w.pt", "--teacher", ck["teacher"]["spec"]], capsys
    )
    assert code == 2 and "was made with teacher" in err
    from edgeclip.models import create_student

    small = create_student("shufflenet_v2_x0_5", 128, img_size=32)
    save_student(small, tmp_path / "h.pt", pp, ck["teacher"])
    code, out, err = run_cli(
        [
            "label",
            sorted(Path(shapes["test"]).rglob("*.jpg"))[0],
            "--labels",
            "a,b",
            "--student",
            tmp_path / "h.pt",
        ],
        capsys,
    )
    assert code == 2 and "128-d" in err and "384-d" in err
    torch.save({"x": 1}, tmp_path / "notstudent.pt")
    code, out, err = run_cli(["eval", shapes["test"], "--student", tmp_path / "notstudent.pt"], capsys)
    assert code == 2 and "not an edgeclip student checkpoint" in err


def test_cache_cli_and_mismatch(tiny_teacher, shapes, tmp_path, capsys):
    code, out, err = run_cli(
        ["cache", shapes["test"], "--teacher", tiny_teacher, "--out", tmp_path / "c", "--views", "2"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["computed"] == 36
    code, out, err = run_cli(
        ["cache", shapes["test"], "--teacher", tiny_teacher, "--out", tmp_path / "c", "--views", "2"], capsys
    )
    assert json.loads(out)["reused"] == 36
    code, out, err = run_cli(
        ["cache", shapes["test"], "--teacher", tiny_teacher, "--out", tmp_path / "c"], capsys
    )
    assert code == 2 and "views=2" in err


def test_distill_config_file_and_overrides(tiny_teacher, shapes, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"teacher: {tiny_teacher}\ndata: {shapes['test']}\nstudent:\n  arch: mobilenet_v3_small\n  img_size: 32\n"
        f"loss: mse\ntrain:\n  epochs: 3\n  batch_size: 12\n"
    )
    code, out, err = run_cli(
        ["distill", cfg, "--out", tmp_path / "s", "--set", "train.epochs=1", "--set", "loss=l1"], capsys
    )
    assert code == 0, err
    hist = json.loads((tmp_path / "s" / "history.json").read_text())
    assert len(hist["epochs"]) == 1
    code, out, err = run_cli(["distill", cfg, "--set", "nonsense=1"], capsys)
    assert code == 2 and "unknown DistillConfig keys: nonsense" in err


def test_ddp_two_cpu_processes_identical_weights(tiny_teacher, shapes, tmp_path):
    """Lightning Fabric DDP with gloo: 2 processes, both ranks end with identical weights."""
    out = tmp_path / "ddp"
    exe = Path(sys.executable).with_name("edgeclip")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            str(exe),
            "distill",
            "--teacher",
            tiny_teacher,
            "--data",
            str(shapes["train"]),
            "--student",
            "shufflenet_v2_x0_5",
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--devices",
            "2",
            "--accelerator",
            "cpu",
            "--strategy",
            "ddp",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    h0, h1 = (out / "rank0.weights.sha256").read_text(), (out / "rank1.weights.sha256").read_text()
    assert h0 == h1 and len(h0.strip()) == 64
    hist = json.loads((out / "history.json").read_text())
    assert hist["world_size"] == 2
    assert hist["epochs"][0]["steps"] == 144 // 16 // 2  # each rank saw half the data


@pytest.mark.parametrize(
    "name,cls",
    [
        ("distill_cifar10_shufflenet", "edgeclip.train.distill:DistillConfig"),
        ("clip4retrofit_effnet_b3", "edgeclip.train.distill:DistillConfig"),
        ("caption_vi", "edgeclip.train.caption:CaptionTrainConfig"),
        ("edgevl_cifar_mono", "edgeclip.train.edgevl:PairDistillConfig"),
        ("edgevl_rgbd", "edgeclip.train.edgevl:PairDistillConfig"),
        ("edgevl_qat", "edgeclip.train.edgevl:QATConfig"),
    ],
)
def test_shipped_configs_build(name, cls):
    """Every experiment file in configs/ builds the dataclass its command reads (no unknown or misspelt keys)."""
    import importlib

    from edgeclip.core.config import build_dataclass, load_config

    mod, attr = cls.split(":")
    cfg = build_dataclass(getattr(importlib.import_module(mod), attr), load_config(name + ".yaml"))
    if name == "edgevl_qat":
        assert (cfg.weight_bits, cfg.per_channel, cfg.margin, cfg.negatives) == (8, True, 0.3, 3)


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["no-such-command"], "No such command"),
        (["distill", "--no-such-option"], "No such option"),
        (["label", "x.jpg"], "no labels: give --labels"),
        (["label", "x.jpg", "--labels", "a", "--topk", "many"], "Invalid value for '--topk'"),
        (["edgevl", "curate"], "Missing argument"),
        (["distill-pair"], "`edgeclip distill-pair` is now `edgeclip edgevl distill`"),
        (["caption-train"], "is now `edgeclip caption train`"),
        (["teacher", "train-reference"], "is now `edgeclip teacher train`"),
    ],
)
def test_usage_errors_are_one_line(argv, msg, capsys):
    code, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    "setting,msg",
    [
        ("--epochs=0", "train.epochs must be >= 1, got 0"),
        ("--epochs=-3", "train.epochs must be >= 1, got -3"),
        ("--batch-size=0", "train.batch_size must be >= 1, got 0"),
        ("--lr=-1", "train.lr must be >= 0, got -1.0"),
        ("--set=train.num_workers=-2", "train.num_workers must be >= 0 or auto, got -2"),
    ],
)
def test_budgets_that_cannot_train_are_refused_at_config_time(
    setting, msg, tiny_teacher, shapes, tmp_path, capsys
):
    code, out, err = run_cli(
        ["distill", "--teacher", tiny_teacher, "--data", shapes["train"], "--out", tmp_path / "s", setting],
        capsys,
    )
    assert code == 2 and err.strip() == f"error: {msg}" and not (tmp_path / "s" / "student.pt").exists()


def test_topk_zero_is_one_line(tiny_teacher, shapes, capsys):
    img = sorted(Path(shapes["test"]).rglob("*.jpg"))[0]
    code, out, err = run_cli(
        ["label", img, "--labels", "a,b", "--teacher", tiny_teacher, "--topk", "0"], capsys
    )
    assert code == 2 and "topk must be >= 1, got 0" in err


def test_eval_retrieval_on_a_captions_file(tiny_teacher, student_ckpt, shapes, tmp_path, capsys):
    """`edgeclip eval CAPTIONS --images DIR --json`: one JSON line, R@1/5/10 both ways for teacher and student."""
    imgs = sorted(Path(shapes["test"]).rglob("*.jpg"))[:12]
    name = {p: f"{p.parent.name}_{p.name}" for p in imgs}  # the class folders reuse file names
    lines = [f"{name[p]}, a drawing of a {p.parent.name}" for p in imgs]
    lines += [f"{name[p]}, a {p.parent.name} on a plain background" for p in imgs]
    (tmp_path / "pics").mkdir()
    for p in imgs:
        (tmp_path / "pics" / name[p]).write_bytes(p.read_bytes())
    (tmp_path / "caps.txt").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(
        [
            "eval",
            tmp_path / "caps.txt",
            "--images",
            tmp_path / "pics",
            "--teacher",
            tiny_teacher,
            "--student",
            student_ckpt,
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    res = json.loads(out)
    keys = [f"{role}_{d}_r{k}" for role in ("teacher", "student") for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert res["n_images"] == 12 and res["n_captions"] == 24 and all(0 <= res[k] <= 1 for k in keys)
    assert all(
        res[f"{r}_i2t_r10"] >= res[f"{r}_i2t_r5"] >= res[f"{r}_i2t_r1"] for r in ("teacher", "student")
    )
    for d in ("t2i", "i2t"):  # what users distil for: the share of the teacher's R@5 the student keeps
        assert res[f"student_retention_{d}_r5"] == pytest.approx(
            res[f"student_{d}_r5"] / res[f"teacher_{d}_r5"]
        )


def test_student_finds_its_teacher_when_the_recorded_path_is_gone(
    tiny_teacher, student_ckpt, shapes, tmp_path, capsys, monkeypatch
):
    """A copied student whose recorded teacher path is gone: --teacher, then a models index (beside the student
    or named by $EDGECLIP_MODELS) finds the teacher by id; with neither, one line names --teacher and the id."""
    import shutil

    from edgeclip.core.checkpoint import read_checkpoint, save_checkpoint
    from edgeclip.models.student import STUDENT_FORMAT

    monkeypatch.delenv("EDGECLIP_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./models here
    ck = read_checkpoint(student_ckpt, STUDENT_FORMAT, "student")
    tid = ck["teacher"]["id"]
    ck["teacher"] = {**ck["teacher"], "spec": f"reference-lit:{tmp_path / 'gone' / 'teacher.pt'}"}
    moved = tmp_path / "copied" / "student.pt"
    moved.parent.mkdir()
    sd = ck.pop("state_dict")
    ck.pop("format")
    save_checkpoint(moved, STUDENT_FORMAT, sd, **ck)
    img = sorted(Path(shapes["test"]).rglob("*.jpg"))[0]
    args = ["label", img, "--labels", "circle,star", "--student", moved]

    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--teacher" in err and tid in err, err

    code, out, err = run_cli([*args, "--teacher", tiny_teacher], capsys)
    assert code == 0, err

    models = tmp_path / "shelf"
    models.mkdir()
    shutil.copy(tiny_teacher.split(":", 1)[1], models / "t.pt")
    entry = {"spec": "reference-lit:shelf/t.pt", "id": tid, "files": {"t.pt": {}}}
    (models / "index.json").write_text(json.dumps({"models": {"teacher": entry}}))
    monkeypatch.setenv("EDGECLIP_MODELS", str(models))
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["labels"][0] in ("circle", "star")

    monkeypatch.delenv("EDGECLIP_MODELS")  # the index beside the student (as in models/) is found too
    shutil.copy(models / "index.json", moved.parent / "index.json")
    shutil.copy(models / "t.pt", moved.parent / "t.pt")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err


def test_help_texts_keep_their_brackets(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(["label", "--help"], capsys)
    assert code == 0 and '{"image.jpg": [[x0,y0,x1,y1], ...]}' in out, out
