"""The book: its generated pages, and the built site in a real browser with the network off.

The first tests check the pages `utils/book.py` generates (fast, always run). The rest need the
built book (`make book`, which executes every chapter) and Debian's chromium and chromedriver:
they run under `make book-test`, which sets WORKBOOK_BOOK_TEST=1 and turns a missing book or
browser into a failure; otherwise they are skipped, so `make test` stays within its budget.

In the browser, every page is served from 127.0.0.1 and everything else is unreachable (host
names do not resolve, other addresses go to a dead proxy). Each page must load with no failed or
off-site request and no console error; every plotly figure must have drawn its marks, every
circuitsvis view must have rendered and painted its canvases, and the maths must have typeset.
A full-page screenshot of every chapter goes to book/_build/screenshots/.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from utils.book import FINGERPRINT_TAG, chapter_header, code_fingerprint, generated_pages
from utils.build import ROOT, chapter_sources, exercise_headings
from utils.launch import badges_markdown

BOOK = ROOT / "book"
SITE = BOOK / "_build" / "html"
SCREENSHOTS = BOOK / "_build" / "screenshots"
REQUIRED = os.environ.get("WORKBOOK_BOOK_TEST") == "1"


# --- the generated pages --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pages() -> dict[Path, str]:
    return generated_pages()


@pytest.mark.parametrize("source", chapter_sources(), ids=lambda p: p.stem)
def test_overview_lists_objectives_time_and_exercises(source, pages):
    page = pages[BOOK / "overview" / f"{source.stem}.md"]
    header = chapter_header(source)
    assert page.startswith(f"# {header['title']}, at a glance")
    assert header["time"] and f"**Time:** {header['time']}" in page
    assert header["objectives"] and header["objectives"] in page
    exercises = exercise_headings(source)
    assert exercises, f"{source.name} declares no exercise"
    for exercise in exercises:
        assert f"| {exercise['id']} | {exercise['title']} | {exercise['difficulty']}/3" in page
        assert f"| {exercise['minutes']} |" in page
    assert f"{sum(int(e['minutes']) for e in exercises)} minutes" in page


def test_the_book_has_every_chapter_with_its_overview(pages):
    toc = yaml.safe_load(pages[BOOK / "_toc.yml"])
    entries = toc["parts"][0]["chapters"]
    assert [e["file"] for e in entries] == [f"overview/{s.stem}" for s in chapter_sources()]
    assert [e["sections"][0]["file"] for e in entries] == [f"chapters/{s.stem}" for s in chapter_sources()]
    for source in chapter_sources():
        assert f"<overview/{source.stem}>" in pages[BOOK / "_generated" / "chapters.md"]


@pytest.mark.parametrize("source", chapter_sources(), ids=lambda p: p.stem)
def test_book_chapters_are_the_solutions_with_local_badges_and_a_fingerprint(source, pages):
    book = json.loads(pages[BOOK / "chapters" / f"{source.stem}.ipynb"])
    solution = json.loads((ROOT / "solutions" / f"{source.stem}.ipynb").read_text(encoding="utf-8"))
    marker, cells = book["cells"][0], book["cells"][1:]
    assert marker["metadata"]["tags"] == [FINGERPRINT_TAG] and code_fingerprint() in "".join(marker["source"])
    assert [c["source"] for c in cells[1:]] == [c["source"] for c in solution["cells"][1:]]
    first = "".join(cells[0]["source"])
    assert badges_markdown(f"solutions/{source.stem}.ipynb") not in first
    assert "(../_static/badges/colab.svg)" in first and "(../_static/badges/binder.svg)" in first
    assert not re.search(r"!\[[^\]]*\]\(https?://", json.dumps(book)), "an image would load from the network"


def test_the_fingerprint_follows_utils_and_the_model(tmp_path):
    (tmp_path / "utils" / "organism" / "model").mkdir(parents=True)
    (tmp_path / "utils" / "models.py").write_text("A = 1\n")
    (tmp_path / "utils" / "organism" / "model" / "config.json").write_text("{}\n")
    before = code_fingerprint(tmp_path)
    (tmp_path / "utils" / "organism" / "model" / "config.json").write_text('{"n_layers": 4}\n')
    assert code_fingerprint(tmp_path) != before


# --- the built site -------------------------------------------------------------------------------

def built_pages() -> list[str]:
    """Pages of the built book to open: the introduction, then each chapter's overview and chapter."""
    if not (SITE / "intro.html").is_file():
        return []
    chapters = sorted(p.stem for p in (SITE / "chapters").glob("*.html"))
    return ["intro.html"] + [page for stem in chapters for page in (f"overview/{stem}.html", f"chapters/{stem}.html")]


