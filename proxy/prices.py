"""The price table: US dollars per million tokens, per model, for estimating money saved."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.usage import Usage


@dataclass(frozen=True, slots=True)
class Price:
    input_per_million: float
    output_per_million: float


class PriceTable:
    """Looks a model up exactly, then by its longest listed prefix (`gpt-4o-mini-2024-07-18`
    costs what `gpt-4o-mini` costs); unknown models cost nothing (and say so in the stats)."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)
        self._by_length = sorted(self.prices, key=len, reverse=True)
        self._cache: dict[str, Price | None] = {}

    def price_of(self, model: str) -> Price | None:
        if model not in self._cache:
            price = self.prices.get(model)
            if price is None:
                price = next((self.prices[name] for name in self._by_length if model.startswith(name)), None)
            self._cache[model] = price
        return self._cache[model]

    def cost(self, usage: Usage) -> float:
        price = self.price_of(usage.model)
        if price is None:
            return 0.0
        return (usage.input_tokens * price.input_per_million + usage.output_tokens * price.output_per_million) / 1e6


def load_price_table(path: Path) -> PriceTable:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"invalid price table {path}: file does not exist (set PROXY_PRICES)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"invalid price table {path}: {exc}") from None
    return parse_price_table(document, source=str(path))


def parse_price_table(document: Mapping[str, Any], *, source: str) -> PriceTable:
    models = document.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"invalid price table {source}: [models] must be a table")
    prices: dict[str, Price] = {}
    for model, entry in models.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"invalid price table {source}: models.{model} must be a table")
        values = []
        for field in ("input", "output"):
            value = entry.get(field, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"invalid price table {source}: models.{model}.{field} must be a non-negative number")
            values.append(float(value))
        prices[model] = Price(*values)
    return PriceTable(prices)
