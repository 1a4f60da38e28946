"""The fleet loop: the device's outbox (bounded, crash-safe), uploads through a real collector (exactly once),
teacher re-scoring, search, novelty selection, campaigns pushed and switched to mid-run, and a watch process
SIGKILLed and resumed while uploading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeclip.core.errors import EdgeClipError
from edgeclip.runtime import load_bundle
from edgeclip.runtime.watch import load_rules, watch
from edgeclip.runtime.watch.outbox import Outbox
from edgeclip.runtime.watch.uplink import FleetLink
from edgeclip.serve.loadtest import running_server
from test_watch import CLASSES, video  # noqa: F401  (the module fixture: a bundle and a slideshow)

pytest.importorskip(
    "apsw", reason="the collector's store needs apsw + sqlite-vec (pip install 'edgeclip[fleet]')"
)


# ---------------------------------------------------------------------------------------------- the outbox
def _event(key: str, n: int = 100) -> tuple[dict, bytes]:
    return {"key": key, "rule": "r"}, b"\xff\xd8" + bytes(n)


def test_the_outbox_is_bounded_atomic_and_recovers(tmp_path):
    ob = Outbox(tmp_path / "ob", max_bytes=1000)
    for i in range(12):
        ob.put(*_event(f"key-{i:04d}", 200))
    # ~230 bytes an event: the oldest went, counted, the newest are waiting in order
    assert ob.stats["evicted"] >= 8 and ob.nbytes <= 1000
    keys = [e.key for e in ob.oldest(100)]
    assert keys == sorted(keys) and keys[-1] == "key-0011"
    ob.put(*_event("key-0011", 200))  # the same event again (a batch redone after a resume): one entry
    assert [e.key for e in ob.oldest(100)] == keys and ob.stats["replaced"] == 1
    with pytest.raises(EdgeClipError, match="is being written"):
        Outbox(tmp_path / "ob")
    ob.close()
    # a crash between the JPEG and its record, and a half-written temporary file
    (tmp_path / "ob" / "events" / "000000000099-orphan-key.jpg").write_bytes(b"x")
    (tmp_path / "ob" / "events" / ".000000000100-x.json.123.tmp").write_bytes(b"{")
    ob2 = Outbox(tmp_path / "ob", max_bytes=1000)
    assert [e.key for e in ob2.oldest(100)] == keys
    assert not list((tmp_path / "ob" / "events").glob("*orphan*")) and not list(
        (tmp_path / "ob" / "events").glob(".*")
    )
    assert ob2.next_seq >= 12 and ob2.stats["evicted"] == ob.stats["evicted"]
    with pytest.raises(EdgeClipError, match="idempotency key"):
        ob2.put({"key": "../x"}, b"")
    ob2.close()


# ---------------------------------------------------------------------------------------------- the collector
@pytest.fixture(scope="module")
def collector(tmp_path_factory, tiny_teacher):
    from edgeclip.collect import create_collector_app, open_collector

    store = tmp_path_factory.mktemp("collection")
    c = open_collector(store, tiny_teacher, log=lambda s: None)
    with running_server(create_collector_app(c)) as url:
        yield {"c": c, "url": url, "store": store}
    c.rescorer.stop()


def _device(collector, name: str) -> str:
    import secrets

    token = secrets.token_urlsafe(16)
    collector["c"].store.add_device(name, token)
    return token


def _link(collector, tmp_path, name: str, token: str, **kw) -> FleetLink:
    return FleetLink(
        tmp_path / f"outbox-{name}",
        collector["url"],
        name,
        token,
        max_bytes=50_000_000,
        poll=0.2,
        log=lambda s: None,
        backoff=0.05,
        max_backoff=0.5,
        **kw,
    )


def _keys_of(out: Path) -> list[str]:
    """The idempotency keys of the frames a watch kept (from its event log and run id)."""
    from edgeclip.runtime.watch.events import event_key

    run = json.loads((out / "state.json").read_text())["run"]
    rows = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    return [event_key(run, r["rule"], r["event"], r["t"]) for r in rows if r["type"] == "frame"]


def _stored_keys(collector, device: str) -> list[str]:
    rows = collector["c"].store._execute(
        collector["c"].store._q("SELECT key FROM events WHERE device = ?"), (device,)
    )
    return [r[0] for r in rows]


def test_kept_frames_reach_the_collector_once_rescored_and_searchable(video, collector, tmp_path):  # noqa: F811
    token = _device(collector, "car-1")
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    rules = dict(video["rules"], rules=[dict(r, max_frames=3) for r in video["rules"]["rules"]])
    s = watch(
        video["truth"]["path"],
        lab,
        load_rules(rules),
        tmp_path / "w",
        progress=False,
        link=_link(collector, tmp_path, "car-1", token),
        drain=30,
    )
    up = s["upload"]
    assert s["kept_frames"] > 0 and up["drained"] and up["pending"] == 0
    assert up["sent"] == s["kept_frames"] and up["rejected"] == 0
    keys = _keys_of(tmp_path / "w")
    assert sorted(_stored_keys(collector, "car-1")) == sorted(keys)  # every kept frame, once
    c = collector["c"]
    assert c.rescorer.wait_idle(60)
    rows = c.store.search(None, 100, device="car-1")
    assert len(rows) == len(keys) and all(r["verdict"] == "no-query" for r in rows)  # rules by example
    # search by example: a kept frame finds itself first
    url = collector["url"]
    frame = next((tmp_path / "w" / "frames").glob("*.jpg"))
    r = httpx.post(f"{url}/api/search/image", files={"file": ("q.jpg", frame.read_bytes())}, data={"k": "3"})
    assert r.status_code == 200 and r.json()["results"][0]["similarity"] > 0.99
    r = httpx.get(f"{url}/api/search", params={"q": "a star", "device": "car-1", "k": 5})
    assert r.status_code == 200 and 0 < len(r.json()["results"]) <= 5
    assert httpx.get(url + r.json()["results"][0]["image"]).content[:2] == b"\xff\xd8"
    st = httpx.get(f"{url}/api/stats").json()
    assert st["events"] >= len(keys) and st["seconds_to_searchable"]["p95"] is not None
    assert st["groups"] <= st["events"]


def test_the_ingest_endpoint_refuses_bad_events_in_one_line(collector, tmp_path):
    token = _device(collector, "car-bad")
    url, h = collector["url"], {"Authorization": f"Bearer {token}"}
    from PIL import Image

    jpeg_path = tmp_path / "f.jpg"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(jpeg_path)
    jpeg = jpeg_path.read_bytes()
    dim = collector["c"].store.dim

    def post(meta, data=jpeg, key="k" * 12, headers=h):
        return httpx.post(
            f"{url}/api/events",
            headers={**headers, "Idempotency-Key": key},
            data={"meta": meta if isinstance(meta, str) else json.dumps(meta)},
            files={"file": ("f.jpg", data)},
        )

    good = {"key": "k" * 12, "rule": "r", "embedding": [0.1] * dim, "kept_at": time.time()}
    assert post(good).status_code == 201
    again = post(good)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"  # exactly once
    cases = [
        (post(good, headers={"Authorization": "Bearer nope"}), 401, "unknown device token"),
        (post("{not json", key="k" * 13), 400, "not JSON"),
        (post({**good, "key": "z" * 12}, key="z" * 13), 400, "differ"),
        (post({**good, "key": "y" * 12, "device": "car-other"}, key="y" * 12), 403, "belongs to device"),
        (post({**good, "key": "x" * 12, "embedding": [0.1] * 7}, key="x" * 12), 422, "dims"),
        (post({**good, "key": "w" * 12}, data=b"\xff\xd8garbage", key="w" * 12), 415, ""),
        (post({**good, "key": "../etc"}, key="../etc"), 400, "Idempotency-Key"),
    ]
    for r, status, text in cases:
        assert r.status_code == status and text in r.json()["error"], (status, r.text)
        assert "\n" not in r.json()["error"]
    big = post({**good, "key": "v" * 12}, data=b"\xff\xd8" + bytes(9 * 1024 * 1024), key="v" * 12)
    assert big.status_code == 413


def test_novelty_drops_repeats_and_keeps_the_distinct_scenes(video, tmp_path):  # noqa: F811
    """The slideshow shows 4 shapes in 8 segments (circle 3 times): without novelty each segment's event keeps
    frames; with novelty a rule keeps a scene once, however often it comes back."""
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    base = dict(video["rules"], rules=[dict(r, max_frames=50) for r in video["rules"]["rules"]])
    plain = watch(video["truth"]["path"], lab, load_rules(base), tmp_path / "plain", progress=False)
    novel_rules = dict(base, rules=[dict(r, novelty=0.02) for r in base["rules"]])
    novel = watch(video["truth"]["path"], lab, load_rules(novel_rules), tmp_path / "novel", progress=False)
    assert novel["dropped_as_near_duplicates"] > 0
    assert novel["kept_frames"] < plain["kept_frames"] / 3
    kept_rules = {k for k, v in novel["kept_per_rule"].items() if v > 0}
    assert kept_rules == {k for k, v in plain["kept_per_rule"].items() if v > 0} == set(CLASSES)
    rate = dict(base, rules=[dict(r, max_per_hour=2) for r in base["rules"]])
    capped = watch(video["truth"]["path"], lab, load_rules(rate), tmp_path / "rate", progress=False)
    assert all(v <= 2 for v in capped["kept_per_rule"].values()) and capped["dropped_by_rate"] > 0
    with pytest.raises(EdgeClipError, match="novelty must be in"):
        load_rules(dict(base, rules=[dict(base["rules"][0], novelty=3)]))


def test_a_campaign_is_checked_at_push_and_switched_to_mid_run(video, collector, tmp_path):  # noqa: F811
    from edgeclip.collect.campaign import push

    store = collector["c"].store
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: x, examples: [a.jpg]}]\nbackground: [a]\n")
    with pytest.raises(EdgeClipError, match="campaign sends text queries"):
        push(store, bad)
    bad.write_text("rules: [{name: x, query: circle, treshold: 0.5}]\nbackground: [a]\n")
    with pytest.raises(EdgeClipError, match="treshold"):
        push(store, bad)
    good = tmp_path / "c.yaml"
    good.write_text(
        "score: cosine\nbatch: 4\nsmoothing: 1.0\nrules:\n  - {name: circle_c, query: circle, threshold: -1.0, "
        "max_frames: 2}\n"
    )
    version = push(store, good, devices=["car-camp"])
    token = _device(collector, "car-camp")
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    link = _link(collector, tmp_path, "car-camp", token)
    s = watch(
        video["truth"]["path"],
        lab,
        load_rules(video["rules"]),
        tmp_path / "w",
        progress=False,
        link=link,
        drain=30,
        realtime=True,  # the 8 s video at its own pace, as a camera: the poll (every 0.2 s) comes mid-run
    )
    # the campaign came in while the video played (polled every 0.2 s), and frames kept after it record it
    assert s["rule_switches"] == 1 and s["rules_version"] == str(version) and s["upload"]["campaigns"] == 1
    rows = [json.loads(x) for x in (tmp_path / "w" / "events.jsonl").read_text().splitlines()]
    assert any(r.get("rule_version") == str(version) and r["rule"] == "circle_c" for r in rows)
    got = store.search(None, 100, device="car-camp", rule_version=str(version))
    assert got and all(r["rule"] == "circle_c" for r in got)
    # the checkpoint keeps the campaign's rules: a resume goes on under them, whatever rules file it is given
    state = json.loads((tmp_path / "w" / "state.json").read_text())
    assert state["watcher"]["campaign"]["version"] == str(version)
    again = watch(video["truth"]["path"], lab, load_rules(video["rules"]), tmp_path / "w", resume=True,
                  progress=False)  # fmt: skip
    assert again["rules_version"] == str(version) and again["rules"] == ["circle_c"]
    # a device not named gets no campaign
    r = httpx.get(
        f"{collector['url']}/api/campaign",
        params={"device": "car-1"},
        headers={"Authorization": f"Bearer {_device(collector, 'car-1')}"},
    )
    assert r.status_code == 404
    # an unchanged campaign answers 304 to its ETag
    h = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{collector['url']}/api/campaign", params={"device": "car-camp"}, headers=h)
    assert r.status_code == 200
    r2 = httpx.get(
        f"{collector['url']}/api/campaign",
        params={"device": "car-camp"},
        headers={**h, "If-None-Match": r.headers["etag"]},
    )
    assert r2.status_code == 304


@pytest.mark.slow
def test_a_watch_killed_while_uploading_loses_and_repeats_nothing(video, collector, tmp_path):  # noqa: F811
    """SIGKILL the device process at several moments (the collector up or not), then resume: the collector holds
    exactly the frames the watch kept, each once."""
    token = _device(collector, "car-kill")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(dict(video["rules"], batch=2)))
    tok = tmp_path / "token"
    tok.write_text(token)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    base = [
        sys.executable,
        "-m",
        "edgeclip",
        "watch",
        str(video["truth"]["path"]),
        "--bundle",
        str(video["tb"]["bundle"]),
        "--rules",
        str(rules),
        "--out",
        str(tmp_path / "w"),
        "--no-progress",
        "--threads",
        "1",
        "--upload",
        collector["url"],
        "--device-id",
        "car-kill",
        "--token-file",
        str(tok),
        "--outbox",
        str(tmp_path / "outbox"),
        "--drain-seconds",
        "30",
        "--realtime",  # as a camera delivers it: the kills land mid-video, with frames waiting and in flight
    ]
    for i, delay in enumerate((2.0, 3.5)):
        p = subprocess.Popen(
            base + (["--resume"] if i else []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    p = subprocess.run(base + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    keys = _keys_of(tmp_path / "w")
    stored = _stored_keys(collector, "car-kill")
    assert len(stored) == len(set(stored)) and sorted(stored) == sorted(set(keys)), (len(stored), len(keys))
    assert len(keys) > 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_store_of_another_teacher_or_size_is_refused(tmp_path):
    from edgeclip.collect.store import open_store

    s = open_store(tmp_path / "c", 8, "teacher-a")
    s.ingest({"key": "a" * 12, "device": "d", "blob": "b"}, np.ones(8, np.float32))
    with pytest.raises(EdgeClipError, match="teacher"):
        open_store(tmp_path / "c", 8, "teacher-b")
    with pytest.raises(EdgeClipError, match="dim"):
        open_store(tmp_path / "c", 16, "teacher-a")
    with pytest.raises(EdgeClipError, match="no collection"):
        open_store(tmp_path / "none")
    assert open_store(tmp_path / "c").dim == 8


# ---------------------------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    from edgeclip.collect.pglocal import LocalPostgres, unavailable

    why = unavailable()
    if why:
        pytest.skip(f"PostgreSQL + pgvector tests: {why}")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'edgeclip[fleet]')")
    with LocalPostgres(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_both_stores_ingest_each_key_once_under_concurrent_collectors(kind, tmp_path, request):
    """Two writers (threads with their own connections, as two collector processes would be) ingest the same
    120 events in different orders: each key is stored once, and search, filters and groups agree."""
    import threading

    from edgeclip.collect.store import open_store

    spec = request.getfixturevalue("pg_url") if kind == "postgresql" else tmp_path / "c"
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(120, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a, b = open_store(spec, 16, "T"), open_store(spec, 16, "T")
    stored = []

    def writer(store, order):
        for i in order:
            new, _ = store.ingest(
                {
                    "key": f"event-{i:06d}",
                    "device": f"car-{i % 3}",
                    "rule": "r",
                    "blob": f"b{i}",
                    "kept_at": i,
                },
                emb[i],
            )
            stored.append(new)

    ts = [
        threading.Thread(target=writer, args=(a, range(120))),
        threading.Thread(target=writer, args=(b, range(119, -1, -1))),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sum(stored) == 120 and len(stored) == 240
    for ev in a.pending(1000):
        a.set_teacher(ev["id"], emb[_index(a, ev["id"])], 0.9, "confirmed", ev["id"])
    hits = a.search(emb[7], 3, column="teacher_emb")
    assert hits[0]["key"] == "event-000007" and hits[0]["distance"] < 1e-5
    assert all(r["device"] == "car-1" for r in a.search(emb[7], 10, device="car-1"))
    assert sorted(r["key"] for r in a.search(None, 10, since=115)) == [
        f"event-{i:06d}" for i in range(115, 120)
    ]
    assert a.counts()["events"] == 120 and a.counts()["verdicts"] == {"confirmed": 120}
    a.close()
    b.close()


def _index(store, event_id: int) -> int:
    key = store._execute(store._q("SELECT key FROM events WHERE id = ?"), (event_id,))[0][0]
    return int(key.split("-")[1])


# ---------------------------------------------------------------------------------------------- the page
def test_the_search_page_shows_what_the_api_finds(collector, tmp_path, shapes):
    """The collection's page in headless Chromium: text search fills the grid with the API's results, a verdict
    filter narrows it, and search by example image works from the file input."""
    from test_serve_browser import ARGS, CHROMIUM

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium is absent ({CHROMIUM}); install Debian's package: apt-get install -y chromium")
    pw_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip, dev extra) is not installed")
    token = _device(collector, "car-page")
    url, dim = collector["url"], collector["c"].store.dim
    photos = sorted(Path(shapes["test"]).rglob("*.jpg"))[:6]
    for i, p in enumerate(photos):
        meta = {
            "key": f"page-{i:08d}",
            "rule": "shape",
            "query": p.parent.name,
            "background": ["a photo"],
            "threshold": 0.5,
            "embedding": [1.0 / dim**0.5] * dim,
            "kept_at": time.time(),
        }
        r = httpx.post(
            f"{url}/api/events",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": meta["key"]},
            data={"meta": json.dumps(meta)},
            files={"file": (p.name, p.read_bytes())},
        )
        assert r.status_code == 201, r.text
    assert collector["c"].rescorer.wait_idle(60)
    api = httpx.get(f"{url}/api/search", params={"q": "a circle", "device": "car-page", "k": 24}).json()[
        "results"
    ]
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = b.new_page()
        page.goto(url + "/")
        page.fill("#q", "a circle")
        page.fill("#device", "car-page")
        page.click("button[type=submit]")
        page.wait_for_function(
            "n => document.querySelectorAll('#results .result').length === n", arg=len(api)
        )
        srcs = page.locator("#results .result img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
        assert srcs == [r["image"] for r in api]
        assert "frames from" in page.locator("#stats").inner_text()
        verdicts = {r["verdict"] for r in api}
        v = sorted(verdicts)[0]
        page.select_option("#verdict", v)
        page.click("button[type=submit]")
        n = sum(r["verdict"] == v for r in api)
        page.wait_for_function("n => document.querySelectorAll('#results .result').length === n", arg=n)
        page.fill("#q", "")
        page.select_option("#verdict", "")
        page.set_input_files("#example", str(photos[0]))
        page.click("button[type=submit]")
        by_example = httpx.post(
            f"{url}/api/search/image",
            files={"file": ("q.jpg", photos[0].read_bytes())},
            data={"device": "car-page"},
        ).json()["results"]
        assert (
            by_example[0]["similarity"] > 0.99
        )  # the photo finds itself (the tiny teacher ties similar ones)
        want = [r["image"] for r in by_example]
        page.wait_for_function(
            "w => JSON.stringify([...document.querySelectorAll('#results .result img')]"
            ".map(i => i.getAttribute('src'))) === JSON.stringify(w)",
            arg=want,
        )
        b.close()


def test_blobs_in_a_folder_and_through_fsspec(tmp_path):
    """The folder store and the fsspec path (fsspec's in-memory filesystem standing in for object storage):
    content-addressed names, a second put of the same bytes is the same blob, names cannot climb out."""
    from edgeclip.collect.blobs import Blobs

    for spec in (str(tmp_path / "blobs"), "memory://edgeclip-test/blobs"):
        b = Blobs(spec)
        n1, n2 = b.put(b"\xff\xd8one"), b.put(b"\xff\xd8one")
        assert n1 == n2 and b.get(n1) == b"\xff\xd8one" and b.put(b"\xff\xd8two") != n1
        with pytest.raises(EdgeClipError, match="not a blob name"):
            b.get("../../etc/passwd")


def test_the_collector_holds_serves_limits_against_hostile_clients(collector, tmp_path):
    """The guards `edgeclip serve` is tested with, on the collector: another Host (DNS rebinding), a chunked
    upload past the limit cut off as it streams, a stalled body, an image whose header claims a huge size (refused
    before decoding), search without the token where one is set."""
    import io
    import socket
    from urllib.parse import urlparse

    from PIL import Image

    from edgeclip.collect import Collector, create_collector_app

    url, c = collector["url"], collector["c"]
    token = _device(collector, "car-hostile")
    h = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{url}/api/stats", headers={"Host": "evil.example"})
    assert r.status_code == 400
    sent = {"n": 0}

    def chunks(total, head):
        yield head
        while sent["n"] < total:
            sent["n"] += 65536
            yield b"0" * 65536

    boundary = "edgeclipboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    r = httpx.post(
        f"{url}/api/events",
        content=chunks(60 * 2**20, head),
        headers={
            **h,
            "content-type": f"multipart/form-data; boundary={boundary}",
            "Idempotency-Key": "h" * 12,
        },
        timeout=60,
    )
    assert r.status_code == 413 and "the server reads no more" in r.json()["error"]
    # a PNG header that claims 60,000 x 60,000 pixels: refused from the header, at ingest and in search
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")
    meta = {"key": "b" * 12, "rule": "r"}
    r = httpx.post(f"{url}/api/events", headers={**h, "Idempotency-Key": "b" * 12},
                   data={"meta": json.dumps(meta)}, files={"file": ("bomb.png", bytes(png))})  # fmt: skip
    assert r.status_code == 415, r.text
    r = httpx.post(f"{url}/api/search/image", files={"file": ("bomb.png", bytes(png))})
    assert r.status_code == 415 and "\n" not in r.json()["error"]
    assert httpx.get(f"{url}/api/search", params={"k": 0}).status_code == 422
    assert httpx.get(f"{url}/api/blob/..%2F..%2Fetc%2Fpasswd").status_code == 404
    # a stalled body, and the search side's token, on a second app over the same store
    guarded = Collector(c.store, c.blobs, c.teacher, None, token="search-token")
    with running_server(create_collector_app(guarded, body_timeout=1.0)) as url2:
        assert httpx.get(f"{url2}/api/search").status_code == 401
        ok = httpx.get(f"{url2}/api/search", headers={"X-Edgeclip-Token": "search-token"})
        assert ok.status_code == 200
        u = urlparse(url2)
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        s.sendall(
            b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\n--x\r\n\r\n"
        )
        reply = b""
        while b"stalled" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        s.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_the_collect_commands(collector, tmp_path, tiny_teacher, shapes, capsys):
    """device add (token file, mode 600), campaign push (a bad one: exit 2, one line), stats and search from the
    command line, against the collection the other tests filled."""
    from test_cli import run_cli

    store = str(collector["store"])
    tok = tmp_path / "car-cli.token"
    code, _, err = run_cli(
        ["collect", "device", "add", "car-cli", "--store", store, "--token-file", str(tok)], capsys
    )
    assert code == 0 and tok.stat().st_mode & 0o777 == 0o600
    assert collector["c"].store.device_for(tok.read_text().strip()) == "car-cli"
    code, _, err = run_cli(["collect", "device", "add", "bad id!", "--store", store], capsys)
    assert code == 2 and err.count("\n") == 1 and "device id" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: x, query: a dog, threshold: 2}]\nbackground: [a photo]\n")
    code, _, err = run_cli(["collect", "campaign", "push", str(bad), "--store", store], capsys)
    assert code == 2 and "threshold must be in" in err and err.count("\n") == 1
    photo = sorted(Path(shapes["test"]).rglob("*.jpg"))[0]
    meta = {"key": "cli-event-0001", "rule": "r", "query": "a star", "background": ["a photo"]}
    r = httpx.post(
        f"{collector['url']}/api/events",
        headers={"Authorization": f"Bearer {tok.read_text().strip()}", "Idempotency-Key": meta["key"]},
        data={"meta": json.dumps(meta)},
        files={"file": (photo.name, photo.read_bytes())},
    )
    assert r.status_code in (200, 201) and collector["c"].rescorer.wait_idle(60)
    code, out, _ = run_cli(["collect", "stats", "--store", store], capsys)
    assert code == 0 and json.loads(out)["per_device"]["car-cli"] == 1
    code, out, _ = run_cli(
        ["collect", "search", "a star", "--store", store, "--teacher", tiny_teacher, "--k", "3"], capsys
    )
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and 1 <= len(rows) <= 3 and all(r["similarity"] is not None for r in rows)
    code, _, err = run_cli(["collect", "stats", "--store", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no collection at" in err


def test_a_wrong_collector_address_keeps_events_waiting(collector, tmp_path):
    """A 404 (a typo in --upload) is a fixable mistake, not the collector refusing the event: it stays in the
    outbox and is retried, never set aside."""
    token = _device(collector, "car-typo")
    link = FleetLink(tmp_path / "ob", collector["url"] + "/typo", "car-typo", token, max_bytes=10**7, poll=60,
                     log=lambda s: None, backoff=0.05, max_backoff=0.1)  # fmt: skip
    link.start()
    link.sink({"key": "typo-event-0001", "rule": "r"}, b"\xff\xd8jpeg")
    time.sleep(1.0)
    out = link.close(drain=0.5)
    assert out["pending"] == 1 and out["rejected"] == 0 and out["failures"] >= 2 and not out["drained"]
