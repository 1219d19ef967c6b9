"""The DevOps toolkit plugin (plugins/devops) on small fixture repositories, through the sandbox:
a broken Deployment, a Dockerfile with a known hadolint finding, a committed AWS key (which the
result must never contain, from the tree or from the history)."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant import plugins, sandbox
from assistant.sandbox import SandboxLimits
from assistant.tools import ToolContext, ToolResult

pytestmark = pytest.mark.skipif(
    not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"
)

if importlib.util.find_spec("tandem_devops") is None:  # not installed (make's install step is)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins" / "devops"))

import tandem_devops  # noqa: E402

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: three
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: nginx:1.27
          imagePort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
    - port: 80
"""
GIT_ENV = {
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
}


def git(tree: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=tree, env=GIT_ENV, check=True, capture_output=True)


@pytest.fixture
def tree() -> Iterator[Path]:
    """A git repository: a Deployment with two mistakes, a valid Service, a Dockerfile with an
    untagged base image, and an AWS key committed once and removed in the next commit."""
    parent = Path(tempfile.mkdtemp(prefix="tandem-devops-test-"))
    parent.chmod(0o711)
    root = parent / "tree"
    (root / "deploy").mkdir(parents=True)
    (root / "deploy" / "app.yaml").write_text(DEPLOYMENT)
    (root / "values.yaml").write_text("replicas: 3\n")  # not a manifest: ignored
    (root / "Dockerfile").write_text("FROM ubuntu\nRUN echo hello\n")
    (root / "settings.py").write_text(f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\n')
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    (root / "settings.py").write_text("import os\nKEY = os.environ['AWS_ACCESS_KEY_ID']\n")
    git(root, "commit", "-qam", "the key comes from the environment")
    yield root
    shutil.rmtree(parent)


def call(name: str, args: dict, root: Path) -> ToolResult:
    tool = next(plugins.as_tool(t) for t in tandem_devops.plugin.tools if t.name == name)
    ctx = ToolContext(tree=root, limits=SandboxLimits(wall_seconds=30))
    return asyncio.run(tool.run(ctx, args))


def test_k8s_validate_reports_errors_by_file_and_line(tree):
    result = call("k8s_validate", {"kubernetes_version": "1.30"}, tree)
    assert not result.ok
    lines = result.output.splitlines()
    assert lines[0] == (
        "2 error(s) in 2 manifest(s), Kubernetes 1.30 schemas (strict: unknown fields are errors):"
    )
    assert lines[1].startswith("deploy/app.yaml:6: Deployment web: spec.replicas: 'three'")
    assert lines[2].startswith(
        "deploy/app.yaml:16: Deployment web: spec.template.spec.containers[0]"
    )
    assert "'imagePort' was unexpected" in lines[2]


def test_k8s_validate_passes_valid_manifests_and_refuses_unknown_versions(tree):
    (tree / "deploy" / "app.yaml").write_text(DEPLOYMENT.split("---\n")[1])
    result = call("k8s_validate", {"path": "deploy"}, tree)
    assert result.ok and "All 1 manifest(s) are valid" in result.output
    result = call("k8s_validate", {"kubernetes_version": "0.9"}, tree)
    assert not result.ok and "is not known here" in result.output and "1.30" in result.output


def test_dockerfile_lint_reports_hadolint_rule_ids(tree):
    result = call("dockerfile_lint", {}, tree)
    assert "Dockerfile:1: warning DL3006: Always tag the version of an image explicitly" in (
        result.output
    )
    assert not result.ok  # a warning: the check did not pass
    (tree / "Dockerfile").write_text('FROM ubuntu:24.04\nCMD ["true"]\n')
    result = call("dockerfile_lint", {"path": "Dockerfile"}, tree)
    assert result.ok and result.output == "No findings in Dockerfile."


def test_secrets_scan_finds_a_committed_key_without_showing_it(tree):
    (tree / "config.env").write_text(f"REGION=eu-west-1\nAWS_ACCESS_KEY_ID={AWS_KEY}\n")
    (tree / "creds.py").write_text(f'aws_secret_access_key = "{AWS_SECRET}"\n')
    result = call("secrets_scan", {}, tree)
    assert not result.ok
    assert "config.env:2: AWS Access Key (hash 25910f98)" in result.output
    assert "creds.py:1: Secret Keyword (hash " in result.output
    assert "settings.py" not in result.output  # the key is gone from the tree
    history = call("secrets_scan", {"history": True}, tree)
    assert "In the git history" in history.output
    assert "settings.py:1 in commit " in history.output and "AWS Access Key" in history.output
    for output in (result.output, history.output):
        assert AWS_KEY not in output and AWS_SECRET not in output
        assert AWS_KEY[4:12] not in output and AWS_SECRET[:8] not in output


def test_secrets_scan_on_a_clean_tree(tree):
    git(tree, "rm", "-q", "settings.py")
    result = call("secrets_scan", {}, tree)
    assert result.ok and result.output.startswith("No secrets found in ")


def test_read_only_binds_go_under_opt_and_stay_read_only(tree):
    shipped = tree.parent / "shipped.txt"
    shipped.write_text("from the plugin\n")
    shipped.chmod(0o644)
    with pytest.raises(ValueError, match="under /opt/"):
        asyncio.run(sandbox.run(["true"], worktree=tree, ro_binds={"/usr/bin/x": shipped}))
    with pytest.raises(ValueError, match="under /opt/"):
        asyncio.run(sandbox.run(["true"], worktree=tree, ro_binds={"/opt/../etc/x": shipped}))
    script = "cat /opt/p/shipped.txt; echo changed > /opt/p/shipped.txt"
    result = asyncio.run(
        sandbox.run(
            ["/bin/sh", "-c", script], worktree=tree, ro_binds={"/opt/p/shipped.txt": shipped}
        )
    )
    assert result.stdout == "from the plugin\n"
    assert "Read-only file system" in result.stderr
    assert shipped.read_text() == "from the plugin\n"
