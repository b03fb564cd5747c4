"""The built-in dashboard: server-rendered pages under /app/ and the scripts that fill them from
the REST API and the WebSocket stream (no build step, no CDN)."""

from plantpulse.web.router import install_dashboard

__all__ = ["install_dashboard"]
