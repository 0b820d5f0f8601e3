"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright,
no browser download): log in, find the rescan slide, toggle a heatmap, retry a quarantined
slide and watch its state change.

Screenshots of every page go to test-artifacts/web/; with EDGE_SCREENSHOTS=1 they are also
written (palette PNGs, small) to docs/screenshots/ for the documentation (DOC_SHOTS).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edge.jobs import JobStore
from edge.outbox.schema import DATABASE
from edge.web import serve
from edge.web.app import users_path
from edge.web.auth import Users
from tests.conftest import REPO, need
from tests.web_state import build, daemon_config

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "web"
DOCS = REPO / "docs" / "screenshots"
DOC_SHOTS = ("overview", "slides", "slide-detail", "deep-zoom")  # the pages docs/dashboard.md shows
PASSWORD = "scanner-bench-1"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(Path(CHROMIUM).exists(), "chromium not installed (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright not installed (pip install playwright; no browser download)")
        raise
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("web-browser")
    ids = build(home)
    config = daemon_config(home)
    Users(users_path(config)).add("tech", "technician", PASSWORD)
    handle = serve(config, listen="127.0.0.1:0")
    try:
        yield {"url": handle.url, "ids": ids, "database": config.state_dir / DATABASE}
    finally:
        handle.stop()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("EDGE_SCREENSHOTS") == "1" and name in DOC_SHOTS:
        DOCS.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            small = image.convert("RGB")
            small.thumbnail((900, 900))
            if name == "deep-zoom":  # a photograph: JPEG is a tenth of a PNG
                small.save(DOCS / f"{name}.jpg", quality=80)
            else:
                small.quantize(64).save(DOCS / f"{name}.png", optimize=True)


