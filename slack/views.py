"""Slack's requests to Tandem (commands, events, interactivity: signature-checked, answered
at once, the work queued), the OAuth callback, the one-time account link, the admins' Slack
page and the Follow toggle of a conversation."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors
from accounts.http import AuthenticatedHttpRequest
from accounts.models import Membership
from assistant.selectors import conversation_for

from . import blocks, services, signing, tasks
from .client import Failure, call, web, webhook_allowed
from .models import (
    CONVERSATION_KINDS,
    ConversationFollow,
    Kind,
    LinkRequest,
    SeenEvent,
    SlackConnection,
    SlackUserLink,
    Status,
    hash_token,
)

log = logging.getLogger(__name__)

BOT_SCOPES = [
    "chat:write",
    "commands",
    "app_mentions:read",
    "channels:read",
    "groups:read",
    "channels:history",
    "groups:history",
    "im:write",
    "users:read",
    "users:read.email",
    "incoming-webhook",
]


# --- From Slack ---------------------------------------------------------------------------------


def _from_slack(request: HttpRequest) -> bool:
    return signing.verify(
        request.body,
        request.headers.get("X-Slack-Request-Timestamp"),
        request.headers.get("X-Slack-Signature"),
    )


def _refused() -> HttpResponse:
    # The same answer whatever was wrong: no hint about which check failed.
    return HttpResponse("Invalid request signature.", status=401, content_type="text/plain")


def _ephemeral(text: str) -> JsonResponse:
    return JsonResponse({"response_type": "ephemeral", "text": text})


@csrf_exempt
@require_POST
def commands(request: HttpRequest) -> HttpResponse:
    """/tandem <prompt>. Slack wants an answer within 3 s: the work goes to Celery."""
    if not _from_slack(request):
        return _refused()
    data = request.POST
    connection = services.active_connection(slack_team_id=data.get("team_id", ""))
    if connection is None:
        return _ephemeral(
            "This Slack workspace is not connected to a Tandem team (or the "
            "connection was switched off). A team admin can connect it in Tandem."
        )
    if not connection.has_bot:
        return _ephemeral(
            "Tandem is connected with a webhook only; an admin can use "
            "\u201cAdd to Slack\u201d in Tandem to enable /tandem."
        )
    text = (data.get("text") or "").strip()
    if not text or text.lower() == "help":
        return _ephemeral(
            "Ask the assistant: `/tandem <prompt>`. The answer comes in a thread; "
            "reply in the thread to continue the conversation."
        )
    payload = {
        key: data.get(key, "")
        for key in ("team_id", "user_id", "channel_id", "text", "response_url", "trigger_id")
    }
    payload["_received"] = f"{timezone.now().timestamp():.6f}"
    tasks.enqueue(tasks.handle_command, payload)
    return _ephemeral("Working on it\u2026")


@csrf_exempt
@require_POST
def events(request: HttpRequest) -> HttpResponse:
    if not _from_slack(request):
        return _refused()
    try:
        payload = json.loads(request.body)
    except ValueError:
        return HttpResponse(status=400)
    if not isinstance(payload, dict):
        return HttpResponse(status=400)
    if payload.get("type") == "url_verification":
        return JsonResponse({"challenge": str(payload.get("challenge", ""))})
    if payload.get("type") != "event_callback":
        return HttpResponse(status=200)
    event_id = str(payload.get("event_id") or "")
    if event_id:
        # Slack redelivers (X-Slack-Retry-Num) when our 200 was late; one event, one effect.
        try:
            with transaction.atomic():
                SeenEvent.objects.create(event_id=event_id[:64])
        except IntegrityError:
            return HttpResponse(status=200)
    event = payload.get("event") or {}
    kind = event.get("type")
    if kind in ("app_uninstalled", "tokens_revoked"):
        connection = services.active_connection(slack_team_id=payload.get("team_id", ""))
        if connection is not None and (
            kind == "app_uninstalled" or (event.get("tokens") or {}).get("bot")
        ):
            services.disable(connection, kind)
    elif kind in ("app_mention", "message"):
        tasks.enqueue(tasks.handle_event, payload)
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
def interactivity(request: HttpRequest) -> HttpResponse:
    if not _from_slack(request):
        return _refused()
    try:
        payload = json.loads(request.POST.get("payload") or "")
    except ValueError:
        return HttpResponse(status=400)
    if isinstance(payload, dict) and payload.get("type") == "block_actions":
        tasks.enqueue(tasks.handle_action, payload)
    return HttpResponse(status=200)


# --- OAuth ------------------------------------------------------------------------------------


def _redirect_uri(request: HttpRequest) -> str:
    # The address this server is reached at (not SITE_URL's default): Slack must be told the
    # same one in the app's settings, at connect and at the callback.
    return request.build_absolute_uri(reverse("slack_oauth_callback"))


@login_required
@require_http_methods(["GET", "POST"])
def connect(request: HttpRequest, slug: str) -> HttpResponse:
    """Off to Slack's consent page; the state ties the answer to this admin's session and team."""
    membership = selectors.admin_membership_for(request.user, slug)
    if not (settings.SLACK_CLIENT_ID and settings.SLACK_CLIENT_SECRET):
        messages.error(request, "Add to Slack needs SLACK_CLIENT_ID and SLACK_CLIENT_SECRET.")
        return redirect("slack_settings", slug=slug)
    state = secrets.token_urlsafe(32)
    request.session["slack_oauth"] = {"state": state, "team": membership.team.slug}
    query = urlencode(
        {
            "client_id": settings.SLACK_CLIENT_ID,
            "scope": ",".join(BOT_SCOPES),
            "redirect_uri": _redirect_uri(request),
            "state": state,
        }
    )
    return redirect(f"{settings.SLACK_AUTHORIZE_URL}?{query}")


@login_required
@require_GET
def oauth_callback(request: AuthenticatedHttpRequest) -> HttpResponse:
    saved = request.session.pop("slack_oauth", None) or {}
    state = request.GET.get("state", "")
    if not saved.get("state") or not hmac.compare_digest(saved["state"], state):
        return render(
            request,
            "slack/oauth_failed.html",
            {
                "reason": "This answer from Slack doesn't belong to a connection you started. "
                "Start again from the team's Slack page."
            },
            status=400,
        )
    membership = selectors.admin_membership_for(request.user, saved["team"])
    team = membership.team
    if request.GET.get("error") or not request.GET.get("code"):
        messages.error(
            request, "Slack didn't connect: " + (request.GET.get("error") or "no code") + "."
        )
        return redirect("slack_settings", slug=team.slug)
    try:
        data = call(
            web().oauth_v2_access,
            client_id=settings.SLACK_CLIENT_ID,
            client_secret=settings.SLACK_CLIENT_SECRET,
            code=request.GET["code"],
            redirect_uri=_redirect_uri(request),
        ).data
    except Failure as exc:
        messages.error(request, f"Slack didn't connect: {exc.error}.")
        return redirect("slack_settings", slug=team.slug)
    slack_team = data.get("team") or {}
    slack_team_id = str(slack_team.get("id") or "")
    if SlackConnection.objects.filter(slack_team_id=slack_team_id).exclude(team=team).exists():
        messages.error(request, "That Slack workspace is already connected to another Tandem team.")
        return redirect("slack_settings", slug=team.slug)
    connection = SlackConnection.objects.filter(team=team).first() or SlackConnection(team=team)
    connection.slack_team_id = slack_team_id
    connection.workspace_name = str(slack_team.get("name") or "")[:200]
    connection.bot_token = str(data.get("access_token") or "")
    connection.bot_user_id = str(data.get("bot_user_id") or "")
    hook = data.get("incoming_webhook") or {}
    if hook.get("channel_id"):
        connection.channel_id = str(hook["channel_id"])
        connection.channel_name = str(hook.get("channel") or "").lstrip("#")[:200]
    if hook.get("url") and webhook_allowed(str(hook["url"])):
        connection.webhook_url = str(hook["url"])
        connection.webhook_channel = str(hook.get("channel") or "")[:200]
    connection.status, connection.disabled_reason, connection.disabled_at = Status.ACTIVE, "", None
    connection.last_error = ""
    connection.connected_by = request.user
    connection.save()
    messages.success(request, f"Connected to the Slack workspace {connection.workspace_name}.")
    return redirect("slack_settings", slug=team.slug)


# --- Linking a Slack user to a Tandem account -----------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def link(request: AuthenticatedHttpRequest, token: str) -> HttpResponse:
    pending = LinkRequest.objects.filter(token_hash=hash_token(token)).first()
    connection = (
        services.active_connection(slack_team_id=pending.slack_team_id) if pending else None
    )
    if pending is None or not pending.is_usable or connection is None:
        return render(request, "slack/link.html", {"invalid": True}, status=404)
    member = Membership.objects.filter(team=connection.team, user=request.user).exists()
    if not member:
        return render(request, "slack/link.html", {"invalid": True}, status=404)
    if request.method == "POST":
        used = LinkRequest.objects.filter(pk=pending.pk, used__isnull=True).update(
            used=timezone.now()
        )
        if not used:
            return render(request, "slack/link.html", {"invalid": True}, status=404)
        SlackUserLink.objects.update_or_create(
            slack_team_id=pending.slack_team_id,
            slack_user_id=pending.slack_user_id,
            defaults={"user": request.user, "via": "link"},
        )
        return render(request, "slack/link.html", {"done": True, "connection": connection})
    # Only the Slack user who asked saw this link (an ephemeral message); the page still says
    # who asked, so nobody confirms a link someone else forwarded to them.
    return render(
        request,
        "slack/link.html",
        {"connection": connection, "slack_user_id": pending.slack_user_id},
    )


# --- The admins' page -------------------------------------------------------------------------


def _connection(team) -> SlackConnection | None:
    return SlackConnection.objects.filter(team=team).first()


def _channels(connection: SlackConnection) -> tuple[list[dict], str]:
    try:
        response = call(
            web(connection.bot_token).conversations_list,
            types="public_channel,private_channel",
            exclude_archived=True,
            limit=200,
        )
    except Failure as exc:
        if exc.revoked:
            services.disable(connection, exc.error)
        return [], exc.error
    channels = [
        {"id": c.get("id", ""), "name": c.get("name", "")} for c in response.get("channels") or []
    ]
    return sorted(channels, key=lambda c: c["name"]), ""


@login_required
@require_GET
def settings_page(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    team = membership.team
    connection = _connection(team)
    channels: list[dict[str, Any]] = []
    channels_error = ""
    if connection and connection.has_bot and connection.is_active:
        channels, channels_error = _channels(connection)
        connection.refresh_from_db()
    context = {
        "team": team,
        "membership": membership,
        "connection": connection,
        "channels": channels,
        "channels_error": channels_error,
        "kinds": [
            (value, label, connection is None or value in connection.kinds)
            for value, label in Kind.choices
        ],
        "oauth_ready": bool(settings.SLACK_CLIENT_ID and settings.SLACK_CLIENT_SECRET),
        "signing_ready": bool(settings.SLACK_SIGNING_SECRET),
        "urls": {
            # As this page was reached: what to paste into Slack's app settings.
            "commands": request.build_absolute_uri(reverse("slack_commands")),
            "events": request.build_absolute_uri(reverse("slack_events")),
            "interactivity": request.build_absolute_uri(reverse("slack_interactivity")),
            "redirect": _redirect_uri(request),
        },
        "scopes": ", ".join(BOT_SCOPES),
    }
    return render(request, "slack/settings.html", context)


@login_required
@require_POST
def webhook(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    url = request.POST.get("url", "").strip()
    if not webhook_allowed(url) or len(url) > 500:
        messages.error(
            request, "That is not a Slack incoming-webhook URL (https://hooks.slack.com/…)."
        )
        return redirect("slack_settings", slug=slug)
    connection = _connection(membership.team) or SlackConnection(team=membership.team)
    connection.webhook_url = url
    connection.webhook_channel = request.POST.get("channel", "").strip()[:200]
    connection.status, connection.disabled_reason, connection.disabled_at = Status.ACTIVE, "", None
    connection.connected_by = connection.connected_by or request.user
    connection.save()
    messages.success(request, "Webhook saved. Send a test message to check it.")
    return redirect("slack_settings", slug=slug)


@login_required
@require_POST
def channel(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    connection = _connection(membership.team)
    if connection is None or not connection.has_bot:
        messages.error(request, "Connect with Add to Slack first.")
        return redirect("slack_settings", slug=slug)
    chosen = request.POST.get("channel", "")
    channels, error = _channels(connection)
    match = next((c for c in channels if c["id"] == chosen), None)
    if match is None:
        messages.error(
            request, f"Choose one of the workspace's channels.{' ' + error if error else ''}"
        )
        return redirect("slack_settings", slug=slug)
    connection.channel_id, connection.channel_name = match["id"], match["name"][:200]
    connection.save(update_fields=["channel_id", "channel_name"])
    messages.success(
        request, f"Notifications go to #{match['name']}. Invite the app there (/invite @Tandem)."
    )
    return redirect("slack_settings", slug=slug)


@login_required
@require_POST
def kinds(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    connection = _connection(membership.team)
    if connection is None:
        messages.error(request, "Connect Slack first.")
        return redirect("slack_settings", slug=slug)
    chosen = [k for k in Kind.values if k in request.POST.getlist("kinds")]
    connection.kinds = chosen
    connection.save(update_fields=["kinds"])
    messages.success(request, "Saved." if chosen else "Saved: no team notifications.")
    return redirect("slack_settings", slug=slug)


@login_required
@require_POST
def test_message(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    connection = _connection(membership.team)
    target = services._team_target(connection) if connection and connection.is_active else None
    if target is None:
        messages.error(request, "Nothing to send to yet: connect Slack and pick a channel.")
        return redirect("slack_settings", slug=slug)
    assert connection is not None  # a target comes from a connection
    text = f":wave: A test message from Tandem, sent by {blocks.escape(request.user.name)}."
    try:
        services._send(connection, target, blocks.plain(text), 0)
    except Failure as exc:
        if exc.revoked:
            services.disable(connection, exc.error)
        messages.error(request, f"Slack refused the test message: {exc.error}.")
    else:
        messages.success(request, f"Test message sent to {connection.channel_label}.")
    return redirect("slack_settings", slug=slug)


@login_required
@require_POST
def disconnect(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    connection = _connection(membership.team)
    if connection is not None:
        if connection.has_bot and connection.is_active:
            try:  # best effort: the token dies with the connection
                call(web(connection.bot_token).auth_revoke)
            except Failure as exc:
                log.info("Slack auth.revoke failed: %s", exc.error)
        connection.delete()
        messages.success(request, "Slack disconnected.")
    return redirect("slack_settings", slug=slug)


# --- Following a conversation ---------------------------------------------------------------------


@login_required
@require_POST
def follow(request: AuthenticatedHttpRequest, slug: str, conversation_id) -> HttpResponse:
    membership = selectors.membership_for(request.user, slug)
    conversation = conversation_for(membership, conversation_id)
    existing = ConversationFollow.objects.filter(user=request.user, conversation=conversation)
    if request.POST.get("follow") == "0" or (
        request.POST.get("follow") is None and existing.exists()
    ):
        existing.delete()
        messages.success(request, "You no longer follow this conversation in Slack.")
    else:
        chosen = [k for k in request.POST.getlist("kinds") if k in CONVERSATION_KINDS]
        ConversationFollow.objects.update_or_create(
            user=request.user,
            conversation=conversation,
            defaults={"kinds": chosen or [str(k) for k in CONVERSATION_KINDS]},
        )
        messages.success(request, "Following: this conversation's news comes to your Slack DMs.")
    return redirect("conversation_detail", slug=slug, conversation_id=conversation.uuid)
