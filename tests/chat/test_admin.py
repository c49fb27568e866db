"""The admin: read-only changelists and transcripts, exports, the usage summary, and who may see them."""

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from chat.models import Conversation, Message, ModelPrice, UsageEntry
from chat.serializers import conversation_to_dict, message_to_dict

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
CONVERSATIONS = "/admin/chat/conversation/"
MESSAGES = "/admin/chat/message/"
USAGE = "/admin/chat/message/usage/"


def conversation(owner, title, *, model="gpt-x", members=(), at=T0):
    made = Conversation.objects.create(owner=owner, title=title, model=model, created_at=at, updated_at=at)
    made.members.set(members)
    return made


def exchange(conv, author, question, answer, *, at, usage=(10, 5), model=None, **reply):
    """A user message and the assistant reply 1 µs later, as ``services.message_submit`` stores them."""
    asked = Message.objects.create(
        conversation=conv, role="user", author=author, content=question, created_at=at, completed_at=at
    )
    fields = dict(status="complete", finish_reason="stop", time_to_first_token_ms=120, duration_ms=2000)
    if usage:
        fields.update(prompt_tokens=usage[0], completion_tokens=usage[1], total_tokens=sum(usage))
    fields.update(reply)
    answered = Message.objects.create(
        conversation=conv,
        role="assistant",
        content=answer,
        model=model or conv.model,
        created_at=at + timedelta(microseconds=1),
        completed_at=at + timedelta(seconds=2),
        **fields,
    )
    # The ledger row services.usage_record writes when a reply ends: usage reports read it.
    UsageEntry.objects.create(
        message_id=answered.id,
        conversation_id=conv.id,
        requested_by=author,
        requested_by_name=author.username,
        model=answered.model,
        status=answered.status,
        prompt_tokens=answered.prompt_tokens or 0,
        completion_tokens=answered.completion_tokens or 0,
        total_tokens=answered.total_tokens or 0,
        estimated=answered.usage_estimated,
        created_at=answered.completed_at,
    )
    return asked, answered


@pytest.fixture
def team(owner, member, outsider):
    """Roadmap (olivia, shared with max): 3 exchanges, 42 tokens; Recipes (otto): 1 exchange, 7 tokens."""
    roadmap = conversation(owner, "Roadmap", members=[member])
    exchange(roadmap, owner, "plan the zebra launch", "Step one:\nbuy a zebra", at=T0, reasoning="thinking hard")
    exchange(roadmap, member, "what about pricing", "Cheap.", at=T0 + timedelta(minutes=1), usage=(20, 7))
    exchange(
        roadmap,
        owner,
        "zebra again",
        "Partial",
        at=T0 + timedelta(minutes=2),
        usage=None,
        status="failed",
        finish_reason=None,
        error_code="upstream_error",
        error_message="The model provider failed.",
    )
    recipes = conversation(outsider, "Recipes", model="qwen", at=T0 - timedelta(days=400))
    exchange(recipes, outsider, "soup?", '=HYPERLINK("http://evil")', at=T0 + timedelta(days=1), usage=(3, 4))
    return roadmap, recipes


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-root-123", email=""))
    return client


def titles(response):
    assert response.status_code == 200
    return [str(c) for c in response.context["cl"].result_list]


def many_conversations(make_user, count):
    """``count`` conversations, each with 2 members and 2 exchanges."""
    users = [make_user(f"user{i}") for i in range(3)]
    for i in range(count):
        conv = conversation(users[i % 3], f"Conversation {i}", members=users[1:])
        for j in range(2):
            exchange(conv, users[j], f"question {i}.{j}", f"answer {i}.{j}", at=T0 + timedelta(minutes=i * 10 + j))
    return list(Conversation.objects.values_list("pk", flat=True))


# --- conversations changelist ----------------------------------------------


