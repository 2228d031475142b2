"""Client access: who may spend the upstream key the proxy holds.

When a route's upstream key is the proxy's own (`OPENAI_API_KEY`, `PROXY_UPSTREAM_<NAME>_KEY`),
the client must present a credential of its own, in `Authorization: Bearer <credential>` (what
the OpenAI SDKs send as their `api_key`) or `X-Proxy-Key: <credential>`:
- an access key, checked against SHA-256 hashes configured in `PROXY_ACCESS_KEYS` or the file
  `PROXY_ACCESS_KEYS_FILE` (the proxy never holds the keys themselves);
- or a JWT signed with `PROXY_JWT_HS256_SECRET` or the key in `PROXY_JWT_RS256_PUBLIC_KEY`,
  whose `exp` has not passed and whose `aud` is `PROXY_JWT_AUDIENCE`.
The credential is consumed: it never reaches the upstream, which gets the proxy's own key.
`PROXY_OPEN_ACCESS=true` switches the check off (warned about at start).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.errors import ClientRequestError, ConfigError
from proxy.settings import Settings

if TYPE_CHECKING:
    from types import ModuleType

ACCESS_KEY_HEADER = "X-Proxy-Key"
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="artstory-proxy"'}


@dataclass(frozen=True, slots=True)
class Client:
    """An authenticated client: `kind` is `key`, `jwt` or `ip`; `name` identifies it for limits."""

    kind: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


def hash_access_key(key: str) -> str:
    """What goes into PROXY_ACCESS_KEYS for a key: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_access_keys(text: str, *, source: str) -> dict[str, str]:
    """`name:sha256:<hex>` or `sha256:<hex>` entries, separated by commas or lines -> {hex: name}."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.replace(",", "\n").splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        name, _, digest = entry.rpartition("sha256:")
        name = name.rstrip(": ").strip() or f"key{number}"
        digest = digest.strip().lower()
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise ConfigError(f"invalid access key in {source}, entry {number}: expected [name:]sha256:<64 hex digits>")
        keys[digest] = name
    return keys


@dataclass(frozen=True)
class AccessPolicy:
    """Verifies client credentials against configured key hashes and JWT keys."""

    key_hashes: Mapping[str, str]
    hs256_secret: str | None = None
    rs256_public_key: str | None = None
    audience: str = "artstory-proxy"
    open_access: bool = False

    def __post_init__(self) -> None:
        if self.hs256_secret or self.rs256_public_key:
            _jwt()  # imported at start-up when tokens are configured, not on the first request

    @property
    def configured(self) -> bool:
        return bool(self.key_hashes or self.hs256_secret or self.rs256_public_key)

    def authenticate(self, headers: Mapping[str, str]) -> Client:
        """The client behind the request's credential; `ClientRequestError` (401) otherwise."""
        credential = _credential(headers)
        if credential is None:
            raise ClientRequestError(
                f"this route needs a proxy access key: send Authorization: Bearer <key> or {ACCESS_KEY_HEADER}",
                status=401,
                headers=_WWW_AUTHENTICATE,
            )
        digest = hashlib.sha256(credential.encode()).hexdigest()
        for known, name in self.key_hashes.items():
            if hmac.compare_digest(known, digest):
                return Client("key", name)
        if credential.count(".") == 2 and (self.hs256_secret or self.rs256_public_key):
            return Client("jwt", self._verify_jwt(credential))
        raise ClientRequestError("unknown access key", status=401, headers=_WWW_AUTHENTICATE)

    def _verify_jwt(self, token: str) -> str:
        jwt = _jwt()
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm == "HS256" and self.hs256_secret:
                key = self.hs256_secret
            elif algorithm == "RS256" and self.rs256_public_key:
                key = self.rs256_public_key
            else:
                raise jwt.InvalidAlgorithmError(f"algorithm {algorithm} is not accepted")
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self.audience, options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise ClientRequestError("access token has expired", status=401, headers=_WWW_AUTHENTICATE) from None
        except jwt.InvalidAudienceError:
            raise ClientRequestError(
                "access token is for another audience", status=401, headers=_WWW_AUTHENTICATE
            ) from None
        except jwt.PyJWTError as exc:
            raise ClientRequestError(
                f"access token is not valid: {exc}", status=401, headers=_WWW_AUTHENTICATE
            ) from None
        return str(claims["sub"])


def _jwt() -> ModuleType:
    """PyJWT (with `cryptography`, about 11 MiB of memory), loaded only where JWTs are configured."""
    import jwt

    return jwt


def _credential(headers: Mapping[str, str]) -> str | None:
    explicit = headers.get(ACCESS_KEY_HEADER)
    if explicit:
        return explicit.strip()
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def load_public_key(value: str) -> str:
    """PEM text, or the path of a file holding it."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"invalid setting PROXY_JWT_RS256_PUBLIC_KEY: cannot read {value}: {exc}") from None


def access_policy_from(settings: Settings) -> AccessPolicy:
    """The policy the settings describe; `ConfigError` for an unreadable or malformed key list."""
    keys = parse_access_keys(settings.access_keys, source="PROXY_ACCESS_KEYS")
    if settings.access_keys_file is not None:
        try:
            text = settings.access_keys_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"invalid setting PROXY_ACCESS_KEYS_FILE: cannot read it: {exc}") from None
        keys.update(parse_access_keys(text, source=str(settings.access_keys_file)))
    public_key = load_public_key(settings.jwt_rs256_public_key) if settings.jwt_rs256_public_key else None
    return AccessPolicy(
        key_hashes=keys,
        hs256_secret=settings.jwt_hs256_secret,
        rs256_public_key=public_key,
        audience=settings.jwt_audience,
        open_access=settings.open_access,
    )
