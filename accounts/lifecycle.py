"""Every way a membership or an account ends, in one place, whatever ended it: the Members
page, the Django admin (a membership deleted, a person deactivated or deleted), the shell.

- ``access_ended`` is sent after commit when someone loses a team (``team_id``) or every team
  (``team_id`` None: deactivated or deleted). accounts imports no other app: the apps that
  hold connections open (assistant's sockets, sharing's, api's event streams) listen.
- A team always keeps an owner: deleting or demoting its last owner is refused (TeamError),
  unless the team itself is being deleted.
"""

from __future__ import annotations

import logging

import django.dispatch
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from .models import Membership, Role, Team, User
from .services import TeamError

log = logging.getLogger(__name__)

# kwargs: user_id (int), team_id (int, or None for every team). Sent after commit.
access_ended = django.dispatch.Signal()


def end_access_on_commit(*, user_id: int, team_id: int | None) -> None:
    def send() -> None:
        for receiver_fn, result in access_ended.send_robust(
            sender=None, user_id=user_id, team_id=team_id
        ):
            if isinstance(result, Exception):
                log.error("access_ended receiver %r failed", receiver_fn, exc_info=result)

    transaction.on_commit(send)


@receiver(post_delete, sender=Membership)
def _membership_deleted(sender, instance: Membership, **kwargs) -> None:
    end_access_on_commit(user_id=instance.user_id, team_id=instance.team_id)


@receiver(post_save, sender=User)
def _user_saved(sender, instance: User, created: bool, **kwargs) -> None:
    if not instance.is_active and not created:
        end_access_on_commit(user_id=instance.pk, team_id=None)


@receiver(post_delete, sender=User)
def _user_deleted(sender, instance: User, **kwargs) -> None:
    end_access_on_commit(user_id=instance.pk, team_id=None)


# --- A team keeps an owner ------------------------------------------------------------------


def _model_of(origin) -> type | None:
    if isinstance(origin, QuerySet):
        return origin.model
    return type(origin) if origin is not None else None


@receiver(pre_delete, sender=Membership)
def _keep_an_owner_on_delete(sender, instance: Membership, origin=None, **kwargs) -> None:
    if instance.role != Role.OWNER or _model_of(origin) is Team:
        return  # the team goes too
    others = Membership.objects.filter(team_id=instance.team_id, role=Role.OWNER).exclude(
        pk=instance.pk
    )
    if isinstance(origin, QuerySet) and origin.model is Membership:
        others = others.exclude(pk__in=origin.values("pk"))
    elif isinstance(origin, QuerySet) and origin.model is User:
        others = others.exclude(user__in=origin.values("pk"))
    if not others.exists():
        raise TeamError(
            f"{instance.team.slug} needs at least one owner: make someone else owner first, "
            "or delete the team."
        )


@receiver(pre_save, sender=Membership)
def _keep_an_owner_on_demotion(sender, instance: Membership, update_fields=None, **kwargs):
    if instance.pk is None or instance.role == Role.OWNER:
        return
    if update_fields is not None and "role" not in update_fields:
        return
    was = Membership.objects.filter(pk=instance.pk).values_list("role", flat=True).first()
    if was != Role.OWNER:
        return
    if (
        not Membership.objects.filter(team_id=instance.team_id, role=Role.OWNER)
        .exclude(pk=instance.pk)
        .exists()
    ):
        raise TeamError(f"{instance.team.slug} needs at least one owner.")


def sole_owner_of(users) -> list[Team]:
    """Teams whose every owner is among ``users`` (deleting them would leave it ownerless)."""
    ids = [u.pk for u in users]
    teams = Team.objects.filter(memberships__user_id__in=ids, memberships__role=Role.OWNER)
    return [
        team
        for team in teams.distinct()
        if not team.memberships.filter(role=Role.OWNER).exclude(user_id__in=ids).exists()
    ]
