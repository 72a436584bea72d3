"""The gallery page in a real headless browser (Debian's chromium, driven by Playwright).

Checks that the page loads, that a grid of the requested size renders from the API, that
another seed gives other images, and that a wrong token shows the 401 message. The token is
kept in sessionStorage, never in the URL. Skipped, with the reason, where no browser is installed.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from serve_fixtures import K, TOKEN, ckpts, service  # noqa: F401  (fixtures)

if not hasattr(sys.modules.get("conftest"), "ray_session"):  # until conftest provides it
    from ray_fixtures import ray_session  # noqa: F401

CHROMIUM = os.environ.get("GANAUG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the `test` extra")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _base(service) -> str:
    return str(service.base_url).rstrip("/")


def _grid(page) -> list[list[str]]:
    return page.eval_on_selector_all("#grid .row", "rows => rows.map(r => [...r.querySelectorAll('img')]"
                                                    ".map(i => i.src))")


def test_gallery_draws_a_grid_from_the_api(service, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(_base(service) + "/gallery")
    assert page.title() == "ganaug gallery"
    page.fill("#token", TOKEN)
    page.click("#save-token")
    expect(page.locator("#model option")).to_have_count(2)  # the noise models: cgan, dcgan
    assert "token" not in page.url.lower() and TOKEN not in page.url
    assert page.evaluate("sessionStorage.getItem('ganaug-token')") == TOKEN
    page.select_option("#model", "cgan")
    page.select_option("#class", "all")
    page.fill("#count", "3")
    page.fill("#seed", "7")
    page.click("#draw")
    expect(page.locator("#grid img")).to_have_count(3 * K)
    first = _grid(page)
    assert len(first) == K and all(len(row) == 3 for row in first)
    assert all(src.startswith("data:image/png;base64,") for row in first for src in row)
    # The images are those of the API for that seed and label.
    import httpx

    ans = httpx.post(_base(service) + "/v1/models/cgan/samples", headers={"Authorization": f"Bearer {TOKEN}"},
                     json={"n": 3, "label": 2, "seed": 7, "truncation": 1.0}).json()
    assert first[2] == ["data:image/png;base64," + im["data"] for im in ans["images"]]

    page.fill("#seed", "8")
    page.click("#draw")
    expect(page.locator("#status")).to_contain_text("seed 8")
    second = _grid(page)
    assert len(second) == K and second != first and second[0][0] != first[0][0]

    # One class; then the download is one PNG of the grid.
    page.select_option("#class", "4")
    page.click("#draw")
    expect(page.locator("#grid .row")).to_have_count(1)
    with page.expect_download() as dl:
        page.click("#download")
    path = dl.value.path()
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (3 * 17 + 1, 17 + 1)  # 3 tiles of 16 px, 1 px borders
    if os.environ.get("GANAUG_GALLERY_SCREENSHOT"):
        page.select_option("#class", "all")
        page.click("#draw")
        expect(page.locator("#grid .row")).to_have_count(K)
        page.screenshot(path=os.environ["GANAUG_GALLERY_SCREENSHOT"], full_page=True)
    page.close()


def test_gallery_shows_the_401_message_for_a_wrong_token(service, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(_base(service) + "/gallery")
    page.fill("#token", "not-the-token")
    page.click("#save-token")
    expect(page.locator("#status")).to_contain_text("401")
    assert "token is missing or wrong" in page.text_content("#status")
    assert page.get_attribute("#status", "class") == "error"
    assert page.eval_on_selector_all("#grid img", "imgs => imgs.length") == 0
    page.close()
