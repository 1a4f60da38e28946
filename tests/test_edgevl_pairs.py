"""EdgeVL paired-modality data: real RGB-D pairs, file formats, adapters, and bad input (skipped and counted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.data.pairs import (
    ModalitySpec,
    PairError,
    apply_adapter,
    default_specs,
    open_pairs,
    preload_pairs,
)


def _rgb(path: Path, w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _depth(path: Path, w=40, h=30, value=None, seed=0):
    rng = np.random.default_rng(seed)
    a = (
        rng.integers(500, 4000, (h, w)).astype(np.uint16)
        if value is None
        else np.full((h, w), value, np.uint16)
    )
    Image.fromarray(a).save(path)  # 16-bit PNG (mode I;16)
    return a


def test_real_rgbd_samples_load(shared_data):
    root = shared_data / "rgbd-samples"
    ps = open_pairs(root)  # color/ + depth/ matched by stem; other_formats/ is reported, not used
    assert ps.primary == "color" and ps.modalities == ["color", "depth"] and len(ps) == 5
    assert any("other_formats" in s for s in ps.notes) and not ps.skipped
    raw = np.asarray(Image.open(ps.records[0].files["depth"]))
    assert raw.dtype == np.uint16 and raw.max() > 1000  # millimetres, not rescaled to 8 bit
    specs = default_specs(ps, {"depth": {"adapter": "colormap"}})
    d = preload_pairs(ps, specs, 64)
    assert len(d) == 5 and not d.skipped
    assert d.x["color"].shape == (5, 3, 64, 64) and d.x["depth"].shape == (5, 3, 64, 64)
    assert 0 <= float(d.x["depth"].min()) and float(d.x["depth"].max()) <= 1
    # NYU .ppm/.pgm, SUN and TUM 16-bit PNG in one flat folder of <stem>_<modality> files
    flat = open_pairs(root / "other_formats")
    assert sorted(r.key for r in flat.records) == ["NYU", "SUN", "TUM"]
    # the three datasets store depth in different units: per-image min-max over valid pixels (the default)
    d2 = preload_pairs(flat, default_specs(flat), 48)
    assert len(d2) == 3 and not d2.skipped
    assert float(d2.x["depth"].min()) == 0.0 and float(d2.x["depth"].max()) == 1.0
    # Redwood depth is in millimetres: scale 10000 = a 10 m range; its scenes are 1-2.7 m away
    d3 = preload_pairs(ps, default_specs(ps, {"depth": {"scale": 10000}}), 64)
    valid = d3.x["depth"][d3.x["depth"] > 0].float()
    assert 0.09 < float(valid.min()) and float(valid.max()) < 0.28


def test_bad_pairs_are_skipped_and_counted(tmp_path):
    root = tmp_path / "pairs"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(3):
        _rgb(root / "rgb" / f"{i}.jpg", seed=i)
    _depth(root / "depth" / "0.png")
    _depth(root / "depth" / "1.png", w=20, h=15)  # another size than its RGB
    _depth(root / "depth" / "2.png", value=0)  # all-zero map
    _rgb(root / "rgb" / "3.jpg")  # a stem in one modality only
    _depth(root / "depth" / "4.png")  # and the other way round
    ps = open_pairs(root)
    assert len(ps) == 3 and len(ps.skipped) == 2
    assert any(s.startswith("3: unpaired") and "missing in depth" in s for s in ps.skipped)
    assert any(s.startswith("4: unpaired") and "missing in rgb" in s for s in ps.skipped)
    d = preload_pairs(ps, default_specs(ps), 32)
    assert d.keys == ["0"]
    assert len(d.skipped) == 4  # 2 unpaired + size mismatch + all-zero: nothing dropped silently
    assert any("depth map is 20x15 but its rgb image is 40x30" in s for s in d.skipped)
    assert any("all-zero depth" in s for s in d.skipped)
    with pytest.raises(PairError, match="unpaired"):
        preload_pairs(ps, default_specs(ps), 32, strict=True)
    # allow_resize accepts the smaller map instead
    d3 = preload_pairs(ps, default_specs(ps, {"depth": {"allow_resize": True}}), 32)
    assert sorted(d3.keys) == ["0", "1"]


def test_formats_ir_multiband_and_conv_adapter(tmp_path):
    import tifffile

    root = tmp_path / "ms"
    for m in ("rgb", "ir", "swir"):
        (root / m / "field").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        _rgb(root / "rgb" / "field" / f"{i}.png", seed=i)
        Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)).save(
            root / "ir" / "field" / f"{i}.png"
        )
        bands = rng.integers(0, 4000, (30, 40, 5)).astype(np.uint16)
        if i == 0:  # band-interleaved
            tifffile.imwrite(
                root / "swir" / "field" / f"{i}.tif", bands, photometric="minisblack", planarconfig="contig"
            )
        else:  # planar (band, H, W), as most multispectral GeoTIFFs
            tifffile.imwrite(
                root / "swir" / "field" / f"{i}.tif", bands.transpose(2, 0, 1), photometric="minisblack"
            )
    ps = open_pairs(root)
    assert ps.primary == "rgb" and ps.classes == ["field"] and len(ps) == 2
    specs = default_specs(ps, {"swir": {"adapter": "conv"}})
    d = preload_pairs(ps, specs, 16)
    assert d.x["ir"].shape == (2, 3, 16, 16)  # repeat: 1 -> 3 identical channels
    assert torch.equal(d.x["ir"][:, 0], d.x["ir"][:, 2])
    assert d.x["swir"].shape == (2, 5, 16, 16)  # conv: bands kept for the learned 1x1 conv
    with pytest.raises(PairError, match="use adapter 'conv'"):
        preload_pairs(ps, default_specs(ps), 16, strict=True)
    from edgeclip.models.pair import build_pair_student, modality_student

    model = build_pair_student(
        {"arch": "shufflenet_v2_x0_5", "img_size": 16, "small_input": True, "head_hidden": 0},
        8,
        specs,
        "rgb",
        {"rgb": 3, "ir": 3, "swir": 5},
    )
    assert set(model.adapters) == {"swir"}
    from edgeclip.data.pairs import fill_stats

    fill_stats(specs, d, "rgb", (0.5,) * 3, (0.25,) * 3)
    assert len(specs["swir"].mean) == 5
    model.eval()
    e = model.embed_unit(d.x["swir"], "swir")
    st = modality_student(model, "swir")
    assert st.config["in_chans"] == 5
    from edgeclip.data.pairs import normalize_modality

    assert torch.allclose(st.eval()(normalize_modality(d.x["swir"], specs["swir"])), e, atol=1e-5)


def test_luminance_and_colormap():
    from edgeclip.data.pairs import luminance

    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    ours = luminance(rgb.transpose(2, 0, 1).astype(np.float32) / 255)[0] * 255
    pil = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)  # PIL uses the same BT.601 weights
    assert np.abs(ours - pil).max() <= 1.0
    x = torch.linspace(0, 1, 16).view(1, 1, 4, 4)
    cm = apply_adapter(x, ModalitySpec("depth", adapter="colormap", colormap="viridis"))
    assert cm.shape == (1, 3, 4, 4)
    import matplotlib

    assert torch.allclose(
        cm[0, :, 0, 0], torch.tensor(matplotlib.colormaps["viridis"](0.0)[:3], dtype=torch.float32)
    )
    with pytest.raises(EdgeClipError, match="colour map"):
        ModalitySpec("depth", adapter="colormap", colormap="no-such-map")
    with pytest.raises(EdgeClipError, match="adapter"):
        ModalitySpec("depth", adapter="magic")


def test_derived_monochrome_from_imagefolder(shapes):
    ps = open_pairs(shapes["test"], derive={"mono": "luminance"})
    assert ps.modalities == ["rgb", "mono"] and ps.classes and len(ps) == 36
    d = preload_pairs(ps, default_specs(ps), 32)
    assert d.labels is not None and d.x["mono"].shape == (36, 3, 32, 32)
    assert torch.equal(d.x["mono"][:, 0], d.x["mono"][:, 1])


def test_cli_one_line_errors(tmp_path, capsys):
    from edgeclip.cli import main

    (tmp_path / "rgb").mkdir()
    _rgb(tmp_path / "rgb" / "a.jpg")
    (tmp_path / "depth").mkdir()
    _depth(tmp_path / "depth" / "b.png")
    for argv, msg in (
        (["edgevl", "pairs", str(tmp_path), "--modality", "rgb", "--modality", "depth"], "no complete pairs"),
        (
            [
                "edgevl",
                "curate",
                str(tmp_path),
                "--teacher",
                "x",
                "--out",
                str(tmp_path / "o"),
                "--fraction",
                "0",
            ],
            "fraction must be in (0, 1]",
        ),
        (
            [
                "edgevl",
                "curate",
                str(tmp_path),
                "--teacher",
                "x",
                "--out",
                str(tmp_path / "o"),
                "--threshold",
                "0.5",
                "--per-label",
            ],
            "per-label curation keeps a top fraction",
        ),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1
