"""The Tools page and an MCP tool in a conversation, in the browser against the production
topology (Daphne, a Celery worker, the scripted fake provider) and the stand-in MCP server over
streamable HTTP: an admin adds the server and enables one tool as "ask", the agent calls it, a
teammate approves, the result shows; set to "never", the same call is refused in words."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from assistant.models import ToolCall, ToolCallStatus
from mcpservers.models import MCPServer
from tests.test_browser import open_page, run_bubble, send, sign_in_to_conversation
from tests.test_mcp import http_standin  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot-tools.png"


def tool(name: str, **args) -> str:
    return f"[[tool {name} {json.dumps(args)}]]"


def save(page, row) -> None:
    """Save a tool's row and wait for the card the server sends back (htmx swaps it in)."""
    with page.expect_response(lambda r: r.request.method == "POST" and "/tools/" in r.url):
        row.get_by_test_id("tool-save").click()


def test_an_admin_adds_a_server_a_teammate_approves_its_tool(
    stack,
    new_context,
    conversation,
    alice,
    bob,
    http_standin,  # noqa: F811 (the fixture)
):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, alice.email, conversation)
    page.goto(f"/t/{conversation.team.slug}/tools/")
    form = page.get_by_test_id("add-server")
    form.get_by_label("Name").fill("standin")
    form.get_by_label("Kind").select_option("http")
    form.get_by_label("URL").fill(http_standin)
    form.get_by_label("Token").fill("s3cret")
    form.get_by_role("button", name="Add server").click()

    # Listed by the worker; the card polls until the tools are there.
    card = page.locator("[data-testid=mcp-server][data-server=standin]")
    echo = card.locator("[data-testid=mcp-tool][data-tool=echo]")
    expect(echo).to_be_visible(timeout=30_000)
    expect(echo).to_contain_text("standin__echo")
    echo.get_by_test_id("tool-enabled").check()
    expect(echo.get_by_test_id("tool-policy")).to_have_value("ask")
    save(page, echo)
    expect(
        page.locator("[data-testid=mcp-tool][data-tool=echo] [data-testid=tool-enabled]")
    ).to_be_checked()
    assert MCPServer.objects.get(name="standin").tools.get(name="echo").enabled

    watcher = open_page(new_context, "bob", stack)
    sign_in_to_conversation(watcher, bob.email, conversation)
    page.goto(f"/t/{conversation.team.slug}/c/{conversation.uuid}/")
    run_id = send(page, "Ask the ticket system " + tool("standin__echo", text="hi from MCP"))

    call = run_bubble(watcher, run_id).locator("[data-tool=standin__echo]")
    expect(call).to_have_attribute("data-status", "awaiting", timeout=30_000)
    expect(call.get_by_test_id("approval")).to_contain_text("call this tool")
    expect(call.get_by_test_id("always-allow")).to_have_count(0)
    call.get_by_test_id("approve").click()
    expect(call).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(call.get_by_test_id("decision")).to_contain_text(f"Approved by {bob.name}")
    mine = run_bubble(page, run_id).locator("[data-tool=standin__echo]")
    mine.locator("summary").click()
    expect(mine.get_by_test_id("tool-output")).to_have_text("echo: hi from MCP")

    # "Never": refused in words, never run.
    page.goto(f"/t/{conversation.team.slug}/tools/")
    echo = page.locator("[data-testid=mcp-tool][data-tool=echo]")
    echo.get_by_test_id("tool-policy").select_option("never")
    save(page, echo)
    expect(
        page.locator("[data-testid=mcp-tool][data-tool=echo] [data-testid=tool-policy]")
    ).to_have_value("never")
    if os.environ.get("UPDATE_SCREENSHOT"):
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.goto(f"/t/{conversation.team.slug}/c/{conversation.uuid}/")
    run_id = send(page, "Once more " + tool("standin__echo", text="again"))
    refused = run_bubble(page, run_id).locator("[data-tool=standin__echo]")
    expect(refused).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(refused.get_by_test_id("tool-output")).to_contain_text("switched off for this team")
    last = ToolCall.objects.filter(name="standin__echo").order_by("-id").first()
    assert last is not None and last.status == ToolCallStatus.FAILED
