"""Payload capture: an excerpt of each call's params and answer, for projects that turn it on.

Only keys whose project captures payloads (``KeyRecord.capture_bytes`` not ``None``) pay for
this; the gateway tests that one attribute per request and does nothing else for the others.
An excerpt is JSON text cut at ``capture_bytes`` bytes (at a character boundary), then marked
``…[cut: N bytes]`` with the whole text's size. Secrets are never stored:

- the params and the answer of signing and account methods (``personal_*``, ``eth_sign``,
  ``eth_signTransaction``, ``eth_signTypedData*``) are ``"[redacted]"`` as a whole: their params
  hold passwords and keys, their answers signatures that authorize things (a permit, a login);
- any object field of the params named like a secret (password, passphrase, private key,
  secret, mnemonic, seed; in any case, with or without ``_`` or ``-``) is ``"[redacted]"``,
  however deep;
- the API key is in the path or a header, never in what is captured.

Answers of other methods are kept as the client received them: nodes do not put secrets in
them, and reading a large answer back to redact fields would cost every captured call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from hoodrun.gateway.jsonrpc import Call

__all__ = ["REDACTED", "excerpts", "is_signing", "redact"]

REDACTED = "[redacted]"
_REDACTED_JSON = orjson.dumps(REDACTED).decode()
_SIGNING = frozenset({"eth_sign", "eth_signTransaction"})
_SIGNING_PREFIXES = ("personal_", "eth_signTypedData")
# A field name is a secret's when, lowercased without "_" and "-", it contains one of these.
_SECRET_WORDS = ("password", "passphrase", "privatekey", "privkey", "secret", "mnemonic", "seed")
# A first look at the params' text: only when it may hold such a name (or a signing call, in
# an invalid entry) are they walked.
_MAY_HOLD_SECRET = re.compile(rb"pass|priv|secret|mnemonic|seed|personal_|eth_sign", re.IGNORECASE)


def is_signing(method: Any) -> bool:
    """Whether ``method`` signs or manages accounts (its params and answer are redacted)."""
    return isinstance(method, str) and (method in _SIGNING or method.startswith(_SIGNING_PREFIXES))


def _secret_name(name: str) -> bool:
    folded = name.lower().replace("_", "").replace("-", "")
    return any(word in folded for word in _SECRET_WORDS)


def redact(value: Any) -> Any:
    """``value`` with every object field named like a secret, and the params of any signing
    call found in it, replaced by ``"[redacted]"`` (a copy where anything changed)."""
    if isinstance(value, dict):
        signing = is_signing(value.get("method")) and "params" in value
        return {
            name: REDACTED
            if isinstance(name, str) and (_secret_name(name) or (signing and name == "params"))
            else redact(item)
            for name, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def _cut(text: bytes, limit: int) -> str:
    if len(text) <= limit:
        return text.decode("utf-8", "replace")
    # "ignore" drops only a character the cut split in two (the text is UTF-8 JSON).
    return f"{text[:limit].decode('utf-8', 'ignore')}…[cut: {len(text)} bytes]"


def _params(call: Call, limit: int) -> str:
    if is_signing(call.method):
        return _REDACTED_JSON
    # A valid call's params; an invalid entry as a whole (what was sent is what is shown, a
    # signing call's params redacted in it as well).
    value = call.obj.get("params") if call.method is not None else call.obj
    try:
        text = orjson.dumps(value)
        if _MAY_HOLD_SECRET.search(text):
            text = orjson.dumps(redact(value))
    except (orjson.JSONEncodeError, RecursionError):
        return orjson.dumps("[not serializable]").decode()
    return _cut(text, limit)


def _answer(answer: Any, limit: int) -> str:
    if answer is None:  # a notification's: nothing was sent
        return ""
    try:
        return _cut(orjson.dumps(answer), limit)
    except orjson.JSONEncodeError:
        return ""


def excerpts(
    calls: Sequence[Call], answers: Sequence[Any] | None, body: bytes, limit: int
) -> tuple[tuple[str, str], ...]:
    """One ``(params, answer)`` excerpt per call of a request.

    ``answers`` are a batch's, one per call (``None`` where nothing was sent: a notification);
    without them (a single call, or a batch refused as a whole) every call's answer is
    ``body``, the response sent.
    """
    out = []
    for index, call in enumerate(calls):
        params = _params(call, limit)
        if is_signing(call.method):
            answer = _REDACTED_JSON
        elif answers is None:
            answer = _cut(body, limit) if body else ""
        else:
            answer = _answer(answers[index] if index < len(answers) else None, limit)
        out.append((params, answer))
    return tuple(out)
