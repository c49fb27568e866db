"""The API tokens page in a real browser: create a token, copy it, see it listed, revoke it;
at desktop and phone widths, light and dark, with screenshots."""

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS

pytestmark = pytest.mark.browser

LOOKS = {
    "desktop-light": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
    "desktop-dark": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"},
    "phone-light": {"viewport": {"width": 390, "height": 844}, "color_scheme": "light", "is_mobile": True},
    "phone-dark": {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark", "is_mobile": True},
}


def full_screenshot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def fits_the_width(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("look", LOOKS)
def test_api_tokens_page(open_page, live, look):
    page = open_page("otto", **LOOKS[look])
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    assert fits_the_width(page)
    page.locator(".topbar").screenshot(path=str(SCREENSHOTS / f"app-topbar-{look}.png"))
    page.locator("#user-menu > summary").click()  # API tokens is in the user menu
    page.get_by_role("link", name="API tokens").click()
    page.wait_for_url("**/settings/tokens/")
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()

    name = f"notebook on the {look} laptop"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Expires on").fill("2099-12-31")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_role("textbox", name="The token").input_value()
    assert secret.startswith("tc_") and len(secret) == 46
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("() => navigator.clipboard.readText()") == secret
    assert fits_the_width(page)
    full_screenshot(page, f"api-tokens-created-{look}")

    # The token works against the API, with no session.
    api = httpx.get(f"http://127.0.0.1:{live.port}/api/models/", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 200
    # Shown once: the page again lists the token without its secret.
    page.goto("/settings/tokens/")
    row = page.locator(".token", has_text=name)
    expect(row).to_contain_text("expires 2099-12-31 00:00 UTC")
    expect(row).to_contain_text("last used")
    assert secret[12:] not in page.content()
    assert fits_the_width(page)
    full_screenshot(page, f"api-tokens-list-{look}")

    page.get_by_role("button", name=f"Revoke {name}").click()
    expect(page.get_by_role("status").first).to_have_text(f"Revoked “{name}”: it no longer works.")
    expect(page.locator(".token", has_text=name)).to_have_count(0)
    again = httpx.get(f"http://127.0.0.1:{live.port}/api/models/", headers={"Authorization": f"Bearer {secret}"})
    assert again.status_code == 401
