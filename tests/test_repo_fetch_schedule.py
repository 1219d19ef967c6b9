"""The periodic fetch (Celery beat) refreshes every mirror and records failures on the row."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings

from assistant.models import Repository
from assistant.tasks import fetch_repositories
from tests.test_repos import origin, root  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db


def test_it_fetches_every_repository_and_records_failures(team, origin, root, tmp_path):  # noqa: F811
    good = Repository.objects.create(team=team, name="demo", url=str(origin))
    bad = Repository.objects.create(team=team, name="gone", url=str(tmp_path / "nowhere"))

    fetch_repositories()  # one bad repository does not stop the others

    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.last_fetched is not None and good.last_fetch_error == ""
    assert bad.last_fetched is None and "no git repository was found" in bad.last_fetch_error


def test_it_is_scheduled():
    schedule = django_settings.CELERY_BEAT_SCHEDULE["fetch-repositories"]
    assert schedule["task"] == "assistant.fetch_repositories"
    assert schedule["schedule"] == django_settings.REPO_FETCH_MINUTES * 60
