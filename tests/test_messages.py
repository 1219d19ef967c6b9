"""Sending messages and handling conversations and runs over HTTP, as a teammate does."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from assistant.models import Conversation, Message, Role, Run, RunStatus, Workspace
from assistant.services import conversation_create, message_send, run_claim

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def send(client: Client, conversation: Conversation, content: str):
    return client.post(f"/t/acme/c/{conversation.uuid}/messages/", {"content": content})


def titles_in(html: str) -> list[str]:
    return re.findall(r'<a href="/t/acme/c/[0-9a-f-]+/">([^<]*)</a>', html)


# --- Sending ---------------------------------------------------------------------------------


def test_it_creates_the_message_and_a_queued_run(
    bob, conversation, no_runs, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = send(signed_in(bob), conversation, "Fix the **parser**, please")
    assert response.status_code == 201
    message = Message.objects.get(conversation=conversation)
    assert (message.role, message.author, message.content) == (
        Role.USER,
        bob,
        "Fix the **parser**, please",
    )
    run = Run.objects.get(user_message=message)
    assert run.status == RunStatus.QUEUED
    assert run.requested_by == bob
    assert no_runs == [str(run.uuid)]  # queued once, after the commit
    # The fragment for the page: the message (as typed, whitespace kept) and the run's bubble,
    # no full page.
    html = response.content.decode()
    assert "<html" not in html
    assert f'id="msg-{message.uuid}"' in html
    assert "Fix the **parser**, please" in html
    assert str(run.uuid) in html


@pytest.mark.parametrize("content", ["", "   \n\t  "])
def test_it_rejects_an_empty_message(bob, conversation, no_runs, content):
    response = send(signed_in(bob), conversation, content)
    assert response.status_code == 422
    assert "Write a message first." in response.content.decode()
    assert not Message.objects.exists() and not Run.objects.exists()


def test_it_rejects_a_message_over_the_limit(bob, conversation, no_runs, settings):
    limit = settings.MAX_MESSAGE_CHARS
    client = signed_in(bob)
    response = send(client, conversation, "x" * (limit + 1))
    assert response.status_code == 422
    text = response.content.decode()
    assert f"the limit is {limit:,}" in text
    assert f"{limit + 1:,} characters" in text
    assert not Message.objects.exists() and not Run.objects.exists()
    # Exactly at the limit is fine.
    assert send(client, conversation, "x" * limit).status_code == 201


def test_it_refuses_a_nul_character_clearly(bob, conversation, no_runs):
    response = send(signed_in(bob), conversation, "before\x00after")
    assert response.status_code == 422
    assert "NUL character" in response.content.decode()
    assert not Message.objects.exists()


def test_it_titles_a_conversation_from_its_first_message(bob, team, no_runs):
    client = signed_in(bob)
    response = client.post("/t/acme/c/new/")
    assert response.status_code == 302
    conversation = Conversation.objects.get(team=team)
    assert conversation.title == ""
    assert send(client, conversation, "\n## Fix the login bug\n\nIt loops.").status_code == 201
    conversation.refresh_from_db()
    assert conversation.title == "Fix the login bug"
    assert not conversation.title_is_custom
    send(client, conversation, "Second message")
    conversation.refresh_from_db()
    assert conversation.title == "Fix the login bug"


@pytest.mark.parametrize(
    "first, title",
    [
        ("Write a **Python** function that adds", "Write a Python function that adds"),
        ("Why does `make test` fail on _main_?", "Why does make test fail on main?"),
        ("See [the docs](https://example.com/x) and ~~not~~ this", "See the docs and not this"),
        ("Compute 2 * 3 * 4 and snake_case_names", "Compute 2 * 3 * 4 and snake_case_names"),
    ],
)
def test_the_title_shows_markdown_as_plain_words(alice, team, no_runs, first, title):
    conversation = conversation_create(team=team, author=alice)
    message_send(conversation=conversation, author=alice, content=first)
    conversation.refresh_from_db()
    assert conversation.title == title


def test_it_shortens_a_long_first_line_for_the_title(alice, team, no_runs):
    conversation = conversation_create(team=team, author=alice)
    message_send(conversation=conversation, author=alice, content="word " * 40)
    conversation.refresh_from_db()
    assert len(conversation.title) <= 80 and conversation.title.endswith("…")


def test_it_keeps_a_title_that_was_set(bob, conversation, no_runs):
    send(signed_in(bob), conversation, "Something else entirely")
    conversation.refresh_from_db()
    assert conversation.title == "Refactor the parser"


def test_it_renames_a_conversation(alice, bob, team, no_runs):
    conversation = conversation_create(team=team, author=alice)
    client = signed_in(bob)
    url = f"/t/acme/c/{conversation.uuid}/rename/"
    assert client.post(url, {"title": "  Parser plans "}).status_code == 302
    conversation.refresh_from_db()
    assert (conversation.title, conversation.title_is_custom) == ("Parser plans", True)
    # A named conversation keeps its name when the first message comes.
    send(client, conversation, "First message")
    conversation.refresh_from_db()
    assert conversation.title == "Parser plans"
    # htmx gets the title fragment back.
    response = client.post(url, {"title": "Parser"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert 'value="Parser"' in response.content.decode()


def test_it_refuses_an_empty_title(bob, conversation):
    client = signed_in(bob)
    url = f"/t/acme/c/{conversation.uuid}/rename/"
    response = client.post(url, {"title": "   "}, follow=True)
    assert "A title cannot be empty." in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "Refactor the parser"


# --- The conversation list -------------------------------------------------------------------


@pytest.fixture
def three_conversations(alice, team):
    now = timezone.now()
    made = []
    for age, title in ((3, "Old parser work"), (2, "Middle deploy notes"), (1, "New parser idea")):
        conversation = conversation_create(team=team, author=alice, title=title)
        Conversation.objects.filter(pk=conversation.pk).update(updated=now - timedelta(hours=age))
        made.append(conversation)
    return made


def test_it_lists_conversations_newest_first(bob, three_conversations, no_runs):
    client = signed_in(bob)
    html = client.get("/t/acme/").content.decode()
    assert titles_in(html) == ["New parser idea", "Middle deploy notes", "Old parser work"]
    # A new message brings a conversation to the top.
    send(client, three_conversations[0], "Back to this")
    html = client.get("/t/acme/").content.decode()
    assert titles_in(html)[0] == "Old parser work"


def test_it_searches_conversations_by_title(bob, three_conversations):
    client = signed_in(bob)
    html = client.get("/t/acme/", {"q": "PARSER"}).content.decode()
    assert titles_in(html) == ["New parser idea", "Old parser work"]
    html = client.get("/t/acme/", {"q": "kubernetes"}).content.decode()
    assert titles_in(html) == []
    assert "No conversation has “kubernetes” in its title." in html


def test_it_returns_only_the_results_to_htmx(bob, three_conversations):
    headers = {"HX-Request": "true", "HX-Target": "conversation-results"}
    response = signed_in(bob).get("/t/acme/", {"q": "deploy"}, headers=headers)
    html = response.content.decode()
    assert response.status_code == 200
    assert titles_in(html) == ["Middle deploy notes"]
    assert "<html" not in html and 'type="search"' not in html
    # Without the htmx headers it is the whole page.
    html = signed_in(bob).get("/t/acme/", {"q": "deploy"}).content.decode()
    assert "<html" in html and 'type="search"' in html


# --- Deleting --------------------------------------------------------------------------------


def test_it_deletes_a_conversation_for_a_member(bob, conversation, no_runs):
    send(signed_in(bob), conversation, "Hello")
    response = signed_in(bob).post(f"/t/acme/c/{conversation.uuid}/delete/")
    assert response.status_code == 302 and response["Location"] == "/t/acme/"
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.exists() and not Run.objects.exists()


def test_it_deletes_by_htmx_with_a_client_redirect(bob, conversation):
    url = f"/t/acme/c/{conversation.uuid}/delete/"
    response = signed_in(bob).post(url, headers={"HX-Request": "true"})
    assert response["HX-Redirect"] == "/t/acme/"
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_it_rejects_outsider_deleting(charlie, other_team, conversation):
    response = signed_in(charlie).post(f"/t/acme/c/{conversation.uuid}/delete/")
    assert response.status_code == 404
    # Not through the outsider's own team either.
    response = signed_in(charlie).post(f"/t/other/c/{conversation.uuid}/delete/")
    assert response.status_code == 404
    assert Conversation.objects.filter(pk=conversation.pk).exists()


# --- Runs ------------------------------------------------------------------------------------


@pytest.fixture
def run(alice, conversation, no_runs) -> Run:
    return message_send(conversation=conversation, author=alice, content="Hello").run


def test_it_claims_a_run_once(run):
    first = run_claim(str(run.uuid))
    assert first is not None and first.status == RunStatus.RUNNING
    assert run_claim(str(run.uuid)) is None


def test_a_claim_leaves_a_run_queued_while_its_workspace_is_prepared(run, conversation, alice):
    from assistant.models import RepoJob, RepoJobKind, RepoJobStatus, Repository

    repo = Repository.objects.create(team=conversation.team, name="demo", url="/nonexistent")
    job = RepoJob.objects.create(
        conversation=conversation, repository=repo, kind=RepoJobKind.ATTACH, requested_by=alice
    )
    # The check and the claim are one statement: the run stays queued for the job to requeue.
    assert run_claim(str(run.uuid), unless_workspace_pending=True) is None
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED
    RepoJob.objects.filter(pk=job.pk).update(status=RepoJobStatus.FAILED)
    claimed = run_claim(str(run.uuid), unless_workspace_pending=True)
    assert claimed is not None and claimed.status == RunStatus.RUNNING


def test_a_claimed_run_comes_with_what_the_agent_reads(run, django_assert_num_queries):
    claimed = run_claim(str(run.uuid))
    with django_assert_num_queries(0):
        assert claimed.conversation.team.slug == "acme"
        assert claimed.user_message.content == "Hello"
        assert claimed.requested_by.email
        with pytest.raises(Workspace.DoesNotExist):  # none: known without a query
            _ = claimed.conversation.workspace


def test_finishing_a_run_leaves_the_instance_as_saved(run):
    from assistant.services import run_finish

    claimed = run_claim(str(run.uuid))
    message = run_finish(run=claimed, status=RunStatus.FAILED, text="Partial", error="Down")
    saved = Run.objects.get(pk=run.pk)
    for name in ("status", "error", "finished", "model", "text", "tree_after"):
        assert getattr(claimed, name) == getattr(saved, name), name
    assert message is not None and message.content == "Partial"


def test_it_retries_a_failed_run(bob, run, no_runs, django_capture_on_commit_callbacks):
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FAILED, error="Provider down")
    with django_capture_on_commit_callbacks(execute=True):
        response = signed_in(bob).post(f"/runs/{run.uuid}/retry/")
    assert response.status_code == 201
    new = Run.objects.exclude(pk=run.pk).get()
    assert new.user_message_id == run.user_message_id
    assert (new.status, new.requested_by) == (RunStatus.QUEUED, bob)
    assert no_runs == [str(new.uuid)]
    assert str(new.uuid) in response.content.decode()
    run.refresh_from_db()
    assert (run.status, run.error) == (RunStatus.FAILED, "Provider down")


@pytest.mark.parametrize("status", [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED])
def test_it_retries_only_failed_or_stopped_runs(bob, run, status):
    Run.objects.filter(pk=run.pk).update(status=status)
    response = signed_in(bob).post(f"/runs/{run.uuid}/retry/")
    assert response.status_code == 409
    assert Run.objects.count() == 1


def test_it_stops_a_queued_run_at_once(bob, run):
    response = signed_in(bob).post(f"/runs/{run.uuid}/cancel/")
    assert response.status_code == 204
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.finished is not None
    # A worker that gets the task afterwards has nothing to do.
    assert run_claim(str(run.uuid)) is None


# --- A task delivered twice, on the real worker -----------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_executes_a_run_delivered_twice_once(stack, alice, conversation, no_runs):
    from assistant.tasks import execute_run

    run = message_send(conversation=conversation, author=alice, content="Hi [[tokens=8]]").run
    assert no_runs == [str(run.uuid)]  # recorded, not queued: the test delivers it
    tasks = [execute_run.delay(str(run.uuid)), execute_run.delay(str(run.uuid))]
    log = stack.logs[2]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text()
        if all(re.search(rf"\[{task.id}\] (succeeded|raised)", text) for task in tasks):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the worker did not finish both deliveries:\n" + log.read_text()[-2000:])
    assert all(re.search(rf"\[{task.id}\] succeeded", text) for task in tasks)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    replies = Message.objects.filter(conversation=conversation, role=Role.ASSISTANT)
    assert [m.content for m in replies] == ["alpha bravo charlie delta echo foxtrot golf hotel"]
    assert run.usage.count() == 1
