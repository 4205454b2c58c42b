"""The pages' scripts, served from npm's install (``scripts/setup`` runs ``npm ci``): nothing of
them is in the repository. Only the files named here are served, never a path a request makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse, PlainTextResponse, Response

__all__ = ["ASSETS", "assets_router"]

ASSETS: Final[dict[str, tuple[str, str]]] = {
    # name in the URL: (path under web.assets_dir, npm package)
    "htmx.min.js": ("htmx.org/dist/htmx.min.js", "htmx.org"),
    "chart.umd.min.js": ("chart.js/dist/chart.umd.min.js", "chart.js"),
}
_CACHE = "public, max-age=86400"
# A checkout's own node_modules (next to the package), for a relative web.assets_dir that is not
# where the platform was started from.
_CHECKOUT = Path(__file__).resolve().parents[2]


def assets_router(assets_dir: Path, prefix: str) -> APIRouter:
    """``GET {prefix}/assets/{name}`` for the files of ``ASSETS`` under ``assets_dir``."""
    router = APIRouter(prefix=prefix, include_in_schema=False)

    @router.get("/assets/{name}")
    async def asset(name: str) -> Response:
        known = ASSETS.get(name)
        if known is None:
            return PlainTextResponse(f"no asset {name!r}", status_code=404)
        relative, package = known
        path = assets_dir / relative
        if not path.is_file() and not assets_dir.is_absolute():
            path = _CHECKOUT / assets_dir / relative
        if not path.is_file():
            return PlainTextResponse(
                f"{name} is not installed: {path} is missing. Run `npm ci` (scripts/setup does) "
                f"in the directory holding package.json, or point web.assets_dir at the "
                f"node_modules that has the {package} package.",
                status_code=404,
            )
        return FileResponse(
            path,
            media_type="text/javascript",
            headers={"Cache-Control": _CACHE, "X-Content-Type-Options": "nosniff"},
        )

    return router
