"""Writes for share links: create, revoke, the public-link policy, views, forks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts import audit
from accounts.models import Membership, Team, User
from assistant.models import Conversation, Message, Role, Run, RunStatus

from . import content
from .models import (
    EXPIRY_CHOICES,
    TOKEN_LENGTH,
    Audience,
    Mode,
    ShareLink,
    SharingPolicy,
    hash_token,
    new_token,
    public_links_allowed,
)

# WebSocket close codes a live viewer gets (4404 "not found" is the conversation consumer's).
CLOSE_REVOKED = 4460
CLOSE_EXPIRED = 4461


class ShareError(Exception):
    """A share operation that cannot be done, with a message for the person."""


@dataclass(frozen=True)
class Created:
    link: ShareLink
    token: str  # shown once, in the URL; only its hash is kept


def create_link(
    *, conversation: Conversation, user: User, audience: str, mode: str, expiry: str
) -> Created:
    if audience not in Audience.values:
        raise ShareError("Choose who can open the link.")
    if mode not in Mode.values:
        raise ShareError("Choose what is shared: a snapshot or live.")
    if expiry not in EXPIRY_CHOICES:
        raise ShareError("Choose when the link expires.")
    if audience == Audience.PUBLIC and not public_links_allowed(conversation.team):
        raise ShareError(
            "The team's admins have not allowed links for anyone; share with the team."
        )
    now = timezone.now()
    delta = EXPIRY_CHOICES[expiry][1]
    token, token_hash = new_token()
    link = ShareLink.objects.create(
        conversation=conversation,
        created_by=user,
        token_hash=token_hash,
        audience=audience,
        mode=mode,
        title=conversation.display_title,
        snapshot_at=now,
        expires_at=now + delta if delta else None,
        created=now,
    )
    audit.record(
        audit.Action.SHARE_CREATED,
        team=conversation.team,
        actor=user,
        obj=link,
        label=link.title,
        after={"audience": audience, "mode": mode, "expires_at": _iso(link.expires_at)},
    )
    from assistant import hooks  # listeners (Slack) queue their work after commit

    hooks.send(hooks.conversation_shared, link=link, by=user)
    return Created(link, token)


def can_revoke(link: ShareLink, membership: Membership) -> bool:
    """Whoever shared it, and the team's admins."""
    return membership.is_admin or (
        link.created_by_id is not None and link.created_by_id == membership.user_id
    )


def revoke_link(*, link: ShareLink, user: User | None) -> bool:
    """Revoke at once: the row is marked in this transaction and, after commit, every live
    viewer of the link is disconnected. Whether this call revoked it."""
    now = timezone.now()
    done = ShareLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(
        revoked_at=now, revoked_by=user
    )
    link.refresh_from_db(fields=["revoked_at", "revoked_by"])
    if done:
        audit.record(
            audit.Action.SHARE_REVOKED,
            team=link.conversation.team,
            actor=user,
            obj=link,
            label=link.title,
        )
        _disconnect_on_commit(link.group, CLOSE_REVOKED)
    return bool(done)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _disconnect_on_commit(group: str, code: int) -> None:
    def send() -> None:
        async_to_sync(get_channel_layer().group_send)(group, {"type": "share.ended", "code": code})

    transaction.on_commit(send)


@transaction.atomic
def set_policy(*, team: Team, allow_public_links: bool, user: User) -> SharingPolicy:
    """Turning public links off revokes every public link of the team: "only where the admins
    allow" has to hold for links made before, too, and live viewers are cut off."""
    policy, _ = SharingPolicy.objects.select_for_update().get_or_create(team=team)
    if policy.allow_public_links != allow_public_links:
        audit.record(
            audit.Action.TEAM_SHARING,
            team=team,
            actor=user,
            obj=policy,
            before={"allow_public_links": policy.allow_public_links},
            after={"allow_public_links": allow_public_links},
        )
    policy.allow_public_links = allow_public_links
    policy.updated_by = user
    policy.updated = timezone.now()
    policy.save()
    if not allow_public_links:
        links = ShareLink.objects.filter(
            conversation__team=team, audience=Audience.PUBLIC, revoked_at__isnull=True
        )
        for link in links:
            revoke_link(link=link, user=user)
    return policy


