"""The MkDocs site: it builds with --strict, and its pages render in a real browser.

The site is built into a temporary folder, served on 127.0.0.1 by
``python -m http.server`` and opened in headless Chromium (``/usr/bin/chromium``,
driven by Playwright; no browser download). Requests to other hosts (the notebooks'
mermaid from a CDN; GitHub) are aborted, as if the reader were offline: the console
errors those aborted loads cause are the only ones tolerated. The math must render
all the same (KaTeX is served with the site), and the notebook pages must show the
figures saved in the notebooks.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

# (path, expected h1 text): the home page, a tutorial page, a notebook page, API pages.
PAGES = [
    ("", "keras-advcal"),
    ("tutorial-quickstart/", "Tutorial: quickstart"),
    ("method/", "The method"),
    ("objectives/", "Objectives: TRADES, MART, AWP and ADR"),
    ("notebooks/01_quickstart/", "Quickstart: adversarial training with calibrated soft targets"),
    ("label_noise/", "Label noise of adversarial examples"),
    ("api/trainer/", "Trainer and targets"),
    ("api/tuning/", "Tuning"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mkdocs_build(site_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Builds the site (strict) and serves it; yields ``(base_url, site_dir)``."""
    site_dir = tmp_path_factory.mktemp("site")
    started = time.perf_counter()
    build = _mkdocs_build(site_dir)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-5000:]}"
    print(f"mkdocs build --strict: {time.perf_counter() - started:.1f} s")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(site_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the static file server did not start")
                time.sleep(0.1)
        yield base, site_dir
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_site_has_every_page(site):
    _, site_dir = site
    for path, _ in PAGES:
        assert (site_dir / path / "index.html").is_file(), path
    for name in ("01_quickstart", "02_robust_overfitting", "03_keras_tuner",
                 "04_label_noise"):
        page = site_dir / "notebooks" / name / "index.html"
        assert page.is_file(), name
        # mkdocs-jupyter copies the notebook next to its page for download.
        assert (site_dir / "notebooks" / name / f"{name}.ipynb").is_file()
    assert (site_dir / "figures" / "targets.png").is_file()
    # The math renderer is part of the site, not a CDN's.
    katex = site_dir / "assets" / "katex"
    for name in ("katex.min.js", "katex.min.css", "auto-render.min.js"):
        assert (katex / name).is_file(), name
    assert len(list((katex / "fonts").glob("*.woff2"))) >= 10
    method = (site_dir / "method" / "index.html").read_text()
    assert "assets/katex/katex.min.js" in method and "mathjax" not in method.lower()
    assert not (site_dir / "hooks").exists()
    api = (site_dir / "api" / "tuning" / "index.html").read_text()
    assert "AdvCalHyperModel" in api
    assert "ClassifierCheckpoint" in (site_dir / "api" / "trainer" / "index.html").read_text()
    assert "measure_label_noise" in (site_dir / "api" / "analysis" / "index.html").read_text()


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("", "data", "blob", "about") or parsed.hostname in LOCAL_HOSTS


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                    "(Debian package `chromium`); the browser check needs it")
def test_pages_render_in_chromium(site, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed")
    base, _ = site
    problems: list[str] = []
    blocked: list[str] = []

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def route(request_route):
                url = request_route.request.url
                if _is_local(url):
                    request_route.continue_()
                else:
                    blocked.append(url)
                    request_route.abort()

            page.route("**/*", route)

            def on_console(message):
                if message.type != "error":
                    return
                text = message.text
                location = (message.location or {}).get("url", "")
                # "Failed to load resource" of an external URL that the route aborted.
                if location and not _is_local(location):
                    return
                problems.append(f"console error on {page.url}: {text} ({location})")

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(
                f"uncaught exception on {page.url}: {error}"))
            page.on("requestfailed", lambda request: None if not _is_local(request.url)
                    else problems.append(f"failed local request {request.url}"))
            page.on("response", lambda response: problems.append(
                f"HTTP {response.status} for {response.url}")
                if _is_local(response.url) and response.status >= 400 else None)

            for path, title in PAGES:
                page.goto(base + path, wait_until="load")
                heading = page.locator("article h1").first
                heading.wait_for(state="visible", timeout=30_000)
                text = heading.inner_text().strip().rstrip("¶").strip()
                assert text == title, f"{path}: h1 is {text!r}, expected {title!r}"
                assert page.title(), f"{path}: empty <title>"
                page.wait_for_timeout(200)  # let deferred scripts run and report
            # The search index loads (the search plugin's worker) and finds a page.
            with page.expect_response(lambda r: "search_index.json" in r.url,
                                      timeout=30_000):
                page.goto(base, wait_until="load")
            search = page.locator(".md-search__input")
            search.click()
            search.press_sequentially("calibrated", delay=50)
            page.locator(".md-search-result__item").first.wait_for(timeout=30_000)
            page.goto(base + "method/", wait_until="load")
            assert page.locator("img[src*='targets.png']").first.evaluate(
                "img => img.complete && img.naturalWidth > 0")
            # Math: typeset by the site's own KaTeX, offline; no raw TeX delimiters left.
            page.locator("article .katex").first.wait_for(timeout=30_000)
            assert page.locator("article .arithmatex .katex").count() == page.locator(
                "article .arithmatex").count() > 0
            assert page.locator("article .katex-error").count() == 0
            article = page.locator("article").inner_text()
            for delimiter in ("\\(", "\\)", "\\[", "\\]"):
                assert delimiter not in article, f"raw {delimiter} on the method page"
            page.screenshot(path=str(tmp_path / "method.png"), full_page=True)
            # A notebook page shows the figure saved in the notebook's outputs.
            page.goto(base + "notebooks/01_quickstart/", wait_until="load")
            figure = page.locator("article img[src^='data:image/png']").first
            figure.wait_for(timeout=30_000)
            assert figure.evaluate("img => img.complete && img.naturalWidth > 100")
            page.goto(base, wait_until="load")
            page.screenshot(path=str(tmp_path / "home.png"))
        finally:
            browser.close()

    assert (tmp_path / "home.png").stat().st_size > 0
    assert (tmp_path / "method.png").stat().st_size > 0
    assert not problems, "\n".join(problems)
    assert not [url for url in blocked if "katex" in url or "mathjax" in url], blocked


