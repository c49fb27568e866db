"""A new user's first day, in Chromium: the rough edges of issue 13, each as a person meets it.

The not-found page (DEBUG on too), the keyboard shortcuts, the demo note for staff only, the settings panel,
errors that clear themselves, Send while a reply streams, the phone layout and its touch keyboard, the user
menu, the share dialog's people picker, the notices when access ends, and the admin's pages.
"""

import json
import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    SCREENSHOTS,
    PageRecorder,
    last_assistant,
    log_in,
    new_chat,
    screenshot,
    send,
    wait_final,
    wait_partial,
    wait_ready,
    words,
)
from tests.browser.pages import DESKTOP, LOOKS, PHONE
from tests.servers import PASSWORD, Stack

pytestmark = pytest.mark.browser


def shot(page, name):
    screenshot(page, f"firstday-{name}")


@pytest.fixture(scope="module")
def people(live):
    """On the shared stack: stella (staff), penny (a quota; changes her password), and names to pick from."""
    live.stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\nfrom chat.models import UsageLimit\n"
        f"User.objects.create_superuser('stella', password={PASSWORD!r}, email='stella@example.com')\n"
        f"penny = User.objects.create_user('penny', password={PASSWORD!r})\n"
        "UsageLimit.objects.create(user=penny, daily_token_quota=50000)\n"
        f"User.objects.create_user('Maxine', password={PASSWORD!r}, first_name='Maxine', last_name='Okafor',"
        " email='maxine@example.com')\n"
        f"User.objects.create_user('maxwell', password={PASSWORD!r}, is_active=False)\n",
    )
    return live


@pytest.fixture(scope="module")
def demo(browser):
    """A second stack with DEBUG on and no LLM configured (the demo model only): olivia, and stella as staff."""
    stack = Stack().setup(usernames=("olivia",))
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        f"User.objects.create_superuser('stella', password={PASSWORD!r})\n",
    )
    try:
        port = stack.start_server(extra_env={"DEBUG": "true"})
        yield stack, f"http://127.0.0.1:{port}"
    finally:
        stack.stop()


def demo_page(browser, url, username, **options):
    context = browser.new_context(base_url=url, **{**DESKTOP, **options})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.recorder = PageRecorder(page)
    log_in(page, username)
    wait_ready(page)
    return page


# --- a stale link ------------------------------------------------------------------------


def test_a_stale_link_shows_the_apps_not_found_page_even_with_debug(browser, demo):
    stack, url = demo
    page = demo_page(browser, url, "olivia")
    try:
        response = page.goto(f"/c/{uuid.uuid4()}/")
        assert response.status == 404
        expect(page.get_by_role("heading", name="This conversation is not here")).to_be_visible()
        expect(page.locator("main")).to_contain_text("not found or is not shared with you")
        # Not Django's debug page, which lists every URL pattern.
        assert "URLconf" not in page.content() and "DEBUG = True" not in page.content()
        shot(page, "not-found-debug")
        page.get_by_role("link", name="Back to your conversations").click()
        page.wait_for_url(f"{url}/")
        wait_ready(page)
        page.recorder.check()
    finally:
        page.context.close()


