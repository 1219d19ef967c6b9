"""Repository pages: admins connect, fetch and remove a team's repositories; members attach
one (and a branch) to a conversation. The git work itself lives in assistant/repos.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.db.models import F
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthenticatedHttpRequest
from accounts.selectors import admin_membership_for, membership_for
from config.db import db_sync_to_async

from . import forges, images, quota, repos, selectors, services
from .models import Forge, RepoAuth, RepoJob, RepoJobKind, RepoJobStatus, Repository, Workspace


class SecretTextarea(forms.Textarea):
    """A textarea that never renders its value back (an SSH private key)."""

    def format_value(self, value):
        return None


class RepositoryForm(forms.Form):
    name = forms.CharField(max_length=100)
    url = forms.CharField(
        label="Address",
        max_length=1000,
        help_text="https://…, ssh://…, git@host:path, file://… or an absolute path.",
    )
    default_branch = forms.CharField(
        max_length=255, required=False, help_text="Leave empty to follow the remote's default."
    )
    auth = forms.ChoiceField(label="Authentication", choices=RepoAuth.choices)
    token = forms.CharField(
        label="HTTPS token",
        required=False,
        max_length=1000,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="A token, or username:token. Stored encrypted, never shown again.",
    )
    ssh_key = forms.CharField(
        label="SSH deploy key (private)",
        required=False,
        max_length=20000,
        widget=SecretTextarea(attrs={"rows": 4, "autocomplete": "off", "spellcheck": "false"}),
        help_text="Stored encrypted, never shown again.",
    )
    sandbox_image = forms.ChoiceField(
        label="Sandbox image",
        required=False,  # left out: SANDBOX_DEFAULT_IMAGE
        help_text="The system the agent's commands run in (manage.py sandboximage list).",
    )

    def __init__(self, *args, team, **kwargs):
        super().__init__(*args, **kwargs)
        self.team = team
        self.fields["sandbox_image"].choices = images.choices(images.default_image())
        self.fields["sandbox_image"].initial = images.default_image()

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Enter a name.")
        if Repository.objects.filter(team=self.team, name=name).exists():
            raise forms.ValidationError("The team already has a repository with this name.")
        return name

    def clean_url(self) -> str:
        try:
            url = repos.validate_url(self.cleaned_data["url"], team=self.team)
        except repos.RepoError as exc:
            raise forms.ValidationError(str(exc))
        # A local path is not looked at here: the web has no repositories volume (it may not
        # see the path at all). The first fetch, a worker job, says on the repository's row
        # whether a git repository is there (repos.ensure_mirror).
        return url

    def clean(self):
        data = super().clean()
        auth = data.get("auth")
        if auth == RepoAuth.HTTPS_TOKEN and not data.get("token", "").strip():
            self.add_error("token", "Enter the token for this repository.")
        if auth == RepoAuth.SSH_KEY and not data.get("ssh_key", "").strip():
            self.add_error("ssh_key", "Paste the deploy key's private key.")
        return data

    def credential(self) -> str:
        auth = self.cleaned_data["auth"]
        if auth == RepoAuth.HTTPS_TOKEN:
            return self.cleaned_data["token"].strip()
        if auth == RepoAuth.SSH_KEY:
            return self.cleaned_data["ssh_key"]
        return ""


def _posted_repository(request: HttpRequest, team) -> Repository | HttpResponse:
    """The team's repository named by the POST's `repository` uuid: 400 when there is no uuid,
    404 when no repository of this team has it (another team's included)."""
    try:
        repo_id = uuid.UUID(request.POST.get("repository", ""))
    except ValueError:
        return HttpResponseBadRequest("Choose a repository.")
    return get_object_or_404(Repository.objects.select_related("team"), uuid=repo_id, team=team)


@login_required
@require_http_methods(["GET", "POST"])
def repository_list(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    membership = admin_membership_for(request.user, slug)
    team = membership.team
    form = RepositoryForm(request.POST or None, team=team)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        repo = Repository(
            team=team,
            name=data["name"],
            url=data["url"],
            default_branch=data["default_branch"].strip(),
            auth=data["auth"],
            sandbox_image=data["sandbox_image"] or images.default_image(),
        )
        repo.credential = form.credential()
        repo.save()
        # Mirrored at once by a worker (a fetch job, as Fetch now): the row says "fetching…"
        # until it has, then when, or why not (a local path that is no git repository, too).
        services.repository_fetch(repo=repo, user=request.user)
        messages.success(request, f"Added “{repo.name}”. It is being fetched now.")
        return redirect("repositories", slug=slug)
    repositories = list(team.repositories.all())
    for repo in repositories:
        repo.forge_target = forges.target_of(repo)  # type: ignore[attr-defined]
    built = images.available()  # the images folder and its manifests, read once for every row
    _flag_fetching(repositories)
    usage = _usage(repositories)
    context = {
        "team": team,
        "membership": membership,
        "form": form,
        "repositories": [
            (r, images.choices(r.sandbox_image, built), usage[r.pk]) for r in repositories
        ],
        # The quota each workspace has, where this machine makes them (quota.py).
        "quota_bytes": 0 if quota.unavailable_reason() else settings.WORKSPACE_QUOTA_MB << 20,
        "quota_files": settings.WORKSPACE_QUOTA_FILES,
        "env_dirs": settings.SETUP_ENV_DIRS,
        "forge_choices": Forge.choices,
    }
    status = 422 if form.is_bound else 200
    return render(request, "assistant/repositories.html", context, status=status)


@login_required
@require_POST
def repository_fetch(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Fetch now, in a worker: the row says "fetching…" until its outcome is recorded."""
    membership = admin_membership_for(request.user, slug)
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    services.repository_fetch(repo=repo, user=request.user)
    messages.success(request, f"Fetching “{repo.name}”…")
    return redirect("repositories", slug=slug)


@login_required
@require_GET
def repository_status(request: HttpRequest, slug: str, repository_id) -> HttpResponse:
    """A repository's fetch status alone: polled by htmx while a fetch is under way."""
    membership = admin_membership_for(request.user, slug)
    repo = get_object_or_404(Repository, uuid=repository_id, team=membership.team)
    _flag_fetching([repo])
    context = {"repo": repo, "team": membership.team}
    return render(request, "assistant/_repository_fetch_status.html", context)


def _flag_fetching(repositories: list[Repository]) -> None:
    """Mark the rows with a fetch queued or under way (a person's, or the first one)."""
    busy = set(
        RepoJob.objects.filter(
            repository__in=repositories, kind=RepoJobKind.FETCH, status__in=services.JOB_PENDING
        ).values_list("repository_id", flat=True)
    )
    recent = timezone.now() - timedelta(minutes=10)
    for repo in repositories:
        # Just added, and its first fetch (in the background) not done yet.
        first = not repo.last_fetched and not repo.last_fetch_error and repo.created > recent
        repo.fetch_pending = first or repo.pk in busy  # type: ignore[attr-defined]


def _usage(repositories: list[Repository]) -> dict[int, dict]:
    """Per repository: its workspaces' sizes as the worker last measured them (repos.usage),
    each and in total, beside the quota each workspace has."""
    found: dict[int, dict] = {
        repo.pk: {"workspaces": [], "bytes": 0, "files": 0} for repo in repositories
    }
    workspaces = (
        Workspace.objects.filter(repository__in=repositories)
        .select_related("conversation")
        .order_by("-created")
    )
    for workspace in workspaces:
        entry = found[workspace.repository_id]
        entry["workspaces"].append(workspace)
        entry["bytes"] += workspace.used_bytes or 0
        entry["files"] += workspace.used_files or 0
    return found


@login_required
@require_POST
def repository_image(request: HttpRequest, slug: str) -> HttpResponse:
    """Choose the sandbox image a repository's commands run in: one built on this machine."""
    membership = admin_membership_for(request.user, slug)
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    name = request.POST.get("sandbox_image", "")
    if name not in {image.name for image in images.available()}:
        messages.error(request, f"There is no sandbox image “{name}” on this machine.")
        return redirect("repositories", slug=slug)
    repo.sandbox_image = name
    repo.save(update_fields=["sandbox_image"])  # through the model: the audit log sees it
    messages.success(request, f"“{repo.name}” now runs its commands in the image {name}.")
    return redirect("repositories", slug=slug)


SETUP_SCRIPT_MAX_CHARS = 20_000


@login_required
@require_POST
def repository_setup(request: HttpRequest, slug: str) -> HttpResponse:
    """Save a repository's setup script (admins). It runs, in the sandbox with egress to the
    package registries alone, before the agent's first command of each new conversation
    that can't start from a kept prepared tree (assistant/environment.py)."""
    membership = admin_membership_for(request.user, slug)
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    script = request.POST.get("setup_script", "").replace("\r\n", "\n")
    if "\0" in script:
        messages.error(request, "The setup script was not saved: it contains a NUL character.")
    elif len(script) > SETUP_SCRIPT_MAX_CHARS:
        messages.error(
            request,
            f"The setup script was not saved: it is longer than {SETUP_SCRIPT_MAX_CHARS:,} "
            "characters. Put the long part in a file in the repository and call it.",
        )
    else:
        script = script.strip() + "\n" if script.strip() else ""
        Repository.objects.filter(pk=repo.pk).update(setup_script=script)
        messages.success(
            request,
            f"Saved the setup script of “{repo.name}”: new conversations run it (once per "
            "script and lock files; then they start from the prepared tree)."
            if script
            else f"“{repo.name}” has no setup script now.",
        )
    return redirect("repositories", slug=slug)


@login_required
@require_POST
def repository_forge(request: HttpRequest, slug: str) -> HttpResponse:
    """Where a repository's pull requests go (admins): GitHub or GitLab, its API base and the
    project, each inferred from the address when left empty (assistant/forges.py)."""
    membership = admin_membership_for(request.user, slug)
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    kind = request.POST.get("forge", "")
    api_base = request.POST.get("forge_api_base", "").strip()
    project = request.POST.get("forge_project", "").strip().strip("/")
    if len(api_base) > 500 or len(project) > 300:
        messages.error(request, "The pull-request settings were not saved: an entry is too long.")
        return redirect("repositories", slug=slug)
    try:
        forges.check_settings(url=repo.url, kind=kind, api_base=api_base, project=project)
    except forges.ForgeError as exc:
        messages.error(request, f"The pull-request settings were not saved: {exc}")
        return redirect("repositories", slug=slug)
    repo.forge, repo.forge_api_base, repo.forge_project = kind, api_base, project
    repo.save(update_fields=["forge", "forge_api_base", "forge_project"])  # audited
    target = forges.target_of(repo)
    messages.success(
        request,
        f"Pull requests of “{repo.name}” go to {target.name}, project {target.project}."
        if target
        else f"“{repo.name}” has no pull requests.",
    )
    return redirect("repositories", slug=slug)


@login_required
@require_POST
def repository_rebuild(request: HttpRequest, slug: str) -> HttpResponse:
    """ "Rebuild environment": the next conversation runs the setup again instead of starting
    from the kept prepared tree (the old one is removed once idle)."""
    membership = admin_membership_for(request.user, slug)
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    Repository.objects.filter(pk=repo.pk).update(
        environment_generation=F("environment_generation") + 1
    )
    messages.success(
        request,
        f"The next conversation on “{repo.name}” runs its setup script again and keeps the "
        "new result.",
    )
    return redirect("repositories", slug=slug)


@login_required
@require_POST
def repository_remove(request: HttpRequest, slug: str) -> HttpResponse:
    membership = admin_membership_for(request.user, slug)
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    name = repo.name
    # Its mirror and workspaces on disk go with repos.remove_orphans (on a schedule).
    repo.delete()
    messages.success(request, f"Removed “{name}”.")
    return redirect("repositories", slug=slug)


@login_required
@require_POST
def conversation_repository(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    """Attach a repository and branch to a conversation: it gets its own workspace."""
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    back = redirect("conversation_detail", slug=slug, conversation_id=conversation.uuid)
    if not request.POST.get("repository", "").strip():
        messages.error(request, "Choose a repository.")
        return back
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    branch = request.POST.get("branch", "").strip()
    if len(branch) > 255:
        messages.error(request, "A branch name has at most 255 characters.")
        return back
    try:
        # A worker clones it; the header says "preparing the workspace…" until it is there.
        services.workspace_attach(
            conversation=conversation, repo=repo, branch=branch, user=request.user
        )
    except services.ChatError as exc:
        messages.error(request, str(exc))
    return back


def _workspace(request: HttpRequest, slug: str, conversation_id):
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    workspace = selectors.workspace_of(conversation)
    if workspace is None:
        raise Http404("This conversation has no repository.")
    return conversation, workspace


def _refused(request: HttpRequest, conversation, heading: str, text: str) -> HttpResponse:
    """409 in words: a fragment for htmx, else a page with a way back."""
    if request.headers.get("HX-Request"):
        return render(request, "assistant/_composer_error.html", {"error": text}, status=409)
    context = {"heading": heading, "text": text, "conversation": conversation}
    return render(request, "assistant/refused.html", context, status=409)


@login_required
@require_GET
def conversation_patch(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponseBase:
    """Everything the conversation changed up to its last finished turn, as a patch for
    `git apply` on its base commit. A worker writes it into the database (cut at
    PATCH_MAX_BYTES with a last line that says so); until then this answers 202 and asks again.
    ``?again=1`` replaces a patch that failed."""
    conversation, workspace = _workspace(request, slug, conversation_id)
    heading = "No patch to download"
    try:
        job = services.workspace_patch(
            conversation=conversation, user=request.user, again=bool(request.GET.get("again"))
        )
    except services.ChatError as exc:
        return _refused(request, conversation, heading, str(exc))
    if job.pending:
        return _preparing(request, conversation)
    if job.status == RepoJobStatus.FAILED:
        return _refused(request, conversation, heading, job.error)
    size = patch_length(job.pk)
    if not size:
        text = "This conversation has not changed any files yet."
        return _refused(request, conversation, heading, text)
    name = f"tandem-{workspace.repository.name}-{conversation.uuid.hex[:8]}.patch"
    return patch_response(request, job.pk, size, name)


def _preparing(request: HttpRequest, conversation) -> HttpResponse:
    """202 while a worker writes the patch: a fragment for the page's script (which asks
    again), else a page that reloads itself."""
    text = "Preparing the patch… This page reloads until it is ready."
    if request.headers.get("HX-Request"):
        return render(request, "assistant/_composer_error.html", {"error": text}, status=202)
    context = {"heading": "Preparing the patch", "text": text, "conversation": conversation}
    response = render(request, "assistant/refused.html", {**context, "reload": 1}, status=202)
    response["Retry-After"] = "1"
    return response


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@login_required
@require_POST
def conversation_push(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    """Commit the conversation's changes (authored by the person pushing) and push them to
    a new branch of the remote, in a worker; the header shows how it went. Never forced: an
    existing branch of that name is refused."""
    conversation, workspace = _workspace(request, slug, conversation_id)
    back = redirect("conversation_detail", slug=slug, conversation_id=conversation.uuid)
    branch = request.POST.get("branch", "").strip()[:255] or workspace.work_branch
    try:
        services.workspace_push(
            conversation=conversation,
            branch=branch,
            user=request.user,
            # Left out (an older form, a script): the proposed message.
            message=request.POST.get("message"),
        )
    except services.ChatError as exc:
        return _refused(request, conversation, "Nothing was pushed", str(exc))
    return back


@login_required
@require_POST
def conversation_pull_request(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    """Open a pull request (GitHub) or merge request (GitLab) from the branch the last push
    made, in a worker; the header shows how it went and links it. Whoever may push may."""
    conversation, _ = _workspace(request, slug, conversation_id)
    back = redirect("conversation_detail", slug=slug, conversation_id=conversation.uuid)
    try:
        services.pull_request_open(
            conversation=conversation,
            user=request.user,
            title=request.POST.get("title", ""),
            body=request.POST.get("body", ""),
            base=request.POST.get("base", ""),
        )
    except services.ChatError as exc:
        return _refused(request, conversation, "No pull request was opened", str(exc))
    return back


PATCH_CHUNK_BYTES = 1024 * 1024


def patch_length(job_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT octet_length(patch) FROM assistant_repojob WHERE id = %s", [job_id])
        row = cursor.fetchone()
    return int(row[0] or 0) if row else 0


def _patch_chunk(job_id: int, start: int) -> bytes:
    # substring of a bytea is 1-based; PostgreSQL and SQLite both take this form.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT substr(patch, %s, %s) FROM assistant_repojob WHERE id = %s",
            [start + 1, PATCH_CHUNK_BYTES, job_id],
        )
        row = cursor.fetchone()
    return bytes(row[0]) if row and row[0] is not None else b""


def patch_response(request: HttpRequest, job_id: int, size: int, filename: str) -> HttpResponseBase:
    """The stored patch, a megabyte at a time: the web process never holds a whole patch (up to
    PATCH_MAX_BYTES) in memory. Under ASGI an async iterator (each read on the pool), so Django
    does not collect the body; under WSGI a plain one."""

    def chunks() -> Iterator[bytes]:
        for start in range(0, size, PATCH_CHUNK_BYTES):
            yield _patch_chunk(job_id, start)

    async def achunks() -> AsyncIterator[bytes]:
        read = db_sync_to_async(_patch_chunk)
        for start in range(0, size, PATCH_CHUNK_BYTES):
            yield await read(job_id, start)

    body = achunks() if isinstance(request, ASGIRequest) else chunks()
    response = StreamingHttpResponse(body, content_type="text/x-diff; charset=utf-8")
    response["Content-Length"] = str(size)
    response["Content-Disposition"] = f'attachment; filename="{_safe_filename(filename)}"'
    return response
