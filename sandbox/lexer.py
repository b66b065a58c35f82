"""Source text with its comments and literals blanked, for the scans ``languages.py`` makes (pure).

``mask(source, dialect)`` returns a string of the same length in which every character of a
comment, a string, a character literal or a text block is a space (line breaks are kept), so a
regular expression or a brace count over the mask sees only code, and a position in the mask is the
same position in the source. Dialects: ``c`` (C and C++: ``//``, ``/* */``, ``"..."``, ``'...'``,
C++ raw strings ``R"d(...)d"``), ``java`` (C's, plus text blocks ``\"\"\"...\"\"\"``), ``go`` (C's,
plus raw strings in backquotes) and ``rust`` (nested block comments, raw strings ``r#"..."#``, byte
strings, and character literals told apart from lifetimes).

Unterminated comments and literals run to the end of the text, as a compiler would read them.
"""

from __future__ import annotations

import re

__all__ = ["mask", "DIALECTS"]

DIALECTS = ("c", "java", "go", "rust")
_START = {"c": re.compile(r"[/\"'uULR]"), "java": re.compile(r"[/\"']"), "go": re.compile(r"[/\"'`]"),
          "rust": re.compile(r"[/\"'br]")}  # where a comment or literal may begin
_CPP_RAW = re.compile(r'(?<![A-Za-z0-9_])(?:u8|[uUL])?R"([^()\\\s"]{0,16})\(')
_RUST_RAW = re.compile(r'(?<![A-Za-z0-9_])b?r(#*)"')
_RUST_CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F_]{1,8}\}|.)|[^\\'\n])'")


def mask(source: str, dialect: str) -> str:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    out = list(source)
    n = len(source)
    i = 0

    def blank(start: int, end: int) -> int:
        end = min(end, n)
        for k in range(start, end):
            if out[k] != "\n":
                out[k] = " "
        return end

    while i < n:
        c = source[i]
        if source.startswith("//", i):
            end = source.find("\n", i)
            i = blank(i, n if end < 0 else end)
        elif source.startswith("/*", i):
            i = blank(i, _block_comment_end(source, i, nested=dialect == "rust"))
        elif dialect == "java" and source.startswith('"""', i):
            i = blank(i, _quoted_end(source, i + 3, '"""'))
        elif dialect == "go" and c == "`":
            end = source.find("`", i + 1)
            i = blank(i, n if end < 0 else end + 1)
        elif dialect == "c" and c in "uULR" and (raw := _CPP_RAW.match(source, i)):
            end = source.find(")" + raw.group(1) + '"', raw.end())
            i = blank(i, n if end < 0 else end + len(raw.group(1)) + 2)
        elif dialect == "rust" and c in "br" and (raw := _RUST_RAW.match(source, i)):
            end = source.find('"' + raw.group(1), raw.end())
            i = blank(i, n if end < 0 else end + 1 + len(raw.group(1)))
        elif c == '"' or (dialect == "rust" and source.startswith('b"', i) and not _identifier_before(source, i)):
            start = i + (2 if c == "b" else 1)
            i = blank(i, _quoted_end(source, start, '"'))
        elif c == "'" and dialect == "c" and _number_before(source, i):  # C++14 digit separator: 1'000
            i += 1
        elif c == "'" or (dialect == "rust" and source.startswith("b'", i) and not _identifier_before(source, i)):
            start = i + (1 if c == "b" else 0)
            if dialect == "rust":
                char = _RUST_CHAR.match(source, start)
                if char is None:  # a lifetime or a label ('a): code
                    i = start + 1
                    continue
                i = blank(i, char.end())
            else:
                i = blank(i, _quoted_end(source, start + 1, "'"))
        else:
            following = _START[dialect].search(source, i + 1)
            i = following.start() if following else n
    return "".join(out)


def _identifier_before(source: str, i: int) -> bool:
    return i > 0 and (source[i - 1].isalnum() or source[i - 1] == "_")


def _number_before(source: str, i: int) -> bool:
    start = i
    while start > 0 and (source[start - 1].isalnum() or source[start - 1] in "_'"):
        start -= 1
    return start < i and source[start].isdigit()


def _block_comment_end(source: str, i: int, nested: bool) -> int:
    depth, i, n = 0, i, len(source)
    while i < n:
        if source.startswith("/*", i):
            depth += 1
            i += 2
            if not nested:
                end = source.find("*/", i)
                return n if end < 0 else end + 2
        elif source.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _quoted_end(source: str, i: int, quote: str) -> int:
    """The index just past the closing ``quote`` (backslash escapes skipped); a line break ends a one-line literal."""
    n = len(source)
    while i < n:
        if source[i] == "\\":
            i += 2
        elif source.startswith(quote, i):
            return i + len(quote)
        elif source[i] == "\n" and len(quote) == 1:
            return i
        else:
            i += 1
    return n
