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
from chat.providers.base import ChatMessage, Finish, ProviderError, ReasoningDelta, TextDelta, Usage
from chat.providers.dashscope import DashScopeProvider
from chat.providers.demo import DemoProvider
from chat.providers.openai import OpenAIProvider
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
    assert error.message.endswith((".", "'")) and len(error.message) < 500


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
async def test_unreachable(client, api):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    provider = build_provider(api=api, base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, client=client)
    _, error = await failure(provider, "fake")
    assert error.code == "provider_unreachable" and f"127.0.0.1:{port}" in error.message


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
