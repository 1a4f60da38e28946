"""#30's readers: multi-band GeoTIFFs read as named band sets (Sentinel-2), paired folders with a splits.json or
train/val/test folders (RoadScene, LLVIP-like layouts), and bad pairs skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.modality import (
    BAND_SETS,
    ModalitySpec,
    band_indices,
    read_modality,
    render_rgb,
    rendering_key,
)
from edgeclip.data.pairs import default_specs, open_pairs, preload_pairs

BANDS = {
    "rgb": {"bands": "rgb", "scale": 3000},
    "swir": {"bands": "swir", "scale": 5000},
}


def _tile(path: Path, seed: int, bands: int = 13, size: int = 16) -> np.ndarray:
    """A Sentinel-2-like tile: band b holds 100 * (b + 1) + noise (uint16, HxWxB as EuroSAT stores it)."""
    rng = np.random.default_rng(seed)
    a = (np.arange(bands) * 100 + 100)[None, None, :] + rng.integers(0, 50, (size, size, bands))
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, a.astype(np.uint16))
    return a.astype(np.uint16)


def _eurosat_like(root: Path) -> dict:
    tiles = {}
    for c in ("Forest", "River"):
        for i in range(3):
            tiles[f"{c}/{c}_{i}"] = _tile(root / c / f"{c}_{i}.tif", seed=hash((c, i)) % 1000)
    (root / "River" / "River_bad.tif").write_bytes(b"II*\x00 this is not a tiff")  # corrupt
    _tile(root / "Forest" / "Forest_rgbonly.tif", seed=9, bands=3)  # 3 bands: no SWIR in it
    whole = (root / "Forest" / "Forest_0.tif").read_bytes()
    (root / "River" / "River_cut.tif").write_bytes(whole[: len(whole) // 2])  # truncated
    return tiles


def test_band_sets_name_sentinel2_bands():
    assert band_indices("rgb") == [3, 2, 1] and band_indices("nir") == [7]
    assert band_indices("swir") == [10, 11, 12]  # B11, B12 and B8A (last in EuroSAT's files)
    assert band_indices(["B08", 3]) == [7, 3]
    assert set(BAND_SETS) >= {"rgb", "nir", "swir", "false_colour"}
    for bad, why in [
        ("thermal", "unknown band set"),
        (["B13"], "unknown sentinel2 band"),
        ([-1], "negative"),
    ]:
        with pytest.raises(EdgeClipError, match=why):
            band_indices(bad)
    with pytest.raises(EdgeClipError, match="derive 'bands' needs"):
        ModalitySpec("swir", derive="bands")
    with pytest.raises(EdgeClipError, match="modality x: unknown band set"):
        ModalitySpec("x", bands="ultraviolet")


def test_a_multiband_tile_reads_as_its_band_sets(tmp_path):
    a = _tile(tmp_path / "t.tif", seed=1)
    x = read_modality(tmp_path / "t.tif", ModalitySpec("swir", bands="swir", scale=5000))
    want = a[..., [10, 11, 12]].transpose(2, 0, 1) / 5000
    assert x.shape == (3, 16, 16) and np.allclose(x, want, atol=1e-6)
    rgb = render_rgb(tmp_path / "t.tif", ModalitySpec("rgb", bands="rgb", scale=3000))
    assert rgb.mode == "RGB" and rgb.size == (16, 16)
    assert np.allclose(np.asarray(rgb)[..., 0], np.round(a[..., 3] / 3000 * 255), atol=1)  # red is B04
    # another rendering of the same file is another cache entry
    assert rendering_key(ModalitySpec("a", bands="rgb", scale=3000)) != rendering_key(
        ModalitySpec("a", bands="rgb", scale=4000)
    )


def test_a_multispectral_folder_pairs_rgb_with_other_bands_and_skips_bad_tiles(tmp_path):
    root = tmp_path / "ms"
    tiles = _eurosat_like(root)
    ps = open_pairs(root, derive={"swir": "bands"})
    assert ps.classes == ["Forest", "River"] and len(ps) == 9
    d = preload_pairs(ps, default_specs(ps, BANDS), 16)
    assert len(d) == 6 and len(d.skipped) == 3  # corrupt, truncated, 3 bands: each skipped with its reason
    assert sum("corrupt or unreadable TIFF" in s for s in d.skipped) == 2
    assert any("3 bands, but modality rgb's band set 'rgb' needs band 4" in s for s in d.skipped)
    i = d.keys.index("Forest/Forest_0")
    a = tiles["Forest/Forest_0"]
    assert torch.allclose(
        d.x["swir"][i].float(),
        torch.from_numpy(a[..., [10, 11, 12]].transpose(2, 0, 1) / 5000).float(),
        atol=2e-3,
    )
    assert torch.allclose(
        d.x["rgb"][i].float(),
        torch.from_numpy(a[..., [3, 2, 1]].transpose(2, 0, 1) / 3000).float(),
        atol=2e-3,
    )


def _paired(root: Path, names: list[str], ir_names: list[str], size=(40, 30)):
    for n in names:
        (root / "rgb").mkdir(parents=True, exist_ok=True)
        Image.fromarray(
            np.random.default_rng(len(n)).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        ).save(root / "rgb" / n)
    for n in ir_names:
        (root / "ir").mkdir(parents=True, exist_ok=True)
        w, h = (size[0] * 2, size[1]) if n.startswith("big") else size
        Image.fromarray(np.random.default_rng(len(n)).integers(1, 255, (h, w), dtype=np.uint8)).save(
            root / "ir" / n
        )


def test_roadscene_layout_with_splits_json(tmp_path):
    root = tmp_path / "road"
    _paired(
        root, ["a.jpg", "b.jpg", "c.jpg", "big.jpg", "lonely.jpg"], ["a.jpg", "b.jpg", "c.jpg", "big.jpg"]
    )
    (root / "splits.json").write_text(
        json.dumps({"train": ["a.jpg", "b.jpg", "big.jpg", "lonely.jpg"], "test": ["c.jpg"]})
    )
    ps = open_pairs(root, split="train")
    assert sorted(r.key for r in ps.records) == ["a", "b", "big"] and any("unpaired" in s for s in ps.skipped)
    d = preload_pairs(ps, default_specs(ps), 24)
    assert d.keys == ["a", "b"] and any("big" in s and "80x30" in s for s in d.skipped)  # a size mismatch
    assert d.x["ir"].shape == (2, 3, 24, 24)  # 1-channel thermal, repeated to 3
    assert [r.key for r in open_pairs(root, split="test").records] == ["c"]
    with pytest.raises(EdgeClipError, match="no split 'val'"):
        open_pairs(root, split="val")


def test_split_folders_are_splits_not_classes(tmp_path):
    """LLVIP's layout: visible/train/x.jpg + infrared/train/x.jpg (and test/)."""
    root = tmp_path / "llvip"
    for split, names in (("train", ["1.jpg", "2.jpg"]), ("test", ["3.jpg"])):
        for m, ch in (("visible", 3), ("infrared", 1)):
            (root / m / split).mkdir(parents=True, exist_ok=True)
            for n in names:
                shape = (20, 20, 3) if ch == 3 else (20, 20)
                Image.fromarray(np.full(shape, 90, np.uint8)).save(root / m / split / n)
    ps = open_pairs(root, primary="visible", split="train")
    assert ps.classes is None and sorted(r.key for r in ps.records) == ["train/1", "train/2"]
    assert len(open_pairs(root, primary="visible", split="test")) == 1
    with pytest.raises(EdgeClipError, match="no splits.json and no train/val/test"):
        open_pairs(_flat_pairs(tmp_path), split="train")


