"""Share links through the web layer: creating, opening, the shared page's rules (read-only,
snapshot cut-off, redaction, nothing beyond its conversation), bad tokens and guessing,
management and revocation, forks and exports.

The live side (the share WebSocket) is in test_sharing_live.py, the browser in
test_browser_sharing.py, redaction patterns in test_sharing_redact.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role as TeamRole
from accounts.services import membership_add
from assistant.models import (
    Conversation,
    Message,
    Repository,
    Role,
    Run,
    RunStatus,
    ToolCall,
    ToolCallStatus,
    Workspace,
)
from assistant.services import conversation_create, conversation_rename
from sharing import ratelimit, services
from sharing.export import export_data, to_json, to_markdown
from sharing.models import ShareLink, SharingPolicy
from sharing.redact import MARK
from sharing.views import DESCRIPTION

pytestmark = pytest.mark.django_db

GITHUB_TOKEN = "ghp_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"
TEAM_KEY = "team-provider-key-5f2c9e"
REPO_TOKEN = "repo-deploy-token-8a7b6c5d"
AWS_KEY = "AKIA" + "ABCDEFGHIJKLMNOP"
EARLY = timedelta(hours=1)


@pytest.fixture(autouse=True)
def fresh_limits():
    ratelimit.reset()
    yield
    ratelimit.reset()


def client_for(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def allow_public(team, allowed: bool = True) -> None:
    SharingPolicy.objects.update_or_create(team=team, defaults={"allow_public_links": allowed})


def share(conversation, user, *, audience="team", mode="snapshot", expiry="7d") -> str:
    """A new link's token (public links switched on for the team first)."""
    if audience == "public":
        allow_public(conversation.team)
    return services.create_link(
        conversation=conversation, user=user, audience=audience, mode=mode, expiry=expiry
    ).token


def link_of(token: str) -> ShareLink:
    return ShareLink.objects.get(token_hash=hashlib.sha256(token.encode()).hexdigest())


def exchange(
    conversation,
    author,
    question: str,
    answer: str = "",
    *,
    at=None,
    status=RunStatus.SUCCEEDED,
    finished=None,
    calls=(),
    model="openai/private-model",
    error="",
) -> Run:
    """A user message and the run answering it, written straight to the database."""
    at = at or timezone.now() - EARLY
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=author, content=question, created=at
    )
    done = status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
    run = Run.objects.create(
        conversation=conversation,
        user_message=message,
        requested_by=author,
        status=status,
        model=model,
        error=error,
        created=at,
        started=at,
        finished=(finished or at) if done else None,
    )
    if done and answer:
        Message.objects.create(
            conversation=conversation,
            role=Role.ASSISTANT,
            content=answer,
            run=run,
            created=finished or at,
        )
    for index, (name, arguments, output, call_status) in enumerate(calls):
        ToolCall.objects.create(
            run=run,
            step=1,
            index=index,
            call_id=f"call_{index}",
            name=name,
            arguments=json.dumps(arguments),
            output=output,
            status=call_status,
            exit_code=0 if call_status == ToolCallStatus.SUCCEEDED else None,
            created=at,
        )
    return run


ANSWER = "Here is **the fix**:\n\n```python\ndef answer():\n    return 42\n```\n"


@pytest.fixture
def chat(conversation, alice, bob):
    """A conversation with a finished reply (Markdown, code and a tool call)."""
    exchange(conversation, alice, "How do I fix the parser?", ANSWER)
    exchange(
        conversation,
        bob,
        "Run the tests",
        "All green.",
        calls=[("run_command", {"command": "pytest -q"}, "3 passed", ToolCallStatus.SUCCEEDED)],
    )
    return conversation


def body(response) -> str:
    return response.content.decode()


# --- Creating a link ------------------------------------------------------------------------


