"""The command-line client (cli/, `python -m tandem_cli`) as a subprocess against the real
stack (Daphne, a Celery worker, the fake provider): login, a reply streamed as it comes, a
dropped connection resumed without gap or duplicate, approvals (inline in a terminal, and
printed when there is none), Ctrl-C, share, export, and `tandem chat` driven in tmux."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from assistant.fakellm.script import scripted_tokens
from assistant.models import Message, Repository, Run, RunStatus, ToolCall, ToolCallStatus
from sharing.models import SharingPolicy
from tests.api_client import make_key
from tests.conftest import ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLI = ROOT / "cli"
TMUX = shutil.which("tmux")


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def cli_env(home: Path, stack=None, key: str | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
        "PYTHONPATH": str(CLI),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
    }
    if stack is not None:
        env["TANDEM_URL"] = stack.base_url
    if key is not None:
        env["TANDEM_API_KEY"] = key
    return env


def tandem(*args: str, env: dict, input: str | None = None, timeout: float = 90):
    return subprocess.run(
        [sys.executable, "-m", "tandem_cli", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def wait_until(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def key(team, alice) -> str:
    return make_key(team, alice)


# --- Login and errors ----------------------------------------------------------------------------


def test_login_saves_a_private_profile_checked_with_the_server(stack, key, home):
    env = cli_env(home)
    done = tandem("login", "--url", stack.base_url, "--profile", "work", env={**env,
                  "TANDEM_API_KEY": key})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "as alice@example.com, team acme (write key)" in done.stdout
    path = home / "config" / "tandem" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["default"] == "work"
    assert saved["profiles"]["work"] == {
        "url": stack.base_url,
        "key": key,
        "team": "acme",
        "user": "alice@example.com",
    }
    # The saved profile is used from now on.
    done = tandem("conversations", env=env)
    assert done.returncode == 0, done.stderr
    assert "No conversations." in done.stdout

    refused = tandem("login", "--url", stack.base_url, "--profile", "bad",
                     env={**env, "TANDEM_API_KEY": "tdm_abcdefgh_" + "x" * 43})  # fmt: skip
    assert refused.returncode == 3
    assert "refused the API key" in refused.stderr
    assert "bad" not in json.loads(path.read_text())["profiles"]

    nobody = tandem("conversations", env={**env, "TANDEM_URL": "http://127.0.0.1:9"})
    assert nobody.returncode == 6
    assert "Cannot reach the Tandem server at http://127.0.0.1:9" in nobody.stderr

    other = tandem("--profile", "home", "usage", env=env)
    assert other.returncode == 3 and "There is no profile “home”" in other.stderr
    fresh = tandem("usage", env=cli_env(home / "elsewhere"))
    assert fresh.returncode == 3 and "Not logged in" in fresh.stderr


def test_errors_in_words_and_exit_codes(stack, key, home, team, conversation):
    env = cli_env(home, stack, key)
    missing = tandem("ask", "-c", str(uuid.uuid4()), "Hello", env=env)
    assert missing.returncode == 4
    assert "The conversation was not found (or it belongs to a team" in missing.stderr

    team.monthly_budget_usd = 0
    team.save()
    broke = tandem("ask", "-c", str(conversation.uuid), "Hello", env=env)
    assert broke.returncode == 5
    assert "Limit reached: This team has used its monthly budget" in broke.stderr

    read_key = make_key(team, conversation.created_by, scope="read", name="reader")
    done = tandem("share", str(conversation.uuid), env=cli_env(home, stack, read_key))
    assert done.returncode == 3 and "read-only" in done.stderr


# --- ask -------------------------------------------------------------------------------------


def test_ask_streams_the_reply_as_it_comes(stack, key, home):
    env = cli_env(home, stack, key)
    expected = "".join(scripted_tokens(120))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem_cli", "ask", "--json", "Hi [[tokens=120 delay_ms=25]]"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    still_running_at_first_delta = None
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "delta" and still_running_at_first_delta is None:
            still_running_at_first_delta = proc.poll() is None
        lines.append(event)
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    assert still_running_at_first_delta  # the first words came before the reply ended

    kinds = [e["event"] for e in lines]
    assert kinds[0] == "conversation" and kinds[1] == "message.sent" and kinds[-1] == "result"
    assert "run.started" in kinds and "run.completed" in kinds
    deltas = [e["data"] for e in lines if e["event"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == expected
    result = lines[-1]["data"]
    assert result["status"] == "succeeded" and result["text"] == expected

    # Plain text when stdout is not a terminal, and continuing the same conversation.
    done = tandem("ask", "-c", result["conversation"], "Again [[tokens=12]]", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(scripted_tokens(12)) + "\n"
    assert Message.objects.filter(conversation__uuid=result["conversation"]).count() == 4


class CuttingProxy:
    """A TCP proxy to the server that cuts the first event-stream connection once it has
    passed ``cut_after`` bytes of the answer (mid-reply)."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        # Connections are kept alive: the event stream's request may come after others.
        state = {"cut": False, "passed": 0}

        def pump_up():
            try:
                while data := client.recv(65536):
                    if b"/events " in data.split(b"\r\n", 1)[0] and self.cuts == 0:
                        self.cuts += 1
                        state["cut"], state["passed"] = True, 0
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump_up, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if state["cut"] and state["passed"] + len(data) > self.cut_after:
                    client.sendall(data[: self.cut_after - state["passed"]])
                    break
                client.sendall(data)
                state["passed"] += len(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_connection_resumes_without_gap_or_duplicate(stack, key, home):
    port = int(stack.base_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=4000)  # about 30 deltas into the reply
    try:
        env = cli_env(home, stack, key) | {
            "TANDEM_URL": f"http://127.0.0.1:{proxy.port}",
            "TANDEM_DEBUG": "1",
        }
        done = tandem("ask", "--json", "Long one [[tokens=150 delay_ms=10]]", env=env)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    assert proxy.cuts == 1
    lines = json_lines(done.stdout)
    result = lines[-1]["data"]
    assert result["reconnects"] >= 1
    assert result["gaps"] == 0
    deltas = [e for e in lines if e["event"] == "delta"]
    # Deltas are numbered 1, 2, 3... (the server coalesces tokens into them): every one came,
    # once, in order, and together they are the whole reply.
    assert [d["data"]["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    expected = "".join(scripted_tokens(150))
    assert "".join(d["data"]["text"] for d in deltas) == expected == result["text"]
    # The cut came mid-reply: deltas followed the event the client resumed after.
    dropped_after = re.search(r"dropped after (\S+)", done.stderr).group(1)
    assert f"connecting, Last-Event-ID {dropped_after}" in done.stderr
    position = [d["id"] for d in deltas].index(dropped_after)
    assert position < len(deltas) - 1
    ids = [e["id"] for e in lines if "id" in e]
    assert len(ids) == len(set(ids))


# --- Approvals --------------------------------------------------------------------------------


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Origin",
    "GIT_AUTHOR_EMAIL": "origin@example.com",
    "GIT_COMMITTER_NAME": "Origin",
    "GIT_COMMITTER_EMAIL": "origin@example.com",
}


@pytest.fixture
def repository(team):
    # Not under pytest's tmp_path (0700): as root the sandbox runs as nobody.
    parent = Path(tempfile.mkdtemp(prefix="tandem-cli-test-"))
    parent.chmod(0o711)
    origin = parent / "origin"
    origin.mkdir()
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "Initial"]):
        if args[0] == "add":
            (origin / "app.py").write_text("answer = 41\n")
        subprocess.run(["git", *args], cwd=origin, env=env, check=True, capture_output=True)
    yield Repository.objects.create(team=team, name="answer", url=str(origin))
    shutil.rmtree(parent, ignore_errors=True)


