"""Several providers at once (issue 15), over real sockets: two fake providers of different kinds, one over TLS.

Provider ``a`` speaks the OpenAI API over plain HTTP, ``b`` DashScope's native
API over HTTPS with a certificate of a CA only ``LLM_B_CA_FILE`` trusts, and
``c`` accepts connections but never answers. Checks what users see: the
models offered, the replies, ``message.retrying`` while a provider is busy,
the stored provider, and which key reached which provider.
"""

import asyncio
import socket
import time

import pytest
from django.contrib.auth.models import Group
from django.core import checks as django_checks
from django.test import override_settings

from chat import checks, selectors, services
from chat.models import ModelAccess
from chat.providers import client_for, provider_for
from chat.providers.base import ChatMessage, Finish, ProviderError, TextDelta
from chat.providers.catalog import ProviderConfig, configured
from chat.providers.retry import Route, backoff
from tests.fakeprovider import FakeProvider, reply_text
from tests.servers import login
from tests.sseclient import final_for, start_viewer

A_KEY = "sk-a-SECRET-only-for-provider-a-1111"
B_KEY = "sk-b-SECRET-only-for-provider-b-2222"
STEADY = "fake:chunks=4;interval_ms=5"
BUSY_TWICE = "fake:status=429;times=2;retry_after=0.4"
UNAVAILABLE_ONCE = "fake:status=503;times=1"
ALWAYS_BUSY = "fake:status=429;retry_after=1"
LONG_WAIT = "fake:status=503;retry_after=2.5"
RESET_MIDWAY = "fake:chunks=6;interval_ms=5;reset_after=2"
RETRY_SECONDS = 3


@pytest.fixture(scope="module")
def fakes():
    plain, tls = FakeProvider(), FakeProvider(tls=True)
    plain.start()
    tls.start()
    # Accepts connections (the kernel's backlog) and never answers: a provider that hangs.
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    down.listen(64)
    yield plain, tls, down.getsockname()[1]
    plain.stop()
    tls.stop()
    down.close()


@pytest.fixture(scope="module")
def servers(redis_server, fakes):
    from tests.servers import Stack

    plain, tls, down_port = fakes
    stack = Stack(
        redis_url=redis_server.url,
        extra_env={
            "LLM_PROVIDERS": "a,b,c",
            "LLM_A_API": "openai",
            "LLM_A_BASE_URL": plain.base_url,
            "LLM_A_API_KEY": A_KEY,
            "LLM_A_MODELS": f"{STEADY}|Steady A,{UNAVAILABLE_ONCE},{ALWAYS_BUSY},{RESET_MIDWAY}",
            "LLM_B_API": "dashscope",
            "LLM_B_BASE_URL": tls.base_url,
            "LLM_B_API_KEY": B_KEY,
            "LLM_B_MODELS": f"{STEADY}|Steady B,{BUSY_TWICE},{LONG_WAIT}",
            "LLM_B_CA_FILE": tls.ca_file,
            "LLM_C_BASE_URL": f"http://127.0.0.1:{down_port}/v1",
            "LLM_C_MODELS": "hang",
            "LLM_C_READ_TIMEOUT": "1.5",
            "LLM_RETRY_SECONDS": str(RETRY_SECONDS),
            "LLM_API_KEY": "",
        },
    ).setup()
    port = stack.start_server()
    client = login(port, "olivia")
    yield stack, client
    client.close()
    stack.stop()


def new_conversation(client, model):
    response = client.post("/api/conversations/", json={"model": model})
    assert response.status_code == 201, response.text
    return response.json()


def reply_events(client, conversation, content="Hello 你好", timeout=30):
    """Post ``content`` as a streaming post and return the generation's events, through its final one."""
    viewer = start_viewer(
        client,
        f"/api/conversations/{conversation['id']}/messages/",
        method="POST",
        json_body={"content": content},
    )
    events = viewer.wait(timeout)
    assert viewer.status == 200, getattr(viewer, "body", "")
    return events


def auth_headers(fake):
    return [r["headers"].get("authorization") for r in fake.requests()]


@pytest.mark.processes
def test_every_providers_models_are_offered_with_unique_ids(servers):
    _, client = servers
    models = client.get("/api/models/").json()["models"]
    assert models[:3] == [
        {"id": f"a/{STEADY}", "name": "Steady A", "provider": "a", "default": True},
        {"id": f"a/{UNAVAILABLE_ONCE}", "name": UNAVAILABLE_ONCE, "provider": "a", "default": False},
        {"id": f"a/{ALWAYS_BUSY}", "name": ALWAYS_BUSY, "provider": "a", "default": False},
    ]
    assert {m["id"] for m in models} >= {f"b/{STEADY}", f"b/{BUSY_TWICE}", "c/hang"}
    assert len({m["id"] for m in models}) == len(models) == 8
    # The default model is the first one offered.
    assert client.post("/api/conversations/", json={}).json()["model"] == f"a/{STEADY}"