def test_a_member_creates_a_link_and_only_its_hash_is_stored(bob, conversation):
    response = client_for(bob).post(
        f"/t/acme/c/{conversation.uuid}/shares/new/",
        {"audience": "team", "mode": "snapshot", "expiry": "7d"},
    )
    assert response.status_code == 201
    url = re.search(r'value="(http://[^"]+/s/([^"/]+)/)"', body(response))
    assert url, "the new link is shown"
    token = url.group(2)
    raw = base64.urlsafe_b64decode(token + "=")
    assert len(raw) * 8 >= 128
    link = ShareLink.objects.get()
    assert link.token_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = json.dumps(list(ShareLink.objects.values()), default=str)
    assert token not in stored
    assert link.created_by == bob and link.audience == "team" and link.mode == "snapshot"
    assert timedelta(days=7) - timedelta(minutes=1) < link.expires_at - link.created
    # Shown once: the dialog afterwards lists the link without its URL.
    again = client_for(bob).get(f"/t/acme/c/{conversation.uuid}/shares/")
    assert token not in body(again) and 'data-testid="share-row"' in body(again)


def test_every_expiry_choice_works(alice, conversation, time_machine):
    time_machine.move_to(timezone.now(), tick=False)  # exact figures, however slow the request
    expected = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "30d": timedelta(days=30)}
    for choice, delta in expected.items():
        link = link_of(share(conversation, alice, expiry=choice))
        assert link.expires_at - link.created == delta
    assert link_of(share(conversation, alice, expiry="never")).expires_at is None


def test_sharing_a_conversation_you_cannot_see_is_404(charlie, other_team, conversation):
    outsider = client_for(charlie)
    for slug in ("acme", "other"):
        response = outsider.post(
            f"/t/{slug}/c/{conversation.uuid}/shares/new/",
            {"audience": "team", "mode": "snapshot", "expiry": "7d"},
        )
        assert response.status_code == 404
        assert outsider.get(f"/t/{slug}/c/{conversation.uuid}/shares/").status_code == 404
    assert not ShareLink.objects.exists()


def test_bad_choices_are_refused_with_422(alice, conversation):
    for data in (
        {"audience": "world", "mode": "snapshot", "expiry": "7d"},
        {"audience": "team", "mode": "forever", "expiry": "7d"},
        {"audience": "team", "mode": "live", "expiry": "2y"},
    ):
        response = client_for(alice).post(f"/t/acme/c/{conversation.uuid}/shares/new/", data)
        assert response.status_code == 422, data
        assert 'data-testid="share-error"' in body(response)
    assert not ShareLink.objects.exists()


def test_public_links_need_the_team_admins_permission(alice, bob, conversation):
    form = {"audience": "public", "mode": "live", "expiry": "1d"}
    member = client_for(bob)
    response = member.post(f"/t/acme/c/{conversation.uuid}/shares/new/", form)
    assert response.status_code == 422
    assert "admins have not allowed" in body(response)
    assert not ShareLink.objects.exists()
    # A member can't switch it on; an admin can.
    assert member.post("/t/acme/shares/policy/", {"allow_public_links": "on"}).status_code == 404
    assert not SharingPolicy.objects.filter(allow_public_links=True).exists()
    owner = client_for(alice)
    assert owner.post("/t/acme/shares/policy/", {"allow_public_links": "on"}).status_code == 302
    response = member.post(f"/t/acme/c/{conversation.uuid}/shares/new/", form)
    assert response.status_code == 201
    assert ShareLink.objects.get().audience == "public"


# --- Who opens what ----------------------------------------------------------------------------


def test_a_team_link_is_for_signed_in_members_of_the_team(alice, bob, charlie, other_team, chat):
    token = share(chat, alice)
    url = f"/s/{token}/"
    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"] == f"/accounts/login/?next=/s/{token}/"
    assert client_for(charlie).get(url).status_code == 404
    assert "How do I fix the parser?" not in body(client_for(charlie).get(url))
    response = client_for(bob).get(url)
    assert response.status_code == 200
    assert "How do I fix the parser?" in body(response)


def test_a_public_link_opens_without_an_account_and_asks_not_to_be_indexed(alice, chat):
    token = share(chat, alice, audience="public")
    response = Client().get(f"/s/{token}/")
    assert response.status_code == 200
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["Cache-Control"] == "private, no-store"
    html = body(response)
    assert '<meta name="robots" content="noindex, nofollow">' in html
    assert '<meta property="og:title" content="Refactor the parser">' in html
    assert '<meta name="twitter:title" content="Refactor the parser">' in html
    assert f'<meta property="og:description" content="{DESCRIPTION}">' in html
    assert f'<meta name="twitter:description" content="{DESCRIPTION}">' in html
    assert "<title>Refactor the parser · Tandem</title>" in html
    # The preview says nothing of the content: unfurled previews outlive a revoked link.
    description = re.search(r'og:description" content="([^"]*)"', html).group(1)
    assert "parser" not in description and "fix" not in description


