"""10. Presence and the user's stream: event streams per browser, memory per connected user

Streams per browser: headless Chromium (Debian's), one person logged in over
plain HTTP/1.1 on daphne a, opens 8 tabs on 8 conversations one after the
other; after each tab's page has loaded, the person's open event streams are
counted on the server (their stream slots in Redis), and each tab is asked
for a `fetch` (it hangs when the browser's six connections to the host are
all held by streams). Once with the shared worker (the app as it ships: one
multiplexed stream for the browser), once with SharedWorker taken away (as
on Android Chrome: each tab holds the same stream itself).

Memory per connected user: a fresh daphne process (Redis configured) first
serves 10 warm-up users, then its VmRSS is read with N more users (each a
person of their own, with a session) each holding one multiplexed stream
`GET /api/events/?conversations=<id>` on the same conversation, which
they are all members of (so each one joining changes everybody's presence):
N = 0, 100, 500, read 3 s after the last one connected. KiB per user is
the growth from N = 0 divided by N. Baseline: the per-viewer memory of a
conversation stream, from scenario 5 (`memory`), where it was measured.
"""

from __future__ import annotations

import asyncio
import json
import time

from .deployment import HOST, Deployment, LoadWorkers, rss_kib
from .stats import fmt

TABS = 8
TARGET_STREAMS = 2
WARMUP_USERS = 10
SETTLE_SECONDS = 3.0
TAB_TIMEOUT_MS = 10_000
# A fetch from a tab, given up after 5 s: with every connection to the host held by a stream it never starts.
FETCH = """async () => {
    try {
        const answer = await fetch('/api/models/', {credentials: 'same-origin', signal: AbortSignal.timeout(5000)});
        return answer.status === 200;
    } catch {
        return false;
    }
}"""
CHROMIUM = "/usr/bin/chromium"

# Sessions made in the database: a login per user would spend ~0.3 s of PBKDF2 each.
MAKE_USERS = """
import json
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from chat.models import Conversation
count, conversation_id = {count}, "{conversation}"
store = import_module(settings.SESSION_ENGINE).SessionStore
conversation = Conversation.objects.get(id=conversation_id)
User.objects.bulk_create([User(username=f"presence{{i}}", password="!") for i in range(count)])
users = list(User.objects.filter(username__startswith="presence").order_by("id"))
conversation.members.add(*users)
out = []
for user in users:
    session = store()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    out.append(session.session_key)
print(json.dumps(out))
"""


def settings(quick: bool) -> dict:
    return {"users": [0, 20, 100] if quick else [0, 100, 500]}


def models(quick: bool) -> list[str]:
    return ["fake:chunks=3;interval_ms=20"]


def user_stream_request(port: int, session_key: str, conversation_id: str) -> str:
    return (
        f"GET /api/events/?conversations={conversation_id} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Cookie: sessionid={session_key}\r\nAccept: text/event-stream\r\n\r\n"
    )


def _open_streams(dep: Deployment, user_id: int) -> int:
    import redis

    client = redis.Redis(port=dep.redis.port)
    try:
        return client.zcount(f"chat:user:{user_id}:streams", int(time.time() * 1000), "+inf")
    finally:
        client.close()


def _tabs(dep: Deployment, conversations: list[str], *, shared_worker: bool) -> dict:
    """Open TABS tabs, one per conversation; after each, the streams the server counts and whether a fetch answers."""
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS, log_in, per_tab_streams

    (user_id,) = dep.stack.query("SELECT id FROM auth_user WHERE username = ?", ("olivia",))[0]
    steps = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=f"http://{HOST}:{dep.a}")
            context.set_default_timeout(TAB_TIMEOUT_MS)
            if not shared_worker:
                per_tab_streams(context)
            first = context.new_page()
            log_in(first, "olivia")
            for i, conversation in enumerate(conversations):
                page = first if i == 0 else context.new_page()
                loaded = answered = live = False
                try:
                    page.goto(f"/c/{conversation}/")
                    page.wait_for_function("() => window.chatApp !== undefined")
                    loaded = True
                    answered = page.evaluate(FETCH)
                    # Its conversation is live (the browser's stream carries it) before the streams are counted.
                    page.wait_for_function("() => window.chatApp.connectionState === 'open'")
                    live = True
                except Exception:  # a tab that cannot load or connect: the browser's connections are all taken
                    pass
                steps.append(
                    {
                        "tab": i + 1,
                        "loaded": loaded,
                        "fetch_answered": answered,
                        "live": live,
                        "streams": _open_streams(dep, user_id),
                    }
                )
                print(f"    {'shared worker' if shared_worker else 'per tab'}: tab {i + 1} {steps[-1]}", flush=True)
        finally:
            browser.close()
    return {
        "steps": steps,
        "max_streams": max(step["streams"] for step in steps),
        "tabs_loaded": sum(step["loaded"] and step["fetch_answered"] and step["live"] for step in steps),
    }


