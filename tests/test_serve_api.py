"""`edgeclip serve`: the HTTP API over a real uvicorn server on loopback, bad requests, and the load test."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from edgeclip.runtime import Labeler
from edgeclip.serve.app import create_app
from edgeclip.serve.loadtest import load_test
from test_export_fixtures import SHAPE_LABELS, bundle_for_tests, running_server

LIMIT = 200_000
TOKEN = "test-token-1234"


@pytest.fixture(scope="module")
def tb(tmp_path_factory, tiny_teacher, shapes):
    return bundle_for_tests(tmp_path_factory, tiny_teacher, shapes)


@pytest.fixture(scope="module")
def server(tb):
    with running_server(create_app(tb["bundle"], max_upload_bytes=LIMIT, threads=1, token=TOKEN)) as url:
        yield url


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server, timeout=60, headers={"X-Edgeclip-Token": TOKEN}) as c:
        yield c
        c.put("/api/labels", json={"labels": SHAPE_LABELS})  # leave the server as the next test expects it


def test_label_matches_runtime(tb, client):
    img = tb["images"][3]
    r = client.post("/label", files={"file": (img.name, img.read_bytes(), "image/jpeg")}, data={"topk": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = Labeler(tb["bundle"]).label(img, topk=3)
    assert [x["label"] for x in body["labels"]] == [x["label"] for x in direct]
    assert np.allclose([x["score"] for x in body["labels"]], [x["score"] for x in direct], atol=1e-5)
    assert body["image"] == img.name and body["model"].endswith(":int8")
    # a per-request label subset
    r = client.post("/label", files={"file": (img.name, img.read_bytes())}, data={"labels": "star, ring"})
    assert {x["label"] for x in r.json()["labels"]} == {"star", "ring"}
    # topk as a query parameter, and a form field over it
    r = client.post("/label?topk=2", files={"file": (img.name, img.read_bytes())})
    assert r.status_code == 200 and len(r.json()["labels"]) == 2
    r = client.post("/label?topk=2", files={"file": (img.name, img.read_bytes())}, data={"topk": "1"})
    assert len(r.json()["labels"]) == 1
    # a free-text label on a bundle without a text tower: one clear 400
    r = client.post("/label", files={"file": (img.name, img.read_bytes())}, data={"labels": "a red bus"})
    assert r.status_code == 400 and "no text encoder" in r.text
    # PNG with alpha is fine too
    buf = io.BytesIO()
    Image.new("RGBA", (50, 30), (255, 0, 0, 128)).save(buf, "PNG")
    assert client.post("/label", files={"file": ("a.png", buf.getvalue())}).status_code == 200


@pytest.mark.parametrize(
    "files,data,status,needle",
    [
        ({"file": ("notes.txt", b"just some text", "text/plain")}, {}, 415, "not a readable image"),
        ({"file": ("empty.jpg", b"", "image/jpeg")}, {}, 400, "empty upload"),
        (None, {}, 422, "file"),
        ({"file": ("x.jpg", b"x" * (LIMIT + 100 * 1024))}, {}, 413, "too large"),
        (
            {"file": ("x.jpg", b"x" * (LIMIT + 10))},
            {},
            413,
            "too large",
        ),  # under the framing allowance: read check
        ("IMG", {"topk": "lots"}, 422, "topk"),
        ("IMG", {"topk": "0"}, 422, "topk"),
        ("IMG", {"labels": "zebra"}, 400, "no embedding"),
        ("IMG", {"labels": " , "}, 400, "empty"),
    ],
)
def test_bad_requests_get_json_4xx(tb, client, files, data, status, needle):
    if files == "IMG":
        files = {"file": ("ok.jpg", tb["images"][0].read_bytes())}
    r = client.post("/label", files=files, data=data)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert client.get("/api/info").status_code == 200  # still alive


def test_truncated_image_and_caption_on_a_labeler(tb, client):
    raw = tb["images"][0].read_bytes()
    r = client.post("/label", files={"file": ("cut.jpg", raw[: len(raw) // 2])})
    assert r.status_code == 415 and "cut.jpg" in r.json()["error"]
    r = client.post("/caption", files={"file": ("ok.jpg", raw)})
    assert r.status_code == 404 and "captioner" in r.json()["error"]
    assert client.get("/no/such/page").json() == {"error": "Not Found"}
    r = client.post(
        "/label", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_edit_labels(tb, client):
    info = client.get("/api/info").json()
    assert info["labels"] == SHAPE_LABELS and info["can_add_free_text_labels"] is False
    r = client.put("/api/labels", json={"labels": ["ring", "circle"]})
    assert r.status_code == 200 and r.json()["labels"] == ["ring", "circle"]
    out = client.post("/label", files={"file": ("a.jpg", tb["images"][0].read_bytes())}).json()
    assert {x["label"] for x in out["labels"]} == {"ring", "circle"}
    r = client.put("/api/labels", json={"labels": ["zebra"]})
    assert r.status_code == 400 and "text encoder" in r.json()["error"]
    r = client.put("/api/labels", json={"nope": 1})
    assert r.status_code == 422
    dim = info["embed_dim"]
    r = client.post(
        "/api/labels/embeddings", json={"labels": ["zebra"], "embeddings": [[1.0] + [0.0] * (dim - 1)]}
    )
    assert r.status_code == 200 and r.json()["labels"] == ["ring", "circle", "zebra"]
    r = client.post("/api/labels/embeddings", json={"labels": ["bad"], "embeddings": [[1.0, 2.0]]})
    assert r.status_code == 400 and str(dim) in r.json()["error"]
    assert "zebra" in client.get("/api/labels").json()["known"]


def test_text_encoder_adds_free_text_labels(tb):
    """With a text encoder (here the teacher's real text tower), the page can add any label."""
    from edgeclip.cli.bundle import _text_encoder

    enc = _text_encoder(tb["bundle"], tb["teacher"])
    app = create_app(tb["bundle"], text_encoder=enc)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.put("/api/labels", json={"labels": ["circle", "hexagon"]})
        assert r.status_code == 200 and r.json()["labels"] == ["circle", "hexagon"]
        got = app.state.model.known.subset(["hexagon"]).embeddings[0]
        assert np.abs(got - enc(["hexagon"])[0]).max() < 1e-6


def test_load_test_200_requests_16_concurrent(tb, server, capsys):
    res = load_test(server, tb["images"][0].read_bytes(), requests=200, concurrency=16)
    with capsys.disabled():  # reported in every test run, not only with -s
        print(
            f"\nload test: {res['requests']} requests, {res['concurrency']} concurrent, errors {res['errors']}, "
            f"p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms, {res['requests_per_s']:.1f} req/s"
        )
    assert res["errors"] == 0, res["error_examples"]
    assert 0 < res["p50_ms"] <= res["p95_ms"] <= res["max_ms"]
    with pytest.raises(Exception, match="loopback"):
        load_test("http://192.0.2.1:80", b"x", requests=1)


def test_caption_route_serves_a_registered_captioner_kind(tb, tmp_path):
    """POST /caption works for any bundle kind registered in edgeclip.runtime.RUNTIMES that can caption."""
    import json
    import shutil

    from edgeclip.runtime import RUNTIMES

    class TopLabelCaptioner(Labeler):
        """Captions an image with its best label in a sentence (a real, if plain, captioner over the labeler)."""

        kind = "top-label-captioner"

        def caption(self, image) -> str:
            return f"a picture of a {self.label(image, topk=1)[0]['label']}"

    if "top-label-captioner" not in RUNTIMES:
        RUNTIMES.register("top-label-captioner")(TopLabelCaptioner)
    b = tmp_path / "cap"
    shutil.copytree(tb["bundle"], b)
    man = json.loads((b / "manifest.json").read_text())
    man["kind"] = "top-label-captioner"
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(Exception, match="not a 'labeler'"):
        Labeler(b)
    with running_server(create_app(b)) as url, httpx.Client(base_url=url, timeout=60) as c:
        img = tb["images"][5]
        r = c.post("/caption", files={"file": (img.name, img.read_bytes())})
        assert r.status_code == 200, r.text
        best = Labeler(tb["bundle"]).label(img, topk=1)[0]["label"]
        assert r.json()["caption"] == f"a picture of a {best}"
        assert c.get("/api/info").json()["caption"] is True


def test_decompression_bombs_are_refused_from_the_header(client):
    """A 48 KB PNG claiming 20000 x 20000 pixels: 415 from its header (16 Mpx server budget), never decoded,
    also when several arrive at once; the server keeps answering."""
    from concurrent.futures import ThreadPoolExecutor

    from test_data import _bomb_png

    bomb = _bomb_png(20000, 20000)

    def post(_):
        return client.post("/label", files={"file": ("bomb.png", bomb, "image/png")})

    with ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(post, range(4)))
    assert all(r.status_code == 415 and "over the pixel budget of 16 Mpx" in r.json()["error"] for r in rs), (
        rs[0].text
    )
    ok = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(ok, "JPEG")
    assert client.post("/label", files={"file": ("ok.jpg", ok.getvalue())}).status_code == 200


