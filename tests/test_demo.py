"""`make demo` in both modes, on a tiny budget (the full demo runs the same code with more epochs)."""

from __future__ import annotations

import json

from edgeclip.lab.demo import run_demo


def _check(res, out):
    ev = res["eval"]
    for k in ("teacher_top1", "student_top1", "agreement", "n"):
        assert k in ev
    assert ev["n"] > 0 and 0 <= ev["student_top1"] <= 1
    assert res["teacher_stats"]["params"] > res["student_stats"]["params"] > 0
    assert res["student_stats"]["gflops"] > 0 and res["student_stats"]["latency_ms"] > 0
    assert json.loads((out / "demo_result.json").read_text())["mode"] == res["mode"]
    assert (out / "student" / "student.pt").is_file() and (out / "cache" / "meta.json").is_file()


def test_demo_synthetic(tmp_path, capsys):
    res = run_demo(tmp_path, mode="synthetic", fast=True)
    assert res["mode"] == "synthetic"
    _check(res, tmp_path)
    printed = capsys.readouterr().out
    assert "teacher vs student" in printed and "->" in printed  # labels of held-out images were shown


def test_demo_cifar10(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_SHARED_DATA", str(shared_data))
    res = run_demo(tmp_path, mode="cifar10", fast=True)
    assert res["mode"] == "cifar10" and res["eval"]["n"] == 5000
    _check(res, tmp_path)