def test_technician_flow(browser: Any, site: dict[str, Any]) -> None:
    started = time.time()
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    # CSP violations and failed loads show up as console errors.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    base = site["url"]

    page.goto(f"{base}/slides")
    assert page.url.startswith(f"{base}/login"), "pages need a login"
    shot(page, "login")
    page.fill("input[name=username]", "tech")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/slides")

    rescan = page.locator("li.slide.v-rescan")
    assert rescan.count() == 1
    assert "pen-kit.svs" in rescan.inner_text()
    badge = rescan.locator(".badge.rescan")
    assert badge.is_visible() and badge.inner_text() == "RESCAN"
    assert "pen marks" in rescan.locator(".reason").inner_text()
    # The badge is big and red: the technician sees it from the scanner.
    colour = badge.evaluate("e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(200, 16, 46)"
    thumb = rescan.locator(".thumb img")
    assert thumb.evaluate("img => img.complete && img.naturalWidth > 0")
    shot(page, "slides")

    page.goto(f"{base}/")
    assert "slides today" in page.inner_text("main")
    shot(page, "overview")

    page.click("text=pen-kit.svs")
    page.wait_for_url(f"{base}/slides/{site['ids']['pen-kit.svs']}")
    overlay = page.locator('img.overlay[data-class="pen"]')
    assert not overlay.is_visible(), "overlays start hidden"
    page.check('input[data-layer="pen"]')
    assert overlay.is_visible()
    overlay.evaluate("img => img.decode()")
    assert overlay.evaluate("img => img.naturalWidth") > 0
    page.fill("#opacity", "60")
    page.dispatch_event("#opacity", "input")
    assert overlay.evaluate("img => img.style.opacity") == "0.6"
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "slide-detail")
    page.uncheck('input[data-layer="pen"]')
    assert not overlay.is_visible()

    # Deep zoom: the DICOM levels as tiles; zooming in switches to finer levels.
    page.click("#zoom")
    page.wait_for_url(f"{base}/slides/{site['ids']['pen-kit.svs']}/view")
    viewer = page.locator("#deepzoom")
    page.wait_for_function("() => document.querySelectorAll('#deepzoom img.tile').length > 0")
    coarse = int(viewer.get_attribute("data-level") or "-1")
    for _ in range(2):
        page.click("#zoom-in")
    # The second plane holds the tiles of the level for this zoom (the first: the smallest).
    page.wait_for_function(
        "() => { const t = Array.from("
        "document.querySelectorAll('#deepzoom .plane:nth-child(2) img.tile'));"
        " return t.length > 0 && t.every(i => i.complete && i.naturalWidth > 0); }",
        timeout=15000,
    )
    fine = int(viewer.get_attribute("data-level") or "-1")
    assert fine < coarse, (coarse, fine)
    box = viewer.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 - 500, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "() => { const t = Array.from(document.querySelectorAll('#deepzoom img.tile'));"
        " return t.length > 0 && t.every(i => i.complete && i.naturalWidth > 0); }",
        timeout=15000,
    )
    # The pen heatmap over the zoomed slide: it spans the slide as the tiles do.
    page.check('input[data-zoom-layer="pen"]')
    heat = page.locator('#deepzoom img.heat[data-class="pen"]')
    page.wait_for_function(
        "() => { const i = document.querySelector('#deepzoom img.heat');"
        " return i && i.complete && i.naturalWidth > 0 && i.style.width !== ''; }"
    )
    plane = float(
        page.evaluate("() => parseFloat(document.querySelector('#deepzoom .plane').style.width)")
    )
    width = float(heat.evaluate("i => parseFloat(i.style.width)"))
    assert abs(width - plane) / plane < 0.01, (width, plane)
    shot(page, "deep-zoom")

    broken = site["ids"]["broken.svs"]
    page.goto(f"{base}/slides/{broken}")
    assert page.inner_text("#job-state") == "quarantined"
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss() if len(asked) == 1 else dialog.accept()

    page.on("dialog", answer)
    page.click("#retry")  # first time: the technician says no
    assert page.inner_text("#job-state") == "quarantined"
    page.click("#retry")
    page.wait_for_url(f"{base}/slides/{broken}?*")
    assert asked and "broken.svs" in asked[0], "every action asks first"
    assert page.inner_text("#job-state") == "queued"
    assert "Slide queued again" in page.inner_text(".notice")
    assert "web:retry" in page.inner_text("table.events")
    shot(page, "retried")
    # The daemon picks the slide up: the open page follows without a reload.
    with JobStore(site["database"]) as jobs:
        claimed = jobs.claim()
    assert claimed is not None and claimed.id == broken
    page.wait_for_function(
        "() => document.querySelector('#job-state').innerText.trim() === 'running'",
        timeout=15000,
    )

    page.goto(f"{base}/destinations")
    assert "local" in page.inner_text("main")
    shot(page, "destinations")
    page.goto(f"{base}/audit")
    assert "web:retry" in page.inner_text("main")
    shot(page, "audit")
    assert not problems, problems
    for name in ("login", "overview", "slides", "slide-detail", "deep-zoom", "destinations"):
        made = (ARTIFACTS / f"{name}.png").stat()
        assert made.st_size > 1000 and made.st_mtime >= started - 1, f"{name}: not from this run"
    context.close()


def test_small_touch_screen(browser: Any, site: dict[str, Any]) -> None:
    context = browser.new_context(
        viewport={"width": 480, "height": 800}, has_touch=True, is_mobile=True
    )
    page = context.new_page()
    page.goto(f"{site['url']}/login")
    page.fill("input[name=username]", "tech")
    page.fill("input[name=password]", PASSWORD)
    page.tap("button[type=submit]")
    page.wait_for_url(f"{site['url']}/")
    page.goto(f"{site['url']}/slides")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 480, f"no sideways scrolling on a small screen ({width} px wide)"
    for button in page.locator("nav a").all():
        assert button.bounding_box()["height"] >= 44, "touch targets at least 44 px"
    shot(page, "slides-small-screen")
    context.close()
