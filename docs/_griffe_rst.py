"""A Griffe extension for the API reference: reST markup in docstrings to Markdown.

The package's docstrings are written for readers of the source and use a little
reST: roles (:class:`~sanic_ws_ext.errors.Reject`) and ``::`` before literal
blocks. mkdocstrings renders Markdown, so this turns them into code spans and
plain colons. mkdocs.yml loads it; it is not part of the site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", re.M)
_BARE_LITERAL = re.compile(r"^\s*::\n", re.M)


def to_markdown(text: str) -> str:
    """Roles become code spans (``~`` keeps the last name); ``x::`` becomes ``x:``."""

    def code(match: re.Match[str]) -> str:
        short, target = match.groups()
        return f"`{target.rsplit('.', 1)[-1] if short else target}`"

    text = _ROLE.sub(code, text)
    text = _LITERAL.sub(r"\1:", text)
    return _BARE_LITERAL.sub("", text)


class RestToMarkdown(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
