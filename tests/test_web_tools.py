"""fetch_url and web_search (assistant/tools/web.py) against local stand-ins over real HTTP: the
team's allowlist, redirects off it, the size cap, the address rules, SearXNG's JSON API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from assistant.tools import web as web_tools
from assistant.tools.base import ToolResult

PAGE = (
    "<html><head><title>Docs</title><script>alert('x')</script><style>p{}</style></head>"
    "<body><h1>Install</h1><p>Run <code>pip install thing</code>, then <a href='/next'>go on</a>."
    "</p></body></html>"
)


def stand_in(port_box: list[int]) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/page")

    async def off_list(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{port_box[0]}/page")

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="<p>" + "word " * 100_000 + "</p>", content_type="text/html")

    async def binary(request: web.Request) -> web.Response:
        return web.Response(body=b"\x00\x01", content_type="application/octet-stream")

    async def search(request: web.Request) -> web.Response:
        if request.query.get("format") != "json":
            return web.Response(status=403)
        q = request.query["q"]
        results = [
            {"title": f"{q} guide", "url": "https://docs.example/guide", "content": "How to."},
            {"title": "Second", "url": "https://docs.example/2", "content": "More  text\n"},
        ]
        return web.json_response({"query": q, "results": results if q != "nothing" else []})

    app = web.Application()
    for path, handler in [
        ("/page", page),
        ("/hop", hop),
        ("/off-list", off_list),
        ("/big", big),
        ("/binary", binary),
        ("/search", search),
    ]:
        app.router.add_get(path, handler)
    return app


def with_server(body: Callable[[int], Awaitable[Any]]) -> Any:
    """Run ``body(port)`` with the stand-in listening on 127.0.0.1."""

    async def main() -> Any:
        box: list[int] = []
        runner = web.AppRunner(stand_in(box))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        try:
            return await body(box[0])
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def fetch(path: str, allowlist: list[str], host: str = "127.0.0.1") -> ToolResult:
    return with_server(lambda port: web_tools.fetch(f"http://{host}:{port}{path}", allowlist))


@pytest.fixture
def private_ok(settings):
    settings.FETCH_URL_ALLOW_PRIVATE = True  # the stand-in is on loopback


def test_it_fetches_an_allowed_page_as_markdown(private_ok):
    result = fetch("/page", ["127.0.0.1"])
    assert result.ok, result.output
    assert "# Install" in result.output
    assert "Run `pip install thing`, then [go on](/next)." in result.output
    assert "alert" not in result.output and "p{}" not in result.output
    # A redirect to a listed host is followed.
    result = fetch("/hop", ["127.0.0.1"])
    assert result.ok and "# Install" in result.output and "/page (HTTP 200" in result.output


def test_it_refuses_a_host_off_the_allowlist(private_ok):
    result = fetch("/page", ["127.0.0.1"], host="localhost")
    assert not result.ok
    assert result.output.startswith("localhost is not on this team's documentation allowlist")
    result = fetch("/page", ["docs.example.com", "*.example.org"], host="127.0.0.1")
    assert not result.ok and "not on this team's documentation allowlist" in result.output


def test_it_refuses_a_redirect_off_the_allowlist(private_ok):
    result = fetch("/off-list", ["127.0.0.1"])
    assert not result.ok
    assert "localhost is not on this team's documentation allowlist" in result.output
    assert "Install" not in result.output


def test_it_cuts_an_oversized_page(private_ok, settings):
    settings.FETCH_URL_MAX_BYTES = 10_000
    result = fetch("/big", ["127.0.0.1"])
    assert result.ok and result.truncated
    assert "larger than 10000 bytes: only its beginning was read" in result.output
    assert result.output.count("word") < 2_100


def test_it_refuses_binary_content(private_ok):
    result = fetch("/binary", ["127.0.0.1"])
    assert not result.ok and "application/octet-stream, not a text page" in result.output


def test_it_refuses_private_addresses_unless_the_operator_allows(settings):
    settings.FETCH_URL_ALLOW_PRIVATE = False
    result = fetch("/page", ["127.0.0.1"])
    assert not result.ok
    assert "private or loopback address" in result.output
    assert "FETCH_URL_ALLOW_PRIVATE=true" in result.output
    # A name resolving to loopback is caught at connection time by the checking resolver.
    result = fetch("/page", ["localhost"], host="localhost")
    assert not result.ok and "private or loopback address" in result.output


def test_it_refuses_metadata_addresses_always(private_ok):
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/"):
        host = url.split("/")[2].strip("[]")
        result = asyncio.run(web_tools.fetch(url, [host]))
        assert not result.ok and "link-local, metadata or reserved" in result.output, url
    result = asyncio.run(web_tools.fetch("file:///etc/passwd", ["127.0.0.1"]))
    assert not result.ok and "Only http:// and https://" in result.output


def test_the_allowlist_accepts_hosts_and_subdomain_wildcards():
    assert web_tools.validate_allowlist(" Docs.Python.org.\n*.k8s.io\ndocs.python.org") == (
        "docs.python.org\n*.k8s.io"
    )
    allow = ["docs.python.org", "*.k8s.io"]
    assert web_tools.host_allowed("docs.python.org", allow)
    assert web_tools.host_allowed("kubernetes.k8s.io", allow)
    assert not web_tools.host_allowed("k8s.io", allow)
    assert not web_tools.host_allowed("evilk8s.io", allow)
    assert not web_tools.host_allowed("python.org", allow)
    for bad in ("*", "http://x.org", "x.org/docs", "x.org:8080", "ex ample.org"):
        with pytest.raises(ValueError):
            web_tools.validate_allowlist(bad)


def test_web_search_reads_searxng_json(settings):
    async def body(port: int) -> tuple[ToolResult, ToolResult]:
        settings.SEARXNG_URL = f"http://127.0.0.1:{port}/"
        tool = web_tools.web_search_tool()
        assert tool is not None
        return await tool.run(None, {"query": "kubectl"}), await web_tools.search("nothing")  # type: ignore[arg-type]

    found, empty = with_server(body)
    assert found.ok
    assert found.output.splitlines() == [
        "Results for “kubectl”:",
        "- [kubectl guide](https://docs.example/guide)",
        "  How to.",
        "- [Second](https://docs.example/2)",
        "  More text",
    ]
    assert empty.ok and empty.output == "No results for “nothing”."


def test_web_search_is_off_unless_configured(settings):
    settings.SEARXNG_URL = ""
    assert web_tools.web_search_tool() is None
    settings.SEARXNG_URL = "http://127.0.0.1:9/"  # nothing listens on the discard port
    result = asyncio.run(web_tools.search("x"))
    assert not result.ok and "could not be reached" in result.output
