"""The live layer in Chromium (issue 13): a share shows up at once with a toast and an unread mark, presence in
the header, and one event stream per browser however many tabs are open.

A stack of its own: Redis and two daphne processes (a and b), so every
test crosses processes the way a deployment behind a load balancer does.
Event streams are counted on the server: the user's open stream slots in
Redis (chat/eventlog/redis.py, a sorted set scored by expiry).
"""

from __future__ import annotations

import re
import time

import pytest
import redis
from playwright.sync_api import expect

from tests.browser.conftest import (
    FAST_ECHO,
    SLOW_ECHO,
    send,
    wait_final,
    wait_partial,
    wait_ready,
    words,
)
from tests.browser.pages import DESKTOP, LOOKS, Browsers, shot
from tests.servers import RedisServer, Stack, eventually, login

pytestmark = pytest.mark.browser

TABS = 8


class Team:
    def __init__(self, stack, redis_server, a, b):
        self.stack, self.a, self.b = stack, a, b
        self.redis = redis.Redis(port=redis_server.port)
        self._clients = {}

    @staticmethod
    def url(port):
        return f"http://127.0.0.1:{port}"

    def api(self, username):
        """An httpx client logged in as ``username`` on process a."""
        if username not in self._clients:
            self._clients[username] = login(self.a, username)
        return self._clients[username]

    def conversation(self, owner, title, members=()):
        conversation = self.api(owner).post("/api/conversations/", json={"title": title}).json()
        for member in members:
            response = self.api(owner).post(
                f"/api/conversations/{conversation['id']}/members/", json={"username": member}
            )
            assert response.status_code == 201, response.text
        return conversation

    def streams(self, username) -> int:
        """How many event streams ``username`` holds open now, on every process (their stream slots)."""
        (user_id,) = self.stack.query("SELECT id FROM auth_user WHERE username = ?", (username,))[0]
        now_ms = int(time.time() * 1000)
        return self.redis.zcount(f"chat:user:{user_id}:streams", now_ms, "+inf")


@pytest.fixture(scope="module")
def team(fake_llm):
    _, base_url = fake_llm
    redis_server = RedisServer().start()
    stack = Stack(redis_url=redis_server.url, llm_base_url=base_url, llm_models=f"{SLOW_ECHO},{FAST_ECHO}")
    try:
        stack.setup(usernames=("alice", "bob", "carol", "tabby", "fern"))
        yield Team(stack, redis_server, stack.start_server(), stack.start_server())
    finally:
        stack.stop()
        redis_server.stop()


@pytest.fixture
def browsers(browser):
    opened = Browsers(browser)
    yield opened
    opened.close()


def share_in_dialog(page, username):
    """Share the open conversation with ``username`` through the dialog; returns when the server said 201."""
    page.get_by_role("button", name="Share").click()
    dialog = page.get_by_role("dialog", name="Who has access")
    dialog.get_by_role("combobox").fill(username)
    with page.expect_response(lambda r: "/members/" in r.url and r.request.method == "POST") as answer:
        dialog.get_by_role("button", name="Add").click()
    assert answer.value.status == 201
    dialog.get_by_role("button", name="Close").click()


def open_sidebar(page):
    toggle = page.get_by_role("button", name="Conversations")
    if toggle.is_visible():  # phone width: the list is behind its button
        toggle.click()


def presence(page):
    return page.locator("#presence")


# --- a share shows up at once ------------------------------------------------------------------


