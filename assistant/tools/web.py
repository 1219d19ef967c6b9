"""Documentation lookup: fetch_url (a page from a host on the team's documentation allowlist, as
Markdown) and web_search (a SearXNG instance's JSON API, when the operator configures one).

Both run in the worker, not the sandbox: they need no workspace, and the sandbox has no
network. So the worker enforces the rules itself, on every hop:

- the scheme is http or https and the host is on the team's allowlist (``docs.example.com``
  exactly, ``*.example.com`` for its subdomains); a redirect is followed only to a listed host,
  at most :data:`MAX_REDIRECTS` times;
- the addresses are those of the teams' model bases (``llm/bases.py``): never link-local or
  metadata, private and loopback only with ``FETCH_URL_ALLOW_PRIVATE``. The connection resolves
  through the checking resolver, so what it connects to is what was checked; IP literals are
  checked before connecting. No proxy from the environment is used (``trust_env=False``);
- at most ``FETCH_URL_MAX_BYTES`` are read (then the page is cut, and says so) within
  ``FETCH_URL_TIMEOUT`` seconds; HTML becomes Markdown (markdownify), the result is capped like
  every tool's output.

The SearXNG URL is the operator's, like LLM_API_BASE, and is not checked against the rules.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from django.conf import settings

from assistant import hosts
from assistant.llm.bases import BaseRefused, CheckingResolver, Rules, check_saved

from .base import Tool, ToolContext, ToolResult, clip, params

MAX_REDIRECTS = 5
MAX_ALLOWLIST_ENTRIES = 100
DOCS = Rules(
    what="The address",
    sent="documentation fetches",
    switch="FETCH_URL_ALLOW_PRIVATE",
    example=" (for an internal documentation server, say)",
)
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
USER_AGENT = "Tandem-fetch_url (documentation lookup for a coding assistant)"


class FetchRefused(Exception):
    """Why a page was not fetched, in words for the model (and the member reading along)."""


# --- The allowlist ------------------------------------------------------------------------------


def parse_allowlist(text: str) -> list[str]:
    return [line.strip().lower() for line in text.splitlines() if line.strip()]


def validate_allowlist(text: str) -> str:
    """The allowlist normalised (one host a line), or ValueError saying which line is wrong."""
    entries: list[str] = []
    for entry in parse_allowlist(text):
        entry = entry.rstrip(".")
        if "://" in entry or "/" in entry or ":" in entry.replace("::", ""):
            raise ValueError(f"“{entry}”: give a host name only, without scheme, port or path.")
        if entry in ("*", "*.") or not (_HOST_RE.match(entry) or _is_ip(entry)):
            raise ValueError(
                f"“{entry}” is not a host name (docs.example.com, or *.example.com for every "
                "subdomain)."
            )
        if entry not in entries:
            entries.append(entry)
    if len(entries) > MAX_ALLOWLIST_ENTRIES:
        raise ValueError(f"At most {MAX_ALLOWLIST_ENTRIES} hosts, please.")
    return "\n".join(entries)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_allowed(host: str, allowlist: list[str]) -> bool:
    return any(hosts.matches(host, entry) for entry in allowlist)


# --- fetch_url ----------------------------------------------------------------------------------


def _check_url(url: str, allowlist: list[str]) -> str:
    """The URL's host, after the scheme, allowlist and literal-address checks."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"Only http:// and https:// addresses can be fetched, not “{url}”.")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise FetchRefused(f"“{url}” has no host name.")
    if parts.username or parts.password:
        raise FetchRefused("Addresses with a user name or password are not fetched.")
    if not host_allowed(host, allowlist):
        listed = ", ".join(allowlist)
        raise FetchRefused(
            f"{host} is not on this team's documentation allowlist ({listed}); a team admin can "
            "add it in the team's settings."
        )
    try:
        check_saved(url, DOCS)
    except BaseRefused as exc:
        raise FetchRefused(str(exc)) from None
    return host


def _refusal_in(exc: BaseException) -> BaseRefused | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BaseRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def to_markdown(html: str) -> str:
    """The page's readable text as Markdown: scripts, styles and the head's contents dropped
    (markdownify alone keeps their text), the title first."""
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["head", "script", "style", "noscript", "svg", "template", "iframe"]):
        tag.decompose()
    text = MarkdownConverter(heading_style="ATX").convert_soup(soup)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return f"Title: {title}\n\n{text}" if title else text


