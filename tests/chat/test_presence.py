"""Presence: who views a conversation, on every process, each person once, gone when their tabs close or die.

The log's compare-and-append on both backends; a process's hub coalescing a
burst; and over real sockets: two daphne processes on one Redis (kill -9 of
one), and the zero-config deployment (no Redis, one process).
"""

import asyncio
import json
import uuid

import httpx
import pytest

from chat import fanout
from chat.eventlog import MemoryEventLog
from chat.events import PRESENCE, Event
from tests.chat import test_eventlog
from tests.servers import aeventually, eventually, login
from tests.sseclient import start_viewer

# A fresh event log of each backend: the event log suite's fixture.
log = test_eventlog.log
HEARTBEAT = 2
# The contract's bound for a change to reach the other viewers.
WITHIN = 2.0
# A wider coalescing window than the default 0.3 s, still inside WITHIN: a loaded machine opening the burst's
# tabs slowly still has several in each window (with 0.3 s and load 17, one run saw 9 announcements for 16).
COALESCE = 1.0
CROWD = [f"p{n:02d}" for n in range(16)]


# --- the log: compare-and-append, each person once, expiry (both backends) -------------------


def member(username):
    return uuid.uuid4().hex + username


@pytest.mark.asyncio
async def test_the_log_announces_only_changes_in_order_each_person_once(log):
    conversation = str(uuid.uuid4())
    ann_tabs = [member("ann"), member("ann")]
    assert await log.presence_enter(conversation, ann_tabs[0], ttl=60) == ["ann"]
    assert await log.presence_enter(conversation, ann_tabs[1], ttl=60) == ["ann"]
    bob = member("bob")
    assert await log.presence_enter(conversation, bob, ttl=60) == ["ann", "bob"]
    first = await log.presence_announce(conversation, ann_tabs, ttl=60)
    assert first.type == PRESENCE and first.data == '{"viewers":["ann","bob"]}'
    # Another process announcing the same viewers appends nothing.
    assert await log.presence_announce(conversation, [bob], ttl=60) is None
    await log.presence_leave(conversation, ann_tabs[0])
    assert await log.presence_announce(conversation, [], ttl=60) is None, "ann still has a tab"
    await log.presence_leave(conversation, ann_tabs[1])
    second = await log.presence_announce(conversation, [bob], ttl=60)
    assert second.data == '{"viewers":["bob"]}' and second.prev == first.id
    assert await log.after(conversation, "0-0") == [first, second]


@pytest.mark.asyncio
async def test_an_entry_not_refreshed_expires(log):
    conversation = str(uuid.uuid4())
    kept, lapsing = member("ann"), member("cat")
    await log.presence_enter(conversation, kept, ttl=60)
    await log.presence_enter(conversation, lapsing, ttl=0.05)
    assert (await log.presence_announce(conversation, [kept], ttl=60)).data == '{"viewers":["ann","cat"]}'

    # cat's process is gone: nobody refreshes its entry, and the next announcement drops it.
    async def cat_gone():
        return await log.presence_announce(conversation, [kept], ttl=60)

    event = await aeventually(cat_gone, timeout=5)
    assert event.data == '{"viewers":["ann"]}'


# --- a process's hub: coalescing, leaving ---------------------------------------------------------


@pytest.fixture
def hub():
    hub = fanout.Hub(idle_check_seconds=0.2, busy_check_seconds=0.05, heartbeat_seconds=3600)
    hub.log = MemoryEventLog()
    return hub


async def next_presence(viewer, timeout=5.0):
    async with asyncio.timeout(timeout):
        while True:
            for item in await viewer.take():
                if isinstance(item, Event) and item.type == PRESENCE:
                    return item.data


@pytest.mark.asyncio
async def test_a_burst_of_fifty_tabs_is_one_announcement(hub):
    conversation = str(uuid.uuid4())
    watcher = await hub.join(conversation)
    tabs = [await hub.join(conversation) for _ in range(50)]
    names = ["ann", "bob"] * 25
    for tab, name in zip(tabs, names, strict=True):
        await hub.enter_presence(tab, conversation, name)
        for _ in range(3):
            await asyncio.sleep(0)  # let the loop run what is due: an announcement not coalesced would go now
    assert await next_presence(watcher) == '{"viewers":["ann","bob"]}'
    # A later change is the next announcement: nothing else came of the burst.
    late = await hub.join(conversation)
    await hub.enter_presence(late, conversation, "cat")
    assert await next_presence(watcher) == '{"viewers":["ann","bob","cat"]}'
    # Every tab of bob closes: he is gone in one announcement.
    for tab in tabs[1::2]:
        hub.leave(tab)
    assert await next_presence(watcher) == '{"viewers":["ann","cat"]}'
    for viewer in [watcher, late, *tabs[::2]]:
        hub.leave(viewer)


