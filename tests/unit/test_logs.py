"""Log output: the buffered access line keeps its fields, its order among other lines, no secret."""

import asyncio
import io
import json
import re
from collections.abc import Iterator

import pytest
import structlog

from proxy import logs
from proxy.logs import access_line, configure_logging, flush_logs


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", secrets=["sk-secret-value"], stream=stream)
    yield stream
    flush_logs()
    structlog.reset_defaults()
    logs._access_writer = None
    logs._sinks.clear()


def lines_of(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_access_line_has_the_fields_of_a_structlog_line_and_no_secret(json_stream: io.StringIO) -> None:
    access_line({"request_id": "abc", "path": "/v1/models/sk-secret-value", "status": 200, "cache": "HIT"})
    flush_logs()
    [line] = lines_of(json_stream)
    assert (line["event"], line["level"]) == ("request", "info")
    assert (line["request_id"], line["status"], line["cache"]) == ("abc", 200, "HIT")
    assert line["path"] == "/v1/models/[redacted]"
    timestamp = str(line["timestamp"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", timestamp)


def test_access_lines_wait_in_the_buffer_and_come_out_before_the_next_other_line(json_stream: io.StringIO) -> None:
    async def scenario() -> None:
        access_line({"request_id": "first"})
        access_line({"request_id": "second"})
        assert json_stream.getvalue() == ""  # buffered: one write for many requests
        structlog.get_logger("proxy").warning("something else")
        assert [line.get("request_id", line["event"]) for line in lines_of(json_stream)] == [
            "first",
            "second",
            "something else",
        ]
        access_line({"request_id": "third"})
        await asyncio.sleep(logs.FLUSH_DELAY * 3)  # written within the flush delay without other lines
        assert lines_of(json_stream)[-1]["request_id"] == "third"

    asyncio.run(scenario())
