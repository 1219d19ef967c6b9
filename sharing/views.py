"""Share links: the members' side (dialog, revoke, the admins' overview, exports) and the
shared page itself at /s/<token>/, which needs no team in its URL and, for public links, no
account."""

from __future__ import annotations

import functools
import re
from urllib.parse import quote

from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthenticatedHttpRequest, HtmxHttpRequest
from accounts.selectors import admin_membership_for, membership_for, teams_of
from assistant import selectors as assistant_selectors
from config import clientip

from . import content, export, ratelimit, services
from .models import EXPIRY_CHOICES, Audience, Mode, ShareLink, SharingPolicy, public_links_allowed

# --- Members' side ----------------------------------------------------------------------------


def _dialog_context(membership, conversation, **extra) -> dict:
    links = list(
        ShareLink.objects.filter(conversation=conversation).select_related(
            "created_by", "revoked_by"
        )
    )
    return {
        "team": membership.team,
        "membership": membership,
        "conversation": conversation,
        "links": [_row(link, membership) for link in links],
        "public_allowed": public_links_allowed(membership.team),
        "expiry_choices": [(key, label) for key, (label, _) in EXPIRY_CHOICES.items()],
        "form": {"audience": Audience.TEAM, "mode": Mode.SNAPSHOT, "expiry": "7d"},
        **extra,
    }


def _row(link: ShareLink, membership) -> dict:
    return {"link": link, "can_revoke": services.can_revoke(link, membership)}


def _render_dialog(request, context, status=200) -> HttpResponse:
    template = "sharing/_dialog.html" if request.htmx else "sharing/share_page.html"
    return render(request, template, context, status=status)


@login_required
@require_GET
def share_list(request: HttpRequest, slug: str, conversation_id) -> HttpResponse:
    membership = membership_for(request.user, slug)
    conversation = assistant_selectors.conversation_for(membership, conversation_id)
    return _render_dialog(request, _dialog_context(membership, conversation))


@login_required
@require_POST
def share_create(request: AuthenticatedHttpRequest, slug: str, conversation_id) -> HttpResponse:
    membership = membership_for(request.user, slug)
    conversation = assistant_selectors.conversation_for(membership, conversation_id)
    form = {
        "audience": request.POST.get("audience", Audience.TEAM),
        "mode": request.POST.get("mode", Mode.SNAPSHOT),
        "expiry": request.POST.get("expiry", "7d"),
    }
    try:
        created = services.create_link(
            conversation=conversation,
            user=request.user,
            audience=form["audience"],
            mode=form["mode"],
            expiry=form["expiry"],
        )
    except services.ShareError as exc:
        context = _dialog_context(membership, conversation, form=form, error=str(exc))
        return _render_dialog(request, context, status=422)
    url = request.build_absolute_uri(reverse("share_view", args=[created.token]))
    context = _dialog_context(membership, conversation, new_link=created.link, new_url=url)
    return _render_dialog(request, context, status=201)


@login_required
@require_POST
def share_revoke(request: AuthenticatedHttpRequest, slug: str, link_id) -> HttpResponse:
    membership = membership_for(request.user, slug)
    link = get_object_or_404(
        ShareLink.objects.select_related("conversation", "created_by", "revoked_by"),
        uuid=link_id,
        conversation__team=membership.team,
    )
    if not services.can_revoke(link, membership):
        raise Http404("No such link")
    services.revoke_link(link=link, user=request.user)
    team_view = request.POST.get("from") == "team" and membership.is_admin
    if request.htmx:
        context = {"row": _row(link, membership), "team": membership.team, "team_view": team_view}
        return render(request, "sharing/_link_row.html", context)
    if team_view:
        return redirect("team_shares", slug=slug)
    return redirect("share_list", slug=slug, conversation_id=link.conversation.uuid)


@login_required
@require_GET
def team_shares(request: HttpRequest, slug: str) -> HttpResponse:
    membership = admin_membership_for(request.user, slug)
    links = (
        ShareLink.objects.active()
        .filter(conversation__team=membership.team)
        .select_related("conversation", "created_by")
    )
    policy = SharingPolicy.objects.filter(team=membership.team).first()
    context = {
        "team": membership.team,
        "membership": membership,
        "rows": [_row(link, membership) for link in links],
        "policy": policy,
        "public_allowed": bool(policy and policy.allow_public_links),
    }
    return render(request, "sharing/team_shares.html", context)


