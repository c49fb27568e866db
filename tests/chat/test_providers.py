"""The providers against the fake provider over a real socket: recorded streams, awkward framing, every failure."""

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from chat.providers import build_provider, shared_client
from chat.providers.base import ChatMessage, Finish, ProviderError, ReasoningDelta, TextDelta, Usage, storable
from chat.providers.dashscope import DashScopeProvider
from chat.providers.demo import DemoProvider
from chat.providers.openai import OpenAIProvider
from chat.providers.redact import public_error
from tests.fakeprovider import reply_text

KEY = "sk-test-7Hq2DistinctiveFakeKey-9xZ"
DATA = Path(__file__).resolve().parent.parent / "data"
HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hello there, 你好 👋")]

QWEN_SEED = [
    *(TextDelta(t) for t in ["我是", "来自", "阿里", "云的超大规模语言", "模型，我叫通义千问", "。"]),
    Usage(22, 17, 39),
    Finish("stop"),
]
DASHSCOPE_SEED = [
    *(TextDelta(t) for t in ["最近", "的公园是公园，它", "距离你的家大约", "1.5公里。", "你可以使用Google"]),
    *(TextDelta(t) for t in ["地图或者百度地图", "来查看具体的路线", "和距离。"]),
    Usage(85, 51, 136),
    Finish("stop"),
]


@pytest_asyncio.fixture
async def client():
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_connections=1000)) as client:
        yield client


@pytest.fixture
def openai(fake_provider, client):
    return OpenAIProvider(base_url=fake_provider.base_url, api_key=KEY, client=client)


@pytest.fixture
def dashscope(fake_provider, client):
    return DashScopeProvider(base_url=fake_provider.base_url, api_key=KEY, client=client)


async def collect(provider, model, messages=HELLO):
    return [event async for event in provider.stream(model=model, messages=messages)]


async def failure(provider, model):
    """(events before the failure, the ProviderError)."""
    events = []
    with pytest.raises(ProviderError) as raised:
        async for event in provider.stream(model=model, messages=HELLO):
            events.append(event)
    assert KEY not in raised.value.message and KEY not in str(raised.value)
    return events, raised.value


async def every_cut(provider, name, expected):
    """Serve the recording cut at every offset: four cuts a quarter of the stream apart per request."""
    size = (DATA / name).stat().st_size
    stride = size // 4 + 1
    for k in range(stride):
        cuts = "/".join(str(offset) for offset in range(k, size + 1, stride))
        assert await collect(provider, f"fake:replay={name},cut={cuts}") == expected, cuts


def text_of(events):
    return "".join(event.text for event in events if isinstance(event, TextDelta))


# --- recorded streams -----------------------------------------------------------


@pytest.mark.asyncio
async def test_openai_seed_transcript_split_at_every_offset(openai):
    await every_cut(openai, "qwen_compatible.sse", QWEN_SEED)


@pytest.mark.asyncio
async def test_dashscope_seed_transcript_split_at_every_offset(dashscope):
    await every_cut(dashscope, "dashscope_native.sse", DASHSCOPE_SEED)


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["split=1", "split=1,eol=cr", "split=16,eol=crlf,framing=close,write_ms=1"])
async def test_seed_transcripts_in_one_byte_writes(openai, dashscope, framing):
    assert await collect(openai, f"fake:replay=qwen_compatible.sse,{framing}") == QWEN_SEED
    assert await collect(dashscope, f"fake:replay=dashscope_native.sse,{framing}") == DASHSCOPE_SEED


RECORDED_OPENAI = {
    "deepseek_reasoning.sse": [
        ReasoningDelta("The user"),
        ReasoningDelta(" greets me in Chinese."),
        TextDelta("你好"),
        TextDelta("！😊"),
        Usage(9, 15, 24),
        Finish("stop"),
    ],
    "ollama_reasoning.sse": [
        ReasoningDelta("Okay,"),
        ReasoningDelta(" simple sum."),
        TextDelta("2"),
        TextDelta("."),
        Usage(14, 21, 35),
        Finish("stop"),
    ],
    "openrouter_crlf.sse": [
        TextDelta("Bonjour"),
        TextDelta(" à toi"),
        TextDelta(" 👋🏽"),
        Usage(8, 4, 12),
        Finish("length"),
    ],
    "bom_cr.sse": [TextDelta("Ünïcödé "), TextDelta("line1\nline2"), Usage(3, 2, 5), Finish("stop")],
}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", RECORDED_OPENAI)
@pytest.mark.parametrize("framing", ["", ",split=3", ",split=5,eol=crlf", ",split=7,eol=cr,framing=close"])
async def test_openai_recorded_streams(openai, name, framing):
    assert await collect(openai, f"fake:replay={name}{framing}") == RECORDED_OPENAI[name]