@pytest.mark.processes
def test_each_provider_serves_its_models_and_gets_only_its_own_key(servers, fakes):
    stack, client = servers
    plain, tls, _ = fakes
    plain.reset()
    tls.reset()
    finals = {}
    for name in ("a", "b"):
        events = reply_events(client, new_conversation(client, f"{name}/{STEADY}"))
        assert events[-1].type == "message.completed", events[-1].data
        finals[name] = events[-1].data
        assert finals[name]["content"] == reply_text(STEADY, [{"role": "user", "content": "Hello 你好"}])
        assert finals[name]["model"] == f"{name}/{STEADY}"
    # Each fake got the model's own name (no prefix) on its own API, with its own key, and no other.
    (a_request,) = plain.requests()
    (b_request,) = tls.requests()
    assert a_request["path"] == "/v1/chat/completions" and a_request["model"] == STEADY
    assert b_request["path"] == "/v1/services/aigc/text-generation/generation" and b_request["model"] == STEADY
    assert auth_headers(plain) == [f"Bearer {A_KEY}"] and auth_headers(tls) == [f"Bearer {B_KEY}"]
    assert tls.base_url.startswith("https://") and tls.connections == 1
    # The message and the usage ledger keep which provider served the reply.
    for name, final in finals.items():
        (row,) = stack.query("SELECT provider FROM chat_message WHERE id = ?", (stack.uuid(final["id"]),))
        assert row == (name,)
        (row,) = stack.query(
            "SELECT provider, model FROM chat_usageentry WHERE message_id = ?", (stack.uuid(final["id"]),)
        )
        assert row == (name, f"{name}/{STEADY}")


@pytest.mark.processes
def test_a_busy_provider_is_retried_after_its_retry_after_and_viewers_are_told(servers, fakes):
    _, client = servers
    _, tls, _ = fakes
    tls.reset()
    events = reply_events(client, new_conversation(client, f"b/{BUSY_TWICE}"))
    reply_id = events[1].data["id"]
    retrying = [e.data for e in events if e.type == "message.retrying"]
    assert retrying == [
        {"message_id": reply_id, "attempt": 1, "delay": 0.4},
        {"message_id": reply_id, "attempt": 2, "delay": 0.4},
    ]
    # The notices come before any text, and the reply then completes as if nothing happened.
    types = [e.type for e in events]
    assert types.index("message.retrying") < types.index("message.delta")
    assert events[-1].type == "message.completed"
    assert events[-1].data["content"] == reply_text(BUSY_TWICE)
    requests = tls.requests()
    assert len(requests) == 3 and all(r["headers"]["authorization"] == f"Bearer {B_KEY}" for r in requests)
    # Retry-After was honoured: no retry came sooner than 0.4 s after the busy answer.
    assert all(
        later["started"] - earlier["ended"] >= 0.35 for earlier, later in zip(requests, requests[1:], strict=False)
    )


@pytest.mark.processes
def test_a_503_without_retry_after_is_retried_with_backoff(servers, fakes):
    _, client = servers
    plain, _, _ = fakes
    plain.reset()
    events = reply_events(client, new_conversation(client, f"a/{UNAVAILABLE_ONCE}"))
    assert [e.data["delay"] for e in events if e.type == "message.retrying"] == [backoff(1)]
    assert events[-1].type == "message.completed"
    assert len(plain.requests()) == 2


@pytest.mark.processes
def test_past_the_retry_limit_the_reply_fails_with_the_providers_code(servers, fakes):
    stack, client = servers
    plain, _, _ = fakes
    plain.reset()
    events = reply_events(client, new_conversation(client, f"a/{ALWAYS_BUSY}"))
    # Waits of 1 s while they add up to at most LLM_RETRY_SECONDS (3): three retries, then the 429 stands.
    assert [e.data["attempt"] for e in events if e.type == "message.retrying"] == [1, 2, 3]
    final = events[-1]
    assert final.type == "message.failed" and final.data["error"]["code"] == "provider_rate_limited"
    assert A_KEY not in final.data["error"]["message"]
    assert len(plain.requests()) == 4


