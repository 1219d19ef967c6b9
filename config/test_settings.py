"""Settings for the test suite: the production settings, with test defaults for the services.

The suite runs against real PostgreSQL and Redis (DATABASE_URL, REDIS_URL; 127.0.0.1 by
default), with runs executed by a real Celery worker where a test starts the stack.
"""

import os
import sysconfig
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tandem")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("TANDEM_DATA_DIR", "/tmp/tandem-test-data")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RUN_EXECUTOR", "celery")
# Workspaces on loop-mounted images (assistant/quota.py) only where a test asks and unmounts
# them: most tests leave their workspaces in temporary directories that are simply deleted.
os.environ.setdefault("WORKSPACE_QUOTA_MB", "0")
# The test process itself runs without a connection pool (pytest-django wraps tests in
# transactions on one connection); the servers a test starts get one (tests/conftest.py).
os.environ.setdefault("DATABASE_POOL_SIZE", "0")
# The fake provider runs on 127.0.0.1; tests of the refusal switch this off (test_llm_bases).
os.environ.setdefault("LLM_ALLOW_PRIVATE_BASES", "true")
# The MCP stand-in (tests/mcp_standin.py) listens on 127.0.0.1 over HTTP, and runs over stdio
# in the sandbox with the host's python3 and, read-only, the SDK from this venv.
os.environ.setdefault("MCP_ALLOW_PRIVATE_URLS", "true")
os.environ.setdefault(
    "MCP_STDIO_MOUNTS",
    f"{os.path.realpath(sysconfig.get_paths()['purelib'])}:/opt/mcp-sdk,"
    f"{os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}/tests:/opt/standin",
)
# DJANGO_ALLOW_ASYNC_UNSAFE is set only while a Playwright browser is open (tests/conftest.py).

# `make test` runs the suite in several pytest-xdist workers. pytest-django gives each its own
# test database (…_gw1); Redis and the data folder are split here, before the settings read
# them, so one worker's Celery stack never claims another's runs and no flush crosses over.
_xdist = os.environ.get("PYTEST_XDIST_WORKER", "")
# Once: the servers a test starts inherit both the worker's name and the split environment.
_split = os.environ.get("TANDEM_XDIST_SPLIT") == _xdist
if _xdist.startswith("gw") and _xdist[2:].isdigit() and int(_xdist[2:]) > 0 and not _split:
    from urllib.parse import urlsplit, urlunsplit

    _n = int(_xdist[2:])
    _redis = urlsplit(os.environ["REDIS_URL"])
    _db = int(_redis.path.strip("/") or 0)
    # Two numbers a worker: tests that need a broker of their own take the next one
    # (test_slack_worker), which must not be another worker's.
    os.environ["REDIS_URL"] = urlunsplit(_redis._replace(path=f"/{(_db + 2 * _n) % 16}"))
    os.environ["TANDEM_DATA_DIR"] = f"{os.environ['TANDEM_DATA_DIR']}-{_xdist}"
    os.environ["TANDEM_XDIST_SPLIT"] = _xdist

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
# The tests' local repositories are made under the temporary directory (pytest's tmp_path):
# the rules for named roots apply, as in a production that allows local paths.
REPOS_LOCAL_ROOTS = [tempfile.gettempdir()]
