import logging

from django.apps import AppConfig

log = logging.getLogger(__name__)


class AssistantConfig(AppConfig):
    name = "assistant"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.lifecycle import access_ended

        from . import checks, events, repos, team_tools  # importing checks registers checks
        from .tools import toolbox

        checks.announce_limits()
        # Sockets (here and sharing's) and the API's event streams join the person's group.
        access_ended.connect(events.end_access, dispatch_uid="assistant.events.end_access")
        repos.local_roots()  # warns, at start-up, of REPOS_LOCAL_ROOTS it ignores
        # Each run's tools: the team's switched-on plugins, documentation lookup.
        toolbox.register_provider(team_tools.plugins_provider)
        toolbox.register_provider(team_tools.web_provider)