def test_every_share_answer_carries_the_privacy_headers(alice, chat):
    token = share(chat, alice, audience="public")
    for url in (f"/s/{token}/", f"/s/{token}/export.md", "/s/nope/", f"/s/{token[:-1]}/"):
        response = Client().get(url)
        assert response["X-Robots-Tag"] == "noindex, nofollow", url
        assert response["Referrer-Policy"] == "no-referrer", url
        assert response["Cache-Control"] == "private, no-store", url


def test_the_shared_page_renders_like_the_conversation_but_read_only(alice, bob, conversation):
    exchange(conversation, alice, "Explain", ANSWER)
    exchange(conversation, alice, "Break it", "", status=RunStatus.FAILED, error="Provider said no")
    exchange(conversation, alice, "Stop it", "Partial", status=RunStatus.CANCELLED)
    exchange(
        conversation,
        alice,
        "Delete the build",
        status=RunStatus.WAITING,
        calls=[("run_command", {"command": "rm -rf build"}, "", ToolCallStatus.AWAITING)],
    )
    exchange(conversation, bob, "And now?", status=RunStatus.RUNNING)
    token = share(conversation, alice, mode="live")
    html = body(client_for(bob).get(f"/s/{token}/"))
    # Markdown and highlighted code, a tool call card.
    assert "<strong>the fix</strong>" in html
    assert re.search(r'<span class="k">def</span>', html)
    assert 'data-testid="tool-call"' in html and "rm -rf build" in html
    # Nothing that acts on the conversation.
    for testid in ("stop", "retry", "approve", "deny", "always-allow", "undo", "composer"):
        assert f'data-testid="{testid}"' not in html, testid
    assert "hx-post" not in html
    assert 'id="composer"' not in html
    assert "Retry</button>" not in html
    # The live page gets the share's own socket.
    assert f'data-ws="/ws/share/{token}/"' in html


def test_a_snapshot_shows_nothing_after_the_moment_of_sharing(alice, bob, conversation):
    before = timezone.now() - EARLY
    exchange(conversation, alice, "Early question", "Early answer", at=before)
    # Running at the moment of sharing; it finishes (with a tool call) afterwards.
    running = exchange(conversation, alice, "Slow question", status=RunStatus.RUNNING, at=before)
    snapshot = share(conversation, alice)
    live = share(conversation, alice, mode="live")
    later = timezone.now() + timedelta(minutes=1)
    Run.objects.filter(pk=running.pk).update(status=RunStatus.SUCCEEDED, finished=later)
    Message.objects.create(
        conversation=conversation, role=Role.ASSISTANT, content="Slow answer", run=running
    )
    ToolCall.objects.create(
        run=running, step=1, index=0, call_id="c", name="grep", arguments="{}", created=later
    )
    exchange(conversation, bob, "Later question", "Later answer", at=later)
    conversation_rename(conversation=conversation, title="Renamed afterwards")

    html = body(client_for(bob).get(f"/s/{snapshot}/"))
    assert "Early question" in html and "Early answer" in html
    assert "Slow question" in html
    assert "still being written when the link was shared" in html
    for later_text in ("Slow answer", "Later question", "Later answer", "grep", "Renamed"):
        assert later_text not in html, later_text
    assert "Refactor the parser" in html

    html = body(client_for(bob).get(f"/s/{live}/"))
    for text in ("Slow answer", "Later question", "Later answer", "Renamed afterwards"):
        assert text in html, text


# --- Bad tokens, guessing ----------------------------------------------------------------------


