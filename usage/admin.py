from django.contrib import admin

from api.models import ApiKey

from .models import ModelPrice, UsageRecord


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["team", "model", "input_usd_per_mtok", "output_usd_per_mtok", "created"]
    search_fields = ["team__slug", "model"]
    raw_id_fields = ["team"]


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Usage as recorded: read-only (dashboards and budgets are computed from it)."""

    list_display = [
        "created", "team", "user", "kind", "model", "provider", "prompt_tokens",
        "completion_tokens", "cost_usd", "tool_calls", "sandbox_ms", "latency_ms", "outcome",
        "api_key",
    ]  # fmt: skip
    list_filter = ["kind", "outcome", "provider", "created"]
    search_fields = ["model", "team__slug", "user__email"]
    date_hierarchy = "created"
    list_select_related = ["team", "user", "api_key"]
    # A million rows: no COUNT(*) of the whole table for the paginator on each page.
    show_full_result_count = False
    raw_id_fields = ["team", "user", "conversation", "run", "api_key"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are listed, never shown (only their hash is stored); revoke them in the app."""

    list_display = ["prefix", "name", "team", "user", "scope", "created", "last_used_at"]
    list_filter = ["scope"]
    search_fields = ["prefix", "name", "team__slug", "user__email"]
    exclude = ["key_hash"]
    raw_id_fields = ["team", "user"]

    def has_add_permission(self, request) -> bool:
        return False  # a key is made in the app, where its secret is shown once


# The API app may register its own admin for keys; this one only fills in if it doesn't
# (the api app comes first in INSTALLED_APPS, so its admin module is loaded first).
if not admin.site.is_registered(ApiKey):
    admin.site.register(ApiKey, ApiKeyAdmin)