@pytest.mark.asyncio
async def test_openai_error_object_mid_stream(openai):
    events, error = await failure(openai, "fake:replay=error_midstream.sse,split=4")
    assert events == [TextDelta("Partial"), TextDelta(" answer")]
    assert error.code == "provider_error"
    assert "The server had an error while processing your request" in error.message


@pytest.mark.asyncio
async def test_dashscope_message_format_with_thinking(dashscope):
    assert await collect(dashscope, "fake:replay=dashscope_message.sse,split=3") == [
        ReasoningDelta("嗯，用户问"),
        ReasoningDelta("1+1。"),
        TextDelta("1+1"),
        TextDelta(" = **2** ✅"),
        Usage(12, 14, 26),
        Finish("stop"),
    ]


@pytest.mark.asyncio
async def test_dashscope_error_event(dashscope):
    events, error = await failure(dashscope, "fake:replay=dashscope_error.sse")
    assert events == [] and error.code == "provider_error"
    assert "InvalidParameter: Range of input length should be [1, 30720]" in error.message


@pytest.mark.asyncio
async def test_dashscope_cumulative_text_that_rewrites_itself_is_a_bad_response(dashscope):
    events, error = await failure(dashscope, "fake:replay=dashscope_rewrite.sse")
    assert events == [TextDelta("最近的"), TextDelta("公园")]
    assert error.code == "provider_bad_response"


# --- generated streams ------------------------------------------------------------

AWKWARD = [
    "fake:chunks=30",
    "fake:chunks=30,split=1",
    "fake:chunks=30,split=5,eol=crlf,comments=1,bom=1",
    "fake:chunks=30,split=3,eol=cr,bom=1",
    "fake:chunks=30,framing=close,split=40",
    "fake:chunks=3,framing=close,split=4,write_ms=0.2",
    "fake:text=Kommas%2C Ümlaute%2C 你好 und 🎉🎉,chunks=7,split=2",
]


@pytest.mark.asyncio
@pytest.mark.parametrize("model", AWKWARD)
async def test_openai_streams_whatever_the_framing(openai, fake_provider, model):
    events = await collect(openai, model)
    completion = int(model.partition("chunks=")[2].partition(",")[0])
    assert text_of(events) == reply_text(model)
    assert events[-2:] == [Usage(11, completion, 11 + completion), Finish("stop")]
    assert all(event.text for event in events if isinstance(event, TextDelta))


@pytest.mark.asyncio
@pytest.mark.parametrize("model", AWKWARD)
@pytest.mark.parametrize("incremental", [False, True])
async def test_dashscope_streams_whatever_the_framing(fake_provider, client, model, incremental):
    provider = DashScopeProvider(
        base_url=fake_provider.base_url, api_key=KEY, client=client, incremental_output=incremental
    )
    events = await collect(provider, model)
    assert text_of(events) == reply_text(model)
    assert isinstance(events[-2], Usage) and events[-1] == Finish("stop")
    assert fake_provider.requests()[-1]["body"]["parameters"] == {"incremental_output": incremental}


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_openai_reasoning(openai, field):
    events = await collect(openai, f"fake:reasoning=2,reasoning_field={field},chunks=1,finish=length")
    assert events == [
        ReasoningDelta("think0 "),
        ReasoningDelta("think1 "),
        TextDelta("w0·你好👋 "),
        Usage(11, 1, 12),
        Finish("length"),
    ]


