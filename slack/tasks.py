"""Celery tasks: everything that talks to Slack runs here, after the commit that caused it.

Retries: a 429 waits what Retry-After says, a 5xx or network error backs off exponentially,
both at most SLACK_MAX_RETRIES times; a dead token disables the connection and stops. Posts
already made are recorded per key (models.Delivery), so a retried task posts only what is
still missing."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction

from . import blocks, services
from .client import Failure, call, post_webhook, web

log = logging.getLogger(__name__)


def enqueue(task, *args) -> None:
    """Queue once the current transaction commits (at once outside one): a task must never
    look for rows that aren't committed yet. Embedded mode has no Celery worker: the task runs
    in a thread of its own there (retries then come at once, not after their countdown)."""
    if settings.RUN_EXECUTOR == "inprocess" and not settings.CELERY_TASK_ALWAYS_EAGER:
        import threading

        def run() -> None:
            from django.db import connection

            try:
                task.apply(args=args)
            finally:
                connection.close()  # this thread's own connection

        def start() -> None:
            threading.Thread(target=run, name="slack-task", daemon=True).start()

        transaction.on_commit(start)
        return
    transaction.on_commit(lambda: task.delay(*args))


def _retry(task, exc: Failure) -> None:
    if exc.revoked or exc.retry_in is None:
        return  # recorded on the delivery / the connection; retrying can't help
    if task.request.retries >= settings.SLACK_MAX_RETRIES:
        log.error("Slack: giving up after %s retries: %s", task.request.retries, exc.error)
        return
    raise task.retry(countdown=exc.retry_in, exc=exc, max_retries=settings.SLACK_MAX_RETRIES)


TASK = {"bind": True, "acks_late": True, "ignore_result": True}


@shared_task(name="slack.notify_run", **TASK)
def notify_run(self, run_id: str) -> None:
    from assistant.models import Run

    run = (
        Run.objects.select_related("conversation__team", "requested_by").filter(uuid=run_id).first()
    )
    connection = services.active_connection(team_id=run.conversation.team_id) if run else None
    if connection is None:  # no Slack, or the conversation was deleted meanwhile
        return
    try:
        services.post_all(
            connection, services.run_posts(connection, run), attempt=self.request.retries
        )
    except Failure as exc:
        _retry(self, exc)


@shared_task(name="slack.notify_approval", **TASK)
def notify_approval(self, call_id: str) -> None:
    from assistant.models import ToolCall, ToolCallStatus

    call_obj = (
        ToolCall.objects.select_related("run__conversation__team").filter(uuid=call_id).first()
    )
    if call_obj is None or call_obj.status != ToolCallStatus.AWAITING:
        return  # decided in Tandem before this ran
    connection = services.active_connection(team_id=call_obj.run.conversation.team_id)
    if connection is None:
        return
    try:
        services.post_all(
            connection, services.approval_posts(connection, call_obj), attempt=self.request.retries
        )
    except Failure as exc:
        _retry(self, exc)


@shared_task(name="slack.notify_shared", **TASK)
def notify_shared(self, link_id: str, user_id: int | None) -> None:
    from accounts.models import User
    from sharing.models import ShareLink

    link_obj = ShareLink.objects.select_related("conversation__team").filter(uuid=link_id).first()
    by = User.objects.filter(pk=user_id).first() if user_id else None
    connection = link_obj and services.active_connection(team_id=link_obj.conversation.team_id)
    if connection is None:
        return
    try:
        services.post_all(
            connection,
            services.shared_posts(connection, link_obj, by),
            attempt=self.request.retries,
        )
    except Failure as exc:
        _retry(self, exc)


@shared_task(name="slack.notify_budget", **TASK)
def notify_budget(self, team_id: int, percent: int, kind: str, period: str) -> None:
    connection = services.active_connection(team_id=team_id)
    if connection is None:
        return
    posts = services.budget_posts(connection, connection.team, percent, kind, period)
    try:
        services.post_all(connection, posts, attempt=self.request.retries)
    except Failure as exc:
        _retry(self, exc)


# --- From Slack ----------------------------------------------------------------------------------


@shared_task(name="slack.handle_command", **TASK)
def handle_command(self, payload: dict) -> None:
    """/tandem <prompt>: a root message in the channel, its thread bound to a new conversation."""
    connection = services.active_connection(slack_team_id=payload.get("team_id", ""))
    if connection is None or not connection.has_bot:
        return
    slack_user, channel = payload.get("user_id", ""), payload.get("channel_id", "")
    prompt = (payload.get("text") or "").strip()
    response_url = payload.get("response_url", "")

    def reply(text: str) -> None:
        try:
            post_webhook(response_url, {"response_type": "ephemeral", "text": text})
        except Failure as exc:
            log.info("Slack response_url not reachable: %s", exc.error)

    try:
        user = services.member_for(connection, slack_user)
    except Failure:
        return  # the connection was disabled
    if user is None:
        reply(services.link_prompt(connection, slack_user))
        return
    root = services.Post(
        f"command:{payload.get('trigger_id') or payload.get('_received')}:{channel}",
        "command",
        services.Target(channel),
        blocks.asked(slack_user, prompt, connection.team),
    )
    try:
        delivery = services.post_once(connection, root, attempt=self.request.retries)
    except Failure as exc:
        if exc.retry_in is not None and not exc.revoked:
            _retry(self, exc)
            return
        if exc.error in ("channel_not_found", "not_in_channel", "is_archived"):
            reply("Invite the Tandem app to this channel first (`/invite @Tandem`).")
        return
    if not delivery.ts:
        return
    error = services.start_or_continue(
        connection,
        user=user,
        channel=channel,
        thread_ts=delivery.ts,
        text=prompt,
        new=True,
        only_new=True,
    )
    if error:
        services.ephemeral(connection, channel, slack_user, error, delivery.ts)


@shared_task(name="slack.handle_event", **TASK)
def handle_event(self, payload: dict) -> None:
    """app_mention starts (or continues) a conversation; a reply in a known thread continues
    its conversation."""
    event = payload.get("event") or {}
    connection = services.active_connection(slack_team_id=payload.get("team_id", ""))
    if connection is None or not connection.has_bot:
        return
    kind, text = event.get("type"), event.get("text") or ""
    channel, slack_user = event.get("channel", ""), event.get("user", "")
    ts, thread_ts = event.get("ts", ""), event.get("thread_ts", "")
    mention = f"<@{connection.bot_user_id}>" if connection.bot_user_id else None
    if event.get("bot_id") or not slack_user or slack_user == connection.bot_user_id:
        return  # our own posts and other bots' never start anything
    if kind == "app_mention":
        prompt = text.replace(mention, "").strip() if mention else text.strip()
        new, where = True, thread_ts or ts
    elif kind == "message":
        if event.get("subtype") or not thread_ts or thread_ts == ts:
            return  # edits, joins, and messages outside threads
        if mention and mention in text:
            return  # also delivered as app_mention, which handles it
        if not services.SlackThread.objects.filter(
            slack_team_id=connection.slack_team_id, channel_id=channel, thread_ts=thread_ts
        ).exists():
            return
        prompt, new, where = text.strip(), False, thread_ts
    else:
        return
    if not prompt:
        services.ephemeral(
            connection, channel, slack_user, "Ask me something: `@Tandem <prompt>`", where
        )
        return
    try:
        user = services.member_for(connection, slack_user)
    except Failure:
        return
    if user is None:
        services.ephemeral(
            connection, channel, slack_user, services.link_prompt(connection, slack_user), where
        )
        return
    error = services.start_or_continue(
        connection, user=user, channel=channel, thread_ts=where, text=prompt, new=new
    )
    if error:
        services.ephemeral(connection, channel, slack_user, error, where)


@shared_task(name="slack.handle_action", **TASK)
def handle_action(self, payload: dict) -> None:
    """Approve / Deny pressed in Slack: decided as the mapped member, then the message says who
    decided what (its buttons gone)."""
    from assistant.models import ToolCall
    from assistant.services import ChatError, Decision, tool_call_decide

    team_id = (payload.get("team") or {}).get("id", "")
    connection = services.active_connection(slack_team_id=team_id)
    if connection is None or not connection.has_bot:
        return
    slack_user = (payload.get("user") or {}).get("id", "")
    channel = (payload.get("channel") or {}).get("id") or (payload.get("container") or {}).get(
        "channel_id", ""
    )
    message_ts = (payload.get("message") or {}).get("ts") or (payload.get("container") or {}).get(
        "message_ts", ""
    )
    thread_ts = (payload.get("message") or {}).get("thread_ts", "")
    for action in payload.get("actions") or []:
        decision = {blocks.ACTION_APPROVE: Decision.APPROVE, blocks.ACTION_DENY: Decision.DENY}.get(
            action.get("action_id")
        )
        if decision is None:
            continue
        call_obj = (
            ToolCall.objects.select_related("run__conversation__team", "decided_by")
            # Not a UUID: None, which matches no call.
            .filter(uuid=_uuid(action.get("value")), run__conversation__team=connection.team)  # type: ignore[misc]
            .first()
        )
        if call_obj is None:
            continue
        try:
            user = services.member_for(connection, slack_user)
        except Failure:
            return
        if user is None:
            services.ephemeral(
                connection,
                channel,
                slack_user,
                services.link_prompt(connection, slack_user),
                thread_ts,
            )
            return
        membership = connection.team.memberships.get(user=user)
        try:
            call_obj = tool_call_decide(
                call=call_obj, user=user, decision=decision, is_admin=membership.is_admin
            )
        except ChatError as exc:
            services.ephemeral(connection, channel, slack_user, str(exc), thread_ts)
            call_obj.refresh_from_db()
        if channel and message_ts:
            message = blocks.decided(call_obj)
            try:
                call(
                    web(connection.bot_token).chat_update,
                    channel=channel,
                    ts=message_ts,
                    text=message["text"],
                    blocks=message["blocks"],
                )
            except Failure as exc:
                if exc.revoked:
                    services.disable(connection, exc.error)
                log.info("Slack: the approval message was not updated: %s", exc.error)


def _uuid(value) -> str | None:
    import uuid

    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None
