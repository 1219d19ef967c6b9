from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from .crypto import decrypt, encrypt


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self._create(email, password, **extra)


class User(AbstractUser):
    """A person. Signs in by email; no username."""

    username = None  # type: ignore[assignment]
    email = models.EmailField("email address", unique=True)
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    display_name = models.CharField(max_length=80, blank=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []
    # Email sign-in: a manager of its own, not AbstractUser's username one the stubs expect.
    objects = UserManager()  # type: ignore[assignment, misc]

    def __str__(self) -> str:
        return self.email

    @property
    def name(self) -> str:
        return self.display_name or self.get_full_name() or self.email.split("@")[0]


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Team(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    created = models.DateTimeField(default=timezone.now)
    members: models.ManyToManyField[User, Membership] = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="teams"
    )

    # The team's LLM override; blank fields fall back to the site default.
    llm_model = models.CharField(max_length=200, blank=True)
    llm_api_base = models.URLField(max_length=500, blank=True)
    llm_api_key_encrypted = models.TextField(blank=True)
    llm_temperature = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)]
    )
    # The agent's run_command asks a member every time, except for commands starting with one
    # of these prefixes (one per line, e.g. "pytest", "npm test"); see assistant/policy.py.
    command_allowlist = models.TextField(blank=True)
    # Entries of the allowlist (same spelling, one per line) that run without asking only while
    # the run has not changed files: for prefixes that run the repository's own code.
    command_allowlist_guarded = models.TextField(blank=True)
    # Hosts the agent's fetch_url may read (one per line; "*.example.com" for its subdomains);
    # empty: fetch_url is not offered (assistant/tools/web.py).
    docs_allowlist = models.TextField(blank=True)
    # Whether the agent's own commands may ask to reach the package registries (through the
    # egress proxy setup scripts use); such a command always asks a member first.
    commands_reach_registries = models.BooleanField(default=False)
    # Limits enforced before every model call (usage/budgets.py); empty means none. The budget
    # is per calendar month and the token cap per member per day, both in UTC.
    monthly_budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Spending limit per calendar month (UTC) in US dollars. Empty: no limit.",
    )
    member_daily_tokens = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Tokens each member may use per day (UTC). Empty: no limit.",
    )

    def __str__(self) -> str:
        return self.slug

    @property
    def llm_api_key(self) -> str:
        return decrypt(self.llm_api_key_encrypted)

    @llm_api_key.setter
    def llm_api_key(self, value: str) -> None:
        self.llm_api_key_encrypted = encrypt(value)


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint("team", "user", name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _default_expiry():
    return timezone.now() + timedelta(days=settings.INVITATION_DAYS)


class Invitation(models.Model):
    """An invitation to join a team, by link (email blank) or addressed to one email.

    The token is shown once, in the link; only its hash is stored. Single use, expiring.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(blank=True)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    expires = models.DateTimeField(default=_default_expiry)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    accepted = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"invitation to {self.team} for {self.email or 'anyone with the link'}"

    @staticmethod
    def new_token() -> tuple[str, str]:
        token = secrets.token_urlsafe(24)
        return token, _hash_token(token)

    @staticmethod
    def hash(token: str) -> str:
        return _hash_token(token)

    @property
    def is_expired(self) -> bool:
        return timezone.now() >= self.expires

    @property
    def is_usable(self) -> bool:
        return self.accepted is None and self.revoked is None and not self.is_expired


# --- The audit log (accounts/audit.py) ----------------------------------------------------------


class AuditAppendOnly(Exception):
    """An attempt to change or delete an audit event through the app."""


class AuditQuerySet(models.QuerySet["AuditEvent"]):
    """No bulk change or deletion: the retention job (audit.purge_expired) deletes with SQL of
    its own, which the database's trigger lets through for expired rows only."""

    def update(self, **kwargs):
        raise AuditAppendOnly("Audit events can't be changed.")

    def delete(self):
        raise AuditAppendOnly("Audit events can't be deleted (only by the retention job).")

    def bulk_update(self, *args, **kwargs):
        raise AuditAppendOnly("Audit events can't be changed.")


class AuditEvent(models.Model):
    """Who did what to which object of which team, when and from where. Written once.

    The actor and team are kept as ids without a database constraint (and as labels): an
    audit event outlives the account or team it names, and deleting either must not try to
    change or delete it (the trigger would refuse, and the deletion with it).
    """

    created = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_label = models.CharField(max_length=254, blank=True)  # the email at the time
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    team_label = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=40, db_index=True)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_label = models.CharField(max_length=300, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ("-created", "-id")
        indexes = [models.Index(fields=["team", "-created"], name="audit_team_created")]

    def __str__(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M} {self.actor_label or 'system'} {self.action}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AuditAppendOnly("Audit events can't be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditAppendOnly("Audit events can't be deleted (only by the retention job).")