@pytest.mark.asyncio
async def test_dashscope_reasoning(dashscope):
    events = await collect(dashscope, "fake:reasoning=2,chunks=1")
    assert events == [
        ReasoningDelta("think0 "),
        ReasoningDelta("think1 "),
        TextDelta("w0·你好👋 "),
        Usage(11, 3, 14),
        Finish("stop"),
    ]


@pytest.mark.asyncio
async def test_parameters_separated_by_semicolons_fit_in_llm_models(openai):
    model = "fake:chunks=3;text=a%3Bb%2Cc 你好;interval_ms=1,split=2"
    assert text_of(await collect(openai, model)) == reply_text(model) == "a;b,c 你好"


@pytest.mark.asyncio
async def test_echo(openai, dashscope):
    expected = "Hello there, 你好 👋"
    assert text_of(await collect(openai, "fake-echo")) == expected
    assert text_of(await collect(dashscope, "fake-echo")) == expected


@pytest.mark.asyncio
async def test_openai_request(openai, fake_provider):
    await collect(openai, "fake:chunks=1")
    request = fake_provider.requests()[-1]
    assert request["method"] == "POST" and request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["headers"]["accept"] == "text/event-stream"
    assert request["body"] == {
        "model": "fake:chunks=1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, 你好 👋"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.asyncio
async def test_openai_without_a_key_sends_no_authorization(fake_provider, client):
    provider = OpenAIProvider(base_url=fake_provider.base_url + "/", api_key="", client=client)
    assert text_of(await collect(provider, "fake:chunks=2")) == reply_text("fake:chunks=2")
    assert "authorization" not in fake_provider.requests()[-1]["headers"]


@pytest.mark.asyncio
async def test_dashscope_request(dashscope, fake_provider):
    await collect(dashscope, "fake:chunks=1")
    request = fake_provider.requests()[-1]
    assert request["path"] == "/v1/services/aigc/text-generation/generation"
    headers = request["headers"]
    assert (headers["authorization"], headers["x-dashscope-sse"], headers["accept"]) == (
        f"Bearer {KEY}",
        "enable",
        "text/event-stream",
    )
    assert request["body"] == {
        "model": "fake:chunks=1",
        "input": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there, 你好 👋"},
            ]
        },
        "parameters": {"incremental_output": False},
    }


@pytest.mark.asyncio
async def test_stamps(openai):
    before = time.time_ns()
    events = await collect(openai, "fake:stamp=1,chunks=3")
    stamps = [int(event.text.strip("[]")) for event in events if isinstance(event, TextDelta)]
    assert len(stamps) == 3 and before <= stamps[0] <= stamps[1] <= stamps[2] <= time.time_ns()


@pytest.mark.asyncio
async def test_hundreds_of_concurrent_streams_through_the_shared_client(fake_provider):
    model = "fake:chunks=5,interval_ms=20,split=64"
    client = shared_client(connect_timeout=5.0, read_timeout=10.0)
    provider = OpenAIProvider(base_url=fake_provider.base_url, api_key=KEY, client=client)
    try:
        results = await asyncio.gather(*(collect(provider, model) for _ in range(300)))
    finally:
        await client.aclose()
    assert {text_of(events) for events in results} == {reply_text(model)}
    assert {len(events) for events in results} == {7}


# --- failures ---------------------------------------------------------------------

