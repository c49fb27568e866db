"""What a provider sends cannot lose a reply or leak a secret: one daphne process, the fake provider, real sockets.

Each test posts a message with ``Accept: text/event-stream`` and checks what
users see (the events of that stream, the REST answer), what is stored, and
what the operator's log says.
"""

import json

import httpx
import pytest

from tests.fakeprovider import reply_text
from tests.servers import Stack, login
from tests.sseclient import start_viewer

pytestmark = pytest.mark.processes

# Random-looking, so that no 4 characters of it turn up anywhere by chance.
API_KEY = "sk-Zq8RvW3mXk5TpL9nB2cYh7Jd"
URL_PASSWORD, QUERY_KEY = "gwPass9Secret", "QueryKey7Secret"
UNSTORABLE = "fake:chunks=6;surrogate_at=1;nul_at=4"
BAD_USAGE = "fake:chunks=4;usage_prompt=-5;usage_total=abc"
HUGE_USAGE = "fake:chunks=4;usage_completion=99999999999999999999;usage_total=true"
# error_pad puts the old 300-character cut 19 characters into the key the fake quotes back.
CUT_IN_KEY_HTTP = "fake:status=401;leak=1;error_pad=248"
CUT_IN_KEY_STREAM = "fake:chunks=3;error_after=2;leak=1;error_pad=238"
GATEWAY_ECHO = "fake:status=404;leak=1;leak_url=1"
MODELS = ["fake", UNSTORABLE, BAD_USAGE, HUGE_USAGE, CUT_IN_KEY_HTTP, CUT_IN_KEY_STREAM, GATEWAY_ECHO]


def start(base_url, **env):
    stack = Stack(
        llm_base_url=base_url,
        llm_models=",".join(MODELS),
        extra_env={"LLM_API_KEY": API_KEY, **env},
        database="sqlite",
    ).setup(usernames=("olivia",))
    return stack, login(stack.start_server(), "olivia")


@pytest.fixture(scope="module")
def plain(fake_provider):
    stack, client = start(fake_provider.base_url, LLM_MAX_TOKENS="77")
    yield stack, client
    client.close()
    stack.stop()


def reply(client, model, request_id="-"):
    """Post to a new conversation, streaming the reply: (final event, every event's raw data, REST message)."""
    conversation = client.post("/api/conversations/", json={"model": model}).json()
    viewer = start_viewer(
        client,
        f"/api/conversations/{conversation['id']}/messages/",
        method="POST",
        json_body={"content": "Hello"},
        headers={"X-Request-ID": request_id},
    )
    events = viewer.wait()
    assert viewer.status == 200 and events[-1].type.startswith("message."), events
    final = events[-1].data
    rest = client.get(f"/api/conversations/{conversation['id']}/")
    (message,) = [m for m in rest.json()["messages"] if m["id"] == final["id"]]
    return final, "".join(e.raw for e in events) + rest.text, message


def stored(stack, message_id):
    (row,) = stack.query(
        "SELECT status, content, prompt_tokens, completion_tokens, total_tokens, error_code, error_message"
        " FROM chat_message WHERE id = ?",
        (stack.uuid(message_id),),
    )
    return dict(zip("status content prompt completion total code error".split(), row, strict=True))


def key_runs(text, key=API_KEY, n=4):
    return [key[i : i + n] for i in range(len(key) - n + 1) if key[i : i + n] in text]


def test_a_reply_with_lone_surrogates_and_nul_is_stored_complete(plain):
    stack, client = plain
    final, _, message = reply(client, UNSTORABLE)
    sent = reply_text(UNSTORABLE)
    assert "\ud800" in sent and "\x00" in sent
    expected = sent.replace("\ud800", "\ufffd").replace("\x00", "\ufffd")
    assert final["status"] == "complete" and final["content"] == expected
    assert message["content"] == expected
    row = stored(stack, final["id"])
    assert (row["status"], row["content"], row["code"]) == ("complete", expected, None)


@pytest.mark.parametrize(
    "model, usage",
    [(BAD_USAGE, (None, 4, None)), (HUGE_USAGE, (11, None, None))],
    ids=["negative-and-string", "huge-and-bool"],
)
def test_unusable_usage_is_stored_null_and_logged(plain, model, usage):
    stack, client = plain
    final, _, message = reply(client, model, request_id=f"usage-{usage[0]}")
    assert final["status"] == "complete" and final["content"] == reply_text(model)
    row = stored(stack, final["id"])
    assert (row["status"], row["content"]) == ("complete", reply_text(model))
    assert (row["prompt"], row["completion"], row["total"]) == usage
    warnings = [line for line in stack.log_text().splitlines() if "unusable token counts" in line]
    assert [line for line in warnings if f"[usage-{usage[0]}]" in line]


@pytest.mark.parametrize("model", [CUT_IN_KEY_HTTP, CUT_IN_KEY_STREAM], ids=["http-status", "mid-stream"])
def test_a_cut_never_falls_inside_the_key(plain, fake_provider, model):
    stack, client = plain
    final, everything, message = reply(client, model)
    # The fake really quoted the whole key back.
    assert any(API_KEY in json.dumps(r) for r in fake_provider.requests())
    assert final["status"] == "failed" and final["error"]["code"] in ("provider_auth_failed", "provider_error")
    row = stored(stack, final["id"])
    assert key_runs(everything) == [] and key_runs(row["error"]) == [] and key_runs(json.dumps(message)) == []
    assert key_runs(stack.log_text()) == []


def test_llm_max_tokens_is_sent_to_the_provider(plain, fake_provider):
    stack, client = plain
    final, _, _ = reply(client, "fake")
    assert final["status"] == "complete"
    origin = fake_provider.base_url.removesuffix("/v1")
    (request,) = [r for r in httpx.get(f"{origin}/_log").json()["requests"] if r["model"] == "fake"][-1:]
    assert request["body"]["max_tokens"] == 77


@pytest.mark.parametrize("reachable", [True, False], ids=["fake", "closed-port"])
def test_credentials_in_llm_base_url_reach_no_user(fake_provider, reachable):
    from tests.servers import free_port

    port = fake_provider.port if reachable else free_port()
    stack, client = start(f"http://gwuser:{URL_PASSWORD}@127.0.0.1:{port}/v1?api-key={QUERY_KEY}")
    try:
        final, everything, message = reply(client, GATEWAY_ECHO, request_id="gateway-test-1")
        row = stored(stack, final["id"])
        log = stack.log_text()
    finally:
        client.close()
        stack.stop()
    assert final["status"] == "failed"
    assert final["error"]["code"] == ("provider_bad_request" if reachable else "provider_unreachable")
    shown = everything + json.dumps(message) + row["error"]
    for secret in (URL_PASSWORD, QUERY_KEY, "gwuser", "127.0.0.1"):
        assert secret not in shown
    if reachable:
        # The gateway echoed the path with the key in its query, and the Basic credentials httpx sent.
        assert any(QUERY_KEY in json.dumps(r) for r in fake_provider.requests())
        assert "fake HTTP 404" in row["error"]
    (line,) = [line for line in log.splitlines() if "provider request to" in line]
    assert "[gateway-test-1]" in line and f"http://127.0.0.1:{port}/v1/chat/completions " in line
    assert URL_PASSWORD not in log and QUERY_KEY not in log and "gwuser" not in line
