import os

from django.core.management.base import BaseCommand, CommandError

from accounts.models import User


class Command(BaseCommand):
    help = "Create a user who signs in by email. The password comes from an environment variable."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help="Name of the environment variable holding the password (never on the command "
            "line, where other users could read it). Without it the user has no usable "
            "password and signs in by OAuth or a password reset.",
        )
        parser.add_argument(
            "--staff",
            action="store_true",
            help="Site staff: the staff usage dashboard and the Django admin, with only the "
            "permissions granted there.",
        )
        parser.add_argument(
            "--superuser",
            action="store_true",
            help="Superuser: every permission in the Django admin (implies --staff).",
        )

    def handle(self, *args, email, password_env, staff, superuser, **options):
        staff = staff or superuser
        email = email.strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise CommandError(f"A user with the email {email} already exists.")
        password = None
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"The environment variable {password_env} is empty or unset.")
        user = User.objects.create_user(
            email=email, password=password, is_staff=staff, is_superuser=superuser
        )
        from allauth.account.models import EmailAddress

        EmailAddress.objects.create(user=user, email=email, primary=True, verified=True)
        role = " (superuser)" if superuser else " (staff)" if staff else ""
        self.stdout.write(f"Created {email}{role}.")