@login_required
@require_POST
def sharing_policy(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    membership = admin_membership_for(request.user, slug)
    services.set_policy(
        team=membership.team,
        allow_public_links=request.POST.get("allow_public_links") == "on",
        user=request.user,
    )
    return redirect("team_shares", slug=slug)


@login_required
@require_GET
def conversation_export(request: HttpRequest, slug: str, conversation_id, fmt: str):
    membership = membership_for(request.user, slug)
    conversation = assistant_selectors.conversation_for(membership, conversation_id)
    return _export_response(conversation, fmt, {})


def _export_response(conversation, fmt: str, options: dict) -> HttpResponse:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", options.get("title") or conversation.display_title)
    name = name.strip("-")[:80] or "conversation"
    if fmt == "md":
        body, content_type = export.to_markdown(conversation, **options), "text/markdown"
    else:
        body, content_type = export.to_json(conversation, **options), "application/json"
    response = HttpResponse(body, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}.{fmt}"
    return response


# --- The shared page --------------------------------------------------------------------------

SHARE_HEADERS = {
    # Not for search engines, and the token in the URL must not leave in a Referer header.
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
    # Private and never stored: a revoked link must not live on in a cache.
    "Cache-Control": "private, no-store",
}
# A neutral preview: chat apps keep unfurled previews after a link is revoked, so a preview
# says only what the title says.
DESCRIPTION = "A conversation with an AI coding assistant, shared read-only from Tandem."


def _with_headers(response: HttpResponse) -> HttpResponse:
    for name, value in SHARE_HEADERS.items():
        response[name] = value
    return response


def _gone(request, status: int, heading: str, text: str) -> HttpResponse:
    context = {"heading": heading, "text": text, "description": DESCRIPTION}
    return render(request, "sharing/unavailable.html", context, status=status)


def shared(view):
    """Resolve /s/<token>/… to its link, or answer 429 (too many wrong tokens from this
    client), 404 (unknown, tampered, truncated or revoked), 410 (expired), or the sign-in page
    (a team link opened signed out). Every answer carries SHARE_HEADERS."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, token: str, *args, **kwargs) -> HttpResponse:
        try:
            response = _resolve_and_call(view, request, token, *args, **kwargs)
        except Http404:
            response = _not_found(request)
        return _with_headers(response)

    return wrapper


def _resolve_and_call(view, request, token, *args, **kwargs) -> HttpResponse:
    ip = clientip.of_request(request)
    wait = ratelimit.retry_after(ip)
    if wait is not None:
        response = _gone(
            request, 429, "Too many attempts", "Too many wrong links were tried from here."
        )
        response["Retry-After"] = str(wait)
        return response
    found = services.lookup(token)
    if found.outcome == services.NOT_FOUND:
        if found.guessed:
            ratelimit.record_failure(ip)
        return _not_found(request)
    if found.outcome == services.EXPIRED:
        return _gone(
            request,
            410,
            "This link has expired",
            "The person who shared this conversation set the link to expire. "
            "Ask them for a new one.",
        )
    link = found.link
    assert link is not None  # FOUND comes with its link
    if not services.may_view(link, request.user):
        if not request.user.is_authenticated:
            # Back to the page after signing in (a POST's URL would answer 405 to the GET).
            back = request.get_full_path() if request.method == "GET" else f"/s/{token}/"
            return redirect_to_login(back)
        return _not_found(request)
    return view(request, link, token, *args, **kwargs)


def _not_found(request) -> HttpResponse:
    return _gone(
        request,
        404,
        "This link does not work",
        "There is no shared conversation here. The link may be mistyped, or it was revoked.",
    )


def _title(link: ShareLink, lens) -> str:
    return lens.redact(link.conversation.display_title if link.is_live else link.title)


@require_GET
@shared
def share_view(request: HtmxHttpRequest, link: ShareLink, token: str) -> HttpResponse:
    lens = content.lens_for_link(link)
    context = {
        "link": link,
        "turns": content.turns(link.conversation, lens),
        "read_only": True,
    }
    if request.htmx and request.htmx.target == "messages":
        # The live page reloading its list after a reconnect: not a new view.
        return render(request, "sharing/_shared_messages.html", context)
    services.record_view(link)
    user = request.user
    context.update(
        title=_title(link, lens),
        description=DESCRIPTION,
        token=token,
        fork_teams=list(teams_of(user)) if user.is_authenticated else [],
        blank_run=reverse("share_run", args=[token, "00000000-0000-0000-0000-000000000000"]),
    )
    return render(request, "sharing/shared.html", context)


@require_GET
@shared
def share_run(request: HttpRequest, link: ShareLink, token: str, run_id) -> HttpResponse:
    lens = content.lens_for_link(link)
    runs = link.conversation.runs.select_related("assistant_message", "undone_by", "diff")
    if lens.until is not None:
        runs = runs.filter(created__lte=lens.until)
    run = get_object_or_404(runs, uuid=run_id)
    workspace = content.workspace_of(link.conversation)
    context = {"run": content.run_view(run, lens, workspace=workspace), "read_only": True}
    return render(request, "assistant/_run.html", context)


@require_GET
@shared
def share_export(request: HttpRequest, link: ShareLink, token: str, fmt: str) -> HttpResponse:
    lens = content.lens_for_link(link)
    options = {
        "until": link.until,
        "redact": lens.redact,
        "public": link.is_public,
        "title": _title(link, lens),
    }
    return _export_response(link.conversation, fmt, options)


@require_POST
@shared
def share_fork(request: HttpRequest, link: ShareLink, token: str) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect_to_login(reverse("share_view", args=[token]))
    membership = membership_for(request.user, request.POST.get("team", ""))
    forked = services.fork(link=link, user=request.user, team=membership.team)
    return redirect("conversation_detail", slug=membership.team.slug, conversation_id=forked.uuid)
