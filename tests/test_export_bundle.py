"""`edgeclip export`: a student -> a bundle folder with ONNX fp32 + int8, labels, preprocessing, manifest, card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import sha256_file
from edgeclip.core.prompts import DEFAULT_TEMPLATES
from edgeclip.export.bundle import export_bundle, is_transformer
from edgeclip.export.choose import candidates
from edgeclip.runtime import Labeler, read_manifest
from test_export_fixtures import SHAPE_LABELS, make_student


@pytest.fixture(scope="module")
def student(tmp_path_factory, tiny_teacher, shapes):
    return make_student(tiny_teacher, shapes["train"], tmp_path_factory.mktemp("st") / "student")


def test_cli_export_writes_a_complete_bundle(student, shapes, tiny_teacher, tmp_path, capsys):
    from edgeclip.cli import main

    out = tmp_path / "bundle"
    main(
        [
            "export",
            str(student),
            "--out",
            str(out),
            "--labels",
            ",".join(SHAPE_LABELS),
            "--template",
            "a photo of a {}.",
            "--template",
            "a drawing of a {}.",
            "--calib",
            str(shapes["test"]),
            "--calib-images",
            "36",
            "--eval",
            str(shapes["test"]),
        ]
    )
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert "fp32 parity: max abs diff" in cap.err and "int8 parity: top-1 agreement" in cap.err
    names = {p.name for p in out.iterdir()}
    assert names == {
        "model.onnx",
        "model.int8.onnx",
        "labels.json",
        "preprocess.json",
        "manifest.json",
        "MODEL_CARD.md",
    }
    man = read_manifest(out)  # verifies every hash
    assert set(man["files"]) == names - {"manifest.json"}
    for n, meta in man["files"].items():
        assert meta["sha256"] == sha256_file(out / n) and meta["bytes"] == (out / n).stat().st_size
    assert man["models"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"} == summary["models"]
    q = man["quantization"]
    assert q["method"] == "static" and q["per_channel"] == ("per_channel" in q["choice"]["int8_file"])
    # every int8 variant was timed beside fp32 and checked; the default is int8 only where it is faster and agrees
    ch = q["choice"]
    assert list(ch["variants"]) == candidates("cnn")  # every recipe for a CNN, each with the levers it sets
    assert all(v["lever"]["format"] in ("QDQ", "QOperator") for v in ch["variants"].values())
    assert all(
        v["batch1_ms"] > 0 and v["batch32_ms"] > 0 and 0 <= v["top1_agreement"] <= 1
        for v in ch["variants"].values()
    )
    assert man["default_precision"] == ch["precision"] and "batch1_ms" in ch["fp32"]
    if ch["precision"] == "int8":
        v = ch["variants"][ch["variant"]]
        assert v["batch1_ms"] < ch["fp32"]["batch1_ms"] and v["top1_agreement"] >= 0.99
    assert Labeler(out).precision == man["default_precision"]
    assert man["quantization"]["calibration_images"] == 27  # 36 images, a quarter held out
    assert man["parity"]["fp32"]["max_abs_diff"] < 1e-4 and man["parity"]["fp32"]["n"] == 9
    p8 = man["parity"]["int8"]
    assert 0.0 <= p8["top1_agreement"] <= 1.0 and p8["n"] == 9 and p8["mean_cosine"] > 0.9
    assert (
        man["versions"]["onnxruntime"] and man["versions"]["numpy"] and man["teacher"]["spec"] == tiny_teacher
    )
    assert man["files"]["model.int8.onnx"]["bytes"] < man["files"]["model.onnx"]["bytes"]
    assert all(v > 0 for v in man["latency_ms"].values())
    acc = man["accuracy"]
    assert acc["n"] == 36 and set(acc) >= {"torch_fp32", "bundle_fp32", "bundle_int8"}
    assert acc["bundle_fp32"] == pytest.approx(
        acc["torch_fp32"], abs=1 / 36 + 1e-9
    )  # at most one image flips
    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == SHAPE_LABELS and labels["templates"] == [
        "a photo of a {}.",
        "a drawing of a {}.",
    ]
    emb = np.asarray(labels["embeddings"])
    assert emb.shape == (6, man["embed_dim"]) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    pp = json.loads((out / "preprocess.json").read_text())
    assert pp["size"] == 32 and pp["resize"] == "shortest" and pp["input_name"] == "image"
    card = (out / "MODEL_CARD.md").read_text()
    for needle in (
        "shufflenet_v2_x0_5",
        man["teacher"]["id"],
        "top-1 agreement",
        "model.int8.onnx",
        "ms",
        "top-1",
    ):
        assert needle in card


def test_text_embeddings_are_the_teachers(student, shapes, tiny_teacher, tmp_path):
    from edgeclip.models.teachers import load_teacher
    from edgeclip.zeroshot.text import text_embeddings

    out = export_bundle(student, tmp_path / "b", ["circle", "star"], calib=str(shapes["test"]), quant="none")
    assert out["models"] == {"fp32": "model.onnx"} and "int8" not in out["parity"]
    lab = Labeler(tmp_path / "b")
    ref = text_embeddings(load_teacher(tiny_teacher), ["circle", "star"], list(DEFAULT_TEMPLATES)).numpy()
    assert np.abs(lab.labels.embeddings - ref).max() < 1e-5


def test_dynamic_int8_and_overwrite_rules(student, shapes, tmp_path):
    out = tmp_path / "b"
    man = export_bundle(
        student, out, SHAPE_LABELS, calib=str(shapes["test"]), quant="dynamic", calib_images=12
    )
    assert man["quantization"]["method"] == "dynamic" and "int8" in man["models"]
    assert Labeler(out, precision="int8").label_batch(sorted(shapes["test"].glob("*/*.jpg"))[:2], topk=2)
    with pytest.raises(EdgeClipError, match="--overwrite"):
        export_bundle(student, out, SHAPE_LABELS, calib=str(shapes["test"]), quant="none")
    man2 = export_bundle(student, out, ["ring"], calib=str(shapes["test"]), quant="none", overwrite=True)
    assert read_manifest(out)["labels"] == ["ring"] == man2["labels"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    other = tmp_path / "not_a_bundle"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(EdgeClipError, match="not an edgeclip bundle"):
        export_bundle(student, other, SHAPE_LABELS, quant="none", overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_bad_export_requests(student, shapes, tmp_path):
    with pytest.raises(EdgeClipError, match="calibration images"):
        export_bundle(student, tmp_path / "a", SHAPE_LABELS, quant="static")
    with pytest.raises(EdgeClipError, match="unknown quantization"):
        export_bundle(student, tmp_path / "a", SHAPE_LABELS, quant="fp8")
    with pytest.raises(EdgeClipError, match="placeholder"):
        export_bundle(student, tmp_path / "a", SHAPE_LABELS, templates=["no slot"], quant="none")
    with pytest.raises(EdgeClipError, match="not found"):
        export_bundle(tmp_path / "missing.pt", tmp_path / "a", SHAPE_LABELS, quant="none")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.jpg").write_bytes(b"junk")
    with pytest.raises(EdgeClipError, match="no readable calibration images"):
        export_bundle(student, tmp_path / "a", SHAPE_LABELS, calib=str(empty))
    assert not (tmp_path / "a").exists()


def test_transformer_student_gets_dynamic_int8(tiny_teacher, shapes, tmp_path):
    """A ViT student (timm, untrained weights, 32 px) exports with a fixed input size; its int8 candidates are
    dynamic and static recipes, timed and checked like a CNN's; asked for dynamic, it gets dynamic int8."""
    from edgeclip.data.transforms import Preprocess
    from edgeclip.models import create_student, save_student
    from edgeclip.models.teachers import load_teacher

    t = load_teacher(tiny_teacher)
    vit = create_student("timm:vit_tiny_patch16_224", t.embed_dim, img_size=32, head_hidden=0)
    assert is_transformer(vit)
    assert not is_transformer(create_student("shufflenet_v2_x0_5", 8, small_input=True, img_size=32))
    save_student(vit, tmp_path / "vit.pt", Preprocess(size=32), t.describe())
    assert {"dynamic_per_tensor", "dynamic_per_channel", "qdq_per_channel"} <= set(candidates("transformer"))
    assert not any(n.startswith("dynamic") for n in candidates("cnn"))
    man = export_bundle(
        tmp_path / "vit.pt",
        tmp_path / "b",
        SHAPE_LABELS,
        calib=str(shapes["test"]),
        calib_images=16,
        quant="dynamic",
    )
    q = man["quantization"]
    assert set(q["choice"]["variants"]) == {"dynamic_per_tensor", "dynamic_per_channel"}
    assert q["method"] == "dynamic" and man["input"]["dynamic_hw"] is False
    assert man["parity"]["fp32"]["max_abs_diff"] < 1e-4 and man["parity"]["int8"]["mean_cosine"] > 0.9
    rows = Labeler(tmp_path / "b", precision="int8").label_batch(
        sorted(shapes["test"].glob("*/*.jpg"))[:3], topk=2
    )
    assert [len(r) for r in rows] == [2, 2, 2]


