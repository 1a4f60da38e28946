"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright): upload, see labels,
edit them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from edgeclip.serve.app import create_app
from test_export_fixtures import SHAPE_LABELS, bundle_for_tests, running_server

CHROMIUM = os.environ.get("EDGECLIP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium is absent ({CHROMIUM}); install Debian's package: apt-get install -y chromium")
    pw_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip, dev extra) is not installed")
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_teacher, shapes):
    tb = bundle_for_tests(tmp_path_factory, tiny_teacher, shapes)
    with running_server(create_app(tb["bundle"], threads=1, token="page-token")) as url:
        yield tb, url


def _rows(page):
    page.wait_for_selector("#results li.result")
    names = page.locator("#results .label-name").all_inner_texts()
    scores = page.locator("#results .score").all_inner_texts()
    widths = page.locator("#results .bar").evaluate_all("els => els.map(e => parseFloat(e.style.width))")
    return names, scores, widths


def test_upload_shows_the_labels_of_the_api(site, browser, tmp_path):
    tb, url = site
    img = tb["images"][7]
    expected = httpx.post(
        f"{url}/label", files={"file": (img.name, img.read_bytes())}, data={"topk": "5"}
    ).json()
    page = browser.new_page()
    try:
        page.goto(url + "/#token=page-token")  # the address `edgeclip serve` prints
        page.wait_for_function("document.body.dataset.state === 'ready'")
        assert "shufflenet_v2_x0_5" in page.inner_text("#model-info")
        assert page.input_value("#labels").split("\n") == SHAPE_LABELS
        assert not page.is_visible("#more-like-this")  # nothing to find more of before an upload
        page.set_input_files("#file", str(img))
        page.wait_for_function("document.body.dataset.state === 'labeled'")
        names, scores, widths = _rows(page)
        assert names == [x["label"] for x in expected["labels"]]
        assert scores == [f"{100 * x['score']:.1f}%" for x in expected["labels"]]
        assert (
            widths == sorted(widths, reverse=True)
            and abs(widths[0] - 100 * expected["labels"][0]["score"]) < 0.1
        )
        assert page.is_visible("#preview") and not page.is_visible("#error")
        assert page.is_visible("#more-like-this")
        # a long label is shown whole (it was cut to one line with an ellipsis)
        long = "a very long free-text label that describes the picture in many more words than fit in a row"
        clipped = page.locator("#results .label-name").first.evaluate(
            f"e => {{ e.textContent = {long!r}; return e.scrollWidth > e.clientWidth + 1; }}"
        )
        assert not clipped
        page.screenshot(path=str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 1000

        # edit the label list: two labels only; the page labels the image again with them
        page.fill("#labels", "star\nring")
        page.click("#apply-labels")
        page.wait_for_function("document.querySelectorAll('#results li.result').length === 2")
        names, _, _ = _rows(page)
        assert sorted(names) == ["ring", "star"]
        assert httpx.get(f"{url}/api/labels").json()["labels"] == ["star", "ring"]

        # a label without an embedding: a clear error on the page, the server lives on
        page.fill("#labels", "star\nzebra")
        page.click("#apply-labels")
        page.wait_for_selector("#error:not([hidden])")
        assert "no embedding for 'zebra'" in page.inner_text("#error")
        page.click("#reset-labels")
        page.wait_for_function(
            f"document.querySelectorAll('#results li.result').length === {min(5, len(SHAPE_LABELS))}"
        )
    finally:
        page.close()


def test_non_image_upload_shows_the_error(site, browser, tmp_path):
    _, url = site
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image at all")
    page = browser.new_page()
    try:
        page.goto(url + "/")
        page.wait_for_function("document.body.dataset.state === 'ready'")
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.body.dataset.state === 'error'")
        assert "not a readable image" in page.inner_text("#error")
        assert page.locator("#results li").count() == 0
    finally:
        page.close()


def test_more_like_this_adds_a_label_from_the_shown_image(site, browser):
    """The page's "more like this": the shown image becomes the example of a new label, which then ranks first
    for that same image (its own embedding is the label's)."""
    tb, url = site
    img = tb["images"][3]
    page = browser.new_page()
    try:
        page.goto(url + "/#token=page-token")
        page.wait_for_function("document.body.dataset.state === 'ready'")
        page.set_input_files("#file", str(img))
        page.wait_for_function("document.body.dataset.state === 'labeled'")
        assert page.is_visible("#more-like-this")
        page.fill("#like-name", "my shape")
        page.click("#more-like-this")
        page.wait_for_function("document.querySelector('#labels-status').textContent.includes('my shape')")
        page.wait_for_function(
            "document.querySelector('#results .label-name') && "
            "document.querySelector('#results .label-name').textContent === 'my shape'"
        )
        assert "my shape" in httpx.get(f"{url}/api/labels").json()["labels"]
    finally:
        page.close()
        httpx.put(
            f"{url}/api/labels", json={"labels": SHAPE_LABELS}, headers={"X-Edgeclip-Token": "page-token"}
        )
