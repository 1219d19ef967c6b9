from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from .lifecycle import sole_owner_of
from .models import Invitation, Membership, Role, Team, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "display_name", "is_staff", "date_joined"]
    search_fields = ["email", "display_name"]
    fieldsets = (
        (None, {"fields": ("email", "password", "display_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def get_deleted_objects(self, objs, request):
        # The admin's own refusal ("would require deleting protected objects"): a team's last
        # owner can't be deleted before someone else is made owner.
        deleted, counts, perms, protected = super().get_deleted_objects(objs, request)
        for team in sole_owner_of(objs):
            protected = [*protected, f"Team {team.slug}: its only owner"]
        return deleted, counts, perms, protected


class MembershipFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        kept = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        if self.instance.pk and not any(data.get("role") == Role.OWNER for data in kept):
            raise ValidationError("A team needs at least one owner.")


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = MembershipFormSet
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "monthly_budget_usd", "member_daily_tokens", "created"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]
    exclude = ["llm_api_key_encrypted"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["team", "email", "role", "created", "expires", "accepted", "revoked"]
    exclude = ["token_hash"]
