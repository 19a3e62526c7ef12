"""Cards rendered as HTML, safely: raw HTML in a card is shown as text, never run.

A card is written by a stage from manifest text (descriptions, dataset names), so it is untrusted:
markdown-it's commonmark preset with ``html`` off escapes every tag, and its link validation drops
``javascript:``/``vbscript:``/``data:`` (except images) URLs. Relative links and images (a card's
``![funnel](funnel.png)``) are rewritten to the commit's file URLs, so they show the file of the same
revision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def render_card(text: str, resolve: Callable[[str], str]) -> str:
    """HTML for Markdown ``text``; ``resolve(path)`` gives the URL of a file of the same commit."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")

    def rewrite(state: Any) -> None:
        for token in state.tokens:
            for child in [token, *(token.children or [])]:
                attr = "src" if child.type == "image" else "href" if child.type == "link_open" else None
                if attr is None:
                    continue
                url = str(child.attrGet(attr) or "")
                if url and not _absolute(url):
                    child.attrSet(attr, resolve(url.lstrip("./")))

    md.core.ruler.push("hubflow_relative_urls", rewrite)
    return md.render(text)


def _absolute(url: str) -> bool:
    return url.startswith(("/", "#", "?")) or ":" in url.split("/", 1)[0]
