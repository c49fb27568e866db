"""Static files under hashed names, as production serves them: the page, its module graph, a reply in Chromium.

The Stack runs production's storage (tests/hashed_static_settings.py) after a
real ``collectstatic``; every page and module must name hashed files only, or
a cache that keeps /static/ for good would serve a stale script.
"""

import re
from urllib.parse import urljoin

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    FAST_ECHO,
    PageRecorder,
    last_assistant,
    log_in,
    new_chat,
    send,
    wait_final,
    wait_ready,
)
from tests.servers import Stack, login

# collectstatic's names: main.js -> main.3f2a9c1e07b4.js
HASHED = re.compile(r"\.[0-9a-f]{12}\.\w+$")
# Relative module specifiers: import x from "./a.js"; import "../b.js"; import("./c.js")
IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}/[^"']+)["']""")


@pytest.fixture(scope="module")
def hashed(fake_llm):
    """(stack, port): one daphne process serving collectstatic's hashed files itself."""
    _, base_url = fake_llm
    stack = Stack(
        llm_base_url=base_url,
        llm_models=FAST_ECHO,
        extra_env={"DJANGO_SETTINGS_MODULE": "tests.hashed_static_settings"},
    )
    stack.env["STATIC_ROOT"] = str(stack.dir / "static")
    try:
        stack.setup(usernames=("olivia",))
        stack.manage("collectstatic", "--noinput", "-v0")
        yield stack, stack.start_server()
    finally:
        stack.stop()


def test_the_page_and_every_module_it_loads_name_hashed_files(hashed):
    _, port = hashed
    client = login(port, "olivia")

    page = client.get("/")
    static = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    entry = re.search(r'<script type="module" src="([^"]+)"', page.text)[1]
    # The shared worker holding the browser's one event stream is a module graph of its own.
    worker = re.search(r'<meta name="chat-live-worker" content="([^"]+)"', page.text)[1]
    static.append(worker)

    assert page.status_code == 200 and static, page.text[:300]
    assert [url for url in static if not HASHED.search(url)] == []
    modules, todo = {}, [entry, worker]
    while todo:
        url = todo.pop()
        if url in modules:
            continue
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable", url
        modules[url] = response.text
        for specifier in IMPORT.findall(response.text):
            assert HASHED.search(specifier), f"{url} imports {specifier}, not a hashed name"
            todo.append(urljoin(url, specifier))
    loaded = {re.sub(r"\.[0-9a-f]{12}(?=\.\w+$)", "", url.rsplit("/", 1)[-1]) for url in modules}
    assert {
        "main.js",
        "events.js",
        "stream.js",
        "live.js",
        "live-worker.js",
        "conversation.js",
        "markdown.js",
    } <= loaded
    assert "katex.min.js" in loaded


def test_a_reply_with_code_and_math_renders_from_hashed_modules(browser, hashed):
    _, port = hashed
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
    context.set_default_timeout(15_000)
    page = context.new_page()
    recorder = PageRecorder(page)
    try:
        log_in(page, "olivia")
        wait_ready(page)
        new_chat(page)
        send(page, "Hashed $e^{i\\pi}$ names\n\n```python\ndef f():\n    return 1\n```")
        content = wait_final(page).locator(".message-content")

        expect(content.locator(".math-inline math")).to_have_count(1)
        expect(content.locator("pre code.language-python .hljs-keyword").first).to_have_text("def")
        assert "Hashed" in last_assistant(page).inner_text()
        recorder.check()
        scripts = [url for url in recorder.requests if "/static/" in url]
        assert scripts and [url for url in scripts if not HASHED.search(url)] == []
    finally:
        context.close()
