"""Fault injection: targetable, seedable rules applied to requests that passed the gateway.

Format (``--faults`` and ``PUT /_sandbox/faults``; ``docs/sandbox.md`` has examples)::

    {"seed": 7, "token_ttl_seconds": null,
     "rules": [{"kind": "latency", "operations": ["renewal_resources"], "rate": 1.0,
                "count": null, "ms": 200}, ...]}

Rules are evaluated in order for each request whose operation they target (no ``operations`` =
all). A rule *fires* when a draw from the seeded generator falls below ``rate`` (rate 1 always
fires); each firing spends one of ``count`` (null = unlimited), so ``"count": 1`` with rate 1 hits
exactly the next matching request. Every firing latency rule adds its delay; the first firing rule
of another kind (error, hang, drop_after_apply) decides the request's fate and later non-latency
rules are not evaluated (their counts are not spent).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.api.operations import OPERATIONS

__all__ = ["NO_FAULT", "Decision", "FaultPlan", "FaultRule", "FaultSettings"]

Kind = Literal["latency", "error", "hang", "drop_after_apply"]


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    operations: list[str] | None = None  # None: every operation
    rate: float = Field(default=1.0, ge=0, le=1)
    count: int | None = Field(default=None, ge=1)
    # latency: exactly one of fixed ``ms``, uniform ``min_ms``/``max_ms``, normal ``mean_ms``/
    # ``stddev_ms`` (negative normal samples count as 0)
    ms: float | None = Field(default=None, ge=0)
    min_ms: float | None = Field(default=None, ge=0)
    max_ms: float | None = Field(default=None, ge=0)
    mean_ms: float | None = Field(default=None, ge=0)
    stddev_ms: float | None = Field(default=None, ge=0)
    # hang: hold the request this long (None: until the server stops), then drop the connection
    seconds: float | None = Field(default=None, gt=0)
    after_apply: bool = False  # hang only: perform the side effect first
    # error: the answer sent instead of performing the call
    status: int = Field(default=500, ge=400, le=599)
    error_code: str = "CBC.0999"
    error_msg: str = "System error. (injected by the sandbox)"

    @field_validator("operations")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if name not in OPERATIONS:
                raise ValueError(f"unknown operation {name!r}")
        return value

    @model_validator(mode="after")
    def _latency_shape(self) -> FaultRule:
        if self.kind == "latency":
            shapes = [
                self.ms is not None,
                self.min_ms is not None and self.max_ms is not None,
                self.mean_ms is not None and self.stddev_ms is not None,
            ]
            if sum(shapes) != 1:
                raise ValueError("latency needs ms, or min_ms+max_ms, or mean_ms+stddev_ms")
            if self.min_ms is not None and self.max_ms is not None and self.min_ms > self.max_ms:
                raise ValueError("min_ms must not exceed max_ms")
        return self

    def delay(self, rng: random.Random) -> float:
        """Seconds of added latency for one firing."""
        if self.ms is not None:
            return self.ms / 1000
        if self.min_ms is not None and self.max_ms is not None:
            return rng.uniform(self.min_ms, self.max_ms) / 1000
        assert self.mean_ms is not None
        assert self.stddev_ms is not None
        return max(0.0, rng.gauss(self.mean_ms, self.stddev_ms)) / 1000


class FaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = None
    # Lifetime of security tokens issued from now on, overriding duration_seconds (lets a test
    # see a token expire without waiting 15 minutes); None honours the request.
    token_ttl_seconds: float | None = Field(default=None, gt=0)
    rules: list[FaultRule] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Decision:
    latency: float = 0.0  # seconds to wait before anything else
    action: FaultRule | None = None  # error / hang / drop_after_apply, or None

    @property
    def kinds(self) -> list[str]:
        fired = ["latency"] if self.latency else []
        return fired + ([self.action.kind] if self.action else [])


NO_FAULT = Decision()


class FaultPlan:
    def __init__(self, settings: FaultSettings | None = None) -> None:
        self.settings = settings or FaultSettings()
        self._rng = random.Random(self.settings.seed)
        self._remaining = [rule.count for rule in self.settings.rules]

    @classmethod
    def parse(cls, raw: object) -> FaultPlan:
        """Validate a JSON document; ``ValueError`` with pydantic's explanation if it is wrong."""
        if not isinstance(raw, Mapping):
            raise ValueError("faults must be a JSON object")  # noqa: TRY004  # reported as 400
        try:
            return cls(FaultSettings.model_validate(raw))
        except ValidationError as exc:
            raise ValueError(str(exc)) from None

    @property
    def token_ttl_seconds(self) -> float | None:
        return self.settings.token_ttl_seconds

    def draw(self, api: str) -> Decision:
        if not self.settings.rules:
            return NO_FAULT
        latency, action = 0.0, None
        for index, rule in enumerate(self.settings.rules):
            if rule.operations is not None and api not in rule.operations:
                continue
            if (rule.kind != "latency" and action is not None) or self._remaining[index] == 0:
                continue
            if rule.rate < 1 and self._rng.random() >= rule.rate:
                continue
            remaining = self._remaining[index]
            if remaining is not None:
                self._remaining[index] = remaining - 1
            if rule.kind == "latency":
                latency += rule.delay(self._rng)
            else:
                action = rule
        return Decision(latency, action) if latency or action else NO_FAULT

    def describe(self) -> dict[str, Any]:
        out = self.settings.model_dump(mode="json", exclude_defaults=False)
        for rule, remaining in zip(out["rules"], self._remaining, strict=True):
            rule["remaining"] = remaining
        return out