FAILURES = [
    ("fake:status=401,leak=1", "provider_auth_failed", 0),
    ("fake:status=403,leak=1", "provider_auth_failed", 0),
    ("fake:status=429,leak=1", "provider_rate_limited", 0),
    ("fake:status=400,leak=1", "provider_bad_request", 0),
    ("not-a-fake-model", "provider_bad_request", 0),
    ("fake:status=500,leak=1", "provider_unavailable", 0),
    ("fake:status=503", "provider_unavailable", 0),
    ("fake:content_type=application/json", "provider_bad_response", 0),
    ("fake:garbage_after=2", "provider_bad_response", 2),
    ("fake:error_after=2,leak=1", "provider_error", 2),
    ("fake:reset_after=2", "provider_connection_lost", 2),
    ("fake:drop_after=2", "provider_connection_lost", 2),
    ("fake:done=0", "provider_incomplete", 5),
    ("fake:drop_after=2,framing=close", "provider_incomplete", 2),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
@pytest.mark.parametrize("model, code, deltas", FAILURES, ids=[f[0] for f in FAILURES])
async def test_failures(fake_provider, client, api, model, code, deltas):
    provider = build_provider(api=api, base_url=fake_provider.base_url, api_key=KEY, client=client)
    events, error = await failure(provider, model)
    assert error.code == code
    assert events == [TextDelta(f"w{i}·你好👋 ") for i in range(deltas)]
    if "leak" in model:
        assert "[redacted]" in error.message  # the fake quoted the key back; it was scrubbed
    assert error.message.endswith((".", "…")) and len(error.message) < 500


@pytest.mark.asyncio
async def test_provider_error_messages_carry_the_providers_words(openai, dashscope):
    _, error = await failure(openai, "not-a-fake-model")
    assert "unknown model 'not-a-fake-model'" in error.message and "HTTP 400" in error.message
    _, error = await failure(dashscope, "fake:status=401")
    assert "InvalidApiKey: fake HTTP 401" in error.message and "LLM_API_KEY" in error.message


@pytest.mark.asyncio
async def test_rate_limit_retry_after(openai, dashscope):
    _, error = await failure(openai, "fake:status=429,retry_after=7")
    assert error.retry_after == 7.0 and "Retry after 7 s" in error.message
    _, error = await failure(dashscope, "fake:status=429,retry_date=120")
    assert 115 <= error.retry_after <= 120
    _, error = await failure(openai, "fake:status=429")
    assert error.retry_after is None


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
async def test_stall_times_out_and_closes_the_connection(fake_provider, api):
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.5)) as client:
        provider = build_provider(api=api, base_url=fake_provider.base_url, api_key=KEY, client=client)
        started = time.monotonic()
        events, error = await failure(provider, "fake:stall_after=1")
    assert 0.5 <= time.monotonic() - started < 2
    assert error.code == "provider_timeout" and "0.5 s" in error.message
    assert events == [TextDelta("w0·你好👋 ")]
    assert (await fake_provider.wait_ended())["outcome"] == "client_closed"


@pytest.mark.asyncio
async def test_slow_first_token_within_the_read_timeout(openai):
    assert text_of(await collect(openai, "fake:chunks=2,first_ms=300")) == reply_text("fake:chunks=2")


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
async def test_unreachable(client, api, caplog):
    port = closed_port()
    provider = build_provider(api=api, base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, client=client)
    _, error = await failure(provider, "fake")
    assert error.code == "provider_unreachable" and "LLM_BASE_URL" in error.message
    # Where it tried is for the operator's log, not for every member of the conversation.
    assert "127.0.0.1" not in error.message
    assert f"http://127.0.0.1:{port}/v1/" in caplog.text and "provider_unreachable" in caplog.text


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.asyncio
async def test_invalid_base_url(client):
    provider = OpenAIProvider(base_url="localhost:11434/v1", api_key=KEY, client=client)
    _, error = await failure(provider, "fake")
    assert error.code == "provider_unreachable" and "LLM_BASE_URL" in error.message


# --- closing and cancelling ----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
async def test_aclose_mid_stream_closes_the_upstream_connection(fake_provider, client, api):
    provider = build_provider(api=api, base_url=fake_provider.base_url, api_key=KEY, client=client)
    stream = provider.stream(model="fake:chunks=100,interval_ms=20", messages=HELLO)
    assert [await anext(stream), await anext(stream)] == [TextDelta("w0·你好👋 "), TextDelta("w1·你好👋 ")]
    closed_at = time.time()
    await stream.aclose()
    record = await fake_provider.wait_ended()
    assert record["outcome"] == "client_closed" and record["deltas_sent"] < 10
    assert record["ended"] - closed_at < 0.5


@pytest.mark.asyncio
async def test_cancelling_the_task_closes_the_upstream_connection(openai, fake_provider):
    started = asyncio.Event()

    async def consume():
        async for _ in openai.stream(model="fake:chunks=100,interval_ms=20", messages=HELLO):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await fake_provider.wait_ended()
    assert record["outcome"] == "client_closed" and record["deltas_sent"] < 10


