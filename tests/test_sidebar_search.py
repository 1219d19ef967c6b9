"""The sidebar's search (issue 16): titles and message text, team-scoped, with the words around
the match, bounded in what it reads."""

from __future__ import annotations

import pytest
from django.test import Client

from assistant import selectors
from assistant.models import Message, Role
from assistant.services import conversation_create

pytestmark = pytest.mark.django_db

SIDEBAR = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "sidebar-results"}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def say(conversation, text: str, role=Role.USER) -> Message:
    return Message.objects.create(conversation=conversation, role=role, content=text)


def test_it_finds_words_in_messages_with_the_match_shown(alice, team, conversation):
    say(conversation, "How do we deploy?")
    say(
        conversation,
        "x" * 5000 + " the Kubernetes rollout failed at step 3 " + "y" * 5000,
        Role.ASSISTANT,
    )
    conversation_create(team=team, author=alice, title="Lunch plans")

    html = client_for(alice).get("/t/acme/?q=kubernetes ROLLOUT", **SIDEBAR).content.decode()
    assert "Refactor the parser" in html and "Lunch plans" not in html
    assert "<mark>Kubernetes rollout</mark> failed at step 3" in html
    # A window around the match, not the 10,000 letters around it.
    snippet = html[html.index('data-testid="snippet"') :]
    assert len(snippet) < 400


def test_titles_still_match_and_the_newest_message_gives_the_snippet(alice, team, conversation):
    deploy = conversation_create(team=team, author=alice, title="Deploy notes")
    say(conversation, "an old deploy question")
    say(conversation, "a newer deploy answer")
    found = selectors.search_conversations(team, "deploy", limit=40)
    by_title = {item.conversation.title: item for item in found}
    assert set(by_title) == {"Deploy notes", "Refactor the parser"}
    assert by_title["Deploy notes"].match == ""
    assert by_title["Refactor the parser"].before == "a newer "
    assert deploy.pk in {item.conversation.pk for item in found}


def test_short_queries_search_titles_only(alice, team, conversation):
    say(conversation, "go go go")
    conversation_create(team=team, author=alice, title="Go modules")
    titles = [f.conversation.title for f in selectors.search_conversations(team, "go", limit=40)]
    assert titles == ["Go modules"]


def test_it_never_shows_another_teams_messages(alice, charlie, team, other_team, conversation):
    theirs = conversation_create(team=other_team, author=charlie, title="Their plans")
    say(theirs, "the secret merger with Initech")
    say(conversation, "nothing to see")
    html = client_for(alice).get("/t/acme/?q=initech", **SIDEBAR).content.decode()
    assert "Their plans" not in html and "merger" not in html
    assert "No title or message has “initech” in it." in html
    assert client_for(charlie).get("/t/acme/?q=nothing", **SIDEBAR).status_code == 404


def test_markup_in_a_message_is_shown_as_text(alice, team, conversation):
    say(conversation, "try <script>alert(1)</script> here")
    html = client_for(alice).get("/t/acme/?q=alert", **SIDEBAR).content.decode()
    assert "<script>" not in html and "&lt;script&gt;<mark>alert</mark>(1)" in html
