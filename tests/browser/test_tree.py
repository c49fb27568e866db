"""Branches, per-message actions, search and export in a real browser (contract v2, issue 12)."""

import json

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import FAST_ECHO, last_assistant, new_chat, screenshot, send, wait_final

pytestmark = pytest.mark.browser


def post_and_finish(live, username, conversation_id, content, **fields):
    """Post a message over the API and read its stream to the end: the reply is final when this returns."""
    response = live.api(username).post(
        f"/api/conversations/{conversation_id}/messages/",
        json={"content": content, **fields},
        headers={"Accept": "text/event-stream"},
    )
    assert response.status_code == 200, response.text
    return response.text


def regenerate_and_finish(live, username, conversation_id, message_id):
    response = live.api(username).post(
        f"/api/conversations/{conversation_id}/messages/{message_id}/regenerate/",
        json={},
        headers={"Accept": "text/event-stream"},
    )
    assert response.status_code == 200, response.text


def stored(live, username, conversation_id):
    return live.conversation(username, conversation_id)["messages"]


def shown_ids(page):
    return page.evaluate("() => [...document.querySelectorAll('#messages > li.message')].map((li) => li.dataset.id)")


def test_regenerate_with_models_and_switch_branches(open_page, live):
    page = open_page("olivia")
    conversation_id = new_chat(page)
    send(page, "tell me a story")
    reply = wait_final(page)
    first_reply = reply.get_attribute("data-id")

    # Regenerate from the keyboard: a new sibling under the same question, shown as "2 / 2".
    regenerate = reply.get_by_role("button", name="Regenerate", exact=True)
    regenerate.focus()
    page.keyboard.press("Enter")
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("2 / 2")
    wait_final(page)
    messages = stored(live, "olivia", conversation_id)
    question = messages[0]
    replies = [m for m in messages if m["role"] == "assistant"]
    assert [m["role"] for m in messages].count("user") == 1
    assert len(replies) == 2 and all(m["parent"] == question["id"] for m in replies)
    assert shown_ids(page) == [question["id"], replies[1]["id"]]

    # With another model, from the menu.
    last_assistant(page).get_by_label("Regenerate with another model").click()
    last_assistant(page).get_by_role("button", name=FAST_ECHO, exact=True).click()
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("3 / 3")
    wait_final(page)
    newest = stored(live, "olivia", conversation_id)[-1]
    assert newest["model"] == FAST_ECHO and newest["parent"] == question["id"]
    expect(last_assistant(page).locator(".message-model")).to_have_text(FAST_ECHO)

    # Back one version: the switcher keeps the keyboard focus.
    last_assistant(page).get_by_role("button", name="Previous version of this reply").click()
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("2 / 3")
    assert shown_ids(page) == [question["id"], replies[1]["id"]]
    assert page.evaluate("document.activeElement.matches('.branch-prev, .branch-next')")

    # A follow-up goes under the reply on screen, not under the newest message of the conversation.
    send(page, "and then?")
    expect(page.locator("li.message")).to_have_count(4)
    wait_final(page)
    follow_up = next(m for m in stored(live, "olivia", conversation_id) if m["content"] == "and then?")
    assert follow_up["parent"] == replies[1]["id"]
    assert len(shown_ids(page)) == 4
    screenshot(page, "tree-branches")

    # Switching at the first fork shows that branch down to its newest leaf.
    page.locator(f"li[data-id='{replies[1]['id']}']").get_by_role("button", name="Next version of this reply").click()
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("3 / 3")
    assert shown_ids(page) == [question["id"], newest["id"]]
    # "›" is disabled at the last version: the focus went to "‹".
    expect(last_assistant(page).get_by_role("button", name="Previous version of this reply")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("1 / 3")
    assert shown_ids(page) == [question["id"], first_reply]
    page.locator(f"li[data-id='{first_reply}']").get_by_role("button", name="Next version of this reply").click()
    expect(page.locator("li.message")).to_have_count(4)
    assert shown_ids(page)[:3] == [question["id"], replies[1]["id"], follow_up["id"]]


def test_retry_after_a_stop_regenerates(open_page, live):
    page = open_page("olivia")
    conversation_id = new_chat(page)
    send(page, " ".join(f"w{i}" for i in range(200)))
    page.wait_for_function(
        "() => (document.querySelector('li.message.assistant .message-content')?.textContent || '').length > 10"
    )
    page.get_by_role("button", name="Stop").click()
    stopped = wait_final(page, "cancelled")
    expect(stopped.locator(".message-status")).to_have_text("Stopped by olivia")
    stopped.get_by_role("button", name="Regenerate", exact=True).click()
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("2 / 2")
    messages = stored(live, "olivia", conversation_id)
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"]
    page.get_by_role("button", name="Stop").click()


def test_edit_and_resend_makes_a_branch(open_page, live):
    page = open_page("olivia")
    conversation_id = new_chat(page)
    send(page, "original question")
    wait_final(page)
    question = page.locator("li.message.user").first
    original_id = question.get_attribute("data-id")

    # Esc cancels and gives the focus back to Edit.
    question.get_by_role("button", name="Edit").click()
    editor = question.get_by_label("Edit message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("original question")
    editor.press("Escape")
    expect(editor).to_have_count(0)
    expect(question.get_by_role("button", name="Edit")).to_be_focused()
    expect(question.locator(".message-content")).to_have_text("original question")

    # Enter sends the edit as a new branch beside the original.
    page.keyboard.press("Enter")
    editor = question.get_by_label("Edit message")
    editor.fill("edited question")
    editor.press("Enter")
    reply = wait_final(page)
    expect(reply.locator(".message-content")).to_have_text("edited question")
    edited = page.locator("li.message.user").first
    expect(edited.locator(".message-content")).to_have_text("edited question")
    expect(edited.locator(".switcher-position")).to_have_text("2 / 2")
    messages = stored(live, "olivia", conversation_id)
    users = [m for m in messages if m["role"] == "user"]
    assert [m["content"] for m in users] == ["original question", "edited question"]
    assert [m["parent"] for m in users] == [None, None]
    assert len(messages) == 4

    edited.get_by_role("button", name="Previous version of this message").click()
    expect(page.locator("li.message.user .message-content")).to_have_text("original question")
    assert shown_ids(page)[0] == original_id
    expect(last_assistant(page).locator(".message-content")).to_have_text("original question")


def test_copy_puts_the_markdown_source_on_the_clipboard(open_page, live):
    page = open_page("olivia", permissions=["clipboard-read", "clipboard-write"])
    new_chat(page)
    source = "**bold** and `code` and [a link](https://example.com/)"
    send(page, source)
    reply = wait_final(page)
    copy = reply.get_by_role("button", name="Copy this reply as Markdown")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == source
    page.locator("li.message.user").get_by_role("button", name="Copy this message as Markdown").click()
    assert page.evaluate("navigator.clipboard.readText()") == source


def test_keyboard_reaches_the_actions_with_visible_focus(open_page, live):
    page = open_page("olivia")
    new_chat(page)
    send(page, "focus me")
    reply = wait_final(page)
    page.locator("li.message.user").get_by_role("button", name="Edit").focus()
    seen = []
    for _ in range(6):
        page.keyboard.press("Tab")
        seen.append(
            page.evaluate(
                """() => {
                    const el = document.activeElement;
                    const style = getComputedStyle(el);
                    return [el.getAttribute("aria-label") || el.textContent.trim(), el.matches(":focus-visible"),
                            style.outlineStyle, style.outlineWidth];
                }"""
            )
        )
    labels = [label for label, *_ in seen]
    for wanted in ("Copy this reply as Markdown", "Regenerate", "Regenerate with another model"):
        assert wanted in labels, labels
    for label, visible, style, width in seen[: labels.index("Regenerate with another model") + 1]:
        assert visible and style == "solid" and width == "2px", (label, visible, style, width)
    # The model menu opens from the keyboard and Escape closes it.
    reply.get_by_label("Regenerate with another model").focus()
    page.keyboard.press("Enter")
    menu = reply.locator(".regen-more .menu")
    expect(menu.get_by_role("button", name=FAST_ECHO, exact=True)).to_be_visible()
    expect(menu.locator("button").first).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(reply.get_by_label("Regenerate with another model")).to_be_focused()
    screenshot(page, "tree-focus")


def test_someone_elses_branch_is_announced_not_shown(open_page, live):
    conversation = live.create_conversation("olivia", title="Shared tree")
    conversation_id = conversation["id"]
    assert (
        live.api("olivia").post(f"/api/conversations/{conversation_id}/members/", json={"username": "max"}).status_code
        == 201
    )
    post_and_finish(live, "olivia", conversation_id, "a question", model=FAST_ECHO)
    page = open_page("olivia", path=f"/c/{conversation_id}/")
    expect(page.locator("li.message")).to_have_count(2)
    before = shown_ids(page)

    # max regenerates the reply: olivia keeps hers and is told.
    reply_id = stored(live, "olivia", conversation_id)[1]["id"]
    regenerate_and_finish(live, "max", conversation_id, reply_id)
    notice = page.locator("#branch-notice")
    expect(notice).to_contain_text("A new reply was written on another branch")
    assert shown_ids(page) == before
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("1 / 2")

    # max edits the question: a new root branch, announced with his name.
    post_and_finish(live, "max", conversation_id, "max's version", parent=None, model=FAST_ECHO)
    expect(notice).to_contain_text("max started a new branch")
    assert shown_ids(page) == before
    screenshot(page, "tree-notice")
    notice.get_by_role("button", name="Show it").click()
    expect(notice).to_be_hidden()
    expect(page.locator("li.message.user .message-content")).to_have_text("max's version")
    expect(page.locator("li.message.user .switcher-position")).to_have_text("2 / 2")


def test_search_palette_and_sidebar_search_open_at_the_message(open_page, live):
    conversation = live.create_conversation("olivia", title="Zoo notes")
    conversation_id = conversation["id"]
    post_and_finish(live, "olivia", conversation_id, "<img src=x> where is the zebracorn living", model=FAST_ECHO)
    for i in range(6):
        post_and_finish(live, "olivia", conversation_id, f"filler {i} " + "lorem ipsum dolor " * 60, model=FAST_ECHO)
    target = stored(live, "olivia", conversation_id)
    target_ids = {m["id"] for m in target if "zebracorn" in m["content"]}

    page = open_page("olivia")
    page.keyboard.press("Control+k")
    palette = page.get_by_role("dialog", name="Search all conversations")
    expect(palette).to_be_visible()
    palette.get_by_label("Search titles and messages").fill("ZEBRAcorn")
    result = palette.locator("button.search-result").first
    expect(result.locator("mark").first).to_have_text("zebracorn")
    expect(result).to_contain_text("<img src=x>")
    assert palette.locator(".search-results img").count() == 0  # server text is text, never HTML
    expect(result.locator(".search-result-title")).to_have_text("Zoo notes")
    screenshot(page, "search-palette")
    palette.get_by_label("Search titles and messages").press("ArrowDown")
    expect(result).to_be_focused()
    page.keyboard.press("Enter")

    page.wait_for_url(f"**/c/{conversation_id}/")
    found = page.locator("li.message.is-found")
    expect(found).to_have_count(1)
    assert found.get_attribute("data-id") in target_ids
    expect(found).to_be_in_viewport()
    expect(last_assistant(page)).not_to_be_in_viewport()

    # The sidebar search finds message text too, with the snippet.
    page.goto("/")
    page.get_by_label("Search conversations").fill("zebracorn")
    link = page.locator(f".conversation-link[data-id='{conversation_id}']")
    expect(link.locator(".conversation-link-snippet mark").first).to_have_text("zebracorn")
    link.click()
    expect(page.locator("li.message.is-found")).to_be_in_viewport()


def test_export_menu_downloads_markdown_and_json(open_page, live):
    page = open_page("olivia")
    conversation_id = new_chat(page)
    send(page, "export me")
    wait_final(page)
    page.get_by_text("Export", exact=True).click()
    screenshot(page, "export-menu")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Markdown (.md)").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".md")
    assert "export me" in open(download.path(), encoding="utf-8").read()
    expect(page.locator("#export-menu .menu")).to_be_hidden()

    page.get_by_text("Export", exact=True).click()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="JSON, every branch (.json)").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".json")
    exported = json.loads(open(download.path(), encoding="utf-8").read())
    assert exported["id"] == conversation_id
    assert [m["content"] for m in exported["messages"]] == ["export me", "export me"]