async def _memory(dep: Deployment, counts: list[int]) -> dict:
    conversation = dep.conversations(1, models(False)[0])[0]
    total = WARMUP_USERS + max(counts)
    made = dep.stack.manage("shell", "-c", MAKE_USERS.format(count=total, conversation=conversation))
    sessions = json.loads(made.stdout.strip().splitlines()[-1])
    port = dep.start_server()
    pid = dep.pid(port)
    workers = []
    readings = {}
    try:
        opened, start = 0, 0
        for n in [WARMUP_USERS + c for c in counts]:
            share = sessions[start:n]
            start = n
            if share:
                streams = [{"port": port, "request": user_stream_request(port, key, conversation)} for key in share]
                group = LoadWorkers(streams, kind="app", send_on_go=False, deadline_seconds=0, hold=True)
                workers.append(group)
                await group.open(timeout=300)
                opened += group.opened
            await asyncio.sleep(SETTLE_SECONDS)
            readings[n - WARMUP_USERS] = {"rss_kib": rss_kib(pid), "opened": opened - WARMUP_USERS}
            print(
                f"    {n - WARMUP_USERS} users: VmRSS {readings[n - WARMUP_USERS]['rss_kib'] // 1024} MiB", flush=True
            )
    finally:
        for group in workers:
            await group.go()
            await group.close()
        dep.stop_server(port)
    return readings


async def run(dep: Deployment, quick: bool) -> dict:
    counts = settings(quick)["users"]
    conversations = dep.conversations(TABS, models(quick)[0])
    shared = await asyncio.to_thread(_tabs, dep, conversations, shared_worker=True)
    per_tab = await asyncio.to_thread(_tabs, dep, dep.conversations(TABS, models(quick)[0]), shared_worker=False)
    memory = await _memory(dep, counts)
    base = memory[0]["rss_kib"]
    per_user = {n: (memory[n]["rss_kib"] - base) / max(1, memory[n]["opened"]) for n in counts if n}
    baseline = _memory_baseline()
    rows = [
        {
            "measure": f"event streams per browser, {TABS} tabs (shared worker; per-tab fallback as baseline)",
            "unit": "streams",
            "app": shared["max_streams"],
            "baseline": per_tab["max_streams"],
            "added": shared["max_streams"] - per_tab["max_streams"],
            "target": f"<= {TARGET_STREAMS}",
            "verdict": "met" if shared["max_streams"] <= TARGET_STREAMS and shared["tabs_loaded"] == TABS else "missed",
            "problems": []
            if shared["tabs_loaded"] == TABS
            else [f"only {shared['tabs_loaded']} of {TABS} tabs loaded"],
            "summary": True,
        }
    ]
    for n, kib in per_user.items():
        rows.append(
            {
                "measure": f"memory per connected user, {n} users on one conversation (multiplexed stream)",
                "unit": "KiB",
                "app": kib,
                "baseline": baseline,
                "baseline_label": "a conversation stream, scenario 5" if baseline is not None else "",
                "added": kib - baseline if baseline is not None else None,
                "added_label": "n/a",
                "target": "none set (measured)",
                "verdict": "",
                "problems": [],
                "summary": n == max(per_user),
            }
        )
        print(f"  presence memory, {n} users: {fmt(kib)} KiB each", flush=True)
    notes = [
        f"shared worker: streams counted after each tab {[s['streams'] for s in shared['steps']]};"
        f" {shared['tabs_loaded']} of {TABS} tabs loaded, answered a fetch and were live.",
        f"per-tab fallback: streams {[s['streams'] for s in per_tab['steps']]};"
        f" {per_tab['tabs_loaded']} of {TABS} tabs loaded, answered a fetch and were live"
        " (HTTP/1.1: six connections a host).",
        "memory: VmRSS "
        + ", ".join(f"{n} users {r['rss_kib'] // 1024} MiB" for n, r in memory.items())
        + f" (with {WARMUP_USERS} warm-up users throughout).",
    ]
    return {
        "title": "Presence and the user's stream",
        "notes": notes,
        "rows": rows,
        "details": {"shared_worker": shared, "per_tab": per_tab, "memory": memory},
        "config": {"tabs": TABS, "users": counts, "settle_seconds": SETTLE_SECONDS},
    }


def _memory_baseline() -> float | None:
    """Scenario 5's KiB per idle conversation viewer, from its saved result (None before it ran)."""
    from .report import RESULTS

    path = RESULTS / "memory.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rows"]
    return next((row["app"] for row in rows if "one conversation" in row["measure"]), None)
