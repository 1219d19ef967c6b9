"""Writes for users, teams, memberships and invitations."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from . import audit
from .models import Invitation, Membership, Role, Team, User

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$")
RESERVED_SLUGS = {"new", "admin", "api", "static", "accounts", "invite", "ws"}


class TeamError(Exception):
    """A team operation that cannot be done, with a message for the user."""


def suggest_slug(name: str) -> str:
    base = slugify(name)[:40].strip("-") or "team"
    slug, n = base, 2
    while Team.objects.filter(slug=slug).exists() or slug in RESERVED_SLUGS:
        slug, n = f"{base}-{n}", n + 1
    return slug


@transaction.atomic
def team_create(*, name: str, owner: User, slug: str = "") -> Team:
    name = name.strip()
    if not name:
        raise TeamError("A team needs a name.")
    slug = (slug or suggest_slug(name)).strip().lower()
    if not SLUG_RE.match(slug) or slug in RESERVED_SLUGS:
        raise TeamError(
            "The short name may use lower-case letters, digits and dashes (at most 50)."
        )
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name[:100], slug=slug)
    except IntegrityError:
        raise TeamError(f"The short name '{slug}' is taken.")
    Membership.objects.create(team=team, user=owner, role=Role.OWNER)
    return team


def membership_add(*, team: Team, user: User, role: str = Role.MEMBER) -> Membership:
    """Join ``team`` as ``role``. Someone already in the team keeps the membership they have:
    joining never changes a role (an invitation accepted at sign-in once demoted owners)."""
    membership, _ = Membership.objects.get_or_create(team=team, user=user, defaults={"role": role})
    return membership


def _keep_an_owner(target: Membership, *, new_role: str | None) -> None:
    """Refuse to leave the team without an owner (``new_role`` None: ``target`` leaves). The
    team's row is locked first, so two owners demoting each other can't both succeed."""
    if target.role != Role.OWNER or new_role == Role.OWNER:
        return
    Team.objects.select_for_update().filter(pk=target.team_id).first()
    others = Membership.objects.filter(team_id=target.team_id, role=Role.OWNER)
    if not others.exclude(pk=target.pk).exists():
        raise TeamError("A team needs at least one owner.")


@transaction.atomic
def membership_remove(*, actor: Membership, target: Membership) -> None:
    if target.team_id != actor.team_id:
        raise TeamError("Not a member of this team.")
    if target.role == Role.OWNER and actor.role != Role.OWNER:
        raise TeamError("Only an owner can remove an owner.")
    _keep_an_owner(target, new_role=None)
    audit.record(
        audit.Action.MEMBER_REMOVED,
        team=target.team,
        actor=actor.user,
        obj=target,
        object_type="member",
        object_id=str(target.user.uuid),
        label=target.user.email,
        before={"role": target.role},
    )
    # Sockets and event streams close on the membership's deletion (accounts/signals.py).
    target.delete()


@transaction.atomic
def membership_set_role(*, actor: Membership | None, target: Membership, role: str) -> None:
    """Change a member's role. ``actor`` None: the site's operator (manage.py addmember)."""
    if actor is not None and (actor.role != Role.OWNER or actor.team_id != target.team_id):
        raise TeamError("Only an owner can change roles.")
    if role not in Role.values:
        raise TeamError("Unknown role.")
    _keep_an_owner(target, new_role=role)
    if target.role != role:
        audit.record(
            audit.Action.MEMBER_ROLE,
            team=target.team,
            actor=actor.user if actor is not None else None,
            obj=target,
            object_type="member",
            object_id=str(target.user.uuid),
            label=target.user.email,
            before={"role": target.role},
            after={"role": role},
        )
    target.role = role
    target.save(update_fields=["role"])


@dataclass
class NewInvitation:
    invitation: Invitation
    token: str

    @property
    def path(self) -> str:
        return reverse("invitation_accept", args=[self.token])

    @property
    def url(self) -> str:
        return settings.SITE_URL + self.path


def invitation_create(
    *, team: Team, created_by: User, email: str = "", role: str = Role.MEMBER
) -> NewInvitation:
    if role not in (Role.MEMBER, Role.ADMIN):
        raise TeamError("Invitations are for members or admins.")
    email = email.strip().lower()
    if email and _is_members_address(team, email):
        raise TeamError(f"{email} is already a member.")
    token, token_hash = Invitation.new_token()
    invitation = Invitation.objects.create(
        team=team, email=email, role=role, token_hash=token_hash, created_by=created_by
    )
    audit.record(
        audit.Action.MEMBER_INVITED,
        team=team,
        actor=created_by,
        obj=invitation,
        label=email or "a link",
        after={"role": role, "email": email},
    )
    new = NewInvitation(invitation, token)
    if email:
        transaction.on_commit(lambda: _send_invitation_email(new, created_by))
    return new


def _is_members_address(team: Team, email: str) -> bool:
    """Whether ``email`` is a member's: their sign-in address or any address they verified
    (an invitation to one would be accepted by them at their next sign-in)."""
    from allauth.account.models import EmailAddress

    return (
        team.memberships.filter(user__email__iexact=email).exists()
        or EmailAddress.objects.filter(
            email__iexact=email, verified=True, user__memberships__team=team
        ).exists()
    )


def _send_invitation_email(new: NewInvitation, inviter: User) -> None:
    team = new.invitation.team
    send_mail(
        subject=f"{inviter.name} invited you to {team.name} on Tandem",
        message=(
            f"{inviter.name} ({inviter.email}) invited you to join the team {team.name} on "
            f"Tandem.\n\nOpen this link to join (it expires on "
            f"{new.invitation.expires:%Y-%m-%d %H:%M} UTC and works once):\n{new.url}\n"
        ),
        from_email=None,
        recipient_list=[new.invitation.email],
    )


def invitation_revoke(*, invitation: Invitation) -> None:
    invitation.revoked = timezone.now()
    invitation.save(update_fields=["revoked"])
    audit.record(
        audit.Action.INVITATION_REVOKED,
        team=invitation.team,
        obj=invitation,
        label=invitation.email or "a link",
    )


def invitation_lookup(token: str) -> Invitation | None:
    return (
        Invitation.objects.select_related("team", "created_by")
        .filter(token_hash=Invitation.hash(token))
        .first()
    )


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Team:
    """Join the invitation's team. Single use: the row is locked so two accepts can't both win."""
    found = invitation_lookup(token)
    if found is None:
        raise TeamError("This invitation link is not valid.")
    invitation = Invitation.objects.select_for_update().select_related("team").get(pk=found.pk)
    if invitation.team.memberships.filter(user=user).exists():
        return invitation.team
    if invitation.revoked:
        raise TeamError("This invitation was withdrawn.")
    if invitation.accepted:
        raise TeamError("This invitation has already been used.")
    if invitation.is_expired:
        raise TeamError("This invitation has expired. Ask for a new one.")
    if invitation.email and invitation.email != user.email.lower():
        raise TeamError(
            f"This invitation is for {invitation.email}. Sign in with that address to accept it."
        )
    membership_add(team=invitation.team, user=user, role=invitation.role)
    invitation.accepted = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted", "accepted_by"])
    return invitation.team


def accept_invitations_for_verified_email(*, user: User, email: str) -> list[Team]:
    """Join every open invitation addressed to ``email``: called when an OAuth provider (or an
    email confirmation) has verified that the user owns it."""
    joined = []
    open_invites = Invitation.objects.filter(
        email__iexact=email, accepted__isnull=True, revoked__isnull=True, expires__gt=timezone.now()
    )
    for invitation in open_invites.select_related("team"):
        with transaction.atomic():
            # Used up either way; someone already in the team keeps their role.
            _, created = Membership.objects.get_or_create(
                team=invitation.team, user=user, defaults={"role": invitation.role}
            )
            invitation.accepted = timezone.now()
            invitation.accepted_by = user
            invitation.save(update_fields=["accepted", "accepted_by"])
        if created:
            joined.append(invitation.team)
    return joined
