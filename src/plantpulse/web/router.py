"""Dashboard pages under /app/, their static files, and the headers they are served with.

The pages are server-rendered shells: layout, navigation, forms and empty regions, the same for
every user (no data, no secrets). One ES module per page fills them from the REST API and the
WebSocket stream with the user's bearer token, so the API stays the only gatekeeper and the
only data source: everything a page shows is also available with curl.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plantpulse import __version__
from plantpulse.alerts.models import Condition, Severity
from plantpulse.machines.models import MachineStatus

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
# Copied from the pinned npm packages by `npm ci && npm run vendor` (scripts/setup.sh, Dockerfile).
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")

PREFIX = "/app"

# No inline script or style anywhere: every script and stylesheet is a file served from here.
# connect-src 'self' covers the same-origin WebSocket (CSP Level 3).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "media-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _page(request: Request, template: str, *, title: str, nav: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {
            "title": title,
            "nav": nav,
            "version": __version__,
            "statuses": [s.value for s in MachineStatus],
            "severities": [s.value for s in Severity],
            "conditions": [c.value for c in Condition],
            **context,
        },
    )


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def fleet_page(request: Request) -> HTMLResponse:
    """Fleet overview: every machine with status, latest values and alerts, live."""
    return _page(request, "fleet.html", title="Fleet", nav="fleet")


@router.api_route("/login", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    """Sign in."""
    return _page(request, "login.html", title="Sign in", nav="login")


@router.api_route("/machines/{machine_id}", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def machine_page(request: Request, machine_id: uuid.UUID) -> HTMLResponse:
    """One machine: live charts, history with downsampling, CSV export."""
    return _page(request, "machine.html", title="Machine", nav="fleet", machine_id=str(machine_id))


@router.api_route("/alerts", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def alerts_page(request: Request) -> HTMLResponse:
    """Active and recent alerts, acknowledge with a comment, live."""
    return _page(request, "alerts.html", title="Alerts", nav="alerts")


@router.api_route("/manage", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def manage_page(request: Request) -> HTMLResponse:
    """Machines management (machines:write; delete with machines:delete)."""
    return _page(request, "manage.html", title="Machines", nav="manage")


@router.api_route("/settings", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def settings_page(request: Request) -> HTMLResponse:
    """Alert rules and system settings (config:write)."""
    return _page(request, "settings.html", title="Settings", nav="settings")


def _wants_html(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            accept = value.decode("latin-1").lower()
            return "text/html" in accept and not accept.startswith("application/json")
    return False


class DashboardHeaders:
    """Security headers on everything under /app/, and browsers that open `/` go to the
    dashboard (API clients asking for JSON, or for anything, still get JSON there).

    Pure ASGI, so the API routes pay one string comparison, not a BaseHTTPMiddleware hop."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/" and scope["method"] in ("GET", "HEAD") and _wants_html(scope):
            await RedirectResponse(f"{PREFIX}/", status_code=303)(scope, receive, send)
            return
        if not (path == PREFIX or path.startswith(f"{PREFIX}/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith(f"{PREFIX}/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control",)
                ]
                headers.extend(SECURITY_HEADERS)
                # Pages: never stored (they are tiny). Files: revalidated by ETag each load,
                # so a deploy is seen at once and an unchanged file costs a 304.
                headers.append((b"cache-control", b"no-cache" if static else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def missing_vendor_files() -> list[str]:
    return [name for name in VENDOR_FILES if not (STATIC / "vendor" / name).is_file()]


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard on `app`: pages, static files (gzip), headers, the `/` redirect."""
    if missing := missing_vendor_files():
        log.error(
            "dashboard assets missing in %s (%s): run scripts/setup.sh (npm ci && npm run "
            "vendor in src/plantpulse/web); the charts will not draw until then",
            STATIC / "vendor",
            ", ".join(missing),
        )
    app.include_router(router)
    app.mount(
        f"{PREFIX}/static",
        GZipMiddleware(StaticFiles(directory=str(STATIC), check_dir=False), minimum_size=512),
        name="dashboard-static",
    )
    app.add_middleware(DashboardHeaders)
