from django.apps import AppConfig


class SlackConfig(AppConfig):
    name = "slack"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The agent and the services emit hooks; this app listens, so they never import it.
        from assistant import hooks

        from . import receivers

        hooks.run_ended.connect(receivers.on_run_ended, dispatch_uid="slack.run_ended")
        hooks.approval_needed.connect(
            receivers.on_approval_needed, dispatch_uid="slack.approval_needed"
        )
        hooks.conversation_shared.connect(
            receivers.on_conversation_shared, dispatch_uid="slack.conversation_shared"
        )
        hooks.budget_threshold.connect(
            receivers.on_budget_threshold, dispatch_uid="slack.budget_threshold"
        )
        self._audit()

    def _audit(self) -> None:
        from accounts import audit

        from .models import SlackConnection

        A = audit.Action
        audit.track(
            SlackConnection,
            fields={
                "slack_team_id": A.SLACK_CONNECTED,
                "workspace_name": A.SLACK_CONNECTED,
                "bot_token_encrypted": A.SLACK_CONNECTED,
                "webhook_url_encrypted": A.SLACK_CONNECTED,
                "channel_id": A.SLACK_CHANGED,
                "webhook_channel": A.SLACK_CHANGED,
                "kinds": A.SLACK_CHANGED,
                "status": A.SLACK_CHANGED,
            },
            secrets=["bot_token_encrypted", "webhook_url_encrypted"],
            created=A.SLACK_CONNECTED,
            deleted=A.SLACK_REMOVED,
            team=lambda connection: connection.team,
            label=lambda connection: connection.workspace_name or "webhook",
        )
