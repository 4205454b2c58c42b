"""Who is asking, for the routes a customer calls with a project's API key (logs, the request
explorer): ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``, verified like the gateway does
(cached, revocations purged). The admin token is accepted too, and then the project is named by
the ``project`` query parameter. A key never reaches logs or errors: errors say what to fix.

A key restricted to browser origins (``KeyRecord.origins`` set) is a **browser key**: it is
embedded in public JavaScript, so whoever loads the page holds it. ``ProjectScope.browser`` says
so, and the routes keep what only the project's own people may see from it (the request
explorer's list, captured payloads: ``hoodrun.api.logs_query``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, Query

from hoodrun.api.app import ApiError
from hoodrun.keys.verifier import KeyDenied, KeyStoreDown, KeyVerifier

__all__ = ["ProjectScope", "project_scope"]


@dataclass(frozen=True, slots=True)
class ProjectScope:
    """The project a request may see and act for. ``browser``: the caller's key is restricted to
    browser origins (a public key: see the module's docstring)."""

    project_id: str
    org_id: str
    key_id: str
    plan: str
    admin: bool = False
    browser: bool = False


def project_scope(
    verifier: KeyVerifier, admin_token: str | None
) -> Callable[..., Awaitable[ProjectScope]]:
    """A FastAPI dependency resolving the caller's ``ProjectScope`` (401 otherwise)."""
    expected = admin_token.encode() if admin_token else None

    async def scope(
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
        project: Annotated[
            str | None, Query(description="With the admin token: the project (prj_...).")
        ] = None,
    ) -> ProjectScope:
        scheme, _, given = (authorization or "").partition(" ")
        secret = given.strip() if scheme.lower() == "bearer" and given else (x_api_key or "")
        if not secret:
            raise ApiError(
                401, "unauthorized", "send Authorization: Bearer <API key> (or X-Api-Key)"
            )
        if expected is not None and hmac.compare_digest(secret.encode(), expected):
            if not project:
                raise ApiError(400, "project_required", "with the admin token, name ?project=")
            return ProjectScope(project, "", "", "", admin=True)
        try:
            record = await verifier.verify(secret)
        except KeyDenied as exc:
            raise ApiError(401, "invalid_key", f"the API key is not valid ({exc.reason})") from None
        except KeyStoreDown:
            raise ApiError(
                503, "store_unavailable", "keys cannot be checked now; try again shortly"
            ) from None
        if project is not None and project != record.project_id:
            raise ApiError(403, "forbidden", "a key sees only its own project")
        return ProjectScope(
            record.project_id,
            record.org_id,
            record.id,
            record.plan,
            browser=record.origins is not None,
        )

    return scope
