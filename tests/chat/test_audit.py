"""The audit trail: what reading transcripts, exporting, usage and limit changes record, and that nobody rewrites it."""

import io
import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from chat.audit import audit_record
from chat.models import AuditEntry, UsageLimit
from tests.chat.test_admin import CONVERSATIONS, MESSAGES, USAGE, conversation, exchange, run_action
from tests.servers import login

pytestmark = pytest.mark.django_db

AUDIT = "/admin/chat/auditentry/"
T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", password="pw-root-123", email="")


@pytest.fixture
def admin_client(client, root):
    client.force_login(root)
    return client


@pytest.fixture
def roadmap(owner, member):
    made = conversation(owner, "Roadmap", members=[member])
    exchange(made, owner, "plan the zebra launch", "Step one: buy a zebra", at=T0)
    return made


def rows(**filters):
    return list(AuditEntry.objects.filter(**filters).order_by("at", "id"))


# --- reading transcripts ---------------------------------------------------------


def test_viewing_a_transcript_writes_exactly_one_row(admin_client, roadmap, owner):
    response = admin_client.get(f"{CONVERSATIONS}{roadmap.pk}/change/")

    assert response.status_code == 200
    [entry] = rows()
    assert (entry.actor.username, entry.actor_name, entry.action) == ("root", "root", "transcript_viewed")
    assert (entry.target_type, entry.target_id, entry.ip) == ("conversation", str(roadmap.pk), "127.0.0.1")
    assert entry.request_id == response["X-Request-ID"]

    # Not a view: a refused POST, and a missing conversation (a redirect to the index).
    assert (
        admin_client.post(f"{CONVERSATIONS}{roadmap.pk}/change/", {"title": "x", "owner": owner.pk}).status_code == 403
    )
    missing = admin_client.get(f"{CONVERSATIONS}00000000-0000-0000-0000-000000000000/change/")
    assert missing.status_code == 302
    assert len(rows()) == 1


def test_viewing_a_message_records_it_and_its_conversation(admin_client, roadmap):
    message = roadmap.messages.get(role="assistant")

    assert admin_client.get(f"{MESSAGES}{message.pk}/change/").status_code == 200

    [entry] = rows()
    assert (entry.action, entry.target_type, entry.target_id) == ("transcript_viewed", "message", str(message.pk))
    assert entry.detail == {"conversation": str(roadmap.pk)}