@pytest.mark.parametrize("look", LOOKS)
def test_a_share_on_one_process_shows_up_on_the_other_at_once_with_a_toast_and_an_unread_mark(team, browsers, look):
    title = f"Q3 pipeline {look}"
    conversation = team.conversation("alice", title)
    _, bob = browsers.context(team.url(team.b), "bob", **LOOKS[look])
    _, alice = browsers.context(team.url(team.a), "alice", **DESKTOP)
    alice.goto(f"/c/{conversation['id']}/")
    expect(alice.locator("#conversation-title")).to_have_text(title)

    share_in_dialog(alice, "bob")
    # Within a second of the server's answer, on the other process, with no reload and no poll.
    toast = bob.locator(".toast").filter(has_text=title)
    expect(toast).to_be_visible(timeout=1_000)
    expect(toast).to_contain_text(f"alice shared ‘{title}’ with you")
    expect(bob.locator("#toasts")).to_have_attribute("aria-live", "polite")
    link = bob.locator(f"a.conversation-link[data-id='{conversation['id']}']")
    expect(link).to_have_count(1)
    expect(link).to_have_class(re.compile(r"\bis-unread\b"))
    expect(link).to_contain_text("(new activity)")
    if look.startswith("phone"):  # the list is behind its button, which carries the mark too
        expect(bob.locator("#sidebar-toggle")).to_have_class(re.compile(r"\bhas-unread\b"))
    shot(bob, f"live-toast-{look}")
    open_sidebar(bob)
    shot(bob, f"live-unread-{look}")

    if look == "desktop-light":
        expect(toast).to_be_hidden(timeout=10_000)  # by itself, after about 6 s
    else:
        toast.get_by_role("button", name="Dismiss").click()
        expect(toast).to_have_count(0)

    # Opening it clears the mark; alice, who has it open, shows in bob's header and bob in hers.
    link.click()
    expect(bob.locator("#conversation-title")).to_have_text(title)
    expect(link).not_to_have_class(re.compile(r"\bis-unread\b"))
    expect(presence(bob).locator(".presence-person")).to_have_text(["A"])
    expect(presence(bob).locator(".presence-person")).to_have_attribute("title", "alice")
    expect(presence(bob)).to_contain_text("Also here: alice")
    expect(presence(alice).locator(".presence-person")).to_have_text(["B"])
    shot(bob, f"live-presence-{look}")

    # A conversation updated while this tab shows another gets the mark again.
    bob.goto("/")
    bob.wait_for_function("() => window.chatApp !== undefined")
    send(alice, "news for bob")
    wait_final(alice)
    open_sidebar(bob)
    expect(link).to_have_class(re.compile(r"\bis-unread\b"))
    # And a removal takes it away at once.
    team.api("alice").delete(f"/api/conversations/{conversation['id']}/members/bob/")
    expect(link).to_have_count(0)


def test_unread_marks_outlive_a_reload_and_go_from_every_tab_when_one_opens_the_conversation(team, browsers):
    """What this browser last showed of each conversation is kept (localStorage, per person)."""
    known = team.conversation("alice", "Known before", members=("carol",))
    context, page = browsers.context(team.url(team.a), "carol")
    page.goto("/")
    page.wait_for_function("() => window.chatApp !== undefined")

    def link(tab, conversation):
        return tab.locator(f"a.conversation-link[data-id='{conversation['id']}']")

    unread = re.compile(r"\bis-unread\b")
    # A first visit: what is there already is not news.
    expect(link(page, known)).to_have_count(1)
    expect(link(page, known)).not_to_have_class(unread)
    shared = team.conversation("alice", "Shared later", members=("carol",))
    expect(link(page, shared)).to_have_class(unread)

    page.reload()
    page.wait_for_function("() => window.chatApp !== undefined")
    expect(link(page, shared)).to_have_class(unread)
    expect(link(page, known)).not_to_have_class(unread)
    shot(page, "live-unread-after-reload")

    # Opened in another tab: the mark goes here too.
    other = browsers.tab(context, f"/c/{shared['id']}/")
    expect(other.locator("#conversation-title")).to_have_text("Shared later")
    expect(link(page, shared)).not_to_have_class(unread)

    # Changed while no tab was open: marked when the app opens again.
    page.close()
    other.close()
    renamed = team.api("alice").patch(f"/api/conversations/{known['id']}/", json={"title": "Renamed meanwhile"})
    assert renamed.status_code == 200, renamed.text
    again = browsers.tab(context, "/")
    expect(link(again, known)).to_contain_text("Renamed meanwhile")
    expect(link(again, known)).to_have_class(unread)
    expect(link(again, shared)).not_to_have_class(unread)

    # A reply that ended while its conversation was on screen was seen (its end moved updated_at).
    again.goto(f"/c/{shared['id']}/")
    wait_ready(again)
    send(again, "seen to the end")
    wait_final(again)
    again.goto("/")
    wait_ready(again)
    expect(link(again, known)).to_have_class(unread)
    expect(link(again, shared)).not_to_have_class(unread)


