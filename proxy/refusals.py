"""Counts of requests the proxy refused on purpose, by reason (for /redis/stats and /metrics)."""

from __future__ import annotations

from collections import Counter

CORS_ORIGIN = "cors_origin"
CORS_PREFLIGHT = "cors_preflight"
ACCESS_DENIED = "access_denied"
RATE_LIMITED = "rate_limited"
BUDGET_SPENT = "budget_spent"
REASONS = (CORS_ORIGIN, CORS_PREFLIGHT, ACCESS_DENIED, RATE_LIMITED, BUDGET_SPENT)


class Refusals:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter({reason: 0 for reason in REASONS})

    def count(self, reason: str) -> None:
        self.counts[reason] += 1
