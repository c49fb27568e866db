"""Retention and legal hold: soft delete, restore, holds, the purge, its command and its hourly lock.

The clock is moved by passing ``now=`` to the purge or by dating rows in the
past, never by waiting.
"""

import asyncio
import io
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone

from chat import reaper, selectors, services
from chat.eventlog import MemoryEventLog, RedisEventLog
from chat.models import AuditEntry, Conversation, Message, UsageEntry, UserLegalHold
from tests.servers import login
from tests.sseclient import start_viewer

CONVERSATIONS = "/admin/chat/conversation/"
USERS = "/admin/auth/user/"
DAY = timedelta(days=1)


@pytest.fixture
def shared(owner, member):
    conversation = services.conversation_create(owner=owner, title="Merger plans", model="demo")
    conversation.members.add(member)
    _, reply = services.message_submit(conversation=conversation, author=owner, content="the secret plan", model="demo")
    services.message_finish(message_id=reply.id, status="complete", content="noted", reasoning="", seq=1)
    return conversation


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", password="pw-root-123", email="")


@pytest.fixture
def admin_client(client, root):
    client.force_login(root)
    return client


def url(conversation, rest=""):
    return f"/api/conversations/{conversation.id}/{rest}"


def audit_rows(action):
    return list(AuditEntry.objects.filter(action=action).order_by("at", "pk"))


# --- soft delete ---------------------------------------------------------------------


@pytest.mark.django_db
def test_delete_hides_the_conversation_from_everyone_at_once_and_keeps_it(api, owner, member, shared):
    response = api(owner).delete(url(shared))
    assert response.status_code == 204

    row = Conversation.objects.get(pk=shared.pk)
    assert row.deleted_at is not None and row.deleted_by == owner
    assert Message.objects.filter(conversation=shared).count() == 2
    for person in (owner, member):
        client = api(person)
        for path in (url(shared), url(shared, "events/"), f"/c/{shared.pk}/"):
            assert client.get(path).status_code == 404, path
        assert client.get("/api/conversations/").json()["conversations"] == []
        assert client.get("/api/conversations/?q=Merger").json()["conversations"] == []
        assert client.post(url(shared, "messages/"), {"content": "still there?"}).status_code == 404
    assert Message.objects.filter(conversation=shared).count() == 2

    again = api(owner).delete(url(shared))
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "conversation_not_found"
    assert Conversation.objects.get(pk=shared.pk).deleted_at == row.deleted_at


@pytest.mark.django_db
def test_a_stream_of_a_soft_deleted_conversation_is_lost_as_deleted(client, owner, member, shared):
    """The periodic re-check of open streams (a lost signal) names the right reason."""
    client.force_login(member)
    session_key = client.session.session_key
    assert selectors.stream_access_lost(session_key=session_key, user_id=member.pk, conversation_id=shared.pk) is None

    # The row as the owner's delete leaves it: kept, marked deleted.
    Conversation.objects.filter(pk=shared.pk).update(deleted_at=timezone.now(), deleted_by=owner)
    lost = selectors.stream_access_lost(session_key=session_key, user_id=member.pk, conversation_id=shared.pk)
    assert lost == "deleted"


@pytest.mark.django_db
def test_a_purged_conversation_is_deleted_for_a_stream_that_followed_it_and_removed_for_a_mere_list(
    client, owner, member, shared
):
    """Both re-checks agree on a row that is gone; an id only listed still tells nothing of whether it existed."""
    client.force_login(member)
    session_key = client.session.session_key
    shared_id = str(shared.pk)
    never = str(uuid.uuid4())

    def lost_many(ids, followed):
        return selectors.stream_access_lost_many(
            session_key=session_key, user_id=member.pk, conversation_ids=ids, followed=followed
        )

    assert lost_many([shared_id, never], followed=False) == (None, {never: "removed"})
    assert lost_many([shared_id], followed=True) == (None, {})
    Conversation.objects.filter(pk=shared.pk).delete()  # as the purge leaves it
    assert selectors.stream_access_lost(session_key=session_key, user_id=member.pk, conversation_id=shared.pk) == (
        "deleted"
    )
    # The stream had been reading it: purged, so deleted, as the stream of that one conversation says.
    assert lost_many([shared_id], followed=True) == (None, {shared_id: "deleted"})
    # Listed when a stream opens: gone or never there read the same.
    assert lost_many([shared_id, never], followed=False) == (None, {shared_id: "removed", never: "removed"})


