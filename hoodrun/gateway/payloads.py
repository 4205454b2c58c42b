"""Payload capture: an excerpt of each call's params and answer, for projects that turn it on.

Only keys whose project captures payloads (``KeyRecord.capture_bytes`` not ``None``) pay for
this; the gateway tests that one attribute per request and does nothing else for the others.
An excerpt is JSON text cut at ``capture_bytes`` bytes (at a character boundary), then marked
``…[cut: N bytes]`` with the whole text's size. Secrets are never stored:

- the params and the answer of signing and account methods are ``"[redacted]"`` as a whole:
  every method under ``personal_``, ``parity_``, ``signer_``, ``account_`` (clef) and
  ``wallet_``, and ``eth_sign*`` (``eth_sign``, ``eth_signTransaction``,
  ``eth_signTypedData*``); method names in any case (``ETH_SIGN`` too). Their params hold
  passwords, keys and recovery phrases, some of them positionally
  (``parity_newAccountFromPhrase``, ``signer_confirmRequest``), their answers signatures that
  authorize things (a permit, a login) or exported keys (``parity_exportAccount``);
- ``eth_sendTransaction`` is kept: its params are a transaction (from, to, value, data) that a
  node signs with a key it holds, never the key or a password (``personal_sendTransaction`` is
  the one with a password), and its answer is the transaction's hash;
- any object field of the params named like a secret is ``"[redacted]"``, however deep. A name
  is compared casefolded (NFKC) with only its letters and digits kept (``Private Key``,
  ``private_key``, ``privateKey`` are one name): it is a secret's when it contains one of
  ``_SECRET_WORDS`` (password, passwd, pwd, passphrase, privatekey, privkey, secret, mnemonic,
  seed, apikey, authorization) or ends with one of ``_SECRET_ENDINGS`` (pk, token). The short
  ones only end a name: ``tokenAddress``, ``tokenId`` or ``upkeepId`` are not secrets,
  ``accessToken`` and ``ownerPk`` are;
- the API key is in the path or a header, never in what is captured.

Answers of other methods are kept as the client received them: nodes do not put secrets in
them, and reading a large answer back to redact fields would cost every captured call.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

from hoodrun.gateway.jsonrpc import Call

__all__ = ["REDACTED", "excerpts", "is_signing", "redact"]

REDACTED = "[redacted]"
_REDACTED_JSON = orjson.dumps(REDACTED).decode()
# Casefolded. "eth_sign" as a prefix covers eth_signTransaction and eth_signTypedData*.
_SIGNING_PREFIXES = ("personal_", "parity_", "signer_", "account_", "wallet_", "eth_sign")
# A field name is a secret's when, normalized (``_normalized``), it contains one of these...
_SECRET_WORDS = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "privatekey",
    "privkey",
    "secret",  # secretkey, clientSecret
    "mnemonic",
    "seed",  # seedphrase
    "apikey",
    "authorization",
)
# ... or ends with one of these (too short to be looked for inside a name).
_SECRET_ENDINGS = ("pk", "token")


def is_signing(method: Any) -> bool:
    """Whether ``method`` signs or manages accounts (its params and answer are redacted)."""
    return isinstance(method, str) and method.casefold().startswith(_SIGNING_PREFIXES)


def _normalized(name: str) -> str:
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(char for char in folded if char.isalnum())


# Params reuse a handful of names (to, data, from, ...): each is judged once per process. The
# cache is bounded, so names a client makes up cost only their own lookups.
@lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    folded = _normalized(name)
    return any(word in folded for word in _SECRET_WORDS) or folded.endswith(_SECRET_ENDINGS)


def redact(value: Any) -> Any:
    """``value`` with every object field named like a secret, and the params of any signing
    call found in it, replaced by ``"[redacted]"``: a copy where anything changed, else
    ``value`` itself."""
    if isinstance(value, dict):
        signing = "params" in value and is_signing(value.get("method"))
        out: dict[Any, Any] = {}
        changed = False
        for name, item in value.items():
            if isinstance(name, str) and (_secret_name(name) or (signing and name == "params")):
                kept: Any = REDACTED
            else:
                kept = redact(item)
            changed = changed or kept is not item
            out[name] = kept
        return out if changed else value
    if isinstance(value, list):
        items = [redact(item) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
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
        # Field names are only in objects: params without one (most calls) are not walked.
        if b"{" in text:
            redacted = redact(value)
            if redacted is not value:
                text = orjson.dumps(redacted)
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
