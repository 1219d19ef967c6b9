from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Team


class Conversation(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    # Set once a person names it; until then the first message gives the title.
    title_is_custom = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["team", "-updated"], name="conv_team_updated")]

    def __str__(self) -> str:
        return self.title or "New conversation"

    @property
    def display_title(self) -> str:
        return self.title or "New conversation"


class Role(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class Message(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    content = models.TextField(blank=True)
    # The assistant message a run produced (null for user messages).
    run = models.OneToOneField(
        "Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="assistant_message"
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["conversation", "created"], name="msg_conv_created")]

    def __str__(self) -> str:
        return f"{self.role} message {self.uuid}"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class Run(models.Model):
    """One assistant turn answering one user message."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="runs")
    user_message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="runs")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    status = models.CharField(
        max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    model = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    # Refreshed while the run executes; a running run whose heartbeat stops was cut off.
    heartbeat = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"run {self.uuid} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class UsageRecord(models.Model):
    """One LLM call: tokens, latency and outcome."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    run = models.ForeignKey(Run, on_delete=models.SET_NULL, null=True, related_name="usage")
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, default="ok")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["team", "created"], name="usage_team_created")]

    def __str__(self) -> str:
        return f"{self.model}: {self.prompt_tokens}+{self.completion_tokens} tokens"


# --- Repositories -------------------------------------------------------------------------------


class RepoAuth(models.TextChoices):
    NONE = "none", "None"
    HTTPS_TOKEN = "https_token", "HTTPS token"
    SSH_KEY = "ssh_key", "SSH deploy key"


class Repository(models.Model):
    """A team's git repository. Tandem keeps a mirror of it (see assistant/repos.py)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="repositories")
    name = models.CharField(max_length=100)
    # https://…, ssh://…, git@host:path, file://… or an absolute path; never holds a secret.
    url = models.CharField(max_length=1000)
    # Blank: follow the remote's HEAD.
    default_branch = models.CharField(max_length=255, blank=True)
    auth = models.CharField(max_length=20, choices=RepoAuth.choices, default=RepoAuth.NONE)
    # An https token (optionally "username:token") or an ssh private key; never rendered back.
    credential_encrypted = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_fetched = models.DateTimeField(null=True, blank=True)
    last_fetch_error = models.TextField(blank=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="repo_team_name")]
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from .repos import RepoError, validate_url

        try:
            self.url = validate_url(self.url)
        except RepoError as exc:
            raise ValidationError({"url": str(exc)})

    @property
    def credential(self) -> str:
        from accounts.crypto import decrypt

        return decrypt(self.credential_encrypted)

    @credential.setter
    def credential(self, value: str) -> None:
        from accounts.crypto import encrypt

        self.credential_encrypted = encrypt(value)


class Workspace(models.Model):
    """A conversation's own clone of a repository, on a work branch made from `branch`."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.OneToOneField(
        Conversation, on_delete=models.CASCADE, related_name="workspace"
    )
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="workspaces")
    branch = models.CharField(max_length=255)
    work_branch = models.CharField(max_length=255)
    base_commit = models.CharField(max_length=64)
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"workspace {self.uuid} ({self.work_branch})"
