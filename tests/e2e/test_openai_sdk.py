"""End to end: the official openai SDK, pointed at a running proxy process, gets hits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from proxy.access import hash_access_key
from tests.fake_upstream import FakeUpstream
from tests.processes import ProxyProcess

pytestmark = pytest.mark.slow

FAKE_KEY = "sk-e2e-secret-key-0123456789"


@pytest.fixture
async def running_proxy(upstream_url: str, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    process = ProxyProcess(
        {
            "OPENAI_BASE_URL": upstream_url,
            "ARTWORK_API_URL": upstream_url,
            "IMAGE_API_URL": upstream_url,
            "OPENAI_API_KEY": FAKE_KEY,
            # The SDK's api_key is the frontend's proxy access key; the proxy holds the real one.
            "PROXY_ACCESS_KEYS": "frontend:" + hash_access_key("sk-client-key"),
            "REDIS_URL": "memory://",
        },
        tmp_path / "proxy.log",
    )
    await process.start()
    yield process
    assert await process.stop() == 0
    assert FAKE_KEY not in process.output()


async def test_the_same_chat_completion_twice_is_one_upstream_call(
    running_proxy: ProxyProcess, fake: FakeUpstream
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{running_proxy.url}/v1", api_key="sk-client-key", max_retries=0)
    messages = [{"role": "user", "content": "Tell me the story of The Starry Night"}]
    first = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    second = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    first_completion, second_completion = first.parse(), second.parse()
    assert second_completion.choices[0].message.content == first_completion.choices[0].message.content
    assert "Starry Night" in (first_completion.choices[0].message.content or "")
    assert second_completion.id == first_completion.id
    assert fake.calls["/chat/completions"] == 1
    assert fake.seen[-1].headers["Authorization"] == f"Bearer {FAKE_KEY}"  # the access key stayed behind
    await client.close()


async def test_an_unknown_access_key_is_refused_before_any_upstream_call(
    running_proxy: ProxyProcess, fake: FakeUpstream
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{running_proxy.url}/v1", api_key="sk-stolen-or-guessed", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert "unknown access key" in str(caught.value)
    assert fake.total_calls == 0
    await client.close()


async def test_streamed_completion_twice_with_the_sdk(running_proxy: ProxyProcess, fake: FakeUpstream) -> None:
    client = openai.AsyncOpenAI(base_url=f"{running_proxy.url}/v1", api_key="sk-client-key", max_retries=0)
    messages = [{"role": "user", "content": "Who painted Guernica?"}]
    texts = []
    for _ in range(2):
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        texts.append("".join(parts))
    assert texts[0] == texts[1]
    assert "Guernica" in texts[0]
    assert fake.calls["/chat/completions"] == 1
    await client.close()


async def test_sdk_errors_surface_as_api_errors(running_proxy: ProxyProcess) -> None:
    client = openai.AsyncOpenAI(base_url=f"{running_proxy.url}/v1", api_key="sk-client-key", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.files.list()
    assert "no route" in str(caught.value)
    await client.close()


async def test_a_streamed_answer_with_tool_calls_and_usage_replays_every_field(
    running_proxy: ProxyProcess, fake: FakeUpstream
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{running_proxy.url}/v1", api_key="sk-client-key", max_retries=0)
    tools = [{"type": "function", "function": {"name": "lookup_artwork", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "Find the Mona Lisa"}]
    runs = []
    for _ in range(2):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        content, reasoning, arguments, names, finish, usage = [], [], [], [], [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                delta = choice.delta
                content.append(delta.content or "")
                reasoning.append(getattr(delta, "reasoning_content", None) or "")
                for call in delta.tool_calls or []:
                    arguments.append(call.function.arguments or "" if call.function else "")
                    if call.function and call.function.name:
                        names.append(call.function.name)
                if choice.finish_reason:
                    finish.append(choice.finish_reason)
        runs.append(("".join(content), "".join(reasoning), "".join(arguments), names, finish, usage))
    assert runs[0] == runs[1]
    content, reasoning, arguments, names, finish, usage = runs[1]
    assert "Mona Lisa" in content
    assert reasoning == "Thinking about the artwork. "
    assert names == ["lookup_artwork"]
    assert arguments == '{"artwork": "Mona Lisa", "detail": "high"}'
    assert finish == ["tool_calls"]
    assert usage is not None
    assert usage.prompt_tokens == 12
    assert fake.calls["/chat/completions"] == 1
    await client.close()
