"""Hostile and careless input, round 2 (beside test_bad_input_corpus.py; the server's held connections are in
test_serve_api.py, the watcher's bad sources and rules in test_watch.py).

Memory bounded by construction: thin images (a 1 x 20000 PNG is 121 bytes) and a bundle whose preprocess.json asks
for a 40000-px input are refused before anything is resized, so `edgeclip label` stays small; peak RSS is measured
by the test, for the label command alone, in a fresh parent process (subprocess + resource). Field ranges and caps
at load time; full and read-only output folders and hostile tar members are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from edgeclip.core.io import sha256_file
from test_export_fixtures import SHAPE_LABELS, bundle_for_tests, wait_until_serving

LIMIT_MB = 600
THIN = [(1, 20000), (20000, 1), (2, 100000)]


@pytest.fixture(scope="module")
def tb(tmp_path_factory, tiny_teacher, shapes):
    return bundle_for_tests(tmp_path_factory, tiny_teacher, shapes)


def peak_rss_mb(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``edgeclip ARGS`` under a fresh Python parent; -> (the child's peak RSS in MB, its result)."""
    code = textwrap.dedent(f"""
        import json, resource, subprocess, sys
        r = subprocess.run([sys.executable, "-m", "edgeclip", *{args!r}], capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({{"peak_mb": peak, "rc": r.returncode, "out": r.stdout, "err": r.stderr}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    got = json.loads(r.stdout)
    done = subprocess.CompletedProcess(args, got["rc"], got["out"], got["err"])
    return got["peak_mb"], done


@pytest.mark.parametrize("w,h", THIN)
def test_thin_images_are_refused_in_one_line_with_bounded_memory(tb, tmp_path, w, h):
    img = tmp_path / f"thin_{w}x{h}.png"
    Image.new("L", (w, h), 128).save(img, optimize=True)
    assert img.stat().st_size < 1000
    peak, r = peak_rss_mb(["label", str(img), "--bundle", str(tb["bundle"]), "--labels", "circle,star"])
    assert "Traceback" not in r.stderr and "aspect ratio over 50:1" in r.stderr, r.stderr
    assert peak < LIMIT_MB, f"label on a {w} x {h} image peaked at {peak:.0f} MB"


def test_a_bundle_that_asks_for_a_huge_input_is_refused(tb, tmp_path):
    """preprocess.json says size 40000 and the manifest is re-hashed to match: the field's range refuses it."""
    b = tmp_path / "b"
    shutil.copytree(tb["bundle"], b)
    pp = json.loads((b / "preprocess.json").read_text())
    (b / "preprocess.json").write_text(json.dumps({**pp, "size": 40000}))
    man = json.loads((b / "manifest.json").read_text())
    man["files"]["preprocess.json"] = {
        "sha256": sha256_file(b / "preprocess.json"),
        "bytes": (b / "preprocess.json").stat().st_size,
    }
    (b / "manifest.json").write_text(json.dumps(man))
    peak, r = peak_rss_mb(
        ["label", str(tb["images"][0]), "--bundle", str(b), "--labels", ",".join(SHAPE_LABELS)]
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().startswith("error:") and "size 40000 is outside" in r.stderr, r.stderr
    assert peak < LIMIT_MB, f"peaked at {peak:.0f} MB"


def test_an_image_at_the_aspect_limit_still_labels(tb, tmp_path):
    """50:1 is the rule's edge: a wide panorama strip is labeled, not refused."""
    img = tmp_path / "strip.jpg"
    Image.new("RGB", (2000, 40), (200, 30, 30)).save(img)
    peak, r = peak_rss_mb(["label", str(img), "--bundle", str(tb["bundle"]), "--labels", "circle,star"])
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1, r.stderr
    assert peak < LIMIT_MB
    assert Path(img).is_file()


def _rehash(b: Path, name: str) -> None:
    man = json.loads((b / "manifest.json").read_text())
    man["files"][name] = {"sha256": sha256_file(b / name), "bytes": (b / name).stat().st_size}
    (b / "manifest.json").write_text(json.dumps(man))


def test_label_caps_hold_at_load_time_and_before_embedding(tb, tmp_path):
    """A bundle whose labels.json holds 10,001 labels (manifest re-hashed) is refused when loaded; a server edit of
    1,001 new texts is refused before any of them is embedded."""
    import httpx

    from edgeclip.core.errors import EdgeClipError
    from edgeclip.runtime import Labeler
    from edgeclip.serve.app import create_app
    from test_export_fixtures import running_server

    b = tmp_path / "b"
    shutil.copytree(tb["bundle"], b)
    lab = json.loads((b / "labels.json").read_text())
    row = lab["embeddings"][0]
    lab["labels"] = [f"label {i}" for i in range(10_001)]
    lab["embeddings"] = [row] * 10_001
    (b / "labels.json").write_text(json.dumps(lab))
    _rehash(b, "labels.json")
    with pytest.raises(EdgeClipError, match="over the cap of 10000"):
        Labeler(b)
    with running_server(create_app(tb["bundle"], threads=1, token="t")) as url:
        r = httpx.put(
            f"{url}/api/labels",
            json={"labels": [f"a new text {i}" for i in range(1001)]},
            headers={"X-Edgeclip-Token": "t"},
            timeout=30,
        )
        assert r.status_code == 413 and "at most 1000" in r.text  # refused before the text encoder is asked


@pytest.fixture()
def small_mounts(tmp_path):
    """{'full': a 64 KB tmpfs filled to the brim, 'ro': a read-only tmpfs}; skipped where mounting is not allowed."""
    import os

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root (disk-full and read-only cases)")
    mounts = {"full": tmp_path / "full", "ro": tmp_path / "ro"}
    done = []
    try:
        for name, opts in (("full", "size=64k"), ("ro", "ro,size=64k")):
            mounts[name].mkdir()
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mounts[name])], capture_output=True
            )
            if r.returncode:
                pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:200]}")
            done.append(mounts[name])
        with open(mounts["full"] / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:  # ENOSPC: the disk is full
                pass
        yield mounts
    finally:
        for m in done:
            subprocess.run(["umount", str(m)], capture_output=True)


def test_full_and_read_only_output_folders_are_one_line(tb, small_mounts):
    img = str(tb["images"][0])
    for name, said in (("full", "no space left on device"), ("ro", "read-only file system")):
        out = small_mounts[name] / "labels.jsonl"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeclip",
                "label",
                img,
                "--bundle",
                str(tb["bundle"]),
                "--labels",
                "circle,star",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: cannot write") and said in last, r.stderr


def test_tar_members_that_climb_out_are_one_line(tmp_path):
    import io
    import tarfile

    from edgeclip.core.errors import EdgeClipError
    from edgeclip.data.sources import ensure_extracted

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        data = b"\xff\xd8 not really a jpeg"
        info = tarfile.TarInfo("../../escaped.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(EdgeClipError, match="refused to unpack member") as e:
        ensure_extracted(evil, tmp_path / "into")
    assert "\n" not in str(e.value) and not (tmp_path.parent / "escaped.jpg").exists()
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 10)
    with pytest.raises(EdgeClipError, match="not a readable tar archive"):
        ensure_extracted(tmp_path / "junk.tar", tmp_path / "into2")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_thin_uploads_do_not_grow_the_server(tb, tmp_path):
    """Four concurrent uploads of each thin image (and the same as label examples) are refused one by one; the
    server's RSS grows by less than 300 MB and does not stay larger."""
    import socket
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to read the server's RSS")
    images = []
    for w, h in THIN:
        p = tmp_path / f"thin_{w}x{h}.png"
        Image.new("L", (w, h), 128).save(p, optimize=True)
        images.append(p)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "edgeclip", "serve", str(tb["bundle"]), "--port", str(port), "--token", "t"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, proc)
        ok = tb["images"][0]
        httpx.post(f"{url}/label", files={"file": (ok.name, ok.read_bytes())})  # warm: the model is loaded
        before = _rss_mb(proc.pid)

        def post(p):
            r = httpx.post(f"{url}/label", files={"file": (p.name, p.read_bytes(), "image/png")}, timeout=60)
            e = httpx.post(
                f"{url}/api/labels/examples",
                files=[("file", (p.name, p.read_bytes(), "image/png"))],
                data={"name": "thin"},
                headers={"X-Edgeclip-Token": "t"},
                timeout=60,
            )
            return r.status_code, r.text, e.status_code

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(post, [p for p in images for _ in range(4)]))
        peak = _rss_mb(proc.pid)
        assert all(code in (413, 415, 422, 400) and "aspect ratio" in text for code, text, _ in got), got[:2]
        assert all(ex in (413, 415, 422, 400) for *_, ex in got)
        assert peak - before < 300, f"the server grew from {before:.0f} to {peak:.0f} MB"
        time.sleep(1)
        assert _rss_mb(proc.pid) - before < 300
    finally:
        proc.terminate()
        proc.wait(timeout=30)
