"""Logs a known mix of lines through ``HoodRunLogHandler`` and exits (run by the client's tests
as a subprocess): ``python tests/client/sender.py URL KEY --count N --tag T [--no-close]``.

Of every 100 lines (``i`` = 0, 1, ...): 60 info, 20 debug, 10 warn ``slow query``, 5 error
``payment``, 2 error ``order ... not found``, 2 error with a ``ValueError`` stack, 1 critical
``disk ... full``: five errors (fingerprints) whose numbers vary. Prints the handler's counters as
JSON once closed; with ``--no-close`` it only exits, leaving the last lines to the exit's flush.
"""

from __future__ import annotations

import argparse
import json
import logging

from hoodrun.client import HoodRunLogHandler

FINGERPRINTED = {"slow": 10, "payment": 5, "order": 2, "parse": 2, "disk": 1}  # per 100 lines
LEVELS = {"info": 60, "debug": 20, "warn": 10, "error": 9, "fatal": 1}  # per 100 lines


def parse(text: str) -> int:
    raise ValueError(f"bad value {text}")


def log_lines(log: logging.Logger, count: int, tag: str) -> None:
    for i in range(count):
        r = i % 100
        if r < 60:
            log.info("%s request %d served in %d ms", tag, i, i % 50, extra={"n": i})
        elif r < 80:
            log.debug("%s cache miss %d", tag, i)
        elif r < 90:
            log.warning("slow query %d took %d ms", i, 100 + i % 900)
        elif r < 95:
            log.error("payment %d failed", i, extra={"order": i})
        elif r < 97:
            log.error("order %d not found for user %d", i, i * 7)
        elif r < 99:
            try:
                parse(str(i))
            except ValueError:
                log.exception("could not parse line %d", i)
        else:
            log.critical("disk %d is full", i % 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--tag", default="p")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--no-close", action="store_true")
    args = parser.parse_args()
    handler = HoodRunLogHandler(
        args.url,
        api_key=args.key,
        service=f"sender-{args.tag}",
        batch_size=args.batch_size,
        flush_interval=args.flush_interval,
    )
    log = logging.getLogger("sender")
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    log_lines(log, args.count, args.tag)
    if args.no_close:
        return  # the exit flushes
    handler.close()
    counters = {"sent": handler.sent, "retried": handler.retried, "dropped": handler.dropped}
    print(json.dumps(counters))


if __name__ == "__main__":
    main()
