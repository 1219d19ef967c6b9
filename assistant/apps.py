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
        toolbox.register_reader(team_tools.plugins_reader)
        toolbox.register_provider(team_tools.web_provider)
        self._audit()

    def _audit(self) -> None:
        from accounts import audit

        from .models import Repository

        A = audit.Action
        audit.track(
            Repository,
            fields={
                "name": A.REPO_CHANGED,
                "url": A.REPO_CHANGED,
                "default_branch": A.REPO_CHANGED,
                "sandbox_image": A.REPO_CHANGED,
                "setup_script": A.REPO_CHANGED,
                "forge": A.REPO_CHANGED,
                "forge_api_base": A.REPO_CHANGED,
                "forge_project": A.REPO_CHANGED,
                "auth": A.REPO_CREDENTIALS,
                "credential_encrypted": A.REPO_CREDENTIALS,
            },
            secrets=["credential_encrypted"],
            created=A.REPO_ADDED,
            deleted=A.REPO_REMOVED,
            team=lambda repo: repo.team,
            label=lambda repo: repo.name,
        )
