"""What people see in the browser, against the real production topology (Daphne, a Celery
worker, the scripted fake provider): sign-up, invitations, a reply streaming to two teammates at
once, Stop, a dropped connection, a failed run, an oversized message and hostile Markdown.

Everything a person does goes through Chromium (the first test even signs up and invites
through the pages; the others start from the cast fixtures and sign in on the form). The
database is otherwise only read, to check that what the page shows is what was saved.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from assistant.fakellm.script import scripted_tokens
from assistant.models import Message, Run, RunStatus
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "screenshot.png"

# --- Helpers -------------------------------------------------------------------------------


def scripted(n: int) -> str:
    return "".join(scripted_tokens(n))


def open_page(new_context, name: str, stack) -> Page:
    return new_context(name, base_url=stack.base_url).new_page()


def sign_up(page: Page, email: str) -> None:
    page.goto("/accounts/signup/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.get_by_role("button", name="Sign Up").click()


def sign_in(page: Page, email: str, next_url: str = "") -> None:
    page.goto("/accounts/login/" + (f"?next={next_url}" if next_url else ""))
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    expect(page).not_to_have_url(re.compile(r"/accounts/login/"))


def sign_in_to_conversation(page: Page, email: str, conversation) -> None:
    """Sign in on the form and land straight on the conversation (the login's ?next=)."""
    url = f"/t/{conversation.team.slug}/c/{conversation.uuid}/"
    sign_in(page, email, url)
    expect(page).to_have_url(re.compile(re.escape(url) + "$"))
    expect_live(page)


def expect_live(page: Page) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")


def send(page: Page, text: str) -> str:
    """Type a message, press Enter, and return the id of the run that answers it."""
    composer = page.get_by_test_id("composer")
    composer.fill(text)
    before = page.locator("#messages [data-run]").count()
    composer.press("Enter")
    expect(page.locator("#messages [data-run]")).to_have_count(before + 1)
    return page.locator("#messages [data-run]").last.get_attribute("data-run")


def run_bubble(page: Page, run_id: str):
    return page.locator(f"#run-{run_id}")


# The first reply after the worker starts may wait for its litellm import (seconds on a busy
# machine); once text flows, it flows every 20 ms.
FIRST_TOKEN_TIMEOUT = 30_000


def partial_text(
    page: Page, run_id: str, longer_than: int, timeout: float = FIRST_TOKEN_TIMEOUT
) -> str:
    """Wait until the run's live text is longer than ``longer_than`` characters while the run
    is still streaming, and return that text (read in the page, in the same tick)."""
    handle = page.wait_for_function(
        """([id, n]) => {
            const stream = document.querySelector(`#run-${id} [data-testid=stream]`);
            return stream && stream.textContent.length > n ? stream.textContent : null;
        }""",
        arg=[run_id, longer_than],
        timeout=timeout,
    )
    return handle.json_value()


def expect_finished_text(page: Page, run_id: str, status: str, timeout: float = 15_000) -> str:
    bubble = run_bubble(page, run_id)
    expect(bubble).to_have_attribute("data-status", status, timeout=timeout)
    return bubble.locator(".content.markdown").inner_text()


SAMPLER = """() => {
    // Records every distinct text a live bubble shows, for checks that no moment of the
    // stream had duplicated or garbled text.
    window.tandemSamples = [];
    setInterval(() => {
        document.querySelectorAll("#messages [data-testid=stream]").forEach((stream) => {
            const run = stream.closest("[data-run]").dataset.run;
            const text = stream.textContent;
            const last = window.tandemSamples.findLast((s) => s.run === run);
            if (!last || last.text !== text) window.tandemSamples.push({ run, text });
        });
    }, 20);
}"""


def samples(page: Page, run_id: str) -> list[str]:
    return [s["text"] for s in page.evaluate("window.tandemSamples") if s["run"] == run_id]


# --- The story: sign up, invite, join, and watch a reply stream in together --------------------


def test_two_teammates_watch_a_reply_stream_in(stack, new_context):
    alice = open_page(new_context, "alice", stack)
    sign_up(alice, "alice@example.com")
    expect(alice.get_by_role("heading", name="Create a team")).to_be_visible()
    alice.get_by_label("Team name").fill("Acme")
    alice.get_by_role("button", name="Create team").click()
    expect(alice).to_have_url(re.compile(r"/t/acme/$"))

    # An invitation link (no email) from the Members page.
    alice.get_by_role("link", name="Members").click()
    alice.get_by_role("button", name="Invite", exact=True).click()
    invite_link = alice.get_by_test_id("invite-link").input_value()
    assert re.fullmatch(rf"{re.escape(stack.base_url)}/invite/[^/]+/", invite_link), invite_link

    # Bob opens it in his own browser, signs up, and lands in the team.
    bob = open_page(new_context, "bob", stack)
    bob.goto(invite_link)
    expect(bob.get_by_role("heading", name="Join Acme")).to_be_visible()
    bob.locator("main").get_by_role("link", name="Sign up").click()
    bob.fill("input[name=email]", "bob@example.com")
    bob.fill("input[name=password1]", PASSWORD)
    bob.fill("input[name=password2]", PASSWORD)
    bob.get_by_role("button", name="Sign Up").click()
    expect(bob).to_have_url(re.compile(r"/t/acme/$"))
    expect(bob.get_by_test_id("team-switcher")).to_have_text("Acme")
    expect(bob.locator(".flash")).to_contain_text("You joined Acme.")

    # Alice starts a conversation; Bob finds it in the team's list.
    alice.get_by_role("link", name="Conversations").click()
    alice.get_by_test_id("new-conversation").click()
    expect(alice).to_have_url(re.compile(r"/t/acme/c/[0-9a-f-]{36}/$"))
    expect_live(alice)
    bob.reload()
    bob.locator(".conversation-list a").first.click()
    expect(bob).to_have_url(alice.url)
    expect_live(bob)
    for page in (alice, bob):
        expect(page.get_by_test_id("presence")).to_contain_text("alice")
        expect(page.get_by_test_id("presence")).to_contain_text("bob")

    # Shift+Enter is a new line, Enter sends.
    composer = alice.get_by_test_id("composer")
    composer.click()
    composer.press_sequentially("Hello team")
    composer.press("Shift+Enter")
    composer.press_sequentially("[[tokens=150 delay_ms=20]]")
    assert composer.input_value() == "Hello team\n[[tokens=150 delay_ms=20]]"
    composer.press("Enter")
    expect(alice.locator("#messages [data-run]")).to_have_count(1)
    run_id = alice.locator("#messages [data-run]").get_attribute("data-run")
    expect(composer).to_have_value("")

    # The reply grows in both pages while it streams...
    expected = scripted(150)
    for page in (alice, bob):
        first = partial_text(page, run_id, 0)
        second = partial_text(page, run_id, len(first))
        assert 0 < len(first) < len(second) < len(expected)
        assert expected.startswith(first) and expected.startswith(second)
    # ... and ends as the full text, rendered (plain words render as themselves).
    for page in (alice, bob):
        assert expect_finished_text(page, run_id, "succeeded") == expected
        expect(page.locator("#messages .message.user")).to_have_count(1)
        expect(page.locator("#messages .message.user .content")).to_have_text(
            "Hello team\n[[tokens=150 delay_ms=20]]"
        )
    message = Message.objects.get(run__uuid=run_id)
    assert message.content == expected
    assert Message.objects.filter(role="user").count() == 1  # Shift+Enter sent nothing

    # A second question without directives gets the demo reply (Markdown with a code block):
    # the picture for the README.
    demo_run = send(alice, "How should the command-line tool greet people?")
    expect(run_bubble(alice, demo_run).locator(".markdown pre")).to_be_visible(timeout=15_000)
    expect(run_bubble(bob, demo_run)).to_have_attribute("data-status", "succeeded")
    alice.locator("#title input").blur()
    # The README's picture is refreshed on request only, so a test run leaves the tree clean.
    if os.environ.get("UPDATE_SCREENSHOT"):
        alice.screenshot(path=str(SCREENSHOT))


# --- Stop -----------------------------------------------------------------------------------


def test_stop_keeps_the_partial_text(stack, new_context, conversation):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    run_id = send(page, "Write a lot [[tokens=2000 delay_ms=20]]")
    before = partial_text(page, run_id, 40)

    run_bubble(page, run_id).get_by_test_id("stop").click()
    # Stopped, with part of the 40 s reply: how fast it stops is for bench/, not here.
    expect(run_bubble(page, run_id).locator(".run-status")).to_contain_text(
        "Stopped.", timeout=15_000
    )

    shown = run_bubble(page, run_id).locator(".content.markdown").inner_text()
    full = scripted(2000)
    assert full.startswith(shown)
    assert len(before.rstrip()) <= len(shown) < len(full)
    run = Run.objects.get(uuid=run_id)
    assert run.status == RunStatus.CANCELLED
    saved = Message.objects.get(run=run).content
    assert saved.rstrip() == shown  # Markdown drops only the trailing space of the last token
    assert full.startswith(saved)


# --- A dropped connection -------------------------------------------------------------------


def test_a_viewer_whose_connection_drops_gets_the_whole_reply(stack, new_context, conversation):
    alice = open_page(new_context, "alice", stack)
    sign_in_to_conversation(alice, "alice@example.com", conversation)
    bob_context = new_context("bob", base_url=stack.base_url)
    bob = bob_context.new_page()
    sign_in_to_conversation(bob, "bob@example.com", conversation)
    bob.evaluate(SAMPLER)

    expected = scripted(250)
    run_id = send(alice, "Explain it slowly [[tokens=250 delay_ms=20]]")
    partial_text(bob, run_id, 20)  # the reply is streaming into Bob's page

    # The drop. Chromium's offline emulation (context.set_offline) alone does not drop a
    # WebSocket that is already open: readyState stays OPEN, no close event fires, and the
    # frames sent meanwhile are held and delivered once it is back online, so the page never
    # notices. What actually drops the connection here is closing the page's socket
    # (window.tandemSocket, as a dead network would); going offline right after makes the
    # page's reconnect attempts fail until the network is back.
    bob.evaluate("window.tandemSocket.close()")
    bob_context.set_offline(True)
    expect(bob.locator("#connection")).to_have_attribute("data-state", "down")
    bob_stream = run_bubble(bob, run_id).get_by_test_id("stream")
    frozen = bob_stream.text_content()
    # The outage: the reply goes on streaming without Bob, a hundred characters at least.
    missed = partial_text(alice, run_id, len(frozen) + 100)
    assert bob_stream.text_content() == frozen, "Bob's page received text while offline"
    bob_context.set_offline(False)

    expect_live(bob)
    # Back online mid-stream: Bob's text catches up and goes on growing.
    after = partial_text(bob, run_id, len(missed))
    assert expected.startswith(after)
    assert expect_finished_text(bob, run_id, "succeeded") == expected
    assert expect_finished_text(alice, run_id, "succeeded") == expected
    # At no moment did Bob's page show duplicated or out-of-order text.
    seen = samples(bob, run_id)
    assert len(seen) >= 3
    for text in seen:
        assert expected.startswith(text), f"not a prefix of the reply: …{text[-80:]!r}"
    assert [len(t) for t in seen] == sorted(len(t) for t in seen)


# --- A failed run -----------------------------------------------------------------------------


def test_a_failed_reply_says_why_and_offers_retry(stack, new_context, conversation):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    run_id = send(page, "Please answer [[error=500]]")

    bubble = run_bubble(page, run_id)
    expect(bubble).to_have_attribute("data-status", "failed", timeout=15_000)
    expect(bubble.get_by_role("alert")).to_contain_text(
        "The reply failed. The model provider had an internal error (500)."
    )
    expect(page.locator("#messages .message.user")).to_contain_text("Please answer")
    assert Run.objects.get(uuid=run_id).status == RunStatus.FAILED

    # Retry answers the same message again (and fails again: the provider still says 500).
    bubble.get_by_test_id("retry").click()
    expect(page.locator("#messages [data-run]")).to_have_count(2)
    retry_id = page.locator("#messages [data-run]").last.get_attribute("data-run")
    assert retry_id != run_id
    expect(run_bubble(page, retry_id)).to_have_attribute("data-status", "failed", timeout=15_000)
    expect(page.locator("#messages .message.user")).to_have_count(1)


# --- Oversized message ------------------------------------------------------------------------


def test_an_oversized_message_is_refused_and_kept(stack, new_context, conversation):
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    composer = page.get_by_test_id("composer")
    limit = int(composer.get_attribute("data-max-chars"))
    # Refused in the page before sending (the server says the same: tests/test_messages.py).
    text = "x" * (limit + 1)
    composer.fill(text)
    composer.press("Enter")

    expect(page.locator("#composer-error")).to_contain_text(
        f"This message has {limit + 1:,} characters; the limit is {limit:,}."
    )
    assert composer.input_value() == text
    expect(page.locator("#messages .message")).to_have_count(0)
    assert not Message.objects.exists()


# --- Markdown safety -----------------------------------------------------------------------------


HOSTILE = "Look <script>window.pwned=1</script> and [x](javascript:alert(1))"


def test_hostile_markdown_is_shown_as_text(stack, new_context, conversation):
    page = open_page(new_context, "alice", stack)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in_to_conversation(page, "alice@example.com", conversation)
    # echo=1: the reply repeats the text, so it goes through the streaming path and the
    # assistant's Markdown rendering too.
    run_id = send(page, HOSTILE + " [[echo=1]]")
    assert expect_finished_text(page, run_id, "succeeded") == HOSTILE

    for _ in range(2):  # as the live page shows it, then as the server renders it on a reload
        user_text = page.locator("#messages .message.user .content").inner_text()
        assert user_text == HOSTILE + " [[echo=1]]"
        assert run_bubble(page, run_id).locator(".content").inner_text() == HOSTILE
        assert page.locator("#messages script").count() == 0
        assert page.locator("#messages a").count() == 0
        assert page.evaluate("typeof window.pwned") == "undefined"
        page.reload()
        expect_live(page)
    assert dialogs == []


# --- Deltas merged while the page's socket was behind -------------------------------------------


def test_deltas_merged_while_the_socket_was_behind_show_in_order_without_a_resync(
    stack, new_context, conversation, alice
):
    """The server merges the deltas that queued for a socket into one frame numbered f..s
    (assistant/consumers.py). The page must take such a frame as deltas f..s — append its
    text once, in order, and go on from s — not as a gap to resync from. Daphne is stopped
    while five deltas are published, so they queue and go out as one frame."""
    import asyncio
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from assistant import events
    from assistant.models import Role

    question = Message.objects.create(
        conversation=conversation, role=Role.USER, author=alice, content="Count, please"
    )
    run = Run.objects.create(
        conversation=conversation,
        user_message=question,
        requested_by=alice,
        status=RunStatus.RUNNING,
    )
    run_id = str(run.uuid)
    page = open_page(new_context, "alice", stack)
    sent: list[str] = []
    received: list[str] = []

    def watch(socket) -> None:
        socket.on("framesent", lambda payload: sent.append(str(payload)))
        socket.on("framereceived", lambda payload: received.append(str(payload)))

    page.on("websocket", watch)
    sign_in_to_conversation(page, "alice@example.com", conversation)
    stream = run_bubble(page, run_id).get_by_test_id("stream")
    expect(stream).to_have_count(1)

    def publish(seq: int) -> None:
        # Playwright's sync API keeps an event loop in this thread: publish from another.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(
                asyncio.run, events.publish_delta(str(conversation.uuid), run_id, seq, f"w{seq} ")
            ).result()

    daphne = stack.procs[1]
    daphne.send_signal(signal.SIGSTOP)
    try:
        for seq in range(1, 6):
            publish(seq)
    finally:
        daphne.send_signal(signal.SIGCONT)
    expect(stream).to_have_text("w1 w2 w3 w4 w5 ")
    publish(6)  # the next one, alone, goes on from s
    expect(stream).to_have_text("w1 w2 w3 w4 w5 w6 ")
    merged = [f for f in received if '"f": 1' in f and '"s": 5' in f]
    assert merged, "the five deltas did not arrive as one frame"
    assert not [f for f in sent if "resync" in f]