def test_tampered_truncated_unknown_revoked_and_expired_tokens(alice, conversation):
    token = share(conversation, alice, audience="public")
    other = "A" if token[5] != "A" else "B"
    tampered = token[:5] + other + token[6:]
    for bad in (tampered, token[:-1], token[:20], token + "x", "x" * len(token), "."):
        response = Client().get(f"/s/{bad}/")
        assert response.status_code == 404, bad
        assert "does not work" in body(response)
    revoked = share(conversation, alice, audience="public")
    services.revoke_link(link=link_of(revoked), user=alice)
    assert Client().get(f"/s/{revoked}/").status_code == 404
    for path in ("", "export.md", "export.json"):
        assert Client().get(f"/s/{revoked}/{path}").status_code == 404
    expired = share(conversation, alice, audience="public", expiry="1h")
    ShareLink.objects.filter(pk=link_of(expired).pk).update(expires_at=timezone.now())
    response = Client().get(f"/s/{expired}/")
    assert response.status_code == 410
    assert "This link has expired" in body(response)
    assert Client().get(f"/s/{expired}/export.json").status_code == 410
    # Nothing was lost: the good link still opens, and only its own views counted.
    assert Client().get(f"/s/{token}/").status_code == 200
    assert link_of(token).views == 1
    assert link_of(revoked).views == 0 and link_of(expired).views == 0


def test_guessing_tokens_is_rate_limited_per_client(alice, conversation, settings, time_machine):
    # Counts are per minute of the clock: held 5 s into one, so none turns halfway through.
    time_machine.move_to(timezone.now().replace(second=5, microsecond=0), tick=False)
    settings.SHARE_FAILED_LOOKUPS_PER_MINUTE = 30
    good = share(conversation, alice, audience="public")
    guesser = Client(REMOTE_ADDR="203.0.113.7")
    for attempt in range(30):
        guess = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        assert guesser.get(f"/s/{guess}/").status_code == 404, attempt
    guess = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    response = guesser.get(f"/s/{guess}/")
    assert response.status_code == 429
    assert response["Retry-After"] == "55"  # the rest of the minute
    # Past the limit even a working token gets no answer: otherwise 200-versus-429 would keep
    # telling the guesser which tokens work.
    assert guesser.get(f"/s/{good}/").status_code == 429
    assert guesser.get(f"/s/{good}/export.md").status_code == 429
    # Another client is not affected; the guesser's neighbour in the same IPv6 /64 would be.
    assert Client(REMOTE_ADDR="198.51.100.9").get(f"/s/{good}/").status_code == 200
    v6 = Client(REMOTE_ADDR="2001:db8:1:2::1")
    for _ in range(30):
        v6.get("/s/" + "Z" * 43 + "/")
    assert Client(REMOTE_ADDR="2001:db8:1:2::ffff").get(f"/s/{good}/").status_code == 429
    assert Client(REMOTE_ADDR="2001:db8:1:3::1").get(f"/s/{good}/").status_code == 200


def test_known_links_do_not_count_as_guesses(alice, conversation, settings):
    settings.SHARE_FAILED_LOOKUPS_PER_MINUTE = 5
    revoked = share(conversation, alice, audience="public")
    services.revoke_link(link=link_of(revoked), user=alice)
    viewer = Client(REMOTE_ADDR="203.0.113.8")
    for _ in range(10):
        assert viewer.get(f"/s/{revoked}/").status_code == 404


# --- Secrets, and nothing beyond the conversation ----------------------------------------------


@pytest.fixture
def secrets_chat(team, alice, conversation, settings, tmp_path):
    settings.REPOS_ROOT = tmp_path / "repos"
    team.llm_api_key = TEAM_KEY
    team.save()
    repo = Repository.objects.create(team=team, name="app", url="https://git.example.com/app.git")
    repo.credential = f"x-access-token:{REPO_TOKEN}"
    repo.save()
    exchange(
        conversation,
        alice,
        f"My AWS key is {AWS_KEY}, why does it fail?",
        f"Do not paste keys like {AWS_KEY}. The team key {TEAM_KEY} is also in the config.",
        calls=[
            (
                "run_command",
                {"command": f"curl -H 'Authorization: Bearer {GITHUB_TOKEN}' https://api"},
                f"token={REPO_TOKEN}\nGITHUB_TOKEN={GITHUB_TOKEN}\nkey {TEAM_KEY}\n",
                ToolCallStatus.SUCCEEDED,
            )
        ],
    )
    return conversation


SECRETS = (GITHUB_TOKEN, TEAM_KEY, REPO_TOKEN, AWS_KEY)