def command(cmd: str) -> str:
    return "[[tool run_command " + json.dumps({"command": cmd}) + "]]"


def test_without_a_terminal_it_says_how_to_approve(stack, key, home, repository):
    env = cli_env(home, stack, key)
    done = tandem("ask", "--repo", "answer", command("echo hi > out.txt"), env=env)
    assert done.returncode == 10, done.stderr
    call = ToolCall.objects.get(status=ToolCallStatus.AWAITING)
    assert "run_command echo hi > out.txt — waits for approval" in done.stdout
    assert f"approve: tandem approve {call.uuid}" in done.stderr

    listed = tandem("approvals", env=env)
    assert str(call.uuid) in listed.stdout and "echo hi > out.txt" in listed.stdout
    approved = tandem("approve", str(call.uuid), env=env)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.startswith("Approved: run_command")
    run = call.run
    wait_until(
        lambda: Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED, what="the run to end"
    )
    again = tandem("approve", str(call.uuid), env=env)
    assert again.returncode == 1 and "already approved" in again.stderr
    assert tandem("deny", str(uuid.uuid4()), env=env).returncode == 4


# --- A real terminal (tmux) ----------------------------------------------------------------------


class Terminal:
    """A tmux session on its own server socket, 110x40, running one command."""

    def __init__(self, tmp: Path, env: dict, argv: list[str]) -> None:
        self.socket = f"tandem-cli-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        script = tmp / f"run-{uuid.uuid4().hex[:6]}.sh"
        exports = "".join(f"export {k}={json.dumps(v)}\n" for k, v in env.items())
        quoted = " ".join(json.dumps(a) for a in argv)
        # The shell survives the Ctrl-C a test sends (trapped, not ignored: the command still
        # gets it), to print how the command exited.
        script.write_text(f'trap : INT\n{exports}{quoted}\necho "[exited $?]"\nsleep 600\n')
        script.chmod(0o700)
        self.tmux("new-session", "-d", "-s", "t", "-x", "110", "-y", "40", f"bash {script}")

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-500")

    def flat(self) -> str:
        return " ".join(self.screen().split())

    def wait_for(self, text: str, timeout: float = 60) -> str:
        try:
            return wait_until(lambda: text in self.flat() and self.flat(), timeout, repr(text))
        except AssertionError:
            raise AssertionError(f"{text!r} never showed; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path):
    if TMUX is None:
        pytest.fail("tmux is missing: apt-get install -y tmux")
    made: list[Terminal] = []

    def start(env: dict, *argv: str) -> Terminal:
        term = Terminal(tmp_path, env | {"TERM": "xterm-256color"}, list(argv))
        made.append(term)
        return term

    yield start
    for term in made:
        term.close()


def test_inline_approval_and_ctrl_c_in_a_terminal(stack, key, home, repository, terminal, team):
    env = cli_env(home, stack, key)
    tandem_argv = [sys.executable, "-m", "tandem_cli"]
    term = terminal(env, *tandem_argv, "ask", "--repo", "answer", command("echo approved-run"))
    term.wait_for("Approve? [y/N/always]")
    assert "run_command echo approved-run — waits for approval" in term.flat()
    term.type("y")
    term.keys("Enter")
    screen = term.wait_for("[exited 0]")
    assert "approved by alice" in screen
    assert "✓ run_command echo approved-run — succeeded (exit 0" in screen
    assert "approved-run" in screen and "Tool result received:" in screen

    # Ctrl-C stops the reply as Stop does; what was written so far stays.
    conversation = Run.objects.get().conversation
    term = terminal(env, *tandem_argv, "ask", "-c", str(conversation.uuid),
                    "Slowly [[tokens=400 delay_ms=60]]")  # fmt: skip
    term.wait_for("alpha bravo charlie delta")
    term.keys("C-c")
    screen = term.wait_for("[exited 130]")
    assert "Stopped." in screen
    run = Run.objects.filter(conversation=conversation).order_by("-created").first()
    assert run.status == RunStatus.CANCELLED


def test_chat_in_a_terminal(stack, key, home, terminal, team):
    SharingPolicy.objects.update_or_create(team=team, defaults={"allow_public_links": True})
    env = cli_env(home, stack, key)
    term = terminal(env, sys.executable, "-m", "tandem_cli", "chat")
    term.wait_for("New conversation")
    term.wait_for("you>")
    term.type("First line \\")
    term.keys("Enter")
    term.type("second [[tokens=20 delay_ms=5]]")
    term.keys("Enter")
    expected = "".join(scripted_tokens(20))
    term.wait_for(expected)
    message = wait_until(lambda: Message.objects.filter(role="user").first(), what="a message")
    assert message.content == "First line \nsecond [[tokens=20 delay_ms=5]]"
    conversation = message.conversation

    # ↑ brings back what was typed (readline's history).
    term.wait_for("you>")
    term.keys("Up")
    term.wait_for("you> second [[tokens=20 delay_ms=5]]")
    term.keys("C-u")
    term.type("/share --public --live --expires 1d")
    term.keys("Enter")
    screen = term.wait_for("Shown once")
    url = re.search(r"(http://\S+/s/\S+/)", screen).group(1)
    assert "for anyone with the link, live" in screen
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "alpha bravo" in page.text

    term.type("/diff")
    term.keys("Enter")
    term.wait_for("tandem: This conversation has no repository.")
    term.type("/patch > out.patch")
    term.keys("Enter")
    term.wait_for("This conversation has no repository.", timeout=30)
    term.type("/id")
    term.keys("Enter")
    term.wait_for(str(conversation.uuid))
    term.type("/quit")
    term.keys("Enter")
    term.wait_for("[exited 0]")
    history = (home / "state" / "tandem" / "history").read_text()
    assert "/share --public --live --expires 1d" in history


# --- The rest -------------------------------------------------------------------------------------


def test_conversations_show_share_export_usage(stack, key, home, team, alice):
    env = cli_env(home, stack, key)
    made = tandem("ask", "--json", "Release notes please [[tokens=8]]", env=env)
    assert made.returncode == 0, made.stderr
    cid = json_lines(made.stdout)[-1]["data"]["conversation"]
    tandem("ask", "Other topic [[tokens=3]]", env=env)

    listed = tandem("conversations", "--search", "release", env=env)
    assert listed.returncode == 0
    assert cid in listed.stdout and "Release notes please" in listed.stdout
    assert "Other topic" not in listed.stdout

    shown = tandem("show", cid, env=env)
    assert "## alice" in shown.stdout and "## assistant" in shown.stdout
    assert "".join(scripted_tokens(8)) in shown.stdout

    link = tandem("share", cid, "--json", env=env)
    assert link.returncode == 0, link.stderr
    body = json.loads(link.stdout)
    assert body["audience"] == "team" and body["mode"] == "snapshot" and "/s/" in body["url"]
    public = tandem("share", cid, "--public", env=env)
    assert public.returncode == 1
    assert "admins have not allowed links for anyone" in public.stderr

    md = tandem("export", cid, "--format", "md", env=env)
    assert md.returncode == 0 and md.stdout.startswith("# Release notes please")
    out = home / "c.json"
    as_json = tandem("export", cid, "--format", "json", "-o", str(out), env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(out.read_text())["title"] == "Release notes please [[tokens=8]]"

    usage = tandem("usage", env=env)
    assert usage.returncode == 0
    assert "Team acme" in usage.stdout and "your tokens today" in usage.stdout
    assert tandem("approvals", env=env).stdout.strip() == "Nothing waits for approval."


def test_chat_diff_patch_and_undo_on_a_repository(stack, key, home, repository, terminal, tmp_path):
    env = cli_env(home, stack, key)
    term = terminal(env, sys.executable, "-m", "tandem_cli", "chat", "--repo", "answer")
    term.wait_for("you>")
    edit = json.dumps({"path": "app.py", "old_text": "answer = 41", "new_text": "answer = 42"})
    term.type(f"Fix the answer [[tool edit_file {edit}]]")
    term.keys("Enter")
    term.wait_for("✓ edit_file app.py — succeeded")
    term.wait_for("Tool result received")
    run = wait_until(
        lambda: Run.objects.filter(status=RunStatus.SUCCEEDED).first(), what="the run to end"
    )

    def diff_shown():
        term.type("/diff")
        term.keys("Enter")
        time.sleep(1.5)
        return "+answer = 42" in term.flat()

    wait_until(diff_shown, 60, "the turn's diff")  # the worker stores it as the turn ends
    assert f"change 1 of 1 (reply {run.uuid}) · +1 −1, 1 files" in term.flat()

    patch = tmp_path / "fix.patch"
    term.type(f"/patch > {patch}")
    term.keys("Enter")
    term.wait_for(f"Wrote {patch}")
    assert "-answer = 41\n+answer = 42" in patch.read_text()

    term.type("/undo")
    term.keys("Enter")
    term.wait_for("Undoing the last change's files")
    wait_until(lambda: Run.objects.get(pk=run.pk).undone_at is not None, what="the undo to be done")
    term.type("/undo")
    term.keys("Enter")
    term.wait_for("nothing to undo")
    term.type("/quit")
    term.keys("Enter")
    term.wait_for("[exited 0]")
