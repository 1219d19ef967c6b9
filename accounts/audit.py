"""The audit log: who approved or denied a command, shared or revoked a link, changed the team's
settings (its model, allowlist, budgets, sharing), a repository or its credentials, created or
revoked an API key, invited, removed or changed the role of a member, connected Slack, opened
(or linked) a pull request.

Events are written where the change is made, in the same transaction: by the services
(``record``), and for settings rows that several pages and the admin write (the team, its
repositories, prices, the Slack connection) by ``track``, which compares the row before and
after each save and records the fields that changed. Secrets are never written: a changed key,
token or credential is recorded as "changed".

Append-only: the model and its QuerySet refuse to change or delete an event, and in PostgreSQL a
trigger (migration 0005) refuses UPDATE and DELETE too — except a DELETE, by
``purge_expired``, of events older than a cutoff the transaction declares, which must itself be
at least a day old. The app has no other way to remove an event.

The actor, request id and client address come from the request being answered (set by
``AuditContextMiddleware``), unless a service names the actor; work done outside a request
(Celery tasks, management commands) records no address.

accounts is the ground floor of Tandem and imports no other app; the other apps call into this.
"""

from __future__ import annotations

import contextvars
import csv
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from .models import AuditEvent, Team, User


class Action(models.TextChoices):
    COMMAND_APPROVED = "command.approved", "Approved a command"
    COMMAND_DENIED = "command.denied", "Denied a command"
    SHARE_CREATED = "share.created", "Shared a link"
    SHARE_REVOKED = "share.revoked", "Revoked a link"
    TEAM_SETTINGS = "team.settings", "Changed the team's settings"
    TEAM_MODEL = "team.model", "Changed the model"
    TEAM_ALLOWLIST = "team.allowlist", "Changed the allowlist"
    TEAM_BUDGET = "team.budget", "Changed the budgets"
    TEAM_PRICE = "team.price", "Changed a model's price"
    TEAM_SHARING = "team.sharing", "Changed the sharing policy"
    REPO_ADDED = "repository.added", "Added a repository"
    REPO_CHANGED = "repository.changed", "Changed a repository"
    REPO_CREDENTIALS = "repository.credentials", "Changed a repository's credentials"
    REPO_REMOVED = "repository.removed", "Removed a repository"
    PULL_REQUEST_OPENED = "pullrequest.opened", "Opened a pull request"
    PULL_REQUEST_LINKED = "pullrequest.linked", "Linked a pull request that was open"
    APIKEY_CREATED = "apikey.created", "Created an API key"
    APIKEY_REVOKED = "apikey.revoked", "Revoked an API key"
    MEMBER_INVITED = "member.invited", "Invited someone"
    INVITATION_REVOKED = "invitation.revoked", "Revoked an invitation"
    MEMBER_REMOVED = "member.removed", "Removed a member"
    MEMBER_ROLE = "member.role", "Changed a member's role"
    SLACK_CONNECTED = "slack.connected", "Connected Slack"
    SLACK_CHANGED = "slack.changed", "Changed the Slack connection"
    SLACK_REMOVED = "slack.removed", "Disconnected Slack"


SECRET = "changed"  # what is recorded for a secret that changed, instead of its value

# --- The request being answered ------------------------------------------------------------------

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "tandem_audit_request", default=None
)


