"""Rich rendering in Chromium: a user's Markdown, highlighted code and math, in light and dark, desktop and phone."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import FAST_ECHO, last_assistant, new_chat, screenshot, send, wait_final, wait_ready

pytestmark = pytest.mark.browser

RICH = r"""Release notes with **bold**, a [link](https://example.org/docs)
and a second line.

- one
- two

Euler: $e^{i\pi} + 1 = 0$, while $5 and $10 stay prices and `$x$` stays code.

$$
\int_0^\infty e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2}
$$

```python
def greet(name: str) -> str:
    return f"Hello, {name}"  # a greeting
```

```js
const answer = async (n) => n * 42;
```
"""

LOOKS = {
    "desktop-light": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
    "desktop-dark": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"},
    "phone-light": {"viewport": {"width": 390, "height": 844}, "color_scheme": "light", "is_mobile": True},
    "phone-dark": {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark", "is_mobile": True},
}
# The GitHub themes' keyword colour: #d73a49 in light, #ff7b72 in dark.
KEYWORD_COLOUR = {"light": "rgb(215, 58, 73)", "dark": "rgb(255, 123, 114)"}


def check_rich(content, scheme):
    """What a person sees in one rendered message of RICH."""
    expect(content.locator("strong")).to_have_text("bold")
    expect(content.get_by_role("link", name="link")).to_have_attribute("href", "https://example.org/docs")
    expect(content.locator("ul > li")).to_have_count(2)
    # Highlighted tokens, coloured by the theme of the colour scheme.
    python = content.locator("pre code.language-python")
    expect(python.locator(".hljs-keyword").first).to_have_text("def")
    expect(python.locator(".hljs-string").first).to_contain_text("Hello")
    expect(python.locator(".hljs-comment")).to_have_text("# a greeting")
    javascript = content.locator("pre code.language-js")
    expect(javascript.locator(".hljs-keyword").first).to_have_text("const")
    expect(javascript.locator(".hljs-number")).to_have_text("42")
    expect(python.locator(".hljs-keyword").first).to_have_css("color", KEYWORD_COLOUR[scheme])
    # Math as MathML, drawn by the browser: one inline formula, one display formula; prices and code are text.
    inline = content.locator(".math-inline math")
    expect(inline).to_have_count(1)
    expect(inline.locator("annotation")).to_have_text(r"e^{i\pi} + 1 = 0")
    block = content.locator(".math-block math[display=block]")
    expect(block).to_have_count(1)
    expect(block.locator("mfrac msqrt")).to_have_count(1)
    assert block.evaluate("m => m.getBoundingClientRect().width") > 50
    expect(content).to_contain_text("while $5 and $10 stay prices")
    expect(content.locator("code", has_text="$x$")).to_have_count(1)


def test_user_markdown_code_and_math_render(open_page, browser, live):
    page = open_page("olivia")
    conversation_id = new_chat(page)
    live.api("olivia").patch(f"/api/conversations/{conversation_id}/", json={"model": FAST_ECHO})
    page.reload()
    wait_ready(page)
    send(page, RICH)
    reply = wait_final(page)
    user = page.locator("li.message.user .message-content")
    # The person's own message is Markdown like the reply, and keeps the line break they typed.
    check_rich(user, "light")
    expect(user.locator("p").first.locator("br")).to_have_count(1)
    check_rich(reply.locator(".message-content"), "light")
    assert live.conversation("olivia", conversation_id)["messages"][0]["content"] == RICH

    for look, options in LOOKS.items():
        other = open_page("olivia", path=f"/c/{conversation_id}/", **options)
        reply = wait_final(other)
        scheme = options["color_scheme"]
        check_rich(other.locator("li.message.user .message-content"), scheme)
        check_rich(reply.locator(".message-content"), scheme)
        other.locator("li.message.user").scroll_into_view_if_needed()
        other.locator("li.message.user .math-block").scroll_into_view_if_needed()
        screenshot(other, f"rendering-user-{look}")
        last_assistant(other).locator(".codeblock").last.scroll_into_view_if_needed()
        screenshot(other, f"rendering-reply-{look}")