def test_conversation_changelist_shows_counts_and_tokens(superuser_client, team):
    response = superuser_client.get(CONVERSATIONS)

    assert response.status_code == 200
    cl = response.context["cl"]
    rows = {str(c): (c.owner.username, c.member_count, c.message_count, c.total_tokens) for c in cl.result_list}
    assert rows == {"Roadmap": ("olivia", 1, 6, 42), "Recipes": ("otto", 0, 2, 7)}
    html = response.content.decode()
    for header in ("Title", "Owner", "Members", "Model", "Messages", "Total tokens", "Updated at", "Usage by user"):
        assert header in html
    assert "Export selected conversations as JSON" in html
    assert "Delete selected" not in html and "Add conversation" not in html


def test_conversation_filters(superuser_client, team, outsider):
    assert titles(superuser_client.get(CONVERSATIONS, {"owner__id__exact": outsider.pk})) == ["Recipes"]
    assert titles(superuser_client.get(CONVERSATIONS, {"model": "gpt-x"})) == ["Roadmap"]
    assert titles(superuser_client.get(CONVERSATIONS, {"updated_at__year": "2024"})) == ["Recipes"]
    since = {"created_at__gte": "2025-01-01 00:00:00+00:00", "created_at__lt": "2026-01-01 00:00:00+00:00"}
    assert titles(superuser_client.get(CONVERSATIONS, since)) == ["Roadmap"]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("zebra", ["Roadmap"]),  # two of its messages match: listed once
        ("max", ["Roadmap"]),  # a message's author, not the owner
        ("otto", ["Recipes"]),  # the owner
        ("soup", ["Recipes"]),
        ("recipes", ["Recipes"]),  # the title
        ("zebra otto", []),  # every word must match
        ('"buy a zebra"', ["Roadmap"]),
    ],
)
def test_conversation_search(superuser_client, team, term, expected):
    response = superuser_client.get(CONVERSATIONS, {"q": term})

    assert titles(response) == expected
    assert response.context["cl"].result_count == len(expected)


# --- the transcript ------------------------------------------------------------


def test_transcript_shows_every_message_in_order(superuser_client, team):
    roadmap, _ = team
    response = superuser_client.get(f"{CONVERSATIONS}{roadmap.pk}/change/")

    assert response.status_code == 200
    assert [m.content for m in response.context["transcript"]] == [
        "plan the zebra launch",
        "Step one:\nbuy a zebra",
        "what about pricing",
        "Cheap.",
        "zebra again",
        "Partial",
    ]
    html = response.content.decode()
    # The text as written (the page's script renders its Markdown; templates/admin/chat/conversation/change_form.html).
    positions = [html.index(text) for text in ("plan the zebra", "Step one:\nbuy a zebra", "what about", "Cheap.")]
    assert positions == sorted(positions)
    for text in ("thinking hard", "10 / 5 / 15", "upstream_error", "The model provider failed.", "max", "olivia"):
        assert text in html


def test_transcript_is_read_only(superuser_client, team, owner):
    roadmap, _ = team
    page = f"{CONVERSATIONS}{roadmap.pk}/change/"
    message = roadmap.messages.first()

    response = superuser_client.get(page)
    assert response.context["has_change_permission"] is False
    assert 'name="_save"' not in response.content.decode()
    assert superuser_client.post(page, {"title": "Hacked", "owner": owner.pk, "model": "x"}).status_code == 403
    assert superuser_client.get(f"{CONVERSATIONS}add/").status_code == 403
    assert superuser_client.post(f"{CONVERSATIONS}{roadmap.pk}/delete/", {"post": "yes"}).status_code == 403
    assert superuser_client.get(f"{MESSAGES}add/").status_code == 403
    assert superuser_client.post(f"{MESSAGES}{message.pk}/change/", {"content": "Hacked"}).status_code == 403
    assert superuser_client.post(f"{MESSAGES}{message.pk}/delete/", {"post": "yes"}).status_code == 403

    roadmap.refresh_from_db()
    message.refresh_from_db()
    assert (roadmap.title, message.content, roadmap.messages.count()) == ("Roadmap", "plan the zebra launch", 6)