@pytest.mark.processes
def test_a_stop_during_a_retry_wait_stops_at_once(servers, fakes):
    _, client = servers
    _, tls, _ = fakes
    tls.reset()
    conversation = new_conversation(client, f"b/{LONG_WAIT}")
    viewer = start_viewer(client, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    reply_id = client.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": "hi"}).json()[
        "assistant_message"
    ]["id"]
    notice = viewer.wait_for(lambda e: e.type == "message.retrying")
    assert notice.data == {"message_id": reply_id, "attempt": 1, "delay": 2.5}
    stopped_at = time.monotonic()
    assert client.post(f"/api/conversations/{conversation['id']}/messages/{reply_id}/stop/").status_code == 202
    final = viewer.wait_for(final_for(reply_id), timeout=10)
    took = time.monotonic() - stopped_at
    viewer.close()
    assert final.type == "message.cancelled"
    # Well before the 2.5 s wait would have ended, and the provider was not asked again.
    assert took < 1.5
    assert len(tls.requests()) == 1


@pytest.mark.processes
def test_nothing_is_retried_after_the_first_token(servers, fakes):
    _, client = servers
    plain, _, _ = fakes
    plain.reset()
    events = reply_events(client, new_conversation(client, f"a/{RESET_MIDWAY}"))
    assert "message.retrying" not in [e.type for e in events]
    assert events[-1].type == "message.failed" and events[-1].data["content"]
    assert len(plain.requests()) == 1


@pytest.mark.processes
def test_a_provider_that_is_down_does_not_slow_the_others(servers, fakes):
    stack, client = servers
    hanging = new_conversation(client, "c/hang")
    viewer = start_viewer(client, f"/api/conversations/{hanging['id']}/events/", until=lambda e: False)
    hanging_id = client.post(f"/api/conversations/{hanging['id']}/messages/", json={"content": "hi"}).json()[
        "assistant_message"
    ]["id"]
    # While c hangs, a answers at once.
    started = time.monotonic()
    events = reply_events(client, new_conversation(client, f"a/{STEADY}"))
    assert events[-1].type == "message.completed"
    assert time.monotonic() - started < 1.5
    assert client.get(f"/api/conversations/{hanging['id']}/").json()["messages"][-1]["status"] == "streaming"
    # c fails on its own read timeout (LLM_C_READ_TIMEOUT=1.5), not the others' 60 s.
    final = viewer.wait_for(final_for(hanging_id), timeout=10)
    viewer.close()
    assert final.type == "message.failed" and final.data["error"]["code"] == "provider_timeout"
    assert "1.5" in final.data["error"]["message"]


# --- the retry rule, in process -------------------------------------------------------------------------------


class Scripted:
    """A provider answering each call with the next script: events to yield, then an error to raise (or None)."""

    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.calls = 0

    async def stream(self, *, model, messages):
        events, error = self.scripts[self.calls]
        self.calls += 1
        for event in events:
            yield event
        if error is not None:
            raise error


def busy(retry_after=None):
    return ProviderError("provider_rate_limited", "busy", retry_after=retry_after, retryable=True)


async def collect(route):
    notices, events = [], []

    async def on_retry(attempt, delay):
        notices.append((attempt, delay))

    async for event in route.stream(messages=[ChatMessage("user", "hi")], on_retry=on_retry):
        events.append(event)
    return notices, events


@pytest.mark.asyncio
async def test_a_busy_answer_after_the_first_event_is_not_retried():
    provider = Scripted(([TextDelta("partial")], busy(0)), ([TextDelta("never")], None))
    with pytest.raises(ProviderError) as raised:
        await collect(Route(provider, upstream="m", retry_seconds=20))
    assert raised.value.code == "provider_rate_limited" and provider.calls == 1


@pytest.mark.asyncio
async def test_a_wait_past_the_limit_is_not_started():
    provider = Scripted(([], busy(30)), ([TextDelta("never")], None))
    started = time.monotonic()
    with pytest.raises(ProviderError):
        await collect(Route(provider, upstream="m", retry_seconds=20))
    assert provider.calls == 1 and time.monotonic() - started < 1


@pytest.mark.asyncio
async def test_errors_that_are_not_busy_are_not_retried():
    error = ProviderError("provider_auth_failed", "no")
    provider = Scripted(([], error), ([TextDelta("never")], None))
    with pytest.raises(ProviderError):
        await collect(Route(provider, upstream="m", retry_seconds=20))
    assert provider.calls == 1


@pytest.mark.asyncio
async def test_retry_after_zero_still_waits_a_moment():
    provider = Scripted(([], busy(0)), ([TextDelta("ok"), Finish("stop")], None))
    notices, events = await collect(Route(provider, upstream="m", retry_seconds=20))
    assert notices == [(1, 0.25)] and events == [TextDelta("ok"), Finish("stop")]