def test_chunked_bodies_are_limited_as_they_stream(server):
    """No Content-Length (chunked): the body is counted as it arrives and the app gets no more of it past the
    limit (413 from the streaming limit, not after spooling the upload), for uploads and JSON."""
    sent = {"n": 0}

    def chunks(total, head=b""):
        if head:
            yield head
        block = b"0" * 65536
        while sent["n"] < total:
            sent["n"] += len(block)
            yield block

    with httpx.Client(base_url=server, timeout=60) as c:
        boundary = "edgeclipboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        r = c.post(
            "/label",
            content=chunks(50 * 2**20, head),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 413 and "the server reads no more" in r.json()["error"], r.text
        sent["n"] = 0
        r = c.put(
            "/api/labels",
            content=chunks(60 * 2**20, b'{"labels": ["'),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        assert c.get("/api/info").status_code == 200


def test_label_edits_need_the_token_and_bundle_labels_are_protected(server, tb):
    dim = Labeler(tb["bundle"]).embed_dim
    with httpx.Client(base_url=server, timeout=60) as anon:
        r = anon.put("/api/labels", json={"labels": ["ring"]})
        assert r.status_code == 401 and "needs the server's token" in r.json()["error"]
        r = anon.put("/api/labels", json={"labels": ["ring"]}, headers={"X-Edgeclip-Token": "wrong"})
        assert r.status_code == 401
        assert anon.post("/label", files={"file": ("x.jpg", tb["images"][0].read_bytes())}).status_code == 200
        # DNS rebinding: a request naming another host is refused
        assert anon.get("/api/info", headers={"Host": "evil.example"}).status_code == 400
    with httpx.Client(base_url=server, timeout=60, headers={"X-Edgeclip-Token": TOKEN}) as c:
        vec = [[1.0] + [0.0] * (dim - 1)]
        r = c.post("/api/labels/embeddings", json={"labels": ["circle"], "embeddings": vec})
        assert r.status_code == 400 and "came with the bundle" in r.json()["error"]
        r = c.post("/api/labels/embeddings", json={"labels": ["circle"], "embeddings": vec, "replace": True})
        assert r.status_code == 200
        # one cap on all labels, checked before anything is cleaned or stored
        r = c.put("/api/labels", json={"labels": ["x"] * 10_001})
        assert r.status_code == 400 and "too many labels (10001; at most 10000)" in r.json()["error"]
        c.put("/api/labels", json={"labels": SHAPE_LABELS})


def test_read_only_server(tb):
    with running_server(create_app(tb["bundle"], threads=1, read_only=True)) as url:
        r = httpx.put(f"{url}/api/labels", json={"labels": ["ring"]})
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert httpx.get(f"{url}/api/info").json()["labels_editable"] is False


def test_labeler_keeps_one_cap_over_repeated_adds(tb):
    from edgeclip.core.errors import EdgeClipError
    from edgeclip.core.prompts import MAX_LABELS

    lab = Labeler(tb["bundle"])
    rng = np.random.default_rng(0)
    n0 = len(lab.known.names)
    lab.add_labels(
        [f"l{i}" for i in range(MAX_LABELS - n0)], rng.standard_normal((MAX_LABELS - n0, lab.embed_dim))
    )
    with pytest.raises(EdgeClipError, match="too many labels"):
        lab.add_labels(["one more"], rng.standard_normal((1, lab.embed_dim)))


def test_a_stalled_body_is_cut_off(tb):
    """A client that sends a few bytes of its body and then nothing: 408 after the body timeout."""
    import socket
    import time
    from urllib.parse import urlparse

    with running_server(create_app(tb["bundle"], threads=1, body_timeout=1.0)) as url:
        u = urlparse(url)
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        head = b"PUT /api/labels HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{'lab\r\n")  # then silence
        t0 = time.time()
        reply = b""
        while b"stalled" not in reply:  # headers and body may come in separate packets on a busy machine
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode(errors="replace")
        s.close()
        assert reply.startswith("HTTP/1.1 408") and "stalled for 1 s" in reply and time.time() - t0 < 8


