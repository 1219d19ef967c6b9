"""Check that PostgreSQL and Redis answer; say which one doesn't and how to start it."""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 3
        ):
            return True
    except OSError:
        return False


def main() -> int:
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    problems = []
    if not reachable(database_url, 5432):
        problems.append(
            f"PostgreSQL is not reachable at {urlparse(database_url).netloc}: start it "
            "(Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) "
            "or set DATABASE_URL."
        )
    if not reachable(redis_url, 6379):
        problems.append(
            f"Redis is not reachable at {urlparse(redis_url).netloc}: start it "
            '(redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" '
            "--appendonly no) or set REDIS_URL."
        )
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
