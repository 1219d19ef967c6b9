from django.contrib import admin

from .models import UsageRecord


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
