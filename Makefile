# Tandem. `make run` serves it; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
## pytest-xdist workers for `make test`: each gets its own test database, Redis db and data folder
## (config/test_settings.py); a module's tests stay on one worker (--dist loadfile).
PYTEST_WORKERS ?= 2

.PHONY: run test prod cluster bench lint format check-services migrate clean lock lockcheck

## Installs come from requirements.lock only (exact versions and hashes); `make lock` is the one
## way it changes. A pyproject.toml that disagrees with the lock stops here with one line.
lockcheck:
	@$(PYTHON) scripts/lockfile.py check

## Then the DevOps toolkit plugin (plugins/devops): Tandem finds plugins by their entry points,
## which only an installed distribution has. Editable, so the checkout is what runs; --no-deps
## because its dependencies are in the lock (the devops extra); --no-build-isolation so building
## it fetches nothing (it uses the venv's setuptools). Tandem works without it.
$(STAMP): requirements.lock plugins/devops/pyproject.toml
	@$(PYTHON) scripts/lockfile.py check
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e plugins/devops
	@touch $(STAMP)

## Re-resolve pyproject.toml's ranges into requirements.lock (uv, installed from the lock).
lock: $(STAMP)
	$(PY) scripts/lockfile.py lock $(VENV)/bin/uv
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	@touch $(STAMP)

migrate: lockcheck $(STAMP)
	$(PY) manage.py migrate --noinput -v0

## Embedded mode: SQLite, in-memory channel layer, runs inside the server. No services needed.
run: migrate
	$(PY) -m config.serve -b $(HOST) -p $(PORT)

## The whole suite against PostgreSQL and Redis (DATABASE_URL, REDIS_URL; default 127.0.0.1).
test: lockcheck $(STAMP)
	@$(PY) scripts/install_test_deps.py
	@$(PY) scripts/check_services.py
	@rm -rf .coverage-data
	$(PY) -m coverage run -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	@$(PY) scripts/coverage_gate.py $(if $(PYTEST_ARGS),--no-gate,)

## Production topology on one machine (Daphne + Celery worker) against local PostgreSQL and
## Redis, with the fake provider as the model unless LLM_MODEL is set.
prod: $(STAMP)
	@$(PY) scripts/check_services.py
	scripts/prod_local.sh

## Scale-out on one machine: nginx in front of two Daphnes, two Celery workers and beat
## (deploy/cluster.py; CLUSTER_PORT, default 8500). bench/cluster.py measures faults on it.
cluster: $(STAMP)
	@$(PY) scripts/check_services.py
	$(PY) deploy/cluster.py --port $(or $(CLUSTER_PORT),8500)

bench: $(STAMP)
	@$(PY) scripts/check_services.py
	$(PY) bench/stream.py

## ruff, mypy (django-stubs; strict where pyproject.toml says) and the import layers.
## mypy imports config.test_settings (the django-stubs plugin needs them); nothing connects.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .tandem .pytest_cache
