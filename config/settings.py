"""Tandem settings: one file, read from environment variables.

Two modes (TANDEM_MODE):
- ``embedded`` (default): SQLite, the in-memory channel layer, runs executed inside the server
  process. One command, no services.
- ``production``: PostgreSQL (DATABASE_URL), Redis (REDIS_URL) for the channel layer, Celery and
  stream state; SECRET_KEY and ALLOWED_HOSTS are required.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: str = "0") -> bool:
    value = env(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def envint(name: str, default: int) -> int:
    value = env(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}")


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


TANDEM_MODE = env("TANDEM_MODE", "embedded")
if TANDEM_MODE not in ("embedded", "production"):
    raise ImproperlyConfigured("TANDEM_MODE must be 'embedded' or 'production'")
PRODUCTION = TANDEM_MODE == "production"

# Where embedded mode keeps its SQLite file and generated secret key.
DATA_DIR = Path(env("TANDEM_DATA_DIR", str(BASE_DIR / ".tandem")))


def _secret_key() -> str:
    key = env("SECRET_KEY")
    if key:
        return key
    if PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production mode refuses to start without it: "
            "set SECRET_KEY to a long random string (python -c 'import secrets; "
            "print(secrets.token_urlsafe(50))')."
        )
    # Embedded mode: generate once and keep it, so sessions and encrypted secrets survive
    # a restart.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", "0")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,[::1]")
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is not set (comma-separated host names).")
SITE_URL = env("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", SITE_URL)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.github",
    "allauth.socialaccount.providers.google",
    "allauth.socialaccount.providers.gitlab",
    "allauth.socialaccount.providers.openid_connect",
    "accounts",
    "assistant",
    "sharing",
    "api",
    "usage",
    "slack",
    "mcpservers",
]

MIDDLEWARE = [
    "config.logs.RequestContextMiddleware",  # a request id for every log line and response
    "config.metrics.RequestMetricsMiddleware",  # request duration by route (config/metrics.py)
    "config.middleware.ContentSecurityPolicyMiddleware",  # on every response, /healthz too
    "config.middleware.HealthCheckMiddleware",
    "config.db.DatabaseDownMiddleware",  # 503 at once while PostgreSQL is known to be down
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.audit.AuditContextMiddleware",  # who and where, for the audit log
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.teams",
            ],
            "builtins": ["assistant.templatetags.chat"],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env("DATABASE_URL")


def _pool_gave_up(pool: object) -> None:
    from config.db import pool_gave_up  # imported when called: settings load before the ORM

    pool_gave_up(pool)


if PRODUCTION and not DATABASE_URL:
    raise ImproperlyConfigured("DATABASE_URL is not set (postgres://user:pass@host:5432/name).")
# Every process (a Daphne, a Celery worker, beat, a management command) holds at most
# DATABASE_POOL_SIZE connections to PostgreSQL: its threads borrow one per request or task and
# give it back (config/db.py). A thread waits at most DATABASE_POOL_TIMEOUT seconds for one,
# then the request is answered 503. Size it so that every process's pool together stays under
# PostgreSQL's max_connections (README, "Production"). 0: no pool (one connection per thread,
# closed after each request or task) — only for a PgBouncer that pools instead.
DATABASE_POOL_SIZE = envint("DATABASE_POOL_SIZE", 10)
DATABASE_POOL_TIMEOUT = envint("DATABASE_POOL_TIMEOUT", 5)
if DATABASE_POOL_SIZE < 0 or DATABASE_POOL_TIMEOUT < 1:
    raise ImproperlyConfigured("DATABASE_POOL_SIZE must be >= 0 and DATABASE_POOL_TIMEOUT >= 1")
if DATABASE_URL:
    # CONN_MAX_AGE=0: a connection goes back to the pool (or is closed) when Django is done
    # with it, instead of staying with the thread that used it.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # PgBouncer in transaction mode can't keep a server-side cursor (.iterator()) between
    # transactions: turn them off there.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = envbool(
        "DATABASE_DISABLE_SERVER_SIDE_CURSORS", "0"
    )
    options = DATABASES["default"].setdefault("OPTIONS", {})
    if env("DATABASE_APPLICATION_NAME"):
        options["application_name"] = env("DATABASE_APPLICATION_NAME")
    if DATABASE_POOL_SIZE and DATABASES["default"]["ENGINE"].endswith("postgresql"):
        options["pool"] = {
            "min_size": min(2, DATABASE_POOL_SIZE),
            "max_size": DATABASE_POOL_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT,
            "max_idle": 300,
            # psycopg_pool retries a failed connection with a doubling back-off for
            # reconnect_timeout (5 min by default): after a few seconds' outage its next try came
            # 8-16 s after PostgreSQL was back. Give up after 2 s instead and say the database
            # is down (config/db.py answers 503 at once, probes, and refills the pool when it
            # answers); the next request that needs a connection starts a fresh attempt.
            "reconnect_timeout": 2,
            "reconnect_failed": _pool_gave_up,
        }
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "db.sqlite3"),
            # WAL and a busy timeout: the server's threads and its in-process runs write at once.
            "OPTIONS": {
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
            },
        }
    }
DATABASES["default"].setdefault("TEST", {})
if env("TEST_DATABASE_NAME"):
    DATABASES["default"]["TEST"]["NAME"] = env("TEST_DATABASE_NAME")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, channel layer, Celery --------------------------------------------------------------
REDIS_URL = env("REDIS_URL")
if PRODUCTION and not REDIS_URL:
    raise ImproperlyConfigured("REDIS_URL is not set (redis://host:6379/0).")

# "inprocess": runs are asyncio tasks on the server's own loop (embedded mode).
# "celery": runs are queued to Celery workers (production).
RUN_EXECUTOR = env("RUN_EXECUTOR", "celery" if REDIS_URL else "inprocess")
if RUN_EXECUTOR not in ("inprocess", "celery"):
    raise ImproperlyConfigured("RUN_EXECUTOR must be 'inprocess' or 'celery'")
if RUN_EXECUTOR == "celery" and not REDIS_URL:
    raise ImproperlyConfigured("RUN_EXECUTOR=celery needs REDIS_URL")

if REDIS_URL:
    # Pub/sub layer: measured loss-free at 200 streams where the list-based layer dropped
    # messages "over capacity" (see docs/architecture.md).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
# There are no results (DisabledBackend), so one backend object serves every thread. Celery
# otherwise makes one per thread, and Django serves each request in a thread of its own: every
# message sent built a backend again before its run was enqueued (~0.1 ms of CPU).
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker outlives a Redis outage however long: it reconnects (every few seconds) forever
# instead of exiting after 100 tries, and Celery's consumer is ours for the restart itself
# (config/celery.py, Consumer).
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CONSUMER = "config.celery:Consumer"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_ALWAYS_EAGER = False
# The queue the web process sends jobs to and the worker takes them from: two deployments (or a
# test's own stack) can share one Redis without taking each other's runs.
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", "celery")
REPO_FETCH_MINUTES = envint("REPO_FETCH_MINUTES", 15)
# Mirrors and per-conversation workspaces (assistant/repos.py).
REPOS_ROOT = Path(env("REPOS_ROOT", str(DATA_DIR / "repos")))
# Directories local repositories (a path or file://) may come from; production connects none
# by path unless some are named (assistant/repos.py). Never inside DATA_DIR, REPOS_ROOT, BASE_DIR.
REPOS_LOCAL_ROOTS = envlist("REPOS_LOCAL_ROOTS")
if any(not os.path.isabs(root) for root in REPOS_LOCAL_ROOTS):
    raise ImproperlyConfigured("REPOS_LOCAL_ROOTS must list absolute paths, separated by commas.")

# A turn's diff is read bounded in the worker and stored (assistant/diffs.py): a file larger
# than DIFF_MAX_FILE_BYTES is named with its size, never read; the diff text kept per turn
# stops at DIFF_MAX_TOTAL_BYTES; at most DIFF_MAX_FILES files are listed. The patch download
# streams from git and stops (saying so) at PATCH_MAX_BYTES.
DIFF_MAX_FILE_BYTES = envint("DIFF_MAX_FILE_BYTES", 1_000_000)
DIFF_MAX_TOTAL_BYTES = envint("DIFF_MAX_TOTAL_BYTES", 200_000)
DIFF_MAX_FILES = envint("DIFF_MAX_FILES", 1000)
PATCH_MAX_BYTES = envint("PATCH_MAX_BYTES", 50_000_000)
# A file opened from a path in a reply (read-only, from the workspace's last finished turn):
# larger ones are refused in words, never read.
FILE_VIEW_MAX_BYTES = envint("FILE_VIEW_MAX_BYTES", 1_000_000)
# Open pull request (assistant/forges.py): the REST APIs of github.com and gitlab.com, for
# repositories there (self-hosted ones are on the repository's own host). Tests point these at
# their stand-ins; nothing else does.
GITHUB_API_BASE = env("GITHUB_API_BASE", "https://api.github.com")
GITLAB_API_BASE = env("GITLAB_API_BASE", "https://gitlab.com/api/v4")
FORGE_TIMEOUT = envint("FORGE_TIMEOUT", 20)
CELERY_BEAT_SCHEDULE = {
    "fetch-repositories": {
        "task": "assistant.fetch_repositories",
        "schedule": REPO_FETCH_MINUTES * 60.0,
    },
    "remove-idle-prepared-trees": {
        "task": "assistant.remove_idle_prepared_trees",
        "schedule": 6 * 3600.0,
    },
    # Audit events past AUDIT_RETENTION_DAYS (accounts/audit.py).
    "audit-retention": {"task": "accounts.audit_retention", "schedule": 6 * 3600.0},
}

# --- Auth (django-allauth) -----------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
# Production: an address is confirmed before its account signs in, which also lets sign-up
# answer the same whether the address has an account or not (accounts/forms.py).
ACCOUNT_EMAIL_VERIFICATION = env(
    "ACCOUNT_EMAIL_VERIFICATION", "mandatory" if PRODUCTION else "optional"
)
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_FORMS = {"signup": "accounts.forms.SignupForm"}
ACCOUNT_LOGIN_ON_PASSWORD_RESET = True
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "accounts.adapter.SocialAccountAdapter"
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_LOGIN_ON_GET = False
# Closed sign-up: only people following an invitation link may make an account.
SIGNUP_REQUIRES_INVITATION = envbool("SIGNUP_REQUIRES_INVITATION", "0")


def _social_providers() -> dict:
    """OAuth/OIDC providers switched on by environment variables (client id + secret)."""
    providers: dict = {}
    for name, prefix in (("github", "GITHUB"), ("google", "GOOGLE"), ("gitlab", "GITLAB")):
        client_id = env(f"{prefix}_CLIENT_ID")
        if client_id:
            app = {"client_id": client_id, "secret": env(f"{prefix}_CLIENT_SECRET")}
            providers[name] = {"APPS": [app]}
            if name == "gitlab" and env("GITLAB_URL"):
                providers[name]["APPS"][0]["settings"] = {"gitlab_url": env("GITLAB_URL")}
            if name == "google":
                providers[name]["SCOPE"] = ["profile", "email"]
            if name == "github":
                providers[name]["SCOPE"] = ["user:email"]
    if env("OIDC_CLIENT_ID"):
        providers["openid_connect"] = {
            "APPS": [
                {
                    "provider_id": env("OIDC_PROVIDER_ID", "oidc"),
                    "name": env("OIDC_NAME", "Single sign-on"),
                    "client_id": env("OIDC_CLIENT_ID"),
                    "secret": env("OIDC_CLIENT_SECRET"),
                    "settings": {"server_url": env("OIDC_SERVER_URL")},
                }
            ]
        }
    return providers


SOCIALACCOUNT_PROVIDERS = _social_providers()

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Email -------------------------------------------------------------------------------------
EMAIL_URL = env("EMAIL_HOST")
if EMAIL_URL:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = env("EMAIL_HOST")
    EMAIL_PORT = envint("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", "1")
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "Tandem <tandem@localhost>")

# --- Security ------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "1")
    SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", "1")
    CSRF_COOKIE_SECURE = envbool("SECURE_COOKIES", "1")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "0")
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Reverse proxies whose X-Forwarded-For is believed (IPs or CIDRs, comma-separated), e.g. the
# nginx in front: the client is the right-most address in the chain that isn't one of them
# (config/clientip.py). Unset: the socket peer is the client, whatever the header says.
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES")
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or CIDR")
SILENCED_SYSTEM_CHECKS = ["security.W021"] if not envbool("SECURE_HSTS_PRELOAD", "0") else []

# --- Static files ------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(DATA_DIR / "static")))
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing root
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- LLM ---------------------------------------------------------------------------------------
# Site default model. Empty: the built-in scripted "Demo model (scripted, not AI)".
LLM_MODEL = env("LLM_MODEL")
LLM_API_BASE = env("LLM_API_BASE")
LLM_API_KEY = env("LLM_API_KEY")
# Teams' own API bases may point at private and loopback addresses (a local Ollama) only when
# this is on; link-local and metadata addresses never (assistant/llm/bases.py).
LLM_ALLOW_PRIVATE_BASES = envbool("LLM_ALLOW_PRIVATE_BASES", "0")
LLM_TIMEOUT = envint("LLM_TIMEOUT", 120)
LLM_MAX_RETRIES = envint("LLM_MAX_RETRIES", 2)
# "direct": stream OpenAI-compatible, Anthropic and Ollama replies with the lean client in
# assistant/llm/direct.py (~30x less CPU per chunk); "litellm": everything through litellm.
LLM_STREAM_CLIENT = env("LLM_STREAM_CLIENT", "direct")
if LLM_STREAM_CLIENT not in ("direct", "litellm"):
    raise ImproperlyConfigured("LLM_STREAM_CLIENT must be 'direct' or 'litellm'")
# Key for secrets at rest; derived from SECRET_KEY when unset.
FIELD_ENCRYPTION_KEY = env("FIELD_ENCRYPTION_KEY")

# --- Slack (slack/) -----------------------------------------------------------------------------
# The Slack app's OAuth credentials ("Add to Slack") and its signing secret, which every request
# from Slack is checked against. Without a signing secret every request from Slack is refused.
SLACK_CLIENT_ID = env("SLACK_CLIENT_ID")
SLACK_CLIENT_SECRET = env("SLACK_CLIENT_SECRET")
SLACK_SIGNING_SECRET = env("SLACK_SIGNING_SECRET")
SLACK_API_BASE = env("SLACK_API_BASE", "https://slack.com/api/")
SLACK_AUTHORIZE_URL = "https://slack.com/oauth/v2/authorize"
# Where incoming webhooks and slash-command response URLs may point (tests add the stand-in).
SLACK_WEBHOOK_PREFIXES = ["https://hooks.slack.com/"]
# Posting: attempts after a 429 or 5xx, and the first back-off (doubled each time, Retry-After
# wins when Slack sends one).
SLACK_MAX_RETRIES = envint("SLACK_MAX_RETRIES", 5)
SLACK_RETRY_BASE_SECONDS = envint("SLACK_RETRY_BASE_SECONDS", 10)

# --- Sharing ---------------------------------------------------------------------------------
# Wrong share tokens a client may try a minute before every lookup of theirs gets 429.
SHARE_FAILED_LOOKUPS_PER_MINUTE = envint("SHARE_FAILED_LOOKUPS_PER_MINUTE", 30)

# --- Chat limits -------------------------------------------------------------------------------
MAX_MESSAGE_CHARS = envint("MAX_MESSAGE_CHARS", 32000)
# Up to STREAM_COALESCE_ABOVE replies streaming at once on a worker's loop, every piece of text
# is published as it comes; past that, pieces are joined for STREAM_COALESCE_MS before being
# published (each event costs the web processes CPU; see assistant/agent.py's DeltaPublisher).
# 50: measured on 2 cores running everything (docs/benchmarks.md, issue 14), sending every
# piece was better at 50 streams (5 ms per word at the median against 22, for ~15% more CPU;
# the web side merges what queues for a slow socket by itself) and much worse at 200 (p99
# 0.9 s against 0.4), where streams start over seconds: a threshold of 100 rarely engaged.
STREAM_COALESCE_MS = envint("STREAM_COALESCE_MS", 30)
STREAM_COALESCE_ABOVE = envint("STREAM_COALESCE_ABOVE", 50)
INVITATION_DAYS = envint("INVITATION_DAYS", 7)

# --- Sharing (sharing/) ------------------------------------------------------------------------
# Lookups of unknown share tokens per client and minute; past it every lookup is refused (429).
SHARE_FAILED_LOOKUPS_PER_MINUTE = envint("SHARE_FAILED_LOOKUPS_PER_MINUTE", 30)

# --- The agent (conversations attached to a repository) -------------------------------------
# One reply may call the model at most this many times (tool calls come between the calls)...
AGENT_MAX_STEPS = envint("AGENT_MAX_STEPS", 25)
# ...and spend at most this many tokens (prompt + completion, summed over its calls).
AGENT_MAX_TOKENS = envint("AGENT_MAX_TOKENS", 500_000)
# Wall-clock limit of one tool call in the sandbox (a test suite, say).
AGENT_COMMAND_SECONDS = envint("AGENT_COMMAND_SECONDS", 120)
# Read-only tool calls of one model answer (read_file, grep, glob, list_files, git_status,
# git_diff) run this many at a time; a write or a command waits for those before it.
AGENT_PARALLEL_TOOLS = envint("AGENT_PARALLEL_TOOLS", 4)
# Documentation lookup (assistant/tools/web.py). fetch_url reads only hosts on a team's
# documentation allowlist, from the worker, with the address rules of the teams' model bases:
# never link-local or metadata addresses; private and loopback ones only with this switch.
FETCH_URL_ALLOW_PRIVATE = envbool("FETCH_URL_ALLOW_PRIVATE", "0")
FETCH_URL_MAX_BYTES = envint("FETCH_URL_MAX_BYTES", 2_000_000)  # read at most, then cut
FETCH_URL_TIMEOUT = envint("FETCH_URL_TIMEOUT", 20)  # seconds for the whole fetch
# web_search: a SearXNG instance's base URL (its JSON API, format=json enabled); empty: off.
SEARXNG_URL = env("SEARXNG_URL")
WEB_SEARCH_RESULTS = envint("WEB_SEARCH_RESULTS", 8)
# One tool call as a whole (every process of it together), in a cgroup of its own per call
# (assistant/cgroups.py): memory in MB (its /tmp included), processes and threads, CPU cores.
SANDBOX_MEMORY_MB = envint("SANDBOX_MEMORY_MB", 2048)
SANDBOX_PIDS = envint("SANDBOX_PIDS", 256)
try:
    SANDBOX_CPUS = float(env("SANDBOX_CPUS", "1"))
except ValueError:
    raise ImproperlyConfigured("SANDBOX_CPUS must be a number of cores, such as 1 or 0.5")
# auto: per-call cgroups where the host allows (warned at start-up where not); off: none.
SANDBOX_CGROUPS = env("SANDBOX_CGROUPS", "auto")
# cgroup v2: the parent of the calls' groups (default /sys/fs/cgroup/tandem; a delegated cgroup
# when the server is not root).
SANDBOX_CGROUP_PARENT = env("SANDBOX_CGROUP_PARENT", "")
# The sandbox image new repositories run their commands in (assistant/images.py; built with
# `manage.py sandboximage build NAME`); "host": the server's own /usr, for development only.
SANDBOX_DEFAULT_IMAGE = env("SANDBOX_DEFAULT_IMAGE", "host")
# Where built images live (one folder each, with its manifest); every worker needs its own copy.
SANDBOX_IMAGES_DIR = Path(env("SANDBOX_IMAGES_DIR", str(DATA_DIR / "images")))
# Each workspace on a file system of its own (a file-backed ext4 on a loop device,
# assistant/quota.py): at most this many MB and files. 0 MB: no quota (the server's disk).
WORKSPACE_QUOTA_MB = envint("WORKSPACE_QUOTA_MB", 2048)
WORKSPACE_QUOTA_FILES = envint("WORKSPACE_QUOTA_FILES", 200_000)

# --- MCP servers (mcpservers/) -----------------------------------------------------------------
# A team's remote MCP servers may be on private and loopback addresses only when this is on;
# link-local and metadata addresses never (the rules of assistant/llm/bases.py).
MCP_ALLOW_PRIVATE_URLS = envbool("MCP_ALLOW_PRIVATE_URLS", "0")
# Seconds an MCP server may take to start and answer its handshake, and one tool call to answer.
MCP_START_SECONDS = envint("MCP_START_SECONDS", 30)
MCP_CALL_SECONDS = envint("MCP_CALL_SECONDS", 60)
# Folders of this machine that stdio MCP servers see read-only, "HOST:/opt/NAME" pairs separated
# by commas (servers installed once for every team, e.g. /srv/mcp:/opt/mcp). Never the server's
# own code, settings or data: the team's command reads everything mounted here.
MCP_STDIO_MOUNTS = envlist("MCP_STDIO_MOUNTS")

# --- Setup scripts and their egress (assistant/environment.py, assistant/egress.py) -----------
# Hosts a repository's setup script may reach through the worker's egress proxy: the Python,
# npm and Debian package registries. "host" allows ports 80 and 443, "host:port" that port,
# "*.domain" every name under it. Nothing else is reachable from a sandbox.
SANDBOX_EGRESS_ALLOW = envlist(
    "SANDBOX_EGRESS_ALLOW",
    "pypi.org,files.pythonhosted.org,registry.npmjs.org,deb.debian.org,security.debian.org",
)
# Refused whatever the allowlist says unless this is on: names resolving to loopback, private,
# link-local or other non-public addresses (the database, cloud metadata...). Tests only.
SANDBOX_EGRESS_ALLOW_PRIVATE = envbool("SANDBOX_EGRESS_ALLOW_PRIVATE")
# Wall-clock limit of a setup script (the per-call cgroup and the workspace quota apply too).
SETUP_SECONDS = envint("SETUP_SECONDS", 600)
# The directories a setup script prepares that are kept per repository and copied into new
# workspaces (a prepared tree): put what setup installs there.
SETUP_ENV_DIRS = envlist("SETUP_ENV_DIRS", ".venv,node_modules")
# A prepared tree no conversation started from for this many days is removed (beat task).
PREPARED_TREE_IDLE_DAYS = envint("PREPARED_TREE_IDLE_DAYS", 7)

# --- Budgets (usage/budgets.py) ----------------------------------------------------------------
# Before a model call its cost is not known: this many completion tokens (plus the prompt's
# estimated size) are reserved against the team's budget and the member's daily tokens, and
# settled with the real figures when the call is recorded.
BUDGET_RESERVE_COMPLETION_TOKENS = envint("BUDGET_RESERVE_COMPLETION_TOKENS", 1000)
# Members see a warning from this share of a limit on.
BUDGET_WARN_PERCENT = envint("BUDGET_WARN_PERCENT", 80)

# --- The JSON API (/api/v1/) --------------------------------------------------------------------
# Requests per minute per person (whatever the credential) and per API key.
API_RATE_PER_MINUTE = envint("API_RATE_PER_MINUTE", 120)
API_KEY_RATE_PER_MINUTE = envint("API_KEY_RATE_PER_MINUTE", API_RATE_PER_MINUTE)
# Largest request body: room for the longest message even if every character is \u-escaped.
API_MAX_BODY_BYTES = envint("API_MAX_BODY_BYTES", 6 * MAX_MESSAGE_CHARS + 65536)
# Each conversation's event log (what the event stream resumes from): newest events kept, and
# how long it outlives the conversation's last event.
API_EVENT_LOG_LENGTH = envint("API_EVENT_LOG_LENGTH", 5000)
API_EVENT_LOG_TTL = envint("API_EVENT_LOG_TTL", 3600)
# An idle event stream sends a comment this often (proxies close silent connections).
API_SSE_HEARTBEAT_SECONDS = 15

# --- Metrics and the audit log (config/metrics.py, accounts/audit.py) ---------------------------
# /metrics answers only when one of these is set (404 otherwise): a bearer token Prometheus
# sends, and/or the networks (IPs or CIDRs) scrapes may come from; with both, both must hold.
# The client's address is the one config/clientip.py resolves (TRUSTED_PROXIES).
METRICS_TOKEN = env("METRICS_TOKEN")
METRICS_ALLOW_IPS = envlist("METRICS_ALLOW_IPS")
try:
    METRICS_ALLOW_NETWORKS = [ipaddress.ip_network(ip, strict=False) for ip in METRICS_ALLOW_IPS]
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOW_IPS: {exc}")
# A Celery worker in a container of its own answers /metrics itself on this port (0: off; a
# worker beside a web process on one host is in the web's /metrics already).
METRICS_WORKER_PORT = envint("METRICS_WORKER_PORT", 0)
# Audit events older than this many days are deleted by a daily task (the only deletion path).
AUDIT_RETENTION_DAYS = envint("AUDIT_RETENTION_DAYS", 365)
if AUDIT_RETENTION_DAYS < 1:
    raise ImproperlyConfigured("AUDIT_RETENTION_DAYS must be at least 1")

# "text" (default): human-readable lines; "json": one JSON object per line with the request id
# and the team, user, conversation and run where known (config/logs.py), for a log collector.
LOG_FORMAT = env("LOG_FORMAT", "text").strip().lower()
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'text' or 'json', got {LOG_FORMAT!r}")
# Celery's worker would otherwise put its own handler on the root logger, in its own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT == "text"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "config.logs.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "config.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "LiteLLM": {"level": "WARNING"},
        "aiohttp.access": {"level": "WARNING"},
    },
}
