"""What the Slack tasks and views do: post at most once, decide who gets what, map Slack users
to members, start and continue conversations, switch a dead connection off."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Membership, Role, User
from config import metrics

from . import blocks
from .client import Failure, call, post_webhook, web
from .models import (
    ConversationFollow,
    Delivery,
    DeliveryStatus,
    Kind,
    LinkRequest,
    SlackConnection,
    SlackThread,
    SlackUserLink,
    Status,
)

log = logging.getLogger(__name__)
WEBHOOK = "webhook"


@dataclass(frozen=True)
class Target:
    channel: str  # a channel id, a user id (the app's DM with them) or WEBHOOK
    thread_ts: str = ""


@dataclass(frozen=True)
class Post:
    key: str
    kind: str
    target: Target
    message: dict


def active_connection(*, team_id: int | None = None, slack_team_id: str = ""):
    qs = SlackConnection.objects.select_related("team").filter(status=Status.ACTIVE)
    if team_id is not None:
        return qs.filter(team_id=team_id).first()
    if slack_team_id:
        return qs.filter(slack_team_id=slack_team_id).first()
    return None


# --- Posting, at most once ---------------------------------------------------------------------


def _send(connection: SlackConnection, target: Target, message: dict, attempt: int) -> str:
    if target.channel == WEBHOOK:
        post_webhook(connection.webhook_url, message, attempt=attempt)
        return ""
    response = call(
        web(connection.bot_token).chat_postMessage,
        attempt=attempt,
        channel=target.channel,
        thread_ts=target.thread_ts or None,
        text=message["text"],
        blocks=message["blocks"],
        unfurl_links=False,
        unfurl_media=False,
    )
    return str(response.get("ts") or "")


def post_once(connection: SlackConnection, post: Post, *, attempt: int = 0) -> Delivery:
    """Post unless this key was posted before. The row is inserted first (unique key) and
    locked while posting, so two executions of one task can't both post: the second waits,
    then finds it posted. Raises Failure (after recording it) when Slack refused."""
    try:
        delivery, _ = Delivery.objects.get_or_create(
            key=post.key,
            defaults={
                "team_id": connection.team_id,
                "kind": post.kind,
                "channel": post.target.channel,
            },
        )
    except IntegrityError:  # inserted meanwhile by a concurrent execution
        delivery = Delivery.objects.get(key=post.key)
    failure: Failure | None = None
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
        if delivery.status != DeliveryStatus.PENDING:
            return delivery  # posted already (or refused for good): never again
        delivery.attempts += 1
        try:
            delivery.ts = _send(connection, post.target, post.message, attempt)
        except Failure as exc:
            failure = exc
            delivery.last_error = exc.error[:300]
            delivery.retry_in = exc.retry_in
            if exc.retry_in is None:
                delivery.status = DeliveryStatus.FAILED
        else:
            delivery.status = DeliveryStatus.POSTED
            delivery.posted = timezone.now()
            delivery.last_error = ""
        delivery.save()
    outcome = "posted" if failure is None else "retry" if failure.retry_in is not None else "failed"
    metrics.safely(lambda: metrics.SLACK_DELIVERIES.labels(post.kind, outcome).inc())
    if failure is not None:
        if failure.revoked:
            disable(connection, failure.error)
        elif failure.retry_in is None:
            SlackConnection.objects.filter(pk=connection.pk).update(
                last_error=f"{post.kind} to {post.target.channel}: {failure.error}"[:500]
            )
        raise failure
    return delivery


def post_all(connection: SlackConnection, posts: list[Post], *, attempt: int = 0) -> None:
    """Every post, each at most once. A refusal of one doesn't stop the others, except a dead
    connection; the first failure worth retrying is raised at the end (posted ones skip)."""
    retry: Failure | None = None
    for post in posts:
        try:
            post_once(connection, post, attempt=attempt)
        except Failure as exc:
            if exc.revoked:
                raise
            # A kept failure always has a retry_in (the "or 0" is for the type checker).
            if exc.retry_in is not None and (retry is None or exc.retry_in > (retry.retry_in or 0)):
                retry = exc
    if retry is not None:
        raise retry


# --- The connection dies -------------------------------------------------------------------------


REASONS = {
    "token_revoked": "The app's token was revoked in Slack.",
    "invalid_auth": "Slack no longer accepts the app's token.",
    "account_inactive": "The Slack account behind the app was deactivated.",
    "app_uninstalled": "The Tandem app was removed from the Slack workspace.",
    "tokens_revoked": "The app's token was revoked in Slack.",
    "no_service": "The incoming webhook was removed in Slack.",
    "invalid_token": "The incoming webhook was removed in Slack.",
}


def disable(connection: SlackConnection, error: str) -> bool:
    """Switch the connection off (once) and tell the team's admins: by email, and on the
    Slack and team settings pages. Nothing is retried against a dead token."""
    reason = REASONS.get(error, f"Slack refused the app ({error}).")
    done = SlackConnection.objects.filter(pk=connection.pk, status=Status.ACTIVE).update(
        status=Status.DISABLED, disabled_reason=reason, disabled_at=timezone.now()
    )
    if not done:
        return False
    connection.status, connection.disabled_reason = Status.DISABLED, reason
    team = connection.team
    admins = list(
        Membership.objects.filter(team=team, role__in=[Role.OWNER, Role.ADMIN]).values_list(
            "user__email", flat=True
        )
    )
    page = blocks.site(reverse("slack_settings", args=[team.slug]))
    log.warning("Slack connection of team %s disabled: %s", team.slug, error)
    if admins:
        transaction.on_commit(
            lambda: send_mail(
                f"Slack notifications for {team.name} stopped",
                f"{reason}\n\nTandem stopped posting to Slack for {team.name}. Connect the "
                f"workspace again on {page}\n",
                None,
                admins,
                fail_silently=True,
            )
        )
    return True


# --- Who gets what -----------------------------------------------------------------------------


def _team_target(connection: SlackConnection) -> Target | None:
    if connection.has_bot and connection.channel_id:
        return Target(connection.channel_id)
    if connection.has_webhook:
        return Target(WEBHOOK)
    return None


def _follower_targets(connection: SlackConnection, conversation, kind: str) -> list[Target]:
    """DMs to members following the conversation who chose this kind and whose Slack account
    is linked (a webhook can't DM anyone)."""
    if not connection.has_bot or not connection.slack_team_id:
        return []
    follows = ConversationFollow.objects.filter(
        conversation=conversation, user__memberships__team_id=conversation.team_id
    )
    user_ids = [f.user_id for f in follows if kind in (f.kinds or [])]
    links = SlackUserLink.objects.filter(
        slack_team_id=connection.slack_team_id, user_id__in=user_ids
    ).order_by("slack_user_id")
    return [Target(link.slack_user_id) for link in links]


def _wanted(connection: SlackConnection, kind: str) -> bool:
    return kind in (connection.kinds or [])


def conversation_posts(
    connection: SlackConnection, conversation, *, kind: str, ref: str, message, thread=None
) -> list[Post]:
    """The team channel (when the team wants this kind) and the followers' DMs, skipping the
    team channel when the conversation's own Slack thread lives there."""
    posts: list[Post] = []
    team_target = _team_target(connection) if _wanted(connection, kind) else None
    if team_target and not (thread and thread.channel_id == team_target.channel):
        posts.append(
            Post(f"{kind}:{ref}:{team_target.channel}", kind, team_target, message(team_target))
        )
    for target in _follower_targets(connection, conversation, kind):
        posts.append(Post(f"{kind}:{ref}:{target.channel}", kind, target, message(target)))
    return posts


def thread_of(conversation) -> SlackThread | None:
    return SlackThread.objects.filter(conversation=conversation).first()


def run_posts(connection: SlackConnection, run) -> list[Post]:
    conversation = run.conversation
    thread = thread_of(conversation) if connection.has_bot else None
    posts: list[Post] = []
    if thread is not None:
        posts.append(
            Post(
                f"answer:{run.uuid}:{thread.channel_id}",
                "answer",
                Target(thread.channel_id, thread.thread_ts),
                blocks.answer(run),
            )
        )
    kind = {"succeeded": Kind.RUN_FINISHED, "failed": Kind.RUN_FAILED}.get(run.status)
    if kind:
        build = blocks.run_finished if kind == Kind.RUN_FINISHED else blocks.run_failed
        message = build(run)
        posts += conversation_posts(
            connection,
            conversation,
            kind=kind,
            ref=str(run.uuid),
            message=lambda t: message,
            thread=thread,
        )
    return posts


def approval_posts(connection: SlackConnection, call_obj) -> list[Post]:
    conversation = call_obj.run.conversation
    thread = thread_of(conversation) if connection.has_bot else None

    def message(target: Target) -> dict:
        # Buttons need interactivity, which only the bot has.
        return blocks.approval(call_obj, buttons=target.channel != WEBHOOK)

    posts: list[Post] = []
    if thread is not None:
        target = Target(thread.channel_id, thread.thread_ts)
        posts.append(
            Post(
                f"approval:{call_obj.uuid}:thread:{thread.channel_id}",
                Kind.APPROVAL,
                target,
                message(target),
            )
        )
    posts += conversation_posts(
        connection,
        conversation,
        kind=Kind.APPROVAL,
        ref=str(call_obj.uuid),
        message=message,
        thread=thread,
    )
    return posts


def shared_posts(connection: SlackConnection, link_obj, by) -> list[Post]:
    message = blocks.shared(link_obj, by)
    return conversation_posts(
        connection,
        link_obj.conversation,
        kind=Kind.SHARED,
        ref=str(link_obj.uuid),
        message=lambda t: message,
    )


def budget_posts(
    connection: SlackConnection, team, percent: int, kind: str, period: str
) -> list[Post]:
    target = _team_target(connection)
    if target is None or not _wanted(connection, Kind.BUDGET):
        return []
    key = f"budget:{team.uuid}:{kind}:{period}:{percent}:{target.channel}"
    return [Post(key, Kind.BUDGET, target, blocks.budget(team, percent, kind))]


# --- Slack users as members ----------------------------------------------------------------------


def member_for(connection: SlackConnection, slack_user_id: str) -> User | None:
    """The member a Slack user acts as: linked before, or matched now by a verified email
    address (users.info, needs users:read.email). None: unknown, or not in the team."""
    from allauth.account.models import EmailAddress

    link = (
        SlackUserLink.objects.select_related("user")
        .filter(slack_team_id=connection.slack_team_id, slack_user_id=slack_user_id)
        .first()
    )
    user = link.user if link else None
    if user is None and connection.has_bot:
        try:
            info = call(web(connection.bot_token).users_info, user=slack_user_id)
        except Failure as exc:
            if exc.revoked:
                disable(connection, exc.error)
                raise
            info = None
        email = ((info or {}).get("user") or {}).get("profile", {}).get("email") or ""
        address = (
            EmailAddress.objects.filter(email__iexact=email, verified=True)
            .select_related("user")
            .first()
            if email
            else None
        )
        if address is not None:
            user = address.user
            SlackUserLink.objects.get_or_create(
                slack_team_id=connection.slack_team_id,
                slack_user_id=slack_user_id,
                defaults={"user": user, "via": "email"},
            )
    if user is None or not user.is_active:
        return None
    if not Membership.objects.filter(team_id=connection.team_id, user=user).exists():
        return None
    return user


def link_url(connection: SlackConnection, slack_user_id: str) -> str:
    token, token_hash = LinkRequest.new_token()
    LinkRequest.objects.create(
        token_hash=token_hash, slack_team_id=connection.slack_team_id, slack_user_id=slack_user_id
    )
    return blocks.site(reverse("slack_link", args=[token]))


def link_prompt(connection: SlackConnection, slack_user_id: str) -> str:
    return (
        f"I don't know who you are in Tandem yet ({escape_team(connection)}). "
        f"<{link_url(connection, slack_user_id)}|Connect your Slack account> while signed in "
        "to Tandem (the link works once, for 30 minutes), then try again."
    )


def escape_team(connection: SlackConnection) -> str:
    return f"team {blocks.escape(connection.team.name)}"


def ephemeral(
    connection: SlackConnection, channel: str, user: str, text: str, thread_ts: str = ""
) -> None:
    try:
        call(
            web(connection.bot_token).chat_postEphemeral,
            channel=channel,
            user=user,
            text=text,
            thread_ts=thread_ts or None,
        )
    except Failure as exc:
        if exc.revoked:
            disable(connection, exc.error)
        log.info("Slack ephemeral message not delivered: %s", exc.error)


# --- Conversations from Slack --------------------------------------------------------------------


def start_or_continue(
    connection: SlackConnection,
    *,
    user: User,
    channel: str,
    thread_ts: str,
    text: str,
    new: bool,
    only_new: bool = False,
) -> str | None:
    """Send ``text`` as ``user`` into the conversation of this Slack thread, starting one when
    ``new`` and the thread has none (``only_new``: a thread that has one already was started
    by an earlier run of the same task, so nothing is sent again). Returns an error sentence
    for the person, or None."""
    from assistant.services import ChatError, conversation_create, message_send

    try:
        with transaction.atomic():
            thread = (
                SlackThread.objects.select_for_update()
                .select_related("conversation__team")
                .filter(
                    slack_team_id=connection.slack_team_id, channel_id=channel, thread_ts=thread_ts
                )
                .first()
            )
            if thread is not None and only_new:
                return None
            if thread is not None:
                conversation = thread.conversation
            elif new:
                conversation = conversation_create(team=connection.team, author=user)
                SlackThread.objects.create(
                    conversation=conversation,
                    slack_team_id=connection.slack_team_id,
                    channel_id=channel,
                    thread_ts=thread_ts,
                )
            else:
                return None
            message_send(conversation=conversation, author=user, content=text)
    except ChatError as exc:
        return str(exc)
    return None