def test_secrets_never_show_on_a_share_or_its_exports(alice, bob, secrets_chat):
    for audience in ("team", "public"):
        token = share(secrets_chat, alice, audience=audience)
        viewer = client_for(bob) if audience == "team" else Client()
        for path in ("", "export.md", "export.json"):
            response = viewer.get(f"/s/{token}/{path}")
            assert response.status_code == 200, (audience, path)
            text = body(response)
            for secret in SECRETS:
                assert secret not in text, (audience, path, secret)
            assert MARK in text
    # Members' own exports are redacted too: files travel further than the page.
    for fmt in ("md", "json"):
        text = body(client_for(bob).get(f"/t/acme/c/{secrets_chat.uuid}/export.{fmt}"))
        assert not any(secret in text for secret in SECRETS)


def test_the_team_key_in_a_streaming_reply_is_held_back(alice, team, conversation, settings):
    """Half a secret, as it may stand in a reply still being written, is not shown."""
    import redis

    from assistant import streams

    team.llm_api_key = TEAM_KEY
    team.save()
    run = exchange(conversation, alice, "Print the key", status=RunStatus.RUNNING)
    keys = streams._text_key(str(run.uuid)), streams._seq_key(str(run.uuid))
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(keys[0], f"The key is {TEAM_KEY[:10]}")
    client.set(keys[1], 3)
    try:
        token = share(conversation, alice, mode="live", audience="public")
        html = body(Client().get(f"/s/{token}/"))
        assert "The key is" in html and TEAM_KEY[:10] not in html
        fragment = body(Client().get(f"/s/{token}/runs/{run.uuid}/"))
        assert 'data-seq="3"' in fragment and TEAM_KEY[:10] not in fragment
    finally:
        client.delete(*keys)


def test_a_share_reveals_nothing_beyond_its_own_conversation(alice, bob, charlie, team, chat):
    team.llm_model = "openai/team-secret-model"
    team.llm_api_base = "http://llm.internal.example:8080/v1"
    team.save()
    conversation_create(team=team, author=bob, title="Acquisition of Globex")
    exchange(chat, alice, "Why?", "", status=RunStatus.FAILED, error="http://10.0.0.5:8080 refused")
    token = share(chat, alice, audience="public")
    for viewer in (Client(), client_for(charlie)):
        for path in ("", "export.md", "export.json"):
            text = body(viewer.get(f"/s/{token}/{path}"))
            for hidden in (
                "Acquisition of Globex",  # another conversation of the team
                "alice@example.com",  # members' emails
                "bob@example.com",
                ">alice<",  # a name derived from an email
                "Acme",  # the team
                "/t/acme/",
                "team-secret-model",  # the team's settings
                "private-model",
                "llm.internal.example",
                "10.0.0.5",
            ):
                assert hidden not in text, (path, hidden)
    html = body(Client().get(f"/s/{token}/"))
    assert "Team member" in html  # authors without a chosen name
    bob.display_name = "Bob B."
    bob.save()
    assert "Bob B." in body(Client().get(f"/s/{token}/"))
    # A team link names people as the team sees them.
    team_token = share(chat, alice)
    assert ">alice<" in body(client_for(bob).get(f"/s/{team_token}/"))