# --- demo, building, the shared client, the fake as a process ----------------------------


@pytest.mark.asyncio
async def test_demo_provider():
    events = await collect(DemoProvider(delay=0), "demo", [ChatMessage("user", "How do I set this up?")])
    reply = text_of(events)
    assert reply.startswith("## ") and "I received your message (6 words)" in reply
    for markdown in (
        "\n- `LLM_BASE_URL`",
        "| Provider |",
        "```bash\n",
        "http://127.0.0.1:11434/v1",
        "LLM_API=dashscope",
    ):
        assert markdown in reply
    assert len(events) > 50 and all(isinstance(event, TextDelta) for event in events[:-2])
    words = len(reply.split())
    assert events[-2:] == [Usage(6, words, 6 + words), Finish("stop")]


@pytest.mark.asyncio
async def test_demo_provider_streams_with_a_delay():
    started = time.monotonic()
    stream = DemoProvider(delay=0.02).stream(model="demo", messages=HELLO)
    first, second = await anext(stream), await anext(stream)
    assert first.text and second.text and time.monotonic() - started >= 0.02
    await stream.aclose()


@pytest.mark.asyncio
async def test_build_provider(client):
    assert isinstance(build_provider(api="openai", base_url="http://x/v1", api_key="", client=client), OpenAIProvider)
    assert isinstance(
        build_provider(api="dashscope", base_url="http://x", api_key="k", client=client), DashScopeProvider
    )
    assert isinstance(build_provider(api="demo", base_url="", api_key="", client=client), DemoProvider)
    with pytest.raises(ValueError, match="anthropic"):
        build_provider(api="anthropic", base_url="", api_key="", client=client)


@pytest.mark.asyncio
async def test_shared_client_is_one_per_loop():
    client = shared_client(connect_timeout=3.0, read_timeout=90.0)
    assert shared_client(connect_timeout=3.0, read_timeout=90.0) is client
    assert (client.timeout.connect, client.timeout.read) == (3.0, 90.0)

    async def in_another_loop():
        other = shared_client(connect_timeout=3.0, read_timeout=90.0)
        await other.aclose()
        return other

    assert await asyncio.to_thread(asyncio.run, in_another_loop()) is not client
    await client.aclose()


