"""The sandbox (assistant/sandbox.py): commands work, escapes fail, limits hold, Stop kills.

Every escape attempt runs against a real worktree and must come back as an ordinary result (or
SandboxError where the sandbox itself can't start) while this process goes on working. No
database: these tests only need bubblewrap.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from assistant import cgroups, sandbox
from assistant.sandbox import SandboxError, SandboxLimits, run, run_sync
from tests.helpers import sleep_seconds, sleepers, wait_until

PROJECT = Path(__file__).resolve().parent.parent
FAST = SandboxLimits(wall_seconds=10)

pytestmark = pytest.mark.skipif(
    not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"
)


def sh(script: str, wt: Path, limits: SandboxLimits = FAST, **kw) -> sandbox.SandboxResult:
    return run_sync(["sh", "-c", script], worktree=wt, limits=limits, **kw)


def still_works(wt: Path) -> None:
    """After an attack, the next command runs normally."""
    r = run_sync(["cat", "README.md"], worktree=wt, limits=FAST)
    assert r.ok and r.stdout == "hello from the repo\n", r


def missing(path: str, stderr: str) -> bool:
    """cat and ls said the path does not exist."""
    return any(
        f"{form}: No such file or directory" in stderr for form in (path, f"cannot access '{path}'")
    )


def host_can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


# --- It works -----------------------------------------------------------------------------------


def test_ordinary_commands_work(worktree):
    r = sh(
        "pwd; ls; python3 -c 'print(6 * 7)'; git --version; rg -n hello; id -un; echo $HOME",
        worktree,
    )
    assert r.ok, r
    lines = r.stdout.splitlines()
    assert lines[0] == sandbox.WORKDIR
    assert "README.md" in lines
    assert "42" in lines
    assert any(line.startswith("git version") for line in lines)
    assert "README.md:1:hello from the repo" in lines
    assert lines[-2:] == ["sandbox", "/tmp"]
    assert r.stderr == "" and r.exit_code == 0 and not r.truncated and r.duration_ms > 0


def test_stdin_and_exit_code(worktree):
    r = run_sync(["sh", "-c", "tr a-z A-Z; exit 3"], worktree=worktree, stdin=b"shout\n")
    assert (r.exit_code, r.stdout, r.ok) == (3, "SHOUT\n", False)
    r = run_sync(["no-such-program"], worktree=worktree)
    assert r.exit_code == 127 and "No such file or directory" in r.stderr


def test_writes_persist_and_stay_usable_by_the_server(worktree):
    r = sh("echo edited >> README.md; mkdir -p src/pkg && echo 'x = 1' > src/pkg/new.py", worktree)
    assert r.ok, r
    assert (worktree / "README.md").read_text() == "hello from the repo\nedited\n"
    new = worktree / "src/pkg/new.py"
    assert new.read_text() == "x = 1\n"
    # The server's own file is still the server's; what the sandbox made, the server can change.
    assert (worktree / "README.md").stat().st_uid == os.getuid()
    if os.geteuid() != 0:
        assert new.stat().st_uid == os.getuid()
    new.write_text("x = 2\n")
    (worktree / "src/pkg/later.py").write_text("made by the server\n")
    r = sh("cat src/pkg/new.py && echo more >> src/pkg/later.py", worktree)
    assert r.ok and r.stdout == "x = 2\n", r
    shutil.rmtree(worktree / "src")


def test_git_works_inside_with_the_git_dir_read_only(worktree):
    # The layout of assistant/repos.py: the git directory beside the tree, not in it.
    gd = worktree.parent / "git"

    def git(*args: str) -> str:
        cmd = ["git", f"--git-dir={gd}", f"--work-tree={worktree}", "-c", "user.name=t"]
        cmd += ["-c", "user.email=t@example.com", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    subprocess.run(["git", "init", "-q", "--bare", str(gd)], check=True)
    git("config", "core.bare", "false")
    git("add", "-A")
    git("commit", "-qm", "first")
    r = run_sync(
        [
            "sh",
            "-c",
            "echo more >> README.md; git status --short; git log --oneline | wc -l; "
            "git diff --stat; git commit -qam sneaky; echo commit=$?; touch .git/hooks/x",
        ],
        worktree=worktree,
        git_dir=gd,
        limits=FAST,
    )
    assert r.stdout.splitlines()[:2] == [" M README.md", "1"], r
    assert "1 file changed" in r.stdout
    assert "commit=128" in r.stdout and "Read-only file system" in r.stderr
    assert git("log", "--oneline").count("\n") == 1  # the server's history is untouched
    assert git("status", "--short") == " M README.md\n"


def test_concurrent_runs_on_one_loop(worktree):
    # Each command waits until all six have started: run one after another, the first would
    # wait alone until its wall limit killed it.
    barrier = "touch started-{i}; until [ $(ls started-* | wc -l) -eq 6 ]; do sleep 0.05; done"

    async def many():
        return await asyncio.gather(
            *(
                run(["sh", "-c", barrier.format(i=i) + f"; echo {i}"], worktree=worktree)
                for i in range(6)
            )
        )

    results = asyncio.run(many())
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)], results


def test_runs_on_uvloop_too(worktree, monkeypatch):
    # Daphne serves on uvloop, which can't switch the child's uid (as root, setpriv does).
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv("TANDEM_TEST_SECRET", "hunter2-do-not-leak")

    seconds = sleep_seconds()

    async def scenario():
        r = await run(["sh", "-c", "id -u; cat /proc/1/environ; env"], worktree=worktree)
        task = asyncio.create_task(run(["sleep", seconds], worktree=worktree))
        await asyncio.to_thread(wait_until, lambda: sleepers(seconds), what="the sleep started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        return r

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        r = runner.run(scenario())
    assert r.ok and r.stdout.splitlines()[0] != "0", r
    assert "hunter2" not in r.stdout
    wait_until(lambda: not sleepers(seconds), what="the cancelled sleep is gone")


# --- Escapes ------------------------------------------------------------------------------------


def test_dotdot_and_absolute_paths_see_nothing_of_the_host(worktree):
    r = sh(
        "cat ../../etc/shadow; cat ../../../../../etc/shadow; "
        f"cat {PROJECT}/config/settings.py; ls {PROJECT}; ls /root; ls /etc/postgresql; "
        "ls /home /var /sys /run; ls ..",
        worktree,
    )
    for path in ("../../etc/shadow", f"{PROJECT}/config/settings.py", "/root", "/etc/postgresql"):
        assert missing(path, r.stderr), (path, r.stderr)
    assert "SECRET_KEY" not in r.stdout and "DATABASE" not in r.stdout
    # The parent of the worktree is the sandbox's own root: no other team's worktree is there.
    assert sorted(r.stdout.split()) == sorted(
        ["bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr", "workspace"]
    )
    still_works(worktree)


def test_symlinks_in_the_repo_pointing_outside_lead_nowhere(worktree):
    # One made by the server (say, committed in the repo) and some made inside.
    (worktree / "pg").symlink_to("/etc/postgresql")
    r = sh(
        f"ln -s {PROJECT} project; ln -s /etc/shadow shadow; ln -s ../../../.. up; "
        "cat pg/*/main/pg_hba.conf; cat project/config/settings.py; cat shadow; ls up/root",
        worktree,
    )
    assert r.exit_code != 0
    assert r.stdout == ""
    assert r.stderr.count("No such file or directory") == 4, r.stderr
    still_works(worktree)


def test_preparing_the_worktree_never_follows_its_links(worktree):
    # As root, the first run grants the sandbox uid access to the tree (ACLs). Links planted in
    # the tree must not carry that grant outside it.
    outside = worktree.parent / "outside"
    outside.mkdir(mode=0o700)
    (outside / "secret.txt").write_text("server only\n")
    (outside / "secret.txt").chmod(0o600)
    (worktree / "link-to-file").symlink_to(outside / "secret.txt")
    (worktree / "link-to-dir").symlink_to(outside)
    os.mkfifo(worktree / "fifo")
    r = sh("cat README.md", worktree)
    assert r.ok, r
    for path in (outside, outside / "secret.txt"):
        with pytest.raises(OSError):
            os.getxattr(path, "system.posix_acl_access")
    assert (outside / "secret.txt").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="the grant walk happens only as root")
def test_preparing_a_huge_worktree_stops_at_a_bound(worktree, monkeypatch):
    monkeypatch.setattr(sandbox, "GRANT_MAX_ENTRIES", 50)
    for i in range(100):
        (worktree / f"f{i}").touch()
    with pytest.raises(SandboxError, match="too large to prepare"):
        sh("true", worktree)


def test_no_network_to_the_servers_database_or_redis(worktree):
    script = """
