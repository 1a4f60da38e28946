"""Unit tests of the benchmark suite's parts: ratios, Pareto front, lab-result collection, RAPL, report errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.lab.energy import Rapl, energy_table, measure_energy
from edgeclip.lab.fidelity import collect_lab_results, find_curves, pick_metrics
from edgeclip.lab.report import build_report, pareto_front
from edgeclip.lab.speed import (
    build_speed_model,
    calibration_images,
    measure_model,
    ratios,
)


def test_measure_model_and_ratios_same_run(tmp_path, shapes):
    cal = calibration_images([shapes["train"]], n=4, batch=2)
    t = build_speed_model("resnet18", img_size=64, embed_dim=32, role="teacher")
    s = build_speed_model("shufflenet_v2_x0_5", img_size=64, embed_dim=32)
    recs = [
        measure_model(m, tmp_path, cal, threads=1, batch=2, reps=2, thr_reps=1, log=lambda _: None)
        for m in (t, s)
    ]
    for r in recs:
        for be in ("torch", "ort_fp32", "ort_int8"):
            assert r[be]["b1_median_ms"] > 0 and r[be]["throughput_images_per_s"] > 0, (r["name"], be, r[be])
        assert r["onnx_int8_mb"] < r["onnx_fp32_mb"]  # int8 weights really are smaller
        assert r["int8_method"].startswith("static")
    (row,) = ratios(recs)
    assert row["student"] == "shufflenet_v2_x0_5" and row["teacher"] == "resnet18"
    assert row["params_reduction"] == pytest.approx(recs[0]["params"] / recs[1]["params"])
    assert row["params_reduction"] > 5 and row["gflops_reduction"] > 5
    assert row["torch_b1_speedup"] == pytest.approx(
        recs[0]["torch"]["b1_median_ms"] / recs[1]["torch"]["b1_median_ms"]
    )
    # different input sizes are never compared
    recs[1]["img_size"] = 32
    assert ratios(recs) == []


def test_speed_model_specs(tmp_path):
    with pytest.raises(EdgeClipError, match="unknown open_clip architecture"):
        build_speed_model("clip:NoSuchNet")
    with pytest.raises(EdgeClipError, match="not found"):
        build_speed_model(f"ckpt:{tmp_path / 'missing.pt'}")
    m = build_speed_model("clip:RN50")
    assert m.role == "teacher" and m.img_size == 224 and not m.transformer
    with torch.no_grad():
        assert m.module(torch.zeros(1, 3, 224, 224)).shape == (1, 1024)  # the real RN50 tower: 1024-d output


def test_pareto_front():
    pts = [
        {"name": "teacher", "top1": 0.80, "latency_ms": 100.0},
        {"name": "student", "top1": 0.75, "latency_ms": 5.0},
        {"name": "int8", "top1": 0.74, "latency_ms": 2.0},
        {"name": "bad", "top1": 0.70, "latency_ms": 6.0},
    ]
    assert [p["name"] for p in pareto_front(pts)] == ["int8", "student", "teacher"]


def test_collect_lab_results_reads_defensively(tmp_path):
    (tmp_path / "lab_clip4retrofit.json").write_text(
        json.dumps(
            {
                "machine": {"date": "x", "cpu_count": 2},
                "teacher": {"top1": 0.81},
                "student": {"top1": 0.7, "retention": 0.864},
                "int8": {"retention": 0.85},
                "history": {"epochs": [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]},
                "samples": [{"image": "a.jpg", "labels": ["cat"]}],
            }
        )
    )
    (tmp_path / "lab_caption.json").write_text('{"cider": 0.4, ')  # half-written by a run still going
    (tmp_path / "bench.json").write_text(json.dumps({"teacher_top1": 1.0}))  # our own output: excluded
    (tmp_path / "lab_other.json").write_text(json.dumps({"val_top1": 0.5}))
    res = collect_lab_results(tmp_path)
    a = res["areas"]
    assert a["clip4retrofit"]["status"] == "measured"
    f = a["clip4retrofit"]["files"][0]
    assert f["metrics"]["student.retention"] == pytest.approx(0.864) and f["metrics"]["teacher.top1"] == 0.81
    assert not any(k.startswith("machine") for k in f["metrics"])  # machine facts are not metrics
    assert f["curves"]["history.epochs.loss"] == [1.0, 0.5]
    assert f["samples"][0]["image"] == "a.jpg"
    assert (
        a["caption"]["status"] == "not yet measured" and "not valid JSON" in a["caption"]["files"][0]["error"]
    )
    assert a["edgevl"] == {"measures": a["edgevl"]["measures"], "files": [], "status": "not yet measured"}
    assert [o["file"] for o in res["other"]] == ["lab_other.json"]
    assert collect_lab_results(tmp_path / "absent")["areas"]["bundle"]["status"] == "not yet measured"
    assert pick_metrics({"a": {"cider": 1.2, "name": "x", "flag": True}}) == {"a.cider": 1.2}
    # a metric table keyed by model and modality (the EdgeVL lab's zero_shot_top1)
    assert pick_metrics({"zero_shot_top1": {"fp32": {"rgb": 0.8}}, "seconds": {"qat": 3.0}}) == {
        "zero_shot_top1.fp32.rgb": 0.8
    }
    assert find_curves({"epochs": [{"epoch": 1}]}) == {}


def _fake_powercap(root: Path, values, max_range=1000):
    for i, v in enumerate(values):
        d = root / f"intel-rapl:{i}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "energy_uj").write_text(f"{v}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    sub = root / "intel-rapl:0:0"  # a sub-domain (core): must not be counted twice
    sub.mkdir(parents=True, exist_ok=True)
    (sub / "energy_uj").write_text("5\n")


def test_rapl_reader_and_wraparound(tmp_path):
    assert not Rapl(tmp_path / "none").available
    _fake_powercap(tmp_path, [100, 200])
    r = Rapl(tmp_path)
    assert [d.name for d in r.domains] == ["intel-rapl:0", "intel-rapl:1"]
    before = r.read()
    _fake_powercap(tmp_path, [50, 700])  # package 0 wrapped around (range 1000)
    assert r.delta_joules(before, r.read()) == pytest.approx((950 + 500) / 1e6)
    calls = []
    res = measure_energy(lambda: calls.append(1), images_per_call=4, seconds=0.01, rapl=r)
    assert res["images"] == 4 * (len(calls) - 1) and res["joules_per_image"] >= 0
    assert measure_energy(lambda: None, 1, rapl=Rapl(tmp_path / "none")) is None


def test_energy_table_labels_estimates():
    models = [
        {
            "name": "t",
            "role": "teacher",
            "img_size": 224,
            "gflops": 4.0,
            "torch": {"throughput_images_per_s": 10.0},
        },
        {
            "name": "s",
            "role": "student",
            "img_size": 224,
            "gflops": 0.2,
            "torch": {"throughput_images_per_s": 200.0},
            "energy_rapl": {"joules_per_image": 0.03, "watts": 12.0},
        },
    ]
    e = energy_table(models, threads=2, joules_per_gflop=0.1)
    t, s = e["rows"]
    assert t["method"].startswith("estimate") and t["estimate_joules_per_image"] == pytest.approx(0.4)
    assert t["cpu_core_seconds_per_image"] == pytest.approx(0.2)
    assert s["method"].startswith("measured") and s["measured_joules_per_image"] == 0.03
    assert "estimate" in e["method"]


def test_report_rejects_bad_input(tmp_path):
    with pytest.raises(EdgeClipError, match="not found"):
        build_report(tmp_path / "bench.json", tmp_path / "r")
    (tmp_path / "bench.json").write_text("{oops")
    with pytest.raises(EdgeClipError, match="not valid JSON"):
        build_report(tmp_path / "bench.json", tmp_path / "r")
    (tmp_path / "bench.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(EdgeClipError, match="not an edgeclip bench result"):
        build_report(tmp_path / "bench.json", tmp_path / "r")


def test_cli_errors_are_one_line(tmp_path, capsys):
    from edgeclip.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", "--bench", str(tmp_path / "nope.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench results not found") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["bench", "--skip", "bogus", "--out", str(tmp_path)])
    assert e.value.code == 2 and "unknown --skip section" in capsys.readouterr().err


def test_cuda_mode_skips_cleanly_on_cpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the skip path is not taken here")
    from edgeclip.cli import main

    main(
        [
            "bench",
            "--quick",
            "--device",
            "cuda",
            "--out",
            str(tmp_path),
            "--workdir",
            str(tmp_path / "w"),
            "--skip",
            "speed",
            "--skip",
            "train",
            "--skip",
            "accuracy",
            "--no-report",
        ]
    )
    out = capsys.readouterr().out
    assert "no CUDA GPU on this machine; GPU throughput section skipped" in out
    d = json.loads((tmp_path / "bench_quick.json").read_text())
    assert "no CUDA GPU" in d["skipped"]["gpu"] and "gpu" not in d["sections"]
    assert d["skipped"]["speed"].startswith("skipped on request")


def test_flops_count_attention():
    """nn.MultiheadAttention's inference fast path must not hide attention FLOPs."""
    from edgeclip.models.cost import flops

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 8)
            self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            t = self.proj(x.flatten(2).transpose(1, 2))
            return self.mha(t, t, t, need_weights=False)[0].mean(1)

    L, E = 16, 8  # 4x4 input -> 16 tokens
    expected = 2 * L * 3 * E + 2 * L * E * 3 * E + 2 * (2 * L * L * E) + 2 * L * E * E
    assert flops(Tiny(), 4) == expected


