from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from accounts.http import AuthenticatedHttpRequest
from accounts.selectors import membership_for

from . import file_links, forges, pushes, selectors, services, streams
from .llm import config_for_team
from .rendering import message_context, run_context, tool_call_context


@login_required
@require_GET
def conversation_list(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    membership = membership_for(request.user, slug)
    request.session["last_team"] = slug
    query = request.GET.get("q", "").strip()[:200]
    context: dict[str, Any] = {"team": membership.team, "membership": membership, "q": query}
    if request.htmx and request.htmx.target == "sidebar-results":  # a conversation's sidebar
        # Titles and message text, with the matching words (selectors.search_conversations).
        found = selectors.search_conversations(membership.team, query, limit=SIDEBAR_LENGTH)
        context["found"] = found
        return render(request, "assistant/_sidebar_results.html", context)
    conversations = selectors.conversations_of(membership.team, query=query)
    context["page"] = Paginator(conversations, 50).get_page(request.GET.get("page"))
    template = "assistant/conversation_list.html"
    if request.htmx and request.htmx.target == "conversation-results":
        template = "assistant/_conversation_results.html"
    return render(request, template, context)


SIDEBAR_LENGTH = 40


@login_required
@require_GET
def conversation_repository_status(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    """The header's repository part alone: polled by htmx while a worker prepares the
    workspace or pushes, so the outcome shows without a reload."""
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    workspace = selectors.workspace_of(conversation)
    context: dict[str, Any] = {
        "team": membership.team,
        "membership": membership,
        "conversation": conversation,
        "workspace": workspace,
        **repository_context(conversation, workspace),
    }
    return render(request, "assistant/_conversation_repository.html", context)


@login_required
@require_POST
def conversation_create(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    membership = membership_for(request.user, slug)
    title = request.POST.get("title", "").strip()
    conversation = (
        None if title else selectors.untouched_conversation_of(membership.team, request.user)
    )
    if conversation is None:
        conversation = services.conversation_create(
            team=membership.team, author=request.user, title=title
        )
    return redirect("conversation_detail", slug=slug, conversation_id=conversation.uuid)


def _turns(conversation, workspace) -> list[dict]:
    """User messages, each with the runs that answer it, in order."""
    turns: list[dict] = []
    by_message: dict[int, dict] = {}
    for message in selectors.user_messages_of(conversation):
        turn: dict[str, Any] = {"message": message_context(message), "runs": []}
        turns.append(turn)
        by_message[message.pk] = turn
    links = file_links.links_for(conversation, workspace)
    for run in selectors.runs_of(conversation):
        answered = by_message.get(run.user_message_id)
        if answered is None:
            continue
        answered["runs"].append(_run_context(run, workspace, links=links))
    return turns


def repository_context(conversation, workspace) -> dict[str, Any]:
    """What the header's repository part shows: the attach form, or the workspace being
    prepared, or the workspace with its latest push; ``polling`` while a worker is on it."""
    from .models import RepoJobKind

    latest = {}
    for kind in (RepoJobKind.ATTACH, RepoJobKind.PUSH, RepoJobKind.PULL_REQUEST):
        jobs = conversation.repo_jobs.filter(kind=kind).select_related("repository")
        latest[kind] = jobs.defer("patch").order_by("-created").first()
    attach, push = latest[RepoJobKind.ATTACH], latest[RepoJobKind.PUSH]
    pull_request = latest[RepoJobKind.PULL_REQUEST]
    if workspace is not None:
        attach = None
    else:
        push = pull_request = None  # of a workspace since removed
    polling = any(job is not None and job.pending for job in (attach, push, pull_request))
    target = forges.target_of(workspace.repository) if workspace is not None else None
    return {
        "repositories": _attachable(conversation, workspace),
        "attach_job": attach,
        "push_job": push,
        "pull_request_job": pull_request,
        "polling": polling,
        "forge": target,
        # The forms are left out while the header polls (each poll replaces them).
        **({} if polling or workspace is None else _push_forms(conversation, workspace, target)),
    }


def _push_forms(conversation, workspace, target: forges.Target | None) -> dict[str, Any]:
    """The Push form's proposed commit message (assistant/pushes.py), and, once a push has
    worked on a repository on GitHub or GitLab (``target``), the Open pull request form's
    defaults."""
    context: dict[str, Any] = {"commit_message": pushes.commit_message_proposal(conversation)}
    pushed = services.last_push(conversation) if target is not None else None
    if target is not None and pushed is not None:
        context["forge_token"] = forges.has_token(workspace.repository)
        context["pushed"] = pushed
        context["pull_request"] = pushes.pull_request_defaults(pushed, workspace)
        context["base_branches"] = workspace.repository.branches[:200]
    return context


def _attachable(conversation, workspace) -> list[dict]:
    """The team's repositories with their known branches (as of their last fetch, stored on the
    row: the web never reads a mirror), for the attach form (none once the conversation has a
    workspace)."""
    if workspace is not None:
        return []
    team = conversation.team
    last_used = (
        team.repositories.filter(workspaces__isnull=False)
        .order_by("-workspaces__created")
        .values_list("pk", flat=True)
        .first()
    )
    choices = []
    for repo in team.repositories.all():
        choices.append(
            {"repo": repo, "branches": repo.branches, "broken": bool(repo.last_fetch_error)}
        )
    # The default (first) choice: a healthy one, the last used if it is; broken ones last.
    choices.sort(key=lambda c: (c["broken"], c["repo"].pk != last_used))
    return choices


def _run_context(run, workspace, *, links=None, **extra) -> dict:
    snap = streams.snapshot_sync(str(run.uuid)) if run.status in _STREAMING else None
    if links is None and workspace is not None:
        links = file_links.links_for(run.conversation, workspace)
    context = run_context(
        run, snap.text if snap else "", snap.seq if snap else 0, workspace=workspace, links=links
    )
    return {**context, **{key: value for key, value in extra.items() if value}}


_STREAMING = ("queued", "running")


@login_required
@require_GET
def conversation_detail(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    workspace = selectors.workspace_of(conversation)  # once: the turns, header and form need it
    context: dict[str, Any] = {
        "team": membership.team,
        "membership": membership,
        "conversation": conversation,
        "workspace": workspace,
        "turns": _turns(conversation, workspace),
        "model_label": config_for_team(membership.team).label,
        "max_chars": services.settings.MAX_MESSAGE_CHARS,
    }
    if request.htmx and request.htmx.target == "messages":
        return render(request, "assistant/_messages.html", context)
    context.update(repository_context(conversation, workspace))
    context["found"] = [
        selectors.Found(c) for c in selectors.conversations_of(membership.team)[:SIDEBAR_LENGTH]
    ]
    return render(request, "assistant/conversation.html", context)


@login_required
@require_POST
def message_send(request: AuthenticatedHttpRequest, slug: str, conversation_id) -> HttpResponse:
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    content = request.POST.get("content", "")
    try:
        sent = services.message_send(
            conversation=conversation, author=request.user, content=content
        )
    except services.ChatError as exc:
        # 422 keeps the composer's text in place; htmx shows the error next to it.
        return render(request, "assistant/_composer_error.html", {"error": str(exc)}, status=422)
    turn = {
        "message": message_context(sent.message),
        "runs": [run_context(sent.run)],
    }
    return render(request, "assistant/_turn.html", turn, status=201)


@login_required
@require_POST
def conversation_rename(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    error = ""
    try:
        services.conversation_rename(conversation=conversation, title=request.POST.get("title", ""))
    except services.ChatError as exc:
        error = str(exc)
    if request.htmx:
        context = {"conversation": conversation, "title_error": error}
        # 200 even on error: htmx swaps only successful responses, and the error belongs in place.
        return render(request, "assistant/_title.html", context)
    if error:
        messages.error(request, error)
    return redirect("conversation_detail", slug=slug, conversation_id=conversation.uuid)


@login_required
@require_POST
def conversation_delete(
    request: AuthenticatedHttpRequest, slug: str, conversation_id
) -> HttpResponse:
    membership = membership_for(request.user, slug)
    conversation = selectors.conversation_for(membership, conversation_id)
    title = conversation.display_title
    services.conversation_delete(conversation=conversation)
    messages.success(request, f"Deleted “{title}”.")
    if request.htmx:
        return HttpResponseClientRedirect(f"/t/{slug}/")
    return redirect("conversation_list", slug=slug)


@login_required
@require_POST
def run_cancel(request: HttpRequest, run_id) -> HttpResponse:
    run = selectors.run_for_user(request.user, run_id)
    services.run_cancel(run=run)
    return HttpResponse(status=204)


@login_required
@require_POST
def run_retry(request: AuthenticatedHttpRequest, run_id) -> HttpResponse:
    run = selectors.run_for_user(request.user, run_id)
    try:
        new_run = services.run_retry(run=run, author=request.user)
    except services.ChatError as exc:
        return HttpResponse(str(exc), status=409)
    context = {"run": {**run_context(new_run), "reply_to": str(run.user_message.uuid)}}
    return render(request, "assistant/_run.html", context, status=201)


@login_required
@require_GET
def run_detail(request: HttpRequest, run_id) -> HttpResponse:
    """One run's bubble as it is now: the page asks for it when a stream ended unseen."""
    run = selectors.run_for_user(request.user, run_id)
    context = {"run": _run_context(run, selectors.workspace_of(run.conversation))}
    return render(request, "assistant/_run.html", context)


@login_required
@require_POST
def run_undo(request: AuthenticatedHttpRequest, run_id) -> HttpResponse:
    """Revert the files one turn changed; the bubble comes back saying so (or why not)."""
    run = selectors.run_for_user(request.user, run_id)
    error = ""
    try:
        run = services.run_undo(run=run, user=request.user)
    except services.ChatError as exc:
        error = str(exc)
    workspace = selectors.workspace_of(run.conversation)
    context = {"run": _run_context(run, workspace, undo_error=error)}
    return render(request, "assistant/_run.html", context, status=200)


@login_required
@require_POST
def tool_call_decide(request: AuthenticatedHttpRequest, call_id) -> HttpResponse:
    """Approve or deny a command awaiting approval; the card comes back as it is now (with
    who decided, if someone was quicker)."""
    call, membership = selectors.tool_call_for_user(request.user, call_id)
    error = ""
    try:
        call = services.tool_call_decide(
            call=call,
            user=request.user,
            decision=request.POST.get("decision", ""),
            is_admin=membership.is_admin,
        )
    except services.ChatError as exc:
        error = str(exc)
        call.refresh_from_db()
    context = {"call": {**tool_call_context(call), "error": error}}
    response = render(request, "assistant/_tool_call.html", context)
    # The nav's approvals badge counts again now rather than at its next poll.
    return trigger_client_event(response, "approvals-changed")


@login_required
@require_GET
def approvals(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Every command waiting for a decision in the team's conversations, each with who asked
    and where, approved or denied in place through tool_call_decide (same rules, same record)."""
    membership = membership_for(request.user, slug)
    calls = selectors.awaiting_calls_of(membership.team)[:APPROVALS_SHOWN]
    waiting = [
        {
            "call": tool_call_context(call),
            "run": call.run,
            "conversation": call.run.conversation,
            "asked_at": call.created,
        }
        for call in calls
    ]
    context = {"team": membership.team, "membership": membership, "waiting": waiting}
    context["total"] = selectors.awaiting_count_of(membership.team)
    return render(request, "assistant/approvals.html", context)


# A page, not an archive: more than this waiting at once is said as a count.
APPROVALS_SHOWN = 100


@login_required
@require_GET
def approvals_badge(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The nav's Approvals link with its count, polled by htmx (see docs/architecture.md)."""
    membership = membership_for(request.user, slug)
    context = {
        "team": membership.team,
        "approvals_waiting": selectors.awaiting_count_of(membership.team),
    }
    return render(request, "assistant/_approvals_badge.html", context)