@pytest.mark.parametrize("superuser", [True, False])
def test_nobody_can_change_or_delete_audit_rows(client, django_user_model, roadmap, superuser):
    if superuser:
        admin = django_user_model.objects.create_superuser("root", password="pw-root-123", email="")
    else:
        admin = django_user_model.objects.create_user("sam", password="pw-sam-123", is_staff=True)
        admin.user_permissions.add(*Permission.objects.filter(content_type__model="auditentry"))
    client.force_login(admin)
    entry = audit_record(actor=admin, action="transcript_viewed", target_type="conversation", target_id=roadmap.pk)
    page = f"{AUDIT}{entry.pk}/"

    assert client.get(f"{page}change/").status_code == 200  # the read-only detail page
    assert client.get(f"{page}delete/").status_code == 403
    assert client.post(f"{page}delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"{page}change/", {"actor_name": "someone-else", "action": "purged"}).status_code == 403
    assert client.get(f"{AUDIT}add/").status_code == 403
    bulk = {"action": "delete_selected", "index": 0, "_selected_action": [str(entry.pk)], "post": "yes"}
    assert client.post(AUDIT, bulk).status_code == 403

    listing = client.get(AUDIT)
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "Delete selected" not in html and 'name="action"' not in html and "Add audit entry" not in html
    assert listing.context["has_add_permission"] is False
    entry.refresh_from_db()
    assert (entry.actor_name, entry.action) == (admin.username, "transcript_viewed")
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


# --- list pages -------------------------------------------------------------------


def test_a_list_page_of_twenty_transcripts_writes_one_row(admin_client, make_user):
    people = [make_user(f"user{i}") for i in range(2)]
    made = [conversation(people[i % 2], f"Conversation {i}", at=T0 + timedelta(minutes=i)) for i in range(20)]

    response = admin_client.get(CONVERSATIONS, {"q": "Conversation"})

    assert len(response.context["cl"].result_list) == 20
    [entry] = rows()
    assert (entry.action, entry.target_type, entry.target_id) == ("transcript_viewed", "conversation", "")
    assert sorted(entry.detail["ids"]) == sorted(str(c.pk) for c in made)
    assert entry.detail["count"] == 20 and entry.detail["params"] == {"q": "Conversation"}


def test_a_message_list_page_writes_one_row_for_the_page(admin_client, roadmap, owner):
    for i in range(9):
        exchange(roadmap, owner, f"question {i}", f"answer {i}", at=T0 + timedelta(minutes=i + 1))

    response = admin_client.get(MESSAGES, {"role": "assistant"})

    shown = [str(m.pk) for m in response.context["cl"].result_list]
    assert len(shown) == 10
    [entry] = rows()
    assert (entry.action, entry.target_type) == ("transcript_viewed", "message")
    assert entry.detail == {"ids": shown, "count": 10, "params": {"role": "assistant"}}

    # A page that shows no transcript writes nothing; nor does a bad filter (a redirect).
    assert admin_client.get(MESSAGES, {"q": "no such words"}).status_code == 200
    assert admin_client.get(MESSAGES, {"no_such_field": "1"}).status_code == 302
    assert len(rows()) == 1


# --- exports, usage, limits ----------------------------------------------------------


@pytest.mark.parametrize("action", ["export_json", "export_csv"])
def test_an_export_writes_one_row_with_the_ids(admin_client, roadmap, outsider, action):
    recipes = conversation(outsider, "Recipes")

    response = run_action(admin_client, action, [roadmap.pk, recipes.pk])

    assert response.status_code == 200
    [entry] = rows()
    assert (entry.action, entry.target_type, entry.actor_name) == ("transcript_exported", "conversation", "root")
    assert sorted(entry.detail["ids"]) == sorted([str(roadmap.pk), str(recipes.pk)])
    assert entry.detail["format"] == action.removeprefix("export_")


def test_the_usage_report_writes_usage_viewed(admin_client, roadmap):
    assert admin_client.get(USAGE, {"start": "2025-03-01", "end": "2025-03-10", "period": "day"}).status_code == 200
    assert admin_client.get(USAGE, {"start": "2025-03-01", "end": "2025-03-10", "format": "csv"}).status_code == 200
    assert admin_client.get(USAGE, {"start": "not a date"}).status_code == 400

    page, download = rows()
    assert (page.action, page.target_type) == ("usage_viewed", "usage")
    assert page.detail == {"start": "2025-03-01", "end": "2025-03-10", "period": "day", "format": "html"}
    assert download.detail == {"start": "2025-03-01", "end": "2025-03-10", "period": "", "format": "csv"}


def user_page_data(client, user, **values):
    """The POST of the user's admin page as it stands, its one UsageLimit inline form set to ``values``."""
    page = client.get(f"/admin/auth/user/{user.pk}/change/")
    data = {"username": user.username, "is_active": "on", "date_joined_0": "2025-03-10", "date_joined_1": "12:00:00"}
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update({f"{formset.prefix}-{k}": v for k, v in formset.management_form.initial.items()})
        for form in formset.initial_forms:
            data.update({field.html_name: field.value() for field in form if field.value() is not None})
    data.update({"usage_limit-TOTAL_FORMS": "1", "usage_limit-0-user": str(user.pk), "_save": "Save"})
    data.update({f"usage_limit-0-{name}": value for name, value in values.items()})
    return data


def test_changing_limits_writes_before_and_after(admin_client, owner):
    page = f"/admin/auth/user/{owner.pk}/change/"
    UsageLimit.objects.create(user=owner, daily_token_quota=500, monthly_cost_budget="12.5")

    response = admin_client.post(
        page, user_page_data(admin_client, owner, daily_token_quota="900", monthly_cost_budget="20")
    )

    assert response.status_code == 302
    [entry] = rows()
    assert (entry.action, entry.target_type, entry.target_id) == ("limits_changed", "user", str(owner.pk))
    assert entry.detail["user"] == "olivia"
    assert entry.detail["before"] == {
        "daily_token_quota": 500,
        "messages_per_minute": None,
        "max_open_streams": None,
        "monthly_token_budget": None,
        "monthly_cost_budget": "12.5000",
    }
    assert entry.detail["after"] == {**entry.detail["before"], "daily_token_quota": 900, "monthly_cost_budget": "20"}

    # Unchanged: no row. Invalid: the form again, no row. Removed: after is null.
    same = user_page_data(admin_client, owner, daily_token_quota="900", monthly_cost_budget="20")
    assert admin_client.post(page, same).status_code == 302
    invalid = admin_client.post(page, user_page_data(admin_client, owner, daily_token_quota="-1"))
    assert invalid.status_code == 200 and invalid.context["errors"]
    assert len(rows()) == 1
    removed = user_page_data(admin_client, owner, daily_token_quota="900", monthly_cost_budget="20", DELETE="on")
    assert admin_client.post(page, removed).status_code == 302
    assert not UsageLimit.objects.filter(user=owner).exists()
    assert rows()[-1].detail["after"] is None and rows()[-1].detail["before"]["daily_token_quota"] == 900


def test_setting_first_limits_writes_before_null(admin_client, owner):
    response = admin_client.post(
        f"/admin/auth/user/{owner.pk}/change/", user_page_data(admin_client, owner, messages_per_minute="3")
    )

    assert response.status_code == 302
    [entry] = rows(action="limits_changed")
    assert entry.detail["before"] is None and entry.detail["after"]["messages_per_minute"] == 3


# --- the audit admin ------------------------------------------------------------------


@pytest.fixture
def trail(root, owner):
    """Three rows on two days: root viewed a conversation, root exported two, the system purged."""
    viewed = audit_record(actor=root, action="transcript_viewed", target_type="conversation", target_id="c-one")
    exported = audit_record(actor=root, action="transcript_exported", detail={"ids": ["c-two", "c-three"]})
    purged = audit_record(actor=None, action="purged", detail={"conversations": 4, "reason": "retention"})
    for entry, at in [(viewed, T0), (exported, T0 + timedelta(hours=1)), (purged, T0 + timedelta(days=1))]:
        AuditEntry.objects.filter(pk=entry.pk).update(at=at)
    return viewed, exported, purged


def listed(client, params):
    response = client.get(AUDIT, params)
    assert response.status_code == 200
    return sorted(entry.action for entry in response.context["cl"].result_list)


def test_the_audit_admin_lists_filters_and_searches(admin_client, trail):
    assert listed(admin_client, {}) == ["purged", "transcript_exported", "transcript_viewed"]
    assert listed(admin_client, {"action__exact": "purged"}) == ["purged"]
    assert listed(admin_client, {"actor_name": "root"}) == ["transcript_exported", "transcript_viewed"]
    assert listed(admin_client, {"at__year": "2025", "at__month": "3", "at__day": "11"}) == ["purged"]
    assert listed(admin_client, {"q": "system"}) == ["purged"]  # the actor
    assert listed(admin_client, {"q": "c-one"}) == ["transcript_viewed"]  # the target
    assert listed(admin_client, {"q": "c-three"}) == ["transcript_exported"]  # the detail's text
    assert listed(admin_client, {"q": "retention"}) == ["purged"]

    html = admin_client.get(AUDIT).content.decode()
    for header in ("At", "Actor", "Action", "Target", "Ip", "Request id"):
        assert header in html
    # Reading the trail is not itself recorded.
    assert AuditEntry.objects.count() == 3


# --- manage.py audit_log -----------------------------------------------------------------


def audit_log(*args):
    out = io.StringIO()
    call_command("audit_log", *args, stdout=out)
    return out.getvalue().splitlines()


def test_audit_log_prints_the_trail_oldest_first(trail):
    lines = audit_log()

    assert len(lines) == 3
    assert lines[0].startswith("2025-03-10T12:00:00Z root transcript_viewed conversation:c-one")
    assert lines[1].startswith("2025-03-10T13:00:00Z root transcript_exported")
    assert '"c-three"' in lines[1]
    assert lines[2].startswith("2025-03-11T12:00:00Z system purged") and '"retention"' in lines[2]


def test_audit_log_json_and_since(trail):
    objects = [json.loads(line) for line in audit_log("--json")]

    assert objects[0] == {
        "at": "2025-03-10T12:00:00Z",
        "actor": "root",
        "action": "transcript_viewed",
        "target_type": "conversation",
        "target_id": "c-one",
        "ip": None,
        "request_id": "",
        "detail": {},
    }
    assert [o["action"] for o in objects] == ["transcript_viewed", "transcript_exported", "purged"]
    assert objects[2]["actor"] == "system" and objects[2]["detail"] == {"conversations": 4, "reason": "retention"}
    since = [json.loads(line)["action"] for line in audit_log("--json", "--since", "2025-03-10T12:30:00+00:00")]
    assert since == ["transcript_exported", "purged"]
    assert [line.split()[2] for line in audit_log("--since", "2025-03-11")] == ["purged"]


@pytest.mark.parametrize("since", ["yesterday", "2025-13-01", ""])
def test_audit_log_refuses_a_bad_since(since):
    with pytest.raises(CommandError, match="--since must be an ISO 8601 date or time"):
        audit_log("--since", since)


# --- over a real socket -----------------------------------------------------------------


def test_a_real_request_records_its_client_address_and_request_id(stack_factory):
    """daphne's REMOTE_ADDR, not a header the client sent, and the X-Request-ID the client sent."""
    stack = stack_factory().setup()
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\nUser.objects.create_superuser('root', password='pw-root-123')",
    )
    port = stack.start_server()
    olivia = login(port, "olivia")
    made = olivia.post("/api/conversations/", json={"title": "Secret plans"}).json()
    root = login(port, "root", "pw-root-123")

    response = root.get(
        f"/admin/chat/conversation/{made['id']}/change/",
        headers={"X-Request-ID": "audit-req-42", "X-Forwarded-For": "203.0.113.9"},
    )

    assert response.status_code == 200 and "Secret plans" in response.text
    [row] = stack.query("SELECT actor_name, action, target_id, ip, request_id FROM chat_auditentry")
    assert row[:2] == ("root", "transcript_viewed")
    assert row[2].replace("-", "") == made["id"].replace("-", "")
    assert (str(row[3]), row[4]) == ("127.0.0.1", "audit-req-42")  # PostgreSQL gives the inet as an IPv4Address
    [printed] = [json.loads(line) for line in stack.manage("audit_log", "--json").stdout.splitlines()]
    assert (printed["actor"], printed["ip"], printed["request_id"]) == ("root", "127.0.0.1", "audit-req-42")

    with pytest.raises(subprocess.CalledProcessError) as refused:
        stack.manage("audit_log", "--since", "last tuesday")
    assert refused.value.returncode != 0
    assert "--since must be an ISO 8601 date or time" in refused.value.stderr
