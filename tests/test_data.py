"""Robust decoding and every kind of image source."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.data import load_array, load_image, open_source
from edgeclip.data.sources import files_source
from edgeclip.data.transforms import ViewSpec, apply_view, view_params


@pytest.fixture()
def odd_images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    paths = {}
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray((rng.integers(0, 65535, (20, 30))).astype(np.uint16)).save(tmp_path / "depth16.png")
    Image.fromarray(rng.random((20, 30)).astype(np.float32)).save(tmp_path / "float.tiff")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for p in tmp_path.iterdir():
        paths[p.stem] = p
    return paths


@pytest.mark.parametrize("name", ["rgb", "cmyk", "gray", "la", "rgba", "palette", "depth16", "float"])
def test_any_mode_becomes_rgb(odd_images, name):
    img = load_image(odd_images[name])
    assert img.mode == "RGB" and img.size == (30, 20)
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.std() > 0  # 16-bit / float rescaled, not clipped to black/white


@pytest.mark.parametrize(
    "name,msg",
    [("truncated", "truncated"), ("garbage", "not a readable image"), ("empty", "empty image file")],
)
def test_bad_files_one_line_error(odd_images, name, msg):
    with pytest.raises(ImageLoadError, match=msg) as e:
        load_image(odd_images[name])
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_load_array_keeps_16_bit_depth(odd_images):
    a = load_array(odd_images["depth16"])
    assert a.dtype == np.uint16 and a.shape == (20, 30)


def test_imagefolder_plain_list_csv(shapes, tmp_path):
    src = open_source(shapes["train"])
    assert src.kind == "imagefolder" and len(src.classes) == 6 and len(src) == 6 * 24
    assert all(r.label is not None for r in src)
    flat = open_source(shapes["train"], kind="folder")
    assert flat.classes is None and len(flat) == len(src)
    files = [r.path for r in src.records[:5]]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(p) for p in files) + f"\n{tmp_path}/missing.jpg\n")
    s = open_source(lst)
    assert len(s) == 5 and len(s.skipped) == 1 and "missing" in s.skipped[0]
    csvp = tmp_path / "list.csv"
    csvp.write_text("path,label\n" + "\n".join(f"{p},{p.parent.name}" for p in files))
    s = open_source(csvp)
    assert len(s) == 5 and s.classes and all(r.label is not None for r in s)


def test_keys_change_with_file(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(p)
    k1 = files_source([p]).records[0].key
    Image.new("RGB", (9, 9)).save(p)
    k2 = files_source([p]).records[0].key
    assert k1 != k2


def test_webdataset_shards(shapes, tmp_path):
    recs = open_source(shapes["test"]).records
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard:03d}.tar", "w") as tf:
            for r in recs[shard * 10 : (shard + 1) * 10]:
                data = r.path.read_bytes()
                for name, payload in (
                    (f"s{shard}_{r.path.stem}_{r.label}.jpg", data),
                    (f"s{shard}_{r.path.stem}_{r.label}.cls", str(r.label).encode()),
                ):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(payload)
                    tf.addfile(ti, io.BytesIO(payload))
    src = open_source(str(tmp_path / "shard-{000..001}.tar"))
    assert src.is_stream
    items = list(src)
    assert len(items) == 20 and all(r.label is not None for r in items)
    assert items[0].load().mode == "RGB"
    assert len({r.key for r in items}) == 20
    with pytest.raises(EdgeClipError, match="not found"):
        open_source(str(tmp_path / "nope-{000..001}.tar"))


def test_views_are_deterministic_and_valid():
    spec = ViewSpec(seed=3)
    assert view_params("k", 0, spec) == ((0.0, 0.0, 1.0, 1.0), False)
    a, b = view_params("k", 1, spec), view_params("k", 1, spec)
    assert a == b and view_params("k", 2, spec) != a
    x0, y0, x1, y1 = a[0]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    img = Image.new("RGB", (40, 30))
    assert apply_view(img, a[0], a[1]).size[0] <= 40


def test_open_source_errors(tmp_path):
    with pytest.raises(EdgeClipError, match="not found"):
        open_source(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeClipError, match="no images"):
        open_source(tmp_path / "empty")


def _bomb_png(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (one zero-filled, highly compressible greyscale plane)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = zlib.compress(b"\x00" * (w + 1) * 64, 9)  # only the first rows: the header is what matters
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


def test_pixel_budget_is_checked_from_the_header(tmp_path, monkeypatch):
    """A decompression bomb never allocates its pixels; an oversized JPEG is decoded at a reduced scale."""
    import resource

    from PIL import Image

    from edgeclip.core.errors import ImageLoadError
    from edgeclip.core.images import load_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(20000, 20000))  # 400 Mpx: 1.2 GB as RGB
    assert bomb.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageLoadError, match="20000 x 20000 = 400 Mpx, over the pixel budget of 40 Mpx"):
        load_image(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nothing was decoded
    with pytest.raises(ImageLoadError, match="over the pixel budget of 1 Mpx"):
        load_image(bomb.read_bytes(), max_pixels=1_000_000)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), "red").save(big, quality=50)  # 6 Mpx
    monkeypatch.setenv("EDGECLIP_MAX_PIXELS", "2000000")
    img = load_image(big)
    assert img.size == (1500, 1000)  # JPEG draft at 1/2 scale fits 2 Mpx
    with pytest.raises(ImageLoadError, match="over the pixel budget"):
        Image.new("RGB", (3000, 2000)).save(tmp_path / "big.png")
        load_image(tmp_path / "big.png")


def test_random_resized_crops_are_seeded_boxes_of_the_image():
    """The caption teacher's stronger augmentation: boxes drawn from torch's RNG (seeded runs repeat), every output
    pixel a value of the image (area within the scale, resized), flips included."""
    import torch

    from edgeclip.data.memory import random_resized_crops

    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16) % 251
    torch.manual_seed(0)
    a = random_resized_crops(x.to(torch.uint8), 8, (0.5, 1.0))
    torch.manual_seed(0)
    b = random_resized_crops(x.to(torch.uint8), 8, (0.5, 1.0))
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)
    assert 0 <= float(a.min()) and float(a.max()) <= 250
    torch.manual_seed(1)
    assert not torch.equal(random_resized_crops(x.to(torch.uint8), 8, (0.5, 1.0)), a)
