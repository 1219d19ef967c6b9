"""The issue's "done when", in the browser against the production topology (Daphne, a Celery
worker, the scripted fake provider): a Python repository whose test fails; its setup script
installs pytest from the package registry (the local stand-in, the allowlist pointed at it)
through the worker's egress proxy; the agent runs ``python -m pytest -q`` and the conversation
shows the real failure; it edits the file; the rerun passes. The setup's card shows its output,
live and after a reload. The same for a Node repository: ``npm install`` of a dev dependency from
a stand-in npm registry (the same stand-in), then ``npm test``, in an image with Debian's nodejs
and npm (built once per machine and cached, as the small image is).

The stack is this module's own (its worker has the test image and the stand-in on its
allowlist) on a Celery queue of its own, so the session's other worker never takes its runs."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from assistant import sandbox
from assistant.models import Repository
from tests import standin_registry
from tests.conftest import start_stack
from tests.test_agent import git
from tests.test_browser import open_page, run_bubble, send, sign_in

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"),
]
CALC = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def tool(name: str, **args) -> str:
    return f"[[tool {name} {json.dumps(args)}]]"


@pytest.fixture(scope="module")
def env_stack(django_db_setup, tmp_path_factory, sandbox_image):
    from django.conf import settings

    registry = standin_registry.start()
    parent = Path(tempfile.mkdtemp(prefix="tandem-browser-env-"))
    parent.chmod(0o711)  # the worker's sandbox runs as nobody under root
    # The worker's images folder: links to the cached test images (the Node test adds its own).
    images_dir = parent / "images"
    images_dir.mkdir(mode=0o755)
    (images_dir / sandbox_image[1]).symlink_to(sandbox_image[0] / sandbox_image[1])
    running = start_stack(
        tmp_path_factory.mktemp("env-stack"),
        db_name=settings.DATABASES["default"]["NAME"],
        redis_url=settings.REDIS_URL,
        extra_env={
            "CELERY_QUEUE": "tandem-test-environment",
            "REPOS_ROOT": str(parent / "repos"),
            "SANDBOX_IMAGES_DIR": str(images_dir),
            "SANDBOX_EGRESS_ALLOW": registry.host,
            "SANDBOX_EGRESS_ALLOW_PRIVATE": "1",
            "AGENT_COMMAND_SECONDS": "60",
        },
    )
    yield running, registry, parent
    running.stop()
    registry.stop()
    shutil.rmtree(parent, ignore_errors=True)


def make_origin(parent: Path, name: str, files: dict[str, str]) -> Path:
    origin = parent / name
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    for path, text in files.items():
        (origin / path).write_text(text)
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "Add code with a failing test")
    return origin


def fix_and_rerun(page, stack, alice, conversation, name: str, command: str, edit: dict):
    """Attach the repository, ask the agent to run ``command``, edit, run it again; returns the
    run's id, its setup card (succeeded) and the two command cards (the first failed, the
    second succeeded), opened."""
    sign_in(page, alice.email, f"/t/acme/c/{conversation.uuid}/")
    # A stack of its own, just started: its first WebSocket may take longer than the usual 5 s.
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=30_000)
    page.get_by_test_id("attach-repository").get_by_role("button", name="Attach").click()
    expect(page.get_by_test_id("repository")).to_contain_text(f"{name} @ main")
    run_id = send(
        page,
        "Run the tests and fix what fails "
        + tool("run_command", command=command)
        + tool("edit_file", **edit)
        + tool("run_command", command=command),
    )
    bubble = run_bubble(page, run_id)
    setup = bubble.locator("[data-tool=setup]")
    expect(setup).to_have_attribute("data-status", "succeeded", timeout=90_000)
    commands = bubble.locator("[data-tool=run_command]")
    expect(commands).to_have_count(2, timeout=60_000)
    first, second = commands.nth(0), commands.nth(1)
    expect(second).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(first).to_have_attribute("data-status", "failed")
    first.locator("summary").click()
    second.locator("summary").click()
    return run_id, setup, first, second


def test_setup_installs_pytest_then_the_agent_fixes_the_failing_test(
    env_stack, new_context, conversation, team, alice, sandbox_image, settings
):
    stack, registry, parent = env_stack
    settings.REPOS_ROOT = parent / "repos"
    files = {"calc.py": CALC, "test_calc.py": TEST, "requirements.txt": "pytest\n"}
    origin = make_origin(parent, "calc", files)
    script = (
        "python -m venv .venv\n"
        f".venv/bin/pip install --no-cache-dir --index-url {registry.index_url} "
        "--trusted-host 127.0.0.1 -r requirements.txt\n"
    )
    Repository.objects.create(
        team=team, name="calc", url=str(origin), sandbox_image=sandbox_image[1],
        setup_script=script,
    )  # fmt: skip
    team.command_allowlist = "python -m pytest"
    team.save()

    page = open_page(new_context, "alice", stack)
    edit = {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"}
    run_id, setup, first, second = fix_and_rerun(
        page, stack, alice, conversation, "calc", "python -m pytest -q", edit
    )
    expect(setup.get_by_test_id("tool-output")).to_contain_text("Successfully installed")
    expect(first.get_by_test_id("tool-output")).to_contain_text("1 failed")
    expect(first.get_by_test_id("tool-output")).to_contain_text("assert -1 == 5")
    expect(second.get_by_test_id("tool-output")).to_contain_text("1 passed")
    # Through the proxy to the stand-in: the index pages and the five wheels.
    assert "/simple/pytest/" in registry.requests
    assert sum(path.startswith("/files/") for path in registry.requests) == 5

    # After a reload the setup's card is still there, before the commands, with its output.
    page.reload()
    setup = run_bubble(page, run_id).locator("[data-tool=setup]")
    expect(setup).to_have_attribute("data-status", "succeeded")
    setup.locator("summary").click()
    expect(setup.get_by_test_id("tool-output")).to_contain_text("Successfully installed")
    expect(setup.get_by_test_id("tool-output")).to_contain_text("pytest-")
    tools_in_order = run_bubble(page, run_id).locator("[data-testid=tool-call]")
    expect(tools_in_order.first).to_have_attribute("data-tool", "setup")


PAD = 'const leftPad = require("tandem-left-pad");\n\nmodule.exports = (n) => leftPad(n, 2, "0");\n'
PAD_TEST = (
    'const assert = require("assert");\nconst pad = require("./pad");\n\n'
    'assert.strictEqual(pad(7), "007");\nconsole.log("ok: pad(7) is 007");\n'
)
PACKAGE_JSON = {
    "name": "pad",
    "version": "1.0.0",
    "private": True,
    "scripts": {"test": "node test.js"},
    "devDependencies": {standin_registry.NPM_PACKAGE: standin_registry.NPM_VERSION},
}


def test_a_node_repository_installs_its_dev_dependency_with_npm_then_npm_test_passes(
    env_stack, node_sandbox_image, new_context, conversation, team, alice, settings
):
    """The same for a Node repository, in an image with Debian's nodejs and npm: its setup
    runs ``npm install`` against the stand-in npm registry through the proxy."""
    stack, registry, parent = env_stack
    settings.REPOS_ROOT = parent / "repos"
    images_dir, image = node_sandbox_image
    (parent / "images" / image).symlink_to(images_dir / image)
    files = {"pad.js": PAD, "test.js": PAD_TEST, "package.json": json.dumps(PACKAGE_JSON)}
    origin = make_origin(parent, "pad", files)
    script = f"npm install --no-audit --no-fund --no-package-lock --registry {registry.npm_url}\n"
    Repository.objects.create(
        team=team, name="pad", url=str(origin), sandbox_image=image, setup_script=script
    )
    team.command_allowlist = "npm test"
    team.save()

    page = open_page(new_context, "alice", stack)
    edit = {"path": "pad.js", "old_text": "leftPad(n, 2,", "new_text": "leftPad(n, 3,"}
    _, setup, first, second = fix_and_rerun(
        page, stack, alice, conversation, "pad", "npm test", edit
    )
    expect(setup.get_by_test_id("tool-output")).to_contain_text("added 1 package")
    expect(first.get_by_test_id("tool-output")).to_contain_text("'07' !== '007'")
    expect(second.get_by_test_id("tool-output")).to_contain_text("ok: pad(7) is 007")
    # Through the proxy to the stand-in npm registry: the package's document and its tarball.
    name, version = standin_registry.NPM_PACKAGE, standin_registry.NPM_VERSION
    assert f"/npm/{name}" in registry.requests
    assert f"/npm/{name}/-/{name}-{version}.tgz" in registry.requests