def need_built_book() -> None:
    if not built_pages():
        (pytest.fail if REQUIRED else pytest.skip)("the book is not built: run `make book-test`")


def test_every_chapter_of_the_book_was_built():
    need_built_book()
    wanted = sorted(p.stem for p in (BOOK / "chapters").glob("*.ipynb"))
    assert sorted(p.stem for p in (SITE / "chapters").glob("*.html")) == wanted


def test_no_chapter_page_shows_a_frozen_progress_bar():
    """The build hides progress bars (TQDM_DISABLE=1): a page can only show a bar's first frame."""
    need_built_book()
    for page in (SITE / "chapters").glob("*.html"):
        html = page.read_text(encoding="utf-8")
        # A tqdm frame: "name:  40%|####  | 2/5 [...". The context around "40%|" is bounded: an
        # unbounded [^>\n]* backtracks quadratically through a long line of figure data (minutes).
        bars = re.findall(r"[^>\n]{0,80}\d+%\|[^<\n]{0,80}", html)
        assert not bars, f"{page.name} shows a progress bar: {bars[:2]}"


REMOTE = re.compile(r'<(?:script|img|link|iframe|source)\b[^>]*?\s(?:src|href)="((?:https?:)?//[^"]*)"')


def test_no_built_page_loads_anything_from_the_network():
    need_built_book()
    for page in SITE.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        remote = [url for url in REMOTE.findall(html)]
        assert not remote, f"{page.relative_to(SITE)} loads {remote[:3]}"