# --- warm connections -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sequential_replies_reuse_one_tls_connection(fakes):
    _, tls, _ = fakes
    tls.reset()
    config = configured_provider("b", tls.base_url, "dashscope", ca_file=tls.ca_file)
    provider = provider_for(config)
    for _ in range(32):
        async for _event in provider.stream(model="fake:chunks=2", messages=[ChatMessage("user", "hi")]):
            pass
        await asyncio.sleep(0.05)  # 20 replies a second
    assert len(tls.requests()) == 32
    assert tls.connections <= 2
    await client_for(config).aclose()


def configured_provider(name, base_url, api, *, ca_file=""):
    return ProviderConfig(name, api, base_url, "k", (), connect_timeout=5.0, read_timeout=10.0, ca_file=ca_file)


# --- configuration, in process ----------------------------------------------------------------------------------


def provider_settings(name, **values):
    return {
        "name": name,
        "api": "openai",
        "base_url": "https://api.example.com/v1",
        "api_key": "",
        "models": ["m1"],
        "connect_timeout": None,
        "read_timeout": None,
        "max_tokens": None,
        "ca_file": "",
        **values,
    }


TWO = [
    provider_settings("openai", models=["gpt-4o|GPT-4o", "gpt-4o-mini"], api_key="sk-openai-1", read_timeout=90.0),
    provider_settings("ollama", base_url="http://127.0.0.1:11434/v1", models=["llama3.2", "qwen3:8b"]),
]


def test_the_single_provider_variables_keep_todays_ids(settings):
    settings.LLM_PROVIDERS = []
    settings.LLM_BASE_URL = "https://api.deepseek.com/v1"
    settings.LLM_MODELS = ["deepseek-chat", "deepseek-reasoner|DeepSeek R1"]
    catalog = configured()
    assert list(catalog.models) == ["deepseek-chat", "deepseek-reasoner"]
    assert catalog.model("deepseek-reasoner").name == "DeepSeek R1"
    assert catalog.provider_of("deepseek-chat").name == "api.deepseek.com"
    settings.LLM_BASE_URL = ""
    assert list(configured().models) == ["demo"]


def test_several_providers_prefix_their_model_ids(settings):
    settings.LLM_PROVIDERS = TWO
    settings.LLM_READ_TIMEOUT = 60.0
    catalog = configured()
    assert list(catalog.models) == ["openai/gpt-4o", "openai/gpt-4o-mini", "ollama/llama3.2", "ollama/qwen3:8b"]
    assert catalog.model("ollama/qwen3:8b").upstream == "qwen3:8b"
    assert catalog.model("openai/gpt-4o").name == "GPT-4o"
    # Each provider's own timeouts; unset ones are LLM_READ_TIMEOUT's.
    assert catalog.providers["openai"].read_timeout == 90.0 and catalog.providers["ollama"].read_timeout == 60.0
    assert "sk-openai-1" not in repr(catalog.providers["openai"])


def test_start_up_checks_name_each_providers_mistakes_without_its_key(settings, tmp_path):
    key = "sk-very-secret-key-0123456789"
    with override_settings(
        LLM_PROVIDERS=[
            provider_settings("Bad Name"),
            provider_settings("ollama", api="openia"),
            provider_settings("qwen", base_url=f"dashscope.aliyuncs.com/{key}", api_key=key),
            provider_settings("empty", models=[]),
            provider_settings("ollama"),
            provider_settings("private", ca_file=str(tmp_path / "missing.pem")),
        ],
        LLM_BASE_URL="https://api.openai.com/v1",
    ):
        found = checks.llm_providers()
    messages = {(m.id, m.msg) for m in found}
    assert ("chat.E004", "LLM_PROVIDERS: a name is not a valid provider name.") in messages
    assert ("chat.E004", "LLM_PROVIDERS: 'ollama' is named twice.") in messages
    assert ("chat.E001", "LLM_OLLAMA_API is 'openia', which is not an API this app speaks.") in messages
    assert any(i == "chat.E002" and m.startswith("LLM_QWEN_BASE_URL") and "has no scheme" in m for i, m in messages)
    assert ("chat.E005", "LLM_EMPTY_MODELS names no model.") in messages
    assert any(i == "chat.E006" and m.startswith("LLM_PRIVATE_CA_FILE") for i, m in messages)
    assert any(isinstance(m, django_checks.Warning) and m.id == "chat.W001" for m in found)
    assert all(key not in m.msg + (m.hint or "") for m in found)


def test_a_valid_configuration_passes(settings):
    with override_settings(LLM_PROVIDERS=TWO, LLM_BASE_URL=""):
        assert checks.llm_providers() == []