class AuditContextMiddleware:
    """Remembers the request, so events recorded by the services it calls name its user, its
    request id (config/logs.py) and the client's address (config/clientip.py)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def _request_user(request: HttpRequest | None) -> User | None:
    user = getattr(request, "user", None) if request is not None else None
    return user if isinstance(user, User) and user.is_authenticated else None


def _ip(request: HttpRequest | None) -> str | None:
    raw = request.META.get("REMOTE_ADDR") if request is not None else None
    try:
        return str(ipaddress.ip_address(raw)) if raw else None
    except ValueError:
        return None


# --- Recording -----------------------------------------------------------------------------------


def record(
    action: str,
    *,
    team: Team | None,
    actor: User | None = None,
    obj: models.Model | None = None,
    object_type: str = "",
    object_id: str = "",
    label: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write one event. ``actor`` defaults to the signed-in user of the request being answered."""
    request = _request.get()
    actor = actor or _request_user(request)
    if obj is not None:
        object_type = object_type or obj._meta.model_name or ""
        object_id = object_id or str(getattr(obj, "uuid", None) or obj.pk)
        label = label or str(obj)
    return AuditEvent.objects.create(
        actor=actor,
        actor_label=actor.email if actor else "",
        team=team,
        team_label=team.name if team else "",
        action=action,
        object_type=object_type,
        object_id=object_id[:64],
        object_label=label[:300],
        before=before,
        after=after,
        request_id=str(getattr(request, "request_id", "") or "")[:64],
        ip=_ip(request),
    )


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def changes(
    old: dict[str, Any], new: dict[str, Any], secrets: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after) of the fields whose values differ; secrets as "set"/"" and "changed"."""
    before, after = {}, {}
    secret = set(secrets)
    for name, value in new.items():
        if old.get(name) == value:
            continue
        if name in secret:
            before[name] = "set" if old.get(name) else ""
            after[name] = SECRET if value else ""
        else:
            before[name], after[name] = _plain(old.get(name)), _plain(value)
    return before, after


def track(
    model: type[models.Model],
    *,
    fields: dict[str, str],
    team: Callable[[Any], Team | None],
    created: str | None = None,
    deleted: str | None = None,
    secrets: Iterable[str] = (),
    label: Callable[[Any], str] = str,
) -> None:
    """Record every save of ``model`` that changes one of ``fields`` (field name -> the action
    it belongs to; a save touching several actions records one event each), its creation as
    ``created`` and its deletion as ``deleted``. Only saves through the model are seen: a
    QuerySet.update() of these fields would not be, so the apps don't use one for them."""
    secret = tuple(secrets)
    names = list(fields)
    created_action = created  # the receiver below has an argument of that name
    uid = f"audit-{model._meta.label}"

    def remember(sender, instance, raw=False, **kwargs) -> None:
        if raw or instance._state.adding or instance.pk is None:
            return
        instance._audit_before = (
            sender._default_manager.filter(pk=instance.pk).values(*names).first()
        )

    def saved(sender, instance, created: bool, raw=False, **kwargs) -> None:
        if raw:
            return
        now = {name: getattr(instance, name) for name in names}
        if created:
            if created_action:
                _, after = changes({}, now, secret)
                record(
                    created_action, team=team(instance), obj=instance, label=label(instance),
                    after=after,
                )  # fmt: skip
            return
        old = instance.__dict__.pop("_audit_before", None)
        if old is None:
            return
        by_action: dict[str, list[str]] = {}
        for name in names:
            if old.get(name) != now[name]:
                by_action.setdefault(fields[name], []).append(name)
        for action, changed in by_action.items():
            before, after = changes(
                {n: old[n] for n in changed}, {n: now[n] for n in changed}, secret
            )
            record(
                action, team=team(instance), obj=instance, label=label(instance),
                before=before, after=after,
            )  # fmt: skip

    def gone(sender, instance, **kwargs) -> None:
        if deleted:
            record(deleted, team=team(instance), obj=instance, label=label(instance))

    pre_save.connect(remember, sender=model, weak=False, dispatch_uid=uid)
    post_save.connect(saved, sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(gone, sender=model, weak=False, dispatch_uid=uid)


# --- Reading --------------------------------------------------------------------------------------


def events_for(
    *, team: Team | None, action: str = "", actor: str = "", since=None, until=None
) -> models.QuerySet[AuditEvent]:
    """A team's events (every team's when ``team`` is None: staff), newest first, filtered by
    action, actor (part of their email) and date range (inclusive days)."""
    qs = AuditEvent.objects.all()
    if team is not None:
        qs = qs.filter(team=team)
    if action:
        qs = qs.filter(action=action)
    if actor:
        qs = qs.filter(actor_label__icontains=actor)
    if since:
        qs = qs.filter(created__date__gte=since)
    if until:
        qs = qs.filter(created__date__lte=until)
    return qs.order_by("-created", "-id")


CSV_HEADER = [
    "time", "actor", "team", "action", "object type", "object id", "object", "before", "after",
    "request id", "ip",
]  # fmt: skip


def csv_rows(events: Iterable[AuditEvent]) -> Iterator[list[str]]:
    import json

    for event in events:
        yield [
            event.created.isoformat(),
            event.actor_label,
            event.team_label,
            event.action,
            event.object_type,
            event.object_id,
            event.object_label,
            json.dumps(event.before) if event.before is not None else "",
            json.dumps(event.after) if event.after is not None else "",
            event.request_id,
            event.ip or "",
        ]


class _Echo:
    def write(self, value: str) -> str:
        return value


CSV_PAGE = 500


def csv_chunks(events: models.QuerySet[AuditEvent]) -> Iterator[str]:
    """The export as CSV text, one chunk per page of CSV_PAGE events (an export may be long:
    it is streamed). Each page is a query of its own, continuing after the last event sent
    (newest first), so no cursor is held between chunks and any thread may read the next.
    Cells that a spreadsheet would run as a formula are prefixed with a quote."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    page = list(events[:CSV_PAGE])
    while page:
        yield "".join(writer.writerow([_inert(c) for c in row]) for row in csv_rows(page))
        if len(page) < CSV_PAGE:
            return
        last = page[-1]
        after = models.Q(created__lt=last.created) | models.Q(created=last.created, id__lt=last.pk)
        page = list(events.filter(after)[:CSV_PAGE])


def _inert(cell: str) -> str:
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


# --- Retention -----------------------------------------------------------------------------------

PURGE_BATCH = 5000


def purge_expired(now: datetime | None = None) -> int:
    """Delete events older than AUDIT_RETENTION_DAYS: the one deletion path. The transaction
    declares its cutoff to the database's trigger, which lets only older rows go."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.AUDIT_RETENTION_DAYS)
    table = AuditEvent._meta.db_table
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "SELECT set_config('tandem.audit_delete_before', %s, true)",
                    [cutoff.isoformat()],
                )
            cursor.execute(
                f"DELETE FROM {table} WHERE id IN "  # noqa: S608 (the model's own table name)
                f"(SELECT id FROM {table} WHERE created < %s ORDER BY id LIMIT %s)",
                [cutoff, PURGE_BATCH],
            )
            deleted = cursor.rowcount
        total += deleted
        if deleted < PURGE_BATCH:
            return total