# --- in the browser -------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars",
    # With no GPU, WebGL is emulated on the CPU, and circuitsvis's tensor library then takes ~40 s to
    # start per view; without WebGL it computes on the CPU directly. Its views draw on 2D canvases.
    "--disable-3d-apis",
    # The network is off: no host name resolves, and anything not on loopback goes to a closed port.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """Just enough of the W3C WebDriver protocol (and chromedriver's log and CDP endpoints)."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.process = subprocess.Popen([shutil.which("chromedriver"), f"--port={self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.2)
        options = {"binary": shutil.which("chromium"), "args": CHROMIUM_FLAGS + [f"--user-data-dir={tmp}"],
                   "perfLoggingPrefs": {"enableNetwork": True, "enablePage": False}}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options, "pageLoadStrategy": "normal",
                        "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"}}
        self.session = "/session/" + self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]
        self.call("POST", self.session + "/timeouts", {"pageLoad": 300_000, "script": 120_000})

    def call(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=400) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path}: {error.read()[:2000]!r}") from None

    def open(self, url: str) -> None:
        self.call("POST", self.session + "/url", {"url": url})

    def run(self, script: str):
        return self.call("POST", self.session + "/execute/sync", {"script": script, "args": []})

    def logs(self, kind: str) -> list[dict]:
        return self.call("POST", self.session + "/se/log", {"type": kind})

    def cdp(self, command: str, **params):
        return self.call("POST", self.session + "/goog/cdp/execute", {"cmd": command, "params": params})

    def screenshot(self, path: Path) -> None:
        """The whole page: the viewport is made as tall as the page, and the figures (which redraw
        when the window changes size) get two seconds to settle before the picture is taken."""
        width, height = self.run("window.scrollTo(0, 0); return [window.innerWidth, document.documentElement.scrollHeight]")
        self.cdp("Emulation.setDeviceMetricsOverride", width=width, height=min(height, 16000), deviceScaleFactor=1, mobile=False)
        try:
            time.sleep(2)
            shot = self.cdp("Page.captureScreenshot", format="png")
        finally:
            self.cdp("Emulation.clearDeviceMetricsOverride")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def quit(self) -> None:
        try:
            self.call("DELETE", self.session)
        finally:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def site():
    need_built_book()
    handler = functools.partial(QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        (pytest.fail if REQUIRED else pytest.skip)("needs chromium and chromedriver: `make chromium`")
    if not REQUIRED:
        pytest.skip("the browser test runs under `make book-test`")
    driver = WebDriver(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


# What drew, polled until it settles. Plotly: the figure div is initialised and its plot area holds
# visible marks (bars, lines, heatmap images in its trace layers). circuitsvis: the React view rendered elements, and every
# canvas in it has painted pixels. MathJax: typeset, every formula has a size, none is an error.
STATE = """
const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
const painted = canvas => {
  if (!canvas.width || !canvas.height) return 0;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && (data[i] < 245 || data[i + 1] < 245 || data[i + 2] < 245)) n++;
  return n / (canvas.width * canvas.height);
};
const plots = [...document.querySelectorAll('.plotly-graph-div')].map(div => ({
  id: div.id,
  ready: div.classList.contains('js-plotly-plot') && !!div._fullLayout && !!div.querySelector('svg.main-svg'),
  marks: [...div.querySelectorAll('.mlayer path, .mlayer image, .mlayer rect')].filter(visible).length,
}));
const views = [...document.querySelectorAll('div[id^="circuits-vis-"], div[id^="wb-attention-"]')].map(div => ({
  id: div.id,
  elements: div.querySelectorAll('*').length,
  visible: visible(div),
  canvases: [...div.querySelectorAll('canvas')].filter(visible).map(painted),
  svgs: [...div.querySelectorAll('svg')].filter(svg => visible(svg) && svg.querySelectorAll('*').length > 0).length,
}));
const formulas = [...document.querySelectorAll('mjx-container')];
return {
  plots, views,
  math: {sources: document.querySelectorAll('.math').length, typeset: formulas.filter(visible).length,
         errors: document.querySelectorAll('mjx-merror').length},
  ready: document.readyState,
};
"""


def settled(state: dict) -> bool:
    return (state["ready"] == "complete" and all(p["ready"] and p["marks"] for p in state["plots"])
            and all(v["elements"] > 3 and (v["canvases"] or v["svgs"]) for v in state["views"])
            and (state["math"]["sources"] == 0 or state["math"]["typeset"] >= state["math"]["sources"]))


def requests_and_failures(performance: list[dict], site: str) -> tuple[list[str], list[str]]:
    """The URLs the page requested and those that failed. Requests of the browser's own pages (its
    new-tab page, say) are not the page's and are left out."""
    urls, failures = {}, []
    for entry in performance:
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent" and params.get("documentURL", "").startswith(site):
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params["requestId"] in urls and not params.get("canceled"):
            failures.append(f"{urls[params['requestId']]}: {params.get('errorText')}")
        elif (message["method"] == "Network.responseReceived" and params["requestId"] in urls
              and params["response"]["status"] >= 400):
            failures.append(f"{params['response']['url']}: HTTP {params['response']['status']}")
    return list(urls.values()), failures


SEEN: dict[str, dict] = {}


@pytest.mark.parametrize("page", built_pages() or ["(book not built)"])
def test_page_draws_offline(page, site, browser):
    browser.logs("browser"), browser.logs("performance")  # start from empty logs
    browser.open(site + page)
    deadline = time.monotonic() + 120
    while not settled(state := browser.run(STATE)) and time.monotonic() < deadline:
        time.sleep(0.5)
    requests, failures = requests_and_failures(browser.logs("performance"), site)
    errors = [entry["message"] for entry in browser.logs("browser") if entry["level"] == "SEVERE"]
    if page.startswith("chapters/") or page == "intro.html":
        browser.screenshot(SCREENSHOTS / (Path(page).stem + ".png"))
    SEEN[page] = state
    # chrome:// and the like are the browser's own pages; data: and blob: never leave the page.
    off_site = [url for url in requests if re.match(r"(https?|wss?|ftp|file)://", url) and not url.startswith(site)]
    assert not off_site, f"requests off the site: {off_site[:5]}"
    assert not failures, f"failed requests: {failures[:5]}"
    assert not errors, f"console errors: {errors[:5]}"
    assert all(p["ready"] and p["marks"] for p in state["plots"]), f"plotly figures that did not draw: {state['plots']}"
    for view in state["views"]:
        assert view["elements"] > 3 and view["visible"], f"circuitsvis view did not render: {view}"
        assert view["canvases"] or view["svgs"], f"circuitsvis view drew nothing: {view}"
        assert all(share > 0.001 for share in view["canvases"]), f"circuitsvis canvas left blank: {view}"
    math = state["math"]
    assert not math["errors"] and math["typeset"] >= math["sources"], f"maths did not typeset: {math}"


def test_the_book_shows_a_figure_an_attention_view_and_maths(site, browser):
    """Across the whole book: at least one plotly figure, one circuitsvis view and one formula drew."""
    if len(SEEN) < len(built_pages()):
        pytest.skip("needs every page opened by test_page_draws_offline first")
    assert sum(len(s["plots"]) for s in SEEN.values()) >= 1
    assert sum(len(s["views"]) for s in SEEN.values()) >= 1
    assert sum(s["math"]["typeset"] for s in SEEN.values()) >= 1
    assert (SCREENSHOTS / "intro.png").is_file()
    assert all((SCREENSHOTS / f"{Path(p).stem}.png").is_file() for p in SEEN if p.startswith("chapters/"))
