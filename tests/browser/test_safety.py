"""Whatever a model (or a teammate) writes stays inert in the page: no script, no dialog, no outside request."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import FAST_ECHO, last_assistant, new_chat, send, wait_final, wait_ready

pytestmark = pytest.mark.browser

HOSTILE = """# Hostile output

<script>window.__pwned = 1; document.title = "pwned"</script>

<img src=x onerror="window.__pwned = 2; document.title = 'pwned'">

<svg onload="window.__pwned = 3"><script>window.__pwned = 4</script></svg>

<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned = 5"></style></mglyph></table></mtext></math>

<iframe src="javascript:window.top.__pwned = 6"></iframe> <a href="javascript:window.__pwned = 7">raw html link</a>

[markdown js link](javascript:window.__pwned=8) [mixed case](JaVaScRiPt:window.__pwned=9)
[entity](&#106;avascript:window.__pwned=10) [data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)
[vbscript](vbscript:msgbox) <javascript:window.__pwned=11> [ref link][evil]

[evil]: javascript:window.__pwned=12

![tracker](http://evil.example.com/pixel.png) ![data image](data:image/png;base64,iVBORw0KGgo=)
![relative](/static/chat/favicon.svg) <img src="http://evil.example.com/raw.png">

<form action="http://evil.example.com/"><button>go</button></form>
<meta http-equiv="refresh" content="0;url=http://evil.example.com/">
<link rel="stylesheet" href="http://evil.example.com/x.css"> <style>body { display: none }</style>
<base href="http://evil.example.com/"> <object data="http://evil.example.com/x.swf"></object>

[safe link](https://example.org/page "a title")

```html
<script>window.__pwned = 13</script>
```
"""

# MathML is allowed only as KaTeX writes it (a <math> straight inside its .katex span); never annotation-xml or
# mglyph, the namespace-confusion tags. Buttons are the app's own, outside the rendered text (but a code block's Copy).
DANGEROUS_TAGS = (
    "script, iframe, img, svg, math:not(.katex > math), annotation-xml, mglyph, malignmark, style, form, meta, "
    "link, base, object, embed, input, .message-content button:not(.copy-code)"
)


def inert_checks(page):
    """What must hold for the whole transcript, at any moment."""
    assert page.evaluate("window.__pwned") is None
    assert page.title() != "pwned"
    found = page.evaluate(
        """(selector) => {
            const root = document.getElementById("messages");
            const bad = [...root.querySelectorAll(selector)].map((el) => el.outerHTML);
            for (const el of root.querySelectorAll("*")) {
                for (const attr of el.attributes) {
                    const risky = attr.name.startsWith("on") || attr.name === "style" || attr.name === "src";
                    if (risky) bad.push(`${el.tagName} ${attr.name}`);
                }
            }
            for (const a of root.querySelectorAll("a")) {
                const href = a.getAttribute("href");
                if (href === null) continue;
                if (!/^(https?:|mailto:)/i.test(href)) bad.push(`href ${href}`);
                const isolated = a.target === "_blank" && /noopener/.test(a.rel) && /noreferrer/.test(a.rel);
                if (!isolated) bad.push(`rel ${a.outerHTML}`);
            }
            return bad;
        }""",
        DANGEROUS_TAGS,
    )
    assert found == []


def test_hostile_model_output_stays_inert(open_page, live):
    page = open_page("olivia")
    conversation_id = new_chat(page)
    send(page, HOSTILE)  # the echo model streams it back word by word
    # Inert at every step of the stream, not only at the end.
    page.wait_for_function(
        """() => {
            const li = [...document.querySelectorAll("li.message.assistant")].pop();
            return li && li.dataset.status === "streaming" && li.textContent.includes("raw html link");
        }"""
    )
    inert_checks(page)
    message = wait_final(page, timeout=30_000)
    inert_checks(page)
    stored = live.conversation("olivia", conversation_id)["messages"][1]
    assert stored["content"] == HOSTILE

    content = message.locator(".message-content")
    # Raw HTML is shown as text, never parsed.
    expect(content).to_contain_text('<script>window.__pwned = 1; document.title = "pwned"</script>')
    expect(content).to_contain_text("<img src=x onerror=")
    # javascript:, data: and vbscript: links are not links.
    for name in ("markdown js link", "mixed case", "entity", "data link", "vbscript", "ref link", "raw html link"):
        expect(content.get_by_role("link", name=name)).to_have_count(0)
    # Images are never loaded: an outside image becomes a link to follow by choice.
    tracker = content.get_by_role("link", name="Image: tracker")
    expect(tracker).to_have_attribute("href", "http://evil.example.com/pixel.png")
    expect(content.locator(".image-link", has_text="Image: data image")).to_have_count(1)
    assert content.locator("img").count() == 0
    # A normal link opens in a new tab without referrer or opener.
    safe = content.get_by_role("link", name="safe link")
    expect(safe).to_have_attribute("href", "https://example.org/page")
    expect(safe).to_have_attribute("title", "a title")
    # HTML in a code block is text.
    expect(content.locator(".codeblock pre")).to_have_text("<script>window.__pwned = 13</script>\n")
    # The user's own message is Markdown with the same rules: raw HTML is text.
    expect(page.locator("li.message.user .message-content")).to_contain_text("<svg onload=")

    # Nothing was requested from anywhere but this server, also after a reload (the page renders from JSON).
    page.reload()
    wait_ready(page)
    expect(last_assistant(page).get_by_role("link", name="Image: tracker")).to_be_visible()
    inert_checks(page)
    assert page.recorder.outside_requests() == []
    assert page.recorder.dialogs == []
    # The app module and its JSON data (the page's state, the event names): no other script.
    scripts = page.evaluate("[...document.querySelectorAll('script')].map((s) => s.type || 'classic')")
    assert sorted(scripts) == ["application/json", "application/json", "module"]


def test_hostile_titles_are_text(open_page, live):
    title = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    conversation = live.create_conversation("olivia", title=title)
    page = open_page("olivia", path=f"/c/{conversation['id']}/")
    expect(page.locator("#conversation-title")).to_have_text(title)
    expect(page.locator(f"a[data-id='{conversation['id']}'] .conversation-link-title")).to_have_text(title)
    assert page.title() == f"{title} · Team Chat"
    assert page.locator("#sidebar img, #conversation img, #sidebar script, #conversation script").count() == 0
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#delete-title")).to_have_text(title)
    page.keyboard.press("Escape")
    assert page.evaluate("window.__pwned") is None


HOSTILE_USER = r"""**Markdown** from a person, hostile too:

<script>window.__pwned = 21</script> <img src=x onerror="window.__pwned = 22">
[js link](javascript:window.__pwned=23) <a href="javascript:window.__pwned=24">raw link</a>

Math that tries to link or style: $\href{javascript:window.__pwned=25}{click}$ and
$\htmlStyle{background:red}{styled}$ $\url{javascript:window.__pwned=26}$
$\includegraphics{http://evil.example.com/math.png}$ $\htmlClass{hljs-keyword}{x}$ $\htmlData{x=1}{y}$

$$
\href{https://evil.example.com/}{\text{link}} + \color{red}{x} + \fcolorbox{red}{blue}{boxed} + \frac{1}{
$$

```html
<img src=x onerror="window.__pwned = 27"><script>window.__pwned = 28</script>
```
"""


def test_hostile_user_markdown_and_math_stay_inert(open_page, live):
    page = open_page("olivia")
    conversation_id = new_chat(page)
    live.api("olivia").patch(f"/api/conversations/{conversation_id}/", json={"model": FAST_ECHO})
    page.reload()
    wait_ready(page)
    send(page, HOSTILE_USER)
    wait_final(page)
    inert_checks(page)
    for content in (page.locator("li.message.user .message-content"), last_assistant(page).locator(".message-content")):
        expect(content.locator("strong")).to_have_text("Markdown")
        expect(content).to_contain_text('<script>window.__pwned = 21</script> <img src=x onerror="window.__pwned')
        for name in ("js link", "raw link", "click", "link"):
            expect(content.get_by_role("link", name=name)).to_have_count(0)
        # KaTeX with trust off: the commands are shown in red as text, not obeyed.
        expect(content.locator(".math-inline math")).to_have_count(6)
        for command in ("\\href", "\\htmlStyle", "\\url", "\\includegraphics", "\\htmlClass", "\\htmlData"):
            expect(content.locator("mtext", has_text=command).first).to_be_attached()
        assert content.locator("[href], [style], [src], [data-x]").count() == 0
        assert content.locator(".hljs-keyword").count() == 0  # no class smuggled in through \htmlClass
        # The unfinished display formula is its source, in the error colour; the code block is highlighted text.
        expect(content.locator(".math-block .katex-error")).to_contain_text("\\fcolorbox{red}{blue}{boxed}")
        code = content.locator("pre code.language-html")
        expect(code).to_have_text('<img src=x onerror="window.__pwned = 27"><script>window.__pwned = 28</script>\n')
        expect(code.locator(".hljs-tag").first).to_be_attached()
    assert page.evaluate("window.__pwned") is None