def test_a_trickling_body_is_cut_off_at_its_deadline(tb):
    """A client that sends its body a byte at a time, each within the stall timeout: 408 once the whole body has
    taken longer than the body deadline."""
    import socket
    import time
    from urllib.parse import urlparse

    with running_server(create_app(tb["bundle"], threads=1, body_timeout=1.0, body_deadline=2.0)) as url:
        u = urlparse(url)
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        s.sendall(
            b"PUT /api/labels HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        s.settimeout(0.4)
        reply = b""
        t0 = time.time()
        while time.time() - t0 < 10 and b"took over" not in reply:
            try:
                s.sendall(b" ")
            except OSError:
                pass
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            except TimeoutError:
                pass
        s.close()
        text = reply.decode(errors="replace")
        assert text.startswith("HTTP/1.1 408") and "took over 2 s" in text, text


def test_a_label_from_example_images(server, tb):
    """POST /api/labels/examples: the token, one-line errors for a non-image, then the label ranks first for its
    own example."""
    img = tb["images"][5]
    with httpx.Client(base_url=server, timeout=60) as anon:
        r = anon.post(
            "/api/labels/examples", data={"name": "like five"}, files={"file": (img.name, img.read_bytes())}
        )
        assert r.status_code in (401, 403) and "token" in r.json()["error"]
    with httpx.Client(base_url=server, timeout=60, headers={"X-Edgeclip-Token": TOKEN}) as c:
        r = c.post("/api/labels/examples", data={"name": "bad"}, files={"file": ("x.jpg", b"not an image")})
        assert r.status_code == 415 and "\n" not in r.json()["error"]
        files = [("file", (img.name, img.read_bytes())), ("file", (img.name, img.read_bytes()))]
        r = c.post("/api/labels/examples", data={"name": "  like   five "}, files=files)
        assert r.status_code == 200 and r.json()["added"] == "like five" and r.json()["examples"] == 2
        top = c.post("/label", files={"file": (img.name, img.read_bytes())}).json()["labels"][0]
        assert top["label"] == "like five" and top["cosine"] > 0.999
        c.put("/api/labels", json={"labels": SHAPE_LABELS})


def test_cli_label_with_example_images(tb, tmp_path, capsys):
    from edgeclip.cli import main

    a, b = tb["images"][1], tb["images"][2]
    main(
        [
            "label",
            str(a),
            "--bundle",
            str(tb["bundle"]),
            "--labels",
            SHAPE_LABELS[0],
            "--example",
            f"mine={a},{b}",
        ]
    )
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(row["labels"]) == {SHAPE_LABELS[0], "mine"}
    with pytest.raises(SystemExit) as e:
        main(["label", str(a), "--bundle", str(tb["bundle"]), "--example", "mine"])
    assert e.value.code == 2 and "LABEL=image1.jpg" in capsys.readouterr().err


def test_held_connections_neither_starve_requests_nor_stay_open(tb, server):
    """200 clients that send half a request head and wait: a normal /label is still answered within 2 s, and the
    held connections are closed within 15 s (a request head is due within 10 s)."""
    import socket
    import time
    from urllib.parse import urlsplit

    u = urlsplit(server)
    held = []
    try:
        for _ in range(200):
            s = socket.create_connection((u.hostname, u.port), timeout=5)
            s.sendall(b"POST /label HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data")
            held.append(s)
        img = tb["images"][0]
        t0 = time.perf_counter()
        r = httpx.post(f"{server}/label", files={"file": (img.name, img.read_bytes())}, timeout=10)
        took = time.perf_counter() - t0
        assert r.status_code == 200 and took < 2.0, (r.status_code, took)
        deadline = time.time() + 15
        open_ = list(held)
        while open_ and time.time() < deadline:
            for s in list(open_):
                s.settimeout(0.05)
                try:
                    if s.recv(1) == b"":
                        open_.remove(s)
                except TimeoutError:
                    pass
                except OSError:
                    open_.remove(s)
        assert not open_, f"{len(open_)} of 200 held connections still open after 15 s"
    finally:
        for s in held:
            s.close()
