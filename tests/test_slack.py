"""Slack notifications, admin pages, signatures, retries and revoked tokens, against the
stand-in Slack (tests/slack_standin.py) over real HTTP. Celery tasks run eagerly, after
commit, exactly as queued; the conversation flows from Slack are in test_slack_flows.py."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import mail
from django.test import Client

from assistant import hooks, services
from assistant.models import RunStatus, ToolCall, ToolCallStatus
from slack.models import (
    ConversationFollow,
    Delivery,
    DeliveryStatus,
    Kind,
    SlackConnection,
    SlackUserLink,
    Status,
)
from tests.slack_standin import *  # noqa: F403 (the stand-in's fixtures)
from tests.slack_standin import (
    BOT_TOKEN,
    BOT_USER,
    OAUTH_CODE,
    WORKSPACE,
    bot_connection,
    post_json,
    sign,
)

pytestmark = pytest.mark.django_db

TEAM_KEY = "sk-teamsecret0123456789abcdef"
GITHUB_TOKEN = "ghp_" + "a" * 36


@pytest.fixture
def connection(team, alice, slack_api):
    return bot_connection(team, alice)


@pytest.fixture
def bob_linked(bob):
    return SlackUserLink.objects.create(
        slack_team_id=WORKSPACE, slack_user_id="U0BOB", user=bob, via="link"
    )


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def finished_run(conversation, author, *, text="", status=RunStatus.SUCCEEDED, error=""):
    """A run that went through the services to its end, as the agent would take it."""
    from assistant.models import Run

    run = services.message_send(conversation=conversation, author=author, content="Do it").run
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    run.refresh_from_db()
    services.run_finish(run=run, status=status, text=text, error=error)
    run.refresh_from_db()
    return run


def emit(capture, signal, **kwargs):
    with capture(execute=True):
        hooks.send(signal, **kwargs)


def all_text(call) -> str:
    return json.dumps(call.args)


def block_types(call) -> list[str]:
    blocks = call.args["blocks"]
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return [b["type"] for b in blocks]


def blocks_of(call) -> list[dict]:
    blocks = call.args["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else blocks


# --- Each notification --------------------------------------------------------------------------


def test_run_finished_posts_a_summary_and_a_link_without_secrets(
    team,
    alice,
    conversation,
    connection,
    eager,
    no_runs,
    django_capture_on_commit_callbacks,
    slack_api,
):
    team.llm_api_key = TEAM_KEY
    team.save()
    reply = f"**Done.** The key was {TEAM_KEY} and {GITHUB_TOKEN}; see [docs](https://example.com)."
    run = finished_run(conversation, alice, text=reply)
    emit(django_capture_on_commit_callbacks, hooks.run_ended, run=run)
    posts = slack_api.of("chat.postMessage")
    assert len(posts) == 1
    post = posts[0]
    assert post.token == BOT_TOKEN and post.args["channel"] == "C0GENERAL"
    assert block_types(post) == ["section", "section", "context"]
    text = all_text(post)
    assert "Reply finished" in text
    assert f"/t/acme/c/{conversation.uuid}/" in text
    assert "*Done.*" in text and "<https://example.com|docs>" in text  # Markdown as mrkdwn
    assert TEAM_KEY not in text and GITHUB_TOKEN not in text and "[REDACTED]" in text
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.POSTED and delivery.ts
    assert delivery.key == f"run_finished:{run.uuid}:C0GENERAL"


def test_run_failed_says_why(
    alice, conversation, connection, eager, no_runs, django_capture_on_commit_callbacks, slack_api
):
    run = finished_run(
        conversation, alice, status=RunStatus.FAILED, error="The provider rejected the API key."
    )
    emit(django_capture_on_commit_callbacks, hooks.run_ended, run=run)
    (post,) = slack_api.of("chat.postMessage")
    text = all_text(post)
    assert "Reply failed" in text and "The provider rejected the API key." in text
    assert f"/t/acme/c/{conversation.uuid}/" in text


def test_cancelled_runs_and_unwanted_kinds_post_nothing(
    alice, conversation, connection, eager, no_runs, django_capture_on_commit_callbacks, slack_api
):
    connection.kinds = [Kind.RUN_FAILED]
    connection.save()
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="ok"),
    )
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="x", status=RunStatus.CANCELLED),
    )
    assert slack_api.of("chat.postMessage") == []


def awaiting_call(conversation, author, command="pytest -q"):
    from assistant.models import Run

    run = services.message_send(conversation=conversation, author=author, content="Test it").run
    Run.objects.filter(pk=run.pk).update(status=RunStatus.WAITING)
    return ToolCall.objects.create(
        run=run,
        step=1,
        index=0,
        call_id="call_1",
        name="run_command",
        arguments=json.dumps({"command": command}),
        status=ToolCallStatus.AWAITING,
    )


def test_approval_needed_has_buttons_and_a_link(
    alice, conversation, connection, eager, no_runs, django_capture_on_commit_callbacks, slack_api
):
    call = awaiting_call(conversation, alice, command=f"deploy --token {GITHUB_TOKEN}")
    emit(django_capture_on_commit_callbacks, hooks.approval_needed, call=call)
    (post,) = slack_api.of("chat.postMessage")
    actions = [b for b in blocks_of(post) if b["type"] == "actions"][0]
    assert [e["action_id"] for e in actions["elements"]] == ["tandem_approve", "tandem_deny"]
    assert {e["value"] for e in actions["elements"]} == {str(call.uuid)}
    text = all_text(post)
    assert "Approval needed" in text and "deploy --token" in text
    assert GITHUB_TOKEN not in text
    assert f"/t/acme/c/{conversation.uuid}/" in text


def test_a_webhook_gets_no_buttons_but_a_link(
    team, alice, conversation, slack_api, eager, no_runs, django_capture_on_commit_callbacks
):
    conn = SlackConnection(team=team, webhook_channel="#dev")
    conn.webhook_url = slack_api.webhook_url()
    conn.save()
    call = awaiting_call(conversation, alice)
    emit(django_capture_on_commit_callbacks, hooks.approval_needed, call=call)
    (post,) = slack_api.of("webhook")
    assert "actions" not in block_types(post)
    assert "Approve or deny in Tandem" in all_text(post)
    assert slack_api.of("chat.postMessage") == []


def test_conversation_shared_names_who_but_never_the_link(
    alice, conversation, connection, eager, django_capture_on_commit_callbacks, slack_api
):
    from sharing.services import create_link

    with django_capture_on_commit_callbacks(execute=True):
        created = create_link(
            conversation=conversation, user=alice, audience="team", mode="snapshot", expiry="7d"
        )
    posts = slack_api.of("chat.postMessage")
    assert len(posts) == 1
    text = all_text(posts[0])
    assert "alice shared" in text and "Refactor the parser" in text
    assert created.token not in text


def test_budget_threshold_posts_once_per_threshold_and_month(
    team, connection, eager, django_capture_on_commit_callbacks, slack_api
):
    for _ in range(2):
        emit(
            django_capture_on_commit_callbacks,
            hooks.budget_threshold,
            team=team,
            percent=80,
            kind="budget",
        )
    emit(
        django_capture_on_commit_callbacks,
        hooks.budget_threshold,
        team=team,
        percent=100,
        kind="budget",
    )
    posts = slack_api.of("chat.postMessage")
    assert len(posts) == 2
    assert "80%" in all_text(posts[0]) and "100%" in all_text(posts[1])
    assert "/t/acme/usage/" in all_text(posts[0])


def test_metering_announces_each_threshold_once(team, alice, conversation, no_runs, monkeypatch):
    from decimal import Decimal
    from types import SimpleNamespace

    from usage import metering

    team.monthly_budget_usd = Decimal("10")
    team.save()
    run = services.message_send(conversation=conversation, author=alice, content="x").run
    heard = []
    hooks.budget_threshold.connect(
        lambda sender, **kw: heard.append(kw["percent"]), weak=False, dispatch_uid="t"
    )
    try:
        for spent in ("7.5", "8.5", "9.0", "10.2"):
            monkeypatch.setattr(
                "usage.budgets.status",
                lambda *a, spent=spent: SimpleNamespace(spent_usd=Decimal(spent)),
            )
            metering._announce_threshold(run, Decimal("1"))
    finally:
        hooks.budget_threshold.disconnect(dispatch_uid="t")
    assert heard == [80, 100]


def test_teams_without_slack_queue_nothing(
    alice, conversation, slack_api, eager, no_runs, django_capture_on_commit_callbacks
):
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="ok"),
    )
    assert slack_api.calls == []


# --- Following a conversation ------------------------------------------------------------------


def test_followers_get_dms_until_they_unfollow(
    bob,
    alice,
    conversation,
    connection,
    bob_linked,
    eager,
    no_runs,
    django_capture_on_commit_callbacks,
    slack_api,
):
    page = signed_in(bob).get(f"/t/acme/c/{conversation.uuid}/").content.decode()
    assert 'data-testid="slack-follow"' in page and ">Follow<" in page
    response = signed_in(bob).post(f"/t/acme/c/{conversation.uuid}/follow/", {"follow": "1"})
    assert response.status_code == 302
    follow = ConversationFollow.objects.get(user=bob, conversation=conversation)
    assert set(follow.kinds) == {"run_finished", "run_failed", "approval", "shared"}
    assert ">Unfollow<" in signed_in(bob).get(f"/t/acme/c/{conversation.uuid}/").content.decode()

    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="first"),
    )
    assert sorted(c.args["channel"] for c in slack_api.of("chat.postMessage")) == [
        "C0GENERAL",
        "U0BOB",
    ]

    signed_in(bob).post(f"/t/acme/c/{conversation.uuid}/follow/", {"follow": "0"})
    assert not ConversationFollow.objects.exists()
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="second"),
    )
    assert [c.args["channel"] for c in slack_api.of("chat.postMessage")][2:] == ["C0GENERAL"]


def test_followers_pick_kinds_and_leavers_get_nothing(
    bob,
    alice,
    team,
    conversation,
    connection,
    bob_linked,
    eager,
    no_runs,
    django_capture_on_commit_callbacks,
    slack_api,
):
    connection.kinds = []
    connection.save()
    signed_in(bob).post(f"/t/acme/c/{conversation.uuid}/follow/", {"kinds": ["run_failed"]})
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="fine"),
    )
    assert slack_api.of("chat.postMessage") == []
    team.memberships.filter(user=bob).delete()
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, status=RunStatus.FAILED, error="boom"),
    )
    assert slack_api.of("chat.postMessage") == []


def test_outsiders_cannot_follow(charlie, other_team, conversation, connection):
    response = signed_in(charlie).post(f"/t/acme/c/{conversation.uuid}/follow/")
    assert response.status_code == 404
    assert not ConversationFollow.objects.exists()


# --- Retries and idempotency ---------------------------------------------------------------------


def test_429_waits_retry_after_then_posts_once(
    alice, conversation, connection, slack_api, eager, no_runs, django_capture_on_commit_callbacks
):
    slack_api.script(
        "chat.postMessage", 429, {"ok": False, "error": "ratelimited"}, Retry_After="7"
    )
    run = finished_run(conversation, alice, text="ok")
    emit(django_capture_on_commit_callbacks, hooks.run_ended, run=run)
    assert len(slack_api.of("chat.postMessage")) == 2  # the refused one, then the post
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.POSTED
    assert delivery.attempts == 2
    assert delivery.retry_in == 7.0  # Retry-After honoured


def test_5xx_backs_off_exponentially_then_gives_up(
    alice, conversation, connection, slack_api, eager, no_runs, django_capture_on_commit_callbacks
):
    from slack import tasks

    seen: list[float] = []
    original = tasks.notify_run.retry

    def spy(*args, **kwargs):
        seen.append(kwargs["countdown"])
        return original(*args, **kwargs)

    tasks.notify_run.retry = spy
    try:
        for _ in range(10):
            slack_api.script("chat.postMessage", 500, "upstream broke")
        emit(
            django_capture_on_commit_callbacks,
            hooks.run_ended,
            run=finished_run(conversation, alice, text="ok"),
        )
    finally:
        del tasks.notify_run.retry
    assert seen == [1.0, 2.0, 4.0]  # SLACK_RETRY_BASE_SECONDS=1, doubled, 3 retries at most
    assert len(slack_api.of("chat.postMessage")) == 4
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING and delivery.last_error == "HTTP 500"
    assert SlackConnection.objects.get().status == Status.ACTIVE


def test_a_retried_task_never_posts_twice(
    alice, bob, conversation, connection, bob_linked, slack_api, no_runs
):
    from slack import tasks

    ConversationFollow.objects.create(user=bob, conversation=conversation)
    run = finished_run(conversation, alice, text="ok")
    # The DM is rate limited: the task is retried, and the team post must not repeat.
    slack_api.script("chat.postMessage")  # team channel: fine
    slack_api.script(
        "chat.postMessage", 429, {"ok": False, "error": "ratelimited"}, Retry_After="1"
    )
    tasks.notify_run.apply(args=[str(run.uuid)])
    tasks.notify_run.apply(args=[str(run.uuid)])  # redelivered later: nothing left to post
    channels = [c.args["channel"] for c in slack_api.of("chat.postMessage")]
    assert sorted(channels) == ["C0GENERAL", "U0BOB", "U0BOB"]  # one refused, one posted
    assert Delivery.objects.filter(status=DeliveryStatus.POSTED).count() == 2


def test_a_revoked_token_disables_the_connection_and_tells_the_admins(
    alice,
    bob,
    conversation,
    connection,
    slack_api,
    eager,
    no_runs,
    django_capture_on_commit_callbacks,
):
    slack_api.revoked.add(BOT_TOKEN)
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="ok"),
    )
    assert len(slack_api.of("chat.postMessage")) == 1  # no retry against a dead token
    connection.refresh_from_db()
    assert connection.status == Status.DISABLED
    assert "revoked" in connection.disabled_reason
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]
    assert "Slack" in mail.outbox[0].subject
    banner = signed_in(alice).get("/t/acme/settings/").content.decode()
    assert 'data-testid="slack-disabled-banner"' in banner and "revoked" in banner
    page = signed_in(alice).get("/t/acme/slack/").content.decode()
    assert 'data-testid="slack-disabled"' in page
    assert "slack-disabled-banner" not in signed_in(bob).get("/t/acme/").content.decode()
    # Later events don't even try.
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="again"),
    )
    assert len(slack_api.of("chat.postMessage")) == 1


def test_a_removed_webhook_disables_the_connection(
    team, alice, conversation, slack_api, eager, no_runs, django_capture_on_commit_callbacks
):
    conn = SlackConnection(team=team)
    conn.webhook_url = slack_api.webhook_url()
    conn.save()
    slack_api.script("webhook", 404, "no_service")
    emit(
        django_capture_on_commit_callbacks,
        hooks.run_ended,
        run=finished_run(conversation, alice, text="ok"),
    )
    conn.refresh_from_db()
    assert conn.status == Status.DISABLED and "webhook" in conn.disabled_reason


@pytest.mark.parametrize("event", ["app_uninstalled", "tokens_revoked"])
def test_uninstall_events_disable_the_connection(
    event, client, connection, slack_api, django_capture_on_commit_callbacks
):
    payload = {
        "type": "event_callback",
        "team_id": WORKSPACE,
        "event_id": f"Ev{event}",
        "event": {"type": event, "tokens": {"bot": [BOT_USER]}},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = post_json(client, "/slack/events", payload)
    assert response.status_code == 200
    connection.refresh_from_db()
    assert connection.status == Status.DISABLED
    assert len(mail.outbox) == 1


# --- Signatures ---------------------------------------------------------------------------------


ENDPOINTS = ["/slack/commands", "/slack/events", "/slack/interactivity"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("how", ["bad", "stale", "future", "missing", "unset"])
def test_requests_not_signed_by_slack_are_refused(
    path, how, client, connection, slack_api, settings, eager, no_runs
):
    import time

    body_data = {
        "/slack/commands": {
            "team_id": WORKSPACE,
            "user_id": "U0BOB",
            "text": "hi",
            "channel_id": "C1",
        },
        "/slack/events": {"payload": json.dumps({"type": "url_verification", "challenge": "c"})},
        "/slack/interactivity": {"payload": json.dumps({"type": "block_actions", "actions": []})},
    }[path]
    from urllib.parse import urlencode

    body = urlencode(body_data).encode()
    headers = sign(body)
    if how == "bad":
        headers = sign(body, secret="not-the-secret")
    elif how == "stale":
        headers = sign(body, timestamp=int(time.time()) - 301)
    elif how == "future":
        # Well past the 300 s window: a slow machine must not bring it back within it.
        headers = sign(body, timestamp=int(time.time()) + 400)
    elif how == "missing":
        headers = {}
    elif how == "unset":
        settings.SLACK_SIGNING_SECRET = ""
    response = client.generic(
        "POST", path, body, content_type="application/x-www-form-urlencoded", **headers
    )
    assert response.status_code == 401
    assert slack_api.calls == [] and not no_runs


def test_a_tampered_body_is_refused(client, connection, slack_api):
    body = b"team_id=T0ACME&user_id=U0BOB&text=hello"
    headers = sign(body)
    response = client.generic(
        "POST",
        "/slack/commands",
        body + b"+world",
        content_type="application/x-www-form-urlencoded",
        **headers,
    )
    assert response.status_code == 401


def test_url_verification_echoes_the_challenge(client, slack_api):
    response = post_json(client, "/slack/events", {"type": "url_verification", "challenge": "abc"})
    assert response.status_code == 200 and response.json() == {"challenge": "abc"}


def test_get_is_not_allowed(client, slack_api):
    assert client.get("/slack/commands").status_code == 405


# --- The admins' page ----------------------------------------------------------------------------


def test_oauth_connects_the_workspace_with_an_encrypted_token(alice, team, slack_api):
    client = signed_in(alice)
    response = client.post("/t/acme/slack/connect/")
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        "https://slack.com/oauth/v2/authorize"
    )
    query = parse_qs(location.query)
    assert query["client_id"] == ["1234.5678"]
    assert "chat:write" in query["scope"][0] and "commands" in query["scope"][0]
    assert query["redirect_uri"] == ["http://testserver/slack/oauth/callback"]  # as served
    state = query["state"][0]

    response = client.get("/slack/oauth/callback", {"code": OAUTH_CODE, "state": state})
    assert response.status_code == 302 and response["Location"] == "/t/acme/slack/"
    conn = SlackConnection.objects.get(team=team)
    assert conn.slack_team_id == WORKSPACE and conn.bot_user_id == BOT_USER
    assert conn.channel_id == "C0GENERAL" and conn.bot_token == BOT_TOKEN
    assert BOT_TOKEN not in conn.bot_token_encrypted
    (exchange,) = slack_api.of("oauth.v2.access")
    assert exchange.args["code"] == OAUTH_CODE
    page = client.get("/t/acme/slack/").content.decode()
    assert "Acme Slack" in page and BOT_TOKEN not in page and "#dev" in page
    # The state works once.
    again = client.get("/slack/oauth/callback", {"code": OAUTH_CODE, "state": state})
    assert again.status_code == 400


def test_oauth_refuses_a_state_from_another_session(alice, bob, team, slack_api):
    client = signed_in(alice)
    state = parse_qs(urlsplit(client.post("/t/acme/slack/connect/")["Location"]).query)["state"][0]
    other = signed_in(bob)
    response = other.get("/slack/oauth/callback", {"code": OAUTH_CODE, "state": state})
    assert response.status_code == 400
    wrong = client.get("/slack/oauth/callback", {"code": OAUTH_CODE, "state": "guess"})
    assert wrong.status_code == 400
    assert not SlackConnection.objects.exists() and not slack_api.of("oauth.v2.access")


def test_webhook_channel_kinds_test_message_and_disconnect(alice, team, slack_api, connection):
    client = signed_in(alice)
    bad = client.post("/t/acme/slack/webhook/", {"url": "https://evil.example.com/hook"})
    assert bad.status_code == 302
    connection.refresh_from_db()
    assert not connection.has_webhook
    client.post("/t/acme/slack/channel/", {"channel": "C0DEV"})
    connection.refresh_from_db()
    assert (connection.channel_id, connection.channel_name) == ("C0DEV", "dev")
    client.post("/t/acme/slack/channel/", {"channel": "C0NOTTHERE"})
    connection.refresh_from_db()
    assert connection.channel_id == "C0DEV"
    client.post("/t/acme/slack/kinds/", {"kinds": ["approval", "budget", "nonsense"]})
    connection.refresh_from_db()
    assert connection.kinds == ["approval", "budget"]
    response = client.post("/t/acme/slack/test/", follow=True)
    assert "Test message sent to #dev" in response.content.decode()
    (test_post,) = slack_api.of("chat.postMessage")
    assert test_post.args["channel"] == "C0DEV" and "test message" in all_text(test_post)
    response = client.post("/t/acme/slack/disconnect/")
    assert response.status_code == 302
    assert not SlackConnection.objects.exists()
    assert len(slack_api.of("auth.revoke")) == 1


def test_a_pasted_webhook_connects_and_says_what_it_cannot_do(alice, team, slack_api):
    client = signed_in(alice)
    url = slack_api.webhook_url()
    client.post("/t/acme/slack/webhook/", {"url": url, "channel": "#dev"})
    conn = SlackConnection.objects.get(team=team)
    assert conn.webhook_url == url and url not in conn.webhook_url_encrypted
    page = client.get("/t/acme/slack/").content.decode()
    assert "no threads, no Approve / Deny buttons" in page
    assert url not in page and "abcdefSECRET" not in page
    client.post("/t/acme/slack/test/")
    (post,) = slack_api.of("webhook")
    assert "test message" in all_text(post)


def test_members_and_outsiders_get_404(bob, charlie, other_team, team, connection):
    for user in (bob, charlie):
        client = signed_in(user)
        for path in ("/t/acme/slack/", "/t/acme/slack/test/", "/t/acme/slack/disconnect/"):
            response = (
                client.post(path) if path.endswith(("test/", "disconnect/")) else client.get(path)
            )
            assert response.status_code == 404, (user, path)
    assert SlackConnection.objects.exists()


def test_team_settings_link_to_slack_for_admins(alice, team):
    page = signed_in(alice).get("/t/acme/settings/").content.decode()
    assert re.search(r'href="/t/acme/slack/"', page)


def test_a_redelivered_command_task_starts_one_conversation(bob, connection, slack_api):
    from slack import tasks

    SlackUserLink.objects.create(
        slack_team_id=WORKSPACE, slack_user_id="U0BOB", user=bob, via="link"
    )
    payload = {
        "team_id": WORKSPACE,
        "user_id": "U0BOB",
        "channel_id": "C0DEV",
        "text": "hello",
        "trigger_id": "trig-9",
        "response_url": slack_api.base + "/commands/x",
    }
    tasks.handle_command.apply(args=[payload])
    tasks.handle_command.apply(args=[payload])
    assert len(slack_api.of("chat.postMessage")) == 1
    from assistant.models import Message

    assert Message.objects.count() == 1


def test_markdown_becomes_mrkdwn_and_long_answers_are_trimmed():
    from slack.blocks import SECTION_CHARS, mrkdwn, trim

    text = "# Title\n**bold** and *it* <b> & [x](https://e.com)\n- one\n```python\na < b\n```"
    assert mrkdwn(text) == (
        "*Title*\n*bold* and _it_ &lt;b&gt; &amp; <https://e.com|x>\n• one\n```a &lt; b\n```"
    )
    assert len(trim("x" * 10_000, SECTION_CHARS)) == SECTION_CHARS


def test_the_page_gives_the_addresses_this_server_is_reached_at(alice, team, settings):
    settings.ALLOWED_HOSTS = ["tandem.example.org"]
    client = signed_in(alice)
    page = client.get("/t/acme/slack/", HTTP_HOST="tandem.example.org", secure=True)
    text = page.content.decode()
    for path in ("slack/commands", "slack/events", "slack/interactivity", "slack/oauth/callback"):
        assert f"<code>https://tandem.example.org/{path}</code>" in text
    assert "127.0.0.1:8000" not in text
