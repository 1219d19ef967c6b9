"""Content-Security-Policy, WebSocket origins, staff vs superuser (issue 12, item 11).

Every response carries a CSP that allows no inline script, handler, style or eval; the
templates have none left; the WebSocket's Origin must match the port too; a browser going
through the pages that used inline handlers reports no CSP violation."""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.test import Client

from config.origin import origin_allowed
from tests.conftest import PASSWORD

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def directives(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return {
        part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else ""
        for part in (p.strip() for p in header.split(";"))
        if part
    }


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/healthz", "/api/v1/me", "/nope/"])
def test_every_response_carries_the_policy(path):
    response = Client().get(path)
    policy = directives(response)
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert "'unsafe-eval'" not in response["Content-Security-Policy"]
    assert policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'"
    assert policy["base-uri"] == "'self'"
    assert policy["connect-src"].split()[0] == "'self'"


@pytest.mark.django_db
def test_connect_src_names_the_hosts_websocket():
    response = Client(HTTP_HOST="localhost").get("/accounts/login/")
    assert directives(response)["connect-src"] == "'self' ws://localhost wss://localhost"


class InlineFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        # json_script's <script type="application/json"> is data, never run: allowed.
        if tag == "script" and "src" not in names and dict(attrs).get("type") != "application/json":
            self._in_script = True
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {name}=" for name in names if name.startswith("on")]
        if "style" in names:
            self.found.append(f"{tag} style=")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.found.append("inline <script>")


def test_no_template_has_inline_script_handlers_or_styles():
    offenders = []
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        if re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text):
            offenders.append(f"{path.name}: inline <script>")
        if re.search(r"<style\b", text):
            offenders.append(f"{path.name}: <style>")
        if re.search(r"\son[a-z]+\s*=", text):
            offenders.append(f"{path.name}: on…= handler")
        if re.search(r"\sstyle\s*=", text):
            offenders.append(f"{path.name}: style attribute")
    assert not offenders


@pytest.mark.django_db
def test_pages_render_without_inline_script(team, alice, conversation, no_runs):
    client = Client()
    assert client.login(email=alice.email, password=PASSWORD)
    invited = client.post("/t/acme/members/", {"email": "", "role": "member"})
    pages = [
        invited,
        client.get(f"/t/acme/c/{conversation.uuid}/"),
        client.get("/t/acme/api-keys/"),
        client.get("/t/acme/settings/"),
        client.get("/t/acme/usage/"),
        client.get("/api/v1/docs"),
    ]
    for page in pages:
        assert page.status_code == 200
        finder = InlineFinder()
        finder.feed(page.content.decode())
        assert not finder.found, (page.wsgi_request.path, finder.found)


# --- The WebSocket's Origin ----------------------------------------------------------------


def scope(origin: str | None, host: str = "127.0.0.1:8000") -> dict:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "headers": headers}


def test_the_origin_must_match_scheme_host_and_port(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "tandem.example.com"]
    settings.SITE_URL = "https://tandem.example.com"
    settings.CSRF_TRUSTED_ORIGINS = ["https://tandem.example.com"]
    assert origin_allowed(scope("http://127.0.0.1:8000"))
    assert not origin_allowed(scope("http://127.0.0.1:9000"))  # same host, another port
    assert not origin_allowed(scope("http://127.0.0.1"))
    assert not origin_allowed(scope("http://evil.example"))
    assert not origin_allowed(scope(None))
    assert not origin_allowed(scope("null"))
    # Behind nginx ($host carries no port): the site's own origin, on its default port.
    assert origin_allowed(scope("https://tandem.example.com", host="tandem.example.com"))
    assert not origin_allowed(scope("https://tandem.example.com:8443", host="tandem.example.com"))
    # SITE_URL counts whatever the Host header.
    assert origin_allowed(scope("https://tandem.example.com", host="10.0.0.5:8000"))
    # A Host outside ALLOWED_HOSTS is nobody's origin.
    assert not origin_allowed(scope("http://other.example:8000", host="other.example:8000"))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_page_on_another_port_cannot_open_a_members_socket(stack, conversation, bob):
    import websockets
    from websockets.exceptions import InvalidStatus

    from tests.helpers import session_cookie

    other_port = stack.base_url.rsplit(":", 1)[0] + ":1"
    cookie = session_cookie(bob)

    async def attempt(origin: str):
        try:
            ws = await websockets.connect(
                f"{stack.ws_url}/ws/conversations/{conversation.uuid}/",
                additional_headers={"Origin": origin, "Cookie": f"sessionid={cookie}"},
                open_timeout=10,
            )
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    assert asyncio.run(attempt(other_port)) == 403
    assert asyncio.run(attempt(stack.base_url)) == 101


# --- A real browser: the pages that had inline handlers, with the policy on -------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_browser_reports_no_policy_violation(stack, new_context, team, alice, conversation):
    from tests.helpers import session_cookie

    context = new_context("alice", base_url=stack.base_url)
    context.add_cookies(
        [{"name": "sessionid", "value": session_cookie(alice), "url": stack.base_url}]
    )
    page = context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.goto("/t/acme/members/")
    page.get_by_role("button", name="Invite").click()
    link = page.get_by_test_id("invite-link")
    link.click()  # data-select-on-click
    assert page.evaluate("window.getSelection().toString() || document.activeElement.value")
    # A confirm() declined leaves the member in place (data-confirm, no inline handler).
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Remove").first.click()
    assert page.url.endswith("/t/acme/members/")
    page.goto(f"/t/acme/c/{conversation.uuid}/")
    page.get_by_test_id("composer").wait_for()
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete").click()
    assert page.url.endswith(f"/c/{conversation.uuid}/")
    page.goto("/t/acme/usage/")
    page.goto("/api/v1/docs")
    page.locator("#ops details.op").first.wait_for()
    assert not violations, violations