def test_fake_provider_as_a_process():
    process = subprocess.Popen(
        [sys.executable, "tests/fakeprovider.py", "--port", "0"],
        cwd=Path(__file__).resolve().parent.parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        origin = base_url.removesuffix("/v1")
        with httpx.Client() as http:
            body = {"model": "fake:chunks=2", "messages": [], "stream": True}
            response = http.post(f"{base_url}/chat/completions", json=body)
            assert response.headers["content-type"] == "text/event-stream" and "data: [DONE]" in response.text
            log = http.get(f"{origin}/_log").json()["requests"]
            assert [(r["model"], r["outcome"], r["deltas_sent"]) for r in log] == [("fake:chunks=2", "completed", 2)]
            assert http.post(f"{origin}/_reset").json() == {"ok": True}
            assert http.get(f"{origin}/_log").json() == {"requests": []}
    finally:
        process.terminate()
        process.wait(5)
    assert json.dumps(log)  # the log is plain JSON


# --- hardening: secrets, storable text, usage, the line cap, max_tokens ----------------------

# Random-looking, so that no 4 characters of it turn up in a message by chance.
LEAKY_KEY = "sk-Zq8RvW3mXk5TpL9nB2cYh7Jd"
URL_PASSWORD, QUERY_KEY = "gwPass9Secret", "QueryKey7Secret"


def key_runs(text, key=LEAKY_KEY, n=4):
    """The runs of ``n`` characters of ``key`` found in ``text``."""
    return [key[i : i + n] for i in range(len(key) - n + 1) if key[i : i + n] in text]


def cut_inside_the_key(prefix):
    """The ``error_pad`` that put the old 300-character cut 19 characters into the quoted key."""
    return 299 - 19 - len(prefix) - len("; you sent 'Bearer ")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "api, model, prefix",
    [
        ("openai", "fake:status=401,leak=1", "fake HTTP 401"),
        ("dashscope", "fake:status=401,leak=1", "InvalidApiKey: fake HTTP 401"),
        ("openai", "fake:error_after=1,leak=1", "fake failure mid-stream"),
        ("dashscope", "fake:error_after=1,leak=1", "InternalError: fake failure mid-stream"),
    ],
)
async def test_secrets_are_removed_before_the_detail_is_shortened(fake_provider, client, api, model, prefix, caplog):
    provider = build_provider(api=api, base_url=fake_provider.base_url, api_key=LEAKY_KEY, client=client)
    with pytest.raises(ProviderError) as raised:
        await collect(provider, f"{model},error_pad={cut_inside_the_key(prefix)}")
    assert key_runs(raised.value.message) == []
    assert len(raised.value.message) < 400 and "xxxxx" in raised.value.message  # the provider's words, shortened
    assert key_runs(caplog.text) == [] and "Bearer [redacted]" in caplog.text


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
@pytest.mark.parametrize("reachable", [False, True], ids=["closed-port", "fake"])
async def test_credentials_in_the_base_url_reach_no_user(fake_provider, client, api, reachable, caplog):
    port = fake_provider.port if reachable else closed_port()
    base_url = f"http://gwuser:{URL_PASSWORD}@127.0.0.1:{port}/v1?api-key={QUERY_KEY}"
    provider = build_provider(api=api, base_url=base_url, api_key=LEAKY_KEY, client=client)
    with pytest.raises(ProviderError) as raised:
        # The fake quotes the Authorization header and the path with its query, as gateways do.
        await collect(provider, "fake:status=404,leak=1,leak_url=1")
    message = raised.value.message
    assert raised.value.code == ("provider_bad_request" if reachable else "provider_unreachable")
    for secret in (URL_PASSWORD, QUERY_KEY, "gwuser", "127.0.0.1", str(port)):
        assert secret not in message
    assert key_runs(message) == []
    for secret in (URL_PASSWORD, QUERY_KEY, "gwuser", LEAKY_KEY):
        assert secret not in caplog.text
    assert f"http://127.0.0.1:{port}/v1/" in caplog.text  # the operator sees where, without credentials
    if reachable:
        # The gateway's key stays in the query, after the endpoint's path.
        path = "/chat/completions" if api == "openai" else "/services/aigc/text-generation/generation"
        assert fake_provider.requests()[-1]["path"] == f"/v1{path}?api-key={QUERY_KEY}"
        assert "fake HTTP 404" in message


def test_public_error_keeps_the_providers_words_and_drops_what_locates_or_unlocks():
    detail = (
        "Model gpt-4o-mini-2024-07-18 not found (Throttling.RateQuota) at https://gw.example.com/v1 "
        "host api.example.com:443, ip 10.0.0.7:8080 or [::1]:80, header 'Authorization: Bearer abc.def', "
        'Basic dXNlcjpwYXNz, api_key=hunter22, {"token": "t0k3n"}, req 123e4567-e89b-12d3-a456-426614174000, '
        f"sk-proj-abc*****xyz and AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv and the key's tail {LEAKY_KEY[5:]}"
    )
    error = public_error(
        ProviderError("provider_bad_request", "The provider rejected the request (HTTP 400).", detail=detail),
        api_key=LEAKY_KEY,
        url="https://gw.example.com/v1/chat/completions",
    )
    assert error.message.startswith("The provider rejected the request (HTTP 400). Details: Model gpt-4o-mini")
    assert "(Throttling.RateQuota)" in error.message
    for gone in ("example.com", "10.0.0.7", "::1", "abc.def", "dXNlcjpwYXNz", "hunter22", "t0k3n", "123e4567", "sk-"):
        assert gone not in error.message
    assert "AIzaSy" not in error.message and key_runs(error.message, n=5) == []
    assert len(error.message) <= len("The provider rejected the request (HTTP 400). Details: ") + 200


def test_public_error_without_detail_is_the_apps_sentence():
    error = ProviderError("provider_incomplete", "The provider's stream ended before the reply was complete.")
    assert public_error(error, api_key=KEY, url="http://x/v1").message == error.message