# --- who may use which model, through the API ---------------------------------------------------------------------


@pytest.fixture
def restricted(settings, owner, member):
    """``openai/gpt-4o`` for the research group (the owner), ``ollama/qwen3:8b`` for nobody."""
    settings.LLM_PROVIDERS = TWO
    research = Group.objects.create(name="research")
    owner.groups.add(research)
    ModelAccess.objects.create(model="openai/gpt-4o").groups.add(research)
    ModelAccess.objects.create(model="ollama/qwen3:8b")
    return research


def error_of(response):
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


@pytest.mark.django_db
def test_a_model_is_offered_only_to_its_groups(api, owner, member, restricted, django_user_model):
    ids = [m["id"] for m in api(owner).get("/api/models/").json()["models"]]
    assert ids == ["openai/gpt-4o", "openai/gpt-4o-mini", "ollama/llama3.2"]
    offered = api(member).get("/api/models/").json()["models"]
    assert [m["id"] for m in offered] == ["openai/gpt-4o-mini", "ollama/llama3.2"]
    # The member's default is the first model they may use.
    assert offered[0]["default"] is True
    assert api(member).post("/api/conversations/", {}).json()["model"] == "openai/gpt-4o-mini"
    root = django_user_model.objects.create_superuser("root", password="pw-123456789")
    assert len(api(root).get("/api/models/").json()["models"]) == 4


@pytest.mark.django_db
def test_posting_or_regenerating_with_a_model_not_allowed_is_403(api, owner, member, restricted):
    response = api(member).post("/api/conversations/", {"model": "openai/gpt-4o"})
    assert response.status_code == 403 and error_of(response)["code"] == "model_not_allowed"
    conversation = services.conversation_create(owner=owner, title="Shared", model="openai/gpt-4o")
    conversation.members.add(member)
    # The conversation's model is the owner's to use, not the member's.
    response = api(member).post(f"/api/conversations/{conversation.id}/messages/", {"content": "hi"})
    assert response.status_code == 403 and error_of(response)["code"] == "model_not_allowed"
    response = api(owner).post(
        f"/api/conversations/{conversation.id}/messages/", {"content": "hi", "model": "ollama/qwen3:8b"}
    )
    assert response.status_code == 403 and error_of(response)["code"] == "model_not_allowed"
    _, reply = services.message_submit(conversation=conversation, author=owner, content="q", model="openai/gpt-4o")
    services.message_finish(message_id=reply.id, status="complete", content="a", reasoning="", seq=1)
    regenerate = f"/api/conversations/{conversation.id}/messages/{reply.id}/regenerate/"
    response = api(member).post(regenerate, {"model": "openai/gpt-4o"})
    assert response.status_code == 403 and error_of(response)["code"] == "model_not_allowed"
    response = api(member).patch(f"/api/conversations/{conversation.id}/", {"model": "ollama/qwen3:8b"})
    assert response.status_code == 403
    response = api(member).post("/api/conversations/", {"model": "nobody/knows"})
    assert response.status_code == 400 and error_of(response)["code"] == "unknown_model"
    assert reply.provider == "openai"


@pytest.mark.django_db
def test_with_no_model_allowed_nothing_is_offered(api, member, settings):
    settings.LLM_PROVIDERS = TWO
    for model in configured().models:
        ModelAccess.objects.create(model=model)
    assert api(member).get("/api/models/").json() == {"models": []}
    response = api(member).post("/api/conversations/", {})
    assert response.status_code == 403 and error_of(response)["code"] == "model_not_allowed"


@pytest.mark.django_db
def test_the_admin_restricts_a_model_to_groups(client, django_user_model, owner, member, settings):
    settings.LLM_PROVIDERS = TWO
    research = Group.objects.create(name="research")
    root = django_user_model.objects.create_superuser("root", password="pw-123456789")
    client.force_login(root)
    page = client.get("/admin/chat/modelaccess/add/")
    assert page.status_code == 200
    assert 'value="ollama/qwen3:8b"' in page.content.decode() and "GPT-4o (openai/gpt-4o)" in page.content.decode()
    response = client.post("/admin/chat/modelaccess/add/", {"model": "openai/gpt-4o", "groups": [research.pk]})
    assert response.status_code == 302
    owner.groups.add(research)
    assert [m.id for m in selectors.model_list_for_user(user=member)] == [
        "openai/gpt-4o-mini",
        "ollama/llama3.2",
        "ollama/qwen3:8b",
    ]
    listing = client.get("/admin/chat/modelaccess/").content.decode()
    assert "research" in listing and "openai" in listing
