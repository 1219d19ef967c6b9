"""Share links of conversations, and each team's rule on public links.

A link's token is shown once, in the URL; only its SHA-256 is stored, so a database dump or a
backup can't be turned into working links. Revoking keeps the row (who shared, who revoked,
views) for the admins' overview; a revoked link answers like one that never existed.
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

from accounts.models import Team
from assistant.models import Conversation

# 32 random bytes: 256 bits, far beyond guessing (the issue asks for at least 128).
TOKEN_BYTES = 32
TOKEN_LENGTH = 43  # len(secrets.token_urlsafe(32))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, hash_token(token)


class Audience(models.TextChoices):
    TEAM = "team", "Members of the team (signed in)"
    PUBLIC = "public", "Anyone with the link"


class Mode(models.TextChoices):
    SNAPSHOT = "snapshot", "A snapshot as of now"
    LIVE = "live", "Live: new messages and replies stream in"


EXPIRY_CHOICES = {
    "1h": ("1 hour", timedelta(hours=1)),
    "1d": ("1 day", timedelta(days=1)),
    "7d": ("7 days", timedelta(days=7)),
    "30d": ("30 days", timedelta(days=30)),
    "never": ("Never", None),
}


class ShareLinkQuerySet(models.QuerySet):
    def active(self, now=None) -> ShareLinkQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class ShareLink(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="share_links"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    token_hash = models.CharField(max_length=64, unique=True)
    audience = models.CharField(max_length=10, choices=Audience.choices, default=Audience.TEAM)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.SNAPSHOT)
    # The title when shared: a snapshot keeps it even if the conversation is renamed later.
    title = models.CharField(max_length=200, blank=True)
    # The moment of sharing. A snapshot shows the messages, replies and tool calls up to here.
    snapshot_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    views = models.PositiveIntegerField(default=0)
    last_viewed_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

    objects = ShareLinkQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["conversation", "-created"], name="share_conv_created")]

    def __str__(self) -> str:
        return f"{self.get_audience_display()} {self.mode} link to {self.conversation_id}"

    @property
    def is_public(self) -> bool:
        return self.audience == Audience.PUBLIC

    @property
    def is_live(self) -> bool:
        return self.mode == Mode.LIVE

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and (now or timezone.now()) >= self.expires_at

    @property
    def is_active(self) -> bool:
        return not self.is_revoked and not self.is_expired()

    @property
    def until(self):
        """Where the shown history ends: the moment of sharing for a snapshot, none if live."""
        return None if self.is_live else self.snapshot_at

    @property
    def group(self) -> str:
        """The channel-layer group of this link's live viewers (revoking closes them)."""
        return f"share.{self.uuid}"


class SharingPolicy(models.Model):
    """A team's sharing rules. Kept here rather than on Team: sharing owns its settings."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="sharing_policy")
    # Off by default: a link anyone can open is the admins' decision, not every member's.
    allow_public_links = models.BooleanField(default=False)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "sharing policies"

    def __str__(self) -> str:
        return f"sharing policy of {self.team}"


def public_links_allowed(team: Team) -> bool:
    return SharingPolicy.objects.filter(team=team, allow_public_links=True).exists()
