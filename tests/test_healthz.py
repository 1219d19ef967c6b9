"""/healthz answers load balancers probing by IP address over plain HTTP."""

from django.test import Client


def test_it_answers_before_host_checks_and_https_redirect(settings):
    settings.ALLOWED_HOSTS = ["tandem.example"]
    settings.SECURE_SSL_REDIRECT = True
    response = Client().get("/healthz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_other_paths_still_check_the_host(settings):
    settings.ALLOWED_HOSTS = ["tandem.example"]
    assert Client().get("/accounts/login/", HTTP_HOST="10.1.2.3").status_code == 400
