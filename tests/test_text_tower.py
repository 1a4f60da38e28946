"""The teacher's text tower in a bundle (`edgeclip export --text-encoder`): token-for-token tokenizers, ONNX parity
with torch, new labels on the device without torch (Python API, CLI, server), for reference-lit (the real MiniLM),
open_clip and Hugging Face CLIP teachers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.export.text import PROBE, export_text_tower, token_parity
from edgeclip.runtime import load_bundle, read_manifest
from edgeclip.runtime.text import TextTower
from test_export_fixtures import SHAPE_LABELS, make_student, run_without_torch

NEW = ["a dog running on grass", "a red truck at night", "two people on a beach"]


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory, tiny_teacher, shapes):
    from edgeclip.export.bundle import export_bundle

    w = tmp_path_factory.mktemp("tt")
    student = make_student(tiny_teacher, shapes["train"], w / "student")
    out = w / "bundle"
    man = export_bundle(
        student, out, SHAPE_LABELS, calib=str(shapes["train"]), calib_images=48, text_encoder=True
    )
    return out, man


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def test_bundled_minilm_matches_the_teacher(text_bundle, tiny_teacher):
    from edgeclip.models.teachers import load_teacher

    out, man = text_bundle
    tx = man["text"]
    assert {"text.onnx", "text.int8.onnx", "tokenizer.json", "text.json"} <= set(read_manifest(out)["files"])
    assert tx["kind"] == "minilm-mean" and tx["token_parity"]["mismatches"] == 0
    assert tx["parity"]["fp32"]["min_cosine"] >= 0.999
    assert (
        0.0 <= tx["parity"]["int8"]["zero_shot_agreement"] <= 1.0
        and tx["parity"]["int8"]["min_cosine"] > 0.95
    )
    assert tx["default"] in ("fp32", "int8") and tx["bytes"]["int8"] < tx["bytes"]["fp32"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Text tower" in card and "MB added to the bundle" in card
    assert tx["default_why"] in card and tx["default_why"].startswith(tx["default"])
    # the runtime's embeddings of texts it never saw, against the teacher's own (torch) text tower
    t = load_teacher(tiny_teacher)
    ref = t.encode_text(NEW + PROBE).numpy()
    assert _cos(TextTower(out, "fp32").embed(NEW + PROBE), ref).min() >= 0.999
    assert _cos(TextTower(out, "int8").embed(NEW + PROBE), ref).min() >= 0.95


MIXES = [
    [],
    ["x"],
    ["a very long description of a busy street with cars, buses and people " * 6, "cat"],
    ["a red car", "two children playing football in a park at sunset", "stars", "grass", "x", "a b c"],
]


def test_a_texts_embedding_does_not_depend_on_the_batch(text_bundle, tiny_teacher):
    """A query embedded alone and in mixed batches (shorter and longer texts, before and after it, so padded
    differently) gives the same embedding within 1e-6 cosine: fp32 and int8 towers in the runtime, and torch."""
    from edgeclip.models.teachers import load_teacher

    out, _ = text_bundle
    q = "a dog running on the beach"
    t = load_teacher(tiny_teacher)
    encoders = {
        "runtime fp32": TextTower(out, "fp32").embed,
        "runtime int8": TextTower(out, "int8").embed,
        "torch": lambda texts: t.encode_text(list(texts)).numpy(),
    }
    for name, enc in encoders.items():
        alone = enc([q])
        for mix in MIXES:
            for texts in ([q, *mix], [*mix, q]):
                got = enc(texts)[texts.index(q)][None]
                assert _cos(alone, got)[0] >= 1 - 1e-6, (name, len(texts))


def test_new_labels_on_the_device(text_bundle, shapes):
    out, _ = text_bundle
    lab = load_bundle(out)
    lab.set_labels([*NEW, SHAPE_LABELS[0]])  # new texts and a shipped label together
    res = lab.label(sorted(shapes["test"].rglob("*.jpg"))[0], topk=4)
    assert {r["label"] for r in res} == {*NEW, SHAPE_LABELS[0]}
    assert abs(sum(r["score"] for r in res) - 1.0) < 1e-4
    # a shipped label keeps the teacher's embedding from export time
    i = lab.bundle_labels.names.index(SHAPE_LABELS[0])
    assert np.allclose(lab.known.subset([SHAPE_LABELS[0]]).embeddings[0], lab.bundle_labels.embeddings[i])
    lab.add_labels(["a green bicycle"])
    assert "a green bicycle" in lab.label_names
    assert lab.describe()["text_tower"]["kind"] == "minilm-mean"


def test_without_the_flag_bundles_stay_small_and_say_why(tmp_path, tiny_teacher, shapes):
    from edgeclip.export.bundle import export_bundle

    student = make_student(tiny_teacher, shapes["train"], tmp_path / "student")
    out = tmp_path / "plain"
    man = export_bundle(student, out, SHAPE_LABELS, quant="none")
    assert "text" not in man and not (out / "text.onnx").exists()
    lab = load_bundle(out)
    with pytest.raises(EdgeClipError, match="have no embedding in this bundle"):
        lab.set_labels(["a dog running on grass"])
    with pytest.raises(EdgeClipError, match="--text-encoder"):
        lab.embed_labels(["a dog"])


def test_cli_label_and_serve_any_text_without_torch(text_bundle, shapes):
    """`edgeclip label --bundle DIR --labels "any text"` and the server's PUT /api/labels with texts the bundle never
    saw, in a subprocess where torch cannot be imported."""
    out, _ = text_bundle
    img = sorted(shapes["test"].rglob("*.jpg"))[0]
    code = f"""
from edgeclip.cli import main
try:
    main(['label', {str(img)!r}, '--bundle', {str(out)!r}, '--labels', 'a dog running on grass,a yellow star'])