def test_shared_diffs_are_redacted(alice, bob, team, conversation, settings, tmp_path):
    from assistant import diffs, repos

    settings.REPOS_ROOT = tmp_path / "repos"
    origin = tmp_path / "origin"
    origin.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}
    (origin / "app.py").write_text("print('hi')\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=origin, env=env, check=True, capture_output=True)
    repo = Repository.objects.create(team=team, name="app", url=str(origin))
    workspace = repos.create_workspace(conversation=conversation, repo=repo)
    before = repos.snapshot(workspace=workspace)
    tree = Path(repos.workspace_path(workspace=workspace))
    (tree / "settings.py").write_text(f"GITHUB = '{GITHUB_TOKEN}'\nDEBUG = True\n")
    after = repos.snapshot(workspace=workspace)
    run = exchange(conversation, alice, "Add settings", "Added settings.py.")
    Run.objects.filter(pk=run.pk).update(tree_before=before, tree_after=after)
    diffs.record(Run.objects.get(pk=run.pk))  # what the worker does when a turn ends
    token = share(conversation, alice, audience="public")
    html = body(Client().get(f"/s/{token}/"))
    assert 'data-testid="diff"' in html and "settings.py" in html and "DEBUG" in html
    assert GITHUB_TOKEN not in html and MARK in html
    assert 'data-testid="undo"' not in html
    assert Workspace.objects.filter(conversation=conversation).exists()


# --- Management ----------------------------------------------------------------------------------


def test_views_are_counted_and_the_links_are_listed(alice, bob, chat):
    token = share(chat, bob, audience="public")
    Client().get(f"/s/{token}/")
    Client().get(f"/s/{token}/")
    # The live page reloading its list is not a new view.
    Client().get(f"/s/{token}/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="messages")
    link = link_of(token)
    assert link.views == 2 and link.last_viewed_at is not None
    dialog = body(client_for(bob).get(f"/t/acme/c/{chat.uuid}/shares/"))
    row = re.search(r'<tr id="share-[^"]+".*?</tr>', dialog, re.S).group(0)
    assert 'data-testid="share-views">2' in row and "last " in row and "Anyone" in row
    # Admins see every active link of the team, with who shared it.
    overview = client_for(alice).get("/t/acme/shares/")
    assert overview.status_code == 200
    assert "bob@example.com" in body(overview) and "Refactor the parser" in body(overview)
    assert client_for(bob).get("/t/acme/shares/").status_code == 404
    services.revoke_link(link=link, user=alice)
    assert 'data-testid="share-row"' not in body(client_for(alice).get("/t/acme/shares/"))


def test_who_may_revoke_a_link(alice, bob, django_user_model, team, chat):
    from tests.conftest import _user

    dave = _user(django_user_model, "dave@example.com")
    membership_add(team=team, user=dave, role=TeamRole.MEMBER)
    alices = link_of(share(chat, alice))
    bobs = link_of(share(chat, bob))
    # A member who did not share it: 404, and the link stays.
    assert client_for(dave).post(f"/t/acme/shares/{alices.uuid}/revoke/").status_code == 404
    alices.refresh_from_db()
    assert alices.revoked_at is None
    # Whoever shared it may (htmx: the row comes back saying so)...
    response = client_for(bob).post(f"/t/acme/shares/{bobs.uuid}/revoke/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'data-testid="revoked"' in body(response)
    bobs.refresh_from_db()
    assert bobs.revoked_by == bob and bobs.revoked_at is not None
    # ...and so may an admin, anyone's.
    response = client_for(alice).post(f"/t/acme/shares/{alices.uuid}/revoke/", {"from": "team"})
    assert response.status_code == 302 and response["Location"] == "/t/acme/shares/"
    alices.refresh_from_db()
    assert alices.revoked_by == alice


def test_switching_public_links_off_revokes_them(alice, chat):
    public = share(chat, alice, audience="public")
    team_only = share(chat, alice)
    assert Client().get(f"/s/{public}/").status_code == 200
    client_for(alice).post("/t/acme/shares/policy/", {})
    assert link_of(public).revoked_at is not None
    assert Client().get(f"/s/{public}/").status_code == 404
    assert link_of(team_only).revoked_at is None
    # Switching them on again does not bring the old ones back.
    allow_public(chat.team)
    assert Client().get(f"/s/{public}/").status_code == 404


# --- Fork ----------------------------------------------------------------------------------------


def test_a_signed_in_viewer_forks_into_one_of_their_teams(alice, charlie, other_team, secrets_chat):
    exchange(secrets_chat, charlie, "Not mine", "")  # no reply text: nothing to copy
    token = share(secrets_chat, alice, audience="public")
    later = timezone.now() + timedelta(minutes=1)
    exchange(secrets_chat, alice, "After the snapshot", "Later", at=later)
    viewer = client_for(charlie)
    # Not into someone else's team.
    assert viewer.post(f"/s/{token}/fork/", {"team": "acme"}).status_code == 404
    assert not Conversation.objects.filter(team=other_team).exists()
    response = viewer.post(f"/s/{token}/fork/", {"team": "other"})
    forked = Conversation.objects.get(team=other_team)
    assert response.status_code == 302
    assert response["Location"] == f"/t/other/c/{forked.uuid}/"
    assert forked.title == "Fork of Refactor the parser" and forked.created_by == charlie
    messages = list(forked.messages.order_by("created", "id"))
    contents = [m.content for m in messages]
    assert len(messages) == 3 and "After the snapshot" not in contents
    assert all(secret not in c for c in contents for secret in SECRETS)
    # Alice's message is unattributed in Charlie's team; Charlie's own stays his.
    assert messages[0].author is None and messages[2].author == charlie
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert not ToolCall.objects.filter(run__conversation=forked).exists()
    assert not Workspace.objects.filter(conversation=forked).exists()
    assert forked.runs.get().model == ""  # the model is the other team's setting
    # The fork is a normal conversation of Charlie's team, ready to continue.
    page = viewer.get(response["Location"])
    assert page.status_code == 200 and "Do not paste keys" in body(page)


def test_forking_needs_an_account(alice, chat):
    token = share(chat, alice, audience="public")
    response = Client().post(f"/s/{token}/fork/", {"team": "acme"})
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/s/{token}/"
    assert Conversation.objects.count() == 1


# --- Export --------------------------------------------------------------------------------------


def test_members_export_markdown_and_json(bob, chat):
    member = client_for(bob)
    response = member.get(f"/t/acme/c/{chat.uuid}/export.md")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == (
        "attachment; filename*=UTF-8''Refactor-the-parser.md"
    )
    text = body(response)
    assert text.startswith("# Refactor the parser\n")
    assert "## alice · " in text and "How do I fix the parser?" in text
    assert "```python\ndef answer():" in text
    assert "**Tool `run_command`** (succeeded, exit 0)" in text and "3 passed" in text
    response = member.get(f"/t/acme/c/{chat.uuid}/export.json")
    assert response["Content-Type"] == "application/json; charset=utf-8"
    data = json.loads(body(response))
    assert data["format"] == "tandem.conversation/1" and data["title"] == "Refactor the parser"
    roles = [m["role"] for m in data["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    reply = data["messages"][3]
    assert reply["model"] == "openai/private-model"
    assert [p["type"] for p in reply["parts"]] == ["tool_call", "text"]
    assert reply["parts"][0]["output"] == "3 passed"


def test_a_snapshots_export_stops_at_the_snapshot(alice, bob, chat):
    token = share(chat, alice)
    exchange(chat, bob, "After sharing", "x", at=timezone.now() + timedelta(minutes=1))
    data = json.loads(body(client_for(bob).get(f"/s/{token}/export.json")))
    assert data["until"] is not None
    assert "After sharing" not in json.dumps(data)
    assert "After sharing" not in body(client_for(bob).get(f"/s/{token}/export.md"))


def test_the_export_functions_take_until_redact_and_public(alice, secrets_chat):
    raw = to_markdown(secrets_chat, redact=False)
    assert TEAM_KEY in raw
    assert TEAM_KEY not in to_markdown(secrets_chat)
    assert json.loads(to_json(secrets_chat, until=timezone.now() - 2 * EARLY))["messages"] == []
    public = export_data(secrets_chat, public=True)
    assert public["messages"][0]["author"] == "Team member"
    assert public["messages"][1]["model"] is None
    custom = export_data(secrets_chat, redact=lambda text: text.replace("key", "k**"))
    assert "k**" in json.dumps(custom)


def test_a_fork_needs_the_csrf_token(alice, charlie, other_team, chat):
    token = share(chat, alice, audience="public")
    viewer = Client(enforce_csrf_checks=True)
    viewer.force_login(charlie)
    assert viewer.post(f"/s/{token}/fork/", {"team": "other"}).status_code == 403
    assert not Conversation.objects.filter(team=other_team).exists()


def test_a_shares_fragments_stay_inside_its_conversation_and_moment(alice, bob, team, chat):
    elsewhere = conversation_create(team=team, author=alice, title="Elsewhere")
    foreign = exchange(elsewhere, alice, "Other question", "Other answer")
    snapshot = share(chat, alice, audience="public")
    later = exchange(chat, bob, "Later", "Later answer", at=timezone.now() + timedelta(minutes=1))
    own = chat.runs.order_by("created").first()
    viewer = Client()
    assert viewer.get(f"/s/{snapshot}/runs/{own.uuid}/").status_code == 200
    assert viewer.get(f"/s/{snapshot}/runs/{later.uuid}/").status_code == 404
    assert viewer.get(f"/s/{snapshot}/runs/{foreign.uuid}/").status_code == 404
    fragment = viewer.get(f"/s/{snapshot}/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="messages")
    assert "How do I fix the parser?" in body(fragment)
    assert "<html" not in body(fragment) and "Later answer" not in body(fragment)
