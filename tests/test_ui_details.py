"""Small things people noticed (issue 16): "just now", one empty conversation at a time,
costs as people read them, and where a staff user without a team lands."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from assistant.models import Conversation, Repository
from assistant.templatetags.chat import ago
from usage.dashboard import money

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_moment_ago_is_just_now():
    now = timezone.now()
    assert ago(now) == "just now"
    assert ago(now - timedelta(seconds=59)) == "just now"
    assert ago(now - timedelta(minutes=5, seconds=3)) == "5\xa0minutes ago"
    assert ago(now - timedelta(days=1, hours=2)) == "1\xa0day ago"


def test_the_repositories_page_says_just_now(alice, team, tmp_path):
    Repository.objects.create(team=team, name="r", url=str(tmp_path), last_fetched=timezone.now())
    page = client_for(alice).get("/t/acme/repos/").content.decode()
    assert "just now" in page and "0 minutes" not in page


def test_new_conversation_reuses_the_empty_one(alice, bob, team):
    client = client_for(alice)
    first = client.post("/t/acme/c/new/")
    again = client.post("/t/acme/c/new/")
    assert first["Location"] == again["Location"]
    assert Conversation.objects.count() == 1
    # A teammate's empty conversation is theirs; a titled one is a deliberate new one.
    client_for(bob).post("/t/acme/c/new/")
    client.post("/t/acme/c/new/", {"title": "Plan"})
    assert Conversation.objects.count() == 3


def test_new_conversation_after_a_message_makes_a_new_one(alice, team, conversation, no_runs):
    from assistant.services import conversation_create, message_send

    used = conversation_create(team=team, author=alice)
    message_send(conversation=used, author=alice, content="hello")
    response = client_for(alice).post("/t/acme/c/new/")
    assert str(used.uuid) not in response["Location"]
    assert Conversation.objects.count() == 3


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        (Decimal("0"), "0"),
        (Decimal("0.0035"), "0.0035"),
        (Decimal("0.1"), "0.10"),
        (Decimal("0.5000"), "0.50"),
        (Decimal("9.0035"), "9.00"),
        (Decimal("1234.5"), "1234.50"),
    ],
)
def test_costs_read_as_money(usd, shown):
    assert money(usd) == shown


def test_a_staff_user_without_a_team_lands_on_the_staff_dashboard(django_user_model):
    staff = django_user_model.objects.create_user(email="ops@example.com", password="x" * 20)
    staff.is_staff = True
    staff.save()
    response = client_for(staff).get("/")
    assert response.status_code == 302 and response["Location"] == "/staff/usage/"
