"""Settings from the environment: defaults, the seed's Redis variables, clear errors."""

from pathlib import Path

import pytest

from proxy.envfile import environment_with_dotenv, parse_dotenv
from proxy.errors import SettingsError
from proxy.settings import MEMORY_URL, Settings, parse_size, redact_url


def test_defaults_match_the_readme() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.redis_url is None  # start-up probes localhost:6379, else memory
    assert settings.default_ttl == 3600
    assert settings.key_prefix == ""
    assert settings.upstreams["openai"].base_url == "https://api.openai.com/v1"
    assert settings.upstreams["openai"].api_key is None
    assert settings.routes_file.name == "routes.toml"
    assert settings.routes_file.is_file()


def test_redis_url_wins_over_the_parts() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://cache:6380/2", "REDIS_HOST": "ignored"})
    assert settings.redis_url == "redis://cache:6380/2"


def test_redis_parts_build_a_url_with_a_quoted_password() -> None:
    settings = Settings.from_env(
        {"REDIS_HOST": "cache", "REDIS_PORT": "6390", "REDIS_DB": "3", "REDIS_PASSWORD": "p@ss/word"}
    )
    assert settings.redis_url == "redis://:p%40ss%2Fword@cache:6390/3"


def test_any_single_redis_part_selects_redis_with_seed_defaults() -> None:
    assert Settings.from_env({"REDIS_DB": "5"}).redis_url == "redis://localhost:6379/5"


def test_memory_url_selects_the_embedded_store() -> None:
    assert Settings.from_env({"REDIS_URL": "memory://"}).redis_url == MEMORY_URL


def test_empty_values_count_as_unset() -> None:
    # The seed's .env writes `REDIS_PASSWORD=` when there is none.
    settings = Settings.from_env({"REDIS_PASSWORD": "", "REDIS_URL": " "})
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"PROXY_PORT": "eighty"}, "PROXY_PORT", "not an integer"),
        ({"PROXY_PORT": "70000"}, "PROXY_PORT", "out of range"),
        ({"REDIS_PORT": "0"}, "REDIS_PORT", "out of range"),
        ({"REDIS_URL": "http://cache"}, "REDIS_URL", "not supported"),
        ({"OPENAI_BASE_URL": "api.openai.com"}, "OPENAI_BASE_URL", "not an http"),
        ({"PROXY_REDIS_TIMEOUT": "-1"}, "PROXY_REDIS_TIMEOUT", "positive"),
        ({"PROXY_MEMORY_MAX_BYTES": "lots"}, "PROXY_MEMORY_MAX_BYTES", "not a size"),
        ({"PROXY_LOG_FORMAT": "xml"}, "PROXY_LOG_FORMAT", "not one of"),
        ({"PROXY_ACCESS_LOG": "maybe"}, "PROXY_ACCESS_LOG", "not a boolean"),
        ({"PROXY_FAST_LANE": "sometimes"}, "PROXY_FAST_LANE", "not a boolean"),
        ({"PROXY_KEY_PREFIX": "a*"}, "PROXY_KEY_PREFIX", "glob"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], variable: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sizes() -> None:
    assert parse_size("1048576") == 1048576
    assert parse_size("64MiB") == 64 * 1024**2
    assert parse_size("10MB") == 10_000_000
    assert parse_size("512k") == 512_000


def test_extra_upstreams_from_the_environment() -> None:
    settings = Settings.from_env(
        {"PROXY_UPSTREAM_MUSEUM_URL": "https://museum.example/api/", "PROXY_UPSTREAM_MUSEUM_KEY": "k"}
    )
    assert settings.upstreams["museum"].base_url == "https://museum.example/api"
    assert settings.upstreams["museum"].api_key == "k"


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-very-secret", "REDIS_URL": "redis://:hunter22@cache:6379/0"})
    assert "sk-very-secret" not in repr(settings)
    assert "hunter22" not in repr(settings)
    assert redact_url("redis://:hunter22@cache:6379/0") == "redis://:***@cache:6379/0"


def test_dotenv_parsing_as_the_seed_writes_it() -> None:
    text = """
# Redis Configuration
REDIS_URL=redis://localhost:6379
REDIS_HOST=localhost
export REDIS_DB=0
REDIS_PASSWORD=  # Eğer şifre varsa
OPENAI_API_KEY="sk-quoted # not a comment"
not an assignment
"""
    values = parse_dotenv(text)
    assert values["REDIS_URL"] == "redis://localhost:6379"
    assert values["REDIS_DB"] == "0"
    assert values["REDIS_PASSWORD"] == ""
    assert values["OPENAI_API_KEY"] == "sk-quoted # not a comment"
    assert "not an assignment" not in " ".join(values)


def test_real_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("PROXY_PORT=9001\nPROXY_HOST=127.0.0.1\n")
    merged = environment_with_dotenv({"PROXY_PORT": "9002"}, dotenv)
    assert merged["PROXY_PORT"] == "9002"
    assert merged["PROXY_HOST"] == "127.0.0.1"