# --- messages changelist --------------------------------------------------------


def test_message_changelist_shows_usage(superuser_client, team):
    response = superuser_client.get(MESSAGES, {"role": "assistant"})

    assert response.status_code == 200
    rows = {
        m.content: (m.conversation.title, m.prompt_tokens, m.completion_tokens, m.total_tokens, m.status)
        for m in response.context["cl"].result_list
    }
    assert rows["Cheap."] == ("Roadmap", 20, 7, 27, "complete")
    assert rows["Partial"] == ("Roadmap", None, None, None, "failed")
    html = response.content.decode()
    # One column each for the tokens (the total) and the timings, so the list fits 1,400 px.
    for header in ("At (UTC)", "From", "Tokens", "Timing (ms)", "Conversation"):
        assert header in html


def test_message_filters_and_search(superuser_client, team):
    def contents(params):
        response = superuser_client.get(MESSAGES, params)
        assert response.status_code == 200
        return sorted(m.content for m in response.context["cl"].result_list)

    assert contents({"status": "failed"}) == ["Partial"]
    assert contents({"model": "qwen"}) == ['=HYPERLINK("http://evil")']
    assert contents({"created_at__day": "11", "created_at__month": "3", "created_at__year": "2025"}) == [
        '=HYPERLINK("http://evil")',
        "soup?",
    ]
    assert contents({"q": "pricing"}) == ["what about pricing"]


def test_message_page_is_read_only(superuser_client, team):
    message = Message.objects.get(content="Cheap.")
    response = superuser_client.get(f"{MESSAGES}{message.pk}/change/")

    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert 'name="_save"' not in response.content.decode()


# --- exports --------------------------------------------------------------------


def run_action(client, action, pks):
    return client.post(CONVERSATIONS, {"action": action, "index": 0, "_selected_action": [str(pk) for pk in pks]})


def test_export_json_holds_contract_objects_with_messages(superuser_client, team):
    roadmap, recipes = team
    response = run_action(superuser_client, "export_json", [roadmap.pk, recipes.pk])

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    exported = {c["title"]: c for c in json.loads(response.content)}
    assert set(exported) == {"Roadmap", "Recipes"}
    for conv in (roadmap, recipes):
        expected = {**conversation_to_dict(conv), "messages": [message_to_dict(m) for m in conv.messages.all()]}
        assert exported[conv.title] == expected
    first_reply = exported["Roadmap"]["messages"][1]
    assert exported["Roadmap"]["owner"] == "olivia" and exported["Roadmap"]["members"] == ["max"]
    assert first_reply["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "estimated": False}
    assert exported["Roadmap"]["messages"][5]["error"] == {
        "code": "upstream_error",
        "message": "The model provider failed.",
    }


def test_export_csv_has_one_row_per_message(superuser_client, team):
    roadmap, recipes = team
    response = run_action(superuser_client, "export_csv", [roadmap.pk])

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["content"] for row in rows] == [m.content for m in roadmap.messages.all()]
    assert rows[3] == {
        "conversation_id": str(roadmap.pk),
        "conversation_title": "Roadmap",
        "owner": "olivia",
        "message_id": str(roadmap.messages.all()[3].pk),
        "created_at": "2025-03-10T12:01:00.000001Z",
        "role": "assistant",
        "author": "",
        "status": "complete",
        "model": "gpt-x",
        "prompt_tokens": "20",
        "completion_tokens": "7",
        "total_tokens": "27",
        "finish_reason": "stop",
        "error_code": "",
        "content": "Cheap.",
    }
    assert rows[2]["author"] == "max" and rows[5]["error_code"] == "upstream_error"

    rows = list(csv.DictReader(io.StringIO(run_action(superuser_client, "export_csv", [recipes.pk]).content.decode())))
    # A spreadsheet must not run model output as a formula.
    assert rows[1]["content"] == '\'=HYPERLINK("http://evil")'


