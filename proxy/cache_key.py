"""Pure functions turning a request into its namespaced cache key.

Two shapes, both documented in the README:
- readable keys for routes keyed by path parameters, as the seed writes them:
  `artwork_info:mona-lisa`, then `?lang=tr` when the request has a query string, then
  `#<digest>` when anything else can change the answer (a body, a client credential, a header
  the route varies on, a method other than GET);
- digest keys for the AI API: `ai_content:chat.completions:<sha256>` over a canonical form of
  the whole request (method, upstream path, sorted query, media type, varying headers, client
  credential fingerprint, canonical JSON body or raw bytes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from proxy.routes import Route

CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
_QUOTES = str.maketrans("", "", "'\"`\u2018\u2019\u201c\u201d\u00b4")
_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_LONG_NUMBER = re.compile(rb"[0-9]{16,}")
MAX_READABLE_PART = 160
MAX_READABLE_QUERY = 256


@dataclass(frozen=True, slots=True)
class KeyInput:
    """What a key is computed from: the request as the proxy will send it upstream."""

    method: str
    upstream_path: str
    query_string: str
    body: bytes
    media_type: str
    vary: tuple[tuple[str, str], ...]
    credential: str | None


def key_input(
    *,
    route: Route,
    method: str,
    upstream_path: str,
    query_string: str,
    body: bytes,
    headers: Mapping[str, str],
    credential: str | None,
) -> KeyInput:
    """Collect from the request headers what counts toward the key (never the raw credential).

    `credential` is what `key_credential` returns for the request: the caller has usually
    computed it already, to name the client."""
    content_type = headers.get("content-type", "")
    return KeyInput(
        method="GET" if method == "HEAD" else method,
        upstream_path=upstream_path,
        query_string=query_string,
        body=body,
        media_type=content_type.split(";", 1)[0].strip().lower() if content_type else "",
        vary=tuple((name, headers.get(name, "")) for name in route.vary_headers if name in headers),
        credential=credential,
    )


def key_credential(headers: Mapping[str, str], identity: str | None = None) -> str | None:
    """What stands for the client in its keys: the fingerprint of its own credential headers, or
    the `identity` of an authenticated client on a route that does not share entries."""
    if identity:
        return hashlib.sha256(f"client:{identity}".encode()).hexdigest()
    return credential_fingerprint(headers)


def key_fields(route: Route, request: KeyInput) -> list[str]:
    """Which parts of the request went into its key, for the debug header."""
    if route.readable_key:
        fields = [f"path-param:{name}" for name in _PARAM.findall(route.key)]
        if request.query_string:
            fields.append("query")
        extra = request.method != "GET" or request.body or request.vary or request.credential
        if not extra:
            return fields
        fields.append("method")
    else:
        fields = ["method", "upstream-path"]
        if request.query_string:
            fields.append("query")
    if request.media_type:
        fields.append("media-type")
    fields.extend(f"header:{name}" for name, _ in request.vary)
    if request.credential:
        fields.append("credential-fingerprint")
    if request.body:
        kind = canonical_body(request.body, request.media_type)[:1]
        fields.append({b"J": "body:json-canonical", b"j": "body:json-canonical"}.get(kind, "body:raw-bytes"))
    return fields


def credential_fingerprint(headers: Mapping[str, str]) -> str | None:
    """SHA-256 of the client's own credential headers, or None when it sent none."""
    present = [(name, headers[name]) for name in CREDENTIAL_HEADERS if name in headers]
    if not present:
        return None
    return hashlib.sha256(_frame(f"{name}={value}".encode() for name, value in present)).hexdigest()


