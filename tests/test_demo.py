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


def test_demo_photos_with_the_shipped_models(tmp_path, capsys):
    """`make demo`'s default: the shipped reference models on scikit-image's sample photos, offline."""
    from pathlib import Path

    import pytest

    from edgeclip.lab.demo_photos import run_photos_demo

    models = Path(__file__).resolve().parents[1] / "models"
    if not (models / "index.json").is_file():
        pytest.skip(f"no shipped models: {models}/index.json is missing")
    res = run_photos_demo(tmp_path, models, fast=True)
    assert res["mode"] == "photos" and set(res["queries"]) >= {"teacher", "student", "bundle_int8"}
    assert all(len(v) == 5 for v in res["queries"].values())
    s = res["speed"]
    assert s["teacher_224"]["input_size"] == s["student_224"]["input_size"] == 224
    assert s["student_224"]["gflops"] < s["teacher_224"]["gflops"] and res["speedup_224"] > 0
    b = res["exported_bundle"]
    assert (Path(b["path"]) / "model.int8.onnx").is_file() and set(b["top_photo"]) == set(
        res["queries"]["teacher"]
    )
    assert len(res["distill"]["epochs"]) == 3 and (tmp_path / "student" / "student.pt").is_file()
    printed = capsys.readouterr().out
    assert "free-text queries" in printed and "CLIP-sized towers" in printed
    # no noise: no progress bars, no seed lines, no unasked --resume note, no per-epoch JSON
    for noise in ("Loading weights", "Seed set", "--resume", '{"epoch"'):
        assert noise not in printed, noise
    assert set(res["clip_towers"]) == {"ViT-B-32", "MobileCLIP2-S0"}
    page = tmp_path / "index.html"
    assert printed.strip().endswith(f"the page: {page}")
    _check_page_in_chromium(page, n_queries=5, n_photos=len(res["captions"]))


def _check_page_in_chromium(page, n_queries: int, n_photos: int) -> None:
    """Open the demo page in headless Chromium: every image loads, and it shows the three models, the captions and
    the CLIP-sized towers."""
    import shutil
    from pathlib import Path

    import pytest

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip(f"Chromium is absent ({chromium}); install Debian's package: apt-get install -y chromium")
    pw_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip, dev extra) is not installed")
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            p = b.new_page()
            p.goto(page.as_uri())
            p.wait_for_load_state("load")
            images = p.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth])")
            assert len(images) == n_queries * 3 * 3 + n_photos, len(images)
            assert all(done and w > 0 for done, w in images), images
            text = p.inner_text("body")
            for needle in (
                "int8 bundle, no torch",
                "ViT-B-32",
                "MobileCLIP2-S0",
                "random weights",
                "caption",
            ):
                assert needle in text, needle
        finally:
            b.close()