# --- over real sockets ------------------------------------------------------------------------


def presence_of(event, conversation_id):
    """The viewers an event announces for ``conversation_id``, or None (plain streams carry no conversation key)."""
    if event.type != "presence" or event.data.get("conversation", conversation_id) != conversation_id:
        return None
    return event.data["viewers"]


def wait_viewers(viewer, conversation_id, names, *, after=0, timeout=10.0):
    """Wait for a presence of ``names`` among the viewer's events from index ``after``; that event's index."""

    def seen():
        events = list(viewer.events)
        return next(
            (i + 1 for i in range(after, len(events)) if presence_of(events[i], conversation_id) == names), None
        )

    return eventually(seen, timeout=timeout, message=lambda: f"no presence {names}; got {lists(viewer)}")


def lists(viewer):
    return [e.data for e in list(viewer.events) if e.type == "presence"]


def watch(client, conversation, *, plain=False):
    if plain:
        path = f"/api/conversations/{conversation['id']}/events/"
    else:
        path = f"/api/events/?conversations={conversation['id']}"
    viewer = start_viewer(client, path, until=lambda e: False, with_presence=True)
    assert viewer.status == 200, getattr(viewer, "body", "")
    return viewer


def shared(owner, *usernames):
    conversation = owner.post("/api/conversations/", json={}).json()
    for username in usernames:
        response = owner.post(f"/api/conversations/{conversation['id']}/members/", json={"username": username})
        assert response.status_code == 201, response.text
    return conversation


@pytest.fixture(scope="module")
def servers(redis_server):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        extra_env={"CHAT_HEARTBEAT_SECONDS": str(HEARTBEAT), "CHAT_PRESENCE_COALESCE_SECONDS": str(COALESCE)},
    )
    stack.setup(usernames=("olivia", "max", *CROWD))
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


@pytest.mark.processes
def test_two_people_on_two_processes_each_listed_once_and_gone_when_their_tabs_close(servers):
    _, a, b = servers
    alice = login(a, "olivia")
    conversation = shared(alice, "max")
    cid = conversation["id"]
    alice_tab = watch(alice, conversation)
    wait_viewers(alice_tab, cid, ["olivia"])
    # Three tabs of one person, on both processes, one of them a plain conversation stream.
    tabs = [watch(login(b, "max"), conversation)]
    seen = wait_viewers(alice_tab, cid, ["max", "olivia"], timeout=WITHIN)
    tabs += [watch(login(a, "max"), conversation, plain=True), watch(login(b, "max"), conversation)]
    for tab in tabs:
        assert wait_viewers(tab, cid, ["max", "olivia"])
    for tab in tabs:
        tab.close()
    gone = wait_viewers(alice_tab, cid, ["olivia"], after=seen, timeout=WITHIN)
    # One person, one entry: max stayed listed until his last tab closed, then went in one announcement.
    between = [e.data["viewers"] for e in alice_tab.events[seen : gone - 1] if e.type == "presence"]
    assert all(names == ["max", "olivia"] for names in between), between
    alice_tab.close()


@pytest.mark.processes
def test_a_plain_stream_counts_its_viewer_by_default_and_not_with_presence_0(servers):
    _, a, b = servers
    alice = login(a, "olivia")
    conversation = shared(alice, "max")
    cid = conversation["id"]
    alice_tab = watch(alice, conversation, plain=True)
    assert wait_viewers(alice_tab, cid, ["olivia"])
    max_client = login(b, "max")
    hidden = start_viewer(max_client, f"/api/conversations/{cid}/events/?presence=0", until=lambda e: False)
    assert hidden.status == 200
    # max watches without being counted: when his one counted tab closes, he is gone although the other stays.
    counted = watch(max_client, conversation, plain=True)
    seen = wait_viewers(alice_tab, cid, ["max", "olivia"], timeout=WITHIN)
    counted.close()
    wait_viewers(alice_tab, cid, ["olivia"], after=seen, timeout=WITHIN)
    assert hidden.presence == []
    refused = max_client.get(f"/api/conversations/{cid}/events/?presence=yes")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_input"
    for viewer in (hidden, alice_tab):
        viewer.close()