def test_a_removed_member_or_a_deleted_conversation_shows_the_same_page(open_page, live):
    conversation = live.create_conversation("olivia", title="Q3 pipeline")
    live.api("olivia").post(f"/api/conversations/{conversation['id']}/members/", json={"username": "max"})
    page = open_page("max", path=f"/c/{conversation['id']}/")
    expect(page.locator("#conversation-title")).to_have_text("Q3 pipeline")
    live.api("olivia").delete(f"/api/conversations/{conversation['id']}/members/max/")
    response = page.goto(f"/c/{conversation['id']}/")
    assert response.status == 404
    expect(page.get_by_role("heading", name="This conversation is not here")).to_be_visible()
    live.api("olivia").delete(f"/api/conversations/{conversation['id']}/")
    owner = open_page("olivia")
    assert owner.goto(f"/c/{conversation['id']}/").status == 404
    expect(owner.get_by_role("heading", name="This conversation is not here")).to_be_visible()
    # Any other address outside the API: the app's page too, with a way home.
    assert owner.goto("/no/such/page/").status == 404
    expect(owner.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(owner.get_by_role("link", name="Back to your conversations")).to_be_visible()


# --- the demo note ---------------------------------------------------------------------------


def test_the_demo_note_is_for_staff_only_and_can_be_dismissed(browser, demo):
    stack, url = demo
    member = demo_page(browser, url, "olivia")
    staff = demo_page(browser, url, "stella")
    try:
        expect(member.get_by_role("heading", name="Welcome to Team Chat")).to_be_visible()
        expect(member.locator("#demo-note")).to_be_hidden()
        note = staff.locator("#demo-note")
        expect(note).to_be_visible()
        expect(note).to_contain_text("LLM_BASE_URL")
        shot(staff, "demo-note")
        note.get_by_role("button", name="Dismiss this note").click()
        expect(note).to_be_hidden()
        staff.reload()
        wait_ready(staff)
        expect(staff.locator("#demo-note")).to_be_hidden()
        member.recorder.check()
        staff.recorder.check()
    finally:
        member.context.close()
        staff.context.close()


# --- keyboard ------------------------------------------------------------------------------


def test_keyboard_shortcuts(open_page, live):
    page = open_page("olivia", **DESKTOP)
    new_chat(page)
    # On a page just loaded, the skip link is the first stop and takes one to the message box.
    page.reload()
    wait_ready(page)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the message box")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()

    # Esc stops the reply being written.
    send(page, words(200, "k"))
    wait_partial(page, min_chars=20)
    page.keyboard.press("Escape")
    message = wait_final(page, "cancelled")
    expect(message.locator(".message-status")).to_have_text("Stopped by olivia")

    # ? lists the shortcuts, outside a text box (in one it is a question mark).
    box = page.get_by_role("textbox", name="Message")
    box.fill("")
    box.press("?")
    expect(box).to_have_value("?")
    expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_hidden()
    page.locator("#transcript").focus()
    page.keyboard.press("?")
    shortcuts = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(shortcuts).to_be_visible()
    for text in ("Stop the reply", "Search all conversations", "A new chat"):
        expect(shortcuts).to_contain_text(text)
    shot(page, "shortcuts")
    page.keyboard.press("Escape")
    expect(shortcuts).to_be_hidden()

    # Ctrl+K searches; Ctrl+Shift+O starts a new chat, from anywhere.
    page.keyboard.press("Control+k")
    expect(page.get_by_role("dialog", name="Search all conversations")).to_be_visible()
    expect(page.get_by_role("searchbox", name="Search titles and messages")).to_be_focused()
    before = page.url
    page.keyboard.press("Control+Shift+O")
    page.wait_for_url(lambda url: url != before and "/c/" in url)
    expect(page.get_by_role("dialog", name="Search all conversations")).to_be_hidden()
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    # The user menu offers the same list.
    page.locator("#user-menu summary").click()
    page.get_by_role("button", name="Keyboard shortcuts").click()
    expect(shortcuts).to_be_visible()


def test_the_skip_link_with_no_conversation_open_goes_to_new_chat(open_page, live):
    page = open_page("otto", **DESKTOP)
    page.reload()
    wait_ready(page)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Start a new chat")).to_be_focused()


# --- settings, Send, errors -------------------------------------------------------------------


def test_the_settings_panel_closes_after_save(open_page, live):
    page = open_page("olivia", **DESKTOP)
    new_chat(page)
    page.locator("#settings summary").click()
    page.get_by_label("System prompt").fill("Answer in one line.")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#settings")).not_to_have_attribute("open", "")
    expect(page.locator("#settings-summary")).to_contain_text("custom system prompt")
    expect(page.locator("#settings-summary")).to_contain_text("saved")
    expect(page.get_by_label("System prompt")).to_be_hidden()


def test_send_waits_for_the_reply_and_notices_clear_when_their_cause_goes(open_page, live):
    page = open_page("olivia", **DESKTOP)
    conversation_id = new_chat(page)
    send_button = page.get_by_role("button", name="Send")
    error = page.locator("#composer-error")
    send(page, words(60, "s"))
    wait_partial(page)
    expect(send_button).to_be_disabled()
    # Enter while the reply streams posts nothing; the text stays, and so does the reason, until the reply ends.
    send(page, "too early")
    expect(error).to_contain_text("already being generated")
    expect(page.get_by_role("textbox", name="Message")).to_have_value("too early")
    wait_final(page)
    expect(error).to_be_empty()
    expect(send_button).to_be_enabled()
    assert len(live.conversation("olivia", conversation_id)["messages"]) == 2

    # A 409 from the server (someone else's reply started first) also clears when that reply ends.
    def busy(route):
        body = {"error": {"code": "generation_in_progress", "message": "A reply is already being generated."}}
        route.fulfill(status=409, content_type="application/json", body=json.dumps(body))

    messages_url = f"**/api/conversations/{conversation_id}/messages/"
    page.route(messages_url, busy)
    send(page, "now")
    expect(error).to_have_text("A reply is already being generated.")
    page.unroute(messages_url)
    # A teammate's reply: share, then max posts.
    live.api("olivia").post(f"/api/conversations/{conversation_id}/members/", json={"username": "max"})
    live.api("max").post(f"/api/conversations/{conversation_id}/messages/", json={"content": words(30, "m")})
    wait_final(page, count=2)
    expect(error).to_be_empty()

    # "Could not be reached" clears once the connection is back.
    page.route(messages_url, lambda route: route.abort())
    send(page, "offline for a moment")
    expect(error).to_contain_text("could not be reached")
    page.unroute(messages_url)
    live.proxy.cut()
    expect(error).to_be_empty(timeout=15_000)
    expect(page.locator("#connection-status")).to_be_hidden()


def test_limit_errors_speak_plainly(open_page, live):
    page = open_page("olivia", **DESKTOP)
    conversation_id = new_chat(page)
    error = page.locator("#composer-error")
    page.get_by_role("textbox", name="Message").fill("x" * 32_001)
    page.get_by_role("textbox", name="Message").press("Enter")
    expect(error).to_have_text("Your message is too long: 32,001 characters; the limit is 32,000.")

    quota = (
        "You have used today's 100,000 tokens (100,532 so far). "
        "Your quota resets at midnight UTC, in 5 h 16 min; an administrator can raise it."
    )

    def over_quota(route):
        body = {"error": {"code": "quota_exceeded", "message": quota}}
        route.fulfill(
            status=429, headers={"Retry-After": "18959"}, content_type="application/json", body=json.dumps(body)
        )

    page.route(f"**/api/conversations/{conversation_id}/messages/", over_quota)
    page.get_by_role("textbox", name="Message").fill("one more")
    page.get_by_role("textbox", name="Message").press("Enter")
    expect(error).to_have_text(quota)  # the wait once, as the server said it: no "Try again in 18959 s"

    def rate_limited(route):
        body = {"error": {"code": "rate_limited", "message": "You are sending messages too fast."}}
        route.fulfill(status=429, headers={"Retry-After": "1"}, content_type="application/json", body=json.dumps(body))

    page.route(f"**/api/conversations/{conversation_id}/messages/", rate_limited)
    page.get_by_role("textbox", name="Message").press("Enter")
    expect(error).to_have_text("You are sending messages too fast. Try again in 1 s.")
    expect(error).to_be_empty()  # the wait is over


# --- the phone ------------------------------------------------------------------------------

TABLE = (
    "| Component | Responsibility | Internationalization |\n| --- | --- | --- |\n"
    "| Authentication | Verification | Straightforward |\n"
    "| Notifications | Acknowledgement | Incomprehensibilities |\n"
)


def test_the_phone_layout(open_page, live):
    page = open_page("olivia", **PHONE)
    new_chat(page)
    box = page.get_by_role("textbox", name="Message")
    # The placeholder fits its box (no wrapped hint).
    placeholder = box.get_attribute("placeholder")
    assert placeholder == "Write a message…"
    fits = page.evaluate(
        """() => {
            const box = document.getElementById("composer-input");
            const style = getComputedStyle(box);
            const context = document.createElement("canvas").getContext("2d");
            context.font = `${style.fontSize} ${style.fontFamily}`;
            const room = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
            return context.measureText(box.placeholder).width <= room;
        }"""
    )
    assert fits

    # On a touch keyboard Enter makes a new line; the Send button sends.
    box.click()
    page.keyboard.type("first line")
    page.keyboard.press("Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    assert page.locator("li.message").count() == 0
    box.fill(TABLE)
    page.get_by_role("button", name="Send").click()
    wait_final(page)

    # The header is one line: the title and a menu; the top bar too.
    for selector in (".topbar", ".conversation-header"):
        height = page.locator(selector).evaluate("(e) => e.getBoundingClientRect().height")
        assert height < 56, (selector, height)
    expect(page.locator("#conversation-more")).to_be_visible()
    expect(page.get_by_role("button", name="Rename")).to_be_hidden()
    # A table scrolls sideways; no cell breaks a word.
    table = last_assistant(page).locator(".table-wrap")
    assert table.evaluate("(e) => e.scrollWidth > e.clientWidth")
    broken = table.evaluate(
        """(wrap) => [...wrap.querySelectorAll("th, td")].filter((cell) => {
            const range = document.createRange();
            range.selectNodeContents(cell);
            return range.getClientRects().length > 1;
        }).map((cell) => cell.textContent)"""
    )
    assert broken == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "phone-table")
    # The actions are in the header's menu.
    page.locator("#conversation-more > summary").click()
    expect(page.locator("#more-rename")).to_be_visible()
    shot(page, "phone-menu")
    page.locator("#more-rename").click()
    expect(page.get_by_role("dialog", name="Rename conversation")).to_be_visible()


@pytest.mark.parametrize("look", LOOKS)
def test_screens_in_every_look(open_page, people, look):
    """The pages this issue changed, at 1,400 px and 390 px, light and dark: looked at, kept as screenshots."""
    page = open_page("stella", **LOOKS[look])
    conversation_id = new_chat(page)
    page.get_by_role("textbox", name="Message").fill("A table:\n\n" + TABLE)
    page.get_by_role("button", name="Send").click()  # Enter is a new line on the phone's touch keyboard
    wait_final(page)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, f"app-{look}")
    page.locator("#user-menu summary").click()
    expect(page.get_by_role("link", name="Admin")).to_be_visible()
    shot(page, f"user-menu-{look}")
    page.keyboard.press("Escape")
    expect(page.locator("#user-menu")).not_to_have_attribute("open", "")
    page.locator("#share-button" if "desktop" in look else "#conversation-more summary").click()
    if "phone" in look:
        page.locator("#more-share").click()
    dialog = page.get_by_role("dialog", name="Who has access")
    dialog.get_by_role("combobox").fill("max")
    expect(dialog.get_by_role("option")).to_have_count(2)
    shot(page, f"share-picker-{look}")
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    page.goto(f"/c/{uuid.uuid4()}/")
    shot(page, f"not-found-{look}")
    page.goto("/accounts/password_change/")
    expect(page.get_by_role("heading", name="Change password")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, f"password-{look}")
    assert conversation_id


