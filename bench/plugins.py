#!/usr/bin/env python
"""What a call of the DevOps toolkit's tools and of fetch_url costs.

    .venv/bin/python bench/plugins.py [--repeat 7] [--manifests 20]

A git repository in /tmp (removed afterwards) with ``--manifests`` Kubernetes manifests (one
broken), three Dockerfiles and a committed AWS key; each tool is called ``--repeat`` times
after one warm-up call (the first call of a process imports the libraries and, for
k8s_validate, loads the schemas: reported on its own). fetch_url reads a 200 kB page from a local
server. Prints median and max wall time per call; record the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins" / "devops"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.test_settings")

import django  # noqa: E402

django.setup()

import tandem_devops  # noqa: E402
from aiohttp import web  # noqa: E402
from django.conf import settings  # noqa: E402

from assistant.plugins import as_tool  # noqa: E402
from assistant.sandbox import SandboxLimits  # noqa: E402
from assistant.tools import ToolContext  # noqa: E402
from assistant.tools import web as web_tools  # noqa: E402

MANIFEST = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app{n}\nspec:\n  replicas: {r}\n  selector:\n    matchLabels: {{app: a}}\n  template:\n    metadata:\n      labels: {{app: a}}\n    spec:\n      containers:\n        - name: a\n          image: nginx:1.27\n"  # noqa: E501


def make_tree(parent: Path, manifests: int) -> Path:
    tree = parent / "tree"
    (tree / "k8s").mkdir(parents=True)
    for n in range(manifests):
        replicas = "three" if n == 0 else "2"
        (tree / "k8s" / f"app{n}.yaml").write_text(MANIFEST.format(n=n, r=replicas))
    for name in ("Dockerfile", "api.Dockerfile", "worker.Dockerfile"):
        (tree / name).write_text("FROM python:3.12-slim\nRUN pip install flask\n")
    (tree / "settings.py").write_text('AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"\n')
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b"}
    env |= {"GIT_COMMITTER_EMAIL": "b@b", "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=tree, env=env, check=True, capture_output=True)
    return tree


async def timed(call) -> float:
    started = time.perf_counter()
    result = await call()
    assert result.output, "empty result"
    return (time.perf_counter() - started) * 1000


async def main(repeat: int, manifests: int) -> None:
    parent = Path(tempfile.mkdtemp(prefix="tandem-bench-plugins-"))
    parent.chmod(0o711)
    try:
        ctx = ToolContext(tree=make_tree(parent, manifests), limits=SandboxLimits(wall_seconds=60))
        rows = []
        cases = [
            ("k8s_validate", {"kubernetes_version": "1.30"}),
            ("dockerfile_lint", {}),
            ("secrets_scan", {}),
            ("secrets_scan", {"history": True}),
        ]
        for name, args in cases:
            tool = next(as_tool(t) for t in tandem_devops.plugin.tools if t.name == name)
            first = await timed(lambda tool=tool, args=args: tool.run(ctx, args))
            times = [
                await timed(lambda tool=tool, args=args: tool.run(ctx, args)) for _ in range(repeat)
            ]
            rows.append((f"{name} {args or ''}".strip(), first, times))
        rows.append(await fetch_row(repeat))
    finally:
        shutil.rmtree(parent)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
    print("| call | first call | median | max |")
    print("|---|---|---|---|")
    for label, first, times in rows:
        print(
            f"| {label} | {first:.0f} ms | {statistics.median(times):.0f} ms | "
            f"{max(times):.0f} ms |"
        )


async def fetch_row(repeat: int) -> tuple[str, float, list[float]]:
    async def page(request: web.Request) -> web.Response:
        body = "<h1>Docs</h1>" + "<p>Some documentation text here.</p>" * 6000
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings.FETCH_URL_ALLOW_PRIVATE = True
    try:

        async def fetch():
            return await web_tools.fetch(f"http://127.0.0.1:{port}/", ["127.0.0.1"])

        first = await timed(fetch)
        times = [await timed(fetch) for _ in range(repeat)]
    finally:
        await runner.cleanup()
    return ("fetch_url (200 kB HTML page, local)", first, times)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--manifests", type=int, default=20)
    options = parser.parse_args()
    asyncio.run(main(options.repeat, options.manifests))