def test_readme_quick_start_is_what_the_timing_script_times():
    """The README states the quick start's measured time; the script that measures it
    runs the README's block, and its full-size variant still applies to that block."""
    import importlib.util

    path = ROOT / "tutorials" / "scripts" / "time_quickstart.py"
    spec = importlib.util.spec_from_file_location("time_quickstart", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    readme = (ROOT / "README.md").read_text()
    code = script.quick_start_code(readme)
    assert "epochs=5" in code and "subset=1000" in code
    compile(script.timed(code), "quick start", "exec")
    full = script.full_size(code, 2)
    assert "subset=5000" in full and "steps=10" in full and "epochs=2" in full
    compile(full, "full size", "exec")
    assert "tutorials/scripts/time_quickstart.py --full-epochs 2" in readme


def test_the_timing_script_times_autoattack_on_the_trained_classifier():
    """``--autoattack`` runs the standard cascade on the ``trainer.model`` and
    ``ds.test`` the quick start leaves: here a small untrained classifier."""
    import importlib.util
    import types

    import keras
    import numpy as np

    path = ROOT / "tutorials" / "scripts" / "time_quickstart.py"
    spec = importlib.util.spec_from_file_location("time_quickstart", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    x = np.random.default_rng(0).uniform(0, 1, (12, 6, 6, 1)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), axis=1)  # every image correct at first
    namespace = {"trainer": types.SimpleNamespace(model=model),
                 "ds": types.SimpleNamespace(test=(x, y))}
    line = script.time_autoattack(namespace, epsilon=0.3)
    assert line.startswith("autoattack (standard, eps 0.3) on the quick start's "
                           "classifier, 12 test images: ")
    for stage in ("apgd-ce", "apgd-t", "fab-t", "square"):
        assert f"{stage} " in line
    assert "clean 100.0%, robust " in line


def test_math_in_the_sources_opens_on_its_own_line():
    """A LaTeX command written through a Python string can lose its backslash (``\\rho``
    becomes a carriage return and ``ho``): no inline math may open at a line's end, and
    no source may hold control characters."""
    sources = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md",
               *sorted((ROOT / "tutorials").glob("*.md"))]
    problems = []
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.rstrip().endswith("\\("):
                problems.append(f"{path.name}:{number}: inline math opens at the line's end")
            if any(ord(c) < 32 and c != "\t" for c in line):
                problems.append(f"{path.name}:{number}: control character")
    assert not problems, "\n".join(problems)


def test_objectives_page_code_runs(tmp_path):
    """The objectives page's Python blocks, run in order as one script on digits: each
    objective, AWP and the ADR baseline train through plain ``fit`` as the page says."""
    import re

    page = (ROOT / "tutorials" / "objectives.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) >= 3
    script = tmp_path / "objectives_page.py"
    script.write_text("\n".join(blocks) + "\nprint('page ran', trainer.objective.name)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "page ran adr" in result.stdout
