# -*- coding: utf-8 -*-
"""COPY's text format, and how a value is shown in a report.

A row travels to PostgreSQL, and is hashed by the verification, as a COPY text
line: its tokens joined by tabs. A token is the value as the type's output
function prints it, with COPY's backslash escapes (ESCAPE_PAIRS); NULL is \\N.
The loader (migration_copy), the converters (migration_normalise) and the
digests (migration_digest, which builds the same escapes in SQL) all use the
definitions here.
"""

from __future__ import annotations

import re

NULL = "\\N"
REJECT_VALUE_CHARS = 200

# (character, escaped form), backslash first: the order in which they are applied.
ESCAPE_PAIRS = (("\\", "\\\\"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\b", "\\b"), ("\f", "\\f"), ("\v", "\\v"))
NEEDS_ESCAPE = re.compile("[\\\\\n\r\t\b\f\v]")
_ESCAPES = str.maketrans(dict(ESCAPE_PAIRS))
_UNESCAPE_RE = re.compile(r"\\(.)", re.S)
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\v"}


def copy_escape(text):
    """Text -> its COPY text-format field (the escapes PostgreSQL's COPY TO writes)."""
    if NEEDS_ESCAPE.search(text):
        return text.translate(_ESCAPES)
    return text


def escape_column(texts):
    """copy_escape over a list of texts without NUL characters, by C loops over their join."""
    joined = "\x00".join(texts)
    for raw, escaped in ESCAPE_PAIRS:
        if raw in joined:
            joined = joined.replace(raw, escaped)
    return joined.split("\x00")


def copy_unescape(token):
    """A COPY field written by copy_escape -> the text (None for NULL)."""
    if token == NULL:
        return None
    if "\\" not in token:
        return token
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), token)


def copy_data(lines):
    """COPY lines (str, without newline) -> the bytes COPY FROM STDIN reads."""
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def show_value(value):
    """A source value for a report: its repr, at most REJECT_VALUE_CHARS characters.

    SQLite TEXT read byte-preserving (a bytearray: see migration_source) is shown as
    text when it is valid UTF-8; the b'...' form is kept for bytes that are not UTF-8
    and for BLOBs."""
    if value.__class__ is bytearray:
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = bytes(value)
    text = repr(value)
    if len(text) > REJECT_VALUE_CHARS:
        text = text[: REJECT_VALUE_CHARS - 3] + "..."
    return text
