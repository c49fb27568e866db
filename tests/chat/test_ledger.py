"""The usage ledger: one row per ended reply, kept through deletions; prices and cost; quotas and budgets.

In-process tests use the test database and a real ``Generation`` where a
reply is stopped; the budget is also checked over real sockets (two daphne
processes on one Redis, the fake provider).
"""

import importlib
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.utils import timezone

from chat import admin_reports, generation, selectors, services
from chat.errors import RateLimited
from chat.models import Message, ModelPrice, UsageEntry, UsageLimit
from chat.providers.base import TextDelta, Usage
from chat.tokens import estimate_usage
from tests.chat.test_reply_limits import ScriptedProvider, generate
from tests.servers import eventually, login


@pytest.fixture
def conversation(owner):
    return services.conversation_create(owner=owner, title="Ledger", model="demo", system_prompt="Be brief.")


def reply_with(conversation, author, *, usage=(10, 5), status="complete", model="demo", estimated=False):
    """A post by ``author`` and its reply ended through ``services.message_finish``; returns the stored reply."""
    _, reply = services.message_submit(conversation=conversation, author=author, content="q", model=model)
    counts = None if usage is None else Usage(usage[0], usage[1], sum(usage))
    return services.message_finish(
        message_id=reply.id,
        status=status,
        content="a",
        reasoning="",
        seq=1,
        usage=counts,
        usage_estimated=estimated,
    )


def post(api, user, conversation):
    return api(user).post(f"/api/conversations/{conversation.id}/messages/", {"content": "one more"})


def at_month_start(entry_ids, *, months_back=0):
    """Move ledger rows to the first day of this month (or ``months_back`` months earlier), 00:00:01 UTC."""
    first = timezone.now().replace(day=1, hour=0, minute=0, second=1, microsecond=0)
    for _ in range(months_back):
        first = (first - timedelta(days=1)).replace(day=1)
    UsageEntry.objects.filter(pk__in=entry_ids).update(created_at=first)


# --- one row per ended reply ------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_ended_reply_writes_one_ledger_row_in_its_transaction(conversation, owner):
    reply = reply_with(conversation, owner, usage=(12, 30))

    (entry,) = UsageEntry.objects.all()
    assert (entry.message_id, entry.conversation_id, entry.requested_by, entry.requested_by_name) == (
        reply.id,
        conversation.id,
        owner,
        "olivia",
    )
    assert (entry.model, entry.status, entry.prompt_tokens, entry.completion_tokens, entry.total_tokens) == (
        "demo",
        "complete",
        12,
        30,
        42,
    )
    assert entry.estimated is False and entry.cost is None and entry.currency == ""
    assert entry.created_at == reply.completed_at
    # The losing writer of a race (stop vs reaper) writes nothing: still one row.
    assert services.message_interrupt(message_id=reply.id, reason="gone") is None
    assert services.message_finish(message_id=reply.id, status="failed", content="", reasoning="", seq=0) is None
    assert UsageEntry.objects.count() == 1


@pytest.mark.django_db
def test_a_reply_without_usage_has_a_row_of_zeros_and_the_reaper_writes_an_estimate(conversation, owner):
    refused = reply_with(conversation, owner, usage=None, status="failed")
    _, reply = services.message_submit(conversation=conversation, author=owner, content="second", model="demo")
    services.message_checkpoint(message_id=reply.id, content="partial 回答", reasoning="", seq=2)
    interrupted = services.message_interrupt(message_id=reply.id, reason="gone")

    rows = {e.message_id: e for e in UsageEntry.objects.all()}
    assert (rows[refused.id].total_tokens, rows[refused.id].estimated, rows[refused.id].status) == (0, False, "failed")
    entry = rows[interrupted.id]
    assert entry.status == "interrupted" and entry.estimated is True
    assert (entry.prompt_tokens, entry.completion_tokens, entry.total_tokens) == (
        interrupted.prompt_tokens,
        interrupted.completion_tokens,
        interrupted.total_tokens,
    )
    assert entry.total_tokens > 0


@pytest.mark.django_db
def test_a_stopped_replys_estimated_tokens_count_toward_the_daily_quota(
    api, conversation, owner, monkeypatch, settings
):
    provider = ScriptedProvider([TextDelta("Let me think "), TextDelta("about 你好 " * 20)], hold=True)
    monkeypatch.setattr(generation, "get_provider", lambda model: provider)
    reply, history, _ = generate(conversation, owner, stop_when=provider.holding)
    assert reply.status == "cancelled" and reply.usage_estimated
    expected = estimate_usage(system_prompt="Be brief.", history=history, received=[reply.content, ""])

    entry = UsageEntry.objects.get(message_id=reply.id)
    assert (entry.total_tokens, entry.estimated, entry.status) == (expected.total_tokens, True, "cancelled")
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_DAILY_TOKEN_QUOTA = expected.total_tokens
    response = post(api, owner, conversation)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert f"({expected.total_tokens:,} so far)" in response.json()["error"]["message"]


