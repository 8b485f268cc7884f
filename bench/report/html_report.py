"""Technical_Report_116.html: the markdown report as one self-contained page.

The page is the markdown that bench.report.markdown rendered, converted with markdown-it-py (CommonMark
plus GitHub's pipe tables, as the .md reads on a forge), wrapped in bench/templates/report.html.j2
with a title and a table of contents built from the headings. Every image the markdown shows is
inlined as a base64 data URI and the style sheet is inline, so the file opens offline and asks for
nothing outside itself; links to other files of the study (tables/*.csv) stay relative, which
works because the page is written beside the markdown.
"""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.anchors import anchors_plugin

from bench.core.errors import BenchError
from bench.core.store import HTML_REPORT_NAME, atomic_write_text
from bench.report import templating
from bench.report.outputs import REPORT_NAME, StudyOutputs

TOC_LEVELS = (2, 3)  # the h1 is the page's title; deeper headings would crowd the contents


@dataclass(frozen=True)
class TocEntry:
    level: int
    anchor: str
    text: str


def _parser() -> MarkdownIt:
    # Raw HTML off: the report's text (error messages, model names) is always shown, never parsed as markup.
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    anchors_plugin(md, min_level=1, max_level=6)
    return md


def _plain(inline: Token) -> str:
    return "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))


def _is_local(src: str) -> bool:
    """A path relative to the study folder (not a URL with a scheme, not absolute, not a fragment)."""
    parts = urlsplit(src)
    return not parts.scheme and not parts.netloc and not src.startswith(("/", "#"))


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0]
    if not mime or not mime.startswith("image/"):
        raise BenchError(f"the report shows {path.name} as an image, but it is not one")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _inline_images(tokens: list[Token], base: Path) -> None:
    """Replace each local image source with its bytes, so the page needs no plots/ folder."""
    root = base.resolve()
    for tok in tokens:
        for child in tok.children or []:
            if child.type != "image":
                continue
            src = str(child.attrGet("src") or "")
            if not _is_local(src):
                raise BenchError(f"the report shows an image from outside the study: {src}")
            path = (base / unquote(urlsplit(src).path)).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                raise BenchError(f"the report shows {src}, which is not a file in {base}")
            child.attrSet("src", _data_uri(path))


def convert(markdown_text: str, base: Path) -> tuple[str, str, list[TocEntry]]:
    """(title, body HTML, table of contents) of a markdown report whose relative paths start at `base`."""
    md = _parser()
    env: dict = {}
    tokens = md.parse(markdown_text, env)
    title, toc = None, []
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open":
            continue
        level, text = int(tok.tag[1]), _plain(tokens[i + 1])
        if level == 1 and title is None:
            title = text
        elif level in TOC_LEVELS:
            toc.append(TocEntry(level, str(tok.attrGet("id")), text))
    _inline_images(tokens, base)
    body = md.renderer.render(tokens, md.options, env)
    return title or "Technical Report 116", body, toc


def render_html(markdown_text: str, base: Path) -> str:
    title, body, toc = convert(markdown_text, base)
    return templating.render("report.html.j2", title=title, body=body, toc=toc)  # autoescaped: an HTML template


def write_html_report(markdown_path: Path) -> Path:
    """Write the HTML page beside the markdown report it is made from."""
    path = markdown_path.with_name(HTML_REPORT_NAME)
    atomic_write_text(path, render_html(markdown_path.read_text(encoding="utf-8"), markdown_path.parent))
    return path


def export(out: StudyOutputs) -> list[Path]:
    """Technical_Report_116.html beside the markdown report, the same content in one offline file."""
    return [write_html_report(out.store.root / REPORT_NAME)]