except SystemExit as e:
    assert not e.code, e.code
from fastapi.testclient import TestClient
from edgeclip.serve.app import create_app
app = create_app({str(out)!r}, token='t')
c = TestClient(app, base_url='http://127.0.0.1')
r = c.put('/api/labels', json={{'labels': ['a cat on a sofa', 'a yellow star']}}, headers={{'X-Edgeclip-Token': 't'}})
assert r.status_code == 200, r.text
assert c.get('/api/info').json()['can_add_free_text_labels'] is True
# per-request free text: labels this request alone uses, embedded now, not kept; ?topk= in the query works too
img_bytes = open({str(img)!r}, 'rb').read()
r = c.post('/label?topk=1', files={{'file': ('x.jpg', img_bytes)}},
           data={{'labels': 'a red bus, circle, a yellow star'}})
assert r.status_code == 200, r.text
assert len(r.json()['labels']) == 1 and r.json()['labels'][0]['label'] in ('a red bus', 'circle', 'a yellow star')
assert 'a red bus' not in c.get('/api/labels').json()['known']
assert not [m for m in sys.modules if m.split('.')[0] == 'torch']
print('OK')
"""
    r = run_without_torch(code)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    labels = set(json.loads(lines[0])["labels"])
    assert labels == {"a dog running on grass", "a yellow star"} and r.stdout.strip().endswith("OK")


def _check_tower(teacher, tmp_path):
    ex = teacher.text_export()
    texts = [*NEW, *PROBE, "", "!!! ??? ...", "Hello, World"]
    assert token_parity(ex, texts)["mismatches"] == 0
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cfg = export_text_tower(teacher, tmp_path, ["a photo of a cat.", "a photo of a dog."])
    assert not [
        w for w in seen if issubclass(w.category, torch.jit.TracerWarning)
    ]  # export prints no tracer notes
    assert cfg["parity"]["fp32"]["min_cosine"] >= 0.999
    got = TextTower(tmp_path, "fp32").embed(texts)
    assert _cos(got, teacher.encode_text(texts).numpy()).min() >= 0.999
    return cfg


def test_open_clip_text_tower(tmp_path):
    """open_clip's BPE tokenizer rebuilt for `tokenizers` from its own vocabulary, and its text transformer."""
    import open_clip

    from edgeclip.models.teachers import load_teacher
    from test_teachers import TINY_OPEN_CLIP

    cfg = tmp_path / "edgeclip-test-tiny-vit.json"
    cfg.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("edgeclip-test-tiny-vit").state_dict(), ckpt)
    t = load_teacher(f"edgeclip-test-tiny-vit:{ckpt}")
    assert _check_tower(t, tmp_path / "tower")["kind"] == "open_clip"


def test_hf_clip_text_tower(tmp_path):
    from edgeclip.models.teachers import load_teacher
    from test_teachers import _save_tiny_hf

    folder = tmp_path / "hf"
    folder.mkdir()
    _save_tiny_hf(folder)
    t = load_teacher(f"hf:{folder}")
    assert _check_tower(t, tmp_path / "tower")["kind"] == "hf-clip"


def test_a_tokenizer_that_differs_is_refused(text_bundle, tiny_teacher, tmp_path):
    from edgeclip.models.teachers import load_teacher

    t = load_teacher(tiny_teacher)
    real = t.text_export

    def broken():
        ex = real()
        ex.tokenizer.no_truncation()
        ex.tokenizer.enable_truncation(4)  # cuts texts the teacher does not cut
        return ex

    t.text_export = broken
    with pytest.raises(EdgeClipError, match="tokenizer differs from the teacher's"):
        export_text_tower(t, tmp_path, ["a photo of a cat."])


def test_a_shipped_bundle_moves_its_text_default_only_on_evidence(text_bundle, tmp_path):
    """slim_bundle: the int8 text tower becomes the default only with a measured ratio >= min_ratio; the fp32
    text model then leaves, and the runtime (which reads text.json) runs int8 by default."""
    import shutil

    from edgeclip.core.errors import EdgeClipError
    from edgeclip.export.bundle import slim_bundle
    from edgeclip.runtime.labeler import Labeler

    b = tmp_path / "b"
    shutil.copytree(text_bundle[0], b)
    img = {f"image:{p}" for p in read_manifest(b)["models"]}
    with pytest.raises(EdgeClipError, match="stays"):
        slim_bundle(
            b, [*img, "text:int8"], text_default={"precision": "int8", "value": 0.5, "reference": 1.0}
        )
    man = slim_bundle(
        b,
        [*img, "text:int8"],
        text_default={"precision": "int8", "value": 0.995, "reference": 1.0, "measured": "t"},
    )
    assert man["text"]["default"] == "int8" and man["text"]["default_moved"]["ratio"] == pytest.approx(0.995)
    # the card, the manifest and text.json state the one gate the default passed, with its figure
    why = man["text"]["default_why"]
    assert "0.995" in why and "passes" in why and why in (b / "MODEL_CARD.md").read_text()
    assert json.loads((b / "text.json").read_text())["default_why"] == why
    assert not (b / "text.onnx").exists() and "text.onnx" not in read_manifest(b)["files"]
    lab = Labeler(b)  # verified against the re-hashed manifest
    assert lab.text_tower.precision == "int8" and lab.text_tower.embed(["a red circle"]).shape[0] == 1


def test_the_minilm_tower_exports_without_tracer_warnings(tiny_teacher, tmp_path):
    """transformers' masking code raised a dozen TracerWarnings per export; the export keeps them out."""
    from edgeclip.models.teachers import load_teacher

    _check_tower(load_teacher(tiny_teacher), tmp_path)
