"""Setup scripts, the registry-only egress proxy and prepared trees (assistant/environment.py,
egress.py): the agent's turns run on the worker loop with the scripted fake provider over HTTP,
in the small test image, and the package registries are a local stand-in (tests/
standin_registry.py) the allowlist points at, reached through the real proxy.py process."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from assistant import agent, egress, environment, policy, repos, sandbox, tools
from assistant.egress_plugin import allowed, public
from assistant.models import Approval, Repository, ToolCallStatus
from tests import standin_registry
from tests.test_agent import execute, git, send

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"),
]

# Fetches a URL through the proxy variables the setup gets; prints what came back or the error.
POLICY_URL = "/t/acme/settings/agent/"
FETCH = (
    "import sys, urllib.request\n"
    "for url in sys.argv[1:]:\n"
    "    try:\n"
    "        print('got', len(urllib.request.urlopen(url, timeout=10).read()), url)\n"
    "    except Exception as e:\n"
    "        print('refused', url, e)\n"
)


@pytest.fixture(scope="module")
def registry():
    running = standin_registry.start()
    yield running
    running.stop()
    egress.stop_proxy()


@pytest.fixture(autouse=True)
def stage(settings, provider_port, sandbox_image, registry, no_runs, inline_jobs, tmp_path_factory):
    """The fake provider as the model, the test image as the default, the stand-in registry
    as the only allowed host (a loopback address: allowed for tests)."""
    import tempfile

    settings.LLM_MODEL = "openai/fake-model"
    settings.LLM_API_BASE = f"http://127.0.0.1:{provider_port}/v1"
    settings.LLM_API_KEY = "test-key"
    settings.LLM_MAX_RETRIES = 0
    settings.AGENT_COMMAND_SECONDS = 30
    settings.SANDBOX_IMAGES_DIR, image = sandbox_image
    settings.SANDBOX_EGRESS_ALLOW = [registry.host]
    settings.SANDBOX_EGRESS_ALLOW_PRIVATE = True
    parent = Path(tempfile.mkdtemp(prefix="tandem-env-test-"))
    parent.chmod(0o711)  # as root the sandbox runs as nobody, which must reach the trees
    settings.REPOS_ROOT = parent / "repos"
    yield image, parent
    import shutil

    shutil.rmtree(parent, ignore_errors=True)


def make_repo(team, parent: Path, image: str, script: str, name: str = "calc") -> Repository:
    origin = parent / f"origin-{name}"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "requirements.txt").write_text("pytest\n")
    (origin / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (origin / "fetch.py").write_text(FETCH)
    (origin / ".tandem").mkdir()
    (origin / ".tandem" / "setup.sh").write_text("python -m venv .venv\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "Initial commit")
    return Repository.objects.create(
        team=team, name=name, url=str(origin), sandbox_image=image, setup_script=script
    )


def new_conversation(team, alice, repo):
    from assistant.services import conversation_create

    conversation = conversation_create(team=team, author=alice, title="Work")
    workspace = repos.create_workspace(conversation=conversation, repo=repo)
    return conversation, workspace


def setup_call(run):
    return run.tool_calls.get(step=0, name=environment.CALL_NAME)


def test_the_proxy_admits_only_allowlisted_public_hosts():
    listed = ["registry.example", "*.files.example", "127.0.0.1:8101"]
    assert allowed("registry.example", 443, listed) and allowed("REGISTRY.example.", 80, listed)
    assert not allowed("registry.example", 22, listed)  # a bare host: ports 80 and 443 only
    assert allowed("a.files.example", 443, listed) and not allowed("files.example", 443, listed)
    assert not allowed("registry.example.evil", 443, listed)
    assert not allowed("evil.example", 443, listed)
    assert allowed("127.0.0.1", 8101, listed) and not allowed("127.0.0.1", 8102, listed)
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fd00::1",
                    "::ffff:127.0.0.1", "0.0.0.0"):  # fmt: skip
        assert not public(address), address
    assert public("151.101.0.223") and public("2a04:4e42::223")


def test_setup_is_kept_and_reused_and_rebuild_runs_it_again(team, alice, stage, registry):
    """The first conversation runs the setup (through the proxy to the stand-in registry) and
    keeps .venv; the second starts from it without running the setup, its files hardlinked and
    read-only to the sandbox; Rebuild makes the next one run the setup again."""
    image, parent = stage
    script = f"mkdir -p .venv\npython3 -I fetch.py {registry.index_url}pytest/ > .venv/index.txt\n"
    repo = make_repo(team, parent, image, script + "cat .venv/index.txt\n")
    before = len(registry.requests)

    conversation, workspace = new_conversation(team, alice, repo)
    run = execute(send(conversation, alice, "Hello"))
    first = setup_call(run)
    assert first.status == ToolCallStatus.SUCCEEDED, first.output
    assert "got" in first.output and "/simple/pytest/" in first.output
    assert registry.requests[before:] == ["/simple/pytest/"]  # it came through the proxy
    workspace.refresh_from_db()
    kept = environment.kept(repo, workspace.environment)
    assert kept is not None and (kept / ".venv" / "index.txt").is_file()
    # Setup's files are not the turn's changes, and never in the diff or the patch.
    assert not run.changed_files

    conversation2, workspace2 = new_conversation(team, alice, repo)
    run2 = execute(send(conversation2, alice, "Go"))
    second = setup_call(run2)
    assert second.status == ToolCallStatus.SUCCEEDED
    assert "Started from the prepared environment" in second.output, second.output
    assert len(registry.requests) == before + 1  # no second setup run
    tree2 = repos.workspace_path(workspace=workspace2)
    command = "cat .venv/index.txt && (echo x >> .venv/index.txt || echo cannot-write)"
    ctx = agent._tool_context(workspace2)
    listed = asyncio.run(tools.execute("run_command", {"command": command}, ctx))
    assert "got" in listed.output, listed.output
    if os.geteuid() == 0:  # hardlinked from the kept tree: the sandbox can't write through it
        assert "hardlink" in second.output
        assert "cannot-write" in listed.output, listed.output
        assert os.stat(tree2 / ".venv/index.txt").st_ino == os.stat(kept / ".venv/index.txt").st_ino
    assert (kept / ".venv" / "index.txt").read_text().count("\n") == 1

    from django.test import Client

    client = Client()
    client.force_login(alice)
    page = client.post("/t/acme/repos/rebuild/", {"repository": repo.uuid}, follow=True)
    assert "runs its setup script again" in page.content.decode()
    conversation3, _ = new_conversation(team, alice, repo)
    third = setup_call(execute(send(conversation3, alice, "Again")))
    assert third.status == ToolCallStatus.SUCCEEDED and "got" in third.output, third.output
    assert len(registry.requests) == before + 2


def test_a_host_outside_the_allowlist_is_refused_during_setup(
    team, alice, stage, registry, settings
):
    image, parent = stage
    settings.SANDBOX_EGRESS_ALLOW_PRIVATE = False  # the stand-in is on loopback: refused now
    script = f"python3 -I fetch.py http://outside.example/ {registry.index_url}pytest/\nexit 3"
    repo = make_repo(team, parent, image, script)
    conversation, workspace = new_conversation(team, alice, repo)
    run = execute(send(conversation, alice, "Hello"))
    call = setup_call(run)
    assert call.status == ToolCallStatus.FAILED
    assert "The setup script failed with exit code 3." in call.output
    assert "outside.example:80 (not on the allowlist of package registries)" in call.output
    assert f"{registry.host} (it resolves to a private or local address)" in call.output
    assert "The egress proxy refused" in call.output
    workspace.refresh_from_db()
    assert workspace.environment.startswith("failed:")
    # The turn went on: the model answered.
    assert run.status == "succeeded", run.error


def test_the_agents_commands_have_no_network_unless_allowed(team, alice, stage, registry):
    image, parent = stage
    repo = make_repo(team, parent, image, "")
    conversation, workspace = new_conversation(team, alice, repo)
    # No script yet: the first turn reads what the repository proposes (in the sandbox), runs
    # nothing, and the Repositories page offers it to admins.
    run = execute(send(conversation, alice, "Hello"))
    assert not run.tool_calls.exists()
    repo.refresh_from_db()
    assert "sh .tandem/setup.sh" in repo.setup_proposal and not repo.setup_script
    from django.test import Client

    client = Client()
    client.force_login(alice)
    page = client.get("/t/acme/repos/").content.decode()
    assert 'data-testid="setup-proposal"' in page and "sh .tandem/setup.sh" in page
    ctx = agent._tool_context(workspace)
    fetch = f"python3 -I fetch.py {registry.index_url}pytest/"
    # With proxy variables of its own: nowhere to go from the sandbox's network namespace.
    command = f"HTTP_PROXY=http://127.0.0.1:{egress.PORT} {fetch}"
    plain = asyncio.run(tools.execute("run_command", {"command": command}, ctx))
    assert "refused" in plain.output and "Connection refused" in plain.output, plain.output
    asked = {"command": fetch, "registries": True}
    refused = asyncio.run(tools.execute("run_command", asked, ctx))
    assert not refused.ok and "does not let commands reach the package registries" in refused.output
    before = len(registry.requests)
    # Where the team allows it, the same command reaches the registry (after its approval:
    # policy.approval_for always asks for it, whatever the allowlist says).
    assert policy.approval_for("run_command", asked, [fetch]) == Approval.NOT_NEEDED
    assert policy.approval_for("run_command", asked, [fetch], registries_allowed=True) == (
        Approval.ASKED
    )
    # An admin turns the team setting on (Settings); the next call's context carries it.
    client.post(POLICY_URL, {"allowlist": "", "commands_reach_registries": "1"})
    workspace.refresh_from_db()
    workspace.repository.team.refresh_from_db()
    assert workspace.repository.team.commands_reach_registries
    ctx = agent._tool_context(workspace)
    reached = asyncio.run(tools.execute("run_command", asked, ctx))
    assert reached.ok and "got" in reached.output, reached.output
    assert registry.requests[before:] == ["/simple/pytest/"]


def test_a_workspace_with_a_quota_gets_the_kept_tree_under_an_overlay(team, alice, stage, settings):
    """A workspace with a disk quota (its own ext4) starts from the kept tree mounted under an
    overlay: the agent's writes to .venv land in the workspace's upper layer (counted by its
    quota), the kept tree stays pristine for the next conversation, and the overlay comes back
    after a restart."""
    from assistant import overlays, quota

    settings.WORKSPACE_QUOTA_MB, settings.WORKSPACE_QUOTA_FILES = 48, 3000
    if why := quota.probe() or overlays.probe():
        pytest.fail(f"no loop-mounted workspaces with overlays here: {why}", pytrace=False)
    image, parent = stage
    script = "mkdir -p .venv/lib/pkg\necho pristine > .venv/lib/pkg/mod.py\nln -s lib .venv/lib64\n"
    repo = make_repo(team, parent, image, script)
    try:
        _, first = new_conversation(team, alice, repo)
        assert setup_call(execute(send(first.conversation, alice, "Hi"))).status == "succeeded"
        first.refresh_from_db()
        kept = environment.kept(repo, first.environment)
        assert kept is not None

        _, second = new_conversation(team, alice, repo)
        call = setup_call(execute(send(second.conversation, alice, "Go")))
        assert "Started from the prepared environment" in call.output, call.output
        assert "overlay of .venv" in call.output, call.output
        ctx = agent._tool_context(second)
        writes = (
            "cd .venv/lib/pkg && cat mod.py && (echo x >> mod.py || echo cannot-write-in-place)"
            " && echo mine > new.py && rm mod.py && echo replaced > mod.py && cat mod.py"
            " && cat /proc/self/mountinfo"
        )
        done = asyncio.run(tools.execute("run_command", {"command": writes}, ctx))
        assert done.ok, done.output
        assert "pristine" in done.output and "cannot-write-in-place" in done.output
        assert "replaced" in done.output
        for needle in (str(parent), str(repo.uuid), str(team.uuid), first.environment):
            assert needle not in done.output  # the overlay's layers show as /proc/self/fd/N
        ws_dir = repos.workspace_path(workspace=second).parent
        upper = ws_dir / overlays.ENV / "upper" / ".venv" / "lib" / "pkg"
        assert (upper / "new.py").read_text() == "mine\n"
        assert (kept / ".venv/lib/pkg/mod.py").read_text() == "pristine\n"
        assert not (kept / ".venv/lib/pkg/new.py").exists()
        # The quota bounds what the agent writes there too.
        fill = "head -c 60000000 /dev/zero > .venv/big"
        full = asyncio.run(tools.execute("run_command", {"command": fill}, ctx))
        assert "No space left on device" in full.output, full.output
        # A restart (the overlay gone, the workspace's file system still there): mounted again
        # at the next use, with what the agent wrote.
        overlays._umount(ws_dir / "tree" / ".venv")
        ctx = agent._tool_context(second)
        again = asyncio.run(
            tools.execute(
                "run_command", {"command": "cat .venv/lib/pkg/new.py .venv/lib/pkg/mod.py"}, ctx
            )
        )
        assert again.output.split() == ["mine", "replaced"], again.output

        _, third = new_conversation(team, alice, repo)
        execute(send(third.conversation, alice, "Three"))
        ctx = agent._tool_context(third)
        listing = "ls .venv/lib/pkg && readlink .venv/lib64 && cat .venv/lib64/pkg/mod.py"
        seen = asyncio.run(tools.execute("run_command", {"command": listing}, ctx))
        assert seen.output.split() == ["mod.py", "lib", "pristine"], seen.output
        # Kept while a workspace started from it may have it as its overlay's lower layer.
        assert environment.remove_idle(older_than_days=-1) == 0 and kept.is_dir()
        for workspace in (first, second, third):
            repos.remove_workspace(workspace=workspace)
        assert environment.remove_idle(older_than_days=-1) == 1 and not kept.exists()
    finally:
        quota.release(parent)
