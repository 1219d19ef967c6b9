"""Slack's fallback ``text`` (notifications, the lock screen, screen readers) is mrkdwn too: a
conversation title, a reply, a command or a name in it is escaped like the blocks, so a title
such as ``<!channel> <https://evil|Tandem login>`` neither pings the channel nor makes a link."""

from __future__ import annotations

import pytest

from assistant.models import RunStatus, ToolCallStatus
from slack import blocks
from tests.test_slack import awaiting_call, finished_run

pytestmark = pytest.mark.django_db

HOSTILE = "<!channel> <https://evil.example|Tandem login> & <@U0BOSS>"


def assert_inert(text: str) -> None:
    assert "<" not in text and ">" not in text, text
    assert "&lt;!channel&gt;" in text, text
    assert "&amp;" in text, text


@pytest.fixture
def hostile(conversation, alice):
    conversation.title = HOSTILE
    conversation.save(update_fields=["title"])
    alice.display_name = "Alice <!here>"
    alice.save(update_fields=["display_name"])
    return conversation


def test_every_notifications_fallback_text_is_escaped(hostile, alice, no_runs):
    run = finished_run(hostile, alice, text=HOSTILE)
    failed = finished_run(hostile, alice, status=RunStatus.FAILED, error=HOSTILE)
    call = awaiting_call(hostile, alice, command=f"echo '{HOSTILE}'")
    messages = [
        blocks.run_finished(run),
        blocks.run_failed(failed),
        blocks.approval(call, buttons=True),
        blocks.answer(run),
        blocks.answer(failed),
        blocks.asked("U0ALICE", HOSTILE, hostile.team),
    ]
    for message in messages:
        assert_inert(message["text"])


def test_decided_and_shared_escape_names_in_the_fallback_once(hostile, alice, no_runs):
    from sharing.models import ShareLink

    call = awaiting_call(hostile, alice, command="make deploy")
    call.status, call.decided_by = ToolCallStatus.APPROVED, alice
    decided = blocks.decided(call)["text"]
    assert "&lt;!here&gt;" in decided and "&amp;lt;" not in decided
    assert_inert(decided)
    link = ShareLink(conversation=hostile, created_by=alice)
    shared = blocks.shared(link, alice)
    assert_inert(shared["text"])
    assert "&amp;lt;" not in shared["text"]
    # The blocks were already escaped, and still are, exactly once.
    assert "Alice &lt;!here&gt; shared" in shared["blocks"][0]["text"]["text"]
