"""Per-user limits: message rate, daily token quota, open event streams."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat import services
from chat.models import Message, UsageEntry, UsageLimit
from tests.servers import eventually, login
from tests.sseclient import start_viewer


def error_of(response):
    return response.json()["error"]


@pytest.fixture
def conversation(owner):
    return services.conversation_create(owner=owner, title="Limits", model="demo")


def post(api, user, conversation):
    return api(user).post(f"/api/conversations/{conversation.id}/messages/", {"content": "one more"})


def add_exchange(conversation, user, *, tokens=None, minutes_ago=0):
    """A finished user message and reply, as if sent ``minutes_ago``."""
    user_message, reply = services.message_submit(conversation=conversation, author=user, content="q", model="demo")
    services.message_finish(message_id=reply.id, status="complete", content="a", reasoning="", seq=1)
    when = timezone.now() - timedelta(minutes=minutes_ago)
    Message.objects.filter(pk=user_message.pk).update(created_at=when)
    Message.objects.filter(pk=reply.pk).update(created_at=when + timedelta(microseconds=1), total_tokens=tokens)
    # Quotas read the usage ledger.
    UsageEntry.objects.filter(message_id=reply.pk).update(created_at=when, total_tokens=tokens or 0)


@pytest.mark.django_db
def test_message_rate_limit(api, owner, conversation, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 3
    add_exchange(conversation, owner, minutes_ago=5)  # outside the window
    for _ in range(3):
        add_exchange(conversation, owner)
    before = Message.objects.count()
    response = post(api, owner, conversation)
    assert response.status_code == 429
    assert error_of(response)["code"] == "rate_limited"
    assert "3 messages a minute" in error_of(response)["message"]
    assert 1 <= int(response["Retry-After"]) <= 61
    assert Message.objects.count() == before


@pytest.mark.django_db
def test_per_user_override_of_the_rate(api, owner, member, conversation, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 100
    UsageLimit.objects.create(user=owner, messages_per_minute=1)
    add_exchange(conversation, owner)
    response = post(api, owner, conversation)
    assert response.status_code == 429
    assert error_of(response)["message"].startswith("You can send 1 message a minute. Try again in ")
    # Another user's messages do not count against the owner, and the owner's override is theirs alone.
    conversation.members.add(member)
    own = services.conversation_create(owner=member, model="demo")
    user_message, _ = services.message_submit(
        conversation=own, author=member, content="mine", model="demo", messages_per_minute=100
    )
    assert user_message.author == member


@pytest.mark.django_db
def test_daily_token_quota(api, owner, conversation, settings):
    settings.CHAT_DAILY_TOKEN_QUOTA = 1000
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    add_exchange(conversation, owner, tokens=600)
    add_exchange(conversation, owner, tokens=5000, minutes_ago=60 * 30)  # yesterday does not count
    from chat.selectors import message_allowance_check

    message_allowance_check(user=owner)  # 600 < 1000: allowed
    add_exchange(conversation, owner, tokens=400)
    response = post(api, owner, conversation)
    assert response.status_code == 429
    error = error_of(response)
    assert error["code"] == "quota_exceeded" and "1,000 tokens" in error["message"]
    retry = int(response["Retry-After"])
    assert 0 < retry <= 24 * 3600 + 1


@pytest.mark.django_db
def test_zero_means_unlimited(owner, conversation, settings):
    from chat.selectors import message_allowance_check

    settings.CHAT_DAILY_TOKEN_QUOTA = 10
    UsageLimit.objects.create(user=owner, daily_token_quota=0)
    add_exchange(conversation, owner, tokens=10_000)
    message_allowance_check(user=owner)


@pytest.mark.processes
def test_open_stream_cap_across_processes(redis_server, stack_factory):
    stack = stack_factory(redis_url=redis_server.url, extra_env={"CHAT_MAX_STREAMS_PER_USER": "2"}).setup()
    a, b = stack.start_server(), stack.start_server()
    on_a, on_b = login(a, "max"), login(b, "max")
    conversation = on_a.post("/api/conversations/", json={}).json()
    path = f"/api/conversations/{conversation['id']}/events/"
    first = start_viewer(on_a, path, until=lambda e: False)
    second = start_viewer(on_b, path, until=lambda e: False)
    assert first.status == second.status == 200
    third = on_b.get(path)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "too_many_streams"
    assert int(third.headers["Retry-After"]) > 0
    # Another user is not affected.
    other = login(b, "olivia")
    assert other.get(f"/api/conversations/{conversation['id']}/").status_code == 404
    # Closing a stream frees its slot.
    first.close()
    first.ended.wait(5)
    fourth = eventually(
        lambda: (viewer := start_viewer(on_b, path, until=lambda e: False)).status == 200 and viewer,
        timeout=5,
        interval=0.1,
    )
    for viewer in (second, fourth):
        viewer.close()
