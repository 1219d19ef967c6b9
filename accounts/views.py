from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from . import audit, selectors, services
from .http import AuthenticatedHttpRequest
from .models import Role


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Back to the last team used; a first-time user is asked to create one."""
    teams = list(selectors.teams_of(request.user))
    # A team just joined on sign-in wins: allauth picks its redirect before the invitation is
    # accepted, so the team is only known here.
    last = request.session.pop("joined_team", None) or request.session.get("last_team")
    for team in teams:
        if team.slug == last:
            return redirect("conversation_list", slug=team.slug)
    if teams:
        return redirect("conversation_list", slug=teams[0].slug)
    if request.user.is_staff:
        return redirect("staff_usage")  # runs the site, belongs to no team: its dashboard
    return redirect("team_create")


class TeamForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.CharField(
        max_length=50, required=False, help_text="Used in links. Leave empty to derive it."
    )


@login_required
@require_http_methods(["GET", "POST"])
def team_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = TeamForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            team = services.team_create(
                name=form.cleaned_data["name"], slug=form.cleaned_data["slug"], owner=request.user
            )
        except services.TeamError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Created {team.name}. Invite your teammates from Members.")
            return redirect("conversation_list", slug=team.slug)
    return render(request, "accounts/team_create.html", {"form": form})


class InviteForm(forms.Form):
    email = forms.EmailField(required=False, help_text="Leave empty for a link to hand out.")
    role = forms.ChoiceField(choices=[(Role.MEMBER, "Member"), (Role.ADMIN, "Admin")])


@login_required
@require_http_methods(["GET", "POST"])
def members(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    membership = selectors.membership_for(request.user, slug)
    team = membership.team
    form = InviteForm(request.POST or None)
    new_invitation = None
    if request.method == "POST":
        if not membership.is_admin:
            raise Http404("No such page")  # admin actions are 404 to members, as everywhere
        if form.is_valid():
            try:
                new_invitation = services.invitation_create(
                    team=team,
                    created_by=request.user,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                )
            except services.TeamError as exc:
                form.add_error("email", str(exc))
            else:
                if new_invitation.invitation.email:
                    messages.success(
                        request, f"Invitation sent to {new_invitation.invitation.email}."
                    )
                form = InviteForm()
    context = {
        "team": team,
        "membership": membership,
        "members": selectors.members_of(team),
        "invitations": selectors.open_invitations_of(team) if membership.is_admin else [],
        "form": form,
        "new_invitation": new_invitation,
        "invite_url": request.build_absolute_uri(new_invitation.path) if new_invitation else "",
        "roles": Role.choices,
    }
    return render(request, "accounts/members.html", context)


@login_required
@require_POST
def member_remove(request: HttpRequest, slug: str, user_id) -> HttpResponse:
    actor = selectors.membership_for(request.user, slug)
    target = get_object_or_404(actor.team.memberships, user__uuid=user_id)
    leaving = target.user_id == request.user.pk
    if not actor.is_admin and not leaving:
        raise Http404("No such page")
    try:
        services.membership_remove(actor=actor if not leaving else target, target=target)
    except services.TeamError as exc:
        messages.error(request, str(exc))
        return redirect("members", slug=slug)
    if leaving:
        messages.success(request, f"You left {actor.team.name}.")
        return redirect("home")
    messages.success(request, f"Removed {target.user.email}.")
    return redirect("members", slug=slug)


@login_required
@require_POST
def member_role(request: HttpRequest, slug: str, user_id) -> HttpResponse:
    actor = selectors.admin_membership_for(request.user, slug)
    target = get_object_or_404(actor.team.memberships, user__uuid=user_id)
    try:
        services.membership_set_role(actor=actor, target=target, role=request.POST.get("role", ""))
    except services.TeamError as exc:
        messages.error(request, str(exc))
    return redirect("members", slug=slug)


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, slug: str, invitation_id) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    invitation = get_object_or_404(membership.team.invitations, uuid=invitation_id)
    services.invitation_revoke(invitation=invitation)
    messages.success(request, "Invitation withdrawn.")
    return redirect("members", slug=slug)


@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    invitation = services.invitation_lookup(token)
    if invitation is None:
        return render(request, "accounts/invitation_invalid.html", status=404)
    if not invitation.is_usable:
        reason = (
            "was withdrawn"
            if invitation.revoked
            else "has already been used"
            if invitation.accepted
            else "has expired"
        )
        return render(request, "accounts/invitation_invalid.html", {"reason": reason}, status=410)
    if not request.user.is_authenticated:
        # Sign-up or sign-in (email or OAuth) picks this up from the session afterwards.
        request.session["invitation_token"] = token
        return render(request, "accounts/invitation.html", {"invitation": invitation})
    if request.method == "POST":
        try:
            team = services.invitation_accept(token=token, user=request.user)
        except services.TeamError as exc:
            messages.error(request, str(exc))
            return render(request, "accounts/invitation.html", {"invitation": invitation})
        messages.success(request, f"You joined {team.name}.")
        return redirect("conversation_list", slug=team.slug)
    return render(request, "accounts/invitation.html", {"invitation": invitation})


# --- The audit log (team admins; site staff) -----------------------------------------------------

AUDIT_PAGE_SIZE = 100


def _audit_filters(request: HttpRequest) -> tuple[dict, list[str]]:
    """The filters from the query string, and what was wrong with them, in words."""
    from datetime import date

    errors: list[str] = []
    action = request.GET.get("action", "")
    if action and action not in audit.Action.values:
        errors.append(f"There is no action “{action}”.")
        action = ""
    dates: dict[str, date | None] = {}
    for name in ("since", "until"):
        raw = request.GET.get(name, "").strip()
        try:
            dates[name] = date.fromisoformat(raw) if raw else None
        except ValueError:
            errors.append(f"“{raw}” is not a date (YYYY-MM-DD).")
            dates[name] = None
    actor = request.GET.get("actor", "").strip()[:254]
    return {"action": action, "actor": actor, **dates}, errors


def _audit_page(request: HttpRequest, team, membership=None) -> HttpResponseBase:
    from django.core.paginator import Paginator
    from django.http import StreamingHttpResponse

    filters, errors = _audit_filters(request)
    events = audit.events_for(team=team, **filters)
    if request.GET.get("format") == "csv":
        name = f"audit-{team.slug if team else 'all'}.csv"
        chunks = audit.csv_chunks(events)
        body = _async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
        response = StreamingHttpResponse(body, content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "team": team,
        "membership": membership,
        "page": page,
        "filters": filters,
        "errors": errors,
        "actions": audit.Action.choices,
        "query": query.urlencode(),
        "settings_retention": settings.AUDIT_RETENTION_DAYS,
    }
    return render(request, "accounts/audit.html", context, status=400 if errors else 200)


async def _async_chunks(chunks: Iterator[str]) -> AsyncIterator[str]:
    # Under ASGI Django would read a sync iterator whole into a list first: hand it an async
    # one that reads a page at a time (in the thread the ORM calls of this request use).
    step = sync_to_async(lambda: next(chunks, None))
    while (chunk := await step()) is not None:
        yield chunk


@login_required
@require_http_methods(["GET"])
def audit_log(request: HttpRequest, slug: str) -> HttpResponseBase:
    """The team's audit log: admins only (404 to members and outsiders, as admin pages are)."""
    membership = selectors.admin_membership_for(request.user, slug)
    return _audit_page(request, membership.team, membership)


@login_required
@require_http_methods(["GET"])
def staff_audit_log(request: HttpRequest) -> HttpResponseBase:
    """Every team's audit log, for site staff (404 to anyone else)."""
    if not request.user.is_staff:
        raise Http404("No such page")
    return _audit_page(request, None)
