"""The audit log: an event for each audited change, written where the change is made;
append-only for the app and the database; the team's page, CSV export, outsiders' 404s and
the retention job."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from accounts import audit
from accounts.models import AuditAppendOnly, AuditEvent, Membership, Role

pytestmark = pytest.mark.django_db

A = audit.Action


def _waiting_call(conversation, alice):
    from assistant.models import Run, RunStatus, ToolCall, ToolCallStatus
    from assistant.services import message_send

    run = message_send(conversation=conversation, author=alice, content="Run the tests").run
    Run.objects.filter(pk=run.pk).update(status=RunStatus.WAITING)
    return ToolCall.objects.create(
        run=run,
        step=1,
        index=0,
        call_id="c1",
        name="run_command",
        arguments=json.dumps({"command": "pytest -q"}),
        status=ToolCallStatus.AWAITING,
    )


def _approve(ctx):
    from assistant.services import tool_call_decide

    tool_call_decide(
        call=_waiting_call(ctx["conversation"], ctx["alice"]),
        user=ctx["bob"],
        decision="approve",
        is_admin=False,
    )


def _deny(ctx):
    from assistant.services import tool_call_decide

    tool_call_decide(
        call=_waiting_call(ctx["conversation"], ctx["alice"]),
        user=ctx["bob"],
        decision="deny",
        is_admin=False,
    )


def _share(ctx):
    from sharing.services import create_link

    create_link(
        conversation=ctx["conversation"],
        user=ctx["alice"],
        audience="team",
        mode="snapshot",
        expiry="7d",
    )


def _revoke_share(ctx):
    from sharing.services import create_link, revoke_link

    created = create_link(
        conversation=ctx["conversation"],
        user=ctx["alice"],
        audience="team",
        mode="snapshot",
        expiry="7d",
    )
    revoke_link(link=created.link, user=ctx["alice"])


def _sharing_policy(ctx):
    from sharing.services import set_policy

    set_policy(team=ctx["team"], allow_public_links=True, user=ctx["alice"])


def _team_name(ctx):
    ctx["team"].name = "Acme Corp"
    ctx["team"].save()


def _model(ctx):
    team = ctx["team"]
    team.llm_model = "openai/gpt-4o"
    team.llm_api_key = "sk-secret-value"
    team.save()


def _allowlist(ctx):
    from assistant import policy

    policy.allow_always(ctx["team"], "pytest -q")


def _budget(ctx):
    team = ctx["team"]
    team.monthly_budget_usd = Decimal("25.00")
    team.member_daily_tokens = 100_000
    team.save(update_fields=["monthly_budget_usd", "member_daily_tokens"])


def _price(ctx):
    from usage.models import ModelPrice

    ModelPrice.objects.create(
        team=ctx["team"],
        model="ollama_chat/llama3.1",
        input_usd_per_mtok=Decimal("0.1"),
        output_usd_per_mtok=Decimal("0.2"),
    )


def _repo(ctx, **extra):
    from assistant.models import Repository

    repo = Repository(team=ctx["team"], name="parser", url="https://example.com/p.git", **extra)
    repo.save()
    return repo


def _repo_added(ctx):
    _repo(ctx)


def _repo_changed(ctx):
    repo = _repo(ctx)
    repo.default_branch = "develop"
    repo.save()


def _repo_credentials(ctx):
    repo = _repo(ctx)
    repo.auth = "https_token"
    repo.credential = "glpat-secret-token"
    repo.save()


def _repo_removed(ctx):
    _repo(ctx).delete()


def _apikey(ctx):
    from api.services import apikey_create

    apikey_create(membership=Membership.objects.get(team=ctx["team"], user=ctx["alice"]))


def _apikey_revoked(ctx):
    from api.services import apikey_create, apikey_revoke

    new = apikey_create(membership=Membership.objects.get(team=ctx["team"], user=ctx["alice"]))
    apikey_revoke(key=new.key)


def _invite(ctx):
    from accounts.services import invitation_create

    invitation_create(team=ctx["team"], created_by=ctx["alice"], email="dora@example.com")


def _invitation_revoked(ctx):
    from accounts.services import invitation_create, invitation_revoke

    new = invitation_create(team=ctx["team"], created_by=ctx["alice"], email="dora@example.com")
    invitation_revoke(invitation=new.invitation)


def _member_removed(ctx):
    from accounts.services import membership_remove

    team = ctx["team"]
    membership_remove(
        actor=Membership.objects.get(team=team, user=ctx["alice"]),
        target=Membership.objects.get(team=team, user=ctx["bob"]),
    )


def _member_role(ctx):
    from accounts.services import membership_set_role

    team = ctx["team"]
    membership_set_role(
        actor=Membership.objects.get(team=team, user=ctx["alice"]),
        target=Membership.objects.get(team=team, user=ctx["bob"]),
        role=Role.ADMIN,
    )


def _slack(ctx):
    from slack.models import SlackConnection

    connection_ = SlackConnection(team=ctx["team"], slack_team_id="T1", workspace_name="Acme")
    connection_.bot_token = "xoxb-secret"
    connection_.save()


SECRETS = ("sk-secret-value", "glpat-secret-token", "xoxb-secret")


@pytest.mark.parametrize(
    "change, action, actor",
    [
        (_approve, A.COMMAND_APPROVED, "bob"),
        (_deny, A.COMMAND_DENIED, "bob"),
        (_share, A.SHARE_CREATED, "alice"),
        (_revoke_share, A.SHARE_REVOKED, "alice"),
        (_sharing_policy, A.TEAM_SHARING, "alice"),
        (_team_name, A.TEAM_SETTINGS, None),
        (_model, A.TEAM_MODEL, None),
        (_allowlist, A.TEAM_ALLOWLIST, None),
        (_budget, A.TEAM_BUDGET, None),
        (_price, A.TEAM_PRICE, None),
        (_repo_added, A.REPO_ADDED, None),
        (_repo_changed, A.REPO_CHANGED, None),
        (_repo_credentials, A.REPO_CREDENTIALS, None),
        (_repo_removed, A.REPO_REMOVED, None),
        (_apikey, A.APIKEY_CREATED, "alice"),
        (_apikey_revoked, A.APIKEY_REVOKED, None),
        (_invite, A.MEMBER_INVITED, "alice"),
        (_invitation_revoked, A.INVITATION_REVOKED, None),
        (_member_removed, A.MEMBER_REMOVED, "alice"),
        (_member_role, A.MEMBER_ROLE, "alice"),
        (_slack, A.SLACK_CONNECTED, None),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
def test_it_records_each_audited_change(
    change, action, actor, team, conversation, alice, bob, no_runs
):
    """Outside a request (as here) the actor is the one the service is given; saves of
    settings rows name nobody (the request's user does, see the view test below)."""
    ctx = {"team": team, "conversation": conversation, "alice": alice, "bob": bob}
    change(ctx)
    events = list(AuditEvent.objects.filter(action=action))
    assert len(events) == 1, [e.action for e in AuditEvent.objects.all()]
    event = events[0]
    assert event.team_id == team.pk
    assert event.actor_label == ({"alice": alice, "bob": bob}[actor].email if actor else "")
    assert event.object_type and event.object_id
    stored = json.dumps([event.before, event.after, event.object_label])
    for secret in SECRETS:
        assert secret not in stored


def test_settings_changes_keep_before_and_after_and_hide_secrets(team):
    _model({"team": team})
    event = AuditEvent.objects.get(action=A.TEAM_MODEL)
    assert event.before == {"llm_model": "", "llm_api_key_encrypted": ""}
    assert event.after == {"llm_model": "openai/gpt-4o", "llm_api_key_encrypted": "changed"}
    _budget({"team": team})
    event = AuditEvent.objects.get(action=A.TEAM_BUDGET)
    assert event.before == {"monthly_budget_usd": None, "member_daily_tokens": None}
    assert event.after == {"monthly_budget_usd": "25.00", "member_daily_tokens": 100000}


def test_a_change_through_a_page_names_the_user_request_and_address(client, team, alice):
    client.force_login(alice)
    response = client.post(
        reverse("usage_budget", args=[team.slug]),
        {"monthly_budget_usd": "12.50", "member_daily_tokens": ""},
        HTTP_X_REQUEST_ID="req-0123456789",
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(action=A.TEAM_BUDGET)
    assert (event.actor_id, event.request_id, event.ip) == (alice.pk, "req-0123456789", "127.0.0.1")
    assert event.after == {"monthly_budget_usd": "12.50"}


# --- Append-only ---------------------------------------------------------------------------------


def _event(team, **extra):
    return audit.record(A.TEAM_SETTINGS, team=team, label="x", **extra)


def test_the_app_refuses_to_change_or_delete_an_event(team):
    event = _event(team)
    event.action = "member.removed"
    with pytest.raises(AuditAppendOnly):
        event.save()
    with pytest.raises(AuditAppendOnly):
        event.delete()
    with pytest.raises(AuditAppendOnly):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(AuditAppendOnly):
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).action == A.TEAM_SETTINGS


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE accounts_auditevent SET action = 'x' WHERE id = %s",
        "DELETE FROM accounts_auditevent WHERE id = %s",
    ],
)
def test_the_database_refuses_to_change_or_delete_an_event(team, sql):
    event = _event(team)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [event.pk])
    assert AuditEvent.objects.filter(pk=event.pk, action=A.TEAM_SETTINGS).exists()


