"""HTML left in text columns (scraped reviews: `<br />`, `&amp;`): found for the data report,
removed with `data.strip_html=true`."""

from __future__ import annotations

import html
import re

TAG = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?\s*>")
ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
SPACES = re.compile(r"[ \t]{2,}")


def html_markup(text: str) -> str | None:
    """The first tag or entity in `text`, or None."""
    found = TAG.search(text) or ENTITY.search(text)
    return found.group(0) if found else None


def strip_html(text: str) -> str:
    """Tags become spaces, entities their characters (`a<br />b &amp; c` -> `a b & c`)."""
    if text is None or ("<" not in text and "&" not in text):
        return text
    return SPACES.sub(" ", html.unescape(TAG.sub(" ", text))).strip()
