"""A corpus of hostile and careless inputs run through the CLI: each is one `error:` line, exit code 2, and no
traceback (or, for a damaged tar shard, a skip that is counted). Add a case here for every new kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from edgeclip.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_teacher):
    d = tmp_path_factory.mktemp("corpus")
    for sub in ("good/a", "good/b", "bad/a", "one/a"):
        (d / sub).mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(d / "good/a" / f"{i}.jpg")
        Image.new("RGB", (40, 40), (0, i * 60, 0)).save(d / "good/b" / f"{i}.jpg")
    (d / "bad/a/x.jpg").write_bytes(b"garbage")
    (d / "bad/a/y.jpg").write_bytes(b"\xff\xd8\xff")  # a JPEG that stops after its marker
    Image.new("RGB", (40, 40)).save(d / "one/a/0.jpg")
    (d / "boxes_str.json").write_text(json.dumps({"0.jpg": [["a", "b", "c", "d"]]}))
    (d / "boxes_short.json").write_text(json.dumps({"0.jpg": [[0, 0, 10]]}))
    (d / "boxes_bad.json").write_text("{not json")
    (d / "cache").mkdir()
    (d / "cache/meta.json").write_text("{broken")
    (d / "not_a_ckpt.pt").write_bytes(b"\x00" * 64)
    torch.save(
        {"format": "edgeclip-student/1", "config": {"arch": "resnet18"}, "state_dict": {}}, d / "noweights.pt"
    )
    (d / "labels_empty.txt").write_text("\n   \n\t\n")
    return {"d": d, "T": tiny_teacher, "img": d / "good/a/0.jpg"}


CASES = [
    # usage
    (["nonsense-command"], "No such command"),
    (["label", "{img}", "--labels", "a", "--topk", "x"], "Invalid value for '--topk'"),
    (["label", "{img}"], "no labels: give --labels"),
    # labels, templates, regions, outputs
    (["label", "{img}", "--labels", " , ", "--teacher", "{T}"], "the label list is empty"),
    (["label", "{img}", "--labels", "@{d}/labels_empty.txt", "--teacher", "{T}"], "the label list is empty"),
    (["label", "{img}", "--labels", "@{d}/missing.txt", "--teacher", "{T}"], "label file not found"),
    (
        ["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--template", "a {} of {}"],
        "exactly one '{{}}'",
    ),
    (
        ["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--template", "a {label}"],
        "exactly one '{{}}'",
    ),
    (
        ["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--template", "broken {"],
        "not a valid format",
    ),
    (
        ["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--boxes", "{d}/boxes_str.json"],
        "four numbers",
    ),
    (["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--boxes", "{d}/boxes_short.json"], "bad box"),
    (
        ["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--boxes", "{d}/boxes_bad.json"],
        "not valid JSON",
    ),
    (["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--topk", "0"], "topk must be >= 1"),
    (["label", "{img}", "--labels", "a,b", "--teacher", "{T}", "--out", "{d}/good"], "is a folder"),
    (["label", "{d}/missing.jpg", "--labels", "a", "--teacher", "{T}"], "no images found"),
    # teachers and checkpoints
    (["teacher", "info", ""], "empty teacher spec"),
    (["teacher", "info", "{d}/not_a_ckpt.pt"], "neither a safetensors nor a torch file"),
    (["stats", "--student", "{d}/noweights.pt"], "corrupt student config"),
    (["stats", "--student", "{d}/missing.pt"], "student checkpoint not found"),
    (["export", "{d}/not_a_ckpt.pt", "--out", "{d}/bundle", "--labels", "a"], "cannot read"),
    (
        ["export", "{d}/not_a_ckpt.pt", "--out", "{d}/bundle", "--labels", "a", "--format", "onnx,tflite"],
        "unknown export format 'tflite'",
    ),
    (
        [
            "export",
            "{d}/not_a_ckpt.pt",
            "--out",
            "{d}/b",
            "--labels",
            "a",
            "--int8-variants",
            "qdq_per_tensr",
        ],
        "Did you mean: qdq_per_tensor",
    ),
    # configs and budgets
    (
        ["distill", "--teacher", "{T}", "--data", "{d}/good", "--out", "{d}/s", "--epochs", "0"],
        "train.epochs must be",
    ),
    (
        ["distill", "--teacher", "{T}", "--data", "{d}/good", "--out", "{d}/s", "--set", "train.epochz=3"],
        "Did you mean: train.epochs",
    ),
    (
        [
            "distill",
            "--teacher",
            "{T}",
            "--data",
            "{d}/good",
            "--out",
            "{d}/s",
            "--set",
            "student.nonsense=1",
        ],
        "unknown student option 'nonsense'",
    ),
    (
        ["distill", "--teacher", "{T}", "--data", "{d}/good", "--out", "{d}/s", "--set", "nope"],
        "must look like",
    ),
    (
        ["distill", "--teacher", "{T}", "--data", "{d}/good", "--out", "{d}/s", "--devices", "0"],
        "train.devices",
    ),
    (["distill", "no_such_config", "--teacher", "{T}"], "config file not found"),
    # data that cannot train, caches that are broken
    (
        [
            "distill",
            "--teacher",
            "{T}",
            "--data",
            "{d}/bad",
            "--out",
            "{d}/s1",
            "--student",
            "shufflenet_v2_x0_5",
            "--img-size",
            "32",
        ],
        "no training samples are left",
    ),
    (
        [
            "distill",
            "--teacher",
            "{T}",
            "--data",
            "{d}/one",
            "--out",
            "{d}/s2",
            "--student",
            "shufflenet_v2_x0_5",
            "--img-size",
            "32",
        ],
        "one training sample is not enough",
    ),
    (
        ["distill", "--teacher", "{T}", "--data", "{d}/good", "--cache", "{d}/cache", "--out", "{d}/s3"],
        "is corrupt",
    ),
    (
        ["cache", "{d}/good", "--teacher", "{T}", "--out", "{d}/c", "--batch-size", "0"],
        "batch_size must be >= 1",
    ),
    (["cache", "{d}/good", "--teacher", "{T}", "--out", "{d}/c", "--workers", "-1"], "workers must be >= 0"),
    (["eval", "{d}/good", "--teacher", "{T}", "--batch-size", "0"], "batch_size must be >= 1"),
    (["eval", "{d}/missing", "--teacher", "{T}"], "path not found"),
    (
        ["eval", "{d}/good", "--teacher", "{T}", "--out", "{d}/good"],
        "is a folder: it cannot be written as a file",
    ),
    (["cache", "{d}/good", "--teacher", "{T}", "--out", "{d}/labels_empty.txt"], "is a file, not a folder"),
    (
        ["distill", "--teacher", "{T}", "--data", "{d}/good", "--out", "{d}/labels_empty.txt"],
        "is a file, not a folder",
    ),
]


@pytest.mark.parametrize(
    "argv,msg", CASES, ids=[" ".join(a[:2]) + f" [{i}]" for i, (a, _) in enumerate(CASES)]
)
def test_bad_input_is_one_line(argv, msg, corpus, capsys):
    args = [
        a.replace("{d}", str(corpus["d"])).replace("{T}", corpus["T"]).replace("{img}", str(corpus["img"]))
        for a in argv
    ]
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    cap = capsys.readouterr()
    errors = [ln for ln in cap.err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2, (code, cap.err[-800:])
    assert len(errors) == 1 and msg.replace("{{}}", "{}") in errors[0], cap.err[-800:]
    assert "Traceback" not in cap.err + cap.out


def test_a_damaged_tar_shard_is_skipped_and_counted(corpus, capsys, tmp_path):
    """A fake shard among good ones: the good shard's samples are cached, the fake one is reported."""
    import tarfile

    good = tmp_path / "shard-000.tar"
    with tarfile.open(good, "w") as tf:
        for i, p in enumerate(sorted((corpus["d"] / "good/a").glob("*.jpg"))):
            tf.add(p, arcname=f"s{i}.jpg")
    (tmp_path / "shard-001.tar").write_bytes(b"not a tar at all" * 100)
    main(
        [
            "cache",
            str(tmp_path / "shard-{000..001}.tar"),
            "--teacher",
            corpus["T"],
            "--out",
            str(tmp_path / "c"),
        ]
    )
    cap = capsys.readouterr()
    summary = json.loads(cap.out[cap.out.index("{") :])
    assert summary["computed"] == 3 and "shard-001.tar: unreadable tar shard" in cap.err
    assert Path(tmp_path / "c" / "meta.json").is_file()


