"""Error fingerprints: one short hex id for every occurrence of the same error.

Two lines get the same fingerprint when they differ only by what changes from one occurrence to
the next: numbers, ids and hashes, quoted values, addresses, line numbers. The message is
normalized by replacing, in one pass:

- UUIDs by ``<uuid>``; ``0x`` + 40 hex digits (an account address) by ``<address>``, ``0x`` + 64
  (a transaction or block hash) by ``<hash>``, other ``0x`` numbers and bare hex words of 6 or
  more characters with a digit and a letter by ``<hex>``;
- e-mail addresses by ``<email>``; quoted text (``"..."``, ``'...'``, backquotes) by ``<str>``;
- letter-and-digit runs of 20 or more characters with a digit (tokens, ULIDs) by ``<id>``;
- every other run of digits (with its decimals) by ``<num>``, which covers times, IPs, ports and
  the line numbers of ``file.py:123``;

and whitespace runs by one space. Of the stack only the exception types (``ValueError``,
``java.io.IOException``, ``Caused by: ...``, ``panic``) and the function frames are kept, without
their line and column numbers (Python's ``File "x.py", line 3, in f``, JavaScript's and Java's
``at f (x.js:3:7)``, Go's ``main.f(0x1)``); the message after an exception type is the message's
business, and the source lines of a Python traceback are left out, so editing a frame's code does
not split an error. A recursion's repeated frames count once.

The fingerprint is SHA-256 of the normalized exception types, frames and message, truncated to
16 hex characters (64 bits: no collision among any realistic number of distinct errors).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["fingerprint", "normalize_message", "normalize_stack"]

# Only quoted text and the words with a digit or an @ can vary: the scan looks at nothing else
# (a word is tried once, at its start), so a message costs a pass over it plus a little per such
# word, about a microsecond for a typical line.
_WORD = r"[\w.+@-]"
_CANDIDATE = re.compile(rf"\"[^\"\n]*\"|'[^'\n]*'|`[^`\n]*`|(?<!{_WORD})(?={_WORD}*[0-9@]){_WORD}+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NOT_ALNUM_BEFORE, _NOT_ALNUM_AFTER = r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])"
_INNER = re.compile(
    rf"(?P<uuid>{_NOT_ALNUM_BEFORE}[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}"
    rf"-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}{_NOT_ALNUM_AFTER})"
    rf"|(?P<address>{_NOT_ALNUM_BEFORE}0[xX][0-9a-fA-F]{{40}}{_NOT_ALNUM_AFTER})"
    rf"|(?P<hash>{_NOT_ALNUM_BEFORE}0[xX][0-9a-fA-F]{{64}}{_NOT_ALNUM_AFTER})"
    rf"|(?P<hex>{_NOT_ALNUM_BEFORE}0[xX][0-9a-fA-F]+{_NOT_ALNUM_AFTER}"
    rf"|{_NOT_ALNUM_BEFORE}(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{{6,}}"
    rf"{_NOT_ALNUM_AFTER})"
    rf"|(?P<id>{_NOT_ALNUM_BEFORE}(?=[A-Za-z]*[0-9])[A-Za-z0-9]{{20,}}{_NOT_ALNUM_AFTER})"
    r"|(?P<num>[0-9]+(?:\.[0-9]+)*)"
)
_PLACEHOLDERS = {name: f"<{name}>" for name in _INNER.groupindex}

# Stack lines, matched on the stripped line.
_PY_FRAME = re.compile(r'File "(?P<file>[^"]*)", line \d+, in (?P<func>.+)')
_AT_FRAME = re.compile(r"at (?:(?P<func>[^()]+?) ?\((?P<loc>[^()]*)\)|(?P<bare>[^()\s]+))$")
_GO_FRAME = re.compile(r"(?P<func>[\w./*()$-]+?)\((?:[^()]*)\)$")
_TYPE = re.compile(
    r"(?:Caused by: )?(?P<type>[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)(?::(?:\s.*)?)?"
)
_LINE_COL = re.compile(r"(?::\d+)+$")
_PY_TRACEBACK = "Traceback (most recent call last):"


def _placeholder(match: re.Match[str]) -> str:
    return _PLACEHOLDERS[match.lastgroup or "num"]


def _replace(match: re.Match[str]) -> str:
    token = match.group()
    if token.isdigit():
        return "<num>"
    first = token[0]
    if first in "\"'`":
        return "<str>"
    if "@" in token and _EMAIL.fullmatch(token):
        return "<email>"
    return _INNER.sub(_placeholder, token)


def normalize_message(message: str) -> str:
    """``message`` with what varies between occurrences replaced by placeholders."""
    return " ".join(_CANDIDATE.sub(_replace, message).split())


def _location(loc: str) -> str:
    """A frame's file, without its directories, line and column (``/app/x.js:3:7`` → ``x.js``)."""
    path = _LINE_COL.sub("", loc.strip())
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def normalize_stack(stack: str) -> tuple[list[str], list[str]]:
    """The exception types and the function frames of ``stack``, without line numbers."""
    types: list[str] = []
    frames: list[str] = []
    python = _PY_TRACEBACK in stack
    for raw in stack.splitlines():
        line = raw.strip()
        if not line:
            continue
        frame: str | None = None
        if match := _PY_FRAME.match(line):
            frame = f"{_location(match['file'])}:{match['func'].strip()}"
        elif match := _AT_FRAME.match(line):
            if match["bare"] is not None:
                frame = f"<anonymous>@{_location(match['bare'])}"
            else:
                frame = f"{match['func'].strip()}@{_location(match['loc'])}"
        elif python:
            # Tracebacks: exception lines start in the first column, source lines are indented.
            if raw[:1] not in (" ", "\t") and line != _PY_TRACEBACK:
                if match := _TYPE.fullmatch(line):
                    types.append(match["type"])
            continue
        elif line.startswith("panic: "):
            types.append("panic")
            continue
        elif match := _GO_FRAME.match(line):
            frame = match["func"]
        elif match := _TYPE.fullmatch(line):
            types.append(match["type"])
            continue
        else:
            # Something else (a Go file line, a frame format not known here): its stable part.
            frame = normalize_message(line)
        if not frames or frames[-1] != frame:
            frames.append(frame)
    return types, frames


def fingerprint(message: str, stack: str = "") -> str:
    """16 hex characters naming the error of ``message`` (and ``stack``)."""
    text = normalize_message(message)
    if stack:
        types, frames = normalize_stack(stack)
        text = "\n".join(types) + "\n\n" + "\n".join(frames) + "\n\n" + text
    return hashlib.sha256(text.encode()).hexdigest()[:16]