# --- the user menu ------------------------------------------------------------------------------


def test_the_user_menu(open_page, people):
    page = open_page("penny", **DESKTOP)
    menu = page.locator("#user-menu")
    page.locator("#user-menu > summary").click()
    usage = page.locator("#usage-today")
    expect(usage).to_contain_text("My usage today")
    expect(usage).to_contain_text("0 of 50,000 tokens")
    expect(menu.get_by_role("link", name="Admin")).to_have_count(0)  # not staff
    expect(menu.get_by_role("link", name="API tokens")).to_be_visible()
    page.keyboard.press("Escape")

    # A reply counts at once.
    new_chat(page)
    send(page, "count my tokens please")
    wait_final(page)
    page.locator("#user-menu > summary").click()
    expect(page.locator("#usage-today-text")).not_to_have_text("0 of 50,000 tokens")
    expect(page.locator("#usage-today-text")).to_have_text(re.compile(r"^\d+ of 50,000 tokens$"))
    used = page.locator("#usage-today-text").inner_text()
    page.reload()
    wait_ready(page)
    expect(page.locator("#usage-today-text")).to_have_text(used)  # what the server counts too

    # Change password, in the app's own page.
    page.locator("#user-menu > summary").click()
    page.get_by_role("link", name="Change password").click()
    page.wait_for_url("**/accounts/password_change/")
    expect(page.get_by_role("heading", name="Change password")).to_be_visible()
    assert "Django" not in page.title() and page.locator(".topbar").count() == 1
    page.get_by_label("Current password").fill("not my password")
    page.get_by_label("New password", exact=True).fill("a new long passphrase 42")
    page.get_by_label("New password again").fill("a new long passphrase 42")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_contain_text("old password was entered incorrectly")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("a new long passphrase 42")
    page.get_by_label("New password again").fill("a new long passphrase 42")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Your password was changed")).to_be_visible()
    page.get_by_role("link", name="Back to the chat").click()
    wait_ready(page)  # still signed in here

    # Staff get a link to the admin, which says the product's name.
    staff = open_page("stella", **DESKTOP)
    staff.locator("#user-menu > summary").click()
    staff.get_by_role("link", name="Admin").click()
    expect(staff.locator("#site-name")).to_have_text("Team Chat administration")
    assert "Django administration" not in staff.content()
    staff.goto("/")
    wait_ready(staff)
    staff.locator("#user-menu > summary").click()
    staff.get_by_role("button", name="Log out").click()
    staff.wait_for_url(lambda url: "/accounts/login/" in url)