def _flat_pairs(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    _paired(root, ["a.jpg"], ["a.jpg"])
    return root


def test_the_real_multimodal_sets_open(shared_data):
    """RoadScene (splits.json: 171 train / 50 test) and EuroSAT-MS (13 bands, RGB and SWIR band sets)."""
    road = shared_data / "roadscene"
    tr, te = open_pairs(road, split="train"), open_pairs(road, split="test")
    assert (len(tr), len(te)) == (171, 50) and tr.modalities == ["rgb", "ir"]
    assert not {r.key for r in tr.records} & {r.key for r in te.records}
    d = preload_pairs(te, default_specs(te), 32)
    assert len(d) == 50 and not d.skipped
    ms = open_pairs(shared_data / "eurosat-ms" / "test", derive={"swir": "bands"})
    assert len(ms.classes) == 10 and len(ms) == 54
    d = preload_pairs(ms, default_specs(ms, BANDS), 64)
    assert len(d) == 54 and not d.skipped and d.x["swir"].shape == (54, 3, 64, 64)
    assert 0.05 < float(d.x["rgb"].float().mean()) < 0.6  # reflectance / 3000: neither black nor saturated


def test_edgevl_runs_on_band_sets_of_one_tile(tmp_path, tiny_teacher):
    """Curate -> stage 1 -> eval on multi-band tiles: the teacher caches the rendered RGB band set (a cache key of
    its own), the student learns RGB and SWIR, and eval gives the teacher on RGB and on SWIR fed as if RGB (the
    CLIP user's baseline) beside the student on both."""
    from edgeclip.train.curate import CurateConfig, run_curate
    from edgeclip.train.edgevl import PairDistillConfig, distill_pairs
    from edgeclip.zeroshot.modalities import evaluate_pair_student

    root = tmp_path / "ms"
    _eurosat_like(root)
    common = {"teacher": tiny_teacher, "data": str(root), "derive": {"swir": "bands"}, "modality": BANDS}
    cur = run_curate(CurateConfig(out=str(tmp_path / "cur"), fraction=1.0, plot=False, **common))
    # 9 tiles: corrupt, truncated, and 3 bands where the RGB band set needs B04 are counted, not scored
    assert (cur["n_scored"], cur["skipped_unreadable"]) == (6, 3)
    cfg = PairDistillConfig(
        out=str(tmp_path / "s1"),
        manifest=str(tmp_path / "cur" / "manifest.json"),
        cache=str(tmp_path / "cur" / "cache"),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "head_hidden": 32},
        train={"epochs": 1, "batch_size": 4},
        **common,
    )
    hist = distill_pairs(cfg)
    assert hist["data_info"]["n_train"] == 6
    res = evaluate_pair_student(str(root), str(tmp_path / "s1" / "student.pt"), derive={"swir": "bands"})
    assert set(res["teacher"]) == {"rgb", "swir"} and set(res["fp32"]) == {"rgb", "swir"}
    assert res["n"] == 6 and res["skipped"] == 3
    # a SWIR bundle: reads 13-band tiles (GeoTIFF paths or uploaded bytes), refuses 3-band ones and photos
    from edgeclip.core.modality import ModalityError
    from edgeclip.export.bundle import BundleConfig, run_export
    from edgeclip.runtime.labeler import Labeler

    b = tmp_path / "swir_bundle"
    man = run_export(
        BundleConfig(
            student=str(tmp_path / "s1" / "student.pt"),
            out=str(b),
            labels="forest,river",
            calib=str(root),
            calib_images=8,
            modality="swir",
            int8_variants=["qdq_per_channel"],
        )
    )
    assert (
        man["input"]["modality"] == "swir"
        and json.loads((b / "preprocess.json").read_text())["modality"]["bands"] == "swir"
    )
    lab = Labeler(b)
    tile = root / "Forest" / "Forest_0.tif"
    e = lab.embed([tile, tile.read_bytes()])
    assert e.shape == (2, lab.embed_dim) and float(e[0] @ e[1]) > 0.9999
    with pytest.raises(ModalityError, match="3 bands, but modality swir's band set 'swir' needs band 13"):
        lab.embed([root / "Forest" / "Forest_rgbonly.tif"])
    # `edgeclip label` over the tile folder with the bundle: every good tile labelled, the bad ones skipped and
    # counted with their reasons (corrupt, truncated, 3 bands)
    from edgeclip.cli import app

    rows = tmp_path / "labels.jsonl"
    try:
        app(
            ["label", str(root), "--bundle", str(b), "--labels", "forest,river", "--out", str(rows)],
            standalone_mode=False,
        )
    except SystemExit as e:
        assert e.code in (0, None)
    got = [json.loads(x) for x in rows.read_text().splitlines()]
    assert len(got) == 6 and all(r["labels"][0] in ("forest", "river") for r in got)
    # `edgeclip serve`: a GeoTIFF upload is labelled; a 3-band one is a 415 with one line
    from fastapi.testclient import TestClient

    from edgeclip.serve.app import create_app

    with TestClient(create_app(b, threads=1), base_url="http://127.0.0.1") as client:
        r = client.post("/label", files={"file": ("t.tif", tile.read_bytes())})
        assert r.status_code == 200 and r.json()["labels"][0]["label"] in ("forest", "river")
        bad = (root / "Forest" / "Forest_rgbonly.tif").read_bytes()
        r = client.post("/label", files={"file": ("rgb.tif", bad)})
        assert r.status_code == 415 and "needs band 13" in r.text and "\n" not in r.json()["error"]