def test_a_list_read_that_crosses_a_share_does_not_hide_the_shared_conversation(team, browsers):
    """After a reconnection the list is read again; a share heard meanwhile must not be undone by the older list."""
    context, page = browsers.context(team.url(team.b), "bob")
    page.goto("/")
    page.wait_for_function("() => window.chatApp !== undefined")
    held = []

    def hold_first_read(route):
        if route.request.method != "GET" or held:
            route.continue_()
            return
        held.append((route, route.fetch()))  # read now, answered later: older than the share below

    page.route("**/api/conversations/", hold_first_read)
    context.set_offline(True)
    context.set_offline(False)
    for _ in range(300):  # Playwright runs the route's handler only while this thread is in one of its calls
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the list was not read again after reconnecting"
    shared = team.conversation("alice", "Shared while reading", members=("bob",))
    link = page.locator(f"a.conversation-link[data-id='{shared['id']}']")
    expect(link).to_have_count(1)
    route, response = held[0]
    route.fulfill(response=response)
    expect(link).to_have_count(1)
    expect(link).to_have_class(re.compile(r"\bis-unread\b"))


def test_over_sixteen_conversations_the_next_waits_until_one_is_closed(team, browsers):
    """The server takes 16 conversations on one stream: the browser's 17th waits, then follows when one closes."""
    conversations = [team.conversation("carol", f"Cap {i}")["id"] for i in range(17)]
    context, page = browsers.context(team.url(team.b), "carol")
    page.goto("/")
    page.wait_for_function("() => window.chatApp !== undefined")
    # The app's own live.js (the same URL, so the same module instance), as each open conversation uses it.
    page.evaluate(
        """async (ids) => {
            const url = performance.getEntriesByType("resource").map((e) => e.name)
                .find((name) => name.includes("/chat/js/live") && !name.includes("live-worker"));
            const { live } = await import(url);
            window.__states = {};
            window.__events = {};
            window.__handles = ids.map((id) => live.watch(id, {
                onEvent: (type) => { (window.__events[id] = window.__events[id] || []).push(type); },
                onState: (state) => { window.__states[id] = state; },
            }));
        }""",
        conversations,
    )

    def states():
        return page.evaluate("(ids) => ids.map((id) => window.__states[id] || '')", conversations)

    page.wait_for_function("(ids) => ids.slice(0, 16).every((id) => window.__states[id] === 'open')", arg=conversations)
    assert states()[16] == "waiting", states()
    assert team.streams("carol") <= 2

    page.evaluate("() => window.__handles[0].close()")
    page.wait_for_function("(id) => window.__states[id] === 'open'", arg=conversations[16])
    assert states()[0] == "closed"
    # The 17th now gets its events: a message posted there reaches it.
    posted = team.api("carol").post(f"/api/conversations/{conversations[16]}/messages/", json={"content": "in at last"})
    assert posted.status_code == 202, posted.text
    page.wait_for_function("(id) => (window.__events[id] || []).includes('message.completed')", arg=conversations[16])
    assert team.streams("carol") <= 2


def test_a_second_tab_opened_mid_reply_picks_the_reply_up_from_the_shared_stream(team, browsers):
    """The browser's stream already carries the conversation: the new tab asks for its snapshot, and no text is lost."""
    conversation = team.conversation("carol", "Second tab")
    path = f"/c/{conversation['id']}/"
    context, first = browsers.context(team.url(team.b), "carol")
    first.goto(path)
    first.wait_for_function("() => window.chatApp !== undefined")
    text = words(80, "s")
    send(first, text)
    wait_partial(first, min_chars=20)
    second = browsers.tab(context, path)
    after = wait_partial(second, min_chars=1)
    assert text.startswith(after.strip())
    for page in (first, second):
        message = wait_final(page)
        assert message.locator(".message-content").inner_text().strip() == text
    assert team.streams("carol") <= 2


# --- presence ------------------------------------------------------------------------------------------


def test_presence_across_processes_one_entry_per_person_gone_when_they_close(team, browsers):
    conversation = team.conversation("alice", "Who is here", members=("bob", "carol"))
    path = f"/c/{conversation['id']}/"
    bob_context, bob = browsers.context(team.url(team.b), "bob")
    bob.goto(path)
    bob.wait_for_function("() => window.chatApp !== undefined")
    expect(presence(bob)).to_be_hidden()  # only bob: the person themself is not shown

    alice_context, alice = browsers.context(team.url(team.a), "alice")
    alice.goto(path)
    second = browsers.tab(alice_context, path)  # a second tab of alice: still one entry
    carol_context, carol = browsers.context(team.url(team.b), "carol")
    carol.goto(path)
    expect(presence(bob).locator(".presence-person")).to_have_text(["A", "C"])
    expect(presence(bob)).to_contain_text("Also here: alice, carol")
    expect(presence(carol).locator(".presence-person")).to_have_text(["A", "B"])
    expect(presence(second).locator(".presence-person")).to_have_text(["B", "C"])
    shot(bob, "live-presence-two")

    # Alice closes one of her two tabs, then carol leaves: alice stays, carol goes.
    alice.close()
    carol.close()
    expect(presence(bob).locator(".presence-person")).to_have_text(["A"])
    # Alice's last tab goes: nobody else is here.
    second.close()
    expect(presence(bob)).to_be_hidden()