def test_damaged_cache_chunks_are_one_line(corpus, tmp_path):
    """A truncated part-*.npy, or a keys file longer than its rows: one line that says which chunk to delete."""
    import numpy as np

    from edgeclip.core.errors import EdgeClipError
    from edgeclip.data.sources import open_source
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import EmbeddingCache, build_cache

    build_cache(open_source(corpus["d"] / "good"), load_teacher(corpus["T"]), tmp_path / "c", progress=False)
    npy = next((tmp_path / "c").glob("part-*.npy"))
    keys = npy.with_name(npy.name.replace(".npy", ".keys.json"))
    good_keys, good_npy = keys.read_text(), npy.read_bytes()
    keys.write_text(json.dumps(json.loads(good_keys) + ["one-key-too-many"]))
    with pytest.raises(EdgeClipError, match=r"embeddings for 7 keys .*delete part-"):
        EmbeddingCache(tmp_path / "c")
    keys.write_text(good_keys)
    npy.write_bytes(good_npy[: len(good_npy) // 2])
    with pytest.raises(EdgeClipError, match="is damaged"):
        EmbeddingCache(tmp_path / "c")
    npy.write_bytes(good_npy)
    assert (
        len(EmbeddingCache(tmp_path / "c")) == 6
        and np.isfinite(EmbeddingCache(tmp_path / "c")[json.loads(good_keys)[0]]).all()
    )
