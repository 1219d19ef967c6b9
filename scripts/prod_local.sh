#!/usr/bin/env bash
# `make prod`: Daphne + a Celery worker against local PostgreSQL and Redis, in production mode
# (minus HTTPS, which a local trial doesn't have). Any variable already set wins.
set -euo pipefail
cd "$(dirname "$0")/.."
export TANDEM_MODE=production
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tandem_local}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/1}"
export ALLOWED_HOSTS="${ALLOWED_HOSTS:-127.0.0.1,localhost}"
export SITE_URL="${SITE_URL:-http://127.0.0.1:${PORT:-8000}}"
export SECURE_SSL_REDIRECT="${SECURE_SSL_REDIRECT:-0}"
export SECURE_COOKIES="${SECURE_COOKIES:-0}"
if [ -z "${SECRET_KEY:-}" ]; then
    mkdir -p .tandem
    [ -f .tandem/prod_secret_key ] || .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))' > .tandem/prod_secret_key
    SECRET_KEY="$(cat .tandem/prod_secret_key)"
    export SECRET_KEY
fi
.venv/bin/python scripts/ensure_database.py
.venv/bin/python manage.py migrate --noinput -v0
.venv/bin/python manage.py collectstatic --noinput -v0
exec .venv/bin/honcho -f deploy/Procfile.local start
