"""A local stand-in for the package registries, for the setup and egress tests: a PyPI
"simple" index and an npm registry endpoint served by a thread on 127.0.0.1.

The Python packages are real: wheels of pytest and what it needs, made offline from the test
venv's own installed copies (each file its RECORD lists, with its .dist-info), so the sandbox
installs the same pytest the suite runs on. The npm package is a toy built here (a tarball with
a package.json and an index.js). Every request is recorded: the tests see what came through
the proxy (the sandbox has no other way out).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

# pytest and what it requires on the image's Python (3.11: no exceptiongroup, no tomli).
PYTHON_DISTRIBUTIONS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments")
NPM_PACKAGE = "tandem-left-pad"
NPM_VERSION = "1.0.0"
NPM_INDEX = "module.exports = (s, n, c = ' ') => String(s).padStart(n, c);\n"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_of(name: str) -> tuple[str, bytes]:
    """(file name, bytes) of a pure-Python wheel rebuilt from the installed distribution."""
    dist = metadata.distribution(name)
    # The wheel is named after the installed .dist-info folder (its case and separators).
    info_dir = next(f.parent.as_posix() for f in dist.files or () if f.name == "METADATA")
    stem = info_dir.removesuffix(".dist-info")
    buf = io.BytesIO()
    record_lines = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in dist.files or ():
            posix = f.as_posix()
            if posix.startswith("..") or "__pycache__" in posix or posix.endswith(".pyc"):
                continue  # scripts in bin/ (pip remakes them from entry_points), byte code
            if posix.endswith(("/INSTALLER", "/RECORD", "/direct_url.json", "/REQUESTED")):
                continue
            data = Path(f.locate()).read_bytes()
            whl.writestr(posix, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record_lines.append(f"{posix},sha256={digest.decode()},{len(data)}")
        info = info_dir
        record_lines.append(f"{info}/RECORD,,")
        whl.writestr(f"{info}/RECORD", "\n".join(record_lines) + "\n")
    return f"{stem}-py3-none-any.whl", buf.getvalue()


def npm_tarball() -> bytes:
    buf = io.BytesIO()
    manifest = {"name": NPM_PACKAGE, "version": NPM_VERSION, "main": "index.js"}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in (
            ("package/package.json", json.dumps(manifest)),
            ("package/index.js", NPM_INDEX),
        ):
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Registry:
    port: int
    server: ThreadingHTTPServer
    requests: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        return f"http://{self.host}/simple/"

    @property
    def npm_url(self) -> str:
        return f"http://{self.host}/npm/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start() -> Registry:
    wheels = {}
    for name in PYTHON_DISTRIBUTIONS:
        filename, data = wheel_of(name)
        wheels[_normal(name)] = (filename, data)
    tgz = npm_tarball()
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requests.append(self.path)
            path = self.path.split("?", 1)[0]
            base = f"http://{self.headers.get('Host')}"
            if m := re.fullmatch(r"/simple/([^/]+)/?", path):
                found = wheels.get(_normal(m.group(1)))
                if found:
                    filename, data = found
                    sha = hashlib.sha256(data).hexdigest()
                    link = f'<a href="/files/{filename}#sha256={sha}">{html.escape(filename)}</a>'
                    return self._send(f"<html><body>{link}</body></html>".encode(), "text/html")
            elif m := re.fullmatch(r"/files/([^/]+)", path):
                for filename, data in wheels.values():
                    if filename == m.group(1):
                        return self._send(data, "application/octet-stream")
            elif path == f"/npm/{NPM_PACKAGE}":
                integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
                version = {
                    "name": NPM_PACKAGE,
                    "version": NPM_VERSION,
                    "main": "index.js",
                    "dist": {
                        "tarball": f"{base}/npm/{NPM_PACKAGE}/-/{NPM_PACKAGE}-{NPM_VERSION}.tgz",
                        "shasum": hashlib.sha1(tgz).hexdigest(),  # noqa: S324 - npm's format
                        "integrity": integrity,
                    },
                }
                doc = {
                    "name": NPM_PACKAGE,
                    "dist-tags": {"latest": NPM_VERSION},
                    "versions": {NPM_VERSION: version},
                }
                return self._send(json.dumps(doc).encode(), "application/json")
            elif path == f"/npm/{NPM_PACKAGE}/-/{NPM_PACKAGE}-{NPM_VERSION}.tgz":
                return self._send(tgz, "application/octet-stream")
            self.send_error(404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="standin-registry", daemon=True).start()
    return Registry(server.server_address[1], server, requests)
