import logging

from django.apps import AppConfig

log = logging.getLogger(__name__)


class AssistantConfig(AppConfig):
    name = "assistant"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        checks.announce_limits()
