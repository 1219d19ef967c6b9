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
