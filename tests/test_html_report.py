"""Technical_Report_116.html: the markdown report as one offline page, checked in a real browser.

The browser test loads the report of the stored study (tests/fixtures/stored-study, no engine
needed) in Debian's headless Chromium, from a folder that holds nothing but the page: a probe
appended to a copy writes, after the load event, each image's naturalWidth, every resource the page
requested (Resource Timing lists each fetch, failed ones included) and the contents links that lead
nowhere into the DOM, which `--dump-dom` hands back. A control page with an outside stylesheet and
image and a missing local image proves the probe sees all three.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from bench.config.profile import resolve_profile
from bench.core.errors import BenchError
from bench.core.store import Store
from bench.report.html_report import HTML_REPORT_NAME, convert, write_html_report
from bench.report.markdown import REPORT_NAME, write_report

FIXTURE = Path(__file__).parent / "fixtures" / "stored-study"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags this host refuses Chromium's connections.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'tr116-probe';
  out.textContent = JSON.stringify({
    title: document.title,
    images: [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 22), width: i.naturalWidth})),
    requests: performance.getEntriesByType('resource').map(e => e.name),
    references: [...document.querySelectorAll('[src], link[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
                  .filter(u => !u.startsWith('data:')),
    dead_contents_links: [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))
                  .filter(h => !document.getElementById(decodeURIComponent(h.slice(1)))),
  });
  document.body.append(out);
});
</script>"""
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def stored_report(tmp_path_factory) -> Path:
    """The stored study's report folder, written by write_report as `invoke report` does."""
    root = tmp_path_factory.mktemp("study")
    shutil.copytree(FIXTURE / "smoke", root / "smoke")
    write_report(resolve_profile("smoke"), Store("smoke", root=root))
    return root / "smoke"


def _chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium package")
    pytest.skip(f"Chromium is not installed ({CHROMIUM}): apt-get install -y chromium")


def _probe(page: Path, tmp_path: Path) -> dict:
    """Load a copy of `page` with the probe appended, alone in a fresh folder, and read the probe back."""
    folder = tmp_path / "alone"
    folder.mkdir()
    copy = folder / page.name
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--dump-dom", copy.as_uri()]
    # Its own process group, so the renderer and helper processes end with it on every path.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=45)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    found = re.search(r'<pre id="tr116-probe">(.*?)</pre>', out, re.S)
    assert found, f"the probe did not run (exit {proc.returncode}): {err[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_invoke_report_writes_the_html_beside_the_markdown(stored_report):
    page = (stored_report / HTML_REPORT_NAME).read_text(encoding="utf-8")
    md = (stored_report / REPORT_NAME).read_text(encoding="utf-8")
    assert "<title>Technical Report 116: Cross-Model Benchmarks</title>" in page
    # every table and every plot of the markdown, the plots as data URIs and nothing else
    assert page.count("<table>") == len(re.findall(r"^\|[ :]*-", md, re.M)) > 10
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(plots) == 3
    assert re.findall(r'<img src="([^"]{0,22})', page) == ["data:image/png;base64,"] * 3
    assert f'src="data:image/png;base64,{base64.b64encode((stored_report / plots[0]).read_bytes()).decode()}"' in page
    # the contents: every numbered section, in order, each linking to its heading's id
    sections = re.findall(r"^## (.+)$", md, re.M)
    toc = re.findall(r'<li class="level-2"><a href="#([^"]+)">([^<]+)</a>', page)
    assert [html.unescape(text) for _, text in toc] == sections
    for anchor, _ in toc:
        assert f'<h2 id="{anchor}">' in page
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)


def test_links_stay_relative_images_are_inlined_and_text_is_escaped(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(PNG_1PX)
    md = ("# Title\n\n## One\n\nSee [the requests](tables/requests.csv) and <script>alert(1)</script>.\n\n"
          "![a plot](plots/a.png)\n\n### One `detail`\n\n| x | y |\n|---|--:|\n| a \\| b | 1 |\n")
    title, body, toc = convert(md, tmp_path)
    assert title == "Title"
    assert [(e.level, e.anchor, e.text) for e in toc] == [(2, "one", "One"), (3, "one-detail", "One detail")]
    assert '<a href="tables/requests.csv">the requests</a>' in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>" not in body
    assert f'<img src="data:image/png;base64,{base64.b64encode(PNG_1PX).decode()}" alt="a plot"' in body
    assert '<td>a | b</td>' in body and '<td style="text-align:right">1</td>' in body


@pytest.mark.parametrize("image", ["plots/missing.png", "https://example.com/a.png", "../outside.png"])
def test_an_image_that_cannot_be_inlined_is_an_error(tmp_path, image):
    (tmp_path / "study").mkdir()
    (tmp_path / "outside.png").write_bytes(PNG_1PX)
    with pytest.raises(BenchError, match="image|not a file"):
        convert(f"# T\n\n![plot]({image})\n", tmp_path / "study")


def test_the_page_opens_offline_in_chromium_and_every_plot_renders(stored_report, tmp_path):
    seen = _probe(stored_report / HTML_REPORT_NAME, tmp_path)
    assert seen["title"] == "Technical Report 116: Cross-Model Benchmarks"
    assert len(seen["images"]) == 3
    assert all(i["src"] == "data:image/png;base64," and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert seen["requests"] == [] and seen["references"] == []
    assert seen["dead_contents_links"] == []


def test_the_probe_sees_outside_requests_and_broken_images(tmp_path):
    """The control: the checks above would fail for a page that fetches or misses anything."""
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(PNG_1PX)
    page = tmp_path / "page.html"
    body = convert("# T\n\n![a](plots/a.png)\n", tmp_path)[1]
    page.write_text('<!DOCTYPE html><html><head><title>T</title><link rel="stylesheet" href="http://127.0.0.1:9/a.css">'
                    f'</head><body>{body}<img src="http://127.0.0.1:9/b.png"><img src="plots/a.png">'
                    '<nav><a href="#nowhere">x</a></nav></body></html>', encoding="utf-8")
    seen = _probe(page, tmp_path)
    assert [i["width"] for i in seen["images"]] == [1, 0, 0]  # inlined; outside; local, absent from the folder
    assert sorted(seen["requests"]) == ["http://127.0.0.1:9/a.css", "http://127.0.0.1:9/b.png"]
    assert seen["references"] == ["http://127.0.0.1:9/a.css", "http://127.0.0.1:9/b.png", "plots/a.png"]
    assert seen["dead_contents_links"] == ["#nowhere"]


def test_write_html_report_names_the_page_beside_its_markdown(tmp_path):
    md = tmp_path / REPORT_NAME
    md.write_text("# T\n\n## S\n\ntext\n", encoding="utf-8")
    assert write_html_report(md) == tmp_path / HTML_REPORT_NAME
    assert '<h2 id="s">S</h2>' in (tmp_path / HTML_REPORT_NAME).read_text(encoding="utf-8")