import socket
for port in (5432, 6379, 8000):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        print(port, "CONNECTED")
    except OSError as exc:
        print(port, type(exc).__name__)
try:
    socket.create_connection(("1.1.1.1", 53), 2)
    print("internet CONNECTED")
except OSError as exc:
    print("internet", type(exc).__name__)
"""
    r = run_sync(["python3", "-c", script], worktree=worktree, limits=FAST)
    assert r.exit_code == 0, r
    assert "CONNECTED" not in r.stdout, r.stdout
    assert "5432 ConnectionRefusedError" in r.stdout and "6379 ConnectionRefusedError" in r.stdout
    # This process does reach them (the suite's database and Redis run there); a listener of
    # the test's own shows the same in test_network_only_when_asked.
    assert host_can_connect(5432) or host_can_connect(6379)
    r = sh("ls /sys/class/net 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: -f1", worktree)
    assert r.stdout.split() == ["lo"], r.stdout
    still_works(worktree)


def test_network_only_when_asked(worktree):
    # network=True shares the host's network namespace, loopback included: for deliberate,
    # approved use only. This shows the default really is the difference.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('in')"
        assert run_sync(["python3", "-c", probe], worktree=worktree).stdout == ""
        assert run_sync(["python3", "-c", probe], worktree=worktree, network=True).stdout == "in\n"


def test_the_servers_environment_is_invisible(worktree, monkeypatch):
    monkeypatch.setenv("TANDEM_TEST_SECRET", "hunter2-do-not-leak")
    me = os.getpid()
    r = sh(
        f"env; cat /proc/1/environ; cat /proc/self/environ; cat /proc/{me}/environ; "
        f"cat /proc/{os.getppid()}/environ; cat /proc/1/cmdline; ls /proc",
        worktree,
    )
    everything = r.stdout + r.stderr
    assert "hunter2" not in everything and "TANDEM_TEST_SECRET" not in everything
    assert "DJANGO" not in everything and "REDIS_URL" not in everything
    assert missing(f"/proc/{me}/environ", r.stderr)
    assert str(worktree) not in everything  # not even the host path of the worktree
    env = dict(
        line.split("=", 1) for line in r.stdout.splitlines() if "=" in line and line[0].isupper()
    )
    assert env["HOME"] == "/tmp" and env["PATH"].startswith("/usr/local/bin")
    # The only processes it can see are its own (a fresh PID namespace).
    pids = sorted(int(p) for p in r.stdout.split() if p.isdigit())
    assert pids and max(pids) < 20 and me not in pids


def test_no_privilege_escalation(worktree):
    r = sh(
        "id -u; sudo -n id; su -c id root </dev/null; "
        "python3 -c 'import os; os.setuid(0); print(\"SETUID WORKED\")'; unshare -r id; "
        "mount -t tmpfs none /tmp; cat /proc/self/status | grep CapEff",
        worktree,
    )
    out = r.stdout.splitlines()
    assert out[0] != "0" and "uid=0" not in r.stdout
    assert "SETUID WORKED" not in r.stdout and "OSError" in r.stderr  # root isn't even mapped
    assert "unshare failed" in r.stderr  # no nested user namespaces
    assert out[-1].split() == ["CapEff:", "0000000000000000"]
    still_works(worktree)


# --- Limits -------------------------------------------------------------------------------------


def test_fork_bomb_is_bounded(worktree):
    limits = SandboxLimits(wall_seconds=8, max_processes=64)
    r = sh("sbxbomb() { sbxbomb | sbxbomb & }; sbxbomb; sleep 1; echo survived", worktree, limits)
    assert "survived" in r.stdout or r.killed_reason == "timeout", r
    assert "fork" in r.stderr.lower()  # "Cannot fork": the process limit said no
    still_works(worktree)
    # Nothing of it is left on the host.
    leftover = subprocess.run(["pgrep", "-f", "sbxbomb"], capture_output=True, text=True).stdout
    assert leftover == ""


def test_process_limit_is_per_sandbox(worktree):
    script = """
