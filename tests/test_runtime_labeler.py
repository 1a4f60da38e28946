"""The torch-free bundle runtime: works without torch, agrees with the torch student, rejects bad bundles."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.io import sha256_file
from edgeclip.runtime import BundleError, Labeler, load_bundle
from test_export_fixtures import SHAPE_LABELS, bundle_for_tests, run_without_torch


@pytest.fixture(scope="module")
def tb(tmp_path_factory, tiny_teacher, shapes):
    return bundle_for_tests(tmp_path_factory, tiny_teacher, shapes)


def _copy(tb, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(tb["bundle"], dst)
    return dst


def test_runtime_imports_and_labels_without_torch(tb):
    """In a subprocess where importing torch (or torchvision) fails, the runtime still loads and labels."""
    code = textwrap.dedent(f"""
        import edgeclip.runtime as rt
        lab = rt.load_bundle({str(tb["bundle"])!r}, precision='int8', threads=1)
        one = lab.label({str(tb["images"][0])!r}, topk=3)
        many = lab.label_batch({[str(p) for p in tb["images"][:4]]!r}, topk=2)
        lab.set_labels(['circle', 'star'])
        two = lab.label({str(tb["images"][0])!r})
        bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]
        assert not bad, bad
        print(len(one), len(many), [len(r) for r in many], sorted(r['label'] for r in two))
    """)
    r = run_without_torch(code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "3 4 [2, 2, 2, 2] ['circle', 'star']"


def test_fp32_bundle_matches_torch_student(tb):
    import torch
    import torch.nn.functional as F

    from edgeclip.data import load_image
    from edgeclip.models import load_student

    st, pp, _ = load_student(tb["student"])
    imgs = [load_image(p) for p in tb["images"][:12]]
    with torch.no_grad():
        ref = F.normalize(st(torch.stack([pp.torch_transform()(i) for i in imgs])), dim=-1).numpy()
    lab = Labeler(tb["bundle"], precision="fp32", threads=1)
    got = lab.embed(imgs)
    assert got.shape == ref.shape
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * ref).sum(1).min() > 0.9999
    # same ranking of labels as the torch student with the bundle's text embeddings
    assert ((ref @ lab.labels.embeddings.T).argmax(1) == (got @ lab.labels.embeddings.T).argmax(1)).all()


def test_int8_batch_single_threads_and_labels(tb):
    lab = Labeler(tb["bundle"], threads=1)
    assert lab.precision == "int8" and lab.model_file == "model.int8.onnx"
    rows = lab.label_batch(tb["images"][:5], topk=3)
    assert len(rows) == 5 and all(len(r) == 3 for r in rows)
    for r in rows:
        assert r[0]["score"] >= r[1]["score"] >= r[2]["score"]
        assert all(x["label"] in SHAPE_LABELS for x in r)
    # one image alone gives the same answer as in the batch; bytes and a path give the same answer
    single = lab.label(tb["images"][2], topk=3)
    assert [x["label"] for x in single] == [x["label"] for x in rows[2]]
    assert lab.label(tb["images"][2].read_bytes(), topk=3)[0]["label"] == single[0]["label"]
    p = lab.label(tb["images"][2], topk=len(SHAPE_LABELS))
    assert abs(sum(x["score"] for x in p) - 1.0) < 1e-5
    two = Labeler(tb["bundle"], threads=2, verify=False)
    assert np.allclose(two.embed(tb["images"][:3]), lab.embed(tb["images"][:3]), atol=1e-5)


def test_add_and_replace_labels_from_embeddings(tb):
    lab = Labeler(tb["bundle"], precision="fp32")
    emb = lab.embed([tb["images"][0]])[0]
    # a label whose embedding is exactly the image's own embedding must win with cosine 1
    lab.add_labels(["this very picture"], emb[None])
    top = lab.label(tb["images"][0], topk=1)[0]
    assert top["label"] == "this very picture" and top["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert len(lab.label_names) == len(SHAPE_LABELS) + 1
    lab.set_labels(["star", "ring"])
    assert {x["label"] for x in lab.label(tb["images"][0], topk=5)} == {"star", "ring"}
    lab.set_labels(["alpha", "beta"], np.eye(2, lab.embed_dim, dtype=np.float32))
    assert lab.label_names == ["alpha", "beta"] and "circle" in lab.known.names
    with pytest.raises(EdgeClipError, match="no embedding"):
        lab.set_labels(["zebra"])
    with pytest.raises(EdgeClipError, match=r"\(L, \d+\)"):
        lab.add_labels(["x"], np.ones((1, 7), np.float32))
    with pytest.raises(EdgeClipError, match="empty"):
        lab.set_labels([" ", ""])


def test_missing_and_altered_files(tb, tmp_path):
    b = _copy(tb, tmp_path)
    (b / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Labeler(b)
    b2 = tmp_path / "b2"
    shutil.copytree(tb["bundle"], b2)
    raw = bytearray((b2 / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one flipped byte
    (b2 / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(b2)
    with pytest.raises(BundleError, match="not found"):
        Labeler(tmp_path / "nope")
    (b2 / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Labeler(b2)


def test_labels_json_of_wrong_dimension(tb, tmp_path):
    b = _copy(tb, tmp_path)
    d = json.loads((b / "labels.json").read_text())
    d["embeddings"] = [row[:-5] for row in d["embeddings"]]
    d["embed_dim"] = len(d["embeddings"][0])
    (b / "labels.json").write_text(json.dumps(d))
    man = json.loads((b / "manifest.json").read_text())  # re-sign it so that only the size mismatch is left
    man["files"]["labels.json"] = {
        "sha256": sha256_file(b / "labels.json"),
        "bytes": (b / "labels.json").stat().st_size,
    }
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"\d+-d but the model outputs \d+-d"):
        Labeler(b)


def test_undecodable_image_and_bad_options(tb, tmp_path):
    lab = Labeler(tb["bundle"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        lab.label(bad)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(tb["images"][0].read_bytes()[:200])
    with pytest.raises(ImageLoadError):
        lab.label(trunc)
    with pytest.raises(EdgeClipError, match="topk"):
        lab.label(tb["images"][0], topk=0)
    with pytest.raises(EdgeClipError, match="precision"):
        Labeler(tb["bundle"], precision="fp16")
    with pytest.raises(EdgeClipError, match="threads"):
        Labeler(tb["bundle"], threads=0)


def test_cli_label_with_bundle(tb, tmp_path, capsys):
    from edgeclip.cli import main

    out = tmp_path / "labels.jsonl"
    bad = tmp_path / "imgs"
    bad.mkdir()
    for p in tb["images"][:3]:
        shutil.copy(p, bad / p.name)
    (bad / "broken.jpg").write_bytes(b"nope")
    main(
        [
            "label",
            str(bad),
            "--bundle",
            str(tb["bundle"]),
            "--labels",
            "circle,square,star",
            "--topk",
            "2",
            "--out",
            str(out),
        ]
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3
    assert all(len(r["labels"]) == 2 and set(r["labels"]) <= {"circle", "square", "star"} for r in rows)
    err = capsys.readouterr().err
    assert "skipped 1" in err and "bundle:" in err
    # the CLI row agrees with the runtime called directly
    lab = Labeler(tb["bundle"])
    lab.set_labels(["circle", "square", "star"])
    direct = {p.name: lab.label(p, topk=2)[0]["label"] for p in tb["images"][:3]}
    assert {Path(r["image"]).name: r["labels"][0] for r in rows} == direct
    with pytest.raises(SystemExit) as e:
        main(["label", str(bad), "--bundle", str(tb["bundle"]), "--labels", "zebra"])
    assert e.value.code == 2
    assert "no embedding" in capsys.readouterr().err


def test_cli_label_bundle_and_serve_run_without_torch(tb, tmp_path):
    """`edgeclip label --bundle` and `edgeclip serve` (its app) in a subprocess where torch cannot be imported."""
    code = textwrap.dedent(f"""
        from edgeclip.cli import main
        main(['label', {str(tb["images"][0])!r}, '--bundle', {str(tb["bundle"])!r}, '--labels', 'circle,star',
              '--topk', '1'])
        from edgeclip.cli.bundle import app  # the serve command's module
        from edgeclip.serve.app import create_app
        create_app({str(tb["bundle"])!r}, threads=1)
        assert not [m for m in sys.modules if m.split('.')[0] == 'torch']
        print('ok')
    """)
    r = run_without_torch(code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip().splitlines()
    assert out[-1] == "ok" and json.loads(out[0])["labels"][0] in ("circle", "star")


def test_execution_providers_are_asked_for_not_assumed(tb, monkeypatch):
    """$EDGECLIP_ORT_PROVIDERS picks ONNX Runtime's providers (a Jetson's CUDA / TensorRT); one the build lacks is
    one clear error, not a silent fall back to the CPU."""
    from edgeclip.runtime.session import providers

    monkeypatch.delenv("EDGECLIP_ORT_PROVIDERS", raising=False)
    assert providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv("EDGECLIP_ORT_PROVIDERS", "CPUExecutionProvider")
    assert Labeler(tb["bundle"], threads=1).label(tb["images"][0], topk=1)
    monkeypatch.setenv("EDGECLIP_ORT_PROVIDERS", "NoSuchExecutionProvider,CPUExecutionProvider")
    with pytest.raises(EdgeClipError, match="NoSuchExecutionProvider"):
        Labeler(tb["bundle"], threads=1)