# --- usage summary ----------------------------------------------------------------


def usage_rows(response):
    assert response.status_code == 200
    return [
        (r["user"], r["model"], r["replies"], r["prompt_tokens"], r["completion_tokens"], r["total_tokens"])
        for r in response.context["rows"]
    ]


def test_usage_summary_attributes_replies_to_who_asked(superuser_client, team):
    response = superuser_client.get(USAGE, {"start": "2025-03-10", "end": "2025-03-11"})

    assert usage_rows(response) == [
        ("max", "gpt-x", 1, 20, 7, 27),  # asked in olivia's conversation: counts for max
        ("olivia", "gpt-x", 2, 10, 5, 15),  # the failed reply has no usage
        ("otto", "qwen", 1, 3, 4, 7),
    ]
    assert response.context["totals"] == {
        "replies": 4,
        "prompt_tokens": 33,
        "completion_tokens": 16,
        "total_tokens": 49,
        "estimated_tokens": 0,
        "costs": {},
    }
    html = response.content.decode()
    assert "Download CSV" in html and "(UTC)" in html
    assert usage_rows(superuser_client.get(USAGE, {"start": "2025-03-11", "end": "2025-03-11"})) == [
        ("otto", "qwen", 1, 3, 4, 7)
    ]


def test_usage_summary_as_csv(superuser_client, team):
    response = superuser_client.get(USAGE, {"start": "2025-03-10", "end": "2025-03-10", "format": "csv"})

    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="usage-2025-03-10-2025-03-10.csv"'
    assert list(csv.reader(io.StringIO(response.content.decode()))) == [
        ["user", "provider", "model", "replies", "prompt_tokens", "completion_tokens", "total_tokens"]
        + ["estimated_tokens", "cost", "currency"],
        ["max", "", "gpt-x", "1", "20", "7", "27", "0", "", ""],
        ["olivia", "", "gpt-x", "2", "10", "5", "15", "0", "", ""],
    ]


def test_usage_summary_defaults_to_the_last_30_days(superuser_client, owner):
    conv = conversation(owner, "Now")
    exchange(conv, owner, "recent", "yes", at=timezone.now() - timedelta(days=29), usage=(1, 1))
    exchange(conv, owner, "old", "no", at=timezone.now() - timedelta(days=31), usage=(50, 50))

    response = superuser_client.get(USAGE)

    assert usage_rows(response) == [("olivia", "gpt-x", 1, 1, 1, 2)]
    assert response.context["end"] == timezone.localdate()
    assert response.context["start"] == timezone.localdate() - timedelta(days=29)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"start": "2025-13-01"}, "Enter the date as YYYY-MM-DD"),
        ({"end": "yesterday", "format": "csv"}, "Enter the date as YYYY-MM-DD"),
        ({"start": "2025-03-12", "end": "2025-03-10"}, "The start date must not be after the end date."),
    ],
)
def test_usage_summary_rejects_bad_dates_on_the_page(superuser_client, team, params, error):
    response = superuser_client.get(USAGE, params)

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert error in response.content.decode()


# --- constant query counts -----------------------------------------------------------
# 2 (session, user) + the view's own queries; the same for 2 rows and 20. A page that shows transcript
# content writes one audit row (chat.audit): 1 more.


@pytest.mark.parametrize("count", [2, 20])
def test_conversation_changelist_queries_are_constant(superuser_client, make_user, django_assert_num_queries, count):
    many_conversations(make_user, count)
    # session, user, owner filter, filtered count, full count, rows, date hierarchy (2), model filter, audit row
    with django_assert_num_queries(10):
        response = superuser_client.get(CONVERSATIONS)
    assert len(response.context["cl"].result_list) == count


