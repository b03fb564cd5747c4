"""The dashboard's HTTP side without a browser: pages, headers, the `/` redirect, assets."""

from __future__ import annotations

from httpx import AsyncClient

from plantpulse.web.router import CONTENT_SECURITY_POLICY, missing_vendor_files

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


class TestRoot:
    async def test_a_browser_is_sent_to_the_dashboard(self, client: AsyncClient) -> None:
        answer = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
        assert (answer.status_code, answer.headers["location"]) == (303, "/app/")

    async def test_api_clients_still_get_json(self, client: AsyncClient) -> None:
        for accept in ("application/json", "*/*", "application/json, text/html"):
            answer = await client.get("/", headers={"Accept": accept})
            assert answer.status_code == 200, accept
            assert answer.json()["docs"] == "/docs"


class TestPages:
    async def test_every_page_is_served_under_a_strict_csp_and_holds_no_inline_code(
        self, client: AsyncClient
    ) -> None:
        for path in (
            "/app/",
            "/app/login",
            "/app/alerts",
            "/app/manage",
            "/app/settings",
            "/app/machines/3f2b8c1e-1111-4a4a-9b9b-123456789abc",
        ):
            page = await client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["cache-control"] == "no-store"
            assert "<script>" not in page.text
            assert " style=" not in page.text
            assert (await client.head(path)).status_code == 200, path

    def test_the_policy_allows_nothing_inline_or_foreign(self) -> None:
        directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
        assert directives["default-src"] == "'none'"
        for name in ("script-src", "style-src", "connect-src"):
            assert directives[name] == "'self'"
        assert directives["frame-ancestors"] == "'none'"

    async def test_a_page_holds_no_token_or_user_data(self, client: AsyncClient) -> None:
        page = await client.get("/app/")
        assert "Bearer" not in page.text
        assert "token" not in page.text.lower()


class TestAssets:
    def test_the_pinned_npm_files_are_installed(self) -> None:
        assert missing_vendor_files() == [], "run scripts/setup.sh (npm ci && npm run vendor)"

    async def test_scripts_are_served_gzipped_and_revalidated(self, client: AsyncClient) -> None:
        answer = await client.get(
            "/app/static/vendor/uPlot.iife.min.js", headers={"Accept-Encoding": "gzip"}
        )
        assert answer.status_code == 200
        assert answer.headers["content-encoding"] == "gzip"
        assert answer.headers["cache-control"] == "no-cache"
        assert "etag" in answer.headers
        assert int(answer.headers["content-length"]) < len(answer.content) / 2
        assert "uPlot" in answer.text
        again = await client.get(
            "/app/static/vendor/uPlot.iife.min.js",
            headers={"If-None-Match": answer.headers["etag"]},
        )
        assert again.status_code == 304

    async def test_an_unknown_asset_is_a_404_envelope(self, client: AsyncClient) -> None:
        answer = await client.get("/app/static/js/nope.js")
        assert answer.status_code == 404
        assert answer.json()["status"] == 404
