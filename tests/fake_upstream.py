"""A fake upstream that answers like the OpenAI API and the artwork and image APIs, and counts calls.

Started on loopback by the tests themselves (and by the benchmarks). Request headers steer it:
- `x-fake-status: 500` answers with that status and an OpenAI-style error body;
- `x-fake-delay: 0.2` waits that many seconds before answering;
- `x-fake-cache-control: no-store`, `x-fake-set-cookie: 1` add those response headers;
- `x-fake-cut: 1` breaks a stream off after its first event (no `data: [DONE]`).

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
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
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
        if "x-fake-set-cookie" in request.headers:
            response.headers["Set-Cookie"] = "session=abc; Path=/"
        return response

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await request.read())
        prompt = payload["messages"][-1]["content"] if payload.get("messages") else ""
        answer = f"Story {self.calls['/chat/completions']}: {prompt}"
        model = payload.get("model", "gpt-4o-mini")
        created = int(time.time())
        if payload.get("stream"):
            return await self._stream_chat(request, answer, model, created)
        return web.json_response(
            {
                "id": f"chatcmpl-{self.calls['/chat/completions']}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
            },
            headers={"openai-model": model, "x-request-id": f"req_{self.total_calls}"},
        )

    async def _stream_chat(self, request: web.Request, answer: str, model: str, created: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = answer.split(" ")
        for index, word in enumerate(words):
            chunk = {
                "id": "chatcmpl-stream",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if index == 0 and request.headers.get("x-fake-cut"):
                request.transport.close()  # type: ignore[union-attr]
                return response
            await asyncio.sleep(0)
        final = {
            "id": "chatcmpl-stream",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)},
        }
        await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
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
            item = {"url": f"https://images.example/{hashlib.sha256(await request.read()).hexdigest()[:12]}.png"}
        return web.json_response({"created": int(time.time()), "data": [item]})

    async def moderations(self, request: web.Request) -> web.Response:
        return web.json_response({"id": "modr-1", "results": [{"flagged": False}]})

    async def responses(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        return web.json_response({"id": "resp-1", "object": "response", "output_text": f"echo {payload.get('input')}"})

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
