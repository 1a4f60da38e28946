"""Caption data formats, bad input (skipped and counted), Unicode tokenisation and the vocabulary."""

from __future__ import annotations

import json
import unicodedata

import pytest
from PIL import Image

from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.data.captions import load_captions
from edgeclip.data.vocab import BOS_ID, EOS_ID, UNK_ID, Vocab, tokenize


@pytest.fixture()
def imgs(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i in range(4):
        Image.new("RGB", (20, 16), (i * 60, 10, 10)).save(d / f"im{i}.jpg")
    return d


def test_csv_format_with_bad_rows_and_splits(tmp_path, imgs):
    (tmp_path / "captions.txt").write_text(
        "im0.jpg, Một người leo núi .\n"
        "im0.jpg, Người leo núi, trên đỉnh  \n"
        "im1.jpg,   \n"  # empty caption
        "im1.jpg, ... !\n"  # no word at all: empty too
        "im2.jpg, a dog\n"
        "missing.jpg, a cat\n"  # refers to a missing image
        "no comma here\n"  # malformed
        "\n"
        "im3.jpg, a bird\n",
        encoding="utf-8",
    )
    cs = load_captions(tmp_path / "captions.txt")
    assert cs.fmt == "csv"
    assert [it.name for it in cs.items] == ["im0.jpg", "im2.jpg", "im3.jpg"]
    assert cs.items[0].captions == [
        "Một người leo núi .",
        "Người leo núi, trên đỉnh",
    ]  # comma kept, blanks collapsed
    assert cs.skipped == {"empty_caption": 2, "missing_image": 1, "bad_line": 1, "no_captions": 1}
    (tmp_path / "splits.json").write_text(
        json.dumps({"train": ["im0.jpg", "im2.jpg"], "test": ["im3.jpg", "gone.jpg"]})
    )
    tr = load_captions(tmp_path / "captions.txt", split="train")
    assert [it.name for it in tr.items] == ["im0.jpg", "im2.jpg"]
    te = load_captions(tmp_path / "captions.txt", split="test")
    assert [it.name for it in te.items] == ["im3.jpg"] and te.skipped[
        "no_captions"
    ] == 1  # gone.jpg listed, no captions
    with pytest.raises(EdgeClipError, match="split 'val' not in"):
        load_captions(tmp_path / "captions.txt", split="val")


def test_coco_json(tmp_path, imgs):
    d = {
        "images": [{"id": i, "file_name": f"im{i}.jpg"} for i in range(4)]
        + [{"id": 9, "file_name": "im9.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 0, "caption": "A plane on a lake."},
            {"id": 2, "image_id": 0, "caption": "A seaplane."},
            {"id": 3, "image_id": 1, "caption": ""},
            {"id": 4, "image_id": 2, "caption": "Two dogs."},
            {"id": 5, "image_id": 42, "caption": "orphan"},
            {"id": 6, "image_id": 9, "caption": "image file is missing"},
        ],
    }
    p = tmp_path / "captions_val2017.json"
    p.write_text(json.dumps(d))
    cs = load_captions(p)
    assert cs.fmt == "coco" and cs.images_dir == str(imgs)
    assert {it.name: len(it.captions) for it in cs.items} == {"im0.jpg": 2, "im2.jpg": 1}
    assert cs.skipped == {"missing_image": 2, "no_captions": 2, "empty_caption": 1}


def test_karpathy_json_and_flickr_token(tmp_path, imgs):
    d = {
        "dataset": "flickr8k",
        "images": [
            {
                "filename": "im0.jpg",
                "split": "train",
                "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}],
            },
            {"filename": "im1.jpg", "split": "restval", "sentences": [{"tokens": ["a", "cat"]}]},
            {"filename": "im2.jpg", "split": "test", "sentences": [{"raw": "A bird."}]},
            {"filename": "im3.jpg", "split": "val", "sentences": []},
        ],
    }
    p = tmp_path / "dataset_flickr8k.json"
    p.write_text(json.dumps(d))
    tr = load_captions(p, images=imgs, split="train")
    assert tr.fmt == "karpathy" and [it.name for it in tr.items] == ["im0.jpg", "im1.jpg"]
    assert tr.items[1].captions == ["a cat"]  # tokens joined when there is no raw text
    assert [it.name for it in load_captions(p, images=imgs, split="test").items] == ["im2.jpg"]
    with pytest.raises(EdgeClipError, match="no split 'dev'"):
        load_captions(p, images=imgs, split="dev")
    tok = tmp_path / "Flickr8k.token.txt"
    tok.write_text(
        "im0.jpg#0\tA child in a pink dress .\nim0.jpg#1\tA girl .\nim5.jpg#0\tmissing\n"
        "im1.jpg#0\t\nbroken line\n",
        encoding="utf-8",
    )
    fl = load_captions(tok, images=imgs)
    assert fl.fmt == "flickr" and [it.name for it in fl.items] == ["im0.jpg"]
    assert fl.skipped == {"missing_image": 1, "empty_caption": 1, "no_captions": 1, "bad_line": 1}
    with pytest.raises(EdgeClipError, match="no split information"):
        load_captions(tok, images=imgs, split="train")


def test_clear_errors(tmp_path):
    with pytest.raises(EdgeClipError, match="not found"):
        load_captions(tmp_path / "nope.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgeClipError, match="not valid JSON"):
        load_captions(tmp_path / "bad.json")
    (tmp_path / "c.txt").write_text("a.jpg, a caption\n")
    with pytest.raises(EdgeClipError, match="cannot find the images"):
        load_captions(tmp_path / "c.txt")


def test_unicode_tokenisation_and_vocab():
    nfd = unicodedata.normalize("NFD", "Đỉnh NÚI tuyết")
    assert tokenize(nfd) == tokenize("đỉnh núi tuyết") == ["đỉnh", "núi", "tuyết"]
    assert tokenize("A man's café, (crème)-brûlée!") == ["a", "man", "s", "café", "crème", "brûlée"]
    assert tokenize("東京 2024") == ["東京", "2024"]
    v = Vocab.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert v.words[4:] == ["a", "dog"] and len(v) == 6
    ids = v.encode("A dog flies", max_len=10)
    assert ids == [BOS_ID, v.index["a"], v.index["dog"], UNK_ID, EOS_ID]
    assert v.encode("a a a a", max_len=2) == [BOS_ID, 4, 4, EOS_ID]
    assert v.decode(ids) == "a dog <unk>"
    assert Vocab.from_dict(v.to_dict()).words == v.words
    bad = v.to_dict()
    bad["words"] = bad["words"] + ["extra"]
    with pytest.raises(CheckpointError, match="corrupt"):
        Vocab.from_dict(bad)
    with pytest.raises(EdgeClipError, match="no word occurs"):
        Vocab.build(["x y"], min_count=3)
    assert v.oov_rate(["a dog", "zebra zebra"]) == 0.5


def test_vi_captions_real(shared_data):
    """vi-captions keeps only its 300 test photos (Unicode and real-world defects); Flickr8k trains now."""
    p = shared_data / "vi-captions" / "captions.txt"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    cs = load_captions(p, split="test")
    # two of the 300 photos are byte-identical copies of two others: skipped and counted, not scored twice
    assert len(cs) == 298 and cs.skipped == {"duplicate_image": 2} and cs.n_captions >= 5 * 298 - 10
    assert len(load_captions(p)) == 298  # no train/val photos left behind the split file
    with pytest.raises(EdgeClipError, match="split 'train' not in .*splits: test"):
        load_captions(p, split="train")
    v = Vocab.build(cs.all_captions(), min_count=5)
    assert "người" in v.index  # NFC-normalised Vietnamese words survive tokenisation


def test_flickr8k_token_file_real(shared_data):
    p = shared_data / "flickr8k" / "Flickr8k.token.txt"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    counts = {s: len(load_captions(p, split=s, check_images=False)) for s in ("train", "val", "test")}
    assert counts == {"train": 6000, "val": 1000, "test": 500}
    tr = load_captions(p, split="train", check_images=False)
    assert tr.n_captions == 5 * 6000
    v = Vocab.build(tr.all_captions(), min_count=5)
    test = load_captions(p, split="test", check_images=False)
    assert "dog" in v.index and v.oov_rate(test.all_captions()) < 0.05  # 3.0 % of test words


def test_flickr8k_photos_from_the_archive(shared_data):
    """images.tar beside the token file is unpacked once into edgeclip's cache; the caption whose photo does not
    exist and the byte-identical train pair are skipped and counted, not used twice."""
    p = shared_data / "flickr8k" / "Flickr8k.token.txt"
    if not (p.parent / "images.tar").is_file():
        pytest.skip(f"{p.parent / 'images.tar'} is absent")
    tr = load_captions(p, split="train")
    assert len(tr) == 5999 and tr.n_captions == 5 * 5999 and tr.skipped == {"duplicate_image": 1}
    assert all(it.path.is_file() for it in tr.items[:20])
    every = load_captions(p)  # no split: the photo named in the token file but absent is counted
    assert len(every) == 7590 and every.skipped == {"missing_image": 5, "duplicate_image": 1}
    assert {len(load_captions(p, split=s)) for s in ("val", "test")} == {1000, 500}


def test_coco_mini_real(shared_data):
    p = shared_data / "coco-mini" / "captions_val2017.json"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    cs = load_captions(p)
    assert len(cs) == 79 and cs.n_captions >= 79 * 5


def test_spice_is_reported_unavailable_offline_without_a_download(monkeypatch):
    """SPICE needs Stanford CoreNLP, which pycocoevalcap downloads on first use: without its jar, SPICE is None with
    the reason, and no download is tried."""
    import urllib.request

    from edgeclip import metrics

    if metrics.spice_missing() is None:
        pytest.skip("Stanford CoreNLP is installed here: SPICE runs")

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_download)
    import pycocoevalcap.spice.get_stanford_models as g

    monkeypatch.setattr(g, "urlretrieve", no_download)
    refs = {"1": ["a dog runs on the grass", "a brown dog running"], "2": ["a red car on a street"]}
    out = metrics.score_captions(refs, {"1": "a dog runs", "2": "a car"}, metrics=("CIDEr", "SPICE"))
    assert out["SPICE"] is None and "CoreNLP" in out["unavailable"]["SPICE"] and out["CIDEr"] >= 0
