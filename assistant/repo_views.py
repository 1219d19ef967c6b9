"""Repository pages: admins connect, fetch and remove a team's repositories; members attach
one (and a branch) to a conversation. The git work itself lives in assistant/repos.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.db import transaction
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

from . import diffs, images, repos, runner, selectors, services
from .models import RepoAuth, Repository


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
        _check_local_repository(url)
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


def _check_local_repository(url: str) -> None:
    """A local address must name a git repository that is there now: a typo would otherwise
    be accepted and only fail at the first fetch. (Remote ones are fetched at once instead.)"""
    if url.startswith("/"):
        path = Path(url)
    elif url.startswith("file://"):
        path = Path(unquote(urlsplit(url).path))
    else:
        return
    if not path.is_dir():
        raise forms.ValidationError(f"There is no folder at {path}.")
    if not ((path / ".git").exists() or (path / "HEAD").is_file()):
        raise forms.ValidationError(f"{path} is not a git repository (no .git in it).")


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
def repository_list(request: HttpRequest, slug: str) -> HttpResponse:
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
        # Mirrored at once, in the background: the page then says whether it worked.
        transaction.on_commit(lambda: runner.enqueue_fetch(repo.pk))
        messages.success(request, f"Added “{repo.name}”. It is being fetched now.")
        return redirect("repositories", slug=slug)
    repositories = list(team.repositories.all())
    built = images.available()  # the images folder and its manifests, read once for every row
    recent = timezone.now() - timedelta(minutes=10)
    for repo in repositories:
        # Just added, and its first fetch (in the background) not done yet.
        pending = not repo.last_fetched and not repo.last_fetch_error and repo.created > recent
        repo.fetch_pending = pending  # type: ignore[attr-defined]  # a flag for the template only
    context = {
        "team": team,
        "membership": membership,
        "form": form,
        "repositories": [(r, images.choices(r.sandbox_image, built)) for r in repositories],
        "env_dirs": settings.SETUP_ENV_DIRS,
    }
    status = 422 if form.is_bound else 200
    return render(request, "assistant/repositories.html", context, status=status)


@login_required
@require_POST
def repository_fetch(request: HttpRequest, slug: str) -> HttpResponse:
    membership = admin_membership_for(request.user, slug)
    repo = _posted_repository(request, membership.team)
    if isinstance(repo, HttpResponse):
        return repo
    try:
        repos.ensure_mirror(repo=repo)  # records last_fetched / last_fetch_error on the row
        names = repos.branches(repo=repo)
    except repos.RepoError as exc:
        messages.error(request, f"Fetching “{repo.name}” failed. {exc}")
    else:
        listed = ", ".join(names) if names else "none"
        messages.success(request, f"Fetched “{repo.name}”. Branches: {listed}.")
    return redirect("repositories", slug=slug)


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
def conversation_repository(request: HttpRequest, slug: str, conversation_id) -> HttpResponse:
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
    try:
        workspace = repos.create_workspace(conversation=conversation, repo=repo, branch=branch)
    except repos.RepoError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Attached “{repo.name}” @ {workspace.branch}.")
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


def _in_flight(conversation) -> bool:
    return conversation.runs.filter(status__in=services.IN_FLIGHT).exists()


@login_required
@require_GET
def conversation_patch(request: HttpRequest, slug: str, conversation_id) -> HttpResponseBase:
    """Everything the conversation changed up to its last finished turn, as a patch for
    `git apply` on its base commit: streamed from git as it comes, never held whole, and cut
    at PATCH_MAX_BYTES with a last line that says so."""
    conversation, workspace = _workspace(request, slug, conversation_id)
    heading = "No patch to download"
    if _in_flight(conversation):
        # The tree is still changing: a patch now would be half a turn.
        text = "Wait until the assistant has finished before downloading the patch."
        return _refused(request, conversation, heading, text)
    try:
        chunks = iter(diffs.patch_stream(workspace=workspace))
        first = next(chunks, b"")
    except repos.RepoError as exc:
        return _refused(request, conversation, heading, str(exc))
    if not first:
        text = "This conversation has not changed any files yet."
        return _refused(request, conversation, heading, text)
    sync_body = _prepended(first, chunks)
    body: Iterator[bytes] | AsyncIterator[bytes] = sync_body
    if isinstance(request, ASGIRequest):
        # Under ASGI Django would first read a sync iterator whole (into a list), the very
        # thing this avoids: hand it an async one that reads git a chunk at a time.
        body = _async_chunks(sync_body)
    response = StreamingHttpResponse(body, content_type="text/x-diff; charset=utf-8")
    name = f"tandem-{workspace.repository.name}-{conversation.uuid.hex[:8]}.patch"
    response["Content-Disposition"] = f'attachment; filename="{_safe_filename(name)}"'
    return response


def _prepended(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield first
        yield from rest
    finally:
        getattr(rest, "close", lambda: None)()  # stops git when the download stops


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    step = sync_to_async(lambda: next(chunks, None), thread_sensitive=False)  # None: the end
    try:
        while (chunk := await step()) is not None:
            yield chunk
    finally:
        # A download stopped half-way: stop git too (closing the generator kills it).
        await sync_to_async(getattr(chunks, "close", lambda: None), thread_sensitive=False)()


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@login_required
@require_POST
def conversation_push(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    """Commit the conversation's changes (authored by the person pushing) and push them to
    a new branch of the remote. Never forced: an existing branch of that name is refused."""
    conversation, workspace = _workspace(request, slug, conversation_id)
    back = redirect("conversation_detail", slug=slug, conversation_id=conversation.uuid)
    branch = request.POST.get("branch", "").strip() or workspace.work_branch
    if _in_flight(conversation):
        text = "Wait until the assistant has finished before pushing."
        return _refused(request, conversation, "Nothing was pushed", text)
    user = request.user
    try:
        if not repos.has_changes(workspace=workspace):
            messages.error(request, "There is nothing to push: no file was changed.")
            return back
        repos.commit_all(
            workspace=workspace,
            message=f"{conversation.display_title}\n\nMade with Tandem in a conversation "
            f"of the team {conversation.team.name}.",
            author_name=user.name,
            author_email=user.email,
        )
        sha = repos.push(workspace=workspace, remote_branch=branch)
    except repos.RepoError as exc:
        messages.error(request, str(exc))
        return back
    messages.success(request, f"Pushed {sha[:10]} to the branch “{branch}”.")
    return back