@pytest.fixture(scope="module")
def servers(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(redis_url=redis_server.url, llm_base_url=fake_provider.base_url, llm_models="fake:chunks=3")
    stack.setup(usernames=("olivia", "max"))
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


@pytest.mark.processes
def test_delete_ends_streams_on_another_process_and_keeps_the_row(servers):
    stack, a, b = servers
    owner, member = login(a, "olivia"), login(b, "max")
    conversation = owner.post("/api/conversations/", json={"title": "to delete"}).json()
    path = f"/api/conversations/{conversation['id']}/"
    assert owner.post(f"{path}members/", json={"username": "max"}).status_code == 201
    viewer = start_viewer(member, f"{path}events/", until=lambda e: False)
    assert viewer.status == 200

    assert owner.delete(path).status_code == 204
    assert viewer.ended.wait(5), [e.type for e in viewer.events]
    assert viewer.events[-1].type == "access.revoked" and viewer.events[-1].data == {"reason": "deleted"}
    rows = stack.query("SELECT deleted_at FROM chat_conversation WHERE id = ?", (stack.uuid(conversation["id"]),))
    assert len(rows) == 1 and rows[0][0] is not None
    assert member.get(path).status_code == 404
    assert owner.delete(path).status_code == 404


# --- the admin: deleted marked, restore, holds ----------------------------------------


@pytest.mark.django_db
def test_admin_lists_deleted_conversations_marked_with_when_and_by_whom(admin_client, owner, shared):
    kept = services.conversation_create(owner=owner, title="Lunch", model="demo")
    services.conversation_delete(conversation=shared, user=owner)

    page = admin_client.get(f"{CONVERSATIONS}?deleted=yes").content.decode()
    assert "Merger plans" in page and "Lunch" not in page
    assert f"{timezone.localtime(Conversation.objects.get(pk=shared.pk).deleted_at):%Y-%m-%d %H:%M} by olivia" in page
    assert "purged after" in page
    page = admin_client.get(f"{CONVERSATIONS}?deleted=no").content.decode()
    assert "Lunch" in page and "Merger plans" not in page
    assert "by olivia" in admin_client.get(f"{CONVERSATIONS}{shared.pk}/change/").content.decode()
    assert kept.deleted_at is None


@pytest.mark.django_db
def test_admin_restores_a_deleted_conversation_and_members_see_it_again(admin_client, api, root, owner, member, shared):
    services.conversation_delete(conversation=shared, user=owner)
    assert api(member).get(url(shared)).status_code == 404

    response = admin_client.post(
        CONVERSATIONS, {"action": "restore_conversations", "_selected_action": [str(shared.pk)]}
    )
    assert response.status_code == 302

    row = Conversation.objects.get(pk=shared.pk)
    assert row.deleted_at is None and row.deleted_by is None
    for person in (owner, member):
        assert api(person).get(url(shared)).json()["title"] == "Merger plans"
        assert [c["id"] for c in api(person).get("/api/conversations/").json()["conversations"]] == [str(shared.pk)]
    [entry] = audit_rows("conversation_restored")
    assert (entry.actor, entry.target_type, entry.target_id) == (root, "conversation", str(shared.pk))


@pytest.mark.django_db
def test_restore_and_holds_need_the_change_permission(client, django_user_model, owner, shared):
    staff = django_user_model.objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    client.force_login(staff)
    services.conversation_delete(conversation=shared, user=owner)

    page = client.get(CONVERSATIONS).content.decode()
    assert "export_json" in page and "restore_conversations" not in page and "set_conversation_hold" not in page
    client.post(CONVERSATIONS, {"action": "restore_conversations", "_selected_action": [str(shared.pk)]})
    assert Conversation.objects.get(pk=shared.pk).deleted_at is not None
    assert not audit_rows("conversation_restored")


@pytest.mark.django_db
def test_conversation_legal_hold_asks_for_a_reason_then_sets_and_releases_it(admin_client, root, shared):
    selected = {"_selected_action": [str(shared.pk)]}

    form = admin_client.post(CONVERSATIONS, {"action": "set_conversation_hold", **selected})
    assert form.status_code == 200 and 'name="reason"' in form.content.decode()
    empty = admin_client.post(
        CONVERSATIONS, {"action": "set_conversation_hold", "apply": "yes", "reason": " ", **selected}
    )
    assert empty.status_code == 200 and "This field is required" in empty.content.decode()
    assert not Conversation.objects.get(pk=shared.pk).on_legal_hold and not audit_rows("legal_hold_set")

    done = admin_client.post(
        CONVERSATIONS, {"action": "set_conversation_hold", "apply": "yes", "reason": "Case 42", **selected}
    )
    assert done.status_code == 302
    row = Conversation.objects.get(pk=shared.pk)
    assert (row.on_legal_hold, row.legal_hold_reason, row.legal_hold_set_by) == (True, "Case 42", root)
    [entry] = audit_rows("legal_hold_set")
    assert (entry.target_type, entry.target_id, entry.detail) == ("conversation", str(shared.pk), {"reason": "Case 42"})
    assert "Merger plans" in admin_client.get(f"{CONVERSATIONS}?legal_hold=yes").content.decode()

    admin_client.post(
        CONVERSATIONS, {"action": "release_conversation_hold", "apply": "yes", "reason": "Closed", **selected}
    )
    row = Conversation.objects.get(pk=shared.pk)
    assert not row.on_legal_hold and row.legal_hold_reason == ""
    [entry] = audit_rows("legal_hold_released")
    assert entry.detail == {"reason": "Closed", "hold_reason": "Case 42"}


@pytest.mark.django_db
def test_user_legal_hold_is_set_and_released_from_the_user_admin(admin_client, root, owner):
    selected = {"_selected_action": [str(owner.pk)]}
    form = admin_client.post(USERS, {"action": "set_user_hold", **selected})
    assert form.status_code == 200 and 'name="reason"' in form.content.decode()

    admin_client.post(USERS, {"action": "set_user_hold", "apply": "yes", "reason": "Litigation hold", **selected})
    hold = UserLegalHold.objects.get(user=owner)
    assert (hold.reason, hold.set_by) == ("Litigation hold", root)
    [entry] = audit_rows("legal_hold_set")
    assert (entry.target_type, entry.target_id, entry.detail["reason"]) == ("user", str(owner.pk), "Litigation hold")
    assert "Litigation hold" in admin_client.get(f"{USERS}{owner.pk}/change/").content.decode()

    admin_client.post(USERS, {"action": "release_user_hold", "apply": "yes", "reason": "Settled", **selected})
    assert not UserLegalHold.objects.filter(user=owner).exists()
    [entry] = audit_rows("legal_hold_released")
    assert entry.detail["reason"] == "Settled" and entry.detail["hold_reason"] == "Litigation hold"


# --- the purge -----------------------------------------------------------------------------


def dated(owner, title, *, updated_days_ago=0, deleted_days_ago=None, now=None):
    """A conversation with one exchange, last active and (optionally) deleted that many days before ``now``."""
    now = now or timezone.now()
    conversation = services.conversation_create(owner=owner, title=title, model="demo")
    _, reply = services.message_submit(conversation=conversation, author=owner, content=title, model="demo")
    Message.objects.filter(pk=reply.pk).update(status="complete", completed_at=now)
    fields = {"updated_at": now - timedelta(days=updated_days_ago)}
    if deleted_days_ago is not None:
        fields.update(deleted_at=now - timedelta(days=deleted_days_ago), deleted_by=owner)
    Conversation.objects.filter(pk=conversation.pk).update(**fields)
    return conversation


def kept_titles():
    return sorted(Conversation.objects.values_list("title", flat=True))


@pytest.mark.django_db
def test_purge_respects_both_windows_and_every_legal_hold(settings, owner, member, make_user):
    settings.CHAT_DELETED_RETENTION_DAYS, settings.CHAT_RETENTION_DAYS = 30, 365
    held_person, stranger = make_user("hilda"), make_user("sven")
    UserLegalHold.objects.create(user=held_person, reason="Case 7")
    dated(owner, "deleted 29 days ago", updated_days_ago=40, deleted_days_ago=29)
    dated(owner, "deleted 31 days ago", updated_days_ago=40, deleted_days_ago=31)
    dated(owner, "idle 364 days", updated_days_ago=364)
    dated(owner, "idle 366 days", updated_days_ago=366)
    on_hold = dated(owner, "held, deleted 60 days ago", updated_days_ago=60, deleted_days_ago=60)
    Conversation.objects.filter(pk=on_hold.pk).update(legal_hold_set_at=timezone.now(), legal_hold_reason="Case 9")
    dated(held_person, "held owner's delete", updated_days_ago=400, deleted_days_ago=400)
    shared_idle = dated(stranger, "idle, shared with a held person", updated_days_ago=400)
    shared_idle.members.add(held_person)
    written_in = dated(stranger, "idle, a held person wrote in it", updated_days_ago=400)
    Message.objects.create(
        conversation=written_in, role="user", author=held_person, content="mine", completed_at=timezone.now()
    )

    result = services.conversation_purge_expired(now=timezone.now())

    assert result.counts == {"deleted": 1, "inactive": 1, "held": 4, "messages": 4}
    assert kept_titles() == sorted(
        [
            "deleted 29 days ago",
            "idle 364 days",
            "held, deleted 60 days ago",
            "held owner's delete",
            "idle, shared with a held person",
            "idle, a held person wrote in it",
        ]
    )
    # Moving the clock on a year expires the rest, but holds still keep theirs.
    services.conversation_purge_expired(now=timezone.now() + 365 * DAY)
    assert kept_titles() == [
        "held owner's delete",
        "held, deleted 60 days ago",
        "idle, a held person wrote in it",
        "idle, shared with a held person",
    ]
    # Released, they go with the next run.
    UserLegalHold.objects.all().delete()
    Conversation.objects.update(legal_hold_set_at=None)
    services.conversation_purge_expired(now=timezone.now())
    assert kept_titles() == []


@pytest.mark.django_db
def test_zero_days_keeps_for_ever(settings, owner):
    settings.CHAT_DELETED_RETENTION_DAYS, settings.CHAT_RETENTION_DAYS = 0, 0
    dated(owner, "deleted long ago", updated_days_ago=5000, deleted_days_ago=5000)
    dated(owner, "idle for ages", updated_days_ago=5000)
    result = services.conversation_purge_expired(now=timezone.now())
    assert result.counts == {"deleted": 0, "inactive": 0, "held": 0, "messages": 0}
    assert len(kept_titles()) == 2


@pytest.mark.django_db
def test_a_deleted_conversation_is_restorable_until_purged_then_gone(settings, owner, member, shared):
    settings.CHAT_DELETED_RETENTION_DAYS = 30
    services.conversation_delete(conversation=shared, user=owner)
    services.conversation_purge_expired(now=timezone.now() + 29 * DAY)
    services.conversation_restore(conversation=Conversation.objects.get(pk=shared.pk), admin=None)
    assert selectors.conversation_is_visible(user=member, conversation_id=shared.pk)

    services.conversation_delete(conversation=Conversation.objects.get(pk=shared.pk), user=owner)
    services.conversation_purge_expired(now=timezone.now() + 31 * DAY)
    assert not Conversation.objects.filter(pk=shared.pk).exists()
    assert not Message.objects.filter(conversation_id=shared.pk).exists()


@pytest.mark.django_db
def test_the_usage_ledger_survives_a_purge(settings, owner, shared):
    reply = Message.objects.get(conversation=shared, role="assistant")
    UsageEntry.objects.filter(message_id=reply.pk).delete()  # whatever finishing it wrote: one row, ours
    UsageEntry.objects.create(
        message_id=reply.pk,
        conversation_id=shared.pk,
        requested_by=owner,
        requested_by_name="olivia",
        model="demo",
        status="complete",
        prompt_tokens=12,
        completion_tokens=30,
        total_tokens=42,
    )
    services.conversation_delete(conversation=shared, user=owner)
    result = services.conversation_purge_expired(now=timezone.now() + 31 * DAY)

    assert result.counts["deleted"] == 1 and not Conversation.objects.exists() and not Message.objects.exists()
    entry = UsageEntry.objects.get(message_id=reply.pk)
    assert (entry.conversation_id, entry.requested_by, entry.total_tokens) == (shared.pk, owner, 42)


@pytest.mark.django_db
def test_each_run_writes_one_purged_audit_row_with_its_counts(settings, owner):
    settings.CHAT_DELETED_RETENTION_DAYS, settings.CHAT_RETENTION_DAYS = 30, 90
    dated(owner, "old delete", deleted_days_ago=31)
    dated(owner, "idle", updated_days_ago=91)

    services.conversation_purge_expired(now=timezone.now())
    services.conversation_purge_expired(now=timezone.now())

    first, second = audit_rows("purged")
    assert first.actor is None and first.actor_name == "system"
    assert first.detail == {
        "deleted": 1,
        "inactive": 1,
        "held": 0,
        "messages": 4,
        "deleted_retention_days": 30,
        "retention_days": 90,
    }
    assert second.detail["deleted"] == second.detail["inactive"] == 0


@pytest.mark.django_db
def test_purge_expired_command_dry_run_changes_nothing_then_purges(settings, owner):
    settings.CHAT_DELETED_RETENTION_DAYS, settings.CHAT_RETENTION_DAYS = 30, 90
    gone = dated(owner, "old delete", deleted_days_ago=31)
    dated(owner, "idle", updated_days_ago=91)
    dated(owner, "fresh")

    out = io.StringIO()
    call_command("purge_expired", "--dry-run", stdout=out)
    assert out.getvalue().startswith(
        "Would purge 2 conversations with 4 messages: 1 deleted more than 30 days ago, "
        "1 inactive for more than 90 days; 0 expired but kept under legal hold.\n"
    )
    assert f"  {gone.pk} deleted\n" in out.getvalue()
    assert len(kept_titles()) == 3 and not audit_rows("purged")

    out = io.StringIO()
    call_command("purge_expired", stdout=out)
    assert out.getvalue().startswith("Purged 2 conversations with 4 messages")
    assert kept_titles() == ["fresh"] and len(audit_rows("purged")) == 1


# --- the hourly lock -----------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def two_processes_logs(request):
    """Two processes' views of one event log: one in-process log shared, or two Redis clients."""
    if request.param == "memory":
        log = MemoryEventLog()
        return log, log
    url = request.getfixturevalue("redis_server").url
    prefix = f"test-{uuid.uuid4().hex}:"
    logs = RedisEventLog(url), RedisEventLog(url)
    for log in logs:
        log.prefix = prefix
    return logs


@pytest.mark.django_db
def test_only_one_of_two_processes_purges_per_hour(settings, owner, two_processes_logs):
    settings.CHAT_DELETED_RETENTION_DAYS = 30
    dated(owner, "old delete", deleted_days_ago=31)
    first, second = two_processes_logs

    async def both():
        return await asyncio.gather(reaper.purge_when_due(log=first), reaper.purge_when_due(log=second))

    results = async_to_sync(both)()
    ran = [r for r in results if r is not None]
    assert len(ran) == 1 and ran[0].counts["deleted"] == 1
    assert len(audit_rows("purged")) == 1
    # Within the hour neither runs again.
    assert async_to_sync(reaper.purge_when_due)(log=first) is None
    assert len(audit_rows("purged")) == 1


@pytest.mark.django_db
def test_a_conversation_whose_reply_still_streams_waits_for_the_next_run(settings, owner):
    settings.CHAT_DELETED_RETENTION_DAYS, settings.CHAT_RETENTION_DAYS = 30, 0
    conversation = dated(owner, "deleted mid-reply", updated_days_ago=40, deleted_days_ago=31)
    _, reply = services.message_submit(conversation=conversation, author=owner, content="still going", model="demo")
    assert services.conversation_purge_expired(now=timezone.now()).counts["deleted"] == 0
    services.message_finish(message_id=reply.id, status="complete", content="done", reasoning="", seq=1)
    assert services.conversation_purge_expired(now=timezone.now()).counts["deleted"] == 1
    assert UsageEntry.objects.filter(message_id=reply.id).exists()
