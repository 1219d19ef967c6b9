from django.apps import AppConfig


class MCPServersConfig(AppConfig):
    name = "mcpservers"
    verbose_name = "MCP servers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from assistant.tools import toolbox

        from . import checks, provider  # noqa: F401 (importing checks registers them)

        toolbox.register_reader(provider.entries)
