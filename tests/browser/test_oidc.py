"""OpenID Connect sign-in in Chromium: the login page's button, the provider's form, back in the app signed in.

The app is a daphne process configured with OIDC_*; the provider is
tests/oidcprovider.py in a process of its own. Every hop is a real HTTP
redirect the browser follows. Screenshots of the login page with the button
at desktop and phone widths, light and dark, go to test-artifacts/screenshots/.
"""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, PageRecorder, wait_ready
from tests.oidcprovider import OIDCProvider
from tests.servers import Stack

pytestmark = pytest.mark.browser

CLIENT_ID = "team-chat"
CLIENT_SECRET = "browser-oidc-secret"
LOOKS = {
    "desktop-light": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
    "desktop-dark": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"},
    "phone-light": {"viewport": {"width": 390, "height": 844}, "color_scheme": "light", "is_mobile": True},
    "phone-dark": {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark", "is_mobile": True},
}


def person(name, groups):
    return {"password": f"{name}-pw", "email": f"{name}@example.com", "given_name": name.title(), "groups": groups}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    provider = OIDCProvider(tmp_path_factory.mktemp("oidc"))
    issuer = provider.start(
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "users": {"alice": person("alice", ["chat-admins"]), "bea": person("bea", ["designers"])},
        }
    )
    stack = Stack(
        extra_env={
            "OIDC_ISSUER": issuer,
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_PROVIDER_NAME": "Example SSO",
            "OIDC_SUPERUSER_GROUPS": "chat-admins",
        }
    )
    try:
        stack.setup(usernames=())
        port = stack.start_server()
        provider.control(redirect_uris=[f"http://127.0.0.1:{port}/oidc/callback/"])
        yield f"http://127.0.0.1:{port}", provider
    finally:
        stack.stop()
        provider.stop()


@pytest.fixture
def new_page(browser, app):
    contexts = []

    def open_(**options):
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(base_url=app[0], **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.recorder = PageRecorder(page)
        return page

    yield open_
    for context in contexts:
        for page in context.pages:
            page.recorder.check()
        context.close()


def sign_in_with_the_button(page, username):
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Sign in with Example SSO").click()
    page.wait_for_url(lambda url: "/authorize" in url)
    page.get_by_label("Provider username").fill(username)
    page.get_by_label("Provider password").fill(f"{username}-pw")
    page.get_by_role("button", name="Sign in at the provider").click()
    page.wait_for_url(lambda url: "/authorize" not in url and "/oidc/" not in url)
    wait_ready(page)


def test_the_button_signs_in_with_the_name_and_rights_the_provider_gives(new_page):
    page = new_page()
    sign_in_with_the_button(page, "alice")
    expect(page.locator("#current-user")).to_have_text("alice")
    page.goto("/admin/")
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()

    page = new_page()
    sign_in_with_the_button(page, "bea")
    expect(page.locator("#current-user")).to_have_text("bea")
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))


def test_a_deep_link_comes_back_to_where_it_pointed_after_sign_in(new_page):
    page = new_page()
    page.goto("/accounts/login/?next=/admin/")
    page.get_by_role("link", name="Sign in with Example SSO").click()
    page.get_by_label("Provider username").fill("alice")
    page.get_by_label("Provider password").fill("alice-pw")
    page.get_by_role("button", name="Sign in at the provider").click()
    page.wait_for_url(lambda url: url.endswith("/admin/"))
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()


@pytest.mark.parametrize("look", LOOKS)
def test_login_page_with_the_button_screenshot(new_page, look):
    page = new_page(**LOOKS[look])
    page.goto("/accounts/login/")
    button = page.get_by_role("link", name="Sign in with Example SSO")
    expect(button).to_be_visible()
    # The button is as wide as the password form below it, and on the screen.
    box, form = button.bounding_box(), page.locator("form.auth-form").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= LOOKS[look]["viewport"]["width"]
    assert abs(box["width"] - form["width"]) < 80
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"login-oidc-{look}.png"), full_page=True)
