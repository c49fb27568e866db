"""The admin's governance screens in a real browser: the usage charts, and screenshots of the ledger, prices,
audit trail and held or deleted conversations at desktop and phone widths, light and dark."""

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, PageRecorder
from tests.servers import PASSWORD, Stack

pytestmark = pytest.mark.browser

USAGE = "/admin/chat/message/usage/"
MODELS = ["gpt-4o", "llama-3.1-70b", "qwen-max"]  # by total tokens, largest first
LOOKS = {
    "desktop-light": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
    "desktop-dark": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"},
    "phone-light": {"viewport": {"width": 390, "height": 844}, "color_scheme": "light", "is_mobile": True},
    "phone-dark": {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark", "is_mobile": True},
}

# Two weeks of ledger rows ending today: three models (one without a price), four people, one of them gone.
SEED = f"""
import uuid
from datetime import datetime, time, timedelta
from decimal import Decimal
from django.contrib.auth.models import User
from django.utils import timezone
from chat.models import UsageEntry

User.objects.create_superuser("root", password={PASSWORD!r})
people = [User.objects.create_user(name, password={PASSWORD!r}) for name in ("ana", "bruno", "chen.wei.long.name")]
prices = {{"gpt-4o": (Decimal("2.50"), Decimal("10")), "qwen-max": (Decimal("1.60"), Decimal("6.40"))}}
today = timezone.localdate()
rows = []
for back in range(14):
    day = today - timedelta(days=back)
    at = timezone.make_aware(datetime.combine(day, time(12)))
    for n, (model, person) in enumerate(
        [("gpt-4o", people[0]), ("gpt-4o", people[1]), ("qwen-max", people[2]), ("llama-3.1-70b", None)]
    ):
        prompt, completion = 900 * (n + 1) + 137 * ((back * 7 + n) % 11), 300 + 61 * ((back + n) % 9)
        price = prices.get(model)
        cost = price and (prompt * price[0] + completion * price[1]) / 1_000_000
        rows.append(UsageEntry(
            message_id=uuid.uuid4(), conversation_id=uuid.uuid4(), requested_by=person,
            requested_by_name=person.username if person else "departed.user", model=model, status="complete",
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
            estimated=(back + n) % 5 == 0, cost=cost, currency="USD" if price else "", created_at=at,
        ))
UsageEntry.objects.bulk_create(rows)
"""

# Prices, one conversation on legal hold, one deleted by its owner, a person on legal hold: the audited actions
# go through the services, so the audit trail has their rows.
GOVERNANCE = """
from datetime import timedelta
from decimal import Decimal
from django.contrib.auth.models import User
from django.utils import timezone
from chat import services
from chat.models import Conversation, Message, ModelPrice

root, ana, bruno, chen = (User.objects.get(username=n) for n in ("root", "ana", "bruno", "chen.wei.long.name"))
today = timezone.localdate()
for model, prompt, completion, since in [
    ("gpt-4o", "2.50", "10", 90), ("gpt-4o", "2.00", "8.00", 10), ("qwen-max", "1.60", "6.40", 90)
]:
    ModelPrice.objects.create(
        model=model, input_per_million=Decimal(prompt), output_per_million=Decimal(completion),
        valid_from=today - timedelta(days=since),
    )

def chat(owner, title, question, answer):
    conversation = Conversation.objects.create(owner=owner, title=title, model="gpt-4o")
    now = timezone.now()
    Message.objects.create(
        conversation=conversation, role="user", author=owner, content=question, completed_at=now
    )
    Message.objects.create(
        conversation=conversation, role="assistant", requested_by=owner, content=answer, model="gpt-4o",
        prompt_tokens=812, completion_tokens=240, total_tokens=1052, completed_at=now,
    )
    return conversation

held = chat(ana, "Supplier contract review", "Summarise clause 14.", "Clause 14 limits liability to fees paid.")
services.conversation_legal_hold_set(conversation=held, admin=root, reason="Case 2026-114: supplier dispute")
gone = chat(bruno, "Draft of the reorg memo", "Make it shorter.", "Here is a shorter draft.")
services.conversation_delete(conversation=gone, user=bruno)
chat(chen, "Weekly report", "Any blockers?", "None this week.")
services.user_legal_hold_set(user=chen, admin=root, reason="HR request 77")
"""


@pytest.fixture(scope="module")
def admin_site():
    """A stack of its own (its ledger rows must not count against the chat tests' quotas): its URL."""
    stack = Stack().setup(usernames=())
    try:
        stack.manage("shell", "-c", SEED)
        stack.manage("shell", "-c", GOVERNANCE)
        port = stack.start_server()
        yield stack, f"http://127.0.0.1:{port}"
    finally:
        stack.stop()


@pytest.fixture
def admin_page(browser, admin_site):
    """``admin_page(look)`` -> a Page logged in to the admin as the superuser, in that look."""
    _, url = admin_site
    contexts = []

    def open_(look):
        context = browser.new_context(base_url=url, **LOOKS[look])
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.recorder = PageRecorder(page)
        page.goto("/admin/login/")
        page.get_by_label("Username").fill("root")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(lambda u: "/admin/login/" not in u)
        return page

    yield open_
    for context in contexts:
        for page in context.pages:
            page.recorder.check()
        context.close()


def full_screenshot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def legend_entry(model):
    return re.compile(rf"^{re.escape(model)} [\d,]+$")


def fill_of(locator) -> str:
    return locator.evaluate("element => getComputedStyle(element).fill")


@pytest.mark.parametrize("look", list(LOOKS))
def test_usage_report_charts(admin_page, look):
    page = admin_page(look)
    page.goto(USAGE)

    daily = page.locator("#usage-daily")
    chart = daily.locator("svg[role=img]")
    expect(chart).to_be_visible()
    today = timezone.localdate()
    expect(chart).to_have_attribute(
        "aria-label", f"Tokens per day by model, {today - timedelta(days=29):%Y-%m-%d} to {today:%Y-%m-%d}"
    )
    # Largest model first; the legend names every model with its total.
    expect(daily.locator(".chart-legend li")).to_have_text([legend_entry(m) for m in MODELS])
    # 14 days with 3 models each: one segment per day and model.
    expect(chart.locator("rect")).to_have_count(42)
    users = page.locator("#usage-users svg[role=img]")
    expect(users).to_be_visible()
    expect(users.locator("rect")).to_have_count(4)
    expect(users.locator("text", has_text="departed.user")).to_have_count(1)
    # The stylesheet painted the bars (unstyled SVG is black), in the theme's palette.
    first = chart.locator("rect.chart-series-0").first
    expected = "rgb(122, 166, 214)" if look.endswith("dark") else "rgb(78, 121, 167)"
    assert fill_of(first) == expected
    full_screenshot(page, f"admin-usage-{look}")

    page.get_by_role("link", name="Cost").click()
    expect(page).to_have_url(re.compile(r"[?&]measure=cost"))
    expect(chart).to_have_attribute("aria-label", re.compile(r"^Cost \(USD\) per day by model"))
    expect(daily.locator(".chart-legend li").last).to_have_text("llama-3.1-70b 0.00 (no price)")
    expect(chart.locator("rect")).to_have_count(28)
    full_screenshot(page, f"admin-usage-cost-{look}")


@pytest.mark.parametrize("look", ["desktop-light", "phone-light", "desktop-dark"])
def test_governance_screens(admin_page, admin_site, look):
    """The ledger, prices, the held and the deleted conversation, the audit trail: as an admin sees them."""
    stack, _ = admin_site
    page = admin_page(look)
    [(held,)] = stack.query("SELECT id FROM chat_conversation WHERE title = 'Supplier contract review'")
    [(gone,)] = stack.query("SELECT id FROM chat_conversation WHERE title = 'Draft of the reorg memo'")

    page.goto("/admin/chat/usageentry/")
    expect(page.locator("#result_list tbody tr")).to_have_count(56)
    expect(page.locator("#changelist")).to_contain_text("departed.user")
    full_screenshot(page, f"admin-ledger-{look}")

    page.goto("/admin/chat/modelprice/")
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    full_screenshot(page, f"admin-prices-{look}")

    page.goto("/admin/chat/conversation/?deleted=yes")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text("by bruno; purged after")
    full_screenshot(page, f"admin-conversations-deleted-{look}")

    page.goto(f"/admin/chat/conversation/{uuid.UUID(str(held))}/change/")
    expect(page.locator("#content-main")).to_contain_text("Case 2026-114: supplier dispute")
    full_screenshot(page, f"admin-conversation-held-{look}")

    page.goto(f"/admin/chat/conversation/{uuid.UUID(str(gone))}/change/")
    expect(page.locator("#content-main")).to_contain_text("by bruno; purged after")
    full_screenshot(page, f"admin-conversation-deleted-{look}")

    page.goto("/admin/chat/auditentry/")
    trail = page.locator("#result_list")
    expect(trail).to_contain_text("Legal Hold Set")
    expect(trail).to_contain_text("Transcript Viewed")
    full_screenshot(page, f"admin-audit-{look}")