# --- deletions never remove usage ------------------------------------------------------------------


@pytest.mark.django_db
def test_deleting_a_conversation_keeps_its_usage_in_the_ledger_the_quota_and_the_report(
    api, conversation, owner, settings
):
    settings.CHAT_DAILY_TOKEN_QUOTA = 100
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    reply_with(conversation, owner, usage=(60, 40))
    assert post(api, owner, conversation).status_code == 429

    conversation.delete()  # the purge's real delete, cascading to the messages

    assert not Message.objects.exists()
    assert UsageEntry.objects.get().total_tokens == 100
    with pytest.raises(RateLimited) as refused:
        selectors.message_allowance_check(user=owner)
    assert refused.value.code == "quota_exceeded"
    today = timezone.localdate()
    (row,) = admin_reports.usage_by_user(start=today, end=today)
    assert (row["user"], row["replies"], row["total_tokens"]) == ("olivia", 1, 100)


@pytest.mark.django_db
def test_the_owners_delete_keeps_the_usage_counted(api, conversation, owner, settings):
    settings.CHAT_DAILY_TOKEN_QUOTA = 100
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    reply_with(conversation, owner, usage=(60, 40))
    assert api(owner).delete(f"/api/conversations/{conversation.id}/").status_code == 204
    fresh = services.conversation_create(owner=owner, model="demo")

    response = post(api, owner, fresh)
    assert response.status_code == 429 and response.json()["error"]["code"] == "quota_exceeded"


@pytest.mark.django_db
def test_deleting_the_user_keeps_their_rows_by_name(conversation, owner, member):
    conversation.members.add(member)
    reply_with(conversation, member, usage=(3, 4))
    reply_with(conversation, owner, usage=(1, 1))

    member.delete()

    entry = UsageEntry.objects.get(requested_by_name="max")
    assert entry.requested_by is None and entry.total_tokens == 7
    today = timezone.localdate()
    users = [(r["user"], r["total_tokens"]) for r in admin_reports.usage_by_user(start=today, end=today)]
    assert users == [("max", 7), ("olivia", 2)]


# --- prices and cost ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cost_is_fixed_from_the_price_in_force_when_the_reply_ends(conversation, owner):
    today = timezone.now().date()
    ModelPrice.objects.create(
        model="demo", input_per_million=1, output_per_million=1, valid_from=today - timedelta(days=30)
    )
    current = ModelPrice.objects.create(
        model="demo", input_per_million="2.5", output_per_million=10, valid_from=today - timedelta(days=1)
    )
    ModelPrice.objects.create(
        model="demo", input_per_million=99, output_per_million=99, valid_from=today + timedelta(1)
    )
    ModelPrice.objects.create(model="other", input_per_million=50, output_per_million=50, currency="EUR")

    first = reply_with(conversation, owner, usage=(1000, 500))
    entry = UsageEntry.objects.get(message_id=first.id)
    assert (entry.cost, entry.currency) == (Decimal("0.0075"), "USD")  # 1000 × 2.5 / 1e6 + 500 × 10 / 1e6

    current.input_per_million, current.output_per_million, current.currency = 100, 100, "EUR"
    current.save()
    second = reply_with(conversation, owner, usage=(1000, 500))

    entry.refresh_from_db()
    assert (entry.cost, entry.currency) == (Decimal("0.0075"), "USD")  # history is not rewritten
    assert UsageEntry.objects.get(message_id=second.id).cost == Decimal("0.15")
    unpriced = reply_with(conversation, owner, usage=(10, 10), model="no-price")
    assert UsageEntry.objects.get(message_id=unpriced.id).cost is None