@pytest.mark.parametrize(
    "width,height,scheme", [(1280, 800, "light"), (1280, 800, "dark"), (390, 844, "light"), (390, 844, "dark")]
)
def test_screenshots_of_branches_and_palette(open_page, live, width, height, scheme):
    phone = width < 700
    page = open_page(
        "olivia", viewport={"width": width, "height": height}, color_scheme=scheme, is_mobile=phone, has_touch=phone
    )
    new_chat(page)
    # The Send button: on the phone's touch keyboard Enter makes a new line.
    page.get_by_role("textbox", name="Message").fill("A question with `code` in it")
    page.get_by_role("button", name="Send").click()
    reply = wait_final(page)
    reply.get_by_role("button", name="Regenerate", exact=True).click()
    expect(last_assistant(page).locator(".switcher-position")).to_have_text("2 / 2")
    wait_final(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    name = f"tree-{'phone' if phone else 'desktop'}-{scheme}"
    screenshot(page, name)
    if phone:
        page.keyboard.press("Control+k")
    else:
        page.locator("#search-open").click()
    page.get_by_label("Search titles and messages").fill("question")
    expect(page.locator("button.search-result").first.locator("mark").first).to_be_visible()
    screenshot(page, f"{name}-search")


def test_a_search_hit_on_another_branch_opens_that_branch(open_page, live):
    conversation = live.create_conversation("olivia", title="Two versions")
    conversation_id = conversation["id"]
    post_and_finish(live, "olivia", conversation_id, "the aardwolf version", model=FAST_ECHO)
    post_and_finish(live, "olivia", conversation_id, "the okapi version", parent=None, model=FAST_ECHO)
    first = stored(live, "olivia", conversation_id)[0]
    assert first["content"] == "the aardwolf version"

    page = open_page("olivia", path=f"/c/{conversation_id}/")
    expect(page.locator("li.message.user .message-content")).to_have_text("the okapi version")
    page.keyboard.press("Control+k")
    page.get_by_label("Search titles and messages").fill("aardwolf")
    page.locator("button.search-result").first.click()
    expect(page.locator("li.message.user .message-content")).to_have_text("the aardwolf version")
    expect(page.locator("li.message.user .switcher-position")).to_have_text("1 / 2")
    found = page.locator("li.message.is-found")
    expect(found).to_have_count(1)
    assert found.get_attribute("data-id") in {m["id"] for m in stored(live, "olivia", conversation_id)[:2]}
