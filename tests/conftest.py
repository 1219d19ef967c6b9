"""Fixtures: the cast (Alice owns the team, Bob is a teammate, Charlie an outsider), and the
real stack — the fake LLM provider, Daphne and a Celery worker as subprocesses against the test
database and Redis — for tests that exercise what a person or a client sees."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

from tests.forge_standin import forge_api, forge_standin_server  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "correct horse battery staple 42"
STACK_METRICS_TOKEN = "stack-metrics-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s")


@dataclass
class Stack:
    """Processes of the production topology, serving the test database."""

    base_url: str
    llm_base: str
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def start_stack(tmp: Path, *, db_name: str, redis_url: str, extra_env: dict | None = None) -> Stack:
    web_port, llm_port = free_port(), free_port()
    base = dict(os.environ)
    db = settings.DATABASES["default"]
    env = {
        **base,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db_name}",
        "REDIS_URL": redis_url,
        "RUN_EXECUTOR": "celery",
        "SECRET_KEY": settings.SECRET_KEY,
        "LLM_MODEL": "openai/fake-model",
        "LLM_API_BASE": f"http://127.0.0.1:{llm_port}/v1",
        "LLM_API_KEY": "test-key",
        "LLM_MAX_RETRIES": "1",
        "SITE_URL": f"http://127.0.0.1:{web_port}",
        "PYTHONUNBUFFERED": "1",
        # Each server process borrows from a pool of its own, as in production.
        "DATABASE_POOL_SIZE": "10",
        # Metrics as a host runs them: every process counts into one directory, and the web
        # process's /metrics adds them up (tests/test_metrics.py).
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        "METRICS_TOKEN": STACK_METRICS_TOKEN,
        **(extra_env or {}),
    }
    # Empty, not absent: test_settings would set it again. The servers must hit Django's
    # async-safety check exactly as in production.
    env["DJANGO_ALLOW_ASYNC_UNSAFE"] = ""
    stack = Stack(f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{llm_port}", env)
    py = sys.executable
    commands = {
        "fakellm": [py, "manage.py", "fakellm", "--port", str(llm_port)],
        "daphne": [py, "-m", "config.serve", "-b", "127.0.0.1", "-p", str(web_port)],
        "worker": [
            py, "-m", "celery", "-A", "config", "worker", "--pool", "threads",
            "--concurrency", "16", "--loglevel", "INFO", "--without-heartbeat",
            "--without-gossip", "--without-mingle",
        ],
    }  # fmt: skip
    for name, args in commands.items():
        log = tmp / f"{name}.log"
        stack.logs.append(log)
        stack.procs.append(_spawn(args, env, log))
    try:
        wait_for_port(llm_port, stack.procs[0], "fake LLM")
        wait_for_port(web_port, stack.procs[1], "Daphne")
        _wait_for_worker(stack)
    except Exception:
        stack.stop()
        for log in stack.logs:
            print(log.name, log.read_text()[-3000:], file=sys.stderr)
        raise
    return stack


def start_web(tmp: Path, *, extra_env: dict | None = None, args: list[str] = ()):
    """Daphne alone against the test database (no worker, no fake provider), for tests of
    what a server does with requests: returns (base URL, process, log)."""
    port = free_port()
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "SECRET_KEY": settings.SECRET_KEY,
        "SITE_URL": f"http://127.0.0.1:{port}",
        "DATABASE_POOL_SIZE": "5",
        "DJANGO_ALLOW_ASYNC_UNSAFE": "",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log = tmp / f"daphne-{port}.log"
    command = [sys.executable, "-m", "config.serve", "-b", "127.0.0.1", "-p", str(port), *args]
    proc = _spawn(command, env, log)
    try:
        wait_for_port(port, proc, "Daphne")
    except Exception:
        stop_web(proc)
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    return f"http://127.0.0.1:{port}", proc, log


def stop_web(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_for_worker(stack: Stack, timeout: float = 30) -> None:
    log = stack.logs[2]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.procs[2].poll() is not None:
            raise RuntimeError("Celery worker exited: " + log.read_text()[-2000:])
        if "ready" in log.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError("Celery worker not ready: " + log.read_text()[-2000:])


# The small sandbox image the image tests run in: built once per package list and kept across
# runs (mmdebstrap takes a while), in a fixed folder keyed by what it holds.
TEST_IMAGE_PACKAGES = ("python3", "python-is-python3", "python3-venv", "git", "ripgrep")
TEST_IMAGE_CACHE = Path("/var/cache/tandem-test-images")
TEST_IMAGE_NAME = "small"
# The Node repository's image: Debian's nodejs and npm (npm brings ~350 small packages: ~60 s
# and ~550 MB once per machine), python3 for the egress forwarder and the file tools.
NODE_IMAGE_PACKAGES = ("nodejs", "npm", "python3", "git", "ripgrep")
NODE_IMAGE_NAME = "node"


def _test_image(name: str, packages: tuple[str, ...]) -> tuple[Path, str]:
    """(images folder, name) of a test image built with mmdebstrap; fails (never skips) in one
    line where it can't be built (scripts/install_test_deps.py installs mmdebstrap)."""
    import fcntl
    import hashlib

    from assistant import images

    key = hashlib.sha256(("bookworm\n" + "\n".join(packages)).encode()).hexdigest()[:16]
    base = TEST_IMAGE_CACHE / key
    if (base / name / "root" / "usr").is_dir():
        return base, name
    if why := images.cannot_build():
        pytest.fail(f"the sandbox image tests need a built image, and {why}", pytrace=False)
    base.mkdir(parents=True, exist_ok=True)
    TEST_IMAGE_CACHE.chmod(0o755)
    with open(base / ".lock", "w") as lock:  # another session building the same one: wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / name / "root" / "usr").is_dir():
            images.build(name, packages, suite="bookworm", base=base)
    return base, name


