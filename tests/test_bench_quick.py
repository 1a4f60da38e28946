"""`edgeclip bench --quick` end to end (the mode `make test` exercises): JSON + report on this machine."""

from __future__ import annotations

import json


def test_bench_quick_end_to_end(tmp_path, capsys):
    from edgeclip.cli import main

    out, work = tmp_path / "results", tmp_path / "work"
    out.mkdir()
    (out / "lab_edgevl.json").write_text(json.dumps({"depth": {"student_top1": 0.42, "int8_top1": 0.41}}))
    main(["bench", "--quick", "--out", str(out), "--workdir", str(work)])
    printed = capsys.readouterr().out
    d = json.loads((out / "bench_quick.json").read_text())
    # every JSON records machine, versions, threads and date
    assert d["mode"] == "quick" and d["threads"] >= 1 and d["date"]
    for k in ("cpu_count", "torch", "onnxruntime", "open_clip", "timm"):
        assert k in d["machine"]
    # speed: a real CLIP teacher tower and students on three backends, ratios within the same run
    sp = d["sections"]["speed"]
    models = {m["name"]: m for m in sp["models"]}
    vit = models["clip:ViT-B-32"]
    assert vit["role"] == "teacher" and vit["img_size"] == 224 and 80e6 < vit["params"] < 100e6
    for name in ("clip:ViT-B-32", "shufflenet_v2_x0_5", "mobilenet_v3_small"):
        for be in ("torch", "ort_fp32", "ort_int8"):
            assert models[name][be]["b1_median_ms"] > 0, (name, be, models[name][be])
    assert {r["student"] for r in sp["ratios"]} == {"shufflenet_v2_x0_5", "mobilenet_v3_small"}
    assert all(r["params_reduction"] > 20 and r["gflops_reduction"] > 20 for r in sp["ratios"])
    # training cost: same images both ways; the cache skips a ViT-B-32 forward per image
    tc = d["sections"]["train_cost"]["runs"]["clip_vit_b32_teacher"]
    assert tc["cached"]["images"] == tc["online"]["images"] == 32
    # speed is a benchmark's business, not a unit test's (32 images on a loaded CI core are noise):
    # here only that both runs were measured
    assert tc["speedup_cached_vs_online"] > 0 and tc["cache_build_seconds"] > 0
    # fidelity picks up the lab file written beside it; energy says how it was obtained
    fid = d["sections"]["fidelity"]["areas"]
    assert fid["edgevl"]["status"] == "measured" and fid["caption"]["status"] == "not yet measured"
    assert fid["edgevl"]["files"][0]["metrics"]["depth.student_top1"] == 0.42
    assert all(r["method"].startswith(("estimate", "measured")) for r in d["sections"]["energy"]["rows"])
    assert "gpu" in d["skipped"] and "accuracy" in d["skipped"]
    # the data path in the same run: decode + augment alone, and the full step it feeds (224 px, the training loader)
    dp = d["sections"]["data_path"]
    assert (
        dp["img_size"] == 224 and dp["cpu"]["decode_images_per_s"] > 0 and dp["cpu"]["step_images_per_s"] > 0
    )
    assert dp["cpu"]["workers"] >= 0 and dp["cpu"]["pin_memory"] is False
    # the report: HTML + Markdown + plots
    rep = out / "report_quick"
    md = (rep / "report.md").read_text()
    html = (rep / "index.html").read_text()
    for text in (
        "Speed and size at 224 px",
        "Training cost",
        "Published numbers",
        "EdgeVL",
        "depth.student_top1",
        "not yet measured",
        "Energy per image",
    ):
        assert text in md, text
    assert "<table>" in html and "speed.png" in html
    for png in ("speed.png", "curves.png"):
        assert (rep / png).read_bytes()[:4] == b"\x89PNG"
    assert "results:" in printed and "report:" in printed