@pytest.fixture(scope="module")
def ir_pairs(tmp_path_factory, shapes, tiny_teacher):
    """A tiny RoadScene-like set (rgb/ + 1-channel ir/ + splits.json) and a stage-1 student of it."""
    from edgeclip.train.edgevl import PairDistillConfig, distill_pairs

    tmp = tmp_path_factory.mktemp("road")
    root = tmp / "road"
    names = []
    for f in sorted(Path(shapes["train"]).rglob("*.jpg"))[:16]:
        n = f"{f.parent.name}_{f.name}"
        names.append(n)
        img = Image.open(f).convert("RGB")
        (root / "rgb").mkdir(parents=True, exist_ok=True)
        (root / "ir").mkdir(parents=True, exist_ok=True)
        img.save(root / "rgb" / n)
        img.convert("L").save(root / "ir" / n)  # a 1-channel 8-bit frame, as RoadScene's thermal JPEGs
    (root / "splits.json").write_text(json.dumps({"train": names[:12], "test": names[12:]}))
    cfg = PairDistillConfig(
        teacher=tiny_teacher,
        data=str(root),
        split="train",
        out=str(tmp / "s1"),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "head_hidden": 32},
        train={"epochs": 1, "batch_size": 4},
    )
    assert distill_pairs(cfg)["data_info"]["n_train"] == 12
    return root, str(tmp / "s1" / "student.pt"), names


