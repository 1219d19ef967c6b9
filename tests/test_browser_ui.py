"""The conversation page as people use it (issue 16), in Chromium against the production
topology: a retry lands in its own turn for every viewer, a patch with nothing in it is said in
the page, your own line breaks stay, an oversized paste is counted and refused in words, the
page opens at the newest message, and nothing scrolls sideways on a phone."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from assistant.models import Message, Repository, Role, Run, RunStatus
from tests.conftest import ROOT
from tests.test_browser import (
    open_page,
    partial_text,
    run_bubble,
    send,
    sign_in,
    sign_in_to_conversation,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Two cores shared by many: be patient, never time anything.
expect.set_options(timeout=20_000)

DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}

LOADING = re.compile(r"\bhtmx-request\b")  # htmx's class on an element while its request runs
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


def in_view(page: Page, selector: str) -> bool:
    return page.evaluate(
        """(sel) => {
            const r = document.querySelector(sel).getBoundingClientRect();
            return r.width > 0 && r.left >= 0 && r.top >= 0 && r.right <= innerWidth
                && r.bottom <= innerHeight;
        }""",
        selector,
    )


# --- Bug 1: a retry of an older turn -------------------------------------------------------------


def test_a_retry_of_an_older_turn_lands_in_that_turn_for_everyone(
    stack, new_context, conversation, alice, bob
):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, alice.email, conversation)
    watcher = open_page(new_context, "bob", stack)
    sign_in_to_conversation(watcher, bob.email, conversation)

    failed = send(page, "First question [[error=500]]")
    expect(run_bubble(page, failed)).to_have_attribute("data-status", "failed")
    later = send(page, "Second question")
    expect(run_bubble(page, later)).to_have_attribute("data-status", "succeeded")
    expect(run_bubble(watcher, later)).to_have_attribute("data-status", "succeeded")

    run_bubble(page, failed).get_by_test_id("retry").click()
    expect(page.locator("#messages [data-run]")).to_have_count(3)
    retry = Run.objects.exclude(uuid__in=[failed, later]).get().uuid
    order = """() => [...document.querySelectorAll('#messages > *')].map(
        (el) => el.dataset.run || (el.classList.contains('user') ? 'user' : '?'))"""
    expected = ["user", failed, str(retry), "user", later]
    for viewer in (page, watcher):
        expect(run_bubble(viewer, str(retry))).to_be_attached()
        assert viewer.evaluate(order) == expected
    watcher.reload()
    expect(run_bubble(watcher, str(retry))).to_be_attached()
    assert watcher.evaluate(order) == expected


# --- Bug 2: Download patch with nothing in it --------------------------------------------------


@pytest.fixture
def origin() -> Path:
    parent = Path(tempfile.mkdtemp(prefix="tandem-browser-ui-"))
    parent.chmod(0o711)
    path = parent / "answer"
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "O", "GIT_AUTHOR_EMAIL": "o@example.com"}
    env |= {"GIT_COMMITTER_NAME": "O", "GIT_COMMITTER_EMAIL": "o@example.com"}
    (path / "app.py").write_text("print(41)\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    yield path
    shutil.rmtree(parent, ignore_errors=True)


def test_an_empty_patch_is_said_in_the_page(stack, new_context, conversation, team, origin):
    Repository.objects.create(team=team, name="answer", url=str(origin))
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    page.get_by_test_id("attach-repository").get_by_role("button", name="Attach").click()
    # A worker prepares the workspace; the header polls until it is there.
    expect(page.get_by_test_id("repository")).to_contain_text("answer @ main", timeout=30_000)
    url = page.url

    page.get_by_test_id("patch").click()
    expect(page.get_by_test_id("notice")).to_have_text(
        "This conversation has not changed any files yet."
    )
    assert page.url == url
    expect(page.get_by_test_id("composer")).to_be_visible()


# --- Bug 4 and 5: the composer -------------------------------------------------------------------


def test_your_line_breaks_and_spaces_are_kept(stack, new_context, conversation):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    text = "line one\nline two\n    indented log line *not emphasis*"
    composer = page.get_by_test_id("composer")
    composer.fill(text)
    composer.press("Enter")
    shown = page.locator("#messages .message.user [data-testid=user-text]")
    for _ in range(2):  # as sent, then as the server renders it on a reload
        expect(shown).to_have_count(1)
        assert shown.inner_text() == text
        page.reload()


def test_an_oversized_paste_is_counted_and_refused_in_words(stack, new_context, conversation):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    composer = page.get_by_test_id("composer")
    limit = int(composer.get_attribute("data-max-chars"))
    assert composer.get_attribute("maxlength") is None  # nothing cut silently

    composer.fill("x" * (limit - 100))
    expect(page.get_by_test_id("composer-count")).to_have_text(
        f"{limit - 100:,} / {limit:,} characters"
    )
    text = "y" * (limit + 8600)
    composer.fill(text)
    expect(page.get_by_test_id("composer-count")).to_contain_text(f"{8600:,} too many")
    page.get_by_test_id("send").click()
    expect(page.locator("#composer-error")).to_contain_text(
        f"This message has {limit + 8600:,} characters; the limit is {limit:,}."
    )
    assert composer.input_value() == text
    assert not Message.objects.exists()

    # ↑ in the empty composer brings back the last message sent.
    composer.fill("remember me")
    composer.press("Enter")
    expect(page.locator("#messages .message.user")).to_have_count(1)
    expect(composer).to_have_value("")
    composer.press("ArrowUp")
    expect(composer).to_have_value("remember me")


def test_escape_in_the_composer_stops_the_reply(stack, new_context, conversation):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    run_id = send(page, "A long answer please [[tokens=3000 delay_ms=20]]")
    partial_text(page, run_id, 20)
    page.get_by_test_id("composer").press("Escape")
    expect(run_bubble(page, run_id)).to_have_attribute("data-status", "cancelled")
    assert Run.objects.get(uuid=run_id).status == RunStatus.CANCELLED


# --- Bug 6: open at the newest message -----------------------------------------------------------


def test_a_long_conversation_opens_at_the_newest_message(stack, new_context, conversation, alice):
    for i in range(40):
        Message.objects.create(
            conversation=conversation, role=Role.USER, author=alice, content=f"Message {i}"
        )
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, alice.email, conversation)
    newest = page.locator("#messages .message.user").last
    expect(newest).to_contain_text("Message 39")
    expect(newest).to_be_in_viewport()
    jump = page.get_by_test_id("jump-latest")
    expect(jump).to_be_hidden()

    page.evaluate("window.scrollTo(0, 0)")
    expect(jump).to_be_visible()
    jump.click()
    expect(newest).to_be_in_viewport()
    expect(jump).to_be_hidden()

    page.reload()
    expect(page.locator("#messages .message.user").last).to_be_in_viewport()


# --- Bug 3: phones -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_nothing_scrolls_sideways_and_the_composer_is_reachable(
    stack, new_context, conversation, alice, size
):
    viewport = DESKTOP if size == "desktop" else PHONE
    page = new_context(f"alice-{size}", base_url=stack.base_url, viewport=viewport).new_page()
    Message.objects.create(
        conversation=conversation,
        role=Role.USER,
        author=alice,
        content="A pasted log line that is very long: " + "abcdefghij" * 30,
    )
    sign_in(page, alice.email)
    slug = conversation.team.slug
    for path in (
        f"/t/{slug}/",
        f"/t/{slug}/members/",
        f"/t/{slug}/api-keys/",
        f"/t/{slug}/repos/",
        f"/t/{slug}/shares/",
        f"/t/{slug}/slack/",
        f"/t/{slug}/settings/",
        f"/t/{slug}/usage/",
        f"/t/{slug}/approvals/",
    ):
        page.goto(path)
        assert page.evaluate(OVERFLOW) <= 0, f"{path} scrolls sideways at {viewport}"
        if path.endswith("/repos/"):  # a credential field only for its method
            expect(page.get_by_test_id("field-token")).to_be_hidden()
            page.get_by_label("Authentication").select_option("https_token")
            expect(page.get_by_test_id("field-token")).to_be_visible()
            expect(page.get_by_test_id("field-ssh_key")).to_be_hidden()

    page.goto(f"/t/{slug}/c/{conversation.uuid}/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert page.evaluate(OVERFLOW) <= 0
    assert in_view(page, "[data-testid=composer]")
    assert in_view(page, "[data-testid=send]")
    # The title keeps room for words, not three letters.
    assert page.get_by_test_id("title").bounding_box()["width"] >= min(300, viewport["width"] * 0.6)

    page.get_by_test_id("share").click()
    dialog = page.locator("#share-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_test_id("share-form")).to_be_visible()
    assert in_view(page, "#share-dialog")
    page.get_by_test_id("share-close").click()

    name = "screenshot-desktop.png" if size == "desktop" else "screenshot-mobile.png"
    if os.environ.get("UPDATE_SCREENSHOT"):
        page.screenshot(path=str(ROOT / "docs" / name))


# --- Reading: Markdown while streaming, code blocks, the conversation list -------------------


STREAMED = "Here is **bold** and a list:\n\n- one\n- two\n\n```python\nx = 1\n```\n\n" + " ".join(
    f"word{i}" for i in range(30)
)


def test_a_reply_shows_as_markdown_while_it_streams(stack, new_context, conversation):
    context = new_context("alice", base_url=stack.base_url)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in_to_conversation(page, "alice@example.com", conversation)
    run_id = send(page, STREAMED + " [[echo=1 delay_ms=120]]")
    bubble = run_bubble(page, run_id)
    # While it streams: rendered by the page (the raw text stays for screen readers).
    page.wait_for_function(
        """(id) => {
            const el = document.getElementById("run-" + id);
            return el && el.dataset.status === "running"
                && el.querySelector(".stream-view strong")?.textContent === "bold";
        }""",
        arg=run_id,
        timeout=60_000,
    )
    assert bubble.locator(".stream-view").get_attribute("aria-hidden") == "true"
    assert bubble.locator(".stream-view script, .stream-view [onclick]").count() == 0
    # Then the server's rendering replaces it, with the code block's language and Copy.
    expect(bubble).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(bubble.locator(".stream-view")).to_have_count(0)
    expect(bubble.locator(".code-lang")).to_have_text("python")
    bubble.get_by_test_id("copy-code").click()
    expect(bubble.get_by_test_id("copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "x = 1\n"


def test_the_conversation_list_is_beside_the_conversation(
    stack, new_context, conversation, team, alice
):
    from assistant.services import conversation_create

    conversation_create(team=team, author=alice, title="Deploy notes")
    ops = conversation_create(team=team, author=alice, title="Ops")
    Message.objects.create(conversation=ops, role=Role.USER, content="Why did the rollout stall?")
    desktop = new_context("desktop", base_url=stack.base_url, viewport=DESKTOP).new_page()
    sign_in_to_conversation(desktop, alice.email, conversation)
    sidebar = desktop.get_by_test_id("sidebar")
    expect(sidebar).to_be_visible()  # a column on a wide screen
    expect(sidebar.locator("[aria-current=page]")).to_have_text("Refactor the parser")
    assert desktop.evaluate(OVERFLOW) <= 0

    phone = new_context("phone", base_url=stack.base_url, viewport=PHONE).new_page()
    sign_in_to_conversation(phone, alice.email, conversation)
    sidebar = phone.get_by_test_id("sidebar")
    expect(sidebar).to_be_hidden()  # a drawer on a phone
    phone.get_by_test_id("sidebar-toggle").click()
    expect(sidebar).to_be_visible()
    expect(phone.get_by_test_id("sidebar-toggle")).to_have_attribute("aria-expanded", "true")
    phone.get_by_test_id("sidebar-search").fill("deploy")
    expect(sidebar.locator("#sidebar-results a")).to_have_text(["Deploy notes"])
    phone.get_by_test_id("sidebar-search").fill("rollout")  # message text, with the words
    expect(sidebar.locator("#sidebar-results a")).to_have_count(1)
    expect(sidebar.get_by_test_id("snippet")).to_have_text("Why did the rollout stall?")
    expect(sidebar.locator("#sidebar-results mark")).to_have_text("rollout")
    assert phone.evaluate(OVERFLOW) <= 0
    phone.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()


# --- Approvals across the team -------------------------------------------------------------------


def test_a_teammate_decides_from_the_approvals_page(
    stack, new_context, conversation, alice, bob, no_runs
):
    from tests.test_approvals import waiting_command

    waiting_command(conversation, alice, "make deploy")
    page = new_context("bob", base_url=stack.base_url, viewport=PHONE).new_page()
    sign_in(page, bob.email)
    expect(page.get_by_test_id("approvals-badge")).to_contain_text("1")
    page.get_by_test_id("approvals-link").click()
    item = page.get_by_test_id("approval-item")
    expect(item).to_contain_text("Refactor the parser")
    expect(item).to_contain_text(f"Asked by {alice.name}")
    expect(item.locator(".tool-summary")).to_have_text("make deploy")
    assert page.evaluate(OVERFLOW) <= 0
    item.get_by_test_id("deny").click()
    expect(item.get_by_test_id("decision")).to_contain_text(f"Denied by {bob.name}")
    # The badge counts again at once (approvals-changed), not at its next poll.
    expect(page.get_by_test_id("approvals-badge")).to_have_count(0)
    expect(page.get_by_test_id("approvals-link")).to_have_text("Approvals")


# --- Keyboard ------------------------------------------------------------------------------------


def test_slash_searches_and_question_mark_shows_the_shortcuts(stack, new_context, conversation):
    page = new_context("alice", base_url=stack.base_url, viewport=PHONE).new_page()
    sign_in_to_conversation(page, "alice@example.com", conversation)
    page.get_by_test_id("composer").fill("/ and ? typed here stay text")
    assert page.get_by_test_id("composer").input_value() == "/ and ? typed here stay text"
    page.evaluate("document.activeElement.blur()")

    page.keyboard.press("/")  # the drawer opens, its search focused
    expect(page.get_by_test_id("sidebar")).to_be_visible()
    expect(page.get_by_test_id("sidebar-search")).to_be_focused()
    expect(page.get_by_test_id("sidebar-search")).to_have_value("")
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("sidebar")).to_be_hidden()

    page.keyboard.press("?")
    help_ = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(help_).to_be_visible()
    expect(help_).to_contain_text("Search the conversations")
    assert in_view(page, "#shortcuts")
    page.keyboard.press("Escape")
    expect(help_).to_be_hidden()
    page.get_by_test_id("shortcuts-open").click()  # also a button, for those without a keyboard
    expect(help_).to_be_visible()
    page.get_by_test_id("shortcuts-close").click()
    expect(help_).to_be_hidden()


# --- The Share dialog: a reload answered late must not undo a revoke -----------------------------


def test_a_late_reload_of_the_share_dialog_keeps_a_revoked_link_revoked(
    stack, new_context, conversation, alice
):
    from playwright.sync_api import Error as PlaywrightError

    from sharing.models import ShareLink, new_token

    ShareLink.objects.create(
        conversation=conversation, created_by=alice, token_hash=new_token()[1], title="x"
    )
    page = new_context("alice", base_url=stack.base_url).new_page()
    sign_in_to_conversation(page, alice.email, conversation)
    page.on("dialog", lambda prompt: prompt.accept())
    dialog = page.locator("#share-dialog")
    page.get_by_test_id("share").click()
    expect(dialog.get_by_test_id("revoke")).to_be_visible()
    page.get_by_test_id("share-close").click()

    # Reopened: the list reloads, and the server answers it before the revoke below, but the
    # answer reaches the page only after it (held here, as a slow network would).
    held = []

    def hold(route):
        held.append((route, route.fetch()))

    page.route(f"**/c/{conversation.uuid}/shares/", hold)
    share = page.get_by_test_id("share")
    share.click()
    expect(share).to_have_class(LOADING)
    while not held:  # the handler runs while Playwright waits
        page.wait_for_timeout(50)
    dialog.get_by_test_id("revoke").click()
    expect(dialog.get_by_test_id("revoked")).to_be_visible()
    assert ShareLink.objects.get().revoked_at is not None

    route, stale = held[0]
    # An error here means the page gave up on that reload already: the fix at work.
    with contextlib.suppress(PlaywrightError):
        route.fulfill(response=stale)
    expect(share).not_to_have_class(LOADING)  # the reload has landed, or was dropped
    expect(dialog.get_by_test_id("revoked")).to_be_visible()
    expect(dialog.get_by_test_id("revoke")).to_have_count(0)
