"""The account pages under /accounts/: password reset only when email is configured."""

import importlib

import pytest
from django.core import mail
from django.test import Client
from django.urls import clear_url_caches

import config.urls

RESET_PAGES = ("/accounts/password_reset/", "/accounts/password_reset/done/", "/accounts/reset/done/")


def reload_urls():
    importlib.reload(config.urls)
    clear_url_caches()


@pytest.fixture
def email_configured(settings):
    """The site as configured with EMAIL_HOST (mail caught by Django's locmem backend)."""
    settings.EMAIL_HOST = "smtp.example.com"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    reload_urls()
    yield
    settings.EMAIL_HOST = ""
    reload_urls()


@pytest.mark.django_db
def test_without_email_there_is_no_password_reset(settings, make_user):
    assert settings.EMAIL_HOST == ""
    make_user("olivia", email="olivia@example.com")
    client = Client()
    for page in RESET_PAGES:
        assert client.get(page).status_code == 404
    response = client.post("/accounts/password_reset/", {"email": "olivia@example.com"})
    assert response.status_code == 404
    assert mail.outbox == []
    assert "Forgot your password?" not in client.get("/accounts/login/").text


@pytest.mark.django_db
def test_the_other_account_pages_remain(make_user):
    client = Client()
    assert client.get("/accounts/login/").status_code == 200
    assert client.get("/accounts/password_change/").status_code == 302  # to the login page
    client.force_login(make_user("olivia"))
    assert client.get("/accounts/password_change/").status_code == 200
    assert client.get("/accounts/password_change/done/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302


@pytest.mark.django_db
def test_with_email_the_password_reset_sends_a_link(email_configured, make_user):
    make_user("olivia", email="olivia@example.com")
    client = Client()
    assert 'href="/accounts/password_reset/"' in client.get("/accounts/login/").text
    assert client.get("/accounts/password_reset/").status_code == 200
    response = client.post("/accounts/password_reset/", {"email": "olivia@example.com"})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password_reset/done/"
    assert len(mail.outbox) == 1
    assert "/accounts/reset/" in mail.outbox[0].body


@pytest.mark.django_db
def test_admins_see_and_can_clear_locked_sign_ins(django_user_model):
    from axes.models import AccessAttempt

    AccessAttempt.objects.create(
        username="olivia", ip_address="203.0.113.7", user_agent="x", failures_since_start=5, get_data="", post_data=""
    )
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-root-123", email=""))
    page = client.get("/admin/axes/accessattempt/")
    assert page.status_code == 200
    assert "203.0.113.7" in page.text