# --- sharing ---------------------------------------------------------------------------------------


def test_the_share_dialog_picks_people_as_one_types(open_page, people):
    page = open_page("olivia", **DESKTOP)
    conversation_id = new_chat(page)
    page.get_by_role("button", name="Share").click()
    dialog = page.get_by_role("dialog", name="Who has access")
    field = dialog.get_by_role("combobox")
    field.fill("m")
    expect(dialog.get_by_role("listbox")).to_be_hidden()  # one letter finds nobody
    field.fill("MA")
    options = dialog.get_by_role("option")
    # Case-insensitive, by username or name; never the inactive maxwell.
    expect(options).to_have_count(2)
    expect(options.nth(0)).to_contain_text("max")
    expect(options.nth(1)).to_contain_text("Maxine")
    expect(options.nth(1)).to_contain_text("Maxine Okafor")
    expect(field).to_have_attribute("aria-expanded", "true")
    field.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    field.press("Enter")
    expect(dialog.locator(".person")).to_have_count(2)
    expect(dialog.locator(".person").nth(1)).to_contain_text("Maxine")
    expect(field).to_have_value("")
    # Someone already in is not offered again; a click picks.
    field.fill("oka")
    expect(dialog.get_by_role("listbox")).to_be_hidden()
    field.fill("Ma")
    expect(options).to_have_count(1)
    options.first.click()
    expect(dialog.locator(".person")).to_have_count(3)
    # Escape closes the list first, then the dialog.
    field.fill("ot")
    expect(options).to_have_count(1)
    field.press("Escape")
    expect(dialog.get_by_role("listbox")).to_be_hidden()
    expect(dialog).to_be_visible()
    field.press("Escape")
    expect(dialog).to_be_hidden()
    assert sorted(people.conversation("olivia", conversation_id)["members"]) == ["Maxine", "max"]


