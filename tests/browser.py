"""A real headless Chromium for tests that must see a page as a person would (layout, overflow, screenshots).

Why a subprocess and not a driver library: Debian's ``chromium`` alone can render a page (``--dump-dom``) and take
a screenshot (``--screenshot``), so the tests need no chromedriver, no playwright and no network. Each launch gets
its own throw-away profile folder and flags that stop every background connection (updates, sync, QUIC, DNS for
anything but localhost), so a test stays offline even though the browser is not under conftest's socket guard.

Used by the report test (tests/test_report_tearsheet.py) and the daemon's web page test. Usage::

    from tests.browser import CHROMIUM_MISSING, find_chromium, layout_metrics, render_dom, screenshot

    pytestmark = pytest.mark.skipif(find_chromium() is None, reason=CHROMIUM_MISSING)
    metrics = layout_metrics(Path("results/report.html"), width=1400)
    assert metrics["scroll_width"] <= metrics["inner_width"]
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_MISSING = ("no Chromium browser found (install Debian's `chromium` package, or set CHROMIUM=/path/to/"
                    "chromium); the headless-browser layout check cannot run")
LAUNCH_TIMEOUT_S = 90.0
METRICS_ELEMENT_ID = "__layout_metrics__"

# Offline and quiet: no first-run UI, no background fetches, no QUIC, and every host name except localhost and 127.0.0.1
# resolves to "not found", so a page that links an outside resource fails to load it instead of reaching out.
_BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
)

# Written into the page just before </body>: it measures the laid-out document and leaves the numbers as JSON in a
# <pre> the dumped DOM carries back. scroll_width > inner_width means the page scrolls sideways (overflow).
_MEASURE_SCRIPT = f"""
<script>
(function () {{
  var doc = document.documentElement;
  var widest = {{tag: "", width: 0}};
  document.querySelectorAll("body *").forEach(function (el) {{
    var right = el.getBoundingClientRect().right + window.scrollX;
    if (right > widest.width) {{ widest = {{tag: el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
      + (el.className && typeof el.className === "string" ? "." + el.className.split(" ").join(".") : ""),
      width: right}}; }}
  }});
  var out = document.createElement("pre");
  out.id = "{METRICS_ELEMENT_ID}";
  out.style.display = "none";
  out.textContent = JSON.stringify({{
    inner_width: window.innerWidth,
    scroll_width: doc.scrollWidth,
    body_scroll_width: document.body ? document.body.scrollWidth : 0,
    scroll_height: doc.scrollHeight,
    widest_element: widest.tag,
    widest_right: widest.width,
    tables: Array.prototype.map.call(document.querySelectorAll("table"), function (t) {{
      return {{id: t.id, class: t.className, width: t.getBoundingClientRect().width,
               scroll_width: t.scrollWidth, right: t.getBoundingClientRect().right + window.scrollX}};
    }}),
    images: Array.prototype.map.call(document.querySelectorAll("img"), function (i) {{
      return {{src: (i.getAttribute("src") || "").slice(0, 80), loaded: i.complete && i.naturalWidth > 0,
               width: i.getBoundingClientRect().width, right: i.getBoundingClientRect().right + window.scrollX}};
    }})
  }});
  document.body.appendChild(out);
}})();
</script>
"""


def find_chromium() -> str | None:
    """The browser to launch: $CHROMIUM if set and executable, else the first Chromium-like command on PATH."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file() and os.access(env, os.X_OK):
        return env
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _target(url_or_file: str | Path) -> str:
    """A URL chromium can open: http(s)/file URLs pass through, a path becomes an absolute file:// URL."""
    text = str(url_or_file)
    if text.startswith(("http://", "https://", "file://")):
        return text
    path = Path(text).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"page to render not found: {path}")
    return path.as_uri()


def _run_chromium(extra: list[str], target: str, width: int, height: int,
                  timeout: float = LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Launch one headless chromium with a fresh profile, wait for it, and return what it printed."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError(CHROMIUM_MISSING)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [browser, *_BASE_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000", *extra, target]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"chromium exited with {proc.returncode} on {target}: {tail}")
    return proc


def render_dom(url_or_file: str | Path, width: int = 1400, height: int = 900) -> str:
    """The page's DOM after its scripts ran, as chromium serialises it (``--dump-dom``) at a window of width x height.

    :param url_or_file: an http(s):// or file:// URL, or a path to a local HTML file.
    """
    return _run_chromium(["--dump-dom"], _target(url_or_file), width, height).stdout


def screenshot(url_or_file: str | Path, path: str | Path, width: int = 1400, height: int = 900) -> Path:
    """Save a PNG of the page's first width x height pixels to ``path`` and return it (raises if none was written)."""
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run_chromium([f"--screenshot={out}"], _target(url_or_file), width, height)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out


def _page_html(url_or_file: str | Path) -> tuple[str, str]:
    """The page's HTML and the base URL its relative links resolve against (a loopback http page is fetched)."""
    target = _target(url_or_file)
    if target.startswith("file://"):
        path = Path(urllib.request.url2pathname(target[len("file://"):]))
        return path.read_text(encoding="utf-8"), target
    with urllib.request.urlopen(target, timeout=30) as resp:  # noqa: S310 - tests pass loopback URLs only
        return resp.read().decode("utf-8"), target


def layout_metrics(url_or_file: str | Path, width: int = 1400, height: int = 900) -> dict:
    """Lay the page out at ``width`` px in chromium and return its measurements.

    Keys: ``inner_width`` (the viewport), ``scroll_width`` (the document's full width: larger than inner_width
    means a horizontal scroll bar), ``body_scroll_width``, ``scroll_height``, ``widest_element`` / ``widest_right``
    (the element reaching furthest right: names the culprit of an overflow), ``tables`` and ``images`` (each
    one's width and right edge; images also whether they loaded).

    The page is copied to a temporary file beside the original (so its relative image links still resolve) with a
    measuring script added before ``</body>``; the original file is not touched. An http page is fetched first and
    given a ``<base>`` so its links resolve against the server.
    """
    html, base = _page_html(url_or_file)
    if base.startswith("file://"):
        folder = Path(urllib.request.url2pathname(base[len("file://"):])).parent
    else:
        folder = None
        html = html.replace("<head>", f'<head><base href="{base}">', 1)
    marker = "</body>"
    html = html.replace(marker, _MEASURE_SCRIPT + marker) if marker in html else html + _MEASURE_SCRIPT
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=folder, prefix=".layout-", delete=False,
                                     encoding="utf-8") as tmp:
        tmp.write(html)
        page = Path(tmp.name)
    try:
        dom = render_dom(page, width=width, height=height)
    finally:
        page.unlink(missing_ok=True)
    return _metrics_from_dom(dom)


def _metrics_from_dom(dom: str) -> dict:
    """Pull the JSON the measuring script left in the dumped DOM (raises if the script did not run)."""
    start_tag = f'<pre id="{METRICS_ELEMENT_ID}" style="display: none;">'
    start = dom.find(start_tag)
    if start < 0:
        raise RuntimeError("the layout-measuring script did not run in chromium (no metrics in the dumped DOM)")
    start += len(start_tag)
    end = dom.find("</pre>", start)
    raw = dom[start:end].replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(raw)