@pytest.fixture(scope="session")
def sandbox_image() -> tuple[Path, str]:
    return _test_image(TEST_IMAGE_NAME, TEST_IMAGE_PACKAGES)


@pytest.fixture(scope="session")
def node_sandbox_image() -> tuple[Path, str]:
    return _test_image(NODE_IMAGE_NAME, NODE_IMAGE_PACKAGES)


@pytest.fixture(scope="session")
def redis_clean():
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def stack(
    django_db_setup,
    django_db_blocker,
    tmp_path_factory,
    redis_clean,
    forge_standin_server,  # noqa: F811 (the fixture imported above)
) -> Iterator[Stack]:
    db_name = settings.DATABASES["default"]["NAME"]
    # github.com's and gitlab.com's APIs are the stand-in's (tests/forge_standin.py).
    forges = {
        "GITHUB_API_BASE": forge_standin_server.github_api,
        "GITLAB_API_BASE": forge_standin_server.gitlab_api,
    }
    running = start_stack(
        tmp_path_factory.mktemp("stack"),
        db_name=db_name,
        redis_url=settings.REDIS_URL,
        extra_env=forges,
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Threads that ran ORM calls for tests (the agent's executor threads, asyncio.to_thread)
    keep their connections open; the test database can only be dropped once they are gone."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


# --- The cast ------------------------------------------------------------------------------


@pytest.fixture
def alice(django_user_model):
    return _user(django_user_model, "alice@example.com")


@pytest.fixture
def bob(django_user_model):
    return _user(django_user_model, "bob@example.com")


@pytest.fixture
def charlie(django_user_model):
    return _user(django_user_model, "charlie@example.com")


def _user(model, email: str):
    from allauth.account.models import EmailAddress

    user = model.objects.create_user(email=email, password=PASSWORD)
    EmailAddress.objects.create(user=user, email=email, primary=True, verified=True)
    return user


@pytest.fixture
def team(alice, bob):
    from accounts.models import Role
    from accounts.services import membership_add, team_create

    created = team_create(name="Acme", slug="acme", owner=alice)
    membership_add(team=created, user=bob, role=Role.MEMBER)
    return created


@pytest.fixture
def other_team(charlie):
    from accounts.services import team_create

    return team_create(name="Other", slug="other", owner=charlie)


@pytest.fixture
def conversation(team, alice):
    from assistant.services import conversation_create

    return conversation_create(team=team, author=alice, title="Refactor the parser")


@pytest.fixture
def no_runs(monkeypatch):
    """For tests of the web layer alone: record runs instead of queuing them to a worker."""
    queued: list[str] = []
    monkeypatch.setattr("assistant.runner.enqueue_run", queued.append)
    return queued


@pytest.fixture
def inline_jobs(monkeypatch):
    """Jobs the web hands to the worker (assistant/jobs.py: undo, a stopped turn's diff) run
    at once in the test's thread instead: no worker runs in tests without the stack."""
    from assistant import jobs

    done: list[tuple[str, tuple]] = []

    def run(name: str, *args) -> None:
        done.append((name, args))
        getattr(jobs, name)(*args)

    monkeypatch.setattr(jobs, "enqueue", run)
    return done


@pytest.fixture
def queued_jobs(monkeypatch):
    """Jobs the web hands to the worker, recorded and not run."""
    from assistant import jobs

    queued: list[tuple[str, tuple]] = []
    monkeypatch.setattr(jobs, "enqueue", lambda name, *args: queued.append((name, args)))
    return queued


# --- Browser -------------------------------------------------------------------------------


# Module scope, not session: Playwright's sync API runs an event loop in the test thread while
# it is open, and sync code that bridges to async (async_to_sync, asyncio.run) refuses to run
# there; closing it after each browser module gives later tests a plain thread again.
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "Chromium is missing: run `make test`, which installs it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in the test thread; the ORM calls the
    # tests make around it are still plain synchronous calls. Allowed only while it is open,
    # so everywhere else Django's async-safety check catches a query made on an event loop.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield instance
            instance.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def artifacts(request) -> Path:
    path = ROOT / "test-artifacts" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- Browser pages with screenshots on failure -------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failure at teardown."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def new_context(browser, artifacts, request):
    """Make browser contexts (1280x800) for a test: ``new_context("alice", base_url=...)``.
    When the test fails, every open page is saved into test-artifacts/<test>/ as a screenshot,
    with the page's console messages next to it."""
    made: list[tuple[str, object, list[str]]] = []

    def make(name: str, **kwargs):
        kwargs.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(**kwargs)
        context.set_default_timeout(10_000)
        console: list[str] = []
        context.on(
            "page",
            lambda page: page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}")),
        )
        made.append((name, context, console))
        return context

    yield make
    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None
        and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    for name, context, console in made:
        if failed:
            for index, page in enumerate(context.pages):
                try:
                    page.screenshot(path=str(artifacts / f"{name}-{index}.png"), full_page=True)
                except Exception as exc:  # a crashed page must not hide the real failure
                    print(f"screenshot of {name}-{index} failed: {exc}")
            (artifacts / f"{name}-console.log").write_text("\n".join(console))
        context.close()


@pytest.fixture(scope="module")
def provider_port():
    """The scripted fake provider on its own event loop in a background thread."""
    import asyncio
    import threading

    from assistant.fakellm.server import start_server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fakellm", daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(start_server(), loop).result(10)
    yield port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def pytest_sessionfinish(session, exitstatus):
    """Close the HTTP client sessions tests left on event loops that are gone (each
    asyncio.run() makes a loop; the lean client keeps one session per loop). Left to the
    interpreter's shutdown, their __del__ warnings go through litellm's logging filter after
    its module is torn down and print tracebacks that hide the real summary."""
    import gc

    from assistant.llm import direct

    for client in list(direct._sessions.values()):
        connector = client.connector
        if connector is not None and not connector.closed:
            connector._close()  # synchronous: the loop it belongs to no longer runs
    direct._sessions.clear()
    gc.collect()


@pytest.fixture(autouse=True)
def _searchable_tmp_path(request) -> None:
    """Server-side git on a workspace runs in the sandbox, which a server running as root starts
    as nobody: every directory above a worktree must be searchable (pytest makes them 0700)."""
    if "tmp_path" not in request.fixturenames or os.geteuid() != 0:
        return
    tmp_path = request.getfixturevalue("tmp_path")
    top = Path(tempfile.gettempdir())
    # Every level up to the temp folder: pytest-of-root, pytest-N and, under xdist, popen-gwN.
    for path in [tmp_path, *tmp_path.parents]:
        if path == top or top not in path.parents:
            break
        mode = path.stat().st_mode
        if mode & 0o111 != 0o111:
            path.chmod(mode | 0o111)  # search only: nothing becomes listable or writable


@pytest.fixture
def worktree() -> Iterator[Path]:
    """A small tree for sandbox tests. Not under pytest's tmp_path: as root, the sandbox runs
    as nobody, which must be able to reach the worktree (/tmp/pytest-of-root is 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="tandem-sandbox-test-"))
    parent.chmod(0o711)
    wt = parent / "wt"
    wt.mkdir()
    (wt / "README.md").write_text("hello from the repo\n")
    yield wt
    shutil.rmtree(parent)
