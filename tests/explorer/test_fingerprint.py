"""Error fingerprints: what varies between occurrences of an error is left out (numbers, ids,
hashes, quoted values, addresses, line numbers), what tells errors apart is kept (the words, the
exception types, the stack's functions)."""

from __future__ import annotations

import re

import pytest

from hoodrun.explorer.fingerprint import fingerprint, normalize_message, normalize_stack

PY_STACK = """Traceback (most recent call last):
  File "/app/server.py", line {a}, in handle
    result = process(request)
  File "/app/logic.py", line {b}, in process
    raise ValueError(f"bad user {{uid}}")
ValueError: bad user {uid}
"""

JS_STACK = """TypeError: Cannot read properties of undefined (reading 'id')
    at handler (/srv/app/src/routes.js:{a}:5)
    at Layer.handle [as handle_request] (/srv/app/node_modules/express/lib/router/layer.js:95:{b})
    at /srv/app/index.js:3:9"""

JAVA_STACK = """java.lang.IllegalStateException: order {uid} is closed
\tat com.acme.Orders.close(Orders.java:{a})
\tat com.acme.Main.main(Main.java:{b})
Caused by: java.io.IOException: disk full
\t... 2 more"""

GO_STACK = """panic: runtime error: index out of range [{uid}] with length 3

goroutine {a} [running]:
main.(*Server).handle(0xc000010000, 0x{b})
\t/app/main.go:{b} +0x1d
main.main()
\t/app/main.go:30 +0x25"""


@pytest.mark.parametrize(
    ("message", "normalized"),
    [
        ("GET /users/12345/orders took 231.5 ms", "GET /users/<num>/orders took <num> ms"),
        ("user 550e8400-e29b-41d4-a716-446655440000 not found", "user <uuid> not found"),
        ("user 550E8400-E29B-41D4-A716-446655440000 not found", "user <uuid> not found"),
        ("from 0x" + "ab" * 20 + " to 0x" + "cd" * 20, "from <address> to <address>"),
        ("tx 0x" + "ef" * 32 + " reverted", "tx <hash> reverted"),
        ("pointer 0x7ffd1c and word deadbeef99", "pointer <hex> and word <hex>"),
        ("commit 3f2a1b9 broke it", "commit <hex> broke it"),
        ("no key 'user_id' in \"payload\" or `cfg`", "no key <str> in <str> or <str>"),
        ("mail to bob.smith+x@example.co.uk bounced", "mail to <email> bounced"),
        ("token AbCdEfGhIjKlMnOpQrSt1234 expired", "token <id> expired"),
        ("at /app/x.py:123 and line 45", "at /app/x.py:<num> and line <num>"),
        ("connect 10.0.0.12:5432 refused", "connect <num>:<num> refused"),
        ("retry   in\n\t2s", "retry in <num>s"),
        ("worker-7 crashed", "worker-<num> crashed"),
        ("request served", "request served"),
    ],
)
def test_what_varies_is_replaced(message: str, normalized: str) -> None:
    assert normalize_message(message) == normalized


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("order 1234 failed after 3 retries", "order 98 failed after 12 retries"),
        (
            "user 550e8400-e29b-41d4-a716-446655440000 timed out",
            "user 123e4567-e89b-12d3-a456-426614174000 timed out",
        ),
        ("nonce too low: next 0x1f, got 0x1a", "nonce too low: next 0x2, got 0x0"),
        ("KeyError: 'email'", "KeyError: 'phone'"),
        ("transfer from 0x" + "1" * 40 + " failed", "transfer from 0x" + "a" * 40 + " failed"),
        (
            "slow query (812.5 ms) at 2026-11-29T10:00:00Z",
            "slow query (3 ms) at 2025-01-02T23:59:59Z",
        ),
        ("ECONNREFUSED 127.0.0.1:6379", "ECONNREFUSED 10.1.2.3:6380"),
    ],
)
def test_the_same_error_with_other_values_has_one_fingerprint(one: str, other: str) -> None:
    assert fingerprint(one) == fingerprint(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("order 1234 failed", "order 1234 shipped"),
        ("connection refused", "connection reset"),
        ("KeyError: 'email'", "ValueError: 'email'"),
        ("payment declined", "payment declined: card expired"),
    ],
)
def test_different_errors_have_different_fingerprints(one: str, other: str) -> None:
    assert fingerprint(one) != fingerprint(other)


def test_a_fingerprint_is_16_hex_characters() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint("boom"))
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint("boom", PY_STACK.format(a=1, b=2, uid=3)))
    assert fingerprint("") != fingerprint("", "x")


@pytest.mark.parametrize("stack", [PY_STACK, JS_STACK, JAVA_STACK, GO_STACK])
def test_line_numbers_and_values_in_a_stack_do_not_matter(stack: str) -> None:
    one = fingerprint("it failed", stack.format(a=10, b=20, uid=1234))
    other = fingerprint("it failed", stack.format(a=11, b=250, uid=98))
    assert one == other


def test_python_stacks_keep_the_type_and_the_functions() -> None:
    types, frames = normalize_stack(PY_STACK.format(a=1, b=2, uid=3))
    assert types == ["ValueError"]
    assert frames == ["server.py:handle", "logic.py:process"]  # no source lines, no numbers
    # Editing a frame's source line leaves the error as it was.
    edited = PY_STACK.replace("result = process(request)", "result = process(request, retry=2)")
    assert fingerprint("x", edited.format(a=1, b=2, uid=3)) == fingerprint(
        "x", PY_STACK.format(a=1, b=2, uid=3)
    )


def test_javascript_java_and_go_frames() -> None:
    assert normalize_stack(JS_STACK.format(a=1, b=2)) == (
        ["TypeError"],
        ["handler@routes.js", "Layer.handle [as handle_request]@layer.js", "<anonymous>@index.js"],
    )
    types, frames = normalize_stack(JAVA_STACK.format(a=1, b=2, uid=3))
    assert types == ["java.lang.IllegalStateException", "java.io.IOException"]
    assert frames[:2] == ["com.acme.Orders.close@Orders.java", "com.acme.Main.main@Main.java"]
    types, frames = normalize_stack(GO_STACK.format(a=1, b=2, uid=3))
    assert types == ["panic"]
    assert "main.(*Server).handle" in frames and "main.main" in frames


def test_another_function_or_exception_type_is_another_error() -> None:
    stack = PY_STACK.format(a=1, b=2, uid=3)
    assert fingerprint("x", stack) != fingerprint("x", stack.replace("in process", "in validate"))
    assert fingerprint("x", stack) != fingerprint("x", stack.replace("ValueError:", "TypeError:"))
    assert fingerprint("x", stack) != fingerprint("x")  # the stack counts
    assert fingerprint("x", stack) != fingerprint("y", stack)  # and so does the message


def test_a_recursion_counts_its_frame_once() -> None:
    frame = '  File "/app/tree.py", line {n}, in walk\n    return walk(node.child)\n'
    deep = (
        "Traceback (most recent call last):\n"
        + "".join(frame.format(n=n) for n in range(500))
        + "RecursionError: maximum recursion depth exceeded\n"
    )
    shallow = (
        "Traceback (most recent call last):\n"
        + frame.format(n=7)
        + ("RecursionError: maximum recursion depth exceeded\n")
    )
    assert normalize_stack(deep) == (["RecursionError"], ["tree.py:walk"])
    assert fingerprint("too deep", deep) == fingerprint("too deep", shallow)