def signed_in(stack, usernames) -> dict:
    """A session per user, made in the database (sixteen logins at once would meet the login throttle)."""
    code = (
        "import json\nfrom importlib import import_module\nfrom django.conf import settings\n"
        "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY\n"
        "from django.contrib.auth.models import User\n"
        "keys = {}\n"
        f"for user in User.objects.filter(username__in={list(usernames)!r}):\n"
        "    session = import_module(settings.SESSION_ENGINE).SessionStore()\n"
        "    session[SESSION_KEY] = str(user.pk)\n"
        "    session[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "    session[HASH_SESSION_KEY] = user.get_session_auth_hash()\n"
        "    session.create()\n"
        "    keys[user.username] = session.session_key\n"
        "print(json.dumps(keys))\n"
    )
    return json.loads(stack.manage("shell", "-c", code).stdout.strip().splitlines()[-1])


@pytest.mark.processes
def test_a_burst_of_people_makes_a_handful_of_announcements(servers):
    stack, a, b = servers
    alice = login(a, "olivia")
    conversation = shared(alice, *CROWD)
    cid = conversation["id"]
    alice_tab = watch(alice, conversation)
    start = wait_viewers(alice_tab, cid, ["olivia"])
    keys = signed_in(stack, CROWD)
    clients = [
        httpx.Client(base_url=f"http://127.0.0.1:{(a, b)[i % 2]}", cookies={"sessionid": keys[name]}, timeout=30)
        for i, name in enumerate(CROWD)
    ]
    path = f"/api/events/?conversations={cid}"
    # One after the other, each answered before the next opens: without coalescing, one announcement each.
    viewers = [start_viewer(client, path, until=lambda e: False, with_presence=True) for client in clients]
    assert all(viewer.status == 200 for viewer in viewers)
    everyone = sorted(["olivia", *CROWD])
    wait_viewers(alice_tab, cid, everyone, after=start)
    announcements = [e for e in alice_tab.events[start:] if e.type == "presence"]
    # One per person would be 16 (17 measured with no window); coalescing (and comparing with the last
    # announced) makes a handful.
    assert len(announcements) <= len(CROWD) // 2, [e.data["viewers"] for e in announcements]
    for viewer in viewers:
        viewer.close()
    wait_viewers(alice_tab, cid, ["olivia"], after=start)
    alice_tab.close()


@pytest.mark.processes
def test_kill_9_of_the_process_holding_a_viewer_drops_it_within_the_heartbeat(redis_server, stack_factory):
    stack = stack_factory(
        redis_url=redis_server.url,
        extra_env={"CHAT_HEARTBEAT_SECONDS": str(HEARTBEAT), "CHAT_PRESENCE_COALESCE_SECONDS": str(COALESCE)},
    ).setup()
    a, b = stack.start_server(), stack.start_server()
    alice = login(a, "olivia")
    conversation = shared(alice, "max")
    cid = conversation["id"]
    alice_tab = watch(alice, conversation)
    bob_tab = watch(login(b, "max"), conversation)
    seen = wait_viewers(alice_tab, cid, ["max", "olivia"], timeout=WITHIN)
    stack.kill(b)
    # The entry lapses 1.5 heartbeats after its last refresh; a's next heartbeat round announces it.
    wait_viewers(alice_tab, cid, ["olivia"], after=seen, timeout=3 * HEARTBEAT + 1)
    alice_tab.close()
    bob_tab.close()


@pytest.mark.processes
def test_presence_without_redis(stack_factory):
    stack = stack_factory(database="sqlite").setup()
    port = stack.start_server()
    alice = login(port, "olivia")
    conversation = shared(alice, "max")
    cid = conversation["id"]
    alice_tab = watch(alice, conversation)
    bob_tabs = [watch(login(port, "max"), conversation), watch(login(port, "max"), conversation, plain=True)]
    seen = wait_viewers(alice_tab, cid, ["max", "olivia"], timeout=WITHIN)
    assert wait_viewers(bob_tabs[1], cid, ["max", "olivia"])
    for tab in bob_tabs:
        tab.close()
    wait_viewers(alice_tab, cid, ["olivia"], after=seen, timeout=WITHIN)
    alice_tab.close()
