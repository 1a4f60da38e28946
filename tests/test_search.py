"""Free-text image search (`edgeclip search`, the lab's `search` task) and the fp16 copies the lab ships."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.zeroshot.evaluate import _mentions, search_images
from test_cli import run_cli


@pytest.fixture(scope="module")
def captioned(shapes, tmp_path_factory):
    """12 drawn shapes as a caption set: 'NAME, a drawing of a CLASS' + 'NAME, a CLASS shape'."""
    root = tmp_path_factory.mktemp("captioned")
    imgs = sorted(Path(shapes["test"]).rglob("*.jpg"))[:12]
    (root / "pics").mkdir()
    lines = []
    for p in imgs:
        name = f"{p.parent.name}_{p.name}"
        (root / "pics" / name).write_bytes(p.read_bytes())
        lines += [f"{name}, a drawing of a {p.parent.name}", f"{name}, a {p.parent.name} shape"]
    (root / "caps.txt").write_text("\n".join(lines) + "\n")
    return root, [p.parent.name for p in imgs]


def test_caption_words_match_plurals_and_alternatives():
    caps = ["Two dogs run on the beach .", "A brown dog ."]
    assert _mentions(caps, ["dog", "beach"]) and _mentions(caps, ["cat|dog"])
    assert not _mentions(caps, ["dog", "snow"]) and not _mentions(caps, ["do"])


def test_search_ranks_by_cosine_and_checks_hits_against_captions(tiny_teacher, captioned):
    """The hits are the photos nearest to the query text by the model's own embeddings (worked out here from
    the embedder), and precision@k counts the hits whose captions mention the `must` words."""
    from edgeclip.data.captions import load_captions
    from edgeclip.zeroshot.embedder import load_embedder

    root, classes = captioned
    emb = load_embedder(teacher=tiny_teacher)
    cls = classes[0]
    res = search_images(
        emb,
        {},
        str(root / "caps.txt"),
        [{"text": f"a drawing of a {cls}", "must": [cls]}, "a shape"],
        str(root / "pics"),
        k=3,
    )
    m = res["models"]["teacher"]
    assert m["n_images"] == 12 and res["k"] == 3 and [r["query"] for r in m["results"]][1] == "a shape"
    # by hand: cosine of each photo to the query text
    items = load_captions(str(root / "caps.txt"), str(root / "pics")).items
    img = emb.embed([it.record().load() for it in items])
    q = emb.encode_texts([f"a drawing of a {cls}"])[0]
    q = q / np.linalg.norm(q)
    order = np.argsort(-(img @ q))[:3]
    hits = m["results"][0]["hits"]
    assert [h["image"] for h in hits] == [items[j].name for j in order]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    want = np.mean([cls in items[j].name.split("_")[0] for j in order])
    assert m["results"][0]["precision_at_k"] == pytest.approx(want)
    assert m["mean_precision_at_k"] == pytest.approx(want)  # the plain-text query has no `must`
    assert all(h["caption"].endswith(items[j].name.split("_")[0]) for h, j in zip(hits, order))


def test_search_compares_students_with_the_teacher(tiny_teacher, captioned):
    from edgeclip.zeroshot.embedder import load_embedder

    root, _ = captioned
    t = load_embedder(teacher=tiny_teacher)
    res = search_images(t, {"same": t}, str(root / "caps.txt"), ["a circle"], str(root / "pics"), k=4)
    assert res["models"]["same"]["mean_teacher_overlap"] == 1.0


def test_search_command_on_a_folder_and_its_bad_inputs(tiny_teacher, captioned, tmp_path, capsys):
    root, _ = captioned
    (root / "pics" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, out, err = run_cli(
        [
            "search",
            "a red circle",
            "a square",
            "--images",
            root / "pics",
            "--teacher",
            tiny_teacher,
            "-k",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert len(out.splitlines()) == 1 and "ImageRecord" not in out  # the hits, not the image source
    m = json.loads(out)
    assert m["model"].startswith("teacher:") and m["k"] == 2
    assert m["n_images"] == 12 and m["unreadable"] == 1 and [len(r["hits"]) for r in m["results"]] == [2, 2]
    code, out, err = run_cli(["search", "x", "--teacher", tiny_teacher], capsys)
    assert code == 2 and "no photos" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(
        ["search", "x", "--images", root / "pics", "--teacher", tiny_teacher, "-k", "0"], capsys
    )
    assert code == 2 and "k must be >= 1" in err
    (root / "pics" / "broken.jpg").unlink()


def test_a_half_precision_teacher_keeps_the_id_its_students_name(tiny_teacher, tmp_path, capsys):
    """`edgeclip checkpoint convert --half`: half the bytes, the same teacher id, the same embeddings."""
    from edgeclip.models.teachers import load_teacher

    src = Path(tiny_teacher.split(":", 1)[1])
    code, out, err = run_cli(["checkpoint", "convert", src, "--out", tmp_path / "t16.pt", "--half"], capsys)
    assert code == 0, err
    a, b = load_teacher(tiny_teacher), load_teacher(f"reference-lit:{tmp_path / 't16.pt'}")
    assert a.id == b.id and (tmp_path / "t16.pt").stat().st_size < 0.6 * src.stat().st_size
    x = torch.from_numpy(np.asarray(Image.new("RGB", (32, 32), (200, 30, 30)), np.float32) / 255)
    x = x.permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(a.encode_image(x), b.encode_image(x))
    assert float(cos.min()) > 0.999


def test_ship_copies_checks_and_indexes_the_models(tiny_teacher, shapes, tmp_path):
    """The lab's `ship` task: fp16 copies half the size, checked against the originals, loadable as a pair by
    the specs in models/index.json; a later ship (another role) keeps the roles shipped before."""
    from edgeclip.lab.ship import ship_models, shipped
    from edgeclip.zeroshot.embedder import load_embedder
    from test_export_fixtures import make_student

    sdir = tmp_path / "student"
    make_student(tiny_teacher, shapes["train"], sdir)
    into = tmp_path / "models"
    idx = ship_models(
        into, str(shapes["test"]), tiny_teacher, student=str(sdir / "student.pt"), check_images=8
    )
    assert (
        set(idx) >= {"teacher", "student", "models", "checks"} and idx["checks"]["student_min_cosine"] > 0.999
    )
    assert idx["teacher"].startswith("reference-lit:") and shipped(into)["student"] == idx["student"]
    e = load_embedder(teacher=idx["teacher"], student=idx["student"])  # the shipped pair loads together
    assert e.teacher.id == load_embedder(teacher=tiny_teacher).teacher.id
    s = idx["models"]["student"]
    assert s["bytes"] < 0.6 * (sdir / "student.pt").stat().st_size
    assert Path(s["card"]).read_text().count(next(iter(s["files"].values()))["sha256"]) == 1
    again = ship_models(into, str(shapes["test"]), tiny_teacher, check_images=4)
    assert again["student"] == idx["student"] and "student_min_cosine" in again["checks"]
    # a later experiment trained on the shipped teacher ships again: the teacher is kept as shipped (its file,
    # entry and checks), no check photos needed
    t_file = Path(idx["teacher"].split(":", 1)[1])
    before = t_file.read_bytes()
    kept = ship_models(into, None, idx["teacher"], names={"teacher": t_file.name})
    assert t_file.read_bytes() == before and kept["teacher"] == idx["teacher"]
    assert kept["checks"]["teacher_min_cosine"] == again["checks"]["teacher_min_cosine"]  # the last ship's
    assert kept["student"] == idx["student"]
    with pytest.raises(EdgeClipError, match="photos"):
        ship_models(into, None, tiny_teacher)  # a new teacher copy must be checked
    # the next lab ships its student under a new name, on the teacher as shipped: the index points at the new
    # file and keeps the old entry under `previous`, whose file stays for the experiments built on it
    v3 = ship_models(
        into,
        str(shapes["test"]),
        idx["teacher"],
        student=str(sdir / "student.pt"),
        check_images=4,
        names={"student": "v3-student.safetensors"},
    )
    assert v3["teacher"] == idx["teacher"] and v3["student"].endswith("v3-student.safetensors")
    assert v3["previous"]["student"]["spec"] == idx["student"] and Path(idx["student"]).is_file()
    assert "teacher" not in v3["previous"]


def test_the_shipped_model_cards_describe_their_own_model():
    """Each shipped card describes its own model (the student's card once described the teacher's tower), and
    lists the files as they are now."""
    from edgeclip.core.io import sha256_file

    root = Path(__file__).resolve().parents[1]
    idx = json.loads((root / "models" / "index.json").read_text())
    words = {
        "teacher": "ResNet-18",
        "bundle": "edge bundle",
        "captioner": "captioner",
    }
    arch = idx["models"]["student"].get("arch", "")
    words["student"] = {"mobilenet_v3_large": "MobileNetV3", "efficientnet_b0": "EfficientNet-B0"}.get(
        arch, "ShuffleNetV2"
    )
    for role, m in idx["models"].items():
        card = (root / m["card"]).read_text()
        assert words[role] in card, (role, card[:300])
        if role != "teacher":
            assert "ResNet-18, 128 px" not in card, role
        for name in m["files"]:
            assert sha256_file(root / "models" / name) in card, (role, name)