@pytest.fixture(scope="module")
def tiny_cnn_student(tmp_path_factory, tiny_teacher, shapes):
    """A student on timm's 0.5M-parameter test ResNet: XNNPACK lowers it in a third of ShuffleNetV2's time."""
    student = {"arch": "timm:test_resnet", "img_size": 32, "head_hidden": 64}
    return make_student(tiny_teacher, shapes["train"], tmp_path_factory.mktemp("tiny_cnn"), student)


def test_executorch_programs_beside_the_onnx_files(tiny_cnn_student, shapes, tmp_path):
    """--format executorch: fp32 and PT2E-int8 XNNPACK programs, each run by ExecuTorch's runtime and checked
    against the torch student on the hold-out images, hashed in the manifest like every file."""
    student = tiny_cnn_student
    from edgeclip.export.executorch import PTE_FP32, PTE_INT8, Program, executorch_missing

    if executorch_missing():
        pytest.skip(executorch_missing())
    import torch

    from edgeclip.models.student import load_student

    out = tmp_path / "b"
    man = export_bundle(
        student,
        out,
        SHAPE_LABELS,
        calib=str(shapes["test"]),
        calib_images=24,
        formats="onnx,executorch",
        int8_variants=["qdq_per_channel"],
    )
    et = man["executorch"]
    assert et["files"] == {"fp32": PTE_FP32, "int8": PTE_INT8} and et["delegate"] == "XNNPACK"
    assert {PTE_FP32, PTE_INT8} <= set(read_manifest(out)["files"])  # hashed and verified with the rest
    assert et["parity"]["fp32"]["min_cosine"] > 0.999 and et["parity"]["fp32"]["n"] == 6
    assert et["parity"]["int8"]["mean_cosine"] > 0.9 and 0 <= et["parity"]["int8"]["top1_agreement"] <= 1
    assert et["latency_ms"]["fp32"] > 0 and et["latency_ms"]["int8"] > 0
    # the program file alone reproduces the student (what a phone app loads)
    st, pp, _ = load_student(student)
    x = torch.randn(2, 3, pp.size, pp.size)
    with torch.no_grad():
        ref = st.eval()(x).numpy()
    got = Program(out / PTE_FP32).run(x.numpy())
    assert np.abs(got - ref).max() < 1e-3
    assert "## ExecuTorch programs" in (out / "MODEL_CARD.md").read_text()


