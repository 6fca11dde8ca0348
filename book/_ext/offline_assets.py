"""Sphinx extension: the book serves every script it needs from its own build, never from a CDN.

- MathJax 3 comes from npm (`book/package.json`, installed by `make book`) and is copied to
  `_static/vendor/mathjax/`, where `mathjax_path` in `_config.yml` points.
- plotly.js: the chapters' figures come from plotly's "notebook" renderer, which inlines the whole
  library (several MB) in a page's first figure output and gives every figure a `<script>` for
  MathJax from a CDN (used only for LaTeX in plot labels, which the chapters do not use). Each page
  gets instead one `<script src>` to `_static/vendor/plotly-VERSION.min.js`, written from that very
  output (so it is the library of the plotly package that drew the figures), and no CDN tag.
- circuitsvis views carry their own bundle inline (from the circuitsvis package); left as they are.
Any other reference to a script, style sheet or image on the network is reported as a warning.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
MATHJAX_SOURCE = Path("node_modules") / "mathjax" / "es5"
PLOTLY_INLINE = re.compile(r"<script>(/\*\*\n\* plotly\.js v(?P<version>[0-9][\w.-]*)\n.*?)</script>", re.S)
PLOTLY_CDN_MATHJAX = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"></script>')
REMOTE_ASSET = re.compile(r'<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)="(?P<url>(?:https?:)?//[^"]+)"')


def check_mathjax(app: Sphinx, config) -> None:
    if not (Path(app.srcdir) / MATHJAX_SOURCE / "tex-chtml.js").is_file():
        raise ExtensionError(f"MathJax is missing from {Path(app.srcdir) / MATHJAX_SOURCE}: build the book with "
                             "`make book` (it runs `npm ci` in book/), not with jupyter-book directly")


def serve_plotly_from_static(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    body = context.get("body")
    if not body or "plotly" not in body:
        return

    def link(match: re.Match) -> str:
        name = f"plotly-{match['version']}.min.js"
        target = Path(app.outdir) / "_static" / "vendor" / name
        if not target.is_file() or target.stat().st_size != len(match[1].encode()):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(match[1], encoding="utf-8")
        return f'<script src="{context["pathto"]("_static/vendor/" + name, 1)}"></script>'

    context["body"] = PLOTLY_CDN_MATHJAX.sub("", PLOTLY_INLINE.sub(link, body))


def report_remote_assets(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    for match in REMOTE_ASSET.finditer(context.get("body") or ""):
        LOGGER.warning(f"{pagename}: loads {match['url']} from the network; the book must draw offline")


def copy_mathjax(app: Sphinx, exception) -> None:
    if exception is None and app.builder.format == "html":
        shutil.copytree(Path(app.srcdir) / MATHJAX_SOURCE, Path(app.outdir) / "_static" / "vendor" / "mathjax",
                        dirs_exist_ok=True)


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", check_mathjax)
    app.connect("html-page-context", serve_plotly_from_static)
    app.connect("html-page-context", report_remote_assets, priority=900)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
