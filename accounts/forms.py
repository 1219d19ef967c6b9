"""Forms for allauth's pages."""

from __future__ import annotations

from allauth.account import app_settings
from allauth.account.adapter import get_adapter
from allauth.account.forms import SignupForm as AllauthSignupForm
from allauth.account.utils import filter_users_by_email
from django.contrib.auth.hashers import make_password
from django.shortcuts import redirect


class SignupForm(AllauthSignupForm):
    """Sign-up that never says whether an address has an account.

    allauth hides it only with mandatory email verification; otherwise its form answers "A user
    is already registered with this email address". Here a taken address is never an error: no
    account is made, its owner gets an email saying someone tried to sign up with it, and the
    answer is the "check your email" page a new account gets under mandatory verification (the
    production default). With optional verification a new account is signed in at once, which
    no answer for an existing one can imitate: that mode is for embedded, one-machine use.
    """

    def validate_unique_email(self, value: str) -> str:
        self.account_already_exists = bool(filter_users_by_email(value))
        return get_adapter().validate_unique_email(value)

    def try_save(self, request):
        if not self.account_already_exists:
            return super().try_save(request)
        # As long as making an account takes: the password is hashed either way.
        make_password(self.cleaned_data.get("password1"))
        if app_settings.EMAIL_VERIFICATION == app_settings.EmailVerificationMethod.MANDATORY:
            return super().try_save(request)  # allauth's own: the email, then that page
        get_adapter().send_account_already_exists_mail(self.cleaned_data["email"])
        return None, redirect("account_email_verification_sent")
