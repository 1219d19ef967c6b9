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
    # Parked until a member approves or denies a command; no worker holds it meanwhile.
    WAITING = "waiting", "Waiting for approval"


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
    # The Celery worker executing it (host:pid), while running: when that worker's alive key in
    # Redis expires the run is failed at once (services.fail_orphaned_runs). Blank when it ran
    # elsewhere (embedded server); then only the heartbeat above tells.
    worker = models.CharField(max_length=200, blank=True, default="")
    finished = models.DateTimeField(null=True, blank=True)
    # While parked (waiting): the text streamed so far and its last delta number, so the run
    # resumes where it stopped, on whichever worker picks it up.
    text = models.TextField(blank=True)
    seq = models.PositiveIntegerField(default=0)
    # Model calls made (each answer of the model is one step; tool calls come between them).
    steps = models.PositiveIntegerField(default=0)
    # The workspace's files as git trees at the start and the end of the turn: the turn's diff,
    # and what Undo reverts. Blank when the conversation has no repository.
    tree_before = models.CharField(max_length=64, blank=True)
    tree_after = models.CharField(max_length=64, blank=True)
    undone_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    undone_at = models.DateTimeField(null=True, blank=True)
    # Undo runs in the worker: who asked, while it is under way; why it failed, if it did.
    undo_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    undo_error = models.TextField(blank=True)
    # The API key the message came in with (null from the web): its usage is metered per key.
    api_key = models.ForeignKey(
        "api.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"run {self.uuid} ({self.status})"

    @property
    def changed_files(self) -> bool:
        return bool(self.tree_before and self.tree_after and self.tree_before != self.tree_after)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class RunDiff(models.Model):
    """A finished turn's changes as pages show them: computed once in the worker, bounded
    (see assistant/diffs.py), and served from here. The web process never runs git for it."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="diff")
    # One dict per changed file, in git's order: path, old_path (renames), status (A M D R),
    # added/deleted (lines; None for binary, too large or not counted), size (bytes of the
    # larger side), binary, too_large (above DIFF_MAX_FILE_BYTES: named, never read) and
    # shown (its diff is in ``text``, maybe clipped).
    files = models.JSONField(default=list)
    files_total = models.PositiveIntegerField(default=0)  # more than len(files) when capped
    added = models.PositiveIntegerField(default=0)
    deleted = models.PositiveIntegerField(default=0)
    text = models.TextField(blank=True)  # the unified diff shown, at most DIFF_MAX_TOTAL_BYTES
    html = models.TextField(blank=True)  # ``text`` highlighted, so pages don't run Pygments
    clipped = models.BooleanField(default=False)  # some file's diff is missing or cut short
    error = models.TextField(blank=True)  # why the changes could not be read, in words
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"diff of run {self.run_id}"


class ToolCallStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # asked for by the model, not yet started
    AWAITING = "awaiting", "Awaiting approval"
    APPROVED = "approved", "Approved"  # approved, not yet started
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    DENIED = "denied", "Denied"
    CANCELLED = "cancelled", "Cancelled"


TOOL_DONE_STATUSES = (
    ToolCallStatus.SUCCEEDED,
    ToolCallStatus.FAILED,
    ToolCallStatus.DENIED,
    ToolCallStatus.CANCELLED,
)


class Approval(models.TextChoices):
    NOT_NEEDED = "", "Not needed"  # read-only tools and file edits
    ALLOWLISTED = "allowlisted", "Allowlisted"
    ASKED = "asked", "Asked"


class ToolCall(models.Model):
    """One tool call the model asked for during a run, and what came of it."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tool_calls")
    step = models.PositiveIntegerField()  # the model answer (Run.steps) that asked for it
    index = models.PositiveIntegerField()  # its place among that answer's calls
    call_id = models.CharField(max_length=200)  # the provider's id, echoed back with the result
    name = models.CharField(max_length=100)
    # The arguments as the model sent them (JSON text: it may not even parse).
    arguments = models.TextField(blank=True)
    # How much of the run's text came before this call: where it shows in the reply.
    text_offset = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=10, choices=ToolCallStatus.choices, default=ToolCallStatus.PENDING
    )
    output = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    truncated = models.BooleanField(default=False)
    approval = models.CharField(max_length=12, choices=Approval.choices, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["step", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step", "index"], name="toolcall_run_step_index")
        ]
        # The approvals page and its badge look up the few calls awaiting a decision among
        # all a team ever made: a partial index holds only those.
        indexes = [
            models.Index(
                fields=["run"],
                condition=models.Q(status="awaiting"),
                name="toolcall_awaiting",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def is_done(self) -> bool:
        return self.status in TOOL_DONE_STATUSES


# --- Repositories -------------------------------------------------------------------------------


class RepoAuth(models.TextChoices):
    NONE = "none", "None"
    HTTPS_TOKEN = "https_token", "HTTPS token"
    SSH_KEY = "ssh_key", "SSH deploy key"


class Forge(models.TextChoices):
    INFERRED = "", "From the address"
    GITHUB = "github", "GitHub"
    GITLAB = "gitlab", "GitLab"
    NONE = "none", "None (no pull requests)"


def _default_sandbox_image() -> str:
    return settings.SANDBOX_DEFAULT_IMAGE


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
    # The sandbox image its commands run in (assistant/images.py); "host": the server's own
    # system (development only). Not built on a worker: its tool calls fail, saying so.
    sandbox_image = models.CharField(max_length=63, default=_default_sandbox_image)
    # Run in the sandbox (with egress to the package registries alone) in a new workspace's
    # tree before the agent's first command; its result is kept per repository and reused
    # (assistant/environment.py). Blank: no setup.
    setup_script = models.TextField(blank=True)
    # What the repository itself suggests (its .tandem/setup.sh, or a devcontainer.json
    # postCreateCommand), read in the sandbox when a conversation starts without a script;
    # offered to admins on the repository page, never run until one saves it.
    setup_proposal = models.TextField(blank=True)
    # Raised by "Rebuild environment": part of the prepared tree's key, so the next
    # conversation runs the setup again instead of reusing what is kept.
    environment_generation = models.PositiveIntegerField(default=0)

    # The mirror's branch names, the default first, as of the last fetch that worked: what the
    # attach form offers. Stored by the worker so the web never reads the mirror.
    branches = models.JSONField(default=list, blank=True)

    # Where its pull requests go (assistant/forges.py): GitHub or GitLab, inferred from the
    # address when blank; "none" for no Open pull request button. The API base and the project
    # (owner/name, group/subgroup/name) are inferred from the address when blank.
    forge = models.CharField(max_length=10, choices=Forge.choices, blank=True, default="")
    forge_api_base = models.CharField(max_length=500, blank=True)
    forge_project = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="repo_team_name")]
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from .repo_address import RepoError, validate_url

        try:
            self.url = validate_url(self.url, team=self.team if self.team_id else None)
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
    # The files as a git tree after the last finished turn or undo (blank before the first):
    # the patch download is the diff from base_commit to it, without a snapshot of the tree.
    tree = models.CharField(max_length=64, blank=True)
    # The repository's files (paths), as of the last turn's start plus the files turns added:
    # what a path in a reply may link to (file_links.py), decided without reading the tree.
    paths = models.JSONField(default=list, blank=True)
    # The prepared tree's key its environment came from (environment.py); "failed:KEY" when
    # the setup failed for that key (not retried until the key changes); blank: not yet.
    environment = models.CharField(max_length=80, blank=True)
    created = models.DateTimeField(default=timezone.now)
    # What its file system holds (git directory and tree), measured by the worker after the
    # workspace is made and after each turn (repos.usage): the repository page reads these.
    used_bytes = models.BigIntegerField(null=True, blank=True)
    used_files = models.BigIntegerField(null=True, blank=True)
    measured = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"workspace {self.uuid} ({self.work_branch})"


class TeamPlugin(models.Model):
    """A tool plugin switched on for a team (assistant/plugins.py). No row: off. Keyed by the
    plugin's name, so a plugin uninstalled and installed again keeps its switch."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="plugins")
    name = models.CharField(max_length=48)
    enabled = models.BooleanField(default=False)
    changed = models.DateTimeField(default=timezone.now)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="team_plugin_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.team_id}:{self.name}={'on' if self.enabled else 'off'}"


class RepoJobKind(models.TextChoices):
    FETCH = "fetch", "Fetch"
    ATTACH = "attach", "Prepare the workspace"
    PUSH = "push", "Push"
    PATCH = "patch", "Patch"
    FILE = "file", "Read a file"
    PULL_REQUEST = "pr", "Open pull request"


class RepoJobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class RepoJob(models.Model):
    """Git work a person asked for from a page or the API, done by a worker (assistant/jobs.py):
    the web process only writes this row and reads it back, so it needs no repositories volume.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=10, choices=RepoJobKind.choices)
    status = models.CharField(
        max_length=10, choices=RepoJobStatus.choices, default=RepoJobStatus.QUEUED
    )
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="jobs")
    # Attach, push and patch: the conversation whose workspace it is (made by attach).
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, null=True, blank=True, related_name="repo_jobs"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # attach: the base; push: the remote's new branch; pull request: its head (what was pushed)
    branch = models.CharField(max_length=255, blank=True)
    tree = models.CharField(max_length=64, blank=True)  # patch, file: the snapshot it reads
    path = models.TextField(blank=True)  # file: the path in that snapshot
    # push: the commit pushed; file: why it was refused, as a word ("missing", "binary", …);
    # pull request: "opened", or "existing" (one was open already)
    result = models.CharField(max_length=200, blank=True)
    # push: the commit message, exactly as committed; pull request: its description
    message = models.TextField(blank=True)
    title = models.CharField(max_length=255, blank=True)  # pull request: its title
    base = models.CharField(max_length=255, blank=True)  # pull request: the branch it targets
    url = models.CharField(max_length=1000, blank=True)  # pull request: its page
    number = models.PositiveIntegerField(null=True, blank=True)  # pull request: its number
    # patch: at most PATCH_MAX_BYTES; file: its bytes (at most FILE_VIEW_MAX_BYTES)
    patch = models.BinaryField(null=True, blank=True)
    error = models.TextField(blank=True)  # why it failed, in words
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["conversation", "kind", "-created"], name="repojob_conv")]

    def __str__(self) -> str:
        return f"{self.kind} job {self.uuid} ({self.status})"

    @property
    def pending(self) -> bool:
        return self.status in (RepoJobStatus.QUEUED, RepoJobStatus.RUNNING)
