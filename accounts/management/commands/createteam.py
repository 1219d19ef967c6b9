from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import TeamError, team_create


class Command(BaseCommand):
    help = "Create a team with an owner."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--owner", required=True, metavar="EMAIL")
        parser.add_argument("--name", help="Display name (defaults to the slug).")

    def handle(self, *args, slug, owner, name, **options):
        user = User.objects.filter(email__iexact=owner).first()
        if user is None:
            raise CommandError(f"No user with the email {owner}. Create one with createuser.")
        try:
            team = team_create(name=name or slug, slug=slug, owner=user)
        except TeamError as exc:
            raise CommandError(str(exc))
        self.stdout.write(f"Created team {team.slug} owned by {user.email}.")