async def fetch(url: str, allowlist: list[str]) -> ToolResult:
    """The page at ``url`` as Markdown, or why not, in words."""
    url = url.strip()
    limit = settings.FETCH_URL_MAX_BYTES
    timeout = aiohttp.ClientTimeout(total=settings.FETCH_URL_TIMEOUT)
    connector = aiohttp.TCPConnector(resolver=CheckingResolver(rules=DOCS), force_close=True)
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False
        ) as session:
            for _hop in range(MAX_REDIRECTS + 1):
                _check_url(url, allowlist)
                headers = {"User-Agent": USER_AGENT, "Accept": "text/html, text/*;q=0.9"}
                async with session.get(url, allow_redirects=False, headers=headers) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location", "")
                        if not location:
                            raise FetchRefused(f"{url} redirected without saying where to.")
                        url = urljoin(url, location)
                        continue
                    return await _page(url, response, limit)
            raise FetchRefused(f"Too many redirects (more than {MAX_REDIRECTS}); stopped at {url}.")
    except FetchRefused as exc:
        return ToolResult(ok=False, output=str(exc))
    except TimeoutError:
        return ToolResult(
            ok=False, output=f"{url} did not answer within {settings.FETCH_URL_TIMEOUT} s."
        )
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        if refused := _refusal_in(exc):
            return ToolResult(ok=False, output=str(refused))
        return ToolResult(ok=False, output=f"{url} could not be fetched: {exc}")


async def _page(url: str, response: aiohttp.ClientResponse, limit: int) -> ToolResult:
    kind = response.content_type or "application/octet-stream"
    if not kind.startswith(_TEXT_TYPES):
        return ToolResult(ok=False, output=f"{url} is {kind}, not a text page; it is not shown.")
    body, cut = await _read_capped(response, limit)
    text = body.decode(response.charset or "utf-8", errors="replace")
    if kind.startswith(_HTML_TYPES):
        text = to_markdown(text)
    header = f"{url} (HTTP {response.status}, {kind})"
    if cut:
        header += f" [the page is larger than {limit} bytes: only its beginning was read]"
    output, clipped = clip(f"{header}\n\n{text}")
    return ToolResult(ok=response.status < 400, output=output, truncated=cut or clipped)


def fetch_url_tool(allowlist: list[str]) -> Tool:
    """fetch_url for one team: its allowlist is named in the description the model reads."""

    async def run(ctx: ToolContext | None, args: dict[str, Any]) -> ToolResult:
        return await fetch(args["url"], allowlist)

    hosts = ", ".join(allowlist)
    return Tool(
        name="fetch_url",
        description=(
            "Fetch a documentation page and read it as Markdown. Only these hosts can be "
            f"fetched: {hosts}. Use it to check an API or a tool's documentation rather than "
            "guess."
        ),
        parameters=params(
            ["url"], url={"type": "string", "description": "The page's http(s) address"}
        ),
        read_only=True,
        run=run,
    )


# --- web_search ---------------------------------------------------------------------------------


async def search(query: str) -> ToolResult:
    if not query.strip():
        return ToolResult(ok=False, output="The query is empty.")
    base = settings.SEARXNG_URL.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=settings.FETCH_URL_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.get(f"{base}/search", params={"q": query, "format": "json"}) as response,
        ):
            if response.status != 200:
                return ToolResult(
                    ok=False, output=f"The search service answered HTTP {response.status}."
                )
            body, _cut = await _read_capped(response, 1_000_000)
        data = json.loads(body)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise ValueError("no results list")
    except TimeoutError:
        return ToolResult(ok=False, output="The search service did not answer in time.")
    except (aiohttp.ClientError, OSError) as exc:
        return ToolResult(ok=False, output=f"The search service could not be reached: {exc}")
    except ValueError:
        return ToolResult(ok=False, output="The search service's answer was not SearXNG JSON.")
    lines = []
    for item in results[: settings.WEB_SEARCH_RESULTS]:
        if not isinstance(item, dict):
            continue
        title = str(item.get("title") or "").strip()
        link = str(item.get("url") or "").strip()
        snippet = " ".join(str(item.get("content") or "").split())[:400]
        lines.append(f"- [{title or link}]({link})" + (f"\n  {snippet}" if snippet else ""))
    if not lines:
        return ToolResult(ok=True, output=f"No results for “{query}”.")
    output, clipped = clip(f"Results for “{query}”:\n" + "\n".join(lines))
    return ToolResult(ok=True, output=output, truncated=clipped)


def web_search_tool() -> Tool | None:
    """web_search when SEARXNG_URL is set, else None (not offered)."""
    if not settings.SEARXNG_URL:
        return None

    async def run(ctx: ToolContext | None, args: dict[str, Any]) -> ToolResult:
        return await search(args["query"])

    return Tool(
        name="web_search",
        description=(
            "Search the web; returns titles, addresses and snippets. Read a result with "
            "fetch_url when its host is allowed."
        ),
        parameters=params(["query"], query={"type": "string", "description": "What to search"}),
        read_only=True,
        run=run,
    )
