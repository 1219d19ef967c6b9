from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.models import Membership, Team, User
from api.models import Scope
from api.services import ApiKeyError, apikey_create


class Command(BaseCommand):
    help = "Make an API key for a member of a team. The key is printed alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--team", required=True, help="the team's slug")
        parser.add_argument("--user", required=True, help="the member's email")
        parser.add_argument("--name", default="", help="a name to tell the key by")
        parser.add_argument("--scope", choices=Scope.values, default=Scope.READ)
        parser.add_argument(
            "--expires-days", type=int, default=None, help="expire after N days (default never)"
        )

    def handle(
        self,
        *args: Any,
        team: str,
        user: str,
        name: str,
        scope: str,
        expires_days: int | None,
        **options: Any,
    ) -> None:
        found_team = Team.objects.filter(slug=team).first()
        if found_team is None:
            raise CommandError(f"No team with the slug {team}.")
        found_user = User.objects.filter(email__iexact=user).first()
        if found_user is None:
            raise CommandError(f"No user with the email {user}.")
        membership = Membership.objects.filter(team=found_team, user=found_user).first()
        if membership is None:
            raise CommandError(
                f"{found_user.email} is not a member of {found_team.slug}; add them with addmember."
            )
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1.")
        expires = timezone.now() + timedelta(days=expires_days) if expires_days else None
        try:
            new = apikey_create(membership=membership, name=name, scope=scope, expires=expires)
        except ApiKeyError as exc:
            raise CommandError(str(exc))
        ends = f"expires {new.key.expires:%Y-%m-%d %H:%M} UTC" if expires else "never expires"
        self.stdout.write(
            f"A {scope} key for {found_user.email} in {found_team.slug} ({ends}). "
            "It is shown this once:"
        )
        self.stdout.write(new.raw)
