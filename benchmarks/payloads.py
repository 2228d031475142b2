"""The requests the scenarios send: a chat completion whose answer is about 1 KB, a 60 KB image,
and a template that makes every request distinct."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHAT_PATH = "/v1/chat/completions"
UPSTREAM_CHAT_PATH = "/chat/completions"  # the same request sent straight to the fake upstream
IMAGE_PATH = "/artworks/bench-mona-lisa/image"
MODEL = "gpt-4o-mini"
# The fake upstream answers a chat completion with about this many bytes around the prompt.
_ANSWER_OVERHEAD = 330


@dataclass(frozen=True)
class Payload:
    """One hit scenario: a path, a method and (for POST) a body file."""

    name: str
    label: str
    method: str
    path: str
    body_file: Path | None


def chat_body(prompt: str, *, stream: bool = False) -> bytes:
    """An OpenAI chat-completion request body."""
    payload: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        payload["stream"] = True
    return json.dumps(payload, separators=(",", ":")).encode()


def hit_prompt(answer_bytes: int) -> str:
    """A prompt whose echo by the fake upstream makes an answer of about `answer_bytes`."""
    base = "Tell the story behind the Mona Lisa. "
    size = max(len(base), answer_bytes - _ANSWER_OVERHEAD)
    return (base * (size // len(base) + 1))[:size]


def write_payloads(directory: Path, *, answer_bytes: int) -> tuple[Payload, Payload, Path]:
    """Write the body files; return the chat and image hit payloads and the distinct-body template."""
    directory.mkdir(parents=True, exist_ok=True)
    chat_file = directory / "chat.json"
    chat_file.write_bytes(chat_body(hit_prompt(answer_bytes)))
    template = directory / "unique.json"
    # The template's answer is about as large as the hit's: a distinct tag, then the same filler.
    template.write_bytes(chat_body("{{n}} " + hit_prompt(answer_bytes - 40)))
    chat = Payload("chat", "1 KB chat completion (POST)", "POST", CHAT_PATH, chat_file)
    image = Payload("image", "60 KB image (GET)", "GET", IMAGE_PATH, None)
    return chat, image, template
