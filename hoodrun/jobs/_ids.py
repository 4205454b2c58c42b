"""Job ids that sort in the order they were made: ``job_`` + 13 base32 digits of the wall clock in
nanoseconds + 12 random ones.

Jobs of the same priority run in the order they were enqueued; ``created_at`` comes from the
queue's injected clock and may be equal for many jobs (a batch, or a fixed test clock), so the id
breaks the tie. Within one process the time part strictly increases; across processes it is as
ordered as their clocks.
"""

from __future__ import annotations

import secrets
import threading
import time

__all__ = ["new_job_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: ascending in ASCII
_TIME_DIGITS = 13  # 65 bits: nanoseconds until long after anyone cares
_RANDOM_DIGITS = 12

_lock = threading.Lock()
_last = 0


def _base32(value: int, digits: int) -> str:
    out = []
    for _ in range(digits):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_job_id() -> str:
    global _last
    with _lock:
        now = max(time.time_ns(), _last + 1)
        _last = now
    return f"job_{_base32(now, _TIME_DIGITS)}{_base32(secrets.randbits(60), _RANDOM_DIGITS)}"