def _delete_with_cutoff(cutoff, where: str, params) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('tandem.audit_delete_before', %s, true)", [cutoff.isoformat()]
        )
        cursor.execute(f"DELETE FROM accounts_auditevent WHERE {where}", params)


def test_the_database_lets_a_declared_cutoff_delete_only_older_events(team):
    recent = _event(team)
    aged = AuditEvent.objects.create(
        action=A.TEAM_SETTINGS, team=team, created=timezone.now() - timedelta(days=40)
    )
    # A cutoff less than a day old is refused outright, whatever the row.
    with pytest.raises(DatabaseError, match="append-only"):
        _delete_with_cutoff(timezone.now() - timedelta(hours=1), "id = %s", [aged.pk])
    # A proper cutoff still protects the rows younger than it (the statement fails whole).
    cutoff = timezone.now() - timedelta(days=30)
    with pytest.raises(DatabaseError, match="append-only"):
        _delete_with_cutoff(cutoff, "team_id = %s", [team.pk])
    assert AuditEvent.objects.filter(pk__in=[recent.pk, aged.pk]).count() == 2
    _delete_with_cutoff(cutoff, "id = %s", [aged.pk])
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == [recent.pk]


def test_retention_deletes_only_events_past_the_period(team, settings):
    settings.AUDIT_RETENTION_DAYS = 30
    kept = _event(team)
    AuditEvent.objects.create(
        action=A.TEAM_SETTINGS, team=team, created=timezone.now() - timedelta(days=31)
    )
    from accounts.tasks import audit_retention

    assert audit_retention() == 1
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == [kept.pk]