# --- one connection per browser --------------------------------------------------------------------


def reply_arrives_live(page, text):
    """Post ``text`` in ``page``: its reply's deltas reach this tab from the live stream, then it is complete.

    Checked at the tab's door: every event the open conversation is handed is recorded (type, the
    message it is about, when). A tab left without a stream (a seventh connection that never opens)
    gets no delta and shows the reply only from a reload. What the tab paints is not checked here:
    a starved renderer may skip every frame of a 1.2 s reply (CI, 3 workers on 2 cores), and the
    painting of deltas has its own tests (test_chat.py).
    """
    replies = page.locator("li.message.assistant").count()
    page.evaluate(
        """() => {
            window.__events = [];
            const open = window.chatApp.open;
            if (open.__recorded) return;
            open.__recorded = true;
            const apply = open.applyEvent.bind(open);
            open.applyEvent = (type, data) => {
                const about = data && (data.message_id || (data.message && data.message.id) || data.id);
                window.__events.push([type, about || null, Math.round(performance.now())]);
                return apply(type, data);
            };
        }"""
    )
    send(page, text)
    reply = wait_final(page, count=replies + 1)
    expect(reply.locator(".message-content")).to_have_text(text)
    reply_id = reply.get_attribute("data-id")
    events = [(kind, at) for kind, about, at in page.evaluate("() => window.__events") if about == reply_id]
    kinds = [kind for kind, _ in events]
    assert "message.completed" in kinds, events
    deltas = kinds[: kinds.index("message.completed")].count("message.delta")
    assert deltas >= 1, f"no delta of the reply reached the tab before its end: {events}"


def fetch_answers(page) -> int:
    return page.evaluate("async () => (await fetch('/api/models/', {credentials: 'same-origin'})).status")


def test_eight_tabs_over_http1_share_one_stream_and_survive_the_first_closing(team, browsers):
    conversations = [team.conversation("tabby", f"Tab {i}") for i in range(TABS)]
    context, first = browsers.context(team.url(team.a), "tabby")
    tabs = [first]
    first.goto(f"/c/{conversations[0]['id']}/")
    first.wait_for_function("() => window.chatApp !== undefined")
    for conversation in conversations[1:]:
        tabs.append(browsers.tab(context, f"/c/{conversation['id']}/"))
    counts = []
    for i, page in enumerate(tabs):
        # Plain HTTP/1.1 allows six connections to a host: with a stream per tab, these would hang.
        assert fetch_answers(page) == 200
        reply_arrives_live(page, f"tab {i} " + words(30, f"t{i}"))
        counts.append(team.streams("tabby"))
    assert max(counts) <= 2, counts

    first.close()
    for i, page in enumerate(tabs[1:], start=1):
        assert fetch_answers(page) == 200
        reply_arrives_live(page, f"again {i} " + words(30, f"a{i}"))
    assert team.streams("tabby") <= 2
    # The closed tab's conversation left the browser's stream: the server counts one stream now.
    eventually(lambda: team.streams("tabby") == 1, timeout=10, message="the old stream was not closed")


def test_without_shared_worker_each_tab_holds_the_same_stream_itself(team, browsers):
    conversation = team.conversation("fern", "Android")
    context, page = browsers.context(team.url(team.a), "fern", shared_worker=False)
    page.goto(f"/c/{conversation['id']}/")
    page.wait_for_function("() => window.chatApp !== undefined")
    assert page.evaluate("() => typeof SharedWorker") == "undefined"
    reply_arrives_live(page, "one tab, its own stream " + words(5, "f"))
    other = browsers.tab(context, "/")
    # Each tab its own stream: two now, which is what the shared worker saves.
    eventually(lambda: team.streams("fern") == 2, timeout=10, message="two tabs should hold two streams")
    shared = team.conversation("alice", "For fern")
    team.api("alice").post(f"/api/conversations/{shared['id']}/members/", json={"username": "fern"})
    for tab in (page, other):
        expect(tab.locator(".toast").filter(has_text="For fern")).to_be_visible(timeout=5_000)
        expect(tab.locator(f"a.conversation-link[data-id='{shared['id']}']")).to_have_class(re.compile("is-unread"))
