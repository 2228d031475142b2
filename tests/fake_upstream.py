"""A fake upstream that answers like the OpenAI API and the artwork and image APIs, and counts calls.

Started on loopback by the tests themselves (and by the benchmarks). Request headers steer it:
- `x-fake-status: 500` answers with that status and an OpenAI-style error body;
- `x-fake-delay: 0.2` waits that many seconds before answering;
- `x-fake-cache-control: no-store`, `x-fake-set-cookie: 1`, `x-fake-age: 5` add those response headers;
- `x-fake-gzip: 1` sends the answer gzip-encoded;
- `x-fake-cut: 1` breaks a stream off after its first event (no `data: [DONE]`);
- `x-fake-finish-reason: length` ends chat completions with that finish reason;
- `x-fake-empty-choices: 1` answers a chat completion with no choices; `x-fake-error-body: 1`
  answers 200 with an error object;
- `x-fake-url-expires-in: 600` signs image URLs (Azure SAS `se=`) to expire that many seconds on.

Chat completions stream like OpenAI's: a reasoning delta, content word by word, tool-call deltas
when the request has `tools`, and a final usage chunk when `stream_options.include_usage` is set.

`GET /__stats` answers `{"calls": {path: count}, "total": n}` and is not counted itself, so a
process started on its own (the benchmarks) can be asked how many upstream calls it received.

Run alone: `python -m tests.fake_upstream --port 9100 [--latency 0.05]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# 1x1 transparent PNG.
PNG_BYTES = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
STATS_PATH = "/__stats"


@dataclass
class SeenRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    """State of the fake: what it saw, and knobs the tests turn."""

    latency: float = 0.0
    image_bytes: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    seen: list[SeenRequest] = field(default_factory=list)
    keep_requests: bool = True

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()
        self.seen.clear()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/chat/completions", self.chat_completions)
        app.router.add_post("/completions", self.completions)
        app.router.add_post("/embeddings", self.embeddings)
        app.router.add_post("/images/generations", self.image_generations)
        app.router.add_post("/moderations", self.moderations)
        app.router.add_post("/responses", self.responses)
        app.router.add_get("/models", self.models)
        app.router.add_get("/artworks/{name}", self.artwork_info)
        app.router.add_get("/artworks/{name}/similar", self.similar)
        app.router.add_get("/images/{name}", self.image)
        app.router.add_get(STATS_PATH, self.stats)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == STATS_PATH:
            return await handler(request)  # asking for the counts is not a call
        body = await request.read()
        self.calls[request.path] += 1
        if self.keep_requests:
            self.seen.append(
                SeenRequest(request.method, request.path, request.query_string, dict(request.headers), body)
            )
        delay = float(request.headers.get("x-fake-delay", self.latency))
        if delay:
            await asyncio.sleep(delay)
        status = int(request.headers.get("x-fake-status", "200"))
        if status != 200:
            error = {"error": {"message": f"fake failure {status}", "type": "server_error", "code": None}}
            return web.json_response(error, status=status)
        response = await handler(request)
        if "x-fake-cache-control" in request.headers:
            response.headers["Cache-Control"] = request.headers["x-fake-cache-control"]
        if "x-fake-gzip" in request.headers and isinstance(response, web.Response):
            response.enable_compression(web.ContentCoding.gzip)
        if "x-fake-age" in request.headers:
            response.headers["Age"] = request.headers["x-fake-age"]
        if "x-fake-set-cookie" in request.headers:
            response.headers["Set-Cookie"] = "session=abc; Path=/"
        return response

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await request.read())
        prompt = payload["messages"][-1]["content"] if payload.get("messages") else ""
        answer = f"Story {self.calls['/chat/completions']}: {prompt}"
        model = payload.get("model", "gpt-4o-mini")
        created = int(time.time())
        finish_reason = request.headers.get("x-fake-finish-reason", "tool_calls" if payload.get("tools") else "stop")
        if payload.get("stream"):
            return await self._stream_chat(request, payload, answer, model, created, finish_reason)
        if request.headers.get("x-fake-error-body"):
            return web.json_response({"error": {"message": "model overloaded", "type": "server_error"}})
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if payload.get("tools"):
            message["tool_calls"] = [_tool_call(payload)]
        choices = (
            []
            if request.headers.get("x-fake-empty-choices")
            else [{"index": 0, "message": message, "finish_reason": finish_reason}]
        )
        return web.json_response(
            {
                "id": f"chatcmpl-{self.calls['/chat/completions']}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                # Whose key asked: lets tests prove no tenant ever receives another's answer.
                "tenant": hashlib.sha256(request.headers.get("Authorization", "").encode()).hexdigest()[:12],
                "choices": choices,
                "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
            },
            headers={"openai-model": model, "x-request-id": f"req_{self.total_calls}"},
        )

    async def _stream_chat(
        self, request: web.Request, payload: dict[str, Any], answer: str, model: str, created: int, finish_reason: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], reason: str | None = None) -> None:
            chunk = {
                "id": "chatcmpl-stream",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0)

        await send({"role": "assistant", "reasoning_content": "Thinking about the artwork. "})
        if request.headers.get("x-fake-cut"):
            request.transport.close()  # type: ignore[union-attr]
            return response
        words = answer.split(" ")
        for word in words:
            await send({"content": word + " "})
        if payload.get("tools"):
            call = _tool_call(payload)
            arguments = call["function"]["arguments"]
            await send(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for start in range(0, len(arguments), 7):
                await send({"tool_calls": [{"index": 0, "function": {"arguments": arguments[start : start + 7]}}]})
        await send({}, finish_reason)
        if (payload.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "chatcmpl-stream",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)},
            }
            await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def completions(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": payload.get("model"),
                "choices": [{"index": 0, "text": f"echo {payload.get('prompt')}", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(text))} for i, text in enumerate(inputs)]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": payload.get("model"),
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )

    async def image_generations(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        if payload.get("response_format") == "b64_json":
            item = {"b64_json": base64.b64encode(PNG_BYTES).decode()}
        else:
            url = f"https://images.example/{hashlib.sha256(await request.read()).hexdigest()[:12]}.png"
            if "x-fake-url-expires-in" in request.headers:
                expires = time.time() + float(request.headers["x-fake-url-expires-in"])
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
                url += f"?st=2026-01-01T00%3A00%3A00Z&se={stamp.replace(':', '%3A')}&sp=r&sig=abc"
            item = {"url": url}
        return web.json_response({"created": int(time.time()), "data": [item]})

    async def moderations(self, request: web.Request) -> web.Response:
        return web.json_response({"id": "modr-1", "results": [{"flagged": False}]})

    async def responses(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        return web.json_response({"id": "resp-1", "object": "response", "output_text": f"echo {payload.get('input')}"})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": dict(self.calls), "total": self.total_calls})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    async def artwork_info(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.json_response(
            {"name": name, "artist": "Leonardo da Vinci", "story": f"The story of {name}.", "call": self.total_calls}
        )

    async def similar(self, request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["name"], "similar": ["The Last Supper"]})

    async def image(self, request: web.Request) -> web.Response:
        if self.image_bytes:
            return web.Response(body=b"\x89PNG" + b"\x00" * (self.image_bytes - 4), content_type="image/png")
        return web.Response(body=PNG_BYTES, content_type="image/png")


def _tool_call(payload: dict[str, Any]) -> dict[str, Any]:
    name = payload["tools"][0]["function"]["name"]
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({"artwork": "Mona Lisa", "detail": "high"})},
    }


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255, 4) for byte in digest[:8]]


def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI / artwork / image upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--image-bytes", type=int, default=0, help="size of /images/{name} answers")
    args = parser.parse_args()
    fake = FakeUpstream(latency=args.latency, image_bytes=args.image_bytes, keep_requests=False)
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
