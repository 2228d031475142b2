"""Clear patterns: the seed's glob form, confined to the proxy's own namespaces."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.errors import ClientRequestError

GLOB_CHARS = "*?[\\"
MAX_PATTERN_LENGTH = 512


def clear_patterns(pattern: str | None, namespaces: Iterable[str], prefix: str) -> list[str]:
    """The store patterns a clear acts on.

    None clears every namespace (`ns:*` for each). Otherwise the pattern must start with one of the
    namespaces followed by `:` (`artwork_info:*`, `ai_content:chat.completions:*`, or an exact
    key); a bare namespace name means the whole namespace. Anything else is a 400: a clear never
    reaches keys the proxy did not write.
    """
    known = tuple(namespaces)
    if pattern is None:
        return [f"{prefix}{namespace}:*" for namespace in known]
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
        raise ClientRequestError(f"a clear pattern must be 1 to {MAX_PATTERN_LENGTH} characters long")
    if not pattern.isprintable():
        raise ClientRequestError("a clear pattern must not contain control characters")
    if pattern in known:
        return [f"{prefix}{pattern}:*"]
    first_glob = min((pattern.find(ch) for ch in GLOB_CHARS if ch in pattern), default=len(pattern))
    literal = pattern[:first_glob]
    namespace = literal.split(":", 1)[0]
    if ":" not in literal or namespace not in known:
        raise ClientRequestError(
            f"pattern {pattern!r} is outside the proxy's namespaces: it must start with one of "
            + ", ".join(f"{name}:" for name in known)
        )
    return [prefix + pattern]
