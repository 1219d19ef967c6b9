"""The team's model settings help people choose (issue 16): model names suggested per provider
from litellm's list (extracted at build time: the web process never imports litellm for it), help
for the API base and the temperature; a repository's credential field only for its method."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.test import Client

from assistant.llm.known import FILE, known_models
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_model_field_suggests_known_models(alice, team):
    html = client_for(alice).get("/t/acme/settings/").content.decode()
    assert 'list="known-models"' in html
    datalist = html[html.index('<datalist id="known-models"') : html.index("</datalist>")]
    stored = json.loads(FILE.read_text())
    for provider in ("openai", "anthropic", "gemini"):
        assert stored[provider], provider
        assert f'<option value="{stored[provider][0]}">' in datalist
    assert datalist.count("<option") == len(known_models()) < 1000  # bounded
    assert "self-hosted or proxy endpoint" in html  # API base
    assert "Lower is more predictable" in html  # temperature


def test_the_web_process_does_not_import_litellm_to_suggest_models():
    code = (
        "import django, os, sys;"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings');"
        "django.setup();"
        "import config.asgi, assistant.settings_views;"
        "from assistant.llm.known import known_models; known_models();"
        "print('litellm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_repository_credentials_are_marked_by_method(alice, team):
    html = client_for(alice).get("/t/acme/repos/").content.decode()
    assert 'data-show-if="auth=https_token" data-testid="field-token"' in html
    assert 'data-show-if="auth=ssh_key" data-testid="field-ssh_key"' in html
    assert "data-show-if" not in html[html.index('data-testid="field-url"') - 80 :][:80]