# --- monthly budgets ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_budget_refuses_posts_until_the_month_ends(api, conversation, owner, member, settings):
    settings.CHAT_DAILY_TOKEN_QUOTA = 0
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    UsageLimit.objects.create(user=owner, monthly_token_budget=1000)
    old = reply_with(conversation, owner, usage=(5000, 5000))
    at_month_start([UsageEntry.objects.get(message_id=old.id).pk], months_back=1)  # last month does not count
    spent = [UsageEntry.objects.get(message_id=reply_with(conversation, owner, usage=(300, 200)).id).pk]
    at_month_start(spent)  # this month, but not today: the daily quota would not see it
    selectors.message_allowance_check(user=owner)
    reply_with(conversation, owner, usage=(300, 200))  # 1,000 tokens this month

    response = post(api, owner, conversation)

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    now = timezone.now()
    next_month = date(now.year + now.month // 12, now.month % 12 + 1, 1)
    assert "1,000 of your 1,000 tokens for this month" in error["message"]
    assert f"resets on {next_month:%Y-%m-%d} at 00:00 UTC" in error["message"]
    until_reset = (datetime.combine(next_month, datetime.min.time(), tzinfo=UTC) - now).total_seconds()
    assert until_reset <= int(response["Retry-After"]) <= until_reset + 2
    # The budget is the owner's alone; 0 on a user means none, whatever the team default.
    settings.CHAT_MONTHLY_TOKEN_BUDGET = 10
    UsageLimit.objects.create(user=member, monthly_token_budget=0)
    conversation.members.add(member)
    reply_with(conversation, member, usage=(300, 200))
    selectors.message_allowance_check(user=member)


@pytest.mark.django_db
def test_the_team_default_token_budget(conversation, owner, settings):
    settings.CHAT_MONTHLY_TOKEN_BUDGET = 20
    reply_with(conversation, owner, usage=(10, 10))
    with pytest.raises(RateLimited) as refused:
        selectors.message_allowance_check(user=owner)
    assert refused.value.code == "budget_exceeded" and "20 of your 20 tokens" in refused.value.message


@pytest.mark.django_db
def test_a_cost_budget_counts_only_its_currency(api, conversation, owner, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_CURRENCY = "EUR"
    UsageLimit.objects.create(user=owner, monthly_cost_budget=Decimal("0.05"))
    ModelPrice.objects.create(model="demo", input_per_million=100, output_per_million=100, currency="EUR")
    ModelPrice.objects.create(model="usd-model", input_per_million=1000, output_per_million=1000, currency="USD")
    reply_with(conversation, owner, usage=(300, 100), model="usd-model")  # 0.40 USD: another currency
    reply_with(conversation, owner, usage=(200, 200))  # 0.04 EUR
    selectors.message_allowance_check(user=owner)
    reply_with(conversation, owner, usage=(50, 50))  # 0.05 EUR in all

    response = post(api, owner, conversation)

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "0.05 of your 0.05 EUR for this month" in error["message"] and "resets on" in error["message"]
    assert int(response["Retry-After"]) > 0


@pytest.mark.processes
def test_the_budget_refuses_over_real_sockets_on_every_process(redis_server, fake_provider, stack_factory):
    model = "fake:chunks=3;prompt_tokens=40;completion_tokens=60"
    stack = stack_factory(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=model,
        extra_env={"CHAT_MONTHLY_TOKEN_BUDGET": "100"},
    ).setup()
    # max: no token budget, 0.001 USD; the model costs 10 USD a million tokens either way.
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        "from chat.models import ModelPrice, UsageLimit\n"
        "ModelPrice.objects.create(model='fake:chunks=3;prompt_tokens=40;completion_tokens=60',"
        " input_per_million=10, output_per_million=10, valid_from='2000-01-01')\n"
        "UsageLimit.objects.create(user=User.objects.get(username='max'), monthly_token_budget=0,"
        " monthly_cost_budget='0.001')\n",
    )
    a, b = stack.start_server(), stack.start_server()
    for username, spent in [("olivia", "100 of your 100 tokens"), ("max", "0.001 of your 0.001 USD")]:
        on_a, on_b = login(a, username), login(b, username)
        conversation = on_a.post("/api/conversations/", json={}).json()
        messages = f"/api/conversations/{conversation['id']}/messages/"
        first = on_a.post(messages, json={"content": "hello"})
        assert first.status_code == 202
        reply_id = first.json()["assistant_message"]["id"]

        def ended(client=on_b, path=f"/api/conversations/{conversation['id']}/", reply_id=reply_id):
            stored = {m["id"]: m for m in client.get(path).json()["messages"]}
            return stored[reply_id]["status"] != "streaming" and stored[reply_id]

        assert eventually(ended)["usage"]["total_tokens"] == 100
        refused = on_b.post(messages, json={"content": "again"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert spent in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) > 0
        assert on_a.post(messages, json={"content": "and again"}).status_code == 429
    rows = stack.query("SELECT requested_by_name, total_tokens, cost, currency FROM chat_usageentry ORDER BY id")
    assert [(name, tokens, currency) for name, tokens, _, currency in rows] == [
        ("olivia", 100, "USD"),
        ("max", 100, "USD"),
    ]
    assert {Decimal(str(cost)) for _, _, cost, _ in rows} == {Decimal("0.001")}


# --- the report command and the back-fill ----------------------------------------------------------------------


def run_report(*args):
    out = io.StringIO()
    call_command("usage_report", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_usage_report_prints_the_ledger_per_user_and_model(conversation, owner, member):
    ModelPrice.objects.create(model="demo", input_per_million=1, output_per_million=2, valid_from=date(2000, 1, 1))
    conversation.members.add(member)
    reply_with(conversation, owner, usage=(100, 50))
    reply_with(conversation, owner, usage=(10, 5), status="cancelled", estimated=True)
    old = reply_with(conversation, member, usage=(7, 3), model="other")
    UsageEntry.objects.filter(message_id=old.id).update(created_at=datetime(2024, 5, 1, 12, tzinfo=UTC))
    member.delete()

    lines = [json.loads(line) for line in run_report("--json").splitlines()]
    assert lines == [
        {
            "user": "max",
            "provider": None,
            "model": "other",
            "replies": 1,
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
            "estimated_tokens": 0,
            "cost": None,
            "currency": "",
        },
        {
            "user": "olivia",
            "provider": "demo",
            "model": "demo",
            "replies": 2,
            "prompt_tokens": 110,
            "completion_tokens": 55,
            "total_tokens": 165,
            "estimated_tokens": 15,
            "cost": "0.00022000",
            "currency": "USD",
        },
    ]
    assert [line["user"] for line in map(json.loads, run_report("--json", "--since", "2025-01-01").splitlines())] == [
        "olivia"
    ]
    assert [json.loads(line)["user"] for line in run_report("--json", "--until", "2024-05-01").splitlines()] == ["max"]
    text = run_report().splitlines()
    assert text[0].split() == [
        "user",
        "provider",
        "model",
        "replies",
        "prompt",
        "completion",
        "total",
        "estimated",
        "cost",
        "currency",
    ]
    assert text[1].split() == ["max", "-", "other", "1", "7", "3", "10", "0", "-"]
    assert text[2].split() == ["olivia", "demo", "demo", "2", "110", "55", "165", "15", "0.00022000", "USD"]
    assert run_report("--since", "2030-01-01").strip().endswith("No replies in this range.")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--since", "yesterday"], "'yesterday' is not a date: enter it as YYYY-MM-DD"),
        (["--until", "2025-02-30"], "'2025-02-30' is not a date"),
        (["--since", "2025-03-02", "--until", "2025-03-01"], "--since 2025-03-02 is after --until 2025-03-01"),
    ],
)
def test_usage_report_rejects_bad_dates(args, error):
    with pytest.raises(CommandError, match=error):
        run_report(*args)


@pytest.mark.django_db
def test_the_migration_back_fills_the_ledger_from_ended_replies(conversation, owner, member):
    backfill = importlib.import_module("chat.migrations.0006_usage_ledger_backfill").backfill
    conversation.members.add(member)
    kept = reply_with(conversation, owner, usage=(1, 2))
    when = timezone.now() - timedelta(days=3)

    def legacy(author, **fields):
        asked = Message.objects.create(
            conversation=conversation, role="user", author=author, content="q", completed_at=when
        )
        return Message.objects.create(
            conversation=conversation,
            role="assistant",
            model="old-model",
            created_at=asked.created_at + timedelta(microseconds=1),
            completed_at=when,
            **fields,
        )

    # Stored before requested_by existed: it counts for the author of the message it answers.
    answered = legacy(member, status="complete", prompt_tokens=4, completion_tokens=5, total_tokens=9)
    stopped = legacy(owner, requested_by=owner, status="cancelled", completion_tokens=3, usage_estimated=True)
    Message.objects.filter(pk=kept.pk).update(total_tokens=999)  # already in the ledger: left alone

    backfill(apps, None)

    rows = {e.message_id: e for e in UsageEntry.objects.all()}
    assert len(rows) == 3 and rows[kept.id].total_tokens == 3
    assert (rows[answered.id].requested_by, rows[answered.id].requested_by_name) == (member, "max")
    assert (rows[answered.id].total_tokens, rows[answered.id].created_at, rows[answered.id].cost) == (9, when, None)
    assert (rows[stopped.id].requested_by_name, rows[stopped.id].estimated) == ("olivia", True)
    assert (rows[stopped.id].prompt_tokens, rows[stopped.id].total_tokens) == (0, 3)


@pytest.mark.django_db
def test_a_cost_budget_of_zero_is_no_budget_like_every_other_limit(api, conversation, owner):
    UsageLimit.objects.create(user=owner, monthly_cost_budget=Decimal("0"))
    response = api(owner).post(f"/api/conversations/{conversation.id}/messages/", {"content": "still allowed"})
    assert response.status_code == 202, response.content