# --- when access ends ----------------------------------------------------------------------------


def watch_status(page):
    page.evaluate(
        """() => {
            window.__status = [];
            const status = document.getElementById("connection-status");
            new MutationObserver(() => window.__status.push(status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true, attributes: true});
        }"""
    )


@pytest.mark.parametrize("how", ["removed", "deleted"])
def test_losing_access_mid_reply_says_why_at_once(open_page, live, how):
    conversation = live.create_conversation("olivia", title=f"Mid-reply {how}")
    live.api("olivia").post(f"/api/conversations/{conversation['id']}/members/", json={"username": "otto"})
    page = open_page("otto", **DESKTOP, path=f"/c/{conversation['id']}/")
    expect(page.locator("#connection-status")).to_be_hidden()
    watch_status(page)
    live.api("olivia").post(f"/api/conversations/{conversation['id']}/messages/", json={"content": words(200, "r")})
    wait_partial(page, min_chars=10)
    if how == "removed":
        live.api("olivia").delete(f"/api/conversations/{conversation['id']}/members/otto/")
        text = "You were removed from this conversation"
    else:
        live.api("olivia").delete(f"/api/conversations/{conversation['id']}/")
        text = "This conversation was deleted by its owner"
    expect(page.locator("#connection-status")).to_contain_text(text, timeout=5_000)
    reply = last_assistant(page)
    expect(reply).not_to_have_attribute("data-status", "streaming")
    expect(reply.locator(".message-status")).to_contain_text("no longer have access")
    expect(page.get_by_role("textbox", name="Message")).to_be_disabled()
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.locator(f"a[data-id='{conversation['id']}']")).to_have_count(0)
    history = page.evaluate("() => window.__status")
    assert not any("Connection lost" in entry for entry in history), history
    shot(page, f"access-{how}")
    if how == "deleted":
        return
    live.api("olivia").post(f"/api/conversations/{conversation['id']}/messages/{reply.get_attribute('data-id')}/stop/")