def test_storable():
    assert storable("plain ascii") == "plain ascii"
    assert storable("你好 👋") == "你好 👋"
    assert storable("a\x00b") == "a\ufffdb"
    assert storable("\ud83d half, \udc4b other half\x00") == "\ufffd half, \ufffd other half\ufffd"
    text = "no work to do"
    assert storable(text) is text


UNSTORABLE = "fake:chunks=3,surrogate_at=1,nul_at=2"


@pytest.mark.asyncio
@pytest.mark.parametrize("api, incremental", [("openai", None), ("dashscope", False), ("dashscope", True)])
async def test_lone_surrogates_and_nul_become_replacement_characters(fake_provider, client, api, incremental):
    if api == "openai":
        provider = OpenAIProvider(base_url=fake_provider.base_url, api_key=KEY, client=client)
    else:
        provider = DashScopeProvider(
            base_url=fake_provider.base_url, api_key=KEY, client=client, incremental_output=incremental
        )
    events = await collect(provider, UNSTORABLE)
    sent = reply_text(UNSTORABLE)
    assert "\ud800" in sent and "\x00" in sent
    assert text_of(events) == sent.replace("\ud800", "\ufffd").replace("\x00", "\ufffd")
    assert events[-2:] == [Usage(11, 3, 14), Finish("stop")]


@pytest.mark.asyncio
async def test_reasoning_is_made_storable_too(openai):
    events = await collect(openai, "fake:replay=unstorable_reasoning.stream")
    assert events == [ReasoningDelta("a\ufffdb\ufffd"), TextDelta("\ufffd ok"), Finish("stop")]


BAD_USAGE = [
    ("usage_prompt=-5", Usage(None, 5, 16)),
    ("usage_completion=true", Usage(11, None, 16)),
    ("usage_total=abc", Usage(11, 5, None)),
    ("usage_total=1.5", Usage(11, 5, None)),
    ("usage_prompt=99999999999999999999", Usage(None, 5, 16)),
    ("usage_total=2147483648", Usage(11, 5, None)),
    ("usage_total=2147483647", Usage(11, 5, 2**31 - 1)),
    ("usage_prompt=null", Usage(None, 5, 16)),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
@pytest.mark.parametrize("params, usage", BAD_USAGE, ids=[b[0] for b in BAD_USAGE])
async def test_unusable_token_counts_become_none_with_one_warning(fake_provider, client, api, params, usage, caplog):
    provider = build_provider(api=api, base_url=fake_provider.base_url, api_key=KEY, client=client)
    events = await collect(provider, f"fake:chunks=5,{params}")
    assert text_of(events) == reply_text("fake:chunks=5")
    assert events[-2:] == [usage, Finish("stop")]
    warnings = [r for r in caplog.records if "unusable token counts" in r.getMessage()]
    assert len(warnings) == (0 if params.endswith(("2147483647", "null")) else 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
async def test_a_line_that_never_ends_fails_at_one_mebibyte(fake_provider, client, api):
    provider = build_provider(api=api, base_url=fake_provider.base_url, api_key=KEY, client=client)
    events, error = await failure(provider, f"fake:chunks=2,longline={100 * 1024 * 1024}")
    assert error.code == "provider_bad_response" and "longer than 1,048,576 characters" in error.message
    assert events == [TextDelta("w0·你好👋 "), TextDelta("w1·你好👋 ")]
    # The client gave up long before the 100 MB were written.
    assert (await fake_provider.wait_ended(timeout=20))["outcome"] == "client_closed"


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "dashscope"])
async def test_max_tokens_is_sent_only_when_set(fake_provider, client, api):
    def sent_max_tokens():
        body = fake_provider.requests()[-1]["body"]
        return body.get("max_tokens") if api == "openai" else body["parameters"].get("max_tokens", "absent")

    capped = build_provider(api=api, base_url=fake_provider.base_url, api_key=KEY, client=client, max_tokens=321)
    assert text_of(await collect(capped, "fake:chunks=2")) == reply_text("fake:chunks=2")
    assert sent_max_tokens() == 321
    await collect(build_provider(api=api, base_url=fake_provider.base_url, api_key=KEY, client=client), "fake")
    assert sent_max_tokens() in (None, "absent")