# --- Opening a link -----------------------------------------------------------------------------

FOUND, EXPIRED, NOT_FOUND = "found", "expired", "not_found"


@dataclass(frozen=True)
class Lookup:
    outcome: str  # FOUND, EXPIRED or NOT_FOUND
    link: ShareLink | None = None

    @property
    def guessed(self) -> bool:
        """A token that matches no link at all: what guessing produces (rate limited)."""
        return self.outcome == NOT_FOUND and self.link is None


def looks_like_token(token: str) -> bool:
    return len(token) == TOKEN_LENGTH and all(c.isalnum() or c in "-_" for c in token)


def lookup(token: str, *, now: datetime | None = None) -> Lookup:
    """The link a token opens. Revoked links, and public links of a team that no longer allows
    them, answer exactly like unknown tokens."""
    if not looks_like_token(token):
        return Lookup(NOT_FOUND)
    link = (
        ShareLink.objects.select_related("conversation__team", "created_by")
        .filter(token_hash=hash_token(token))
        .first()
    )
    if link is None:
        return Lookup(NOT_FOUND)
    return Lookup(state(link, now), link)


def state(link: ShareLink, now: datetime | None = None) -> str:
    """FOUND, EXPIRED or NOT_FOUND for a link row as it is now."""
    if link.is_revoked:
        return NOT_FOUND
    if link.is_public and not public_links_allowed(link.conversation.team):
        return NOT_FOUND
    if link.is_expired(now):
        return EXPIRED
    return FOUND


def may_view(link: ShareLink, user) -> bool:
    """Public links: anyone. Team links: signed-in members of the conversation's team."""
    if link.is_public:
        return True
    if user is None or not user.is_authenticated:
        return False
    return Membership.objects.filter(
        team_id=link.conversation.team_id, user=user, user__is_active=True
    ).exists()


def record_view(link: ShareLink) -> None:
    ShareLink.objects.filter(pk=link.pk).update(views=F("views") + 1, last_viewed_at=timezone.now())


# --- Forking ------------------------------------------------------------------------------------

FORK_TITLE_CHARS = 200


@transaction.atomic
def fork(*, link: ShareLink, user: User, team: Team) -> Conversation:
    """A new conversation in ``team`` with what the viewer sees of the shared one: each user
    message and the text of each finished reply, redacted as shown. Tool calls and workspaces
    stay behind (they belong to the other team's repository).

    Authors: the forker's own messages stay theirs; everyone else's become unattributed
    ("Someone"), since putting other people's accounts into a team they may not belong to would
    expose them there.
    """
    lens = content.lens_for_link(link)
    source = link.conversation
    now = timezone.now()
    title = (link.title if not link.is_live else source.display_title) or "Shared conversation"
    forked = Conversation.objects.create(
        team=team,
        created_by=user,
        title=f"Fork of {title}"[:FORK_TITLE_CHARS],
        title_is_custom=True,
        created=now,
        updated=now,
    )
    messages = source.messages.filter(role=Role.USER).select_related("author")
    runs = source.runs.select_related("assistant_message").filter(
        status__in=[RunStatus.SUCCEEDED, RunStatus.CANCELLED]
    )
    if lens.until is not None:
        messages = messages.filter(created__lte=lens.until)
        runs = runs.filter(finished__lte=lens.until)
    by_message: dict[int, list[Run]] = {}
    for run in runs.order_by("created", "id"):
        by_message.setdefault(run.user_message_id, []).append(run)
    for message in messages:
        copy = Message.objects.create(
            conversation=forked,
            role=Role.USER,
            author=user if message.author_id == user.pk else None,
            content=lens.redact(message.content),
            created=message.created,
        )
        for run in by_message.get(message.pk, []):
            answer = getattr(run, "assistant_message", None)
            if answer is None or not answer.content:
                continue
            new_run = Run.objects.create(
                conversation=forked,
                user_message=copy,
                requested_by=None,
                status=run.status,
                model="" if lens.public else run.model,
                created=run.created,
                started=run.started,
                finished=run.finished,
            )
            Message.objects.create(
                conversation=forked,
                role=Role.ASSISTANT,
                content=lens.redact(answer.content),
                run=new_run,
                created=answer.created,
            )
    return forked