def test_executorch_format_errors(student, shapes, tmp_path, monkeypatch):
    with pytest.raises(EdgeClipError, match="Did you mean: executorch"):
        export_bundle(student, tmp_path / "a", SHAPE_LABELS, quant="none", formats=["executorh"])
    import edgeclip.export.executorch as et

    monkeypatch.setattr(et, "executorch_missing", lambda: "ExecuTorch is not usable here (ImportError: x)")
    with pytest.raises(EdgeClipError, match=r"pip install 'edgeclip\[executorch\]'"):
        export_bundle(student, tmp_path / "a", SHAPE_LABELS, quant="none", formats=["executorch"])
    assert not (tmp_path / "a").exists()


def test_slim_bundle_keeps_what_runs_by_default(student, shapes, tmp_path):
    """Shipping a bundle small: the precisions not kept leave the folder and the manifest, the rest still
    verifies and runs; the precision a tower runs by default cannot be dropped."""
    import shutil

    from edgeclip.export.bundle import slim_bundle

    out = tmp_path / "b"
    man = export_bundle(
        student, out, SHAPE_LABELS, calib=str(shapes["test"]), quant="dynamic", calib_images=12
    )
    default = man["default_precision"]
    other = next(p for p in ("fp32", "int8") if p != default)
    shutil.copytree(out, tmp_path / "c")
    with pytest.raises(EdgeClipError, match="by default"):
        slim_bundle(tmp_path / "c", keep=[f"image:{other}"])
    with pytest.raises(EdgeClipError, match="no text tower"):
        slim_bundle(
            tmp_path / "c", keep=[default], text_default={"precision": "int8", "value": 1, "reference": 1}
        )
    slim = slim_bundle(out, keep=[f"image:{default}"])
    assert slim["models"] == {default: man["models"][default]} and slim["slimmed"]["removed"] == [
        man["models"][other]
    ]
    assert (
        not (out / man["models"][other]).exists() and man["models"][other] not in read_manifest(out)["files"]
    )
    assert Labeler(out).label_batch(sorted(shapes["test"].glob("*/*.jpg"))[:2], topk=2)  # verified, runs
    with pytest.raises(EdgeClipError, match=f"no {other} model"):
        Labeler(out, precision=other)


@pytest.mark.parametrize("int8", ["faster", "slower"])
def test_the_default_precision_follows_the_measurement_not_the_machine(student, shapes, tmp_path, int8):
    """With the timing controlled: int8 is the default exactly when a variant is faster and within the gate; when
    every variant is slower, fp32 is the default and the bundle still keeps an int8 file for --precision int8."""
    from test_export_fixtures import int8_speed

    with int8_speed(int8):
        man = export_bundle(
            student,
            tmp_path / "b",
            SHAPE_LABELS,
            calib=str(shapes["test"]),
            int8_variants=["qdq_per_channel"],
        )
    ch = man["quantization"]["choice"]
    faithful = ch["variants"]["qdq_per_channel"]["top1_agreement"] >= ch["gate"]["top1_agreement"]
    want = "int8" if int8 == "faster" and faithful else "fp32"
    assert man["default_precision"] == ch["precision"] == want
    assert Labeler(tmp_path / "b").precision == want and "int8" in man["models"]
    if want == "fp32":
        assert "not faster" in ch["why"] or "below the gate" in ch["why"]
