"""The model picker with several providers, group permissions, and the busy-provider notice, in Chromium.

A stack of its own: provider ``local`` (the OpenAI kind, plain HTTP) and
provider ``cloud`` (the DashScope kind, over TLS with a CA of its own); the
model ``cloud/fake-echo`` is for the group ``research`` (olivia), not max.
"""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PageRecorder, last_assistant, log_in, screenshot, send, wait_final, wait_ready
from tests.fakeprovider import FakeProvider
from tests.servers import Stack, login

pytestmark = pytest.mark.browser

LOCAL_ECHO = "fake-echo:interval_ms=20"
BUSY = "fake:status=429;times=1;retry_after=2"


@pytest.fixture(scope="module")
def multi():
    plain, tls = FakeProvider(), FakeProvider(tls=True)
    plain.start()
    tls.start()
    stack = Stack(
        extra_env={
            "LLM_PROVIDERS": "local,cloud",
            "LLM_LOCAL_BASE_URL": plain.base_url,
            "LLM_LOCAL_MODELS": f"{LOCAL_ECHO}|Local echo",
            "LLM_CLOUD_API": "dashscope",
            "LLM_CLOUD_BASE_URL": tls.base_url,
            "LLM_CLOUD_API_KEY": "sk-cloud-only",
            "LLM_CLOUD_CA_FILE": tls.ca_file,
            "LLM_CLOUD_MODELS": f"fake-echo|Cloud echo,{BUSY}|Busy cloud",
        }
    ).setup()
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import Group, User\nfrom chat.models import ModelAccess\n"
        "research = Group.objects.create(name='research')\n"
        "User.objects.get(username='olivia').groups.add(research)\n"
        "ModelAccess.objects.create(model='cloud/fake-echo').groups.add(research)\n",
    )
    port = stack.start_server()
    yield stack, port
    stack.stop()
    plain.stop()
    tls.stop()


@pytest.fixture
def open_as(browser, multi):
    _, port = multi
    contexts = []

    def open_(username, path="/"):
        context = browser.new_context(base_url=f"http://127.0.0.1:{port}", viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.recorder = PageRecorder(page)
        log_in(page, username)
        if path != "/":
            page.goto(path)
        wait_ready(page)
        return page

    yield open_
    for context in contexts:
        for page in context.pages:
            page.recorder.check()
        context.close()


def picker(page):
    """The model picker's options as {provider: [option text]}."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("#model-select optgroup")].map(
            (group) => [group.label, [...group.querySelectorAll("option")].map((o) => o.textContent)]))"""
    )


def test_the_picker_groups_models_by_provider_and_offers_only_allowed_ones(open_as, multi):
    _, port = multi
    olivia = login(port, "olivia")
    conversation = olivia.post("/api/conversations/", json={"model": "cloud/fake-echo"}).json()
    page = open_as("olivia", f"/c/{conversation['id']}/")
    page.locator("#settings-summary").click()
    expect(page.locator("#model-select")).to_have_value("cloud/fake-echo")
    assert picker(page) == {"local": ["Local echo"], "cloud": ["Cloud echo", "Busy cloud"]}
    send(page, "hello from research")
    message = wait_final(page)
    expect(message.locator(".message-content")).to_have_text("hello from research")
    screenshot(page, "models-picker-olivia")

    # max may not use the cloud echo: not offered, and his post in olivia's conversation is refused.
    assert olivia.post(f"/api/conversations/{conversation['id']}/members/", json={"username": "max"}).status_code == 201
    page = open_as("max")
    page.get_by_role("button", name="+ New chat").click()
    page.wait_for_url(lambda url: "/c/" in url)
    page.locator("#settings-summary").click()
    assert picker(page) == {"local": ["Local echo"], "cloud": ["Busy cloud"]}
    expect(page.locator("#model-select")).to_have_value(f"local/{LOCAL_ECHO}")
    page.goto(f"/c/{conversation['id']}/")
    wait_ready(page)
    send(page, "may I?")
    expect(page.locator("#composer-error")).to_contain_text("You may not use the model")
    expect(page.get_by_role("textbox", name="Message")).to_have_value("may I?")
    olivia.close()


def test_a_busy_provider_shows_the_retry_notice_then_the_reply(open_as, multi):
    _, port = multi
    olivia = login(port, "olivia")
    conversation = olivia.post("/api/conversations/", json={"model": f"cloud/{BUSY}"}).json()
    olivia.close()
    page = open_as("olivia", f"/c/{conversation['id']}/")
    send(page, "are you there?")
    status = last_assistant(page).locator(".message-status")
    expect(status).to_have_text("The provider is busy; retrying in 2 s")
    screenshot(page, "models-retrying")
    message = wait_final(page)
    expect(message.locator(".message-status")).to_be_hidden()
    assert message.locator(".message-content").inner_text().startswith("w0")