def test_deleting_a_user_or_team_keeps_their_events(team, bob):
    _member_role({"team": team, "alice": team.memberships.get(role=Role.OWNER).user, "bob": bob})
    bob.delete()
    team.delete()
    event = AuditEvent.objects.get(action=A.MEMBER_ROLE)
    assert (event.object_label, event.team_label) == ("bob@example.com", "Acme")


# --- The page -------------------------------------------------------------------------------------


def test_admins_see_their_team_filter_and_export_it(client, team, other_team, alice):
    _event(team, actor=alice)
    _invite({"team": team, "alice": alice})
    _event(other_team)  # another team's: never shown here
    client.force_login(alice)
    url = reverse("audit_log", args=[team.slug])
    page = client.get(url)
    assert page.status_code == 200
    assert page.content.decode().count("<tr>") == 1 + 2  # header + this team's two
    filtered = client.get(url, {"action": A.MEMBER_INVITED, "actor": "alice"})
    assert filtered.content.decode().count("<tr>") == 1 + 1
    assert client.get(url, {"since": "yesterday"}).status_code == 400
    export = client.get(url, {"format": "csv", "action": A.MEMBER_INVITED})
    assert export["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert rows[0] == audit.CSV_HEADER
    assert [(r[1], r[2], r[3], r[6]) for r in rows[1:]] == [
        ("alice@example.com", "Acme", A.MEMBER_INVITED, "dora@example.com")
    ]


def test_members_and_outsiders_get_404_staff_see_everything(client, team, other_team, bob, charlie):
    _event(team)
    _event(other_team)
    for user in (bob, charlie):  # a plain member, an outsider
        client.force_login(user)
        assert client.get(reverse("audit_log", args=[team.slug])).status_code == 404
        assert (
            client.get(reverse("audit_log", args=[team.slug]), {"format": "csv"}).status_code == 404
        )
        assert client.get(reverse("staff_audit_log")).status_code == 404
    charlie.is_staff = True
    charlie.save()
    client.force_login(charlie)
    page = client.get(reverse("staff_audit_log"))
    assert page.status_code == 200
    assert page.content.decode().count("<tr>") == 1 + 2


def test_the_export_pages_through_every_event(client, team, alice, monkeypatch):
    """Each page of the export is a query continuing after the last event sent."""
    monkeypatch.setattr(audit, "CSV_PAGE", 2)
    same_time = timezone.now()
    for n in range(5):  # events of one instant too: the id breaks the tie
        AuditEvent.objects.create(
            action=A.TEAM_SETTINGS,
            team=team,
            object_label=f"e{n}",
            created=same_time if n < 3 else same_time - timedelta(minutes=n),
        )
    client.force_login(alice)
    export = client.get(reverse("audit_log", args=[team.slug]), {"format": "csv"})
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [r[6] for r in rows[1:]] == ["e2", "e1", "e0", "e3", "e4"]