def test_agreement_with_the_teacher_needs_no_labels(ir_pairs):
    """RoadScene's measure on a tiny thermal-like set: every model's reading of the infrared frame against the
    teacher's reading of the paired RGB frame (agreement over a vocabulary, mean cosine), with the teacher and an
    RGB student fed the infrared frame as baselines; the split comes from splits.json."""
    from edgeclip.zeroshot.modalities import evaluate_agreement

    root, student, _ = ir_pairs
    vocab = ["a circle", "a square", "a star", "a triangle"]
    res = evaluate_agreement(str(root), student, vocab, rgb_students={"rgb_student": student}, split="test")
    assert res["n"] == 4 and res["skipped"] == 0 and sum(res["teacher_rgb_label_counts"].values()) == 4
    assert res["majority_agreement"] == max(res["teacher_rgb_label_counts"].values()) / 4
    for name in ("teacher", "rgb_student", "fp32"):
        r = res[name]["ir"]
        assert 0 <= r["agreement"] <= 1 and 0 <= r["balanced_agreement"] <= 1 and -1 <= r["cosine"] <= 1
        assert r["n"] == 4
    assert "rgb" not in res["teacher"]  # the reference itself is not scored against itself


@pytest.fixture(scope="module")
def ir_bundle(ir_pairs, tmp_path_factory):
    """The tiny infrared student exported with --modality ir (one int8 recipe), labels for road scenes."""
    from edgeclip.export.bundle import BundleConfig, run_export

    root, student, _ = ir_pairs
    out = tmp_path_factory.mktemp("irb") / "ir_bundle"
    cfg = BundleConfig(
        student=student,
        out=str(out),
        labels=["a person", "a car", "an empty road"],
        calib=str(root / "ir"),
        calib_images=12,
        modality="ir",
        int8_variants=["qdq_per_channel"],  # one int8 recipe: the choice among them is tested elsewhere
    )
    return out, run_export(cfg)


