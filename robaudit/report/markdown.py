"""Text that goes into Markdown summaries (CI job summaries render them, HTML included)."""

from __future__ import annotations

import re

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#?\w+;)")


def md_text(text: str, cell: bool = True) -> str:
    """``text`` safe in Markdown: what would start an HTML tag or entity is escaped (a label ``<b>x``
    must not render as markup in a CI job summary) and, in a table ``cell``, ``|`` cannot end it.
    Plain ``<=`` and ``&`` stay readable."""
    text = _TAG_START.sub("&lt;", _ENTITY.sub("&amp;", text))
    return text.replace("|", "/") if cell else text
