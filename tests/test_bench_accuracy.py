"""Accuracy / Pareto section and the GPU-throughput code path (run on CPU), with a real tiny teacher + student."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeclip.core.errors import EdgeClipError


@pytest.fixture(scope="module")
def tiny_student(tiny_teacher, shapes, tmp_path_factory):
    from edgeclip.train.distill import DistillConfig, distill

    out = tmp_path_factory.mktemp("student")
    cfg = DistillConfig(
        teacher=tiny_teacher,
        data=str(shapes["train"]),
        out=str(out),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 128},
        loss="cosine",
        train={"epochs": 2, "batch_size": 48, "lr": 3e-3, "accelerator": "cpu"},
    )
    distill(cfg, progress=False)
    return out / "student.pt"


def test_accuracy_int8_pareto_and_report(tiny_teacher, tiny_student, shapes, tmp_path):
    from edgeclip.lab.bench import BenchConfig, run_bench

    logs = []
    res = run_bench(
        BenchConfig(
            out=str(tmp_path / "res"),
            quick=True,
            teacher=tiny_teacher,
            students=[str(tiny_student)],
            data=str(shapes["test"]),
            train_data=str(shapes["train"]),
            workdir=str(tmp_path / "w"),
            models=["shufflenet_v2_x0_5"],
            skip=["train_cost"],
        ),
        log=logs.append,
    )
    acc = res["sections"]["accuracy"]
    n = acc["n"]
    assert n == 36  # 6 classes x 6 test images of the shapes fixture
    for k in ("teacher_top1", "student_top1", "student_int8_top1"):
        assert 0.0 <= acc[k] <= 1.0 and (acc[k] * n) == pytest.approx(
            round(acc[k] * n)
        )  # a real fraction of n
    assert acc["retention"] == pytest.approx(acc["student_top1"] / acc["teacher_top1"])
    assert acc["models"]["student_int8"]["onnx_int8_mb"] > 0
    assert len(acc["samples"]) >= 6 and all(s["true"] and len(s["labels"]) == 3 for s in acc["samples"])
    # the lab/user models were timed at their own size (32 px) next to the speed-suite models
    names = {m["name"]: m for m in res["sections"]["speed"]["models"]}
    assert (
        names[f"ckpt:{tiny_student}"]["img_size"] == 32 and names[f"teacher:{tiny_teacher}"]["img_size"] == 32
    )
    assert any(r["teacher"] == f"teacher:{tiny_teacher}" for r in res["sections"]["speed"]["ratios"])
    assert res["checkpoints_sha256"][str(tiny_student)]
    rep = Path(res["report"]["markdown"]).read_text()
    assert "pareto.png" in rep and "(ONNX int8)" in rep and "Sample labels" in rep
    assert (Path(res["report"]["html"]).parent / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # the training curves of the student come from its history.json
    assert "student.epochs.loss (2 epochs)" in rep and "teacher.epochs.loss (1 epochs)" in rep


def test_gpu_throughput_code_path_on_cpu(tiny_teacher, shapes, tmp_path):
    from edgeclip.lab.train_cost import GpuThroughputConfig, gpu_throughput

    cfg = GpuThroughputConfig(
        str(shapes["train"]),
        str(tmp_path / "g"),
        teacher_spec=tiny_teacher,
        student="shufflenet_v2_x0_5",
        img_size=32,
        n_images=64,
        batch_size=16,
        steps=2,
        workers=0,
        device="cpu",
    )
    r = gpu_throughput(cfg, log=lambda _: None)
    assert r["accelerator"] == "cpu" and r["precision"] == "32-true" and r["steps"] == 2
    assert r["data_loading_images_per_s"] > 0 and r["distill_images_per_s"] > 0
    assert r["distill"]["images"] == 32
    assert r["distill_vs_loading"] == pytest.approx(
        r["distill_images_per_s"] / r["data_loading_images_per_s"]
    )


def test_gpu_throughput_refuses_cuda_without_gpu(tmp_path, shapes):
    import torch

    from edgeclip.lab.train_cost import GpuThroughputConfig, gpu_throughput

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(EdgeClipError, match="CUDA is not available"):
        gpu_throughput(GpuThroughputConfig(str(shapes["train"]), str(tmp_path / "g"), device="cuda"))
