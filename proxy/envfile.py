"""Reading a `.env` file: `KEY=value` lines, as the seed document writes them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse `.env` text into a dict.

    Accepts `KEY=value`, `export KEY=value`, single- or double-quoted values, blank lines,
    `# comments` and inline comments after unquoted values (`REDIS_PASSWORD=  # if any`).
    Lines that are not assignments are ignored rather than fatal: the file is a convenience.
    """
    values: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            continue
        values[name] = _unquote(value.strip())
    return values


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == '"':
            inner = inner.replace("\\n", "\n").replace('\\"', '"')
        return inner
    comment = value.find(" #")
    if value.startswith("#"):
        return ""
    if comment != -1:
        value = value[:comment]
    return value.strip()


def environment_with_dotenv(
    environ: Mapping[str, str] | None = None, dotenv_path: Path | None = None
) -> dict[str, str]:
    """The process environment over the values of `.env` (real variables win)."""
    environ = os.environ if environ is None else environ
    path = Path(".env") if dotenv_path is None else dotenv_path
    merged: dict[str, str] = {}
    if path.is_file():
        merged.update(parse_dotenv(path.read_text(encoding="utf-8")))
    merged.update(environ)
    return merged
