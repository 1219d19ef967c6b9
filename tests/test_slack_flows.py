"""Conversations from Slack, end to end: a signed request from Slack, the task that handles
it, the run executed on the worker loop against the fake LLM over real HTTP, and the answer
posted in the Slack thread by the run_ended receiver's task, all against the stand-in Slack.
Also the one-time account link and Approve / Deny through interactivity."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from assistant.models import Conversation, Message, Role, Run, RunStatus, ToolCall, ToolCallStatus
from assistant.runner import run_on_worker_loop
from slack.models import LinkRequest, SeenEvent, SlackThread, SlackUserLink
from tests.slack_standin import *  # noqa: F403 (the stand-in's fixtures)
from tests.slack_standin import BOT_USER, WORKSPACE, bot_connection, post_form, post_json

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def model(settings, provider_port):
    settings.LLM_MODEL = "openai/fake-model"
    settings.LLM_API_BASE = f"http://127.0.0.1:{provider_port}/v1"
    settings.LLM_API_KEY = "test-key"
    settings.LLM_MAX_RETRIES = 0


@pytest.fixture
def connection(team, alice, slack_api):
    return bot_connection(team, alice, kinds=[])  # only the thread answers here


def execute(run_ids: list[str]) -> list[Run]:
    """Run what was queued, as a worker would, then forget it."""
    runs = []
    while run_ids:
        run_id = run_ids.pop(0)
        run_on_worker_loop(run_id).result(60)
        runs.append(Run.objects.get(uuid=run_id))
    return runs


def command(client, text: str, user: str = "U0BOB", trigger: str = "trig-1"):
    """/tandem <text>, signed as Slack signs it."""
    return post_form(
        client,
        "/slack/commands",
        {
            "team_id": WORKSPACE,
            "user_id": user,
            "channel_id": "C0DEV",
            "command": "/tandem",
            "text": text,
            "trigger_id": trigger,
            "response_url": f"{_STANDIN[0].base}/commands/T0ACME/1/abc",
        },
    )


_STANDIN: list = []


@pytest.fixture(autouse=True)
def _standin(slack_api):
    _STANDIN[:] = [slack_api]


def event(payload_event: dict, event_id: str, **headers) -> dict:
    return {
        "type": "event_callback",
        "team_id": WORKSPACE,
        "event_id": event_id,
        "event": payload_event,
    }


def test_slash_command_starts_a_conversation_and_answers_in_its_thread(
    client, bob, connection, slack_api, eager, no_runs
):
    slack_api.emails["U0BOB"] = "bob@example.com"  # matched by verified email
    response = command(client, "[[echo=1]] Summarise the release")
    assert response.status_code == 200
    assert response.json() == {"response_type": "ephemeral", "text": "Working on it…"}

    (root,) = slack_api.of("chat.postMessage")
    assert root.args["channel"] == "C0DEV" and "<@U0BOB> asked Tandem" in json.dumps(root.args)
    thread = SlackThread.objects.get()
    conversation = thread.conversation
    assert conversation.team.slug == "acme" and thread.channel_id == "C0DEV"
    message = conversation.messages.get(role=Role.USER)
    assert message.author == bob and "Summarise the release" in message.content
    assert SlackUserLink.objects.get(slack_user_id="U0BOB").via == "email"

    (run,) = execute(no_runs)
    assert run.status == RunStatus.SUCCEEDED
    answer = slack_api.of("chat.postMessage")[1]
    assert answer.args["channel"] == "C0DEV"
    assert answer.args["thread_ts"] == thread.thread_ts
    text = json.dumps(answer.args)
    assert "Summarise the release" in text  # the fake model echoes it
    assert f"/t/acme/c/{conversation.uuid}/" in text

    # A reply in the thread continues the conversation, as bob.
    payload = event(
        {
            "type": "message",
            "user": "U0BOB",
            "text": "[[echo=1]] And the changelog",
            "channel": "C0DEV",
            "ts": "1800000000.000200",
            "thread_ts": thread.thread_ts,
        },
        "Ev0CONT",
    )
    assert post_json(client, "/slack/events", payload).status_code == 200
    (second,) = execute(no_runs)
    assert second.conversation_id == conversation.pk
    assert conversation.messages.filter(role=Role.USER).count() == 2
    last = slack_api.of("chat.postMessage")[-1]
    assert last.args["thread_ts"] == thread.thread_ts and "And the changelog" in json.dumps(
        last.args
    )
    assert Conversation.objects.count() == 1


def test_an_unknown_slack_user_gets_a_one_time_link(
    client, bob, connection, slack_api, eager, no_runs
):
    response = command(client, "hello")  # users.info has no email for U0BOB
    assert response.status_code == 200
    (reply,) = slack_api.of("response_url")
    assert reply.args["response_type"] == "ephemeral"
    url = re.search(r"<(http[^|>]+/slack/link/[^|>]+/)\|", reply.args["text"]).group(1)
    path = url.split("127.0.0.1:8000", 1)[1]
    assert not Conversation.objects.exists() and not no_runs
    assert slack_api.of("chat.postMessage") == []

    anonymous = Client().get(path)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    browser = Client()
    browser.force_login(bob)
    assert "Connect my Slack account" in browser.get(path).content.decode()
    done = browser.post(path)
    assert done.status_code == 200 and 'data-testid="slack-linked"' in done.content.decode()
    link = SlackUserLink.objects.get(slack_user_id="U0BOB")
    assert link.user == bob and link.via == "link"
    assert browser.post(path).status_code == 404  # once only
    assert LinkRequest.objects.get().used is not None

    command(client, "[[echo=1]] now it works", trigger="trig-2")
    assert len(no_runs) == 1


def test_an_outsider_cannot_use_a_link(client, charlie, other_team, connection, slack_api, eager):
    command(client, "hello", user="U0EVE")
    text = slack_api.of("response_url")[0].args["text"]
    path = re.search(r"127\.0\.0\.1:8000(/slack/link/[^|>]+/)\|", text).group(1)
    browser = Client()
    browser.force_login(charlie)
    assert browser.get(path).status_code == 404
    assert browser.post(path).status_code == 404
    assert not SlackUserLink.objects.exists()


def test_a_mention_starts_a_thread_and_retries_and_bots_are_ignored(
    client, bob, connection, slack_api, eager, no_runs
):
    SlackUserLink.objects.create(
        slack_team_id=WORKSPACE, slack_user_id="U0BOB", user=bob, via="link"
    )
    mention = {
        "type": "app_mention",
        "user": "U0BOB",
        "text": f"<@{BOT_USER}> [[echo=1]] What changed?",
        "channel": "C0GENERAL",
        "ts": "1800000000.000100",
    }
    payload = event(mention, "Ev0MENTION")
    assert post_json(client, "/slack/events", payload).status_code == 200
    # Slack's redelivery of the same event (X-Slack-Retry-Num) does nothing more.
    retry = post_json(client, "/slack/events", payload, **{})
    assert retry.status_code == 200
    assert len(no_runs) == 1 and SeenEvent.objects.count() == 1
    thread = SlackThread.objects.get()
    assert (thread.channel_id, thread.thread_ts) == ("C0GENERAL", "1800000000.000100")
    content = thread.conversation.messages.get().content
    assert content.startswith("[[echo=1]] What changed?") and BOT_USER not in content
    (run,) = execute(no_runs)
    (answer,) = slack_api.of("chat.postMessage")
    assert answer.args["thread_ts"] == "1800000000.000100"
    assert "What changed?" in json.dumps(answer.args)

    # Our own answer and other bots' messages in the thread start nothing.
    for n, extra in enumerate(({"bot_id": "B0TANDEM", "user": BOT_USER}, {"bot_id": "B0OTHER"})):
        bot = {
            "type": "message",
            "user": "U0OTHERBOT",
            "text": "beep",
            "channel": "C0GENERAL",
            "ts": f"1800000001.00000{n}",
            "thread_ts": "1800000000.000100",
            **extra,
        }
        post_json(client, "/slack/events", event(bot, f"Ev0BOT{n}"))
    # Nor do messages outside a known thread.
    stray = {"type": "message", "user": "U0BOB", "text": "hi", "channel": "C0GENERAL", "ts": "1.1"}
    post_json(client, "/slack/events", event(stray, "Ev0STRAY"))
    assert not no_runs
    assert Message.objects.filter(role=Role.USER).count() == 1


def waiting_call(conversation, author) -> ToolCall:
    from assistant import services

    run = services.message_send(conversation=conversation, author=author, content="Test it").run
    Run.objects.filter(pk=run.pk).update(status=RunStatus.WAITING)
    return ToolCall.objects.create(
        run=run,
        step=1,
        index=0,
        call_id="call_1",
        name="run_command",
        arguments=json.dumps({"command": "pytest -q"}),
        status=ToolCallStatus.AWAITING,
    )


def action(call: ToolCall, action_id: str, user: str = "U0BOB") -> dict:
    return {
        "payload": json.dumps(
            {
                "type": "block_actions",
                "team": {"id": WORKSPACE},
                "user": {"id": user},
                "channel": {"id": "C0GENERAL"},
                "message": {"ts": "1700000000.000001"},
                "actions": [{"action_id": action_id, "value": str(call.uuid)}],
            }
        )
    }


def test_approve_and_deny_from_slack(
    client, alice, bob, conversation, connection, slack_api, eager, no_runs
):
    from assistant import hooks

    connection.kinds = ["approval"]
    connection.save()
    call = waiting_call(conversation, alice)
    no_runs.clear()
    hooks.send(hooks.approval_needed, call=call)  # outside a transaction: queued at once
    (prompt,) = slack_api.of("chat.postMessage")
    assert "tandem_approve" in json.dumps(prompt.args)

    # Someone Tandem doesn't know: told how to link, nothing decided.
    post_form(client, "/slack/interactivity", action(call, "tandem_approve", user="U0STRANGER"))
    call.refresh_from_db()
    assert call.status == ToolCallStatus.AWAITING
    (hint,) = slack_api.of("chat.postEphemeral")
    assert hint.args["user"] == "U0STRANGER" and "/slack/link/" in hint.args["text"]

    SlackUserLink.objects.create(
        slack_team_id=WORKSPACE, slack_user_id="U0BOB", user=bob, via="link"
    )
    response = post_form(client, "/slack/interactivity", action(call, "tandem_approve"))
    assert response.status_code == 200
    call.refresh_from_db()
    assert call.status == ToolCallStatus.APPROVED and call.decided_by == bob
    assert no_runs == [str(call.run.uuid)]  # the run goes on
    (update,) = slack_api.of("chat.update")
    assert update.args["ts"] == "1700000000.000001"
    assert "Approved by bob" in json.dumps(update.args) and "tandem_approve" not in json.dumps(
        update.args
    )

    # A second click: already decided, said privately; nothing changes.
    post_form(client, "/slack/interactivity", action(call, "tandem_deny"))
    call.refresh_from_db()
    assert call.status == ToolCallStatus.APPROVED
    assert "already approved" in slack_api.of("chat.postEphemeral")[-1].args["text"]

    denied = waiting_call(conversation, alice)
    post_form(client, "/slack/interactivity", action(denied, "tandem_deny"))
    denied.refresh_from_db()
    assert denied.status == ToolCallStatus.DENIED and denied.decided_by == bob


def test_a_call_of_another_team_cannot_be_decided(
    client, bob, charlie, other_team, connection, slack_api, eager, no_runs
):
    from assistant.services import conversation_create

    SlackUserLink.objects.create(
        slack_team_id=WORKSPACE, slack_user_id="U0BOB", user=bob, via="link"
    )
    theirs = waiting_call(conversation_create(team=other_team, author=charlie), charlie)
    post_form(client, "/slack/interactivity", action(theirs, "tandem_approve"))
    theirs.refresh_from_db()
    assert theirs.status == ToolCallStatus.AWAITING
    assert slack_api.of("chat.update") == []
