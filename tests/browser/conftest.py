"""Real headless Chromium against a real daphne stack and the fake LLM provider.

One stack per session (a SQLite file, one daphne process, the fake provider)
sits behind a small TCP proxy whose ``cut()`` drops every open connection, the
way a flaky network or a restarting load balancer does. Each ``page`` records
every request, dialog, uncaught error and CSP report, and fails the test if a
request left 127.0.0.1 or the page threw.

Chromium is Debian's (``/usr/bin/chromium``); nothing is downloaded. Without
it these tests fail with a message saying so, they never skip.
"""

import os
import select
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.servers import PASSWORD, ROOT, Stack, login, wait_for_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"

# LLM_MODELS is comma-separated, so each fake model carries one parameter.
# The first is the default: it echoes the user's message word by word, 40 ms
# apart, so a test controls the reply (Markdown, hostile HTML) and its length.
SLOW_ECHO = "fake-echo:interval_ms=40"
FAST_ECHO = "fake-echo"
FAILING = "fake:error_after=2"
REASONING = "fake:reasoning=3"
MODELS = [SLOW_ECHO, FAST_ECHO, FAILING, REASONING]


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of ``port``; ``cut()`` resets every connection open now."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.cuts = 0
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client, upstream):
        peers = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                try:
                    sock.close()
                except OSError:
                    pass
            with self.lock:
                if (client, upstream) in self.pairs:
                    self.pairs.remove((client, upstream))

    def cut(self) -> int:
        """Close every connection open through the proxy (both sides); return how many."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        return len(pairs)

    def stop(self):
        self.running = False
        self.listener.close()
        self.cut()


# Module-scoped, not session-scoped: Playwright's sync API keeps an event loop running in the main thread
# until stop(), and Django's ORM and pytest-asyncio refuse to run under it. Stopped after each browser file,
# the asyncio and database tests that a pytest-xdist worker runs next work (a Chromium start is ~1 s).
@pytest.fixture(scope="module")
def playwright_api():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser tests need it "
            "(`apt-get install chromium`; .ci/run does). Set CHROMIUM=/path/to/chromium to use another.",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The playwright package is missing: make install (requirements/dev.lock)", pytrace=False)
    manager = sync_playwright().start()
    yield manager
    manager.stop()


@pytest.fixture(scope="module")
def browser(playwright_api):
    browser = playwright_api.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def fake_llm():
    from tests.fakeprovider import FakeProvider

    provider = FakeProvider()
    base_url = provider.start()
    yield provider, base_url
    provider.stop()


@pytest.fixture(scope="session")
def live(fake_llm):
    """The running app: ``live.url``, ``live.api(username)``, ``live.proxy``, ``live.stack``."""
    provider, base_url = fake_llm
    # The tests post many messages a minute; rita keeps a limit of one, to meet the real 429.
    stack = Stack(
        llm_base_url=base_url, llm_models=",".join(MODELS), extra_env={"CHAT_MESSAGES_PER_MINUTE": "0"}
    ).setup(usernames=("olivia", "max", "otto", "rita"))
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\nfrom chat.models import UsageLimit\n"
        "UsageLimit.objects.create(user=User.objects.get(username='rita'), messages_per_minute=1)\n",
    )
    try:
        port = stack.start_server()
        check_static_served(port)
        proxy = CuttableProxy(port)
        wait_for_port(proxy.port)
        yield Live(stack, port, proxy, provider)
        proxy.stop()
    finally:
        stack.stop()


def check_static_served(port):
    """The page is nothing without its script and stylesheet: say so plainly instead of timing out."""
    import httpx

    for path in ("/static/chat/js/main.js", "/static/chat/app.css", "/static/chat/vendor/markdown-it.min.js"):
        response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
        if response.status_code != 200:
            pytest.fail(
                f"`manage.py serve` answers {response.status_code} for {path}: the server does not serve static "
                "files, so the chat page cannot load its JavaScript and CSS.",
                pytrace=False,
            )


class Live:
    def __init__(self, stack, port, proxy, provider):
        self.stack, self.port, self.proxy, self.provider = stack, port, proxy, provider
        self.url = f"http://127.0.0.1:{proxy.port}"
        self._clients = {}
        self.sessions = {}  # username -> Playwright storage state (the session cookie)

    def api(self, username):
        """An httpx client logged in as ``username``, straight to daphne (not through the proxy)."""
        if username not in self._clients:
            self._clients[username] = login(self.port, username)
        return self._clients[username]

    def conversation(self, username, conversation_id):
        response = self.api(username).get(f"/api/conversations/{conversation_id}/")
        assert response.status_code == 200, response.text
        return response.json()

    def create_conversation(self, username, **fields):
        response = self.api(username).post("/api/conversations/", json=fields)
        assert response.status_code == 201, response.text
        return response.json()


class PageRecorder:
    """What a page did: every request URL, dialogs, uncaught errors, console errors."""

    def __init__(self, page):
        self.page = page
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def outside_requests(self) -> list[str]:
        return [url for url in self.requests if urlsplit(url).hostname != "127.0.0.1"]

    def check(self):
        assert not self.outside_requests(), f"requests left 127.0.0.1: {self.outside_requests()}"
        assert not self.dialogs, f"dialogs fired: {self.dialogs}"
        assert not self.errors, f"uncaught errors in the page: {self.errors}"
        csp = [text[:160] for text in self.console_errors if "Content Security Policy" in text]
        assert not csp, f"{len(csp)} CSP violations, the first: {csp[:3]}"


@pytest.fixture
def open_page(browser, live):
    """``open_page(username, **context_options)`` -> a logged-in Page (logged in through the form).

    ``page.recorder`` holds what it did; every page is checked at teardown. ``shared_worker=False``: no
    SharedWorker, so the tab holds its event stream itself and Playwright sees its requests (it does not
    see a shared worker's).
    """
    contexts = []

    def open_(username, *, path="/", shared_worker=True, **options):
        options.setdefault("viewport", {"width": 1280, "height": 800})
        # The first page of a user logs in through the form; later ones reuse its session cookie.
        session = live.sessions.get(username)
        context = browser.new_context(base_url=live.url, storage_state=session, **options)
        context.set_default_timeout(15_000)
        if not shared_worker:
            per_tab_streams(context)
        contexts.append(context)
        page = context.new_page()
        page.recorder = PageRecorder(page)
        if session is None:
            log_in(page, username)
            live.sessions[username] = context.storage_state()
            if path != "/":
                page.goto(path)
        else:
            page.goto(path)
        wait_ready(page)
        return page

    yield open_
    for context in contexts:
        for page in context.pages:
            page.recorder.check()
        context.close()


def per_tab_streams(context) -> None:
    """No SharedWorker in this context's pages: each tab runs the event stream itself (live.js's fallback)."""
    context.add_init_script("delete window.SharedWorker;")


def log_in(page, username, password=PASSWORD):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def wait_ready(page):
    """The app module has run (it exposes its instance once wired)."""
    page.wait_for_function("() => window.chatApp !== undefined")


def screenshot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


# --- helpers for the tests ------------------------------------------------------


def words(count: int, tag: str = "w") -> str:
    """A reply the slow echo streams as ``count`` deltas, with 2-, 3- and 4-byte UTF-8 in every word."""
    return " ".join(f"{tag}{i}·你好👋" for i in range(count))


def last_assistant(page):
    return page.locator("li.message.assistant").last


def new_chat(page):
    """Start a conversation from the sidebar; return its id (from the address bar)."""
    before = page.url
    toggle = page.get_by_role("button", name="Conversations")
    if toggle.is_visible():  # phone width: the sidebar is behind its button
        toggle.click()
    page.get_by_role("button", name="+ New chat").click()
    page.wait_for_url(lambda url: url != before and "/c/" in url)
    return page.url.rstrip("/").rsplit("/", 1)[-1]


def send(page, text):
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def watch_assistant(page):
    """Record (status, text) of the newest assistant message at every DOM change, in ``window.__seen``."""
    page.evaluate(
        """() => {
            window.__seen = [];
            const list = document.getElementById("messages");
            new MutationObserver(() => {
                const items = list.querySelectorAll("li.message.assistant");
                const li = items[items.length - 1];
                if (li) window.__seen.push([li.dataset.status, li.querySelector(".message-content").textContent]);
            }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )


def wait_partial(page, min_chars=1):
    """Wait until the newest assistant message shows some text while still streaming; return that text."""
    page.wait_for_function(
        """(min) => {
            const items = document.querySelectorAll("li.message.assistant");
            const li = items[items.length - 1];
            return li && li.dataset.status === "streaming"
                && li.querySelector(".message-content").textContent.trim().length >= min;
        }""",
        arg=min_chars,
    )
    return last_assistant(page).locator(".message-content").inner_text()


def wait_final(page, status="complete", *, count=None, timeout=30_000):
    """Wait until the newest assistant message (the ``count``-th, when given) has ``status``; return it."""
    page.wait_for_function(
        """([status, count]) => {
            const items = document.querySelectorAll("li.message.assistant");
            const li = items[items.length - 1];
            return li && li.dataset.status === status && (count === null || items.length === count);
        }""",
        arg=[status, count],
        timeout=timeout,
    )
    return last_assistant(page)