def test_an_infrared_bundle_reads_thermal_frames_and_refuses_rgb(ir_pairs, ir_bundle):
    """export --modality ir: the bundle records the modality, its spec and its 1-channel input; the torch-free
    runtime reads a thermal frame as training did (same embedding), takes a grey frame saved as RGB, and refuses a
    colour photo in one line instead of converting it."""
    from edgeclip.core.modality import ModalityError
    from edgeclip.models.pair import load_pair_student
    from edgeclip.runtime.labeler import Labeler

    root, student, names = ir_pairs
    out, man = ir_bundle
    assert (
        man["input"]["modality"] == "ir"
        and man["input"]["file_channels"] == 1
        and man["input"]["channels"] == 3
    )
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["modality"]["name"] == "ir" and pre["in_channels"] == 1
    lab = Labeler(out, precision="fp32")
    frame = root / "ir" / names[-1]
    got = lab.embed([frame])[0]
    model, _, _ = load_pair_student(student)
    d = preload_pairs(open_pairs(root, split="test"), model.specs, 32)
    i = d.keys.index(Path(names[-1]).stem)
    want = torch.nn.functional.normalize(model.embed_unit(d.x["ir"][i : i + 1].float(), "ir"), dim=-1)[0]
    assert float(np.dot(got, want.detach().numpy())) > 0.99  # the runtime reads the frame as training did
    grey_rgb = Image.open(frame).convert("RGB")  # a thermal JPEG saved with 3 equal channels
    assert float(np.dot(lab.embed([grey_rgb])[0], got)) > 0.999
    assert lab.label(frame, topk=1)[0]["label"] in ("a person", "a car", "an empty road")
    with pytest.raises(ModalityError, match="reads ir input with 1 channel; this one has 3"):
        lab.embed([root / "rgb" / names[-1]])


def test_watching_an_infrared_video_scored_against_the_teacher_on_rgb(
    ir_bundle, shared_data, tiny_teacher, tmp_path
):
    """#30: an infrared bundle watches a grey H.264 video made of RoadScene's 50 thermal test frames with two text
    rules ("a person", "a car"; "an empty road" as background); each frame's truth is the teacher's reading of
    the paired RGB frame, and the events are scored against it (precision, recall). The student here is the tiny
    test one, so the figures are computed, not judged: what is tested is that the infrared path runs end to end."""
    from edgeclip.core.images import load_image
    from edgeclip.lab.video import make_slideshow, precision_recall
    from edgeclip.runtime.labeler import Labeler
    from edgeclip.runtime.watch import load_rules, watch
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.scores import topk

    road = shared_data / "roadscene"
    te = open_pairs(road, split="test")
    labels = ["a person", "a car", "an empty road"]
    t = load_embedder(teacher=tiny_teacher)
    read = topk(
        t.embed([load_image(r.files["rgb"]) for r in te.records]), t.text(labels, ["a photo of {}."]), 1
    )
    segments = [(r.files["ir"], 0.3, labels[int(k[0])]) for r, k in zip(te.records, read)]
    truth = make_slideshow(segments, tmp_path / "ir.mp4", size=(256, 128), fps=10)
    bundle = ir_bundle[0]
    rules = {
        "sample": {"every": 1},
        "batch": 8,
        "background": ["an empty road"],
        "rules": [
            {"name": "person", "query": "a person", "threshold": 0.4, "min_duration": 0.2},
            {"name": "car", "query": "a car", "threshold": 0.4, "min_duration": 0.2},
        ],
    }
    s = watch(truth["path"], Labeler(bundle), load_rules(rules), tmp_path / "out", progress=False)
    assert s["decoded"] == truth["frames"] == 150 and s["stopped"] == "end of source"
    pr = precision_recall(tmp_path / "out" / "events.jsonl", truth, {"person": "a person", "car": "a car"})
    for rule in ("person", "car"):
        assert pr[rule]["segments"] == sum(seg[2] == f"a {rule}" for seg in segments)
        assert pr[rule]["precision"] is None or 0 <= pr[rule]["precision"] <= 1
