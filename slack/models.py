"""A team's Slack workspace, who is who on both sides, and what was posted where.

Secrets (the bot token, the incoming-webhook URL, which is a bearer secret too) are Fernet
encrypted (accounts/crypto.py) and never rendered back. One-time link tokens are stored as
SHA-256 hashes, like invitations.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.crypto import decrypt, encrypt
from accounts.models import Team
from assistant.models import Conversation


class Kind(models.TextChoices):
    """What can be notified. The first four are about one conversation (followers can pick
    them); the budget is about the team only."""

    RUN_FINISHED = "run_finished", "Run finished (a summary and a link)"
    RUN_FAILED = "run_failed", "Run failed (the reason)"
    APPROVAL = "approval", "Approval needed (with Approve / Deny)"
    SHARED = "shared", "Conversation shared"
    BUDGET = "budget", "Budget threshold reached"


CONVERSATION_KINDS = [Kind.RUN_FINISHED, Kind.RUN_FAILED, Kind.APPROVAL, Kind.SHARED]


def default_kinds() -> list[str]:
    return list(Kind.values)


def default_follow_kinds() -> list[str]:
    return [str(k) for k in CONVERSATION_KINDS]


class Status(models.TextChoices):
    ACTIVE = "active", "Active"
    DISABLED = "disabled", "Disabled"


class SlackConnection(models.Model):
    """A team's link to one Slack workspace: a bot (OAuth v2) and/or an incoming webhook."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="slack")
    # Slack's ids (T…, U…); blank for a connection made with a webhook URL alone.
    slack_team_id = models.CharField(max_length=32, blank=True)
    workspace_name = models.CharField(max_length=200, blank=True)
    bot_token_encrypted = models.TextField(blank=True)
    bot_user_id = models.CharField(max_length=32, blank=True)
    # Where team notifications go (bot): a channel id, and its name for the page.
    channel_id = models.CharField(max_length=32, blank=True)
    channel_name = models.CharField(max_length=200, blank=True)
    # A webhook posts only to the channel it was made for: no threads, no buttons.
    webhook_url_encrypted = models.TextField(blank=True)
    webhook_channel = models.CharField(max_length=200, blank=True)
    kinds = models.JSONField(default=default_kinds)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    disabled_reason = models.TextField(blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    connected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Requests from Slack name the workspace: it must lead to one team.
            models.UniqueConstraint(
                fields=["slack_team_id"],
                condition=~Q(slack_team_id=""),
                name="slack_one_team_per_workspace",
            )
        ]

    def __str__(self) -> str:
        return f"Slack for {self.team} ({self.status})"

    @property
    def bot_token(self) -> str:
        return decrypt(self.bot_token_encrypted)

    @bot_token.setter
    def bot_token(self, value: str) -> None:
        self.bot_token_encrypted = encrypt(value)

    @property
    def webhook_url(self) -> str:
        return decrypt(self.webhook_url_encrypted)

    @webhook_url.setter
    def webhook_url(self, value: str) -> None:
        self.webhook_url_encrypted = encrypt(value)

    @property
    def is_active(self) -> bool:
        return self.status == Status.ACTIVE

    @property
    def has_bot(self) -> bool:
        return bool(self.bot_token_encrypted)

    @property
    def has_webhook(self) -> bool:
        return bool(self.webhook_url_encrypted)

    @property
    def can_post_to_team(self) -> bool:
        return (self.has_bot and bool(self.channel_id)) or self.has_webhook

    @property
    def channel_label(self) -> str:
        if self.has_bot and self.channel_id:
            return f"#{self.channel_name}" if self.channel_name else self.channel_id
        return self.webhook_channel or "the webhook's channel"


class SlackUserLink(models.Model):
    """A Slack user (in a workspace) acting as a Tandem user."""

    slack_team_id = models.CharField(max_length=32)
    slack_user_id = models.CharField(max_length=32)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slack_links"
    )
    # "email" (matched a verified address) or "link" (the person confirmed it in Tandem).
    via = models.CharField(max_length=10)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["slack_team_id", "slack_user_id"], name="slack_user_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.slack_team_id}/{self.slack_user_id} -> {self.user}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


LINK_TOKEN_MINUTES = 30


def _link_expiry():
    return timezone.now() + timedelta(minutes=LINK_TOKEN_MINUTES)


class LinkRequest(models.Model):
    """A one-time link a Slack user opens while signed in to Tandem, to say who they are."""

    token_hash = models.CharField(max_length=64, unique=True)
    slack_team_id = models.CharField(max_length=32)
    slack_user_id = models.CharField(max_length=32)
    created = models.DateTimeField(default=timezone.now)
    expires = models.DateTimeField(default=_link_expiry)
    used = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"link request for {self.slack_team_id}/{self.slack_user_id}"

    @staticmethod
    def new_token() -> tuple[str, str]:
        token = secrets.token_urlsafe(32)
        return token, hash_token(token)

    @property
    def is_usable(self) -> bool:
        return self.used is None and timezone.now() < self.expires


class ConversationFollow(models.Model):
    """A member who wants this conversation's events in their Slack DMs."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="slack_follows"
    )
    kinds = models.JSONField(default=default_follow_kinds)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "conversation"], name="slack_follow_once")
        ]

    def __str__(self) -> str:
        return f"{self.user} follows {self.conversation}"


class SlackThread(models.Model):
    """A conversation started from Slack: its answers go to this thread, and replies in the
    thread continue it."""

    conversation = models.OneToOneField(
        Conversation, on_delete=models.CASCADE, related_name="slack_thread"
    )
    slack_team_id = models.CharField(max_length=32)
    channel_id = models.CharField(max_length=32)
    thread_ts = models.CharField(max_length=32)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["slack_team_id", "channel_id", "thread_ts"], name="slack_thread_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel_id}/{self.thread_ts} -> {self.conversation}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    POSTED = "posted", "Posted"
    FAILED = "failed", "Failed"


class Delivery(models.Model):
    """One message to one place, at most once: the key names the event and the place, so a
    task that runs again (a retry, a redelivery) finds the row posted and posts nothing."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    key = models.CharField(max_length=255, unique=True)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20)
    channel = models.CharField(max_length=64)
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    ts = models.CharField(max_length=32, blank=True)  # Slack's id of the posted message
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)
    retry_in = models.FloatField(null=True, blank=True)  # the last wait before a retry, in s
    created = models.DateTimeField(default=timezone.now)
    posted = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class SeenEvent(models.Model):
    """Events API ids already handled: Slack redelivers (X-Slack-Retry-Num) when it did not
    get our 200 in time, and one event must start one conversation."""

    event_id = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.event_id
