"""Schemathesis fuzzes every /api/v1/ operation, in process, from the OpenAPI schema the API
serves: no request it can make gets a 500, and every answer (status, headers, body) is one the
schema describes. Half the examples aim at real objects of the team, so the successful paths
are fuzzed too, not only the 404s of random ids."""

from __future__ import annotations

import time

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from assistant.models import (
    RepoJob,
    RepoJobKind,
    Repository,
    Run,
    RunStatus,
    ToolCall,
    ToolCallStatus,
)
from assistant.services import message_send
from tests.api_client import make_key

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

EXAMPLES = 50  # per operation: the whole run stays well under a minute
SKIPPED = {
    # An endless text/event-stream: the stream tests read it over real HTTP.
    ("GET", "/conversations/{conversation_id}/events"),
}


@pytest.fixture
def world(team, alice, conversation, settings, tmp_path):
    settings.API_RATE_PER_MINUTE = 0  # hundreds of requests in a few seconds
    settings.API_KEY_RATE_PER_MINUTE = 0
    settings.REPOS_ROOT = tmp_path / "repos"
    sent = message_send(conversation=conversation, author=alice, content="Build it")
    Run.objects.filter(pk=sent.run.pk).update(status=RunStatus.WAITING)
    call = ToolCall.objects.create(
        run=sent.run,
        step=1,
        index=0,
        call_id="c1",
        name="run_command",
        arguments='{"command": "make"}',
        status=ToolCallStatus.AWAITING,
    )
    repo = Repository.objects.create(team=team, name="w", url="https://github.com/acme/w.git")
    job = RepoJob.objects.create(  # a pull request opened: its whole shape is answered
        kind=RepoJobKind.PULL_REQUEST,
        status="done",
        repository=repo,
        conversation=conversation,
        branch="tandem/w",
        base="main",
        result="opened",
        url="https://github.com/acme/w/pull/7",
        number=7,
    )
    return {
        "key": make_key(team, alice),
        "ids": {
            "conversation_id": str(conversation.uuid),
            "run_id": str(sent.run.uuid),
            "call_id": str(call.uuid),
            "job_id": str(job.uuid),
        },
    }


@pytest.fixture
def app():
    """Django as a WSGI app, in this thread, on the test's own database connection (so
    without the per-request connection clean-up, which Django's test client skips too)."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


# Requests the schema can't tell from good ones, and the API rightly refuses: a cursor it never
# gave out (cursors are signed), and what only the data decides (an unknown repository, a
# message of nothing but spaces, a NUL character).
REFUSED_THOUGH_SCHEMA_VALID = {
    "listConversations": ["400"],
    "createConversation": ["422"],
    "sendMessage": ["422"],
    "createShare": ["422"],  # a public link where the team's admins don't allow them
    "pushConversation": ["422"],  # a commit message of nothing but spaces
    "openPullRequest": ["422"],  # a title of spaces, a base that isn't a branch name
}
CONFIG = {
    "operations": [
        {
            "include-operation-id": operation_id,
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "429", *statuses]
                }
            },
        }
        for operation_id, statuses in REFUSED_THOUGH_SCHEMA_VALID.items()
    ]
}


def test_the_api_answers_as_its_schema_says(world, app):
    schema = schemathesis.openapi.from_wsgi(
        "/api/v1/openapi.json", app, config=schemathesis.Config.from_dict(CONFIG)
    )
    headers = {"Authorization": f"Bearer {world['key']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deleting the conversation last, so the operations before it find it.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    fuzzed = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue

        # Valid requests and invalid ones (wrong types, missing fields, bad values).
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=cases, aim=st.booleans())
        @hypothesis_settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples every run: a failure can be replayed
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case, aim):
            # Aim valid requests only: an invalid one must stay as invalid as it was made.
            if aim and case.meta.generation.mode == GenerationMode.POSITIVE:
                for name in case.path_parameters or {}:
                    case.path_parameters[name] = world["ids"][name]
                if case.query and "team" in case.query:
                    case.query["team"] = "acme"
            response = case.call(headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            case.validate_response(response, headers=headers)

        check()
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    elapsed = time.monotonic() - started
    print(
        f"\nschemathesis: {len(fuzzed)} operations x {EXAMPLES} examples in {elapsed:.1f} s; "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    assert len(fuzzed) == len(operations) - len(SKIPPED) >= 10
