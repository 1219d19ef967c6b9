from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import audit, lifecycle, signals  # noqa: F401  (connect their receivers)
        from .models import Team

        A = audit.Action
        # Settings several pages (and the admin) write: recorded on every save that changes them.
        audit.track(
            Team,
            fields={
                "name": A.TEAM_SETTINGS,
                "slug": A.TEAM_SETTINGS,
                "llm_model": A.TEAM_MODEL,
                "llm_api_base": A.TEAM_MODEL,
                "llm_api_key_encrypted": A.TEAM_MODEL,
                "llm_temperature": A.TEAM_MODEL,
                "command_allowlist": A.TEAM_ALLOWLIST,
                "command_allowlist_guarded": A.TEAM_ALLOWLIST,
                "monthly_budget_usd": A.TEAM_BUDGET,
                "member_daily_tokens": A.TEAM_BUDGET,
            },
            secrets=["llm_api_key_encrypted"],
            team=lambda team: team,
            label=lambda team: team.name,
        )