# --- the admin -------------------------------------------------------------------------------------

TRANSCRIPT = "Release **notes** with <script>alert(1)</script> and a table:\n\n" + TABLE


def test_the_admin_pages(browser, demo):
    stack, url = demo
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\nfrom chat import services\n"
        "from chat.models import Conversation, UsageLimit\n"
        "olivia = User.objects.get(username='olivia')\n"
        "UsageLimit.objects.create(user=olivia, messages_per_minute=3)\n"
        "c = Conversation.objects.create(owner=olivia, model='demo', title='Admin view')\n"
        f"u, r = services.message_submit(conversation=c, author=olivia, content={TRANSCRIPT!r}, model='demo')\n"
        f"services.message_finish(message_id=r.id, status='complete', content={TRANSCRIPT!r}, reasoning='', seq=1)\n"
        "print('CONVERSATION', c.id)\n",
    )
    conversation_id = stack.query("SELECT id FROM chat_conversation WHERE title = 'Admin view'")[0][0]
    conversation_id = str(uuid.UUID(str(conversation_id)))
    page = demo_page(browser, url, "stella")
    try:
        page.goto("/admin/")
        expect(page.locator("#site-name")).to_have_text("Team Chat administration")
        assert "Django administration" not in page.content()

        # A person's page: the limits in force (with where each comes from) and today's use, near the top.
        olivia_id = stack.query("SELECT id FROM auth_user WHERE username = 'olivia'")[0][0]
        page.goto(f"/admin/auth/user/{olivia_id}/change/")
        summary = page.locator(".field-limits_in_force")
        expect(summary).to_contain_text("Today (UTC)")
        expect(summary).to_contain_text("Messages per minute")
        expect(summary).to_contain_text("this person's limit")
        expect(summary).to_contain_text("team default")
        order = page.evaluate(
            """() => {
                const top = (el) => el.getBoundingClientRect().top;
                return [
                    top(document.querySelector(".field-limits_in_force")),
                    top(document.querySelector("[id^='usage_limit-group']")),
                    top(document.querySelector(".field-is_superuser")),
                ];
            }"""
        )
        assert order == sorted(order), order
        page.screenshot(path=str(SCREENSHOTS / "firstday-admin-user.png"))

        # The messages: newest first, and the list fits 1,400 px.
        page.goto("/admin/chat/message/")
        first_row = page.locator("#result_list tbody tr").first
        expect(first_row).to_contain_text("Assistant")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400
        page.screenshot(path=str(SCREENSHOTS / "firstday-admin-messages.png"))
        results = page.locator("#changelist .results")
        assert results.evaluate("(e) => e.scrollWidth <= e.clientWidth"), "the message list scrolls sideways"

        # The transcript renders its Markdown, sanitised, and links to the conversation in the app.
        page.goto(f"/admin/chat/conversation/{conversation_id}/change/")
        transcript = page.locator("#transcript")
        expect(transcript.locator(".message-content strong").first).to_have_text("notes")
        expect(transcript.locator(".message-content table").first).to_be_visible()
        assert transcript.locator(".message-content script").count() == 0
        expect(transcript.locator(".message-content").first).to_contain_text("<script>alert(1)</script>")
        link = page.get_by_role("link", name="Open in the app")
        expect(link).to_have_attribute("href", f"/c/{conversation_id}/")
        page.screenshot(path=str(SCREENSHOTS / "firstday-admin-transcript.png"), full_page=True)
        page.recorder.check()
    finally:
        page.context.close()
