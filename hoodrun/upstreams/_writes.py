"""Making a retried ``eth_sendRawTransaction`` safe to report.

When an earlier attempt may have delivered the transaction, the retry's answer can be an error
only because of that first copy: "already known" (it sits in the pool) or "nonce too low" (it was
already mined). Neither is a failure of the client's transaction, so the caller gets the success
reply the first copy would have produced: the transaction hash, which is keccak256 of the raw
signed bytes. "nonce too low" also fits a *different* transaction with the same nonce, so it is
only accepted once the node confirms it knows our hash.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from Crypto.Hash import keccak

__all__ = ["ALREADY_KNOWN", "NONCE_TOO_LOW", "error_message", "success_reply", "tx_hash"]

ALREADY_KNOWN = re.compile(
    r"already known|known transaction|alreadyknown|already imported|transaction already exists",
    re.IGNORECASE,
)
NONCE_TOO_LOW = re.compile(r"nonce too low|nonce is too low|oldnonce", re.IGNORECASE)


def tx_hash(raw_tx: bytes) -> str:
    """``0x``-prefixed keccak256 of the raw signed transaction (typed or legacy)."""
    return "0x" + keccak.new(digest_bits=256, data=raw_tx).hexdigest()


def error_message(reply: bytes) -> str | None:
    """The error text (message and data) of a single JSON-RPC error reply, else None."""
    if b'"error"' not in reply:
        return None
    try:
        parsed: Any = orjson.loads(reply)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if not isinstance(error, dict):
        return None
    message = str(error.get("message", ""))
    data = error.get("data")
    return f"{message} {data}" if data is not None else message


def success_reply(request: bytes, result: str) -> bytes:
    """``{"jsonrpc":"2.0","id":<the request's id>,"result":...}``, as a one-item batch if the
    request was one."""
    parsed: Any = orjson.loads(request)
    call = parsed[0] if isinstance(parsed, list) else parsed
    reply = {"jsonrpc": "2.0", "id": call.get("id"), "result": result}
    return orjson.dumps([reply] if isinstance(parsed, list) else reply)
