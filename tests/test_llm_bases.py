"""A team's API base can't send the team's key to the server's own network (issue 12, item 7).

Link-local and metadata addresses are refused always; private and loopback ones unless the
operator sets LLM_ALLOW_PRIVATE_BASES (the test settings do, for the fake provider on
127.0.0.1; these tests switch it off). Refused when saved, with a form error in words, and
before every call, after resolving the name (a name that resolved elsewhere when saved), with
a sentence: on Test connection and in the conversation. The site's own LLM_API_BASE is trusted.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from django.test import Client

from accounts.models import Team
from assistant import llm
from assistant.agent import execute_run
from assistant.llm.bases import BaseRefused, check_saved
from assistant.models import Message, RunStatus
from assistant.services import message_send
from tests.conftest import PASSWORD

ALWAYS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/v1",
    "http://100.100.100.200/",
    "http://[fd00:ec2::254]/",
    "http://0.0.0.0:8080/v1",
    "http://[::]/v1",
    "http://[::ffff:169.254.169.254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://224.0.0.1/",
]
PRIVATE = [
    "http://127.0.0.1:11434",
    "http://localhost:11434/v1",
    "http://api.localhost/v1",
    "http://10.1.2.3/v1",
    "http://192.168.1.20:8000/v1",
    "http://172.16.0.9/v1",
    "http://[::1]:8000/v1",
    "http://[fd12::1]/v1",
    "http://2130706433/v1",  # 127.0.0.1 as one number
    "http://0x7f.1/v1",
    "http://100.64.0.1/v1",
]
PUBLIC = ["https://api.openai.com/v1", "https://8.8.8.8/v1", "", "https://llm.example.com"]


@pytest.mark.parametrize("url", ALWAYS)
def test_link_local_and_metadata_bases_are_refused_always(url, settings):
    settings.LLM_ALLOW_PRIVATE_BASES = True
    with pytest.raises(BaseRefused):
        check_saved(url)


@pytest.mark.parametrize("url", PRIVATE)
def test_private_bases_need_the_operators_permission(url, settings):
    settings.LLM_ALLOW_PRIVATE_BASES = False
    with pytest.raises(BaseRefused, match="LLM_ALLOW_PRIVATE_BASES"):
        check_saved(url)
    settings.LLM_ALLOW_PRIVATE_BASES = True
    check_saved(url)


@pytest.mark.parametrize("url", PUBLIC)
def test_public_bases_are_fine(url, settings):
    settings.LLM_ALLOW_PRIVATE_BASES = False
    check_saved(url)


def test_other_schemes_are_refused():
    with pytest.raises(BaseRefused, match="http"):
        check_saved("file:///etc/passwd")


def signed_in(user) -> Client:
    client = Client()
    assert client.login(email=user.email, password=PASSWORD)
    return client


@pytest.mark.django_db
def test_saving_a_refused_base_is_a_form_error_in_words(team, alice, settings):
    settings.LLM_ALLOW_PRIVATE_BASES = False
    client = signed_in(alice)
    form = {"llm_model": "openai/gpt-4o", "llm_api_base": "http://169.254.169.254/v1"}
    page = client.post("/t/acme/settings/", form).content.decode()
    assert "link-local, metadata or reserved address" in page
    local = {**form, "llm_api_base": "http://127.0.0.1:11434"}
    assert "LLM_ALLOW_PRIVATE_BASES" in client.post("/t/acme/settings/", local).content.decode()
    assert Team.objects.get(slug="acme").llm_api_base == ""
    tested = client.post("/t/acme/settings/test/", form).content.decode()
    assert "Connection failed" in tested and "metadata" in tested
    settings.LLM_ALLOW_PRIVATE_BASES = True
    assert client.post("/t/acme/settings/", local).status_code == 302
    assert Team.objects.get(slug="acme").llm_api_base == "http://127.0.0.1:11434"


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.done = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.done = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def rebinding(monkeypatch):
    """llm.rebind.example resolves to 127.0.0.1 when called (it may have said anything when
    the base was saved)."""
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host == "llm.rebind.example":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.fixture
def listener():
    made = Listener()
    yield made
    made.close()


def test_a_name_resolving_to_loopback_is_refused_at_call_time(settings, rebinding, listener):
    settings.LLM_ALLOW_PRIVATE_BASES = False
    base = f"http://llm.rebind.example:{listener.port}/v1"
    check_saved(base)  # a name: nothing to say without resolving it
    config = llm.LLMConfig(model="openai/fake-model", api_base=base, api_key="team-secret")
    with pytest.raises(llm.LLMError) as refused:
        asyncio.run(llm.check_connection(config))
    assert refused.value.code == "base_refused"
    assert "private or loopback address" in refused.value.message
    assert listener.accepted == 0  # the key was never sent
    # The operator's own base is trusted as it is.
    site = llm.LLMConfig(model="openai/fake-model", api_base=base, api_key="k", trusted=True)
    with pytest.raises(llm.LLMError) as failed:
        asyncio.run(llm.check_connection(site))
    assert failed.value.code != "base_refused"
    assert listener.accepted >= 1


@pytest.mark.django_db(transaction=True)
def test_a_run_against_a_refused_base_fails_with_a_sentence(
    team, alice, conversation, settings, rebinding, listener, no_runs
):
    # no_runs: the run is executed here, not queued to a stack's worker that a test before
    # this one may have left running on the same broker (it claimed the run first).
    settings.LLM_ALLOW_PRIVATE_BASES = False
    team.llm_model = "openai/fake-model"
    team.llm_api_base = f"http://llm.rebind.example:{listener.port}/v1"
    team.llm_api_key = "team-secret"
    team.save()
    sent = message_send(conversation=conversation, author=alice, content="Hello")
    asyncio.run(execute_run(str(sent.run.uuid)))
    sent.run.refresh_from_db()
    assert sent.run.status == RunStatus.FAILED
    assert "private or loopback address" in sent.run.error
    assert listener.accepted == 0
    assert not Message.objects.filter(run=sent.run, content__contains="team-secret").exists()


def test_the_streaming_client_checks_the_address_it_connects_to(settings, monkeypatch, listener):
    """A rebinding name: public for the check before the call, loopback a moment later when
    the lean client connects. The connection's own lookup is checked too."""
    settings.LLM_ALLOW_PRIVATE_BASES = False
    settings.LLM_STREAM_CLIENT = "direct"
    real = socket.getaddrinfo
    answers = iter(["8.8.8.8"])

    def fake(host, *args, **kwargs):
        if host == "llm.rebind.example":
            return real(next(answers, "127.0.0.1"), *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    config = llm.LLMConfig(
        model="openai/fake-model",
        api_base=f"http://llm.rebind.example:{listener.port}/v1",
        api_key="team-secret",
    )

    async def reply():
        return [item async for item in llm.stream_chat(config, [{"role": "user", "content": "Hi"}])]

    with pytest.raises(llm.LLMError) as refused:
        asyncio.run(reply())
    assert refused.value.code == "base_refused"
    assert "127.0.0.1" in refused.value.message
    assert listener.accepted == 0
