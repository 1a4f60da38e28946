"""Many workers: the teacher cache built by N torchrun workers is bit-identical to a 1-worker build, a killed
worker's chunks are recomputed alone, the key index opens without reading key lists, and older caches are one
line naming the command that converts them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip.core.errors import EdgeClipError
from edgeclip.train.cache import EmbeddingCache, part_names

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _cache_cmd(data, teacher, out, workers: int) -> list[str]:
    edge = ["-m", "edgeclip", "cache", str(data), "--teacher", teacher, "--out", str(out), "--chunk", "8"]
    if workers == 1:
        return [sys.executable, *edge]
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={workers}", *edge]


def _run(cmd, **env):
    # one thread per worker: the same kernels on the same batches give the same bits in every run
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)


def _same(a: Path, b: Path) -> None:
    ca, cb = EmbeddingCache(a), EmbeddingCache(b)
    keys = [k for n in part_names(a) for k in json.loads((a / f"{n}.keys.json").read_text())]
    assert len(ca) == len(cb) == len(keys) and not cb.missing(keys)
    assert np.array_equal(ca.get_many(keys), cb.get_many(keys))  # bit for bit


def test_two_workers_match_one_and_a_killed_worker_resumes(tiny_teacher, shapes, tmp_path):
    data = shapes["train"]
    one = _run(_cache_cmd(data, tiny_teacher, tmp_path / "one", 1))
    assert one.returncode == 0, one.stderr[-2000:]
    n = json.loads(one.stdout)["computed"]
    assert n == len(list(Path(data).rglob("*.jpg"))) > 16
    two = _run(_cache_cmd(data, tiny_teacher, tmp_path / "two", 2))
    assert two.returncode == 0, two.stderr[-2000:]
    _same(tmp_path / "one", tmp_path / "two")
    # worker 1 is killed between the two writes of its second part (torchrun then stops worker 0 too)
    killed = _run(_cache_cmd(data, tiny_teacher, tmp_path / "k", 2), EDGECLIP_KILL_AFTER_PARTS="1:1")
    assert killed.returncode != 0
    left = len(EmbeddingCache(tmp_path / "k"))
    assert 0 < left < n  # some parts landed, not all; the orphan .npy of the killed write is ignored
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "k").glob("part-*.keys.json")}
    again = _run(_cache_cmd(data, tiny_teacher, tmp_path / "k", 2))
    assert again.returncode == 0, again.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "k").glob("part-*.keys.json")}
    assert all(after[k] == v for k, v in before.items())  # the parts that had landed are untouched
    new_rows = sum(len(json.loads((tmp_path / "k" / k).read_text())) for k in set(after) - set(before))
    assert new_rows == n - left  # only what was missing was computed
    _same(tmp_path / "one", tmp_path / "k")
    orphans = [
        p for p in (tmp_path / "k").glob("part-*.npy") if not p.with_name(p.stem + ".keys.json").exists()
    ]
    assert not orphans


def test_the_index_rebuilds_when_parts_change_and_old_caches_are_one_line(tiny_teacher, shapes, tmp_path):
    from edgeclip.cli import main
    from edgeclip.data.sources import open_source
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache

    recs = open_source(shapes["test"]).records
    build_cache(recs, load_teacher(tiny_teacher), tmp_path / "c", chunk=8, progress=False)
    c = EmbeddingCache(tmp_path / "c")
    assert len(c) == len(recs) and recs[0].key in c and "nope" not in c
    first = part_names(tmp_path / "c")[0]
    for suffix in (".npy", ".keys.json"):
        (tmp_path / "c" / f"{first}{suffix}").unlink()  # a part deleted by hand: the index follows
    c2 = EmbeddingCache(tmp_path / "c")
    assert len(c2) == len(recs) - 8 and recs[0].key not in c2 and c2.missing([recs[0].key]) == [recs[0].key]
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "format": "edgeclip-cache/1"}))
    with pytest.raises(EdgeClipError, match=r"edgeclip-cache/1 cache .* edgeclip cache-upgrade "):
        EmbeddingCache(tmp_path / "c")
    main(["cache-upgrade", str(tmp_path / "c")])
    assert len(EmbeddingCache(tmp_path / "c")) == len(recs) - 8


def test_key_index_lookups(tmp_path):
    from edgeclip.data.keyindex import KeyIndex, write_index

    parts = [("p0", [f"img{i}.jpg|1|2" for i in range(1000)]), ("p1", [f"other{i}" for i in range(37)])]
    write_index(tmp_path / "index", parts)
    idx = KeyIndex(tmp_path / "index")
    assert len(idx) == 1037 and idx.get("img5.jpg|1|2") == (0, 5) and idx.get("other36") == (1, 36)
    assert idx.get("img5.jpg|1|3") is None
    pos = idx.lookup(["other3", "missing", "img999.jpg|1|2"])
    assert list(pos) == [(1 << 32) | 3, -1, 999]
    with pytest.raises(EdgeClipError, match="share a 64-bit hash"):
        write_index(tmp_path / "dup", [("p", ["a", "a"])])


def _distill_cmd(teacher, data, out) -> list[str]:
    return [
        *(
            "-m",
            "edgeclip",
            "distill",
            "--teacher",
            teacher,
            "--data",
            str(data),
            "--student",
            "shufflenet_v2_x0_5",
        ),
        *(
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--accelerator",
            "cpu",
        ),
        *("--strategy", "ddp"),
    ]


def test_the_readme_launch_commands_in_their_two_process_cpu_form(tiny_teacher, shapes, tmp_path):
    """README "Many GPUs, many nodes": torchrun on one node (2 processes), and two "nodes" (two torchrun agents
    on this machine, one process each, rendezvous over localhost): both ranks end with identical weights."""
    import socket

    one = _run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2"]
        + _distill_cmd(tiny_teacher, shapes["train"], tmp_path / "a")
        + ["--devices", "2"]
    )
    assert one.returncode == 0, one.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    nodes = [
        subprocess.Popen(
            [str(TORCHRUN), "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1", "--master_addr=127.0.0.1"]
            + [f"--master_port={port}"]
            + _distill_cmd(tiny_teacher, shapes["train"], tmp_path / "b")
            + ["--devices", "1", "--num-nodes", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=e,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][1][-1500:] + outs[1][1][-1500:]
    for d in ("a", "b"):
        h0, h1 = ((tmp_path / d / f"rank{r}.weights.sha256").read_text() for r in (0, 1))
        assert h0 == h1 and len(h0.strip()) == 64
        hist = json.loads((tmp_path / d / "history.json").read_text())
        assert hist["world_size"] == 2 and hist["epochs"][0]["steps"] == 144 // 16 // 2


def test_reinforced_shards_train_like_the_folder_cache(tiny_teacher, shapes, tmp_path, capsys):
    """`edgeclip cache --format wds`: shards carrying each image, its teacher embeddings and view parameters;
    distilling from them (no cache folder, no teacher run) follows the folder cache's loss curve on the same seed,
    and ends at the same weights within float tolerance."""
    import tarfile

    import torch

    from edgeclip.cli import main
    from edgeclip.train.distill import DistillConfig, distill

    out = tmp_path / "c"
    main(
        ["cache", str(shapes["train"]), "--teacher", tiny_teacher, "--out", str(out), "--views", "3"]
        + ["--chunk", "40", "--format", "wds"]
    )
    shards = sorted((out / "shards").glob("shard-*.tar"))
    assert len(shards) == 4  # 144 images, 40 per shard
    with tarfile.open(shards[0]) as tf:
        names = tf.getnames()
    assert {n.split(".", 1)[1] for n in names} == {"jpg", "emb.npy", "views.json", "cls"}
    base = dict(
        teacher=tiny_teacher,
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 32},
        preload=False,  # both read decoded files / samples and crop them with PIL: the same pixels
        train={"epochs": 2, "batch_size": 16, "seed": 0, "shuffle": False, "num_workers": 0, "log_every": 1},
    )
    a = distill(
        DistillConfig(data=str(shapes["train"]), cache=str(out), out=str(tmp_path / "a"), **base),
        progress=False,
    )
    b = distill(
        DistillConfig(data=str(out / "shards" / "shard-*.tar"), out=str(tmp_path / "b"), **base),
        progress=False,
    )
    la, lb = [e["loss"] for e in a["epochs"]], [e["loss"] for e in b["epochs"]]
    assert len(la) == len(lb) == 2 and np.allclose(la, lb, rtol=1e-4), (la, lb)
    assert a["epochs"][0]["steps"] == b["epochs"][0]["steps"] == 144 // 16
    wa = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-4) for k in wa)
    bad = [
        "cache",
        str(shapes["train"]),
        "--teacher",
        tiny_teacher,
        "--out",
        str(out),
        "--format",
        "tfrecord",
    ]
    with pytest.raises(SystemExit):
        main(bad)
    assert "error: unknown cache format 'tfrecord' (folder, wds)" in capsys.readouterr().err
