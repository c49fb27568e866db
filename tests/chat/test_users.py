"""``GET /api/users/?q=``: the share dialog's people picker, and the plain wording of quota and length errors."""

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import selectors, services
from chat.models import Conversation, UsageLimit
from tests.chat.test_limits import add_exchange

pytestmark = pytest.mark.django_db

USERS = "/api/users/"


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["username"] for row in response.json()["users"]]


@pytest.fixture
def team(make_user):
    make_user("Alice", first_name="Alice", last_name="Martin", email="alice@example.com")
    make_user("alfred", first_name="Alfred", last_name="Hughes", email="alfred@example.com")
    make_user("bob", first_name="Roberta", last_name="Alvarez", email="bob@example.com")
    make_user("al", email="al@example.com")
    make_user("alumnus", is_active=False, email="gone@example.com")
    return make_user("zoe")


def test_signed_in_users_only(client, team):
    anonymous = Client(headers={"Accept": "application/json"})
    response = anonymous.get(USERS, {"q": "al"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "users" not in response.json()


def test_prefix_of_username_or_name_case_insensitive_without_email_or_inactive(api, team):
    session = api(team)
    body = session.get(USERS + "?q=AL").json()
    # The exact username first, then by username whatever its case; "bob" by his last name.
    assert body == {
        "users": [
            {"username": "al", "full_name": ""},
            {"username": "alfred", "full_name": "Alfred Hughes"},
            {"username": "Alice", "full_name": "Alice Martin"},
            {"username": "bob", "full_name": "Roberta Alvarez"},
        ]
    }
    # An inactive account is never listed, and no address is ever sent.
    assert "alumnus" not in str(body) and "@" not in session.get(USERS + "?q=alu").content.decode()
    assert names(session.get(USERS + "?q=alice m")) == ["Alice"]  # the full name
    assert names(session.get(USERS + "?q=rob")) == ["bob"]  # the first name
    assert names(session.get(USERS + "?q=example")) == []  # the email is not searched
    assert names(session.get(USERS + "?q=%25")) == [] and names(session.get(USERS + "?q=__")) == []  # no wildcards


def test_short_prefix_finds_nobody_and_a_page_is_small(api, make_user, team):
    session = api(team)
    # One letter would let anyone page through the whole directory.
    assert names(session.get(USERS + "?q=a")) == []
    assert names(session.get(USERS)) == []
    assert names(session.get(USERS + "?q=%20%20al%20")) == ["al", "alfred", "Alice", "bob"]
    for number in range(30):
        make_user(f"team{number:02d}")
    assert len(names(session.get(USERS + "?q=team"))) == selectors.USER_SEARCH_MAX_RESULTS == 20
    too_long = session.get(USERS + "?q=" + "x" * 151)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "too_long"
    assert session.get(USERS + "?q=a%00b").status_code == 400


def test_one_query(team):
    with CaptureQueriesContext(connection) as queries:
        assert [name for name, _ in selectors.user_search(prefix="al")] == ["al", "alfred", "Alice", "bob"]
    assert len(queries) == 1


def test_bearer_token_may_search(team):
    _, secret = services.api_token_create(user=team, name="script")
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    assert names(client.get(USERS, {"q": "alf"})) == ["alfred"]


def test_adding_a_member_matches_the_username_case_insensitively(api, owner, team):
    conversation = Conversation.objects.create(owner=owner, model="demo")
    response = api(owner).post(f"/api/conversations/{conversation.id}/members/", {"username": "ALICE"})
    assert response.status_code == 201, response.content
    assert response.json()["members"] == ["Alice"]


# --- the plain wording of limits ------------------------------------------------------


def test_a_too_long_message_says_both_lengths(api, owner, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 32_000
    conversation = Conversation.objects.create(owner=owner, model="demo")
    response = api(owner).post(f"/api/conversations/{conversation.id}/messages/", {"content": "x" * 100_000})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == ("Your message is too long: 100,000 characters; the limit is 32,000.")
    title = api(owner).patch(f"/api/conversations/{conversation.id}/", {"title": "t" * 201})
    assert title.json()["error"]["message"] == "The title is too long: 201 characters; the limit is 200."


def test_the_quota_message_gives_the_wait_once_and_plainly(api, owner, settings, monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 3, 4, 18, 44, 1, tzinfo=UTC))
    settings.CHAT_DAILY_TOKEN_QUOTA = 1000
    conversation = Conversation.objects.create(owner=owner, model="demo")
    add_exchange(conversation, owner, tokens=1200)
    response = api(owner).post(f"/api/conversations/{conversation.id}/messages/", {"content": "more"})
    assert response.status_code == 429
    assert response.json()["error"]["message"] == (
        "You have used today's 1,000 tokens (1,200 so far). "
        "Your quota resets at midnight UTC, in 5 h 16 min; an administrator can raise it."
    )
    assert response["Retry-After"] == str(5 * 3600 + 15 * 60 + 59 + 1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30, "under a minute"),
        (60, "1 min"),
        (61, "2 min"),
        (3600, "1 h"),
        (18959, "5 h 16 min"),
        (2 * 86400 + 60, "2 d"),
    ],
)
def test_waits_read_as_a_person_says_them(seconds, text):
    assert selectors._wait(seconds) == text


def test_usage_today_against_the_quota(owner, settings):
    settings.CHAT_DAILY_TOKEN_QUOTA = 50_000
    conversation = Conversation.objects.create(owner=owner, model="demo")
    add_exchange(conversation, owner, tokens=700)
    add_exchange(conversation, owner, tokens=300)
    add_exchange(conversation, owner, tokens=9_000, minutes_ago=60 * 30)  # yesterday
    usage = selectors.usage_today_for_user(user=owner)
    assert (usage["tokens"], usage["replies"], usage["quota"]) == (1000, 2, 50_000)
    UsageLimit.objects.create(user=owner, daily_token_quota=0)
    assert selectors.usage_today_for_user(user=owner)["quota"] is None