@pytest.mark.parametrize("count", [2, 20])
def test_conversation_search_queries_are_constant(superuser_client, make_user, django_assert_num_queries, count):
    many_conversations(make_user, count)
    with django_assert_num_queries(10):
        response = superuser_client.get(CONVERSATIONS, {"q": "answer"})
    assert len(response.context["cl"].result_list) == count


@pytest.mark.parametrize("count", [2, 20])
def test_message_changelist_queries_are_constant(superuser_client, make_user, django_assert_num_queries, count):
    many_conversations(make_user, count)
    # session, user, count, rows (conversation and author joined), model filter, date hierarchy (2), audit row
    with django_assert_num_queries(8):
        response = superuser_client.get(MESSAGES)
    assert len(response.context["cl"].result_list) == count * 4


@pytest.mark.parametrize("count", [2, 20])
def test_transcript_queries_are_constant(superuser_client, owner, member, django_assert_num_queries, count):
    conv = conversation(owner, "Long", members=[member])
    for i in range(count // 2):
        exchange(conv, member if i % 2 else owner, f"q{i}", f"a{i}", at=T0 + timedelta(minutes=i))
    ContentType.objects.get_for_model(Conversation)  # cached for the life of a real process
    # session, user, conversation with its counts, members, messages with authors, audit row
    with django_assert_num_queries(6):
        response = superuser_client.get(f"{CONVERSATIONS}{conv.pk}/change/")
    assert len(response.context["transcript"]) == count


@pytest.mark.parametrize("action", ["export_json", "export_csv"])
@pytest.mark.parametrize("count", [2, 20])
def test_export_queries_are_constant(superuser_client, make_user, django_assert_num_queries, action, count):
    pks = many_conversations(make_user, count)
    # session, user, the changelist's owner filter and counts (4, as for any action), conversations, members,
    # messages with authors, the exported ids and the audit row
    with django_assert_num_queries(11):
        response = run_action(superuser_client, action, pks)
    assert response.status_code == 200


@pytest.mark.parametrize("count", [2, 20])
def test_usage_queries_are_constant(superuser_client, make_user, django_assert_num_queries, count):
    for i in range(count):
        user = make_user(f"asker{i}")
        exchange(conversation(user, f"c{i}"), user, "q", "a", at=T0)
    # session, user, the audit row, the table's aggregate, the two charts' (per day and model, top users)
    with django_assert_num_queries(6):
        response = superuser_client.get(USAGE, {"start": "2025-03-10", "end": "2025-03-10"})
    assert len(response.context["rows"]) == count


# --- who may see it ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [CONVERSATIONS, MESSAGES, USAGE])
def test_non_staff_users_are_sent_to_the_admin_login(client, owner, url):
    client.force_login(owner)
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith(f"/admin/login/?next={url}")


def test_staff_need_the_view_permission(client, django_user_model, team):
    roadmap, _ = team
    staff = django_user_model.objects.create_user("sam", password="pw-sam-123", is_staff=True)
    client.force_login(staff)
    assert client.get(CONVERSATIONS).status_code == 403
    assert client.get(USAGE).status_code == 403
    assert run_action(client, "export_json", [roadmap.pk]).status_code == 403

    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_conversation", "view_message"]))
    response = run_action(client, "export_json", [roadmap.pk])
    assert response.status_code == 200
    assert [c["title"] for c in json.loads(response.content)] == ["Roadmap"]
    assert client.get(USAGE).status_code == 200


def test_usage_per_period_attributes_replies_to_who_asked(client, django_user_model):
    """Tokens by user and model per day / week / month (issue 5), attributed by requested_by."""
    from datetime import timedelta

    from django.utils import timezone

    from chat import services
    from chat.models import Message

    admin_user = django_user_model.objects.create_superuser("root", password="pw-123456789")
    asker = django_user_model.objects.create_user("asker", password="pw-123456789")
    conversation = services.conversation_create(owner=admin_user, model="demo")
    today = timezone.now().replace(hour=12)
    for days_ago, tokens in [(0, 10), (0, 5), (1, 7), (40, 100)]:
        _, reply = services.message_submit(conversation=conversation, author=asker, content="q", model="demo")
        services.message_finish(message_id=reply.id, status="complete", content="a", reasoning="", seq=1)
        Message.objects.filter(pk=reply.pk).update(created_at=today - timedelta(days=days_ago), total_tokens=tokens)
        UsageEntry.objects.filter(message_id=reply.pk).update(
            created_at=today - timedelta(days=days_ago), total_tokens=tokens
        )
    client.force_login(admin_user)
    start = (today - timedelta(days=45)).date()
    response = client.get(f"/admin/chat/message/usage/?start={start}&period=day&format=csv")
    assert response.status_code == 200
    rows = [line.split(",") for line in response.content.decode().strip().splitlines()]
    assert rows[0][:2] == ["period", "user"]
    assert rows[0][:4] == ["period", "user", "provider", "model"]
    by_day = {row[0]: (row[1], row[2], int(row[4]), int(row[7])) for row in rows[1:]}
    assert by_day[today.date().isoformat()] == ("asker", "demo", 2, 15)
    assert by_day[(today - timedelta(days=1)).date().isoformat()] == ("asker", "demo", 1, 7)
    month = client.get(f"/admin/chat/message/usage/?start={start}&period=month")
    assert month.status_code == 200 and "Month starting" in month.content.decode()
    assert client.get("/admin/chat/message/usage/?period=year").status_code == 400


def test_usage_limit_override_on_the_user_page(client, django_user_model):
    from chat.models import UsageLimit

    admin_user = django_user_model.objects.create_superuser("root", password="pw-123456789")
    user = django_user_model.objects.create_user("limited", password="pw-123456789")
    client.force_login(admin_user)
    page = client.get(f"/admin/auth/user/{user.pk}/change/")
    assert page.status_code == 200 and "usage_limit-TOTAL_FORMS" in page.content.decode()
    UsageLimit.objects.create(user=user, daily_token_quota=500)
    assert "500" in client.get(f"/admin/auth/user/{user.pk}/change/").content.decode()


# --- the usage ledger, prices and estimates (issue 10) -------------------------------------------------


def test_usage_report_has_estimated_tokens_cost_and_kept_names(superuser_client, team, member):
    roadmap, _ = team
    exchange(roadmap, owner := roadmap.owner, "stop it", "Part", at=T0 + timedelta(minutes=3), usage=(8, 2))
    Message.objects.filter(content="Part").update(status="cancelled", usage_estimated=True)
    UsageEntry.objects.filter(requested_by=owner, total_tokens=10).update(status="cancelled", estimated=True)
    UsageEntry.objects.filter(model="qwen").update(cost="0.00070000", currency="USD")
    member.delete()

    response = superuser_client.get(USAGE, {"start": "2025-03-10", "end": "2025-03-11"})

    keys = ["user", "replies", "total_tokens", "estimated_tokens", "cost"]
    rows = [tuple(r[key] for key in keys) for r in response.context["rows"]]
    assert rows == [("max", 1, 27, 0, None), ("olivia", 3, 25, 10, None), ("otto", 1, 7, 0, Decimal("0.0007"))]
    assert response.context["totals"]["costs"] == {"USD": Decimal("0.0007")}
    html = response.content.decode()
    assert "Estimated tokens" in html and "~10" in html and "0.0007 USD" in html
    download = superuser_client.get(USAGE, {"start": "2025-03-10", "end": "2025-03-11", "format": "csv"})
    csv_rows = list(csv.DictReader(io.StringIO(download.content.decode())))
    assert [(r["user"], r["estimated_tokens"], r["cost"], r["currency"]) for r in csv_rows] == [
        ("max", "0", "", ""),
        ("olivia", "10", "", ""),
        ("otto", "0", "0.00070000", "USD"),
    ]
    # The charts' data: per day and model, and the top users, costs in CHAT_CURRENCY.
    assert response.context["chart_daily"] == [
        {"day": date(2025, 3, 10), "model": "gpt-x", "tokens": 52, "cost": None},
        {"day": date(2025, 3, 11), "model": "qwen", "tokens": 7, "cost": Decimal("0.0007")},
    ]
    assert response.context["chart_top_users"] == [
        {"user": "max", "tokens": 27, "cost": None},
        {"user": "olivia", "tokens": 25, "cost": None},
        {"user": "otto", "tokens": 7, "cost": Decimal("0.0007")},
    ]


def test_estimated_usage_is_shown_as_such(superuser_client, team):
    roadmap, _ = team
    _, reply = exchange(roadmap, roadmap.owner, "stop", "Par", at=T0 + timedelta(minutes=5), usage=(100, 23))
    Message.objects.filter(pk=reply.pk).update(status="cancelled", usage_estimated=True)

    listing = superuser_client.get(MESSAGES).content.decode()
    assert "~123 (estimated)" in listing
    assert "~23 (estimated)" in superuser_client.get(f"{MESSAGES}{reply.pk}/change/").content.decode()
    assert "165 (~123 estimated)" in superuser_client.get(CONVERSATIONS).content.decode()


def test_ledger_admin_is_read_only_and_searchable(superuser_client, team):
    ledger = "/admin/chat/usageentry/"
    response = superuser_client.get(ledger, {"q": "otto"})
    assert response.status_code == 200
    assert [e.requested_by_name for e in response.context["cl"].result_list] == ["otto"]
    assert len(superuser_client.get(ledger, {"estimated__exact": "0"}).context["cl"].result_list) == 4
    assert len(superuser_client.get(ledger, {"model": "qwen"}).context["cl"].result_list) == 1
    html = superuser_client.get(ledger).content.decode()
    assert "Add usage ledger entry" not in html and "Delete selected" not in html
    entry = UsageEntry.objects.first()
    assert superuser_client.get(f"{ledger}add/").status_code == 403
    assert superuser_client.post(f"{ledger}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert superuser_client.post(f"{ledger}{entry.pk}/change/", {"total_tokens": 0}).status_code == 403
    assert UsageEntry.objects.get(pk=entry.pk).total_tokens == entry.total_tokens


def test_prices_are_set_in_the_admin_and_never_rewrite_the_ledger(superuser_client, team):
    UsageEntry.objects.update(cost="0.5", currency="USD")
    prices = "/admin/chat/modelprice/"
    page = superuser_client.get(f"{prices}add/").content.decode()
    assert "cost is fixed on its usage ledger row when the reply ends" in page
    fields = {"model": "gpt-x", "input_per_million": "2.5", "output_per_million": "10", "currency": "USD"}
    response = superuser_client.post(f"{prices}add/", {**fields, "valid_from": "2025-01-01"})
    assert response.status_code == 302
    price = ModelPrice.objects.get()
    changed = {**fields, "input_per_million": "3", "valid_from": "2025-01-01"}
    response = superuser_client.post(f"{prices}{price.pk}/change/", changed)
    assert response.status_code == 302
    assert ModelPrice.objects.get().input_per_million == Decimal("3")
    assert set(UsageEntry.objects.values_list("cost", flat=True)) == {Decimal("0.5")}
    assert "gpt-x" in superuser_client.get(prices).content.decode()


def test_monthly_budgets_on_the_user_page(superuser_client, owner):
    page = superuser_client.get(f"/admin/auth/user/{owner.pk}/change/").content.decode()
    for field in ("monthly_token_budget", "monthly_cost_budget"):
        assert f"usage_limit-__prefix__-{field}" in page