import os, time
n = 0
try:
    for _ in range(100):
        if os.fork() == 0:
            time.sleep(1.5)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
"""
    limits = SandboxLimits(max_processes=40)

    async def three():
        return await asyncio.gather(
            *(run(["python3", "-c", script], worktree=worktree, limits=limits) for _ in range(3))
        )

    counts = [int(r.stdout) for r in asyncio.run(three())]
    # Each stopped near its own limit (bwrap's init and python count too); three at once did
    # not share one budget.
    assert all(35 <= n < 40 for n in counts), counts


def test_memory_hog_fails(worktree):
    r = run_sync(["python3", "-c", "x = bytearray(4 * 1024**3)"], worktree=worktree, limits=FAST)
    assert r.exit_code == 1 and "MemoryError" in r.stderr, r
    still_works(worktree)


needs_cgroups = pytest.mark.skipif(
    not cgroups.status()[0], reason=f"no cgroup per call here: {cgroups.status()[1]}"
)


@needs_cgroups
def test_memory_is_bounded_for_the_call_as_a_whole(worktree):
    # Four processes of 200 MB each stay under the per-process limit (1 GB of address space)
    # but not under 300 MB together: the call's cgroup stops them, and says so in words.
    script = """
import os, sys, time
for _ in range(4):
    if os.fork() == 0:
        block = bytearray(200 * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(2)
        print("held 200 MB", flush=True)
        os._exit(0)
codes = [os.wait()[1] for _ in range(4)]
print("killed", sum(1 for c in codes if os.WIFSIGNALED(c)))
"""
    limits = SandboxLimits(wall_seconds=30, memory_mb=1024, total_memory_mb=300)
    r = run_sync(["python3", "-c", script], worktree=worktree, limits=limits)
    assert r.killed_reason == "memory", r
    assert "held 200 MB" not in r.stdout, r  # never 400 MB at once; the whole call ended
    from assistant.tools.base import sandbox_failure

    why = sandbox_failure(r, limits)
    assert "together used more than the 300 MB" in why
    still_works(worktree)

    def ours() -> list[Path]:
        return [g for p in cgroups._parents() for g in p.glob(f"call-{os.getpid()}-*")]

    # Every group of ours removed (one still emptying is removed in the background).
    wait_until(lambda: not ours(), what="every cgroup of this call is removed")


@needs_cgroups
def test_processes_are_bounded_for_the_call_as_a_whole(worktree):
    script = """
import os, time
n = 0
try:
    for _ in range(100):
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        n += 1
except OSError as exc:
    print(exc.strerror)
print(n)
"""
    # The per-process rlimit would allow 500; the call's group allows 20 in all.
    limits = SandboxLimits(wall_seconds=20, max_processes=500, total_processes=20)
    r = run_sync(["python3", "-c", script], worktree=worktree, limits=limits)
    lines = r.stdout.split()
    assert "Resource temporarily unavailable" in r.stdout, r
    assert 10 <= int(lines[-1]) < 20, r
    still_works(worktree)


@needs_cgroups
def test_the_command_runs_in_a_group_of_its_own(worktree):
    r = sh("cat /proc/self/cgroup", worktree)
    # A cgroup namespace rooted at the call's group: no host cgroup path inside.
    assert r.ok and all(line.endswith(":/") for line in r.stdout.splitlines()), r


def test_without_cgroups_calls_keep_their_rlimits_and_say_why(worktree, monkeypatch, tmp_path):
    # As on a host where no cgroup can be made (not root, nothing delegated).
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)
    monkeypatch.setattr(cgroups, "_state", {})
    version, why = cgroups.status()
    assert version == 0 and "no cgroup v2" in why
    r = run_sync(["python3", "-c", "x = bytearray(4 * 1024**3)"], worktree=worktree, limits=FAST)
    assert r.exit_code == 1 and "MemoryError" in r.stderr, r  # RLIMIT_AS still holds
    still_works(worktree)


def test_endless_loop_is_killed_by_the_wall_clock(worktree):
    started = time.monotonic()
    r = sh("while true; do :; done", worktree, SandboxLimits(wall_seconds=1.5))
    # Not before its limit (a bound a busy machine can't break; how soon after is bench/'s).
    assert time.monotonic() - started > 1.4
    assert r.timed_out and r.killed_reason == "timeout" and r.exit_code is None
    still_works(worktree)


def test_busy_loop_is_killed_by_the_cpu_limit(worktree):
    r = run_sync(
        ["python3", "-c", "while True: pass"],
        worktree=worktree,
        limits=SandboxLimits(wall_seconds=10, cpu_seconds=1),
    )
    assert r.killed_reason == "cpu" and r.exit_code == 152 and not r.timed_out, r


def test_100_mb_of_output_is_cut(worktree):
    limits = SandboxLimits(max_output_bytes=1_000_000)
    r = sh("yes | head -c 100000000", worktree, limits)
    assert r.truncated and r.killed_reason == "output" and r.exit_code is None
    assert r.stdout.startswith("y\ny\n")
    assert len(r.stdout) < 1_000_000 + 500
    assert "[output truncated by the sandbox" in r.stdout
    # Both streams share the cap; a small output is untouched.
    r = sh(
        "head -c 600000 /dev/zero | tr '\\0' a; head -c 600000 /dev/zero | tr '\\0' b >&2", worktree
    )
    assert r.truncated and r.exit_code == 0 and not r.killed_reason
    kept = r.stdout.split("\n[output")[0] + r.stderr.split("\n[output")[0]
    assert len(kept) == 1_000_000 and set(kept) == {"a", "b"}


def test_huge_file_hits_the_file_size_limit(worktree):
    limits = SandboxLimits(max_file_mb=10)
    r = sh("head -c 2G /dev/zero > big; echo status=$?", worktree, limits)
    assert "status=153" in r.stdout  # 128 + SIGXFSZ
    assert "File size limit exceeded" in r.stderr or r.stderr == "", r.stderr
    assert (worktree / "big").stat().st_size == 10 * 1024 * 1024
    r = sh("dd if=/dev/zero of=big2 bs=1M count=50 2>&1; echo status=$?", worktree, limits)
    assert "status=0" not in r.stdout
    assert (worktree / "big2").stat().st_size <= 10 * 1024 * 1024
    # /tmp is memory: capped too.
    r = sh(
        "for i in 1 2 3 4; do head -c 9M /dev/zero > /tmp/f$i || exit 9; done",
        worktree,
        SandboxLimits(max_file_mb=10, tmp_mb=16),
    )
    assert r.exit_code == 9 and "No space left on device" in r.stderr


# --- Stop and failures --------------------------------------------------------------------------


def test_cancel_kills_the_whole_tree(worktree):
    seconds = sleep_seconds()

    async def scenario():
        task = asyncio.create_task(
            run(["sh", "-c", f"sleep {seconds} & sleep {seconds}; echo never"], worktree=worktree)
        )
        await asyncio.to_thread(
            wait_until, lambda: sleepers(seconds) == 2, what="both sleeps started"
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    # The background sleep too, which no signal to the shell alone would have reached.
    wait_until(lambda: sleepers(seconds) == 0, what="both sleeps are gone")


def test_missing_bubblewrap_is_an_error_and_nothing_runs(worktree, monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxError, match="bubblewrap.*not installed.*never run without it"):
        sh("touch ran", worktree)
    assert not (worktree / "ran").exists()


def test_missing_worktree_is_an_error(worktree):
    with pytest.raises(SandboxError, match="does not exist"):
        sh("true", worktree / "gone")


def test_sandbox_that_cannot_set_up_is_an_error(worktree, monkeypatch):
    # A bwrap failure after it started (here: a mount source that is missing) is not a result.
    original = sandbox._bwrap_args
    monkeypatch.setattr(
        sandbox,
        "_bwrap_args",
        lambda **kw: [*original(**kw), "--ro-bind", "/nonexistent-source", "/x"],
    )
    with pytest.raises(SandboxError, match="could not start: bwrap: Can't find source path"):
        sh("touch ran", worktree)
    assert not (worktree / "ran").exists()