def test_lab_student_path_follows_the_lab_json(tmp_path):
    from edgeclip.lab.suite import lab_student_path

    lab, res = tmp_path / "benchmarks" / "artifacts" / "lab", tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    assert lab_student_path(lab) == lab / "student" / "student.pt"  # no lab JSON yet
    for distill, name in (
        ({"name": "student_e30"}, "student_e30"),
        ({"continue": {"epochs": 6}}, "student_cont"),
        ({"name": "s", "continue": {"epochs": 2}}, "s_cont"),
        ({}, "student"),
    ):
        (res / "lab_clip4retrofit.json").write_text(json.dumps({"config": {"distill": distill}}))
        assert lab_student_path(lab) == lab / name / "student.pt"
    (res / "lab_clip4retrofit.json").write_text("{not json")
    assert lab_student_path(lab) == lab / "student" / "student.pt"
    # a lab run by `edgeclip lab run`: the student its eval stage evaluated
    (lab / "eval").mkdir(parents=True)
    (lab / "eval" / "stage.json").write_text(json.dumps({"config": {"students": {"student": "x/s.pt"}}}))
    assert lab_student_path(lab) == Path("x/s.pt")


def test_report_target_rows():
    from edgeclip.lab.report import target_rows

    t = {
        "ratio": {"value": 0.95, "target": 0.97, "met": False},
        "diff_points": {"value": -1.2},
        "nested": {"x": {"value": 2.0, "target": 1.0, "met": True}},
        "main_student": "fp32",
    }
    assert target_rows(t) == [["ratio", "0.950", 0.97, "not met"], ["nested.x", "2.000", 1.0, "met"]]
    assert target_rows(None) == []


