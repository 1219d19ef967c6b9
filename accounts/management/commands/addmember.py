from django.core.management.base import BaseCommand, CommandError

from accounts.models import Role, Team, User
from accounts.services import TeamError, membership_add, membership_set_role


class Command(BaseCommand):
    help = "Add a user to a team, or change their role if already a member."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("email")
        parser.add_argument("--role", choices=Role.values, default=Role.MEMBER)

    def handle(self, *args, slug, email, role, **options):
        team = Team.objects.filter(slug=slug).first()
        if team is None:
            raise CommandError(f"No team with the slug {slug}.")
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise CommandError(f"No user with the email {email}. Create one with createuser.")
        membership = membership_add(team=team, user=user, role=role)
        if membership.role != role:
            try:
                membership_set_role(actor=None, target=membership, role=role)
            except TeamError as exc:
                raise CommandError(str(exc))
        self.stdout.write(f"{user.email} is now {role} of {team.slug}.")
