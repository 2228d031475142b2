"""Clear patterns stay inside the proxy's namespaces."""

import pytest

from proxy.clearing import clear_patterns
from proxy.errors import ClientRequestError

NAMESPACES = ("artwork_info", "ai_content")


def test_everything_means_each_namespace() -> None:
    assert clear_patterns(None, NAMESPACES, "") == ["artwork_info:*", "ai_content:*"]
    assert clear_patterns(None, NAMESPACES, "app:") == ["app:artwork_info:*", "app:ai_content:*"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("artwork_info:*", "artwork_info:*"),
        ("ai_content:chat.completions:*", "ai_content:chat.completions:*"),
        ("artwork_info:mona-lisa", "artwork_info:mona-lisa"),
        ("artwork_info", "artwork_info:*"),
    ],
)
def test_seed_patterns(pattern: str, expected: str) -> None:
    assert clear_patterns(pattern, NAMESPACES, "") == [expected]


@pytest.mark.parametrize(
    "pattern",
    [
        "*",
        "art*",
        "artwork_info*",
        "session:*",
        "other:artwork_info:*",
        "a\x00b",
        "artwork_info:\r\n",
        "",
        "x" * 600,
        "?rtwork_info:*",
    ],
)
def test_anything_else_is_refused(pattern: str) -> None:
    with pytest.raises(ClientRequestError) as caught:
        clear_patterns(pattern, NAMESPACES, "")
    assert caught.value.status == 400


def test_eviction_warnings() -> None:
    from proxy.operations import eviction_warnings

    assert eviction_warnings({"maxmemory": 0, "maxmemory_policy": "noeviction"}) == [
        "maxmemory is 0: Redis grows until the machine runs out of memory (see config/redis.conf)",
        "maxmemory-policy is noeviction: once full, Redis refuses writes instead of evicting",
    ]
    assert "volatile-lru" in eviction_warnings({"maxmemory": 1, "maxmemory_policy": "volatile-lru"})[0]
    assert eviction_warnings({"maxmemory": 268435456, "maxmemory_policy": "allkeys-lfu"}) == []
