"""A team's MCP servers and the tools each one last listed (issue 17).

A server is either a command run inside the team's sandbox (stdio) or a remote streamable-HTTP
endpoint; its headers (an API token, say) are stored encrypted like the team's LLM key. Each
tool it lists is off until an admin enables it, and asks a member before every call until the
admin sets it to run freely.
"""

from __future__ import annotations

import json
import re
import uuid

from django.db import models
from django.utils import timezone

from accounts.crypto import decrypt, encrypt
from accounts.models import Team

# The model's function name is "<server>__<tool>", within the providers' 64 characters.
NAME_MAX = 20
FUNCTION_NAME_MAX = 64
SEPARATOR = "__"
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?$")


class Kind(models.TextChoices):
    STDIO = "stdio", "Command in the sandbox (stdio)"
    HTTP = "http", "Remote (streamable HTTP)"


class Policy(models.TextChoices):
    AUTO = "auto", "Run freely"
    ASK = "ask", "Ask every time"
    NEVER = "never", "Never"


class RefreshState(models.TextChoices):
    IDLE = "", "Idle"
    QUEUED = "queued", "Listing tools…"


class MCPServer(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="mcp_servers")
    name = models.SlugField(max_length=NAME_MAX)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # stdio: the program and its arguments (a JSON list), run in the sandbox
    command = models.CharField(max_length=500, blank=True)
    args_json = models.TextField(blank=True, default="[]")
    # http: the endpoint, and its headers as an encrypted JSON object
    url = models.URLField(max_length=500, blank=True)
    headers_encrypted = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    refresh_state = models.CharField(
        max_length=10, choices=RefreshState.choices, blank=True, default=RefreshState.IDLE
    )
    refreshed = models.DateTimeField(null=True, blank=True)
    refresh_error = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint("team", "name", name="one_mcp_server_name_per_team")]

    def __str__(self) -> str:
        return f"{self.team.slug}/{self.name}"

    @property
    def args(self) -> list[str]:
        value = json.loads(self.args_json or "[]")
        return [str(a) for a in value] if isinstance(value, list) else []

    @args.setter
    def args(self, value: list[str]) -> None:
        self.args_json = json.dumps(list(value))

    @property
    def headers(self) -> dict[str, str]:
        text = decrypt(self.headers_encrypted)
        value = json.loads(text) if text else {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}

    @headers.setter
    def headers(self, value: dict[str, str]) -> None:
        self.headers_encrypted = encrypt(json.dumps(value)) if value else ""


class MCPTool(models.Model):
    """One tool as its server last listed it, with the team's choices for it."""

    server = models.ForeignKey(MCPServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200)  # as the server names it
    function_name = models.CharField(max_length=FUNCTION_NAME_MAX)  # as the model sees it
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict)
    read_only = models.BooleanField(default=False)  # the server's own readOnlyHint
    enabled = models.BooleanField(default=False)
    policy = models.CharField(max_length=10, choices=Policy.choices, default=Policy.ASK)
    listed = models.BooleanField(default=True)  # False: gone from the server's last listing

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint("server", "name", name="one_mcp_tool_name_per_server"),
            models.UniqueConstraint(
                "server", "function_name", name="one_mcp_function_name_per_server"
            ),
        ]

    def __str__(self) -> str:
        return self.function_name
