"""The device install: `pip install .` without extras is the torch-free runtime. In a fresh virtual environment,
torch cannot be imported, and label, search, watch, serve and caption run on the shipped bundle (and on a captioner
exported here); a command that needs the training extra says so in one line. The venv's size is printed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "models" / "index.json"
TARGET_MB = 600


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A fresh venv with `pip install <checkout>` (no extras): {'bin', 'bundle', 'photos', 'env', 'mb'}."""
    if not INDEX.is_file():
        pytest.skip(f"no shipped models ({INDEX})")
    idx = json.loads(INDEX.read_text())
    w = tmp_path_factory.mktemp("device")
    venv = w / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    src = w / "src"  # a copy of the package sources alone: pip then never sees the dev venv or the models
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        str(src),
    ]
    r = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    import skimage

    photos = w / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "rocket.jpg", "coffee.png"):
        shutil.copy(Path(skimage.__file__).parent / "data" / name, photos / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HF_HUB_OFFLINE"] = "1"
    mb = _du_mb(venv)
    print(f"\nbase install (no extras): {mb:.0f} MB in {venv}")
    return {
        "bin": venv / "bin",
        "bundle": ROOT / idx["bundle"],
        "photos": photos,
        "env": env,
        "mb": mb,
        "w": w,
    }


def _run(base, *args, timeout=120):
    return subprocess.run(
        [str(base["bin"] / "edgeclip"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=base["env"],
        cwd=base["w"],
    )


def test_no_torch_and_a_small_venv(base):
    r = subprocess.run([str(base["bin"] / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    assert base["mb"] < TARGET_MB, f"the base install is {base['mb']:.0f} MB (target < {TARGET_MB} MB)"


def test_label_search_and_watch_on_the_shipped_bundle(base, tmp_path):
    r = _run(base, "label", base["photos"], "--bundle", base["bundle"], "--labels", "cat,rocket,coffee")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 3 and all(x["labels"][0] in ("cat", "rocket", "coffee") for x in rows)
    r = _run(
        base, "search", "a cat", "a rocket", "--images", base["photos"], "--bundle", base["bundle"], "--json"
    )
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"]) == 2
    rules = tmp_path / "rules.yaml"
    rules.write_text('background: ["a photo"]\nrules:\n  - {name: cat, query: "a cat", threshold: 0.5}\n')
    out = tmp_path / "watch"
    r = _run(base, "watch", base["photos"], "--bundle", base["bundle"], "--rules", rules, "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["sampled"] == 3


def test_serve_on_the_shipped_bundle(base):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(base["bin"] / "edgeclip"),
        "serve",
        str(base["bundle"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, env=base["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        import httpx

        from test_export_fixtures import wait_until_serving

        wait_until_serving(f"http://127.0.0.1:{port}", proc)
        img = base["photos"] / "chelsea.png"
        r = httpx.post(
            f"http://127.0.0.1:{port}/label",
            files={"file": (img.name, img.read_bytes(), "image/png")},
            data={"labels": "a cat, a rocket", "topk": "1"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["labels"]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_caption_with_an_exported_captioner(base, tmp_path):
    idx = json.loads(INDEX.read_text())
    if "captioner" not in idx:
        pytest.skip("no shipped captioner")
    from edgeclip.cli import main

    # the export needs torch: the dev install makes it
    main(["caption", "export", "--model", str(ROOT / idx["captioner"]), "--out", str(tmp_path / "cap")])
    r = _run(base, "caption", "run", base["photos"], "--onnx", tmp_path / "cap", "--beam", "3")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 3 and all(x["caption"].strip() for x in rows)


def test_commands_that_need_the_training_extra_say_so(base, tmp_path):
    student = ROOT / json.loads(INDEX.read_text())["student"]
    for args in (
        ["label", base["photos"], "--student", student, "--labels", "cat"],
        ["distill", "distill_cifar10_shufflenet", "--data", base["photos"], "--out", tmp_path / "d"],
        ["teacher", "info", "ViT-B-32:openai"],
    ):
        r = _run(base, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0 and "pip install 'edgeclip[train]'" in r.stderr, r.stderr