def test_lab_v3_report_section_study_and_retention_vs_cost(tmp_path):
    """The v3 lab's section: each choose stage's val scores with the winner marked, and one retention-vs-cost
    table joining the lab's test retention to the cost table (the CLIP towers' rows speed only); a lab still
    running shows its partial results and says which stages are to come."""
    from edgeclip.core.io import write_json
    from edgeclip.lab.report.document import Doc
    from edgeclip.lab.report.lab_v3 import retention_cost_rows, section_lab_v3, study_rows

    stages = {
        "teacher": {"chosen": "pairs", "scores": {"v2": 0.179, "pairs": 0.2}},
        "loss": {"chosen": "fd", "scores": {"cosmse": 0.18, "fd": 0.19}},
        "test_students": {
            "teacher_t2i_r5": 0.3,
            "shufflenet_t2i_r5": 0.27,
            "shufflenet_retention_t2i_r5": 0.9,
            "shufflenet_retention_i2t_r5": 0.85,
        },
    }
    rows = study_rows(stages)
    assert ["teacher", "pairs", "0.2000", "yes"] in rows and ["loss", "cosmse", "0.1800", ""] in rows
    cost = {
        "models": [
            {"name": "shufflenet_v2_x1_0", "params_m": 1.5, "gflops": 0.3, "ort_fp32": {"b1_median_ms": 4.4}},
            {
                "name": "clip:ViT-B-32",
                "weights": "random (speed only)",
                "params_m": 87.8,
                "gflops": 8.8,
                "ort_fp32": {"b1_median_ms": 70.4},
                "ort_int8": {"b1_median_ms": 59.0},
            },
        ]
    }
    table = retention_cost_rows({"stages": stages}, cost)
    assert table[0] == ["student ShuffleNetV2 x1.0", "0.900", "0.850", "1.50", "0.300", "4.4", "-"]
    assert table[-1][:3] == ["ViT-B-32 (random (speed only))", "-", "-"] and table[-1][-1] == "59.0"
    write_json(
        tmp_path / "flickr8k_lab_v3_partial.json", {"stages": stages, "pending_stages": ["s_fd", "ship"]}
    )
    write_json(tmp_path / "cost_table.json", cost)
    doc = Doc("t")
    section_lab_v3(doc, tmp_path)
    md = doc.markdown()
    assert "Still running: 2 stages to go (s_fd, ship" in md and "ViT-B-32" in md and "| loss | fd |" in md
    empty = Doc("t")
    section_lab_v3(empty, tmp_path / "nothing")  # no v3 results: no section
    assert "lab v3" not in empty.markdown()