def key_digest(key: str) -> str:
    """What the access line shows of a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_key(route: Route, template: str, params: Mapping[str, str], request: KeyInput, *, prefix: str = "") -> str:
    """The full store key for a request matched by `route` through the path `template`."""
    if route.readable_key:
        return prefix + readable_key(route, params, request)
    return f"{prefix}{route.name}:{content_type_of(route, template)}:{request_digest(request)}"


def readable_key(route: Route, params: Mapping[str, str], request: KeyInput) -> str:
    parts = [normalize_name(params[name]) for name in _PARAM.findall(route.key)]
    key = f"{route.name}:{':'.join(parts)}"
    if request.query_string:
        query = canonical_query(request.query_string)
        key += f"?{query}" if len(query) <= MAX_READABLE_QUERY else f"?~{_sha256(query.encode())[:32]}"
    if request.method != "GET" or request.body or request.vary or request.credential:
        rest = KeyInput(request.method, "", "", request.body, request.media_type, request.vary, request.credential)
        key += f"#{request_digest(rest)[:32]}"
    return key


def content_type_of(route: Route, template: str) -> str:
    """`/v1/chat/completions` under `strip_prefix = "/v1"` -> `chat.completions`."""
    return _content_type(route.strip_prefix, template)


@functools.lru_cache(maxsize=1024)  # templates come from the route table: a handful
def _content_type(strip_prefix: str, template: str) -> str:
    path = template[len(strip_prefix) :] if template.startswith(strip_prefix) else template
    segments = [segment for segment in path.split("/") if segment and not _PARAM.fullmatch(segment)]
    return ".".join(segments) or "root"


def normalize_name(value: str) -> str:
    """Fold spelling variants of one name into one key part.

    NFKC, case-folded, quotes removed, every run of characters that are not letters or digits
    (spaces, `_`, `-`, punctuation, glob characters) made one `-`, trimmed. Accents are kept:
    they can tell two names apart. `Mona Lisa`, `mona_lisa` and ` MONA-LISA ` -> `mona-lisa`.
    """
    folded = unicodedata.normalize("NFKC", value).casefold().translate(_QUOTES)
    normalized = _SEPARATORS.sub("-", folded).strip("-")
    if not normalized:
        return "~" + _sha256(value.encode("utf-8", "surrogatepass"))[:16]
    if len(normalized) > MAX_READABLE_PART:
        return normalized[:120] + "~" + _sha256(normalized.encode())[:16]
    return normalized


def canonical_query(query_string: str) -> str:
    if not query_string:
        return ""
    pairs = sorted(parse_qsl(query_string, keep_blank_values=True))
    return urlencode(pairs, quote_via=quote, safe="")


def canonical_body(body: bytes, media_type: str) -> bytes:
    """JSON bodies with sorted keys and no whitespace; anything else as raw bytes, tagged apart."""
    if not body:
        return b"E"
    looks_json = media_type == "application/json" or media_type.endswith("+json") or body[:1] in (b"{", b"[")
    # Numbers of 16 digits or more do not survive a float round trip: two different values could
    # parse to the same canonical form. Such bodies hash as their exact bytes instead.
    if looks_json and not _LONG_NUMBER.search(body):
        try:
            return b"J" + orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
        except (orjson.JSONDecodeError, TypeError):
            pass
        try:  # NaN and Infinity: valid for Python's json, not for orjson
            value = json.loads(body)
            return b"j" + json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
                "utf-8", "surrogatepass"
            )
        except (ValueError, RecursionError):
            pass
    return b"R" + body


DIGEST_MEMO_LIMIT = 4096  # requests whose digest is remembered (emptied when full)
_digest_memo: dict[bytes, str] = {}


def request_digest(request: KeyInput) -> str:
    """The digest of the canonical request, remembered for requests seen before.

    Canonical JSON costs a parse and a sorted dump of the body (a third of building a key); a
    request asked again (what a cache hit is) is recognised by the SHA-256 of its exact bytes
    instead, which is several times cheaper. Bounded: about 250 bytes per remembered request."""
    # Length-prefixed fields (netstring-like), so no two different requests frame alike.
    method, path, query, media, credential = (
        request.method,
        request.upstream_path,
        request.query_string,
        request.media_type,
        request.credential or "",
    )
    framed = (
        f"{len(method)}:{method}{len(path)}:{path}{len(query)}:{query}{len(media)}:{media}"
        f"{len(credential)}:{credential}{len(request.vary)}|"
    )  # the count of varying headers too: the body follows them
    for name, value in request.vary:
        framed += f"{len(name)}:{name}{len(value)}:{value}"
    exact = hashlib.sha256(framed.encode("utf-8", "surrogateescape"))
    exact.update(request.body)
    memo_key = exact.digest()
    digest = _digest_memo.get(memo_key)
    if digest is None:
        digest = _canonical_digest(request)
        if len(_digest_memo) >= DIGEST_MEMO_LIMIT:
            _digest_memo.clear()
        _digest_memo[memo_key] = digest
    return digest


def _canonical_digest(request: KeyInput) -> str:
    vary = "\n".join(f"{name}:{value}" for name, value in request.vary)
    return _sha256(
        _frame(
            (
                request.method.encode(),
                request.upstream_path.encode("utf-8", "surrogateescape"),
                canonical_query(request.query_string).encode(),
                request.media_type.encode(),
                vary.encode("utf-8", "surrogateescape"),
                (request.credential or "").encode(),
                canonical_body(request.body, request.media_type),
            )
        )
    )


def _frame(parts: Iterable[bytes]) -> bytes:
    """Length-prefixed concatenation, so no two different inputs frame to the same bytes."""
    framed: list[bytes] = []
    for part in parts:
        framed.append(len(part).to_bytes(8, "big"))
        framed.append(part)
    return b"".join(framed)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
